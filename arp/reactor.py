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

import sys

from arp.twisted_private import DirectDispatchEPollReactor, EPollReactor

if DirectDispatchEPollReactor is not None:

    class RelayReactor(DirectDispatchEPollReactor):  # type: ignore[valid-type,misc]
        """:class:`EPollReactor` that dispatches events without ``log.callWithLogger``."""


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
