"""arpc forward mode: each tunnel that gets traffic is spliced to a new local connection.

With ``--host-header`` the request heads on the way are read, one after another, and their
``Host`` replaced (:class:`HostRewriter`); bodies pass untouched and an upgraded connection
(WebSocket) becomes a plain splice.  Without it (the default) no byte is looked at.
"""

from __future__ import annotations

import re

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import http, wire
from arp.splice import SpliceEnd, fast_write, tune

CONNECT_TIMEOUT = 10
#: Seconds a 502 page for a browser waits before it reloads itself (the service may be starting).
RELOAD_AFTER = 5
#: Longest request head :class:`HostRewriter` reads (the relay's own default cap); past it, or on
#: a head it cannot parse, it passes the rest of the connection on untouched.
MAX_HEAD = 64 * 1024


def service_address(host: str, port: int) -> str:
    """``host:port`` as people write it (``[::1]:3000`` for IPv6)."""
    return f"[{host}]:{port}" if isIPv6Address(host) else f"{host}:{port}"


def host_header(value: str) -> str:
    """Coerce ``--host-header``: ``rewrite``, or a host name with an optional port."""
    if value == "rewrite" or re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?", value):
        return value
    raise ValueError("must be 'rewrite' or a host name such as localhost:8888")


host_header.coerceDoc = ""  # type: ignore[attr-defined]


def nothing_listens(service: str) -> str:
    """The warning for a local service nobody listens for."""
    return (
        f"nothing listens on {service}, the service arpc forwards to: start it there (or give "
        "arpc the right --local-addr/--local-port); until then requests get 502"
    )


@implementer(IStreamClientEndpoint)
class LocalService:
    """The local service forward mode connects to: an endpoint that knows its ``host:port``.

    It also says, once, when nobody listens there: at start (:meth:`check`) and at the first
    failed connection after a good one (:meth:`failed`).
    """

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, address: str) -> None:
        self.endpoint = endpoint
        self.address = address
        self._warned = False

    def connect(self, protocolFactory: Factory) -> object:
        d = self.endpoint.connect(protocolFactory)
        d.addCallback(self._reached)
        return d

    def _reached(self, protocol: object) -> object:
        self._warned = False
        return protocol

    def check(self) -> Deferred:
        """Connect once and close at once; warn if nobody listens (fires with whether one does)."""
        probe = Factory.forProtocol(Protocol)
        probe.noisy = False
        d = self.endpoint.connect(probe)

        def reached(protocol: Protocol) -> bool:
            protocol.transport.loseConnection()
            return True

        def failed(failure: Failure) -> bool:
            if failure.check(ConnectionRefusedError):
                self.log.warn("{message}", message=nothing_listens(self.address))
            else:
                why = failure.getErrorMessage()
                self.log.warn("local service {service} unreachable: {why}", service=self.address, why=why)
            return False

        return d.addCallbacks(reached, failed)

    def failed(self, failure: Failure) -> None:
        """Log a failed connection of a tunnel: the first since start or since the last good one
        in words, the others briefly."""
        if failure.check(ConnectionRefusedError) and not self._warned:
            self._warned = True
            self.log.warn("{message}", message=nothing_listens(self.address))
        else:
            why = failure.getErrorMessage()
            self.log.warn("local service {service} unreachable: {why}", service=self.address, why=why)


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


class WatchedBackend(BackendProtocol):
    """A connection to the local service whose answers :class:`HostRewriter` may need to see
    (whether an upgrade was accepted)."""

    def dataReceived(self, data: bytes) -> None:
        rewriter = getattr(self.peer, "rewriter", None)
        if rewriter is not None and rewriter.awaiting_answer:
            rewriter.answer(data)
        super().dataReceived(data)


_backend_factory = Factory.forProtocol(BackendProtocol)
_backend_factory.noisy = False
_watched_factory = Factory.forProtocol(WatchedBackend)
_watched_factory.noisy = False

_HOST_LINE_RE = re.compile(rb"\r?\nhost[ \t]*:[^\r\n]*", re.IGNORECASE)
_ORIGIN_LINE_RE = re.compile(rb"\r?\norigin[ \t]*:[^\r\n]*", re.IGNORECASE)


