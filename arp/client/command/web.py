"""The command-mode resource tree: JSON API and the session WebSocket stream.

::

    /api/health                              GET
    /api/sessions                            GET, POST
    /api/sessions/{id}                       GET, DELETE
    /api/sessions/{id}/messages              POST
    /api/sessions/{id}/changes               GET (view): the files the agent changed, with diffs
    /api/sessions/{id}/stream?since=N        WebSocket
    /api/sessions/{id}/approvals/{aid}       GET (view), POST (approve)
    /api/approvals[?status=&wait=&version=]  GET (view; wait= long-polls for a change)
    /api/claude/projects                     GET
    /api/claude/sessions[?project=]          GET
    /api/claude/sessions/{uuid}              GET
    /api/codex/sessions[?project=], /{uuid}  GET
    /api/gemini/sessions[?project=], /{uuid} GET
    /api/me                                  GET     (any valid token)
    /api/tokens                              GET, POST   (admin)
    /api/tokens/{id}                         DELETE      (admin)
    /api/push/key                            GET     (view; the VAPID public key)
    /api/push/subscriptions                  GET, POST   (view; a device's own, or all for admin)
    /api/push/subscriptions/{id}             DELETE      (view; its own, or any for admin)

Every route declares the scope it needs (``scopes`` on each resource); a request without a valid
access token gets a JSON 401 naming why, one with too few scopes a 403 (:mod:`.access`). The token
travels as ``Authorization: Bearer``, as the per-client ``arpc_access_…`` cookie, or as
``?access=``; a page load with ``?access=`` trades it for the cookie and drops it from the address
bar. Everything else is a JSON 404; a web console is mounted with :meth:`Root.set_console`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource

from arp import __version__
from arp.client.command.access import (
    CLOSE_EXPIRED,
    CLOSE_REVOKED,
    AccessError,
    AccessStore,
    BadRequest,
    Grant,
    cookie_name,
    qr_svg_data_url,
    with_access,
)
from arp.client.command.approvals import ApprovalError
from arp.client.command.history import ClaudeHistory, CodexHistory, GeminiHistory
from arp.client.command.sessions import ApiError, Session, SessionManager
from arp.client.command.store import valid_id
from arp.client.command.tunnel import SiteTunnel
from arp.http import CONSOLE_HEADER, error_body, referer_is_host
from arp.logs import access_log_formatter
from arp.twisted_private import request_disconnected

MAX_BODY = 256 * 1024
MAX_PAGE = 500
WS_MAX_MESSAGE = 64 * 1024
WS_PING_INTERVAL = 20.0
WS_CLOSE_TIMEOUT = 15.0  # seconds a viewer has to answer our Close before the connection is cut
VIEWER_BUFFER = 1024 * 1024  # bytes queued for a paused viewer before it is dropped

log = Logger()


def json_response(request: server.Request, status: int, body: Any) -> bytes:
    """The one JSON helper: set status and content type; errors are ``{"error": "..."}``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    if isinstance(body, str):
        return error_body(status, body) + b"\n"
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


def _is_https(request: server.Request) -> bool:
    proto = request.getHeader(b"x-forwarded-proto") or b""
    return request.isSecure() or proto.split(b",")[0].strip().lower() == b"https"


