"""The one splice (arp.splice.Splice): flow control both ways, half-close, linger, close.

Driven with StringTransports and a Clock; the real-socket half-close through ``arps --tcp`` and
arpc's forward mode is ``tests/test_relay.py`` ``test_half_closed_tcp_client_reads_the_answer``.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp.server.public import PublicConfig, PublicFactory
from arp.splice import SPLICE_LINGER_TIMEOUT, Splice, SpliceEnd, Throttle
from tests.test_public_unit import FrontFixture


class TCPLike(StringTransport):
    """A StringTransport that can half-close, like a TCP transport (and records that it did)."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class TLSLike(StringTransport):
    """A StringTransport without ``loseWriteConnection``, like a TLS transport."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class SpliceTests(unittest.TestCase):
    """Splice over two transports, with a Clock for the linger timer."""

    def setUp(self):
        self.clock = Clock()
        self.a, self.b = TCPLike(), TCPLike()
        self.splice = Splice(self.a, self.b, self.clock)

    def test_producers_registered_both_ways(self):
        """Each transport throttles the other: a full buffer on one pauses reading on the other,
        and a dying side's stopProducing never closes the other."""
        self.assertIsInstance(self.a.producer, Throttle)
        self.assertTrue(self.a.streaming)
        self.assertIs(self.a.producer.transport, self.b)
        self.assertIs(self.b.producer.transport, self.a)
        self.a.producer.pauseProducing()  # what Twisted does when a's write buffer fills
        self.assertEqual(self.b.producerState, "paused")
        self.a.producer.resumeProducing()
        self.assertEqual(self.b.producerState, "producing")
        self.a.producer.stopProducing()
        self.assertFalse(self.b.disconnecting)

    def test_eof_becomes_half_close_and_the_answer_still_flows(self):
        """EOF from end 0 half-closes end 1's writing; end 1 is not closed, so its answer can come."""
        self.splice.read_lost(0)
        self.assertTrue(self.b.write_closed)
        self.assertFalse(self.b.disconnecting)
        self.assertFalse(self.a.disconnecting, "the answer's way back was closed")
        self.assertFalse(self.a.write_closed)

    def test_both_directions_done_closes_both(self):
        """EOF from both ends closes both, flushed (not aborted), and the linger timer is gone."""
        self.splice.read_lost(0)
        self.splice.read_lost(1)
        self.assertTrue(self.a.disconnecting and self.b.disconnecting)
        self.assertFalse(self.a.aborted or self.b.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.a.producer)
        self.assertIsNone(self.b.producer)

    def test_linger_timer_closes_a_quiet_half_open_splice(self):
        """After a half-close, a splice with nothing moving is closed after the linger timeout."""
        self.splice.read_lost(0)
        self.clock.advance(SPLICE_LINGER_TIMEOUT - 1)
        self.assertFalse(self.a.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.a.disconnecting and self.b.disconnecting)
        self.assertFalse(self.a.aborted or self.b.aborted)

    def test_linger_timer_spares_a_busy_half_open_splice(self):
        """While bytes keep moving the other way, the half-open splice stays open."""
        self.splice.read_lost(1)
        for _ in range(5):
            self.splice.moved = True  # what the protocols do as they relay
            self.clock.advance(SPLICE_LINGER_TIMEOUT)
            self.assertFalse(self.a.disconnecting)
        self.clock.advance(SPLICE_LINGER_TIMEOUT)
        self.assertTrue(self.a.disconnecting and self.b.disconnecting)

    def test_clean_loss_flushes_the_other(self):
        """An end that sent EOF and is then lost lets the other end flush and close."""
        self.splice.read_lost(0)
        self.splice.connection_lost(0, Failure(ConnectionDone()))
        self.assertTrue(self.b.disconnecting)
        self.assertFalse(self.b.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_error_aborts_the_other(self):
        """An end lost to an error (no EOF first) aborts the other: a cut stream is not a complete one."""
        self.splice.connection_lost(1, Failure(ConnectionLost()))
        self.assertTrue(self.a.aborted)
        self.assertIsNone(self.a.producer)

    def test_second_loss_does_nothing(self):
        """Once both ends are gone nothing more is closed or scheduled."""
        self.splice.connection_lost(1, Failure(ConnectionLost()))
        self.splice.connection_lost(0, Failure(ConnectionDone()))
        self.assertFalse(self.b.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_tls_end_cannot_half_close(self):
        """EOF towards a TLS end (no half-close): it is flushed and closed, and so is the other end."""
        tls, plain = TLSLike(), TCPLike()
        splice = Splice(tls, plain, self.clock)
        splice.read_lost(1)
        self.assertTrue(tls.disconnecting)
        self.assertFalse(tls.aborted)
        self.assertTrue(plain.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Echo(SpliceEnd):
    """A SpliceEnd for the tests."""


class SpliceEndTests(unittest.TestCase):
    """Two SpliceEnd protocols (arpc's forward mode, bench/splice.py) over the same Splice."""

    def setUp(self):
        self.clock = Clock()
        self.left, self.right = Echo(), Echo()
        self.left.clock = self.clock
        self.left.makeConnection(TCPLike())
        self.right.makeConnection(TCPLike())
        self.left.splice_to(self.right)

    def test_bytes_and_half_close_through_protocols(self):
        """Bytes go across; EOF on the left half-closes the right; the right's answer still comes back."""
        self.left.dataReceived(b"request")
        self.assertEqual(self.right.transport.value(), b"request")
        self.left.readConnectionLost()
        self.assertTrue(self.right.transport.write_closed)
        self.right.dataReceived(b"answer")
        self.assertEqual(self.left.transport.value(), b"answer")
        self.right.readConnectionLost()
        self.assertTrue(self.left.transport.disconnecting and self.right.transport.disconnecting)

    def test_loss_after_eof_flushes_the_peer(self):
        """The right end closing after its EOF leaves the left to flush, not abort."""
        self.right.readConnectionLost()
        self.right.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.left.transport.disconnecting)
        self.assertFalse(self.left.transport.aborted)


class UpgradedSpliceTests(FrontFixture, unittest.TestCase):
    """A public connection after ``101 Switching Protocols`` uses the same Splice."""

    def upgraded(self):
        self.factory = PublicFactory(self.registry, PublicConfig(), self.clock)
        t = self.tunnel()
        t.transport.__class__ = TCPLike
        public, transport = self.public()
        transport.__class__ = TCPLike
        public.dataReceived(
            b"GET /ws HTTP/1.1\r\nX-ARP-Token: client1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        t.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        self.assertIsInstance(public._splice, Splice)
        return public, transport, t

    def test_public_half_close_reaches_the_service_and_answer_returns(self):
        """The browser side's EOF half-closes the tunnel; the service's later bytes still arrive."""
        public, transport, t = self.upgraded()
        public.readConnectionLost()
        self.assertTrue(t.transport.write_closed)
        self.assertFalse(transport.disconnecting)
        t.dataReceived(b"last words")
        self.assertTrue(transport.value().endswith(b"last words"))
        t.readConnectionLost()  # the service is done too
        self.assertTrue(transport.disconnecting and t.transport.disconnecting)

    def test_producers_registered_both_ways_after_upgrade(self):
        """After the 101 each side throttles the other through the splice's throttles."""
        public, transport, t = self.upgraded()
        self.assertIs(transport.producer.transport, t.transport)
        self.assertIs(t.transport.producer.transport, transport)

    def test_tunnel_error_aborts_public(self):
        """A tunnel lost to an error aborts the public connection."""
        public, transport, t = self.upgraded()
        t.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(transport.aborted)
