"""Graceful shutdown: SIGTERM on either side lets in-flight requests finish."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from tests.helpers import listen_backend, start_arpc, start_arps


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.started = defer.Deferred()
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if not self.started.called and b"first half" in self.data:
            self.started.callback(None)

    def connectionLost(self, reason):
        self.done.callback(self.data)


class ShutdownTests(unittest.TestCase):
    """A response in flight when a process is told to stop still arrives whole."""

    timeout = 60

    async def _in_flight(self, relay, token):
        proto = Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"]), proto)
        proto.transport.write(f"GET /slow/1.5?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await proto.started
        return proto

    async def test_relay_sigterm_finishes_requests(self):
        """arps on SIGTERM completes the response in flight, closes the connection, exits 0."""
        relay = await start_arps(self, "--grace", "10")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        proto = await self._in_flight(relay, arpc.token)
        relay.proc.signal("TERM")
        data = await proto.done
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "))
        self.assertTrue(data.endswith(b"first half......\nend\n"))
        await relay.proc.ended
        self.assertTrue(relay.proc.stopped_cleanly, relay.proc.output[-3000:])

    async def test_client_sigterm_finishes_requests(self):
        """arpc on SIGTERM lets the request in flight complete before it exits."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        proto = await self._in_flight(relay, arpc.token)
        arpc.signal("TERM")
        await arpc.ended
        self.assertTrue(arpc.stopped_cleanly, arpc.output[-3000:])
        self.assertTrue(proto.data.endswith(b"first half......\nend\n"))
        proto.transport.loseConnection()
        await proto.done