def _first_party(request: server.Request) -> bool:
    """Whether a request comes from the console's own origin (or from no web page at all), so that
    the browser's access cookie may count: ``Sec-Fetch-Site`` says so, or, for browsers without
    fetch metadata, ``Origin`` names this host; a GET without either must carry the console's
    ``X-ARP-Console`` header or a ``Referer`` of this host, or be a page load.

    Not for origins that ``--cors-origin`` lists: CORS lets them read answers to requests they make
    with a Bearer token, but a "simple" request (a ``no-cors`` POST, a text/plain form) needs no
    preflight and would carry the cookie, so a listed page (any page, with ``*``) could act as
    whoever is signed in.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None:
        return site in (b"same-origin", b"none")
    origin = request.getHeader(b"origin")
    if origin is not None:
        return _same_origin(
            origin.decode("latin-1"), _header(request, b"host"), _header(request, b"x-forwarded-host")
        )
    # no fetch metadata and no Origin: a non-browser client, or a GET (browsers send Origin with
    # every other method) on plain HTTP under a host name. For a GET, the console's own calls say
    # so with a header another origin's page cannot send without a preflight; else a Referer of
    # this host, or a page load (the console's pages are not framed by others)
    if request.method not in (b"GET", b"HEAD") or request.getHeader(CONSOLE_HEADER) is not None:
        return True
    host = request.getHeader(b"x-forwarded-host") or request.getHeader(b"host")
    if referer_is_host(request.getHeader(b"referer"), host) or referer_is_host(
        request.getHeader(b"referer"), request.getHeader(b"host")
    ):
        return True
    accept = request.getHeader(b"accept") or b""
    return request.method in (b"GET", b"HEAD") and b"text/html" in accept


class Guard:
    """Finds the access token in a request and asks the :class:`AccessStore` about it.

    The token is taken from ``Authorization: Bearer``, else ``?access=``, else this client's
    access cookie, which counts only for the console's own origin (:func:`_first_party`). The
    source address is the relay's last ``X-Forwarded-For`` entry for requests
    that came through a tunnel (the relay appends the browser's address), the peer otherwise.
    """

    def __init__(self, store: AccessStore, client_id: str) -> None:
        self.store = store
        self.cookie = cookie_name(client_id)
        self.route_url: Callable[[], str] = lambda: ""  # the relay's URL for us, once registered
        self.relays: Callable[[], list] = lambda: []  # the relays arpc is linked to (several: see tap)

    def credential(self, request: server.Request) -> str | None:
        """The token the request presents, if any."""
        auth = request.getHeader(b"authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return value.strip().decode("latin-1")
        query = request.args.get(b"access")
        if query:
            return query[0].decode("latin-1")
        if not _first_party(request):  # a foreign page's request: the browser's cookie is no credential
            return None
        values = self.cookie_values(request)
        if len(values) > 1:
            # several cookies of this name: a sibling host under --domain may have set one for the
            # whole domain ("cookie tossing"); the first that is a valid token counts, and the
            # others are not counted as guesses from the victim's address
            for value in values:
                if self.store.recognizes(value):
                    return value
        return values[0] if values else None

    def cookie_values(self, request: server.Request) -> list[str]:
        """Every value of this client's access cookie (``__Host-`` first) in the request."""
        names = (b"__Host-" + self.cookie.encode(), self.cookie.encode())
        found: dict[bytes, list[str]] = {name: [] for name in names}
        for header in request.requestHeaders.getRawHeaders(b"cookie", []):
            for part in header.split(b";"):
                name, sep, value = part.strip().partition(b"=")
                if sep and name in found:
                    found[name].append(value.strip().decode("latin-1"))
        return found[names[0]] + found[names[1]]

    @staticmethod
    def address(request: server.Request) -> str:
        """Where the request came from, as far as we can trust it."""
        if isinstance(request.channel.transport, SiteTunnel):
            forwarded = request.getHeader(b"x-forwarded-for")
            if forwarded:
                return forwarded.split(b",")[-1].strip().decode("latin-1")[:64]
            return "relay"
        peer = request.getClientAddress()
        return str(getattr(peer, "host", peer))

    def authorize(self, request: server.Request, scope: str | None) -> Grant:
        """The request's grant if it has ``scope`` (None: any valid token); :class:`AccessError` if not."""
        return self.store.authorize(self.credential(request), scope, self.address(request))

    def refuse(self, request: server.Request, error: AccessError) -> bytes:
        """The JSON answer to a refused request."""
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="arpc", error="invalid_token"')
        if error.retry_after:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        return json_response(request, error.status, error.body())

    def set_cookie(self, request: server.Request, grant: Grant, token: str) -> None:
        """Give the browser the access cookie (HttpOnly, SameSite=Strict, Secure over https)."""
        lifetime = 400 * 24 * 3600  # the longest a browser keeps a cookie
        if grant.expires is not None:
            lifetime = max(1, min(lifetime, int(grant.expires - self.store.clock.seconds())))
        value = f"{self.cookie}={token}; Path=/; Max-Age={lifetime}; HttpOnly; SameSite=Strict"
        if _is_https(request):  # a __Host- cookie: no other host (a sibling under --domain) can set it
            value = f"__Host-{value}; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", value.encode("latin-1"))

    def link_for(self, request: server.Request, token: str) -> str:
        """A URL that opens the console with ``token``: the relay's URL for us, else this origin's."""
        base = self.route_url()
        if not base:
            host = _header(request, b"x-forwarded-host") or _header(request, b"host") or "localhost"
            base = f"{'https' if _is_https(request) else 'http'}://{host}/"
        return with_access(base, token)


