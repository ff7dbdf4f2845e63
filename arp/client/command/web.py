"""The command-mode resource tree: JSON API and the session WebSocket stream.

::

    /api/health                              GET
    /api/sessions                            GET, POST
    /api/sessions/{id}                       GET, DELETE
    /api/sessions/{id}/messages              POST
    /api/sessions/{id}/stream?since=N        WebSocket
    /api/claude/projects                     GET
    /api/claude/sessions[?project=]          GET
    /api/claude/sessions/{uuid}              GET
    /api/codex/sessions[?project=], /{uuid}  GET
    /api/gemini/sessions[?project=], /{uuid} GET

Everything else is a JSON 404; a web console is mounted with :meth:`Root.set_console`.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource

from arp import __version__
from arp.client.command.executors import EXECUTORS
from arp.client.command.history import ClaudeHistory, CodexHistory, GeminiHistory
from arp.client.command.sessions import ApiError, Session, SessionManager
from arp.client.command.store import valid_id

MAX_BODY = 256 * 1024
MAX_PAGE = 500
WS_MAX_MESSAGE = 64 * 1024
WS_PING_INTERVAL = 20.0
VIEWER_BUFFER = 1024 * 1024  # bytes queued for a paused viewer before it is dropped

log = Logger()


def json_response(request: server.Request, status: int, body: Any) -> bytes:
    """The one JSON helper: set status and content type; errors are ``{"error": "..."}``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    if isinstance(body, str):
        body = {"error": body}
    return json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n"


def _int_arg(request: server.Request, name: str, default: int, low: int = 0, high: int = 10**12) -> int:
    raw = request.args.get(name.encode())
    if not raw:
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise ApiError(400, f"{name} must be an integer")
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _str_arg(request: server.Request, name: str) -> str | None:
    raw = request.args.get(name.encode())
    return raw[0].decode("utf-8", "replace") if raw else None


def _page_args(request: server.Request) -> tuple[int, int]:
    return _int_arg(request, "offset", 0), _int_arg(request, "limit", 50, 1, MAX_PAGE)


def _same_origin(origin: str, request_host: str | None, forwarded_host: str | None) -> bool:
    host = urlsplit(origin).netloc.lower()
    return bool(host) and host in {h.lower() for h in (request_host, forwarded_host) if h}


class Cors:
    """Which browser origins may call the API (none but our own by default)."""

    def __init__(self, origins: list[str]) -> None:
        self.origins = {o.rstrip("/") for o in origins}

    def allowed(self, origin: str, host: str | None, forwarded_host: str | None) -> bool:
        """Whether a request carrying ``Origin: origin`` may act."""
        return (
            origin.rstrip("/") in self.origins
            or "*" in self.origins
            or _same_origin(origin, host, forwarded_host)
        )

    def check(self, request: server.Request) -> None:
        """Add CORS headers for a listed origin; refuse a state change from a foreign one."""
        raw = request.getHeader(b"origin")
        if raw is None:
            return
        origin = raw.decode("latin-1")
        if origin.rstrip("/") in self.origins or "*" in self.origins:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"vary", b"Origin")
            return
        host = _header(request, b"host")
        forwarded = _header(request, b"x-forwarded-host")
        if request.method not in (b"GET", b"HEAD") and not _same_origin(origin, host, forwarded):
            raise ApiError(403, f"origin {origin} may not call this API (see arpc --cors-origin)")


