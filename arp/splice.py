"""Joining two connections so bytes flow both ways, with flow control and half-close.

Each side is registered as the other's streaming producer: when one side's
write buffer fills, Twisted pauses reading on the other, so a slow reader never
makes memory grow without bound.  End of stream travels as a half-close where
the transports support it.  :class:`Splice` is the one implementation of that,
used by every splice ARP makes (upgraded public connections, raw TCP ports and
arpc's forward connections).
"""

from __future__ import annotations

import socket

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from arp.twisted_private import fast_write

__all__ = [
    "SPLICE_LINGER_TIMEOUT",
    "Splice",
    "SpliceEnd",
    "Throttle",
    "close",
    "fast_write",
    "half_close",
    "join",
    "tune",
    "unjoin",
]


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


def half_close(transport: ITransport) -> bool:
    """Send EOF on ``transport`` if it can half-close (True); else close it after flushing (False).

    A TLS transport cannot half-close: it is flushed and closed in both directions.
    """
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
        return True
    transport.loseConnection()
    return False


def close(transport: ITransport, reason: Failure | None) -> None:
    """Close ``transport``: flush on a clean end, abort after an error."""
    if reason is None or reason.check(ConnectionDone):
        transport.loseConnection()
    else:
        transport.abortConnection()


#: Seconds a splice stays open once one direction has ended while no byte moves the other way.
SPLICE_LINGER_TIMEOUT = 60.0


class Splice:
    """Two connections joined (ends 0 and 1): the one end-of-stream logic of every splice.

    Used by upgraded (WebSocket) public connections (:mod:`arp.server.public`), raw TCP ports
    (:mod:`arp.server.tcp`) and arpc's forward connections (:class:`SpliceEnd`).  The protocols
    move the bytes themselves (the hot path stays a plain write) and set :attr:`moved`; they tell
    the splice when an end's reading ends (:meth:`read_lost`) and when an end is gone
    (:meth:`connection_lost`).

    - Each end is registered as the other's streaming producer (a full write buffer on one side
      pauses reading on the other), through a :class:`Throttle` so a dying side never closes the
      other one by way of ``stopProducing``.
    - EOF on one end becomes a half-close of the other end's writing, and the splice *lingers*:
      the other direction goes on (a client that shut its write side still reads the answer).
      A TLS end cannot half-close: it is flushed and both ends are closed.
    - When both directions have ended, both ends are closed.  While only one has, a linger timer
      closes both once ``linger`` seconds pass without a byte moving.
    - When an end is lost, the other is closed: flushed if the lost end had ended cleanly (EOF, or
      a clean close), aborted after an error.
    """

    __slots__ = ("transports", "eof", "gone", "throttled", "clock", "linger", "timer", "moved", "throttles")

    def __init__(
        self, a: ITransport, b: ITransport, clock: object = None, linger: float = SPLICE_LINGER_TIMEOUT
    ) -> None:
        self.transports = (a, b)
        self.eof = [False, False]  # end i's reading has ended (its peer sent EOF)
        self.gone = [False, False]  # end i's connection is lost
        self.throttled = [True, True]  # end i's transport has the other's throttle registered
        self.clock = clock  # None: the global reactor, looked up when a timer is needed
        self.linger = linger
        self.timer = None
        self.moved = False  # set by the protocols whenever they relay bytes
        self.throttles = join(a, b)

    def read_lost(self, end: int) -> None:
        """End ``end`` will send no more: pass the EOF on as a half-close of the other end."""
        if self.eof[end]:
            return
        self.eof[end] = True
        other = 1 - end
        if self.gone[other]:
            return
        if self.eof[other]:  # both directions done
            self.close()
        elif half_close(self.transports[other]):
            self._arm()
        else:  # TLS: the other end was flushed and closed whole; nothing can come back through it
            self.close()

    def connection_lost(self, end: int, reason: Failure | None) -> None:
        """End ``end`` is gone: close the other (flushed if ``end`` ended cleanly, else aborted)."""
        if self.gone[end]:
            return
        self.gone[end] = True
        self._disarm()
        other = 1 - end
        if self.gone[other]:
            return
        self._unthrottle(other)  # the lost end produces nothing more
        close(self.transports[other], None if self.eof[end] else reason)

    def close(self) -> None:
        """Close both ends after flushing what they have to write."""
        self._disarm()
        for end, transport in enumerate(self.transports):
            if not self.gone[end]:
                self._unthrottle(end)
                transport.loseConnection()

    def _unthrottle(self, end: int) -> None:
        if self.throttled[end]:
            self.throttled[end] = False
            self.transports[end].unregisterProducer()

    def _arm(self) -> None:
        if self.timer is None and self.linger > 0:
            clock = self.clock
            if clock is None:
                from twisted.internet import reactor as clock
            self.moved = False
            self.timer = clock.callLater(self.linger, self._lingered)

    def _disarm(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _lingered(self) -> None:
        self.timer = None
        if self.moved:  # the remaining direction is still busy: look again later
            self._arm()
        else:
            self.close()


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """One end of a splice of two protocols: what arrives here is written to ``peer``.

    Before :meth:`splice_to`, an EOF or a loss is only remembered (``_eof_in``, ``_lost``).
    """

    peer: SpliceEnd | None = None
    splice: Splice | None = None
    end = 0
    clock: object = None
    _eof_in = False
    _lost = False

    def splice_to(self, other: SpliceEnd) -> None:
        """Join this connection with ``other`` (both already connected)."""
        self.peer = other
        other.peer = self
        splice = Splice(self.transport, other.transport, self.clock)
        self.splice = other.splice = splice
        self.end, other.end = 0, 1

    def dataReceived(self, data: bytes) -> None:
        self.splice.moved = True
        fast_write(self.peer.transport, data)

    def readConnectionLost(self) -> None:
        self._eof_in = True
        if self.splice is not None:
            self.splice.read_lost(self.end)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self._lost = True
        if self.splice is not None:
            self.splice.connection_lost(self.end, reason)