class JsonResource(Resource):
    """A resource whose ``handle_<METHOD>(request, grant)`` methods return ``(status, body)`` or a
    Deferred of it. ``scopes`` maps each method to the scope it needs (None: any valid token);
    a handler without an entry is refused (fail closed)."""

    cors: Cors
    guard: Guard
    scopes: dict[str, str | None] = {}

    def __init__(self, cors: Cors, guard: Guard) -> None:
        super().__init__()
        self.cors = cors
        self.guard = guard

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return NotFound(self.cors, self.guard)

    def render(self, request: server.Request) -> bytes | int:
        try:
            self.cors.check(request)
            if request.method == b"OPTIONS":
                return self._preflight(request)
            method = request.method.decode("ascii", "replace")
            handler = getattr(self, "handle_" + method, None)
            if handler is None and request.method == b"HEAD":
                method, handler = "GET", getattr(self, "handle_GET", None)
            if handler is None and not any(a.startswith("handle_") for a in dir(self)):
                raise ApiError(404, f"no such resource: {request.path.decode(errors='replace')}")
            if handler is None:
                allowed = sorted(a[7:] for a in dir(self) if a.startswith("handle_"))
                request.setHeader(b"allow", ", ".join(allowed).encode())
                raise ApiError(405, f"method {request.method.decode(errors='replace')} not allowed here")
            if method not in self.scopes:
                raise ApiError(500, f"{type(self).__name__} declares no scope for {method}")
            grant = self.guard.authorize(request, self.scopes[method])
            result = handler(request, grant)
        except AccessError as e:
            return self.guard.refuse(request, e)
        except (ApiError, BadRequest) as e:
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
        if not request.finished and not request_disconnected(request):
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
        request.setHeader(b"access-control-allow-headers", b"Authorization, Content-Type, X-ARP-Token")
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


