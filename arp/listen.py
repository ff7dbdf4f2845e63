"""A listening service that fails loudly and says where it listens."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure


def describe(port: IListeningPort) -> str:
    """``host:port`` of a listening port."""
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


class Listener(Service):
    """Listen on an endpoint string while running.

    Unlike ``StreamServerEndpointService`` it listens in ``privilegedStartService``
    and turns a failure (port taken, bad certificate) into a clean exit with a
    message, rather than running half-listening.
    """

    log = Logger()

    def __init__(self, label: str, description: str, factory: IProtocolFactory, reactor: object) -> None:
        self.label = label
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list = []
        try:
            endpoint = serverFromString(self.reactor, self.description)
            d: Deferred = endpoint.listen(self.factory)
        except Exception as e:
            raise SystemExit(f"{self.label}: bad endpoint {self.description!r}: {e}")
        d.addBoth(outcome.append)
        if not outcome:
            raise SystemExit(f"{self.label}: listening on {self.description!r} did not complete")
        result = outcome[0]
        if isinstance(result, Failure):
            raise SystemExit(
                f"{self.label}: cannot listen on {self.description!r}: {result.getErrorMessage()}"
            )
        self.port = result
        self.log.info("{label} listening on {address}", label=self.label, address=describe(result))

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
