"""Regression tests from the review of the hot-path performance pass: hop-by-hop rules, reactor errors."""

from __future__ import annotations

import os

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_public_unit import FrontFixture

try:
    from twisted.internet.epollreactor import EPollReactor

    from arp.reactor import RelayReactor
except ImportError:  # no epoll
    EPollReactor = RelayReactor = None


class ConnectionListedTests(FrontFixture, unittest.TestCase):
    """Headers named by the request's Connection header are for this hop only."""

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


class _Pipe:
    """A readable end of a pipe registered with a reactor; records reads, may fail on close."""

    def __init__(self, fail_on_close: bool) -> None:
        self.r, self.w = os.pipe()
        os.write(self.w, b"x")
        self.fail_on_close = fail_on_close
        self.reads = 0

    def fileno(self) -> int:
        return self.r

    def logPrefix(self) -> str:  # noqa: N802 - Twisted interface
        return "pipe"

    def doRead(self) -> object:  # noqa: N802 - Twisted interface
        os.read(self.r, 1)
        self.reads += 1
        return ConnectionDone() if self.fail_on_close else None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted interface
        raise RuntimeError("bug in a protocol's connectionLost")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class ReactorContractTests(unittest.TestCase):
    """RelayReactor keeps EPollReactor's per-event error containment."""

    skip = None if RelayReactor is not None else "no epoll"

    def _poll_with(self, reactor_class: type) -> tuple[BaseException | None, _Pipe]:
        reactor = reactor_class()
        bad, good = _Pipe(fail_on_close=True), _Pipe(fail_on_close=False)
        try:
            reactor.addReader(bad)
            reactor.addReader(good)
            try:
                reactor.doPoll(0)
                raised = None
            except RuntimeError as e:
                raised = e
            if not good.reads:  # the batch was cut short; a second round would read it
                reactor.doPoll(0)
        finally:
            reactor.removeAll()
            for reader in list(getattr(reactor, "_internalReaders", ())):
                reactor.removeReader(reader)
                reader.connectionLost(None)
            reactor._poller.close()
            bad.close()
            good.close()
        self.flushLoggedErrors(RuntimeError)
        return raised, good

    def test_epoll_contains_a_failing_connection_lost(self):
        """Control: Twisted's EPollReactor logs the error and carries on with the batch."""
        raised, good = self._poll_with(EPollReactor)
        self.assertIsNone(raised)
        self.assertEqual(good.reads, 1)

    def test_relay_reactor_contains_a_failing_connection_lost(self):
        """An exception from connectionLost (via _disconnectSelectable) does not escape doPoll."""
        raised, _ = self._poll_with(RelayReactor)
        self.assertIsNone(raised, "doPoll let a connectionLost error escape to the main loop")


class ResponseConnectionTests(FrontFixture, unittest.TestCase):
    """A response whose Connection header lists hop-by-hop names that are also dropped by name."""

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
