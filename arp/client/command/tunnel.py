"""A relay tunnel that serves the command-mode web site in-process."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from arp.splice import tune


@implementer(ITransport, IConsumer, IPushProducer)
class SiteTunnel(ProtocolWrapper):
    """A tunnel to arps whose traffic is handed straight to a :class:`Site`.

    The HTTP channel is built on the first bytes from the relay (its idle
    timeout starts at ``makeConnection``), and then stays for as many
    keep-alive requests as the relay sends.  Autobahn's ``WebSocketResource``
    replaces ``wrappedProtocol`` on an upgrade; our ``connectionLost`` still runs.

    To the HTTP channel this is a plain byte stream, whatever carries the tunnel: it provides
    the transport interfaces above and nothing of the connection under it.  Copying the
    tunnel's own interfaces would make a TLS tunnel look like a TLS connection from the
    browser (``ISSLTransport``), and Autobahn would then ask it for a TLS channel id that
    belongs to the arpc-arps hop (issue #19).  Whether the browser used https is what the
    relay's ``X-Forwarded-Proto`` says.
    """

    def __init__(self, header: bytes, site: Site, tunnels: set) -> None:
        self.header = header
        self.site = site
        self.tunnels = tunnels
        self.wrappedProtocol: IProtocol | None = None  # type: ignore[assignment]
        self.factory = None  # type: ignore[assignment]

    @property
    def in_use(self) -> bool:
        """Whether the relay has sent requests on this tunnel (arpc lets it finish on shutdown)."""
        return self.wrappedProtocol is not None

    def logPrefix(self) -> str:
        return "SiteTunnel"

    def makeConnection(self, transport: object) -> None:
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        tune(self.transport, keepalive=True)
        self.tunnels.add(self)
        self.transport.write(self.header)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is None:
            self.wrappedProtocol = self.site.buildProtocol(self.transport.getPeer())
            if self.wrappedProtocol is None:
                self.transport.abortConnection()
                return
            self.wrappedProtocol.makeConnection(self)
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.tunnels.discard(self)
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        if wrapped is not None:
            wrapped.connectionLost(reason)