class AccessTrade(Resource):
    """A page load with ``?access=<token>``: set the access cookie, then redirect without it.

    The token leaves the address bar (and the history, and any ``Referer``); an invalid one
    redirects to the console's sign-in screen, which says why.
    """

    isLeaf = True

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def render(self, request: server.Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return json_response(request, 405, "?access= is traded for a cookie on a GET page load only")
        token = request.args[b"access"][0].decode("latin-1")
        path, _, query = request.uri.partition(b"?")
        kept = b"&".join(p for p in query.split(b"&") if p and not p.startswith(b"access="))
        target = b"/" + path.lstrip(b"/\\")  # never //host: that would leave this origin
        if kept:
            target += b"?" + kept
        try:
            grant = self.guard.store.check(token, self.guard.address(request))
        except AccessError as e:
            if e.status == 429:
                return self.guard.refuse(request, e)
            target += b"#/signin/" + e.reason.encode()
        else:
            self.guard.set_cookie(request, grant, token)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.redirect(target)
        return b""


class Root(JsonResource):
    """``/``: the API under ``/api``; anything else goes to the console, once there is one."""

    def __init__(self, cors: Cors, guard: Guard) -> None:
        super().__init__(cors, guard)
        self.console: IResource | None = None

    def set_console(self, console: IResource) -> None:
        """Serve ``console`` (e.g. ``twisted.web.static.File``) for every path outside ``/api``."""
        self.console = console

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        if b"access" in request.args:
            return AccessTrade(self.guard)
        if self.console is not None:
            return self.console.getChildWithDefault(path, request)
        return NotFound(self.cors, self.guard)

    def render(self, request: server.Request) -> bytes | int:
        if self.console is not None:
            return self.console.render(request)
        return NotFound(self.cors, self.guard).render(request)


class Health(JsonResource):
    """``GET /api/health``: version, executors found, sessions running."""

    isLeaf = True
    scopes = {"GET": "view"}

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager) -> None:
        super().__init__(cors, guard)
        self.manager = manager

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        executors = {}
        for name, executor in self.manager.executors.items():
            configured = self.manager.binaries.get(name) or executor.default_binary
            path = executor.resolve(configured)
            executors[name] = {
                "found": path is not None,
                "path": path,
                "binary": configured,
                "flag": executor.flag,
                "mode": self.manager.mode(executor),
                "protocol": executor.protocol if self.manager.mode(executor) == "interactive" else "oneshot",
            }
        return 200, {
            "ok": True,
            "version": __version__,
            "executors": executors,
            "sessions": {"running": self.manager.running_count(), "max": self.manager.max_sessions},
            "relays": self.guard.relays(),
            "approvals": {
                "pending": len(self.manager.approvals.listing("pending")),
                "timeout": self.manager.approval_timeout,
            },
        }


class Sessions(JsonResource):
    """``/api/sessions``: list and create."""

    scopes = {"GET": "view", "POST": "prompt"}

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager, stream: Resource) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.stream = stream

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        session_id = path.decode("ascii", "replace")
        if not valid_id(session_id):
            return NotFound(self.cors, self.guard)
        return SessionDetail(self.cors, self.guard, self.manager, session_id, self.stream)

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        offset, limit = _page_args(request)
        return 200, self.manager.listing(offset, limit, _str_arg(request, "status"))

    def handle_POST(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        session = self.manager.create(self.json_body(request), actor=grant.actor())
        request.setHeader(b"location", f"/api/sessions/{session.id}".encode())
        return 201, session.detail()


class SessionDetail(JsonResource):
    """``/api/sessions/{id}``: status and output, cancel or delete; children ``messages``, ``stream``."""

    scopes = {"GET": "view", "DELETE": "prompt"}

    def __init__(
        self, cors: Cors, guard: Guard, manager: SessionManager, session_id: str, stream: Resource
    ) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.session_id = session_id
        self.stream = stream

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if path == b"messages":
            return FollowUp(self.cors, self.guard, self.manager, self.session_id)
        if path == b"approvals" and len(request.postpath) == 1:
            approval_id = request.postpath[0].decode("ascii", "replace")
            return ApprovalDetail(self.cors, self.guard, self.manager, self.session_id, approval_id)
        if path == b"stream" and not request.postpath:
            return self.stream
        if path == b"changes" and not request.postpath:
            return Changes(self.cors, self.guard, self.manager, self.session_id)
        return NotFound(self.cors, self.guard)

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        since = _int_arg(request, "since", 0)
        return 200, self.manager.get(self.session_id).detail(since)

    def handle_DELETE(self, request: server.Request, grant: Grant) -> tuple[int, Any] | Deferred:
        session = self.manager.get(self.session_id)
        if session.running:
            d = self.manager.cancel(session, actor=grant.actor())
            d.addCallback(lambda s: (200, s.summary()))
            return d
        self.manager.delete(session)
        log.info("session {id} deleted by token {token}", id=session.id, token=grant.id)
        return 200, {"deleted": session.id}


class FollowUp(JsonResource):
    """``POST /api/sessions/{id}/messages``: continue the agent conversation."""

    isLeaf = True
    scopes = {"POST": "prompt"}

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager, session_id: str) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.session_id = session_id

    def handle_POST(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        session = self.manager.get(self.session_id)
        before = session.record["lastSeq"]
        self.manager.follow_up(self.session_id, self.json_body(request), actor=grant.actor())
        body = session.summary()
        body["events"] = session.events_since(before)
        return 202, body


class Changes(JsonResource):
    """``GET /api/sessions/{id}/changes``: the files the session's agent changed, with diffs
    (:mod:`.changes`: the git working tree, else the agent's own edit and write tool calls)."""

    isLeaf = True
    scopes = {"GET": "view"}

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager, session_id: str) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.session_id = session_id

    def handle_GET(self, request: server.Request, grant: Grant) -> Deferred:
        from twisted.internet.defer import ensureDeferred

        from arp.client.command.changes import session_changes

        session = self.manager.get(self.session_id)
        reactor = self.manager.reactor
        base = session.record.get("gitBase")
        ceiling = self.manager.git_ceiling(session.cwd)
        d = ensureDeferred(session_changes(reactor, session.cwd, base, session.events(), ceiling))
        d.addCallback(lambda body: (200, body))
        return d


