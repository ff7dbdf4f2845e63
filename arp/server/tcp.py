"""Raw TCP forwarding: a dedicated public port per ``arpc --tcp`` client."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import wire
from arp.control import BadRegistration, Unavailable
from arp.listen import Listener
from arp.server.registry import ClientRecord, Registry
from arp.server.tunnel import TunnelOwner, TunnelServerProtocol
from arp.splice import Splice, tune


@implementer(IHalfCloseableProtocol)
class PublicTCPProtocol(Protocol, TunnelOwner):
    """One connection to a client's TCP port, spliced raw onto a tunnel (end 0: this connection,
    end 1: the tunnel; see :class:`arp.splice.Splice`)."""

    log = Logger()

    def __init__(self, record: ClientRecord, clock: object = None) -> None:
        self.record = record
        self.clock = clock
        self.tunnel: TunnelServerProtocol | None = None
        self.splice: Splice | None = None
        self._waiting = None
        self._eof_in = False
        self._lost = False

    def connectionMade(self) -> None:
        tune(self.transport)
        self.record.open_connections += 1
        if not self.record.online:
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()
        self._waiting = self.record.pool.acquire()
        self._waiting.addCallbacks(self._got_tunnel, self._no_tunnel)

    def _no_tunnel(self, failure: Failure) -> None:
        self._waiting = None
        if not self._lost:
            self.log.info(
                "no tunnel for a TCP connection to {client_id}: {why}",
                client_id=wire.redact(self.record.client_id),
                why=failure.getErrorMessage(),
            )
            self.transport.abortConnection()

    def _got_tunnel(self, tunnel: TunnelServerProtocol) -> None:
        self._waiting = None
        self.record.pool.forget(tunnel)  # a raw splice never returns to the pool
        tunnel.record = None
        if self._lost:
            tunnel.close()
            return
        self.tunnel = tunnel
        tunnel.attach(self)
        self.record.requests += 1
        tunnel.transport.write(wire.TCP_START)
        self.splice = Splice(self.transport, tunnel.transport, self.clock)
        if self._eof_in:  # the public side ended while the tunnel was on its way
            self.splice.read_lost(0)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is None:  # TLS may deliver records after the splice ended
            return
        self.splice.moved = True
        self.tunnel.transport.write(data)
        self.record.bytes_in += len(data)

    def tunnel_data(self, data: bytes) -> None:
        self.splice.moved = True
        self.transport.write(data)
        self.record.bytes_out += len(data)

    def readConnectionLost(self) -> None:
        self._eof_in = True
        if self.splice is not None:
            self.splice.read_lost(0)

    def writeConnectionLost(self) -> None:
        pass

    def tunnel_eof(self) -> None:
        self.splice.read_lost(1)

    def tunnel_lost(self, reason: Failure) -> None:
        self.tunnel = None
        self.splice.connection_lost(1, reason)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self._lost = True
        self.record.open_connections -= 1
        if self._waiting is not None:
            self._waiting.cancel()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.detach()
        if self.splice is not None:
            self.splice.connection_lost(0, reason)


class PublicTCPFactory(Factory):
    """Connections to one client's dedicated port."""

    noisy = False

    def __init__(self, record: ClientRecord, clock: object = None) -> None:
        self.record = record
        self.clock = clock

    def buildProtocol(self, addr: object) -> PublicTCPProtocol:
        return PublicTCPProtocol(self.record, self.clock)


class TCPPorts:
    """Hands out public TCP ports from the range arps allows (``--tcp-ports``)."""

    log = Logger()

    def __init__(self, first: int, last: int, interface: str, reactor: object) -> None:
        self.first = first
        self.last = last
        self.interface = interface
        self.reactor = reactor

    def open_for(self, record: ClientRecord, registry: Registry) -> None:
        """Listen on the record's wanted port (or any free one in range); raise if none can be had."""
        used = {r.remote_port for r in registry.clients.values() if r.tcp_listener is not None}
        if registry.cluster is not None:  # ports other relays have given to other clients
            used |= registry.cluster.ports_of_others(record.client_id)
        if record.remote_port:
            if not self.first <= record.remote_port <= self.last:
                raise BadRegistration(
                    f"port {record.remote_port} is outside the relay's TCP range {self.first}-{self.last}"
                )
            if record.remote_port in used:
                raise Unavailable(
                    f"TCP port {record.remote_port} is held by another client: ask for another "
                    f"--remote-port in {self.first}-{self.last}, or leave it out for any free one"
                )
            candidates = [record.remote_port]
        else:
            candidates = [p for p in range(self.first, self.last + 1) if p not in used]
        for port in candidates:
            if port in used:
                continue
            description = f"tcp:{port}:interface={self.interface}" if self.interface else f"tcp:{port}"
            listener = Listener(
                f"tcp port of {record.client_id}",
                description,
                PublicTCPFactory(record, self.reactor),
                self.reactor,
            )
            try:
                listener.startService()
            except SystemExit as e:
                self.log.info("{why}", why=str(e))
                if record.remote_port:
                    raise Unavailable(
                        f"TCP port {port} is in use on the relay's host by another program: ask for "
                        f"another --remote-port in {self.first}-{self.last}, or leave it out"
                    ) from None
                continue
            record.tcp_listener = listener
            record.remote_port = port
            return
        raise Unavailable(f"no free TCP port for this client in {self.first}-{self.last}")