def _header(request: server.Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


class JsonResource(Resource):
    """A resource whose ``handle_<METHOD>`` methods return ``(status, body)`` or a Deferred of it."""

    cors: Cors

    def __init__(self, cors: Cors) -> None:
        super().__init__()
        self.cors = cors

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return NotFound(self.cors)

    def render(self, request: server.Request) -> bytes | int:
        try:
            self.cors.check(request)
            if request.method == b"OPTIONS":
                return self._preflight(request)
            handler = getattr(self, "handle_" + request.method.decode("ascii", "replace"), None)
            if handler is None and request.method == b"HEAD":
                handler = getattr(self, "handle_GET", None)
            if handler is None and not any(a.startswith("handle_") for a in dir(self)):
                raise ApiError(404, f"no such resource: {request.path.decode(errors='replace')}")
            if handler is None:
                allowed = sorted(a[7:] for a in dir(self) if a.startswith("handle_"))
                request.setHeader(b"allow", ", ".join(allowed).encode())
                raise ApiError(405, f"method {request.method.decode(errors='replace')} not allowed here")
            result = handler(request)
        except ApiError as e:
            return json_response(request, e.status, e.message)
        except Exception:
            log.failure("error handling {uri}", uri=request.uri)
            return json_response(request, 500, "internal error")
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda r: self._finish(request, *r),
                lambda f: self._fail(request, f),
            )
            return server.NOT_DONE_YET
        return json_response(request, *result)

    def _finish(self, request: server.Request, status: int, body: Any) -> None:
        if not request.finished and not request._disconnected:
            request.write(json_response(request, status, body))
            request.finish()

    def _fail(self, request: server.Request, failure: Failure) -> None:
        if failure.check(ApiError):
            self._finish(request, failure.value.status, failure.value.message)
        else:
            log.failure("error handling {uri}", failure, uri=request.uri)
            self._finish(request, 500, "internal error")

    def _preflight(self, request: server.Request) -> bytes:
        origin = request.getHeader(b"origin")
        if origin is None or not request.responseHeaders.hasHeader(b"access-control-allow-origin"):
            raise ApiError(403, "CORS preflight from an origin not allowed by --cors-origin")
        request.setHeader(b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Content-Type, X-ARP-Token")
        request.setHeader(b"access-control-max-age", b"600")
        request.setResponseCode(204)
        return b""

    @staticmethod
    def json_body(request: server.Request) -> Any:
        """The request's JSON body (400 if malformed, 413 if too large)."""
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise ApiError(413, f"request body too large: at most {MAX_BODY} bytes")
        data = request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, f"request body too large: at most {MAX_BODY} bytes")
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApiError(400, f"malformed JSON body: {e}")