class ApprovalDetail(JsonResource):
    """``/api/sessions/{id}/approvals/{approvalId}``: read one approval, or answer it (``approve``)."""

    isLeaf = True
    scopes = {"GET": "view", "POST": "approve"}

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager, session_id: str, aid: str) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.session_id = session_id
        self.approval_id = aid

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        self.manager.get(self.session_id)
        record = self.manager.approvals.records.get(self.approval_id)
        if record is None or record.get("sessionId") != self.session_id:
            raise ApiError(404, f"no approval {self.approval_id!r} in this session")
        return 200, {k: v for k, v in record.items() if k != "key"}

    def handle_POST(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        session = self.manager.get(self.session_id)
        body = self.json_body(request)
        try:
            record = session.answer(self.approval_id, body, grant.actor(), grant.allows("prompt"))
        except ApprovalError as e:
            raise ApiError(e.status, e.message)
        log.info(
            "approval {id} of session {sid} {status} by token {token}",
            id=record["id"],
            sid=session.id,
            status=record["status"],
            token=grant.id,
        )
        return 200, {k: v for k, v in record.items() if k != "key"}


class Approvals(JsonResource):
    """``GET /api/approvals``: every approval, oldest first (``?status=pending`` filters).

    ``?wait=S&version=V`` waits up to S seconds (at most 55) for a change after version V, so a
    console's "needs you" badge is live without polling.
    """

    isLeaf = True
    scopes = {"GET": "view"}
    MAX_WAIT = 55

    def __init__(self, cors: Cors, guard: Guard, manager: SessionManager) -> None:
        super().__init__(cors, guard)
        self.manager = manager
        self.version = 0
        self.waiting: list[Deferred] = []
        manager.listeners.append(self._changed)

    def _changed(self, event: str, session: Session, approval: dict | None) -> None:
        if approval is None:
            return
        self.version += 1
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any] | Deferred:
        status = _str_arg(request, "status")
        if status is not None and status not in ("pending", "allowed", "denied", "expired", "cancelled"):
            raise ApiError(400, "status must be pending, allowed, denied, expired or cancelled")
        wait = _int_arg(request, "wait", 0, 0, self.MAX_WAIT)
        version = _int_arg(request, "version", -1, -1)

        def answer(_: object = None) -> tuple[int, Any]:
            # the wait may outlast the token: a device revoked (or expired) meanwhile learns nothing
            state = grant.state(self.guard.store.clock.seconds())
            if state != "active":
                request.setHeader(b"www-authenticate", b'Bearer realm="arpc", error="invalid_token"')
                return 401, {"error": f"access token {grant.id} ({grant.name}) is {state}", "reason": state}
            return 200, {"approvals": self.manager.approval_listing(status), "version": self.version}

        if not wait or version != self.version:
            return answer()
        d: Deferred = Deferred()
        self.waiting.append(d)
        from twisted.internet import reactor

        def forget(result: object) -> object:
            if d in self.waiting:
                self.waiting.remove(d)
            return result

        d.addTimeout(wait, reactor, onTimeoutCancel=lambda *_: None)
        d.addBoth(forget)
        request.notifyFinish().addErrback(lambda _: None if d.called else d.cancel())
        d.addCallback(answer)
        d.addErrback(lambda f: f.trap(CancelledError) and (499, "the client went away"))
        return d


