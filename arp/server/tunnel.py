"""The relay's end of a tunnel: a connection arpc opened to the proxy port."""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import wire
from arp.mismatch import MismatchLog, looks_like_tls
from arp.server.registry import ClientRecord, Registry
from arp.splice import tune

HANDSHAKE_TIMEOUT = 10.0


class TunnelOwner:
    """What a tunnel delivers to whoever is using it (a public exchange or a raw splice)."""

    def tunnel_data(self, data: bytes) -> None:
        raise NotImplementedError

    def tunnel_eof(self) -> None:
        raise NotImplementedError

    def tunnel_lost(self, reason: Failure) -> None:
        raise NotImplementedError


@implementer(IHalfCloseableProtocol)
class TunnelServerProtocol(Protocol):
    """Reads the tunnel header, then sits in its client's pool until a request takes it."""

    log = Logger()
    owner: TunnelOwner | None = None
    record: ClientRecord | None = None
    idle_since = 0.0
    uses = 0
    mismatch: MismatchLog | None = None  # logs TLS on this plain port, or the reverse

    def __init__(self, registry: Registry, clock: object) -> None:
        self.registry = registry
        self.clock = clock
        self._buf = b""
        self._timer = None
        self._here: object | None = None  # over TLS: the port's address, for a mismatch line

    def connectionMade(self) -> None:
        tune(self.transport, keepalive=True)
        if self.mismatch is not None and ISSLTransport.providedBy(self.transport):
            self._here = self.transport.getHost()  # a closed TLS transport cannot tell it
        self._timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        self._timer = None
        self.log.info("tunnel from {peer} sent no header in time", peer=self.transport.getPeer())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.tunnel_data(data)
        elif self.record is None:
            self._handshake(data)
        else:
            self.log.warn(
                "idle tunnel of {client_id} sent unexpected data; closing it",
                client_id=wire.redact(self.record.client_id),
            )
            self.transport.abortConnection()

    def _handshake(self, data: bytes) -> None:
        if not self._buf and looks_like_tls(data) and not ISSLTransport.providedBy(self.transport):
            if self.mismatch is not None:  # an arpc told tls: on this plain port
                self.mismatch.tls_on_plain("proxy", self.transport)
            self.transport.abortConnection()
            return
        self._buf += data
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > wire.MAX_TUNNEL_HEADER:
                self._refuse("tunnel header too long")
            return
        line, rest = self._buf[:end].rstrip(b"\r"), self._buf[end + 1 :]
        self._buf = b""
        if line.startswith(b"ARP-RELAY ") and self.registry.cluster is not None:  # another relay
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.registry.cluster.accept_relay(self, line, rest)
            return
        try:
            client_id, secret = wire.parse_tunnel_header(line)
        except wire.BadTunnelHeader as e:
            self._refuse(str(e))
            return
        record = self.registry.check_tunnel(client_id, secret)
        if record is None:
            self._refuse(f"tunnel for {wire.redact(client_id)} with a wrong secret or for an offline client")
            return
        if rest:
            self._refuse("data after the tunnel header")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.record = record
        if not record.pool.add(self):
            self.record = None
            self.transport.loseConnection()

    def _refuse(self, why: str) -> None:
        self.log.warn("refused tunnel from {peer}: {why}", peer=self.transport.getPeer(), why=why)
        self.transport.abortConnection()

    def attach(self, owner: TunnelOwner) -> None:
        """Deliver this tunnel's bytes to ``owner`` from now on."""
        self.owner = owner
        self.uses += 1

    def detach(self) -> None:
        """Stop delivering bytes to the current owner."""
        self.owner = None

    def close(self) -> None:
        """Close the tunnel (pool eviction, client offline)."""
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self.owner is not None:
            self.owner.tunnel_eof()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if self._here is not None:  # no header yet: a TLS handshake that failed on plain bytes?
                self.mismatch.lost("proxy", self.transport, self._here, reason)
        if self.record is not None:
            self.record.pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.tunnel_lost(reason)


class TunnelFactory(Factory):
    """Builds :class:`TunnelServerProtocol` for the proxy port."""

    noisy = False

    def __init__(self, registry: Registry, clock: object) -> None:
        self.registry = registry
        self.clock = clock
        self.mismatch = MismatchLog(clock)

    def buildProtocol(self, addr: object) -> TunnelServerProtocol:
        proto = TunnelServerProtocol(self.registry, self.clock)
        proto.mismatch = self.mismatch
        return proto
