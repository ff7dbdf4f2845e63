"""Unit tests of the public front, tunnels and control registration, without sockets."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp import wire
from arp.control import AuthFailed, ClientIdInUse
from arp.server.origins import PortOrigins
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from arp.server.tunnel import TunnelServerProtocol
from tests.control_helpers import register_record, registration

KEY = "unit-key"


class FakeControl:
    def __init__(self) -> None:
        self.asked: list[int] = []
        self.dropped: list[str] = []

    def open_tunnels(self, count: int) -> None:
        self.asked.append(count)

    def drop(self, reason: str) -> None:
        self.dropped.append(reason)


def register(registry: Registry, client_id: str, identity=None, key: str = KEY, control=None):
    control = control or FakeControl()
    record = register_record(registry, control, client_id, key, identity)
    registry.start_pool(record)
    return record, control


class RegistryTests(unittest.TestCase):
    """Registration: proofs, hijack refusal, retention."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(pool_size=2, retention=60), KEY, self.clock)

    def test_wrong_key(self):
        """A proof made with another key is refused."""
        self.assertRaises(AuthFailed, register, self.registry, "abc", key="bad")

    def test_replayed_registration(self):
        """A registration replayed against a new nonce fails."""
        nonce = self.registry.new_nonce()
        args, _ = registration(nonce, "abc", KEY)
        other_nonce = self.registry.new_nonce()
        self.assertRaises(
            AuthFailed,
            self.registry.register,
            FakeControl(),
            other_nonce,
            *args.values(),
            "x",
        )

    def test_hijack_refused_owner_returns(self):
        """Another instance cannot take a held id; the owner gets it back after a disconnect."""
        owner = wire.new_identity()
        record, control = register(self.registry, "abc", owner)
        self.assertEqual(control.asked, [2])
        self.assertRaises(ClientIdInUse, register, self.registry, "abc", wire.new_identity())
        self.registry.control_lost(record, control)
        self.assertFalse(record.online)
        self.assertRaises(ClientIdInUse, register, self.registry, "abc", wire.new_identity())
        again, _ = register(self.registry, "abc", owner)
        self.assertIs(again, record)
        self.assertTrue(again.online)

    def test_retention_expires(self):
        """After the retention time the id is free again."""
        record, control = register(self.registry, "abc")
        self.registry.control_lost(record, control)
        self.clock.advance(61)
        self.assertNotIn("abc", self.registry.clients)
        register(self.registry, "abc")


class FrontFixture:
    """A registered client1 with a public factory; makes tunnels and public connections."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(pool_size=2, retention=60), KEY, self.clock)
        self.record, self.control = register(self.registry, "client1")
        self.factory = PublicFactory(self.registry, PublicConfig(), self.clock)

    def tunnel(self) -> TunnelServerProtocol:
        proto = TunnelServerProtocol(self.registry, self.clock)
        proto.makeConnection(StringTransport())
        proto.dataReceived(wire.tunnel_header("client1", self.record.tunnel_secret))
        return proto

    def public(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def port_origins(self):
        """Give every HTTP client its own port (listening on a MemoryReactor); the origins."""
        if getattr(self, "origins", None) is None:
            self.ports_reactor = MemoryReactor()
            self.origins = PortOrigins(
                20000, 20009, "tcp:{}:interface=127.0.0.1".format, self.factory, self.ports_reactor, "http"
            )
            self.factory.use_origins(self.origins)
        return self.origins

    def own(self, record=None, peer: str = "192.168.1.1"):
        """A connection to ``record``'s own port (client1's by default)."""
        self.port_origins()
        record = record or self.record
        listeners = [f for port, f, *_ in self.ports_reactor.tcpServers if port == record.origin_port]
        proto = listeners[-1].buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5555))
        proto.makeConnection(transport)
        return proto, transport


class FirstHeadTests(FrontFixture, unittest.TestCase):
    """A connection that holds a descriptor without asking anything is closed early (issue #21.2)."""

    def test_first_head_deadline(self):
        """Nothing sent: closed after the first head's deadline, not the idle timeout; a head
        still incomplete then: 408. Later requests on the connection get the usual head timeout."""
        config = self.factory.config
        public, transport = self.public()
        self.clock.advance(config.first_head_timeout + 1)
        public.check_deadlines(self.clock.seconds())
        self.assertTrue(transport.disconnecting)
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: x")
        self.clock.advance(config.first_head_timeout + 1)
        public.check_deadlines(self.clock.seconds())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())

    def test_half_close_with_a_partial_head_closes(self):
        """EOF after part of a head: nothing will complete it, so close at once."""
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 1000)
        public.readConnectionLost()
        self.assertTrue(transport.disconnecting)