class HostRewriter:
    """Replaces the ``Host`` of each request head in a tunnel's stream with ``host``, and an
    ``Origin`` that is the request's own (the public host) with ``http://`` ``host``.

    ``feed(data)`` returns what to send to the service.  Heads are read one after another;
    bodies are passed on as they come (:class:`arp.http.BodyFramer` finds their ends).  The
    public name stays in ``X-Forwarded-Host`` (the relay sets it).  A request asking for an
    upgrade waits for the service's answer (:meth:`answer`): after a ``101`` the connection is
    another protocol and everything passes untouched, as it does after anything that is not an
    HTTP/1 request head.
    """

    __slots__ = ("host", "_buf", "_body", "_raw", "_upgrading", "awaiting_answer", "_status")

    def __init__(self, host: bytes) -> None:
        self.host = host
        self._buf = b""
        self._body: http.BodyFramer | None = None
        self._raw = False  # pass everything on from now
        self._upgrading = False  # the current request asked for an upgrade
        self.awaiting_answer = False  # ... and its answer's status line is not seen yet
        self._status = b""

    def feed(self, data: bytes) -> bytes:
        """The bytes for the service, for ``data`` from the relay."""
        out: list[bytes] = []
        while data and not self._raw:
            if self._body is not None:
                try:
                    n = self._body.feed(data)
                except http.HTTPError:
                    self._raw = True
                    break
                out.append(data[:n])
                data = data[n:]
                if self._body.done:
                    self._body = None
                    self.awaiting_answer = self._upgrading
                continue
            if not self._buf and data[:1] and not data[:1].isalpha():
                self._raw = True  # not a request head: e.g. WebSocket frames
                break
            buf = self._buf + data
            end = http.find_head_end(buf)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._raw, self._buf, data = True, b"", buf
                    break
                self._buf, data = buf, b""
                break
            self._buf, data = b"", buf[end:]
            out.append(self._rewrite(buf[:end]))
        if self._raw and (self._buf or data):
            out.append(self._buf + data)
            self._buf = b""
        return b"".join(out)

    def _rewrite(self, raw: bytes) -> bytes:
        try:
            head, framer = http.parse_request(raw)
        except http.HTTPError:
            self._raw = True
            return raw
        self._upgrading = head.get(b"upgrade") is not None
        self._body = None if framer.done else framer
        self.awaiting_answer = self._upgrading and framer.done
        newline = b"\r\n" if raw.endswith(b"\r\n\r\n") else b"\n"
        public = head.get(b"host")
        rest = _HOST_LINE_RE.sub(b"", raw[: -2 * len(newline)])  # the lines without the blank one
        extra = newline + b"Host: " + self.host
        if public is not None and head.get(b"x-forwarded-host") is None:
            extra += newline + b"X-Forwarded-Host: " + public
        origin = head.get(b"origin") or b""
        if public is not None and origin.partition(b"://")[2].lower() == public.lower():
            # the page's own origin follows the Host (the service's CSRF and WebSocket origin
            # checks compare the two); another origin's stays, so those checks still refuse it
            rest = _ORIGIN_LINE_RE.sub(b"", rest)
            extra += newline + b"Origin: http://" + self.host
        return rest + extra + newline + newline

    def answer(self, data: bytes) -> None:
        """The service's first answer bytes after an upgrade request: a 101 ends the reading."""
        self._status += data[: 12 - len(self._status)]
        if len(self._status) < 12:
            return
        self.awaiting_answer = False
        self._upgrading = False
        if self._status[9:12] == b"101":
            self._raw = True
        self._status = b""


class ForwardTunnel(SpliceEnd):
    """A tunnel to arps that, on its first bytes, connects to the local service and splices."""

    log = Logger()

    def __init__(
        self,
        header: bytes,
        backend: LocalService,
        raw_tcp: bool,
        tunnels: set,
        clock: object = None,
        host: bytes | None = None,
    ) -> None:
        self.clock = clock  # for the splice's linger timer (None: the global reactor)
        self.header = header
        self.backend = backend
        self.raw_tcp = raw_tcp
        self.tunnels = tunnels
        self._pending: list[bytes] | None = None
        # --host-header: the Host the service gets (None: the browser's, passed through)
        self.rewriter = HostRewriter(host) if host is not None and not raw_tcp else None

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
            if self.rewriter is not None:
                data = self.rewriter.feed(data)
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
            d = self.backend.connect(_backend_factory if self.rewriter is None else _watched_factory)
            d.addCallbacks(self._backend_connected, self._backend_failed)

    def _backend_connected(self, backend: BackendProtocol) -> None:
        if self._lost:
            backend.transport.loseConnection()
            return
        self.splice_to(backend)
        pending, self._pending = self._pending, None
        if self.rewriter is not None:
            pending = [self.rewriter.feed(b"".join(pending))]
        for chunk in pending:
            if chunk:
                backend.transport.write(chunk)
        if self._eof_in:  # the relay's side ended while we connected
            self.splice.read_lost(self.end)
        self.transport.resumeProducing()

    def _backend_failed(self, failure: Failure) -> None:
        request, self._pending = b"".join(self._pending or ()), None
        why = failure.getErrorMessage()
        service = self.backend.address
        self.backend.failed(failure)
        if self._lost:
            return
        if self.raw_tcp:
            self.transport.abortConnection()
            return
        if failure.check(ConnectionRefusedError):
            message = (
                f"the service behind this tunnel ({service}) is unreachable: nothing listens there; "
                "start it on the machine that runs arpc (or check arpc's --local-port), then try again"
            )
        else:
            message = f"the service behind this tunnel ({service}) is unreachable: {why}"
        if _page_load(request):
            page = http.html_page(502, message, RELOAD_AFTER, by="arpc, on the service's machine")
            answer = http.json_response(502, page, http.HTML_HEADERS, content_type=http.HTML_TYPE)
        else:
            answer = http.json_response(502, http.error_body(502, message, service=service, detail=why))
        self.transport.write(answer)
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self.peer is None and self._pending is None:
            self.transport.loseConnection()
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.tunnels.discard(self)
        super().connectionLost(reason)


def _page_load(request: bytes) -> bool:
    """Whether ``request`` (the first bytes a tunnel got) is a browser's page load, which gets an
    HTML error page (API clients, scripts and WebSockets get JSON), as the relay decides it."""
    end = http.find_head_end(request)
    if end < 0:
        return False
    try:
        head = http.parse_request_head(request[:end])
    except http.HTTPError:
        return False
    from arp.server.routing import is_navigation

    return is_navigation(head)
