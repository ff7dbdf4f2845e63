"""Regression tests for bugs found in a review of the relay's data path."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp import http, wire
from arp.server.public import PublicConfig, PublicFactory
from arp.server.tunnel import TunnelServerProtocol
from tests.control_helpers import register_record
from tests.test_public_unit import KEY, FrontFixture


class ReviewTests(FrontFixture, unittest.TestCase):
    """The public front, driven with StringTransports and a Clock."""

    def test_retry_not_sent_without_its_body(self):
        """A PUT with a body whose tunnel dies before an answer is not re-sent as a head alone
        (the service would wait for a body that never comes); it gets 502."""
        t1, t2 = self.tunnel(), self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"PUT /f HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(t2.transport.value().endswith(b"\r\n\r\nhello"))
        t2.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(t1.transport.value(), b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))

    def test_connection_cannot_strip_request_framing(self):
        """``Connection: Content-Length`` must not remove the header that frames the forwarded body
        (the service would read the body as a second, smuggled request)."""
        t = self.tunnel()
        public, _ = self.public()
        smuggled = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        public.dataReceived(
            b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: Content-Length\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
        )
        head, _, body = t.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: %d" % len(smuggled), head)

    def test_connection_cannot_strip_chunked(self):
        """``Connection: Transfer-Encoding`` must not remove the chunked framing of the forwarded body."""
        t = self.tunnel()
        public, _ = self.public()
        public.dataReceived(
            b"POST / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: transfer-encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        head = t.transport.value().partition(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)

    def test_connection_cannot_strip_response_framing(self):
        """A backend's ``Connection: Content-Length`` does not strip the length the relay frames by."""
        head = http.scan_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Foo\r\nX-Foo: 1\r\nContent-Length: 5\r\n\r\n"
        )
        out = http.forward_response_head(head, None)
        self.assertIn(b"Content-Length: 5", out)
        self.assertNotIn(b"X-Foo", out)

    def test_slow_upload_not_cut_by_response_timeout(self):
        """An upload that keeps flowing for longer than --response-timeout is not answered 504:
        the response timeout starts when the request has been sent."""
        self.factory = PublicFactory(
            self.registry, PublicConfig(response_timeout=10, body_timeout=5), self.clock
        )
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"POST /up HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 30\r\n\r\n")
        for _ in range(15):  # one byte every 2 s: 30 s of steady upload
            self.clock.advance(2)
            public.dataReceived(b"x")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        for _ in range(15):
            self.clock.advance(2)
            public.dataReceived(b"x")
        self.assertTrue(t.transport.value().endswith(b"x" * 30))
        self.clock.advance(11)  # now the service is late
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))

    def test_many_pipelined_refusals(self):
        """Hundreds of pipelined requests that are answered by the relay itself (401) do not
        raise out of dataReceived (no recursion per request)."""
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), 2000)

    def test_no_tunnel_taken_after_giving_up(self):
        """A request that is answered 504 while it waits for a tunnel to retry on takes no tunnel
        that arrives afterwards (it would send a request nobody reads and waste the tunnel)."""
        self.factory = PublicFactory(self.registry, PublicConfig(response_timeout=1), self.clock)
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n")
        t.connectionLost(Failure(ConnectionDone()))  # retried, but the pool is empty: waits
        self.clock.advance(2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))
        t2 = self.tunnel()
        self.assertEqual(t2.transport.value(), b"")
        self.assertIn(t2, self.record.pool.idle)
        self.assertEqual(self.record.pool.waiters, type(self.record.pool.waiters)())

    def test_tcp_client_token_not_routed_as_http(self):
        """A token of a raw TCP client sent to the HTTP front is not written onto its raw tunnels."""
        self.registry.tcp_opener = lambda record: None
        control = type(self.control)()
        record = register_record(self.registry, control, "tcpclient", KEY, mode="tcp", port=20000)
        self.registry.start_pool(record)
        raw = TunnelServerProtocol(self.registry, self.clock)
        raw.makeConnection(StringTransport())
        raw.dataReceived(wire.tunnel_header("tcpclient", record.tunnel_secret))
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-ARP-Token: tcpclient\r\n\r\n")
        self.assertEqual(raw.transport.value(), b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))

    def test_drain_closes_after_own_answer(self):
        """When the relay drains, a connection whose request the relay answers itself (401, 404,
        302) is closed after that answer, as after a tunneled one."""
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.factory.drain()
        self.assertFalse(transport.disconnecting)
        public.dataReceived(b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_chunked_response_loses_its_content_length(self):
        """A response with both Transfer-Encoding and Content-Length is framed as chunked by the relay;
        the Content-Length is not passed on (RFC 9112 6.3), or the browser could frame it otherwise."""
        head = http.scan_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(http.response_framing(head, b"GET").kind, http.CHUNKED)
        out = http.forward_response_head(head, None)
        self.assertNotIn(b"Content-Length", out)
        self.assertIn(b"Transfer-Encoding: chunked", out)

    def test_token_redirect_stays_on_the_relay(self):
        """The redirect that moves ``?token=`` into a cookie never points off the relay:
        ``//evil.example/?token=T`` (or ``/\\evil.example``) is not an open redirect."""
        for target, where in (
            (b"//evil.example/x?token=client1", b"/evil.example/x"),
            (b"/\\evil.example/?token=client1&a=1", b"/evil.example/?a=1"),
            (b"http://evil.example/p?token=client1", b"/p"),
            (b"/ok/?token=client1", b"/ok/"),
        ):
            public, transport = self.own()  # the client's own port trades the token for a cookie
            public.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: relay\r\nAccept: text/html\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 302 "), transport.value())
            self.assertIn(b"\r\nLocation: " + where + b"\r\n", transport.value())
