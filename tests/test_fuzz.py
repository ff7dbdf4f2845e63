"""Fuzzing: hypothesis-generated and mutated input on every port; nothing crashes or leaks."""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from arp import wire
from arp.server.control import ControlServerProtocol
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from arp.server.tunnel import TunnelServerProtocol
from tests.helpers import HTTPClient, listen_backend, start_arpc, start_arps
from tests.test_public_unit import KEY, register

#: inputs each fuzz test tries per run (tools/reliability.py reports the sum)
EXAMPLES = {"public_random": 250, "public_mutated": 250, "tunnel_header": 200, "control": 200, "live": 160}
LIVE_PER_PORT = 40

VALID = [
    b"GET /echo?token=client1 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /x HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 4\r\n\r\nbody",
    b"PUT /x HTTP/1.1\r\nCookie: arp_token=client1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nbody\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nX-ARP-Token: client1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
]


def mutate(data: bytes, rnd: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.randrange(4)
        pos = rnd.randrange(len(data) + 1)
        if op == 0 and data:
            del data[min(pos, len(data) - 1)]
        elif op == 1:
            data[pos:pos] = bytes([rnd.randrange(256)])
        elif op == 2 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rnd.randrange(8)
        else:
            data[pos:pos] = rnd.choice([b"\r\n", b":", b" ", b"\x00", b"\r\n\r\n", b"Content-Length: 9\r\n"])
    return bytes(data)


class FrontFuzzTests(unittest.TestCase):
    """The public front, tunnel header and control parser survive any bytes."""

    def make(self):
        clock = Clock()
        registry = Registry(RelayConfig(pool_size=1), KEY, clock)
        record, _ = register(registry, "client1")
        tunnel = TunnelServerProtocol(registry, clock)
        tunnel.makeConnection(StringTransport())
        tunnel.dataReceived(wire.tunnel_header("client1", record.tunnel_secret))
        factory = PublicFactory(registry, PublicConfig(max_head=4096), clock)
        public = factory.buildProtocol(None)
        transport = StringTransport()
        public.makeConnection(transport)
        return clock, public, transport, tunnel

    def check_public(self, data: bytes, cuts: list[int]) -> None:
        clock, public, transport, tunnel = self.make()
        pos = 0
        for cut in cuts + [len(data)]:
            piece = data[pos : pos + max(cut, 1)]
            if piece and not transport.disconnecting:
                public.dataReceived(piece)
            pos += len(piece)
        if not transport.disconnecting:
            public.dataReceived(data[pos:])
        out = transport.value()
        if out:
            self.assertTrue(out.startswith(b"HTTP/1.1 "), out[:80])
        clock.advance(400)  # every timer fires; nothing may raise
        sent = tunnel.transport.value()
        if sent:
            self.assertRegex(sent.split(b"\r\n", 1)[0], rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/1\.[01]$")

    @settings(
        max_examples=EXAMPLES["public_random"], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.binary(max_size=600), st.lists(st.integers(0, 64), max_size=8))
    def test_random_bytes_on_public_front(self, data, cuts):
        """Random bytes get an HTTP error or nothing; never an exception."""
        self.check_public(data, cuts)

    @settings(
        max_examples=EXAMPLES["public_mutated"], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.sampled_from(VALID), st.integers(0, 2**32), st.lists(st.integers(0, 64), max_size=8))
    def test_mutated_requests_on_public_front(self, valid, seed, cuts):
        """Mutations of valid requests are either forwarded as valid heads or refused."""
        self.check_public(mutate(valid, random.Random(seed)), cuts)

    @settings(max_examples=EXAMPLES["tunnel_header"], deadline=None)
    @given(st.binary(max_size=300))
    def test_random_tunnel_headers(self, data):
        """Only a correct tunnel header puts a connection in the pool."""
        clock = Clock()
        registry = Registry(RelayConfig(pool_size=1), KEY, clock)
        record, _ = register(registry, "client1")
        tunnel = TunnelServerProtocol(registry, clock)
        transport = StringTransport()
        tunnel.makeConnection(transport)
        tunnel.dataReceived(data)
        clock.advance(20)
        self.assertNotIn(tunnel, record.pool.idle)
        self.assertTrue(transport.disconnecting or not data.count(b"\n"))

    @settings(max_examples=EXAMPLES["control"], deadline=None)
    @given(st.binary(max_size=400))
    def test_random_control_bytes(self, data):
        """Garbage on the control channel never registers anything and never raises."""
        clock = Clock()
        registry = Registry(RelayConfig(pool_size=1), KEY, clock)
        proto = ControlServerProtocol(registry, clock)
        proto.makeConnection(StringTransport())
        proto.dataReceived(data)
        clock.advance(60)
        self.assertEqual(registry.clients, {})


class Garbage(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        reactor.callLater(0.2, self.transport.loseConnection)

    def connectionLost(self, reason):
        self.done.callback(None)


class LiveGarbageTests(unittest.TestCase):
    """Random garbage on every port of a real relay; it keeps serving."""

    timeout = 120

    async def test_garbage_on_every_port(self):
        """Seeded random and mutated inputs on control, proxy, public and admin ports."""
        relay = await start_arps(self, "--head-timeout", "2")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        rnd = random.Random(1234)
        sem = defer.DeferredSemaphore(20)
        jobs = []
        for port in relay.ports.values():
            for i in range(LIVE_PER_PORT):
                if i % 2:
                    payload = os.urandom(rnd.randrange(1, 3000))
                else:
                    payload = mutate(rnd.choice(VALID).replace(b"client1", arpc.token.encode()), rnd)

                async def one(port=port, payload=payload):
                    proto = Garbage(payload)
                    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
                    await proto.done

                jobs.append(sem.run(lambda one=one: defer.Deferred.fromCoroutine(one())))
        await defer.gatherResults(jobs)
        client = HTTPClient(self)
        response, body = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 200)
        self.assertNotIn("Traceback", relay.proc.output)
        self.assertNotIn("Unhandled", relay.proc.output)
