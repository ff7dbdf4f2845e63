"""Joining two connections so bytes flow both ways, with flow control and half-close.

Each side is registered as the other's streaming producer: when one side's
write buffer fills, Twisted pauses reading on the other, so a slow reader never
makes memory grow without bound.  End of stream travels as a half-close where
the transports support it.
"""

from __future__ import annotations

import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from arp.twisted_private import fast_write

__all__ = ["SpliceEnd", "Throttle", "close", "fast_write", "half_close", "join", "tune", "unjoin"]


def tune(transport: ITransport, keepalive: bool = False) -> None:
    """Turn on TCP_NODELAY (and optionally keep-alive probes) on the socket under ``transport``."""
    target = transport
    for _ in range(4):  # a TLS transport wraps the TCP one
        inner = getattr(target, "transport", None)
        if inner is None or inner is target:
            break
        target = inner
    try:
        target.setTcpNoDelay(True)
        if keepalive:
            target.setTcpKeepAlive(True)
            sock = target.getHandle()
            for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except (AttributeError, OSError):
        pass


@implementer(IPushProducer)
class Throttle:
    """Lets one connection pause and resume another's reading, but never close it.

    A transport that dies calls ``stopProducing`` on its producer; registering
    the other transport directly would close it too (a retried request, a tunnel
    returned to the pool).  Our protocols decide what a close means themselves.
    """

    __slots__ = ("transport", "paused")

    def __init__(self, transport: ITransport) -> None:
        self.transport = transport
        self.paused = False  # whether the other side's full buffer holds back our reading now

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def join(a: ITransport, b: ITransport) -> tuple[Throttle, Throttle]:
    """Make each transport throttle the other: a full write buffer pauses reading on the other side.

    Returns the throttles of ``a``'s and of ``b``'s reading.
    """
    throttle_a, throttle_b = Throttle(a), Throttle(b)
    a.registerProducer(throttle_b, True)
    b.registerProducer(throttle_a, True)
    return throttle_a, throttle_b


def unjoin(a: ITransport, b: ITransport) -> None:
    """Undo :func:`join` and make sure neither side is left paused."""
    a.unregisterProducer()
    b.unregisterProducer()
    a.resumeProducing()
    b.resumeProducing()


def half_close(transport: ITransport) -> None:
    """Send EOF on ``transport`` if it can half-close, else close it after flushing."""
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


def close(transport: ITransport, reason: Failure | None) -> None:
    """Close ``transport``: flush on a clean end, abort after an error."""
    if reason is None or reason.check(ConnectionDone):
        transport.loseConnection()
    else:
        transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """One end of a splice: what arrives here is written to ``peer``."""

    peer: SpliceEnd | None = None
    _eof_in = False
    _eof_out = False
    _lost = False

    def splice_to(self, other: SpliceEnd) -> None:
        """Join this connection with ``other`` (both already connected)."""
        self.peer = other
        other.peer = self
        join(self.transport, other.transport)

    def dataReceived(self, data: bytes) -> None:
        fast_write(self.peer.transport, data)

    def readConnectionLost(self) -> None:
        self._eof_in = True
        if self.peer is not None and not self.peer._lost:
            half_close(self.peer.transport)
            self.peer._eof_out = True
            if self.peer._eof_in:
                self.peer.transport.loseConnection()
        if self._eof_out:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._eof_out = True

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self._lost = True
        peer = self.peer
        if peer is not None and not peer._lost:
            peer.transport.unregisterProducer()  # this side is gone; it produces nothing more
            close(peer.transport, None if self._eof_in else reason)