class PublicFrontTests(FrontFixture, unittest.TestCase):
    """Requests are rewritten, streamed with flow control, and tunnels go back to the pool."""

    def test_request_goes_through_and_tunnel_returns(self):
        """A GET is rewritten onto a pooled tunnel; after the response the tunnel is idle again."""
        _, t2 = self.tunnel(), self.tunnel()
        public, transport = self.public()
        public.dataReceived(
            b"GET /x?token=client1&y=2 HTTP/1.1\r\nHost: relay\r\nConnection: keep-alive\r\n\r\n"
        )
        sent = t2.transport.value()
        self.assertTrue(sent.startswith(b"GET /x?y=2 HTTP/1.1\r\nHost: relay\r\n"))
        self.assertIn(b"X-Forwarded-For: 192.168.1.1\r\n", sent)
        self.assertNotIn(b"keep-alive", sent)
        # flow control both ways while the exchange runs
        self.assertIs(transport.producer.transport, t2.transport)
        self.assertIs(t2.transport.producer.transport, transport)
        t2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhel")
        t2.dataReceived(b"lo")
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertIsNone(transport.producer)
        self.assertIsNone(t2.transport.producer)
        self.assertIn(t2, self.record.pool.idle)
        self.assertFalse(transport.disconnecting)

    def test_pipelined_requests_are_serialized(self):
        """Two requests in one packet: the second goes out after the first response."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(
            b"GET /1 HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\nGET /2 HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n"
        )
        self.assertIn(b"GET /1 ", t.transport.value())
        self.assertNotIn(b"GET /2 ", t.transport.value())
        t.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"GET /2 ", t.transport.value())

    def test_closed_tunnel_retried_for_idempotent_request(self):
        """A pooled tunnel that dies as a GET goes out is replaced; the GET is sent again."""
        t1, t2 = self.tunnel(), self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n")
        t2.connectionLost(Failure(ConnectionDone()))
        self.assertIn(b"GET / HTTP/1.1", t1.transport.value())
        self.assertEqual(transport.value(), b"")

    def test_closed_tunnel_fails_post(self):
        """A POST whose tunnel dies before an answer gets 502, not a retry."""
        self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 2\r\n\r\nhi")
        (t,) = self.record.pool.busy
        t.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))

    def test_tunnel_dies_mid_head(self):
        """A tunnel that dies after part of a response head: the public client gets a JSON 502."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 0\r\n\r\n")
        t.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        t.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))

    def test_early_response_to_upload(self):
        """A service that answers before the upload is finished: answer passed on, connection closed,
        the rest of the body ignored, the tunnel not reused."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"POST /up HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 10\r\n\r\nabc")
        t.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Too Large\r\n"))
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)
        public.dataReceived(b"defghij")  # the rest of the body, already in flight
        self.assertNotIn(t, self.record.pool.idle)

    def test_upgrade_becomes_raw_splice(self):
        """A 101 answer switches both sides to a raw splice; the tunnel leaves the pool for good."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(
            b"GET /ws HTTP/1.1\r\nX-ARP-Token: client1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        self.assertIn(b"Connection: Upgrade\r\nUpgrade: websocket\r\n", t.transport.value())
        t.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW"
        )
        self.assertTrue(transport.value().endswith(b"\r\n\r\nRAW"))
        public.dataReceived(b"\x81\x00frame")
        self.assertTrue(t.transport.value().endswith(b"\x81\x00frame"))
        self.assertNotIn(t, self.record.pool.busy)
        self.assertNotIn(t, self.record.pool.idle)

    def test_pool_miss_timeout_gives_504(self):
        """With no tunnel, the request waits for --tunnel-timeout, then gets 504 JSON."""
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(11)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))

    def test_slowloris_gets_408(self):
        """A head trickled slower than --head-timeout gets 408 and the connection closes."""
        public, transport = self.public()
        for byte in b"GET / HTTP/1.1\r\nHost":
            public.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.clock.advance(30)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)

    def test_idle_tunnel_sending_data_is_dropped(self):
        """A tunnel that talks while idle in the pool is closed."""
        t = self.tunnel()
        t.dataReceived(b"junk")
        self.assertTrue(t.transport.disconnected or t.transport.disconnecting)