class HistoryList(JsonResource):
    """``/<agent>/sessions``: a listing; ``/<agent>/sessions/{uuid}``: one session's messages."""

    scopes = {"GET": "view"}

    def __init__(
        self, cors: Cors, guard: Guard, reader: ClaudeHistory | CodexHistory | GeminiHistory
    ) -> None:
        super().__init__(cors, guard)
        self.reader = reader

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if request.postpath:
            return NotFound(self.cors, self.guard)
        return HistoryDetail(self.cors, self.guard, self.reader, path.decode("utf-8", "replace"))

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        offset, limit = _page_args(request)
        return 200, self.reader.sessions(_str_arg(request, "project"), offset, limit)


class HistoryDetail(JsonResource):
    """One history session's messages, paginated."""

    isLeaf = True
    scopes = {"GET": "view"}

    def __init__(
        self, cors: Cors, guard: Guard, reader: ClaudeHistory | CodexHistory | GeminiHistory, sid: str
    ) -> None:
        super().__init__(cors, guard)
        self.reader = reader
        self.sid = sid

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        offset = _int_arg(request, "offset", 0)
        limit = _int_arg(request, "limit", 200, 1, 2000)
        result = self.reader.messages(self.sid, offset, limit)
        if result is None:
            raise ApiError(404, f"no history session {self.sid!r}")
        return 200, result


class Projects(JsonResource):
    """``GET /api/claude/projects``."""

    isLeaf = True
    scopes = {"GET": "view"}

    def __init__(self, cors: Cors, guard: Guard, reader: ClaudeHistory) -> None:
        super().__init__(cors, guard)
        self.reader = reader

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        projects = self.reader.projects()
        return 200, {"projects": projects, "total": len(projects)}


# -- access management ------------------------------------------------------------------------


class Me(JsonResource):
    """``GET /api/me``: the token this request presented (any valid token may ask)."""

    isLeaf = True
    scopes = {"GET": None}

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        view = grant.view(self.guard.store.clock.seconds())
        view["allows"] = [s for s in ("view", "prompt", "approve", "admin") if grant.allows(s)]
        return 200, view


