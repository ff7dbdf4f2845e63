"""Listening helpers: the lazily built factory of the admin endpoint."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from arp.listen import LazyFactory


class Recording(Factory):
    """A factory that records when it is started and stopped."""

    protocol = Protocol

    def __init__(self) -> None:
        self.events: list[str] = []

    def startFactory(self) -> None:
        self.events.append("start")

    def stopFactory(self) -> None:
        self.events.append("stop")


class LazyFactoryTests(unittest.TestCase):
    """The real factory is built on the first connection, once, and started and stopped with the port."""

    def test_built_on_first_connection_only(self):
        """Nothing is built until a connection arrives; then once, started at once, stopped with the port."""
        built: list[Recording] = []

        def build() -> Recording:
            built.append(Recording())
            return built[-1]

        lazy = LazyFactory(build)
        lazy.doStart()
        self.assertEqual(built, [], "nothing is built while no connection arrives")
        addr = IPv4Address("TCP", "127.0.0.1", 5000)
        first = lazy.buildProtocol(addr)
        second = lazy.buildProtocol(addr)
        self.assertEqual(len(built), 1)
        self.assertIsInstance(first, Protocol)
        self.assertIs(first.factory, built[0])
        self.assertIs(second.factory, built[0])
        self.assertEqual(built[0].events, ["start"], "built after the port started: started at once")
        lazy.doStop()
        self.assertEqual(built[0].events, ["start", "stop"])

    def test_never_used_never_built(self):
        """A port started and stopped without connections never builds the factory."""
        lazy = LazyFactory(lambda: self.fail("built without a connection"))
        lazy.doStart()
        lazy.doStop()

    def test_failing_build_refuses_the_connection(self):
        """A factory that cannot be built is logged and the connection refused; a later one retries."""
        attempts: list[int] = []

        def build() -> Recording:
            attempts.append(1)
            if len(attempts) == 1:
                raise OSError("admin.html missing")
            return Recording()

        lazy = LazyFactory(build)
        lazy.doStart()
        addr = IPv4Address("TCP", "127.0.0.1", 5000)
        self.assertIsNone(lazy.buildProtocol(addr))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertIsInstance(lazy.buildProtocol(addr), Protocol)
        self.assertEqual(len(attempts), 2)
        lazy.doStop()
