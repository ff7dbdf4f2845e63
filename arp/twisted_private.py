"""Every use ARP makes of Twisted's private or undocumented attributes, in one place.

Twisted may rename any of these in a release without notice.  Each one is
used only through this module, and ``tests/test_twisted_private.py`` checks,
on the installed Twisted, that each still exists and still means what ARP
assumes.  ``setup.cfg`` bounds Twisted from above at the last major version
this contract was checked against (``TWISTED_CHECKED``); raise the bound only
after the contract test passes on the new version.

What is used, and why:

- ``tcp.Connection._tempDataLen``, ``dataBuffer``, ``offset``, ``socket``,
  ``TLS`` (:func:`fast_write`): whether a plain TCP transport's write queue is
  empty, so a write can go straight to the socket (one ``send`` instead of
  queueing, two ``epoll_ctl`` calls and a poll round).
- ``EPollReactor._poller``, ``_selectables``, ``_doReadOrWrite``
  (:class:`DirectDispatchEPollReactor`): a ``doPoll`` without the per-event
  ``log.callWithLogger`` (see :mod:`arp.reactor`).
- ``SSL4ServerEndpoint._sslContextFactory`` (:func:`ssl_context_factory`): the
  TLS context of an ``ssl:`` listening endpoint, to install the ALPN selector
  (see :mod:`arp.tls`).
- ``globalLogPublisher._observers`` (:func:`log_observers`): the observers to
  wrap in a level filter (``--log-level``).
- ``HTTPConnectionPool._factory`` and ``twisted.web.client._HTTP11ClientFactory``
  (:func:`quiet_connection_pool`): an HTTP client pool that does not log
  "Starting factory" for every webhook delivery.
- ``twisted.web.http.Request._disconnected`` (:func:`request_disconnected`):
  whether the client went away before a delayed answer was ready.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport
from twisted.python import log

#: The newest Twisted release series the contract test passed on; setup.cfg says ``< TWISTED_CHECKED + 1``.
TWISTED_CHECKED = 26

_PLAIN_TCP = (tcp.Server, tcp.Client)


def fast_write(transport: ITransport, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued.

    Twisted queues every write until the next poll says the socket is writable,
    which costs two ``epoll_ctl`` calls and a poll round per write.  On the hot
    path (one request head, one small response) the socket is almost always
    writable, so try ``send`` first and queue only what it did not take.  TLS
    and other non-socket transports take the ordinary path.
    """
    if (
        type(transport) in _PLAIN_TCP  # not a TLS wrapper (it would proxy .socket to the raw one)
        and not transport._tempDataLen  # noqa: SLF001 - Twisted's write queue
        and len(transport.dataBuffer) == transport.offset
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error that Twisted's own write path will report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def ssl_context_factory(endpoint: object) -> object | None:
    """The context factory of an ``SSL4ServerEndpoint`` (None for any other endpoint)."""
    return getattr(endpoint, "_sslContextFactory", None)


def log_observers(publisher: Any) -> list:
    """The observers a :class:`twisted.logger.LogPublisher` sends events to now."""
    return list(publisher._observers)  # noqa: SLF001


def quiet_connection_pool(reactor: Any, persistent: bool = False) -> Any:
    """An ``HTTPConnectionPool`` whose connection factories are not ``noisy``.

    (twisted.web.client is imported here, not at the top: the relay's hot path imports this module.)
    """
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False  # no "Starting factory" lines per delivery

    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = QuietFactory  # type: ignore[attr-defined]  # noqa: SLF001
    return pool


def request_disconnected(request: Any) -> bool:
    """Whether the connection of a :class:`twisted.web.http.Request` was lost before it finished."""
    return request._disconnected  # noqa: SLF001


try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class DirectDispatchEPollReactor(EPollReactor):  # type: ignore[valid-type,misc]
        """:class:`EPollReactor` whose ``doPoll`` calls each event's handler directly.

        Twisted's wraps every call in ``log.callWithLogger``; errors are still caught and
        logged per event here, so one connection's failure never cuts short the others'.
        """

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            handle = self._doReadOrWrite
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:  # removed by an earlier event of this round
                    continue
                try:  # free unless something raises (Python 3.11)
                    handle(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # what callWithLogger did: a connectionLost that raises (handle catches the
                    # rest itself) is logged, and the other events of this round still run
                    log.err(None, f"error handling an event of {selectable!r}")

        doIteration = doPoll

else:
    DirectDispatchEPollReactor = None  # type: ignore[assignment,misc]