class BodyLimitTests(unittest.TestCase):
    """--max-body-size: 413 up front for a declared length, mid-stream for chunked bodies."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(pool_size=1), KEY, self.clock)
        self.record, _ = register(self.registry, "client1")
        tunnel = TunnelServerProtocol(self.registry, self.clock)
        tunnel.makeConnection(StringTransport())
        tunnel.dataReceived(wire.tunnel_header("client1", self.record.tunnel_secret))
        self.tunnel = tunnel
        self.factory = PublicFactory(self.registry, PublicConfig(max_body=10), self.clock)
        self.public = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.public.makeConnection(self.transport)

    def test_declared_length(self):
        """A Content-Length over the limit is refused before anything is forwarded."""
        self.public.dataReceived(b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 11\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.tunnel.transport.value(), b"")

    def test_chunked_over_limit(self):
        """A chunked body that grows past the limit gets 413 and the tunnel is dropped."""
        self.public.dataReceived(
            b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.public.dataReceived(b"8\r\n12345678\r\n8\r\n12345678\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(self.tunnel.transport.disconnecting or self.tunnel.transport.disconnected)


class TwoClientsFixture:
    """Two registered HTTP clients (pool size 1), their tunnels and public connections."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(pool_size=1), KEY, self.clock)
        self.record, _ = register(self.registry, "client1")
        self.other, _ = register(self.registry, "client2")

    def tunnel(self, client_id: str, secret: str) -> TunnelServerProtocol:
        proto = TunnelServerProtocol(self.registry, self.clock)
        proto.makeConnection(StringTransport())
        proto.dataReceived(wire.tunnel_header(client_id, secret))
        return proto

    def public(self, **config):
        factory = PublicFactory(self.registry, PublicConfig(**config), self.clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def pass_seconds(self, seconds: int) -> None:
        for _ in range(seconds):  # second by second, as the deadline sweep sees real time
            self.clock.advance(1)


class TwoClientRoutingTests(TwoClientsFixture, unittest.TestCase):
    """Host-based routing, and a tunnel that claims another client's id."""

    def test_host_routing(self):
        """With --domain, <label>.<domain> routes to that client (with its id shown)."""
        from arp.server.origins import dns_label

        t = self.tunnel("client1", self.record.tunnel_secret)
        public, transport = self.public(domain="relay.test")
        host = dns_label("client1").encode() + b".relay.test:8080"
        public.dataReceived(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(t.transport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        public2, transport2 = self.public(domain="relay.test")
        public2.dataReceived(b"GET /x HTTP/1.1\r\nHost: nobody.relay.test\r\n\r\n")
        self.assertTrue(transport2.value().startswith(b"HTTP/1.1 404 "))

    def test_tunnel_for_someone_elses_client(self):
        """A tunnel naming client2 with client1's secret is refused and never pooled."""
        t = self.tunnel("client2", self.record.tunnel_secret)
        self.assertTrue(t.transport.disconnecting or t.transport.disconnected)
        self.assertNotIn(t, self.other.pool.idle)
        self.assertNotIn(t, self.record.pool.idle)


class StalledBodyTests(TwoClientsFixture, unittest.TestCase):
    """A request body that stops: the client's fault (408) or the service's (504)."""

    def test_body_that_never_comes(self):
        """A request body that stops arriving gets 408 after the body timeout, and the tunnel is dropped."""
        t = self.tunnel("client1", self.record.tunnel_secret)
        public, transport = self.public(body_timeout=60)
        public.dataReceived(b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 10\r\n\r\nabc")
        self.clock.advance(30)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(32)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(t.transport.disconnecting or t.transport.disconnected)

    def test_body_held_back_by_a_slow_service_is_not_a_408(self):
        """While the service does not read (the tunnel's buffer is full and reading is paused), the
        body timeout does not blame the client; after --response-timeout without progress it is a 504."""
        t = self.tunnel("client1", self.record.tunnel_secret)
        public, transport = self.public(body_timeout=60, response_timeout=300)
        public.dataReceived(b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 10\r\n\r\nabc")
        t.transport.producer.pauseProducing()  # what Twisted does when the tunnel's write buffer fills
        self.assertEqual(transport.producerState, "paused")
        self.pass_seconds(250)
        self.assertEqual(transport.value(), b"", "408 while the service held the body back")
        self.assertFalse(transport.disconnecting)
        t.transport.producer.resumeProducing()  # the service reads again: the client is timed again
        public.dataReceived(b"defg")
        t.transport.producer.pauseProducing()
        self.pass_seconds(290)
        self.assertEqual(transport.value(), b"")
        self.pass_seconds(20)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "), transport.value())
        self.assertIn(b"stopped reading the request body", transport.value())


class ControlTimeoutTests(unittest.TestCase):
    """An unregistered control connection cannot stay open by chattering."""

    def test_registration_deadline_not_extended(self):
        """Hello every 5 s does not keep an unregistered peer past the registration timeout."""
        from twisted.protocols import amp

        from arp.server.control import RELAY_REGISTRATION_WINDOW, ControlServerProtocol

        clock = Clock()
        registry = Registry(RelayConfig(), KEY, clock)
        proto = ControlServerProtocol(registry, clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        elapsed = 0.0
        for i in range(10):
            proto.dataReceived(amp.AmpBox(_command=b"Hello", _ask=str(i).encode(), version=b"1").serialize())
            clock.advance(5)
            elapsed += 5
            if transport.disconnecting or transport.disconnected:
                break
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertLessEqual(elapsed, RELAY_REGISTRATION_WINDOW + 5)


class OwnAnswerBackpressureTests(FrontFixture, unittest.TestCase):
    """The relay's own answers (401, 404, 503...) are flow-controlled like spliced data."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n"  # no token: answered by the relay itself

    def test_unread_answers_stop_reading_and_parsing(self):
        """When the client leaves our answers unread (the transport pauses its producer), the
        connection stops being read and the pipelined requests wait; once drained they are answered."""
        public, transport = self.public()
        public.dataReceived(self.REQUEST)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        self.assertIsNotNone(transport.producer, "no producer registered for the relay's own answers")
        transport.producer.pauseProducing()  # what Twisted does when the write buffer passes its bound
        self.assertEqual(transport.producerState, "paused")
        transport.clear()
        public.dataReceived(self.REQUEST * 50)
        self.assertEqual(transport.value(), b"", "answers written although the client reads none")
        transport.producer.resumeProducing()  # the buffer drained
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), 50)
        self.assertEqual(transport.producerState, "producing")

    def test_pause_mid_batch(self):
        """A pause that comes while a batch of pipelined requests is being answered stops the batch."""
        public, transport = self.public()
        public.dataReceived(self.REQUEST)
        own = transport.producer
        written = []

        def write(data, original=transport.write):
            original(data)
            written.append(data)
            if len(written) == 3:
                own.pauseProducing()

        transport.write = write
        public.dataReceived(self.REQUEST * 10)
        self.assertEqual(len(written), 3)
        own.resumeProducing()
        self.assertEqual(len(written), 10)

    def test_routed_request_swaps_in_the_tunnel_throttle(self):
        """After an answer of our own, a routed request unregisters our producer and joins the tunnel."""
        from arp.splice import Throttle

        self.tunnel()
        public, transport = self.public()
        public.dataReceived(self.REQUEST + b"GET /x HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n")
        (t,) = self.record.pool.busy
        self.assertIn(b"GET /x ", t.transport.value())
        self.assertIsInstance(transport.producer, Throttle)

    def test_client_that_never_reads_is_cut(self):
        """A connection whose answers stay unread is aborted after UNREAD_ANSWERS_TIMEOUT; one that
        reads them in time is served on."""
        from arp.server.public import UNREAD_ANSWERS_TIMEOUT

        public, transport = self.public()
        public.dataReceived(self.REQUEST)
        own = transport.producer

        def write(data, original=transport.write):
            original(data)
            own.pauseProducing()  # as Twisted does inside write() when the buffer passes its bound

        transport.write = write
        public.dataReceived(self.REQUEST * 5)
        transport.write = write.__defaults__[0]
        for _ in range(int(UNREAD_ANSWERS_TIMEOUT) - 2):
            self.clock.advance(1)
        transport.producer.resumeProducing()  # read in time
        self.assertFalse(transport.disconnecting or transport.disconnected)
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), 6)
        transport.write = write
        public.dataReceived(self.REQUEST)
        for _ in range(int(UNREAD_ANSWERS_TIMEOUT) + 2):
            self.clock.advance(1)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_close_with_paused_producer_unregisters(self):
        """A closing answer unregisters our producer, so a paused one cannot keep the close pending."""
        public, transport = self.public()
        public.dataReceived(self.REQUEST)
        transport.producer.pauseProducing()
        public.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)


class HttpInteropTests(FrontFixture, unittest.TestCase):
    """HTTP details real applications behind the relay rely on: trailers, h2c offers, HTTP/1.0 clients."""

    def _exchange(self, request: bytes, response: bytes) -> tuple[bytes, bytes, StringTransport]:
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(request)
        sent = t.transport.value()
        t.dataReceived(response)
        return sent, transport.value(), transport

    def test_trailer_header_is_end_to_end(self):
        """The ``Trailer`` response header and the trailers it announces reach the client (RFC 9110)."""
        _, out, _ = self._exchange(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n",
        )
        self.assertIn(b"\r\nTrailer: X-Checksum\r\n", out)
        self.assertTrue(out.endswith(b"0\r\nX-Checksum: abc\r\n\r\n"), out)

    def test_h2c_offer_stripped_whole(self):
        """``Upgrade: h2c`` and ``HTTP2-Settings`` both go: the relay speaks HTTP/1.1 to the service,
        which sees a plain request and no half of an h2c offer."""
        sent, out, _ = self._exchange(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        self.assertNotIn(b"h2c", sent.lower())
        self.assertNotIn(b"http2-settings", sent.lower())
        self.assertNotIn(b"upgrade", sent.lower())
        self.assertTrue(out.endswith(b"\r\n\r\nok"))

    def test_h2c_dropped_from_a_list_other_offers_kept(self):
        """``Upgrade: h2c, websocket``: only h2c is dropped; the WebSocket offer goes on as an upgrade."""
        sent, _, _ = self._exchange(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n"
            b"HTTP2-Settings: AAMAAABk\r\n\r\n",
            b"",
        )
        self.assertIn(b"Connection: Upgrade\r\nUpgrade: websocket\r\n", sent)
        self.assertNotIn(b"http2-settings", sent.lower())

    def test_chunked_response_dechunked_for_http10_client(self):
        """An HTTP/1.0 client gets a chunked response decoded, without Transfer-Encoding or trailers,
        and the close ends the body."""
        _, out, transport = self._exchange(
            b"GET / HTTP/1.0\r\nX-ARP-Token: client1\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n"
            b"Content-Type: text/plain\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        )
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertEqual(body, b"hello world")
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertNotIn(b"trailer", head.lower())
        self.assertIn(b"Content-Type: text/plain", head)
        self.assertIn(b"Connection: close", head)
        self.assertTrue(transport.disconnecting)

    def test_chunked_response_dechunked_across_reads(self):
        """Chunk sizes and data split across tunnel reads decode the same."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.0\r\nX-ARP-Token: client1\r\n\r\n")
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        for i in range(len(response)):
            t.dataReceived(response[i : i + 1])
        self.assertTrue(transport.value().endswith(b"\r\n\r\n0123456789abc"), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_http11_client_still_gets_chunks(self):
        """An HTTP/1.1 client gets the chunked body untouched."""
        _, out, _ = self._exchange(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        self.assertTrue(out.endswith(b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"), out)
