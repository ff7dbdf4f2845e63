"""The control channel's limits: box caps, the time a box may take, chatter and unread answers.

Unit tests drive :class:`ControlServerProtocol` with a StringTransport and a
Clock; the attack tests run a real arps and measure its RSS while a hostile
client floods or trickles its control port.
"""

from __future__ import annotations

import struct

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from arp import wire
from arp.control import MAX_BOX_BYTES, MAX_BOX_KEYS
from arp.server import control
from arp.server.control import ControlFactory
from arp.server.registry import Registry, RelayConfig
from tests.control_helpers import connect_control, register_over, registration
from tests.helpers import AUTH_KEY, sleep, start_arps

KEY = "unit-key"
MB = 1024 * 1024


def pair(key: bytes, value: bytes) -> bytes:
    """One key/value of an AMP box, as on the wire."""
    return struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value


def box(**fields: bytes) -> bytes:
    """A complete AMP box."""
    return b"".join(pair(k.encode(), v) for k, v in fields.items()) + b"\0\0"


class ControlFixture:
    """A relay's control protocol on a StringTransport, registered or not."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(heartbeat=10.0), KEY, self.clock)
        self.factory = ControlFactory(self.registry, self.clock)

    def connect(self, host: str = "10.0.0.1"):
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def answers(self, transport: StringTransport) -> list:
        boxes = amp.parseString(transport.value())
        transport.clear()
        return boxes

    def register(self, client_id: str = "client1"):
        proto, transport = self.connect()
        proto.dataReceived(box(_command=b"Hello", _ask=b"1", version=b"%d" % wire.PROTOCOL_VERSION))
        nonce = self.answers(transport)[0][b"nonce"]
        args, _ = registration(nonce, client_id, KEY)
        fields = {k: (v.encode() if isinstance(v, str) else v) for k, v in args.items()}
        fields["remote_port"] = b"0"
        proto.dataReceived(box(_command=b"Register", _ask=b"2", **fields))
        answer = self.answers(transport)[0]
        assert b"exchange" in answer, answer
        return proto, transport


class BoxCapTests(ControlFixture, unittest.TestCase):
    """A box is cut at MAX_BOX_KEYS keys or MAX_BOX_BYTES bytes while it is still arriving."""

    def test_too_many_keys(self):
        """A box that never ends, made of many distinct small keys, is cut after MAX_BOX_KEYS."""
        proto, transport = self.connect()
        data = b"".join(pair(b"k%d" % i, b"v") for i in range(MAX_BOX_KEYS))
        proto.dataReceived(data)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(pair(b"one-more", b"v") + pair(b"and", b"more") * 100)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_too_many_bytes(self):
        """A box of few keys is cut once its keys and values pass MAX_BOX_BYTES."""
        proto, transport = self.connect()
        big = b"x" * 8000
        proto.dataReceived(pair(b"a", big) + pair(b"b", big))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(pair(b"c", b"x" * (MAX_BOX_BYTES - 2 * 8000)))
        self.assertTrue(transport.disconnecting)

    def test_one_huge_value(self):
        """A value whose length prefix promises 60,000 bytes is cut once what has arrived of it
        passes MAX_BOX_BYTES, before AMP's own 64 KiB limit would be reached."""
        proto, transport = self.connect()
        proto.dataReceived(struct.pack("!H", 1) + b"k" + struct.pack("!H", 60000) + b"x" * 16000)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"x" * 1000)
        self.assertTrue(transport.disconnecting)

    def test_counts_restart_with_each_box(self):
        """The caps are per box: many boxes, each under the caps, are fine for a registered client."""
        proto, transport = self.register()
        for beat in range(50):
            proto.dataReceived(box(_command=b"Heartbeat", _ask=b"h%d" % beat))
            self.clock.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_client_side_caps(self):
        """arpc's end of the channel has the same caps (a hostile relay cannot fill arpc either)."""
        from arp.client.link import ControlClientProtocol

        link = type("Link", (), {"clock": self.clock, "control_lost": lambda self, proto: None})()
        proto = ControlClientProtocol(link)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(pair(b"k%d" % i, b"v") for i in range(MAX_BOX_KEYS + 1)))
        self.assertTrue(transport.disconnecting)
        proto.setTimeout(None)