class Tokens(JsonResource):
    """``/api/tokens``: list (no secrets) and create (the secret is in the answer, once)."""

    scopes = {"GET": "admin", "POST": "admin"}

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if request.postpath:
            return NotFound(self.cors, self.guard)
        return TokenDetail(self.cors, self.guard, path.decode("ascii", "replace"))

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        return 200, {"tokens": self.guard.store.listing(grant)}

    def handle_POST(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        new, token = self.guard.store.create(self.json_body(request))
        link = self.guard.link_for(request, token)
        log.info("access token {id} created by token {by}", id=new.id, by=grant.id)
        body = new.view(self.guard.store.clock.seconds())
        body.update(token=token, link=link, qr=qr_svg_data_url(link))
        request.setHeader(b"location", f"/api/tokens/{new.id}".encode())
        return 201, body


class TokenDetail(JsonResource):
    """``DELETE /api/tokens/{id}``: revoke at once (its open streams are closed with 4001)."""

    isLeaf = True
    scopes = {"DELETE": "admin"}

    def __init__(self, cors: Cors, guard: Guard, token_id: str) -> None:
        super().__init__(cors, guard)
        self.token_id = token_id

    def handle_DELETE(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        revoked = self.guard.store.revoke(self.token_id)
        log.info("access token {id} revoked by token {by}", id=revoked.id, by=grant.id)
        return 200, revoked.view(self.guard.store.clock.seconds())


# -- Web Push (arp/client/command/push.py) -----------------------------------------------------


class PushKey(JsonResource):
    """``GET /api/push/key``: the VAPID public key a browser subscribes with, and the events."""

    isLeaf = True
    scopes = {"GET": "view"}

    def __init__(self, cors: Cors, guard: Guard, push: Any) -> None:
        super().__init__(cors, guard)
        self.push = push

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        from arp.client.command.push import EVENTS

        return 200, {"publicKey": self.push.keys.public_key, "events": list(EVENTS)}


class PushSubscriptions(JsonResource):
    """``/api/push/subscriptions``: a device subscribes (201 ``{"id": ...}``), lists, unsubscribes."""

    scopes = {"GET": "view", "POST": "view"}

    def __init__(self, cors: Cors, guard: Guard, push: Any) -> None:
        super().__init__(cors, guard)
        self.push = push

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        if request.postpath or not path.isalnum() or len(path) > 64:
            return NotFound(self.cors, self.guard)
        return PushSubscriptionDetail(self.cors, self.guard, self.push, path.decode("ascii"))

    def handle_GET(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        return 200, {"subscriptions": self.push.listing(grant)}

    def handle_POST(self, request: server.Request, grant: Grant) -> Deferred:
        d = self.push.subscribe(self.json_body(request), grant)

        def made(result: tuple[bool, dict]) -> tuple[int, Any]:
            created, view = result
            if created:
                request.setHeader(b"location", f"/api/push/subscriptions/{view['id']}".encode())
            return (201 if created else 200), view

        def refused(failure: Failure) -> None:
            failure.trap(BadRequest)
            raise ApiError(failure.value.status, failure.value.message)

        return d.addCallbacks(made, refused)


class PushSubscriptionDetail(JsonResource):
    """``DELETE /api/push/subscriptions/{id}``."""

    isLeaf = True
    scopes = {"DELETE": "view"}

    def __init__(self, cors: Cors, guard: Guard, push: Any, sub_id: str) -> None:
        super().__init__(cors, guard)
        self.push = push
        self.sub_id = sub_id

    def handle_DELETE(self, request: server.Request, grant: Grant) -> tuple[int, Any]:
        return 200, self.push.unsubscribe(self.sub_id, grant)


# -- the WebSocket stream ----------------------------------------------------------------------


class StreamProtocol(WebSocketServerProtocol):
    """Sends a session's events after ``since``, then live ones; closes after the final status.

    It is the streaming producer of its transport: while the viewer's socket is full, events
    queue here, up to :data:`VIEWER_BUFFER` bytes; beyond that the viewer is closed with 1013.
    """

    _log = Logger()
    manager: SessionManager
    cors: Cors
    store: AccessStore

    def __init__(self, grant: Grant | None = None) -> None:
        super().__init__()
        self.grant = grant  # checked by StreamGate before the upgrade
        self._expiry: Any = None
        self.session: Session | None = None
        self.since = 0
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closing = False

    def onConnect(self, request: Any) -> None:
        if self.grant is None:
            raise ConnectionDeny(401, "missing access token")
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
        assert session is not None and self.grant is not None
        self._expiry = self.store.watch(self.grant, self)
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

    def access_ended(self, reason: str) -> None:
        """The viewer's token was revoked or expired: close now with 4001 or 4002."""
        self._queue.clear()
        self._queued = 0
        self._closing = True
        if self.session is not None:
            self.session.viewers.discard(self)
        code = CLOSE_REVOKED if reason == "revoked" else CLOSE_EXPIRED
        self._log.info(
            "closing a stream: its access token {id} was {reason}",
            id=self.grant and self.grant.id,
            reason=reason,
        )
        self.sendClose(code, f"access token {reason}")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.viewers.discard(self)
        if self.grant is not None:
            self.store.unwatch(self.grant, self)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None


class StreamGate(Resource):
    """Checks the viewer's access (``view``) before handing the request to the WebSocket resource."""

    isLeaf = True

    def __init__(self, guard: Guard, factory: WebSocketServerFactory) -> None:
        super().__init__()
        self.guard = guard
        self.factory = factory
        self.websocket = WebSocketResource(factory)

    def render(self, request: server.Request) -> bytes | int:
        try:
            grant = self.guard.authorize(request, "view")
        except AccessError as e:
            return self.guard.refuse(request, e)
        self.factory.pending_grant = grant  # the protocol is built within render, synchronously
        try:
            return self.websocket.render(request)
        finally:
            self.factory.pending_grant = None


def stream_resource(manager: SessionManager, cors: Cors, guard: Guard) -> StreamGate:
    """The guarded WebSocket resource for ``/api/sessions/{id}/stream``."""
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(
        maxMessagePayloadSize=WS_MAX_MESSAGE,
        maxFramePayloadSize=WS_MAX_MESSAGE,
        autoPingInterval=WS_PING_INTERVAL,
        autoPingTimeout=WS_PING_INTERVAL * 1.5,
        allowedOrigins=["*"],  # checked in onConnect against --cors-origin and our own host
        # autobahn aborts the TCP connection when the viewer has not answered our Close within
        # this (default 1 s); a phone on a slow link, or a loaded machine, then lost the final
        # events still in flight through the relay (the RST discards them)
        closeHandshakeTimeout=WS_CLOSE_TIMEOUT,
    )
    factory.pending_grant = None

    def build() -> StreamProtocol:
        proto = StreamProtocol(factory.pending_grant)
        proto.manager = manager
        proto.cors = cors
        proto.store = guard.store
        return proto

    factory.protocol = build  # type: ignore[assignment]
    factory.noisy = False
    return StreamGate(guard, factory)


def build_root(
    manager: SessionManager,
    claude: ClaudeHistory,
    codex: CodexHistory,
    gemini: GeminiHistory,
    cors_origins: list[str],
    guard: Guard,
    push: Any = None,
) -> Root:
    """The whole resource tree (``/api/push`` with a :class:`~arp.client.command.push.PushService`)."""
    cors = Cors(cors_origins)
    root = Root(cors, guard)
    api = JsonResource(cors, guard)
    root.putChild(b"api", api)
    api.putChild(b"health", Health(cors, guard, manager))
    api.putChild(b"sessions", Sessions(cors, guard, manager, stream_resource(manager, cors, guard)))
    for name, reader in ((b"claude", claude), (b"codex", codex), (b"gemini", gemini)):
        agent = JsonResource(cors, guard)
        api.putChild(name, agent)
        agent.putChild(b"sessions", HistoryList(cors, guard, reader))
    claude_api = api.children[b"claude"]
    claude_api.putChild(b"projects", Projects(cors, guard, claude))
    manager.histories.update(Claude=claude, Codex=codex, Gemini=gemini)  # where "resume" looks
    api.putChild(b"approvals", Approvals(cors, guard, manager))
    api.putChild(b"me", Me(cors, guard))
    api.putChild(b"tokens", Tokens(cors, guard))
    if push is not None:
        push_api = JsonResource(cors, guard)
        api.putChild(b"push", push_api)
        push_api.putChild(b"key", PushKey(cors, guard, push))
        push_api.putChild(b"subscriptions", PushSubscriptions(cors, guard, push))
    return root


def make_site(root: Resource) -> server.Site:
    """A quiet Site for the tree."""
    site = server.Site(root, logFormatter=access_log_formatter)  # no token in the access log
    site.noisy = False
    site.displayTracebacks = False
    return site