class NotFound(JsonResource):
    """A JSON 404 for every method."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return json_response(request, 404, f"no such resource: {request.path.decode(errors='replace')}")


class Root(JsonResource):
    """``/``: the API under ``/api``; anything else goes to the console, once there is one."""

    def __init__(self, cors: Cors) -> None:
        super().__init__(cors)
        self.console: IResource | None = None

    def set_console(self, console: IResource) -> None:
        """Serve ``console`` (e.g. ``twisted.web.static.File``) for every path outside ``/api``."""
        self.console = console

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        if self.console is not None:
            return self.console.getChildWithDefault(path, request)
        return NotFound(self.cors)

    def render(self, request: server.Request) -> bytes | int:
        if self.console is not None:
            return self.console.render(request)
        return NotFound(self.cors).render(request)


class Health(JsonResource):
    """``GET /api/health``: version, executors found, sessions running."""

    isLeaf = True

    def __init__(self, cors: Cors, manager: SessionManager) -> None:
        super().__init__(cors)
        self.manager = manager

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        executors = {}
        for name, executor in EXECUTORS.items():
            configured = self.manager.binaries.get(name) or executor.default_binary
            path = executor.resolve(configured)
            executors[name] = {
                "found": path is not None,
                "path": path,
                "binary": configured,
                "flag": executor.flag,
            }
        return 200, {
            "ok": True,
            "version": __version__,
            "executors": executors,
            "sessions": {"running": self.manager.running_count(), "max": self.manager.max_sessions},
        }


class Sessions(JsonResource):
    """``/api/sessions``: list and create."""

    def __init__(self, cors: Cors, manager: SessionManager, stream: WebSocketResource) -> None:
        super().__init__(cors)
        self.manager = manager
        self.stream = stream

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        session_id = path.decode("ascii", "replace")
        if not valid_id(session_id):
            return NotFound(self.cors)
        return SessionDetail(self.cors, self.manager, session_id, self.stream)

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        offset, limit = _page_args(request)
        return 200, self.manager.listing(offset, limit, _str_arg(request, "status"))

    def handle_POST(self, request: server.Request) -> tuple[int, Any]:
        session = self.manager.create(self.json_body(request))
        request.setHeader(b"location", f"/api/sessions/{session.id}".encode())
        return 201, session.detail()


class SessionDetail(JsonResource):
    """``/api/sessions/{id}``: status and output, cancel or delete; children ``messages``, ``stream``."""

    def __init__(
        self, cors: Cors, manager: SessionManager, session_id: str, stream: WebSocketResource
    ) -> None:
        super().__init__(cors)
        self.manager = manager
        self.session_id = session_id
        self.stream = stream

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if path == b"messages":
            return FollowUp(self.cors, self.manager, self.session_id)
        if path == b"stream" and not request.postpath:
            return self.stream
        return NotFound(self.cors)

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        since = _int_arg(request, "since", 0)
        return 200, self.manager.get(self.session_id).detail(since)

    def handle_DELETE(self, request: server.Request) -> tuple[int, Any] | Deferred:
        session = self.manager.get(self.session_id)
        if session.running:
            d = self.manager.cancel(session)
            d.addCallback(lambda s: (200, s.summary()))
            return d
        self.manager.delete(session)
        return 200, {"deleted": session.id}


class FollowUp(JsonResource):
    """``POST /api/sessions/{id}/messages``: continue the agent conversation."""

    isLeaf = True

    def __init__(self, cors: Cors, manager: SessionManager, session_id: str) -> None:
        super().__init__(cors)
        self.manager = manager
        self.session_id = session_id

    def handle_POST(self, request: server.Request) -> tuple[int, Any]:
        session = self.manager.get(self.session_id)
        before = session.record["lastSeq"]
        self.manager.follow_up(self.session_id, self.json_body(request))
        body = session.summary()
        body["events"] = session.events_since(before)
        return 202, body


class HistoryList(JsonResource):
    """``/<agent>/sessions``: a listing; ``/<agent>/sessions/{uuid}``: one session's messages."""

    def __init__(self, cors: Cors, reader: ClaudeHistory | CodexHistory | GeminiHistory) -> None:
        super().__init__(cors)
        self.reader = reader

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if request.postpath:
            return NotFound(self.cors)
        return HistoryDetail(self.cors, self.reader, path.decode("utf-8", "replace"))

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        offset, limit = _page_args(request)
        return 200, self.reader.sessions(_str_arg(request, "project"), offset, limit)


class HistoryDetail(JsonResource):
    """One history session's messages, paginated."""

    isLeaf = True

    def __init__(self, cors: Cors, reader: ClaudeHistory | CodexHistory | GeminiHistory, sid: str) -> None:
        super().__init__(cors)
        self.reader = reader
        self.sid = sid

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        offset = _int_arg(request, "offset", 0)
        limit = _int_arg(request, "limit", 200, 1, 2000)
        result = self.reader.messages(self.sid, offset, limit)
        if result is None:
            raise ApiError(404, f"no history session {self.sid!r}")
        return 200, result


class Projects(JsonResource):
    """``GET /api/claude/projects``."""

    isLeaf = True

    def __init__(self, cors: Cors, reader: ClaudeHistory) -> None:
        super().__init__(cors)
        self.reader = reader

    def handle_GET(self, request: server.Request) -> tuple[int, Any]:
        projects = self.reader.projects()
        return 200, {"projects": projects, "total": len(projects)}


# -- the WebSocket stream ----------------------------------------------------------------------


