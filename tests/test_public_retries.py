"""Retries of idempotent requests whose tunnel died before an answer, and giving up on them."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp.server.public import PublicConfig, PublicFactory
from tests.test_public_unit import FrontFixture


class RetryTests(FrontFixture, unittest.TestCase):
    """What is retried on a fresh tunnel, byte for byte, and what is answered 502/504 instead."""

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

    def test_retry_resends_the_same_rewritten_head(self):
        """After a tunnel dies, the retried GET is byte for byte the head sent the first time."""
        t1, t2 = self.tunnel(), self.tunnel()
        public, _ = self.public()
        public.dataReceived(
            b"GET / HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: te, x-a\r\nX-A: 1\r\nTE: trailers\r\n\r\n"
        )
        first = t2.transport.value()
        t2.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(t1.transport.value(), first)
        self.assertNotIn(b"x-a", first.lower().replace(b"x-arp", b""))


class SlowUploadTests(FrontFixture, unittest.TestCase):
    """The response timeout runs from the end of the request, not from its head."""

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
