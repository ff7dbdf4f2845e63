"""Relay and service agree on where each message ends, and hop-by-hop headers stay on their hop."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from arp import http
from tests.test_public_unit import FrontFixture


class FramingAgreementTests(FrontFixture, unittest.TestCase):
    """No header can make the relay and the service frame a body differently (request smuggling)."""

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


class HopByHopTests(FrontFixture, unittest.TestCase):
    """Headers named by a Connection header, and the relay's own token header, are for one hop only."""

    def _sent(self, request: bytes) -> bytes:
        t = self.tunnel()
        public, _ = self.public()
        public.dataReceived(request)
        return t.transport.value()

    def test_listed_forwarded_for_not_passed_on(self):
        """A Connection-listed X-Forwarded-For is dropped before its value is read (as before the
        change): the service sees only the peer, not the hop-by-hop value."""
        sent = self._sent(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: x-forwarded-for\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\n\r\n"
        )
        self.assertNotIn(b"6.6.6.6", sent)
        self.assertIn(b"X-Forwarded-For: 192.168.1.1\r\n", sent)

    def test_token_header_dropped_whatever_its_case(self):
        """X-ARP-Token never reaches the service, also when the token came from the query."""
        sent = self._sent(b"GET /?token=client1 HTTP/1.1\r\nx-Arp-TOKEN: client1\r\n\r\n")
        self.assertNotIn(b"client1", sent.lower())

    def test_apache_h2c_upgrade_offer(self):
        """``Connection: Upgrade, Keep-Alive`` with Upgrade and Keep-Alive headers (Apache with h2c)
        is passed on without them; Head.remove got each name twice and raised KeyError."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n")
        t.dataReceived(
            b"HTTP/1.1 200 OK\r\nUpgrade: h2,h2c\r\nConnection: Upgrade, Keep-Alive\r\n"
            b"Keep-Alive: timeout=5, max=100\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class HostileResponseTests(FrontFixture, unittest.TestCase):
    """A service's answer that a client would read differently than the relay (issue #21)."""

    def test_bare_cr_in_the_reason_phrase(self):
        """``200 OK\\rSet-Cookie: arp_…=EVIL``: a browser ends the line at the CR and would take the
        rest as a header the relay never saw (an ARP cookie, a hidden Transfer-Encoding, an HSTS
        ahead of --hsts). The status line is refused: 502, the tunnel aborted, nothing passed on."""
        for hidden in (
            b"Set-Cookie: arp_0123456789abcdef0123=EVIL",
            b"Transfer-Encoding: chunked",
            b"Strict-Transport-Security: max-age=0",
        ):
            t = self.tunnel()
            public, transport = self.public()
            public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
            t.dataReceived(b"HTTP/1.1 200 OK\r" + hidden + b"\r\nContent-Length: 2\r\n\r\nok")
            out = transport.value()
            self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
            self.assertNotIn(hidden, out)
            self.assertTrue(t.transport.disconnected)

    def test_reason_phrase_rules(self):
        """Tabs, spaces, visible and non-ASCII octets pass; other control characters do not; an
        empty reason is allowed; the version must be HTTP/1.0 or HTTP/1.1."""
        for good in (b"HTTP/1.1 200 OK", b"HTTP/1.1 200 ", b"HTTP/1.0 404 Not\tFound \xe9"):
            http.scan_response_head(good + b"\r\n\r\n")
        bad_lines = (b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 O\x1bK", b"HTTP/1.1\rX 200", b"HTTP/1.12 200 OK")
        for bad in bad_lines:
            with self.assertRaises(http.HTTPError):
                http.scan_response_head(bad + b"\r\n\r\n")

    def test_unrequested_101(self):
        """A service that answers a plain GET (or an ``Upgrade: h2c`` offer the relay took out) with
        ``101``: 502 and the tunnel aborted, so the ``200`` it sends next answers nobody (a client
        that took the 101 as final would read it as the answer to its next request)."""
        h2c = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        for extra in (b"", h2c):
            t = self.tunnel()
            public, transport = self.public()
            public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n%s\r\n" % extra)
            self.assertNotIn(b"h2c", t.transport.value())
            t.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
            out = transport.value()
            self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
            self.assertNotIn(b"101", out.split(b"\r\n", 1)[0])
            self.assertTrue(t.transport.disconnected)
            t.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
            self.assertNotIn(b"forged", transport.value())


class RequestTargetAndHostTests(FrontFixture, unittest.TestCase):
    """Requests the relay and the service could read differently (issue #21.12)."""

    def test_two_hosts_and_non_path_targets_are_refused(self):
        """Two Host lines (the relay would route by one, the service by the other), an absolute or
        authority-form target, or ``?token=`` with no path: 400, nothing forwarded."""
        t = self.tunnel()
        for request in (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-ARP-Token: client1\r\n\r\n",
            b"GET http://other.example/ HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n",
            b"CONNECT other.example:443 HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n",
            b"GET ?token=client1 HTTP/1.1\r\nHost: relay\r\n\r\n",
        ):
            public, transport = self.public()
            public.dataReceived(request)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), (request, transport.value()))
        self.assertEqual(t.transport.value(), b"")

    def test_response_head_over_the_limit(self):
        """A service's response head larger than --max-head-size is refused (502) even when it
        arrives whole in one read."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        big = b"X-Pad: " + b"a" * (self.factory.config.max_head + 10) + b"\r\n"
        t.dataReceived(b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "), transport.value()[:200])
        self.assertNotIn(b"X-Pad", transport.value())

    def test_forwarded_and_x_real_ip_are_the_relays(self):
        """A client's own ``Forwarded`` and ``X-Real-IP`` do not reach the service (only the relay
        says where a request came from, in ``X-Forwarded-For``)."""
        t = self.tunnel()
        public, _ = self.public()
        public.dataReceived(
            b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\nForwarded: for=6.6.6.6\r\n"
            b"X-Real-IP: 6.6.6.6\r\n\r\n"
        )
        sent = t.transport.value()
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"), sent)
        self.assertNotIn(b"6.6.6.6", sent)


class InformationalFloodTests(FrontFixture, unittest.TestCase):
    """A hostile service answers with thousands of 1xx responses in one read."""

    def test_thousands_of_1xx_in_one_read(self):
        """5000 ``103 Early Hints`` then ``200`` in one read: every one is passed on and the final
        answer arrives (before: one recursion per 1xx head, RecursionError in arps, exchange cut)."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        hints = b"HTTP/1.1 103 Early Hints\r\n\r\n"
        t.dataReceived(hints * 5000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        out = transport.value()
        self.assertEqual(out.count(hints), 5000)
        self.assertTrue(out.endswith(b"\r\n\r\nok"), out[-200:])

    def test_1xx_heads_split_across_reads(self):
        """1xx heads cut anywhere across reads are still passed on whole, then the final answer."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        stream += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        for i in range(0, len(stream), 7):
            t.dataReceived(stream[i : i + 7])
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nok"), out[-200:])


class HalfCloseableTransport(StringTransport):
    """A StringTransport that, like a TCP one, can close its write side alone."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class LingeringCloseTests(FrontFixture, unittest.TestCase):
    """An answer given while the request body is still arriving survives the close."""

    def lingering(self):
        t = self.tunnel()
        public = self.factory.buildProtocol(None)
        transport = HalfCloseableTransport()
        public.makeConnection(transport)
        public.dataReceived(b"POST /up HTTP/1.1\r\nX-ARP-Token: client1\r\nContent-Length: 999999\r\n\r\nabc")
        t.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        return public, transport

    def test_half_close_then_drop_the_rest(self):
        """After the early answer the relay half-closes (no reset that would destroy the answer in
        the client's kernel), drops what the client still sends, and closes when it is done."""
        public, transport = self.lingering()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Too Large\r\n"))
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        public.dataReceived(b"x" * 4096)  # the body still in flight: dropped, not parsed
        self.assertFalse(transport.disconnecting)
        public.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_lingering_is_bounded(self):
        """A client that goes on sending is cut after LINGER_MAX_BYTES, or closed after
        LINGER_CLOSE_TIMEOUT."""
        from arp.server.public import LINGER_CLOSE_TIMEOUT, LINGER_MAX_BYTES

        public, transport = self.lingering()
        public.dataReceived(b"x" * (LINGER_MAX_BYTES + 1))
        self.assertTrue(transport.disconnected)
        public, transport = self.lingering()
        self.clock.advance(LINGER_CLOSE_TIMEOUT + 1)
        self.factory._sweep()
        self.assertTrue(transport.disconnecting)