class ProgressTests(ControlFixture, unittest.TestCase):
    """A trickle is not progress; only whole boxes are, and only so many of them."""

    def test_trickled_box_before_registration(self):
        """A box whose bytes come one by one is cut when it is not finished in BOX_TIMEOUT."""
        proto, transport = self.connect()
        trickle = pair(b"k" * 100, b"v" * 100)
        for i in range(9):
            proto.dataReceived(trickle[i : i + 1])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_trickled_box_after_registration(self):
        """A registered client that trickles a box is cut after BOX_TIMEOUT, though every byte
        used to reset its idle timer."""
        proto, transport = self.register()
        trickle = pair(b"k" * 100, b"v" * 100)
        for i in range(10):
            proto.dataReceived(trickle[i : i + 1])
            self.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_needs_whole_boxes(self):
        """After registration a silent client is cut after 3 heartbeat intervals; heartbeats keep
        it, a stream of partial boxes (each finished in time, never a whole box) does not count."""
        proto, transport = self.register()
        for beat in range(10):
            self.clock.advance(10)
            proto.dataReceived(box(_command=b"Heartbeat", _ask=b"h%d" % beat))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)

    def test_chatter_is_capped(self):
        """More than MAX_BOXES_PER_BEAT boxes in one heartbeat interval close the connection."""
        proto, transport = self.register()
        for beat in range(control.MAX_BOXES_PER_BEAT):
            proto.dataReceived(box(_command=b"Heartbeat", _ask=b"h%d" % beat))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(box(_command=b"Heartbeat", _ask=b"last"))
        self.assertTrue(transport.disconnecting)

    def test_boxes_before_registration_are_capped(self):
        """An unregistered connection may send only a few boxes (Hello, Register)."""
        proto, transport = self.connect()
        for n in range(control.MAX_BOXES_BEFORE_REGISTRATION):
            proto.dataReceived(box(_command=b"Heartbeat", _ask=b"%d" % n))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(box(_command=b"Heartbeat", _ask=b"more"))
        self.assertTrue(transport.disconnecting)

    def test_one_hello_per_connection(self):
        """A second Hello (to collect nonces or make the relay answer) is refused."""
        proto, transport = self.connect()
        proto.dataReceived(box(_command=b"Hello", _ask=b"1", version=b"%d" % wire.PROTOCOL_VERSION))
        proto.dataReceived(box(_command=b"Hello", _ask=b"2", version=b"%d" % wire.PROTOCOL_VERSION))
        answers = self.answers(transport)
        self.assertIn(b"nonce", answers[0])
        self.assertEqual(answers[1][b"_error_code"], b"BAD_REGISTRATION")

    def test_register_timeout_not_extended(self):
        """Whole boxes do not extend the time an unregistered connection has to register."""
        proto, transport = self.connect()
        proto.dataReceived(box(_command=b"Hello", _ask=b"1", version=b"%d" % wire.PROTOCOL_VERSION))
        self.clock.advance(control.RELAY_REGISTRATION_WINDOW - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_unread_answers(self):
        """A peer that leaves the relay's answers unread (the transport pauses us) for
        BOX_TIMEOUT is cut; one that catches up in time is not."""
        proto, transport = self.register()
        self.assertIs(transport.producer, proto)
        proto.pauseProducing()
        self.clock.advance(5)
        proto.resumeProducing()
        self.clock.advance(10)
        proto.dataReceived(box(_command=b"Heartbeat", _ask=b"x"))
        self.assertFalse(transport.disconnecting)
        proto.pauseProducing()
        self.clock.advance(control.BOX_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_pending_connections_per_address(self):
        """At most MAX_PENDING_PER_ADDRESS unregistered connections per source address; another
        address, and a slot freed by a registration, are not affected."""
        protos = [self.connect() for _ in range(control.MAX_PENDING_PER_ADDRESS)]
        self.assertFalse(any(transport.disconnecting for _, transport in protos))
        _, refused = self.connect()
        self.assertTrue(refused.disconnecting)
        self.assertFalse(self.connect("10.0.0.2")[1].disconnecting)
        first, _ = protos[0]
        first.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.connect()[1].disconnecting)
        second, _ = protos[1]
        second.connectionLost(Failure(ConnectionDone()))
        registered, _ = self.register()  # registered from 10.0.0.1: no longer pending
        self.assertNotIn(registered, self.factory.pending["10.0.0.1"])

    def test_ipv6_counts_per_64(self):
        """Addresses of one IPv6 /64 share one budget (a host owns the whole /64); IPv4-mapped
        addresses count as their IPv4 address."""
        self.assertEqual(control.source_of(IPv6Address("TCP", "2001:db8:1:2::5", 1)), "2001:db8:1:2::/64")
        self.assertEqual(
            control.source_of(IPv6Address("TCP", "2001:db8:1:2:ffff::9", 1)), "2001:db8:1:2::/64"
        )
        self.assertEqual(control.source_of(IPv6Address("TCP", "::ffff:10.0.0.1", 1)), "10.0.0.1")
        self.assertEqual(control.source_of(IPv4Address("TCP", "10.0.0.1", 1)), "10.0.0.1")


@implementer(IPullProducer)
class Flood:
    """Writes one endless AMP box of distinct 200-byte keys, 64 KiB per call, up to ``budget``."""

    def __init__(self, transport, budget: int) -> None:
        self.transport = transport
        self.budget = budget
        self.sent = 0
        self.count = 0
        self.stopped = False
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.stopped or self.sent >= self.budget:
            return
        parts = []
        for _ in range(320):
            parts.append(pair(b"%0200d" % self.count, b"v"))
            self.count += 1
        chunk = b"".join(parts)
        self.sent += len(chunk)
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        self.stopped = True


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def watch(pid: int, proto, seconds: float = 15.0) -> tuple[bool, float]:
    """Until ``proto`` is closed, its peer grows by 64 MB, or ``seconds`` pass: sample the RSS
    of ``pid``.  Returns (closed by then, largest growth in MB)."""
    before = rss_kb(pid)
    growth = 0.0
    for _ in range(int(seconds / 0.1)):
        growth = max(growth, (rss_kb(pid) - before) / 1024)
        if proto.closed is not None or growth >= 64:
            break
        await sleep(0.1)
    return proto.closed is not None, growth


class AttackTests(unittest.TestCase):
    """Hostile control clients against a real arps: its memory stays bounded and it closes them."""

    timeout = 120

    async def flood(self, registered: bool) -> None:
        relay = await start_arps(self, "--heartbeat", "2")
        proto = await connect_control(relay.ports["control"])
        self.addCleanup(proto.transport.abortConnection)
        if registered:
            await register_over(proto, "attacker-0123456789abcdef", AUTH_KEY)
        flood = Flood(proto.transport, budget=512 * MB)
        closed, growth = await watch(relay.proc.pid, proto)
        flood.stopProducing()
        self.assertLess(growth, 64, f"arps grew by {growth:.0f} MB")
        self.assertTrue(closed, f"not closed after {flood.sent / MB:.0f} MB")
        await relay.proc.wait_for(r"control box over the limit")

    async def test_unregistered_box_flood(self):
        """An endless box of distinct keys before registration: cut at the key cap, arps does
        not grow (it grew by 800 MB in 5.6 s before the cap)."""
        await self.flood(registered=False)

    async def test_registered_box_flood(self):
        """The same flood from a client that registered with the right auth key."""
        await self.flood(registered=True)

    async def test_registered_trickle(self):
        """A registered client trickling one byte of a never-finished box every 0.2 s (each byte
        used to reset its timeout) is closed by the relay within 15 s."""
        relay = await start_arps(self, "--heartbeat", "2")
        proto = await connect_control(relay.ports["control"])
        self.addCleanup(proto.transport.abortConnection)
        await register_over(proto, "trickler-0123456789abcdef", AUTH_KEY)
        before = rss_kb(relay.proc.pid)
        payload = pair(b"k" * 200, b"v" * 200) * 100
        for i in range(75):
            if proto.closed is not None:
                break
            proto.transport.write(payload[i : i + 1])
            await sleep(0.2)
        self.assertIsNotNone(proto.closed, "the trickling client was never closed")
        self.assertLess((rss_kb(relay.proc.pid) - before) / 1024, 64)
        await relay.proc.wait_for(r"a box not finished within 2s")

    async def test_heartbeat_flood_unread(self):
        """A registered client that sends heartbeats as fast as it can and never reads the
        answers is closed (chatter cap) and arps does not buffer for it."""
        relay = await start_arps(self, "--heartbeat", "2")
        proto = await connect_control(relay.ports["control"])
        self.addCleanup(proto.transport.abortConnection)
        await register_over(proto, "chatter-0123456789abcdef", AUTH_KEY)
        proto.transport.pauseProducing()  # read nothing more
        before = rss_kb(relay.proc.pid)
        beat = box(_command=b"Heartbeat", _ask=b"1")
        for _ in range(50):
            if proto.closed is not None:
                break
            proto.transport.write(beat * 2000)
            await sleep(0.1)
        self.assertIsNotNone(proto.closed, "the chattering client was never closed")
        self.assertLess((rss_kb(relay.proc.pid) - before) / 1024, 64)
        await relay.proc.wait_for(r"boxes in one heartbeat interval")

    async def test_many_unregistered_connections(self):
        """MAX_PENDING_PER_ADDRESS + 32 connections from one address, each holding a box just
        under the caps: the relay closes the 32 beyond the cap at once and does not grow."""
        relay = await start_arps(self)
        before = rss_kb(relay.proc.pid)
        held = b"".join(pair(b"k%d" % i, b"v" * 400) for i in range(30))  # 30 keys, ~12 KiB
        protos = []
        reset = 0  # connections the relay reset before the connect even completed here
        total = control.MAX_PENDING_PER_ADDRESS + 32
        for _ in range(total):
            try:
                proto = await connect_control(relay.ports["control"])
            except ConnectError:
                reset += 1
                continue
            self.addCleanup(proto.transport.abortConnection)
            proto.transport.write(held)
            protos.append(proto)

        def closed() -> int:
            return reset + sum(p.closed is not None for p in protos)

        for _ in range(100):
            if closed() >= 32:
                break
            await sleep(0.05)
        self.assertEqual(closed(), 32)
        self.assertLess((rss_kb(relay.proc.pid) - before) / 1024, 64)
        await relay.proc.wait_for(r"unregistered control connections from 127.0.0.1 already open")

    def tearDown(self):
        reactor.runUntilCurrent()