class StreamProtocol(WebSocketServerProtocol):
    """Sends a session's events after ``since``, then live ones; closes after the final status.

    It is the streaming producer of its transport: while the viewer's socket is full, events
    queue here, up to :data:`VIEWER_BUFFER` bytes; beyond that the viewer is closed with 1013.
    """

    _log = Logger()
    manager: SessionManager
    cors: Cors

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.since = 0
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closing = False

    def onConnect(self, request: Any) -> None:
        parts = request.path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["api", "sessions"] or parts[3] != "stream":
            raise ConnectionDeny(404, "no such stream")
        origin = request.headers.get("origin")
        if origin and not self.cors.allowed(
            origin, request.headers.get("host"), request.headers.get("x-forwarded-host")
        ):
            raise ConnectionDeny(403, "origin not allowed (see arpc --cors-origin)")
        session = self.manager.sessions.get(parts[2])
        if session is None:
            raise ConnectionDeny(404, "no such session")
        since = request.params.get("since", ["0"])[0]
        if not since.isdigit():
            raise ConnectionDeny(400, "since must be a non-negative integer")
        self.session = session
        self.since = int(since)
        return None

    def onOpen(self) -> None:
        try:  # the HTTP channel was the transport's producer; now we are
            self.transport.unregisterProducer()
        except Exception:
            pass
        try:
            self.transport.registerProducer(self, True)
        except Exception:
            self._log.debug("could not register as producer")
        session = self.session
        assert session is not None
        for event in session.events_since(self.since):
            self.send_event(event)
        if session.running:
            session.viewers.add(self)
        else:
            self.session_ended()

    def send_event(self, event: dict[str, Any]) -> None:
        """Send one event now, or queue it while the viewer is slow."""
        if self._closing:
            return
        payload = json.dumps(event, separators=(",", ":"), default=str).encode()
        if self._paused or self._queue:
            self._queue.append(payload)
            self._queued += len(payload)
            if self._queued > VIEWER_BUFFER:
                self._log.info("dropping a slow viewer of session {id}", id=self.session and self.session.id)
                self._drop_slow()
            return
        self.sendMessage(payload, isBinary=False)

    def _drop_slow(self) -> None:
        self._queue.clear()
        self._queued = 0
        self._closing = True
        if self.session is not None:
            self.session.viewers.discard(self)
        self.sendClose(1013, "viewer too slow; reconnect with ?since=<last seq>")

    def session_ended(self) -> None:
        """The session's turn ended (its final status event was sent): close once flushed."""
        if self.session is not None:
            self.session.viewers.discard(self)
        if self._queue:
            self._end_after_queue = True
            return
        if not self._closing:
            self._closing = True
            self.sendClose(1000, "session ended")

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused:
            payload = self._queue.popleft()
            self._queued -= len(payload)
            self.sendMessage(payload, isBinary=False)
        if not self._queue and getattr(self, "_end_after_queue", False):
            self._end_after_queue = False
            self.session_ended()

    def stopProducing(self) -> None:
        self._queue.clear()
        self._closing = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # viewers only listen

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.viewers.discard(self)


def stream_resource(manager: SessionManager, cors: Cors) -> WebSocketResource:
    """The WebSocket resource for ``/api/sessions/{id}/stream``."""
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(
        maxMessagePayloadSize=WS_MAX_MESSAGE,
        maxFramePayloadSize=WS_MAX_MESSAGE,
        autoPingInterval=WS_PING_INTERVAL,
        autoPingTimeout=WS_PING_INTERVAL * 1.5,
        allowedOrigins=["*"],  # checked in onConnect against --cors-origin and our own host
    )

    def build() -> StreamProtocol:
        proto = StreamProtocol()
        proto.manager = manager
        proto.cors = cors
        return proto

    factory.protocol = build  # type: ignore[assignment]
    factory.noisy = False
    return WebSocketResource(factory)


def build_root(
    manager: SessionManager,
    claude: ClaudeHistory,
    codex: CodexHistory,
    gemini: GeminiHistory,
    cors_origins: list[str],
) -> Root:
    """The whole resource tree."""
    cors = Cors(cors_origins)
    root = Root(cors)
    api = JsonResource(cors)
    root.putChild(b"api", api)
    api.putChild(b"health", Health(cors, manager))
    api.putChild(b"sessions", Sessions(cors, manager, stream_resource(manager, cors)))
    for name, reader in ((b"claude", claude), (b"codex", codex), (b"gemini", gemini)):
        agent = JsonResource(cors)
        api.putChild(name, agent)
        agent.putChild(b"sessions", HistoryList(cors, reader))
    claude_api = api.children[b"claude"]
    claude_api.putChild(b"projects", Projects(cors, claude))
    return root


def make_site(root: Resource) -> server.Site:
    """A quiet Site for the tree."""
    site = server.Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
