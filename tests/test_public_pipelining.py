"""Pipelined requests: each one answered in turn, also after a half-close or while draining."""

from __future__ import annotations

from twisted.trial import unittest

from tests.test_public_unit import FrontFixture


class PipeliningTests(FrontFixture, unittest.TestCase):
    """Many pipelined requests answered by the relay itself, and the drain after an own answer."""

    def test_many_pipelined_refusals(self):
        """Hundreds of pipelined requests that are answered by the relay itself (401) do not
        raise out of dataReceived (no recursion per request)."""
        public, transport = self.public()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), 2000)

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


class PipelinedHalfCloseTests(FrontFixture, unittest.TestCase):
    """A client that pipelines requests and then half-closes gets an answer to each one."""

    def test_every_pipelined_request_answered_then_closed(self):
        """Two GETs, then EOF: both go through the tunnel in turn; the last answer closes."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(
            b"GET /1 HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\nGET /2 HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\n"
        )
        public.readConnectionLost()
        self.assertIn(b"GET /1 ", t.transport.value())
        t.transport.clear()
        t.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        self.assertFalse(transport.disconnecting, "closed with a request still unanswered")
        self.assertIn(b"GET /2 ", t.transport.value())
        t.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        answers = transport.value()
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK"), 2, answers)
        self.assertTrue(answers.endswith(b"Connection: close\r\n\r\nb"), answers)
        self.assertTrue(transport.disconnecting)
        self.assertIn(t, self.record.pool.idle, "the tunnel goes back to the pool")

    def test_relay_answers_pipelined_then_closed(self):
        """Requests the relay answers itself (unknown tokens) are each answered before the close."""
        public, transport = self.public()
        public.dataReceived(
            b"GET /1 HTTP/1.1\r\nX-ARP-Token: nobody\r\n\r\nGET /2 HTTP/1.1\r\nX-ARP-Token: no\r\n\r\n"
        )
        public.readConnectionLost()
        answers = transport.value()
        self.assertEqual(answers.count(b"HTTP/1.1 404 "), 2, answers)
        self.assertTrue(transport.disconnecting)

    def test_partial_head_after_eof_is_dropped(self):
        """A complete request, then half a head, then EOF: the first is answered, then the close."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(b"GET /1 HTTP/1.1\r\nX-ARP-Token: client1\r\n\r\nGET /2 HT")
        public.readConnectionLost()
        t.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"HTTP/1.1 204 No Content", transport.value())
        self.assertNotIn(b"GET /2", t.transport.value())
        self.assertTrue(transport.disconnecting)
