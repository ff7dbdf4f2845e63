"""arpc forward mode: each tunnel that gets traffic is spliced to a new local connection."""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import http, wire
from arp.splice import SpliceEnd, fast_write, tune

CONNECT_TIMEOUT = 10


def service_address(host: str, port: int) -> str:
    """``host:port`` as people write it (``[::1]:3000`` for IPv6)."""
    return f"[{host}]:{port}" if isIPv6Address(host) else f"{host}:{port}"


@implementer(IStreamClientEndpoint)
class LocalService:
    """The local service forward mode connects to: an endpoint that knows its ``host:port``."""

    def __init__(self, endpoint: IStreamClientEndpoint, address: str) -> None:
        self.endpoint = endpoint
        self.address = address

    def connect(self, protocolFactory: Factory) -> object:
        return self.endpoint.connect(protocolFactory)


def backend_endpoint(reactor: object, host: str, port: int) -> LocalService:
    """A client endpoint for the local service (no name lookup for IP literals)."""
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    return LocalService(endpoint, service_address(host, port))


class BackendProtocol(SpliceEnd):
    """Our connection to the local service."""

    def connectionMade(self) -> None:
        tune(self.transport)


_backend_factory = Factory.forProtocol(BackendProtocol)
_backend_factory.noisy = False


class ForwardTunnel(SpliceEnd):
    """A tunnel to arps that, on its first bytes, connects to the local service and splices."""

    log = Logger()

    def __init__(
        self, header: bytes, backend: LocalService, raw_tcp: bool, tunnels: set, clock: object = None
    ) -> None:
        self.clock = clock  # for the splice's linger timer (None: the global reactor)
        self.header = header
        self.backend = backend
        self.raw_tcp = raw_tcp
        self.tunnels = tunnels
        self._pending: list[bytes] | None = None

    @property
    def in_use(self) -> bool:
        """Whether this tunnel has carried traffic (it is spliced to the local service)."""
        return self.peer is not None or self._pending is not None

    def connectionMade(self) -> None:
        tune(self.transport, keepalive=True)
        self.tunnels.add(self)
        self.transport.write(self.header)

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            self.splice.moved = True
            fast_write(peer.transport, data)
        elif self._pending is not None:
            self._pending.append(data)
        else:
            if self.raw_tcp:
                if data[:1] != wire.TCP_START:
                    self.log.warn("raw TCP tunnel got a bad start marker; closing it")
                    self.transport.abortConnection()
                    return
                data = data[1:]
            self._pending = [data]
            self.transport.pauseProducing()
            d = self.backend.connect(_backend_factory)
            d.addCallbacks(self._backend_connected, self._backend_failed)

    def _backend_connected(self, backend: BackendProtocol) -> None:
        if self._lost:
            backend.transport.loseConnection()
            return
        self.splice_to(backend)
        pending, self._pending = self._pending, None
        for chunk in pending:
            if chunk:
                backend.transport.write(chunk)
        if self._eof_in:  # the relay's side ended while we connected
            self.splice.read_lost(self.end)
        self.transport.resumeProducing()

    def _backend_failed(self, failure: Failure) -> None:
        self._pending = None
        why = failure.getErrorMessage()
        service = self.backend.address
        self.log.warn("local service {service} unreachable: {why}", service=service, why=why)
        if self._lost:
            return
        if self.raw_tcp:
            self.transport.abortConnection()
            return
        body = http.error_body(
            502, f"the service behind this tunnel ({service}) is unreachable", service=service, detail=why
        )
        self.transport.write(http.json_response(502, body))
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self.peer is None and self._pending is None:
            self.transport.loseConnection()
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.tunnels.discard(self)
        super().connectionLost(reason)
