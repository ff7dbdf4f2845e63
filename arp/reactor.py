"""The reactor arps and arpc run on: Twisted's epoll reactor, minus a per-event log context.

For every ready socket, Twisted's poll reactors call the handler through
``log.callWithLogger``, which asks the connection for its ``logPrefix()`` and
pushes a fresh context dictionary so that *legacy* ``log.msg`` calls made
while handling the event are tagged with it.  ARP logs through
:class:`twisted.logger.Logger`, whose events carry their own namespace, so that
context buys nothing here, while it costs about a tenth of the relay's CPU per
relayed request (A/B runs of the keep-alive benchmark: arps 70 -> 61 us, arpc 28 ->
23 us per keep-alive request).

:class:`RelayReactor` is that epoll reactor with a ``doPoll`` that calls the
handler directly.  Errors are still caught and logged per event, so one
connection's failure never cuts short the others' events; only the logged
tracebacks lose the connection's prefix in their ``system`` field.
``twistd arps`` and ``twistd arpc`` install it unless ``--reactor`` chose
another one (or something installed one already); any twistd application can
ask for it with ``twistd --reactor arp-epoll``.
"""

from __future__ import annotations

import errno
import sys

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform: keep Twisted's default
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class RelayReactor(EPollReactor):  # type: ignore[valid-type,misc]
        """:class:`EPollReactor` that dispatches events without ``log.callWithLogger``."""

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


def install() -> None:
    """Install :class:`RelayReactor` as the global reactor (``twistd --reactor arp-epoll``)."""
    if EPollReactor is None:
        raise ImportError("the arp-epoll reactor needs epoll (Linux)")
    from twisted.internet.main import installReactor

    installReactor(RelayReactor())


def install_unless_chosen() -> bool:
    """Install :class:`RelayReactor` if no reactor is installed yet; True if it did."""
    if EPollReactor is None or "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
