"""The contract ARP relies on from Twisted's private attributes (see :mod:`arp.twisted_private`).

Each test checks, on the installed Twisted, that an attribute still exists and still behaves as
ARP assumes.  When one fails after a Twisted upgrade, fix ``arp/twisted_private.py`` before raising
the upper bound on Twisted in setup.cfg.
"""

from __future__ import annotations

import configparser
import os

from twisted.internet import defer, reactor, tcp
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

import twisted
from arp import twisted_private

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.done.callback(self.data)


class VersionBoundTests(unittest.TestCase):
    """setup.cfg bounds Twisted at the release series this contract was checked against."""

    def test_installed_twisted_within_checked_bound(self):
        """The installed Twisted is not newer than the series the contract was checked on."""
        major = int(twisted.__version__.split(".")[0])
        self.assertLessEqual(major, twisted_private.TWISTED_CHECKED)

    def test_setup_cfg_upper_bound_matches(self):
        """setup.cfg says ``twisted[tls] >= ..., < TWISTED_CHECKED + 1``."""
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        requires = config["options"]["install_requires"]
        line = next(x for x in requires.splitlines() if x.strip().startswith("twisted"))
        self.assertIn(f"< {twisted_private.TWISTED_CHECKED + 1}", line)


class WriteQueueTests(unittest.TestCase):
    """``fast_write`` reads a plain TCP transport's write queue (``_tempDataLen``, ``dataBuffer``,
    ``offset``) and sends on its ``socket``; the bytes arrive in order either way."""

    @defer.inlineCallbacks
    def test_fast_write_on_a_real_connection(self):
        """Writes that go straight to the socket and writes queued behind them arrive in order."""
        received = _Collect()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: received), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sender = Protocol()
        connected = defer.Deferred()
        sender.connectionMade = lambda: connected.callback(None)
        client = reactor.connectTCP(
            "127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: sender)
        )
        self.addCleanup(client.disconnect)
        yield connected
        transport = sender.transport
        self.assertIs(type(transport), tcp.Client)
        self.assertFalse(transport.TLS)
        for name in ("_tempDataLen", "dataBuffer", "offset", "socket"):
            self.assertTrue(hasattr(transport, name), name)
        self.assertEqual(transport._tempDataLen, 0)
        self.assertEqual(len(transport.dataBuffer), transport.offset)  # nothing queued
        twisted_private.fast_write(transport, b"first ")
        self.assertEqual(len(transport.dataBuffer), transport.offset, "a small write was queued")
        transport.write(b"queued ")  # Twisted's own path: queued until the socket is writable
        self.assertEqual(transport._tempDataLen, len(b"queued "), "Twisted no longer queues in _tempData")
        twisted_private.fast_write(transport, b"after")  # must queue behind it, not overtake it
        transport.loseConnection()
        data = yield received.done
        self.assertEqual(data, b"first queued after")


class ReactorInternalsTests(unittest.TestCase):
    """EPollReactor still polls ``_poller`` for the fds in ``_selectables`` and handles each with
    ``_doReadOrWrite``: what :class:`arp.twisted_private.DirectDispatchEPollReactor` calls."""

    skip = None if twisted_private.DirectDispatchEPollReactor is not None else "no epoll"

    def test_poll_reads_a_ready_pipe(self):
        """A readable pipe registered as a reader is read by one ``doPoll``."""
        r, w = os.pipe()
        reads = []

        class Reader:
            def fileno(self) -> int:
                return r

            def logPrefix(self) -> str:  # noqa: N802 - Twisted interface
                return "reader"

            def doRead(self) -> None:  # noqa: N802 - Twisted interface
                reads.append(os.read(r, 10))

            def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted interface
                pass

        rx = twisted_private.DirectDispatchEPollReactor()
        try:
            self.assertTrue(callable(rx._doReadOrWrite))
            self.assertIsInstance(rx._selectables, dict)
            reader = Reader()
            rx.addReader(reader)
            self.assertIs(rx._selectables[r], reader)
            os.write(w, b"x")
            rx.doPoll(0)
            self.assertEqual(reads, [b"x"])
            rx.removeReader(reader)
        finally:
            for internal in list(getattr(rx, "_internalReaders", ())):
                rx.removeReader(internal)
                internal.connectionLost(None)
            rx._poller.close()
            os.close(r)
            os.close(w)


class SmallInternalsTests(unittest.TestCase):
    """The TLS endpoint's context factory, the log publisher's observers, the client pool's factory
    and a request's disconnected flag."""

    def test_ssl_endpoint_context_factory(self):
        """``SSL4ServerEndpoint`` keeps the context factory it was given in ``_sslContextFactory``."""
        creator = object()
        endpoint = SSL4ServerEndpoint(reactor, 0, creator)
        self.assertIs(twisted_private.ssl_context_factory(endpoint), creator)
        self.assertIsNone(twisted_private.ssl_context_factory(TCP4ServerEndpoint(reactor, 0)))

    def test_log_observers(self):
        """A LogPublisher's observers are the ones added to it."""
        publisher = LogPublisher()

        def observer(event: dict) -> None:
            pass

        publisher.addObserver(observer)
        self.assertEqual(twisted_private.log_observers(publisher), [observer])
        publisher.removeObserver(observer)
        self.assertEqual(twisted_private.log_observers(publisher), [])

    def test_quiet_pool_factory_is_used(self):
        """The pool builds its connections' factories from ``_factory``, and ours is not noisy."""
        pool = twisted_private.quiet_connection_pool(reactor)
        self.assertFalse(pool._factory.noisy)
        factory = pool._factory(lambda p: None, "endpoint")
        self.assertFalse(factory.noisy)

    def test_request_disconnected_flag(self):
        """``Request._disconnected`` is False until the connection is lost, then True."""
        request = server.Request(DummyChannel(), False)
        self.assertFalse(twisted_private.request_disconnected(request))
        request.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(twisted_private.request_disconnected(request))


class PlainSocketTests(unittest.TestCase):
    """``fast_write`` leaves non-TCP transports to their own ``write``."""

    def test_other_transports_use_write(self):
        """A transport that is not a plain tcp.Server/Client gets an ordinary ``write``."""
        transport = StringTransport()
        twisted_private.fast_write(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")
