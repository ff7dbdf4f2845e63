"""Which client a request reaches: tokens of raw TCP clients, and the token-to-cookie redirect."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from arp import wire
from arp.server.tunnel import TunnelServerProtocol
from tests.control_helpers import register_record
from tests.test_public_unit import KEY, FrontFixture


class TokenRoutingTests(FrontFixture, unittest.TestCase):
    """A token routes only to an HTTP client's tunnels, and its redirect never leaves the relay."""

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

    def test_token_redirect_stays_on_the_relay(self):
        """The redirect that moves ``?token=`` into a cookie never points off the relay:
        ``//evil.example/?token=T`` (or ``/\\evil.example``) is not an open redirect."""
        for target, where in (
            (b"//evil.example/x?token=client1", b"/evil.example/x"),
            (b"/\\evil.example/?token=client1&a=1", b"/evil.example/?a=1"),
            (b"/ok/?token=client1", b"/ok/"),
        ):
            public, transport = self.own()  # the client's own port trades the token for a cookie
            public.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: relay\r\nAccept: text/html\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 302 "), transport.value())
            self.assertIn(b"\r\nLocation: " + where + b"\r\n", transport.value())
        # an absolute-form target (for proxies) is no path: refused before anything else
        public, transport = self.own()
        public.dataReceived(b"GET http://evil.example/p?token=client1 HTTP/1.1\r\nHost: relay\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
