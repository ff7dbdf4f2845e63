"""arpc's RelayLink without sockets: registration, retries with backoff, permanent refusals, stop."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp import wire
from arp.client.link import RelayLink


class FakeEndpoint:
    """Each connect() either fails (when ``refuse`` is set) or hands a StringTransport to a new protocol."""

    def __init__(self) -> None:
        self.attempts = 0
        self.refuse = False
        self.hang = False
        self.protocols: list = []

    def connect(self, factory) -> Deferred:
        self.attempts += 1
        if self.hang:
            return Deferred()
        if self.refuse:
            return fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        d: Deferred = Deferred()
        d.callback(proto)
        return d


def box(**fields: bytes) -> bytes:
    out = b""
    for key, value in fields.items():
        out += len(key).to_bytes(2, "big") + key.encode() + len(value).to_bytes(2, "big") + value
    return out + b"\0\0"


class LinkTests(unittest.TestCase):
    """The link's reconnect loop, driven by a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.fatal: list[str] = []
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.link = RelayLink(
            clock=self.clock,
            control_endpoint=self.endpoint,
            proxy_endpoint=FakeEndpoint(),
            tunnel_protocol=lambda header, tunnels: None,
            client_id="client1",
            identity=wire.new_identity(),
            auth_key="k",
            on_fatal=self.fatal.append,
        )

    def asks(self, proto) -> list:
        boxes = amp.parseString(proto.transport.value())
        proto.transport.clear()
        return boxes

    def hello(self, proto) -> bytes:
        [ask] = self.asks(proto)
        self.assertEqual(ask[b"_command"], b"Hello")
        nonce = b"n" * 32
        proto.dataReceived(box(_answer=ask[b"_ask"], nonce=nonce, version=b"%d" % wire.PROTOCOL_VERSION))
        return nonce

    def answer_register(self, proto, **fields: bytes) -> dict:
        [ask] = self.asks(proto)
        self.sent = ask.serialize()
        self.assertEqual(ask[b"_command"], b"Register")
        proto.dataReceived(box(_answer=ask[b"_ask"], **fields))
        return ask

    def refuse_register(self, proto, code: bytes) -> None:
        [ask] = self.asks(proto)
        proto.dataReceived(box(_error=ask[b"_ask"], _error_code=code, _error_description=b"no"))

    def lose(self, proto) -> None:
        proto.connectionLost(Failure(ConnectionDone()))

    def messages(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)

    def test_permanent_refusal_ends_the_link(self):
        """AUTH_FAILED: on_fatal once with what to do, the connection closed, no retry ever."""
        self.link.startService()
        proto = self.endpoint.protocols[0]
        self.hello(proto)
        self.refuse_register(proto, b"AUTH_FAILED")
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("--auth-key KEY or ARP_AUTH_KEY", self.fatal[0])
        self.assertTrue(proto.transport.disconnecting)
        self.lose(proto)
        self.clock.advance(600)
        self.assertEqual(self.endpoint.attempts, 1)

    def test_bad_registration_is_permanent(self):
        """BAD_REGISTRATION (e.g. an unsupported version) also ends the link."""
        self.link.startService()
        proto = self.endpoint.protocols[0]
        self.hello(proto)
        self.refuse_register(proto, b"BAD_REGISTRATION")
        self.lose(proto)
        self.clock.advance(600)
        self.assertEqual(len(self.fatal), 1)
        self.assertEqual(self.endpoint.attempts, 1)

    def test_temporary_refusals_retry_with_backoff(self):
        """CLIENT_ID_IN_USE and UNAVAILABLE are retried, each wait longer than the last (up to
        the maximum); a refused TCP connection is retried too; nothing is fatal."""
        self.link.startService()
        delays = []

        def next_delay() -> None:
            [call] = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())

        for step in (b"CLIENT_ID_IN_USE", "refused", b"UNAVAILABLE", b"CLIENT_ID_IN_USE"):
            if step == "refused":
                self.endpoint.refuse = True
                self.clock.advance(delays[-1])  # this attempt's TCP connect is refused
                self.endpoint.refuse = False
            else:
                if delays:
                    self.clock.advance(delays[-1])
                proto = self.endpoint.protocols[-1]
                self.hello(proto)
                self.refuse_register(proto, step)
                self.lose(proto)
            next_delay()
        self.assertEqual(self.fatal, [])
        self.assertEqual(self.endpoint.attempts, 4)
        self.assertLess(delays[0] - 1, delays[3])  # 0.75 s + jitter < 2.53 s (0.5 * 1.5 ** 4)
        self.assertIn("held by another arpc instance", self.messages())
        self.assertIn("the relay cannot take us now: no; retrying", self.messages())

    def registered(self):
        self.link.startService()
        proto = self.endpoint.protocols[-1]
        nonce = self.hello(proto)
        relay = wire.new_exchange()
        self.answer_register(
            proto,
            exchange=wire.public_bytes(relay),
            public_url=b"http://{host}:17003",
            remote_port=b"0",
            heartbeat=b"10.0",
        )
        return proto, relay, nonce

    def test_registration_derives_the_tunnel_key(self):
        """A successful registration derives the same tunnel key the relay derives, and prints
        the public URL; the Register box does not carry it."""
        proto, relay, nonce = self.registered()
        self.assertIs(self.link.control, proto)
        [ask] = [a for a in amp.parseString(self.sent) if a.get(b"_command") == b"Register"]
        expected = wire.tunnel_key(relay, ask[b"exchange"], nonce, "client1")
        self.assertEqual(self.link.tunnel_secret, expected)
        self.assertNotIn(expected.encode(), self.sent)
        self.assertIn("Public URL: http://localhost:17003/?token=client1", self.messages())

    def test_stop_with_a_relay_that_does_not_answer_leave(self):
        """A relay that never answers Leave (gone, or older than the command) does not hold the
        stop up for longer than LEAVE_TIMEOUT."""
        from arp.client.link import LEAVE_TIMEOUT

        proto, _, _ = self.registered()
        self.link.stopService()
        self.clock.advance(LEAVE_TIMEOUT - 0.1)
        self.assertFalse(proto.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(proto.transport.disconnecting)

    def test_fast_retries_after_losing_a_registration(self):
        """Once registered, a lost link comes back within about a second each try (the relay is
        restarting), spread at random, however many tries it takes; never registered: backoff."""
        from arp.client.link import FAST_RETRY_MIN, FAST_RETRY_SPREAD

        proto, _, _ = self.registered()
        self.endpoint.refuse = True  # the relay is down
        self.lose(proto)
        delays = []
        for _ in range(12):
            [retry] = [c for c in self.clock.getDelayedCalls() if c.func == self.link._connect]
            delays.append(retry.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        fast = [FAST_RETRY_MIN <= d <= FAST_RETRY_MIN + FAST_RETRY_SPREAD for d in delays]
        self.assertTrue(all(fast), delays)
        self.assertGreater(len(set(delays)), 1)  # spread, not in lockstep

    def test_lost_after_registration_reconnects(self):
        """A registered link that loses the relay says so and reconnects after a short wait."""
        proto, _, _ = self.registered()
        self.lose(proto)
        self.assertIn("lost the control connection to the relay; reconnecting", self.messages())
        self.clock.advance(2)
        self.assertEqual(self.endpoint.attempts, 2)

    def test_stop_says_shutdown(self):
        """Stopping tells the relay it leaves on purpose (Leave), closes the control connection
        once the relay took note, logs the shutdown (not a reconnect) and never connects again."""
        proto, _, _ = self.registered()
        proto.transport.clear()
        stopped = self.link.stopService()
        [leave] = [a for a in self.asks(proto) if a.get(b"_command") == b"Leave"]
        self.assertFalse(proto.transport.disconnecting)
        proto.dataReceived(box(_answer=leave[b"_ask"]))
        self.assertTrue(proto.transport.disconnecting)
        self.assertNoResult(stopped)
        self.lose(proto)
        self.successResultOf(stopped)
        self.clock.advance(600)
        self.assertEqual(self.endpoint.attempts, 1)
        text = self.messages()
        self.assertIn("arpc shutting down: leaving the relay", text)
        self.assertIn("left the relay (shutting down)", text)
        self.assertNotIn("reconnecting", text)

    def test_stop_while_connecting(self):
        """Stopping while the TCP connection is still being made cancels it, finishes at once
        and schedules nothing."""
        self.endpoint.hang = True
        self.link.startService()
        self.successResultOf(self.link.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotIn("cannot reach the relay", self.messages())

    def test_stop_while_registering(self):
        """Stopping between Hello and its answer closes the connection and never retries."""
        self.link.startService()
        proto = self.endpoint.protocols[0]
        stopped = self.link.stopService()
        self.assertTrue(proto.transport.disconnecting)
        self.lose(proto)
        self.successResultOf(stopped)
        self.clock.advance(600)
        self.assertEqual(self.endpoint.attempts, 1)
        self.assertNotIn("could not register", self.messages())
