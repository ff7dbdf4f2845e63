"""A listening service that fails loudly and says where it listens."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import tls

#: The listen queue of every port arps and arpc listen on (Twisted's default is 50): 1,000 arpc
#: clients registering at once overflow a queue of 50 thousands of times, each a lost SYN that
#: the client resends a second or more later.  An explicit ``backlog=`` in an endpoint string wins.
LISTEN_BACKLOG = 1024

#: Where ``backlog`` is among the positional arguments of each endpoint kind that has one (so a
#: string that gives it by position, e.g. ``tcp6:80:100``, is left as it is).
_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "ssl": 5, "unix": 2}


def endpoint_arguments(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string as (kind, positional arguments, keyword arguments), split the way
    Twisted's own parser splits it: ``\\`` escapes the next character, ``:`` separates arguments,
    and the first unescaped ``=`` of an argument makes it a keyword (a repeated one: the last wins)."""
    fields: list[tuple[str, str | None]] = []  # (text, None) or (key, value)
    text, key, chars = "", None, iter(description)
    for char in chars:
        if char == "\\":
            text += next(chars, "")
        elif char == ":":
            fields.append((text, None) if key is None else (key, text))
            text, key = "", None
        elif char == "=" and key is None:
            key, text = text, ""
        else:
            text += char
    fields.append((text, None) if key is None else (key, text))
    kind = fields[0][0] if fields[0][1] is None else ""
    positional = [text for text, value in fields[1:] if value is None]
    keywords = {name: value for name, value in fields[1:] if value is not None}
    return kind, positional, keywords


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """``description`` (a server endpoint string) listening with a queue of ``backlog`` connections.

    For ``tcp:``, ``tcp6:``, ``ssl:`` and ``unix:`` strings that do not give a backlog themselves
    (``backlog=N``, or by position); anything else is returned as it is.  So every port gets the
    same queue whether it was given as ``--control-port 17001`` or ``--control-endpoint
    tcp:17001:interface=10.0.0.5``, ``ssl:...`` (the TLS recipe) or a client's own port.
    """
    kind, positional, keywords = endpoint_arguments(description)
    position = _BACKLOG_POSITION.get(kind)
    if position is None or "backlog" in keywords or len(positional) > position:  # given already
        return description
    return f"{description}:backlog={backlog}"


def describe(port: IListeningPort) -> str:
    """``host:port`` of a listening port."""
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


@implementer(IProtocolFactory, IProtocolNegotiationFactory)
class LazyFactory:
    """A protocol factory that builds the real one on the first connection.

    For endpoints that are rarely used but costly to load (the admin site and
    ``twisted.web``): a process whose endpoint never gets a connection never
    pays for it.  ``protocols`` are the ALPN names the real factory's protocol
    speaks (e.g. ``[b"http/1.1"]`` for a web site), given here so that a TLS
    handshake does not have to build it.
    """

    log = Logger()

    def __init__(self, build: Callable[[], IProtocolFactory], protocols: tuple[bytes, ...] = ()) -> None:
        self._build = build
        self._protocols = list(protocols)
        self._factory: IProtocolFactory | None = None
        self._started = False

    @property
    def factory(self) -> IProtocolFactory:
        """The real factory (built now if it was not yet)."""
        if self._factory is None:
            self._factory = self._build()
            if self._started:
                self._factory.doStart()
        return self._factory

    def doStart(self) -> None:
        self._started = True
        if self._factory is not None:
            self._factory.doStart()

    def doStop(self) -> None:
        self._started = False
        if self._factory is not None:
            self._factory.doStop()

    def acceptableProtocols(self) -> list[bytes]:
        """The ALPN names given at construction."""
        return self._protocols

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        try:
            factory = self.factory
        except Exception:
            self.log.failure("cannot set up this endpoint's service; closing the connection")
            return None  # the port closes the connection; the next one tries again
        return factory.buildProtocol(addr)


class Listener(Service):
    """Listen on an endpoint string while running.

    Unlike ``StreamServerEndpointService`` it listens in ``privilegedStartService``
    and turns a failure (port taken, bad certificate) into a clean exit with a
    message, rather than running half-listening; it says it listens only once started, so under
    twistd no port is reported before every port is bound.  Every port gets a listen queue
    of ``LISTEN_BACKLOG`` unless its string gives one (:func:`with_backlog`).
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
            endpoint = serverFromString(self.reactor, with_backlog(self.description))
            chosen = tls.negotiate(endpoint, tls.protocols_of(self.factory))  # ALPN, see arp/tls.py
            d: Deferred = endpoint.listen(tls.ChoiceMade(self.factory) if chosen else self.factory)
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

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        # said here, not on listening: twistd binds every port (privilegedStartService) before it
        # starts any service, so a port that cannot be had stops the process before any
        # "listening on" line, which would tell the user (and scripts) it was up
        self.log.info("{label} listening on {address}", label=self.label, address=describe(self.port))

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class DrainingListener(Listener):
    """A Listener that, on stop, lets open connections finish for up to ``grace`` seconds.

    The factory provides ``drain()`` (close idle connections, finish busy ones),
    ``open_connections`` and ``abort_all()``.
    """

    def __init__(
        self, label: str, description: str, factory: IProtocolFactory, reactor: object, grace: float
    ) -> None:
        super().__init__(label, description, factory, reactor)
        self.grace = grace

    def stopService(self) -> Deferred:
        stopped = super().stopService()
        self.factory.drain()
        done: Deferred = Deferred()
        deadline = self.reactor.seconds() + self.grace
        if self.factory.open_connections:
            self.log.info(
                "{label}: letting {n} open connections finish (up to {grace:g}s)",
                label=self.label,
                n=self.factory.open_connections,
                grace=self.grace,
            )

        def check() -> None:
            if not self.factory.open_connections:
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                self.log.warn(
                    "{label}: grace period over; aborting {n} connections",
                    label=self.label,
                    n=self.factory.open_connections,
                )
                self.factory.abort_all()
                done.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        if stopped is not None:
            return gatherResults([stopped, done])
        return done
