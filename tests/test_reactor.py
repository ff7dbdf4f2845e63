"""The relay's epoll reactor keeps the error containment of Twisted's own."""

from __future__ import annotations

import os

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

try:
    from twisted.internet.epollreactor import EPollReactor

    from arp.reactor import RelayReactor
except ImportError:  # no epoll
    EPollReactor = RelayReactor = None


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
