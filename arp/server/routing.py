"""Which client a public request is for, or the answer the relay gives it itself.

:meth:`Router.route` looks at a parsed request head and returns the
:class:`~arp.server.registry.ClientRecord` to forward it to, or an
:class:`Answer` (an error, a redirect).  It also takes out of the head what is
the relay's: the ``token=`` the relay consumed, the ``X-ARP-Token`` header (see
the public front's rewrite) and every ARP cookie, whoever it belongs to.

Where a request arrives decides how it may be routed:

- on a client's own origin (its port, or ``<label>.<domain>``) only to that
  client.  On a port, the request must carry the client id (``?token=``,
  ``X-ARP-Token`` or the client's own cookie); a cookie alone is honoured only
  for same-origin requests and top-level navigations, never for a request
  another origin's page makes (that page may be another client's);
- on the shared origin (the main public port) by ``?token=`` or
  ``X-ARP-Token`` for API clients; a browser page load there is redirected to
  the client's own origin, and no cookie routes anything.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger

from arp import http, wire
from arp.http import error_body
from arp.server.origins import (
    ACCESS_COOKIE_PREFIX,
    LEGACY_COOKIE,
    Origins,
    access_cookie_name,
    cookie_name,
    is_arp_cookie,
)

TOKEN_HEADER = b"x-arp-token"
_READ_ONLY = (b"GET", b"HEAD")
_SAME = (b"same-origin", b"none")


class GuessLimiter:
    """Counts unknown-token requests per source address in a sliding window."""

    def __init__(self, limit: int, window: float, clock: object, max_addresses: int = 10000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, address: str) -> bool:
        """Whether ``address`` is over its limit (without counting a new miss).  An IPv6 address
        counts as its /64, so rotating addresses within one host's range does not reset it."""
        address = wire.source_range(address)
        entry = self._seen.get(address)
        if entry is None:
            return False
        start, count = entry
        if self.clock.seconds() - start > self.window:
            del self._seen[address]
            return False
        return count >= self.limit

    def miss(self, address: str) -> None:
        """Count one unknown-token request from ``address`` (an IPv6 address: its /64)."""
        address = wire.source_range(address)
        now = self.clock.seconds()
        start, count = self._seen.pop(address, (now, 0))
        if now - start > self.window:
            start, count = now, 0
        self._seen[address] = (start, count + 1)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)


#: Every answer the relay gives itself says so, in the JSON (``"from": "relay"``) and in this
#: header, so that a client (the console) never takes the relay's word for the service's: a 404
#: "unknown token" from a relay that just restarted says nothing about a session.
FROM_HEADER = (b"X-ARP-From", b"relay")


def relay_body(status: int, message: str, **extra: object) -> bytes:
    """The JSON body of an error the relay answers itself (:func:`arp.http.error_body`, from the relay)."""
    return error_body(status, message, **extra, **{"from": "relay"})


def redirect_body(location: bytes, message: str) -> bytes:
    """The JSON body of a redirect of our own (it says where to, for clients that do not follow)."""
    body = {"status": 302, "location": location.decode("latin-1"), "message": message, "from": "relay"}
    return json.dumps(body).encode()


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


@dataclass
class Answer:
    """An answer the relay gives itself instead of forwarding the request."""

    status: int
    message: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep: bool = True
    extra: dict = field(default_factory=dict)  # more JSON fields (limit, retry_after...)
    body: bytes | None = None  # None: the JSON error body

    def encode(self) -> bytes:
        """The JSON body."""
        if self.body is not None:
            return self.body
        return relay_body(self.status, self.message, **self.extra)


def _unquote(value: bytes) -> bytes:
    return unquote_to_bytes(value) if b"%" in value else value


def take_query_tokens(head: http.Head, only: bytes | None = None) -> list[bytes]:
    """The values of the ``token=`` parameters of the request target, taken out of it: all of
    them, or (``only``) those with that value, leaving others (an arpc access token) in place."""
    path, sep, query = head.target.partition(b"?")
    if not sep or b"token=" not in query:
        return []
    tokens, kept = [], []
    for param in query.split(b"&"):
        if param.startswith(b"token="):
            value = _unquote(param[6:])
            tokens.append(value)
            if only is None or value == only:
                continue
        kept.append(param)
    head.start = (head.start[0], path + (b"?" + b"&".join(kept) if kept else b""), head.start[2])
    return tokens


def take_arp_cookies(head: http.Head, cookies: Sequence[bytes]) -> dict[bytes, list[bytes]] | None:
    """Take every ARP cookie (the relay's, and arpc's access cookies) out of the request's
    ``Cookie`` headers; their values by name."""
    if not any(b"arp" in value for value in cookies):
        return None
    jar: dict[bytes, list[bytes]] = {}
    kept = []
    for value in cookies:
        for part in value.split(b";"):
            part = part.strip()
            if not part:
                continue
            name, _, val = part.partition(b"=")
            name = name.strip()
            if is_arp_cookie(name) or _is_access_cookie(name):
                jar.setdefault(name, []).append(val.strip())
            else:
                kept.append(part)
    head.remove(b"cookie")
    if kept:
        head.add(b"Cookie", b"; ".join(kept))
    return jar


def strip_arp_set_cookies(raw: bytes, own_access: bytes = b"") -> bytes:
    """A response head without the ``Set-Cookie`` lines that try to set one of the relay's
    cookies, or an arpc access cookie other than ``own_access`` (the routed client's own)."""
    lines = raw.split(b"\n")
    kept = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"set-cookie":
            cookie = value.split(b";", 1)[0].partition(b"=")[0].strip()
            theirs = _is_access_cookie(cookie) and cookie.removeprefix(HOST_PREFIX) != own_access
            if is_arp_cookie(cookie) or theirs:
                continue
        kept.append(line)
    return b"\n".join(kept)


def pass_own_access(head: http.Head, record: object, jar: dict[bytes, list[bytes]]) -> object:
    """Give back the routed client's own access cookie (taken out with the others); ``record``."""
    name = access_cookie_name(record.client_id)
    for own in (HOST_PREFIX + name, name):  # arpc's __Host- cookie (over https) and the plain one
        values = jar.get(own)
        if values:
            head.add(b"Cookie", b"; ".join(own + b"=" + value for value in values))
    return record


#: The prefix of arpc's access cookie over https: a ``__Host-`` cookie can only be set by its own
#: host (Secure, Path=/, no Domain), so no sibling host under ``--domain`` can toss one.
HOST_PREFIX = b"__Host-"


def _is_access_cookie(name: bytes) -> bool:
    return name.startswith(ACCESS_COOKIE_PREFIX) or name.startswith(HOST_PREFIX + ACCESS_COOKIE_PREFIX)


def is_navigation(head: http.Head) -> bool:
    """Whether a browser is loading a page (not a script, an API call or a WebSocket)."""
    mode = head.get(b"sec-fetch-mode")
    if mode is not None:
        page = mode == b"navigate"
    else:  # a browser without fetch metadata, or an API client (which rarely asks for HTML)
        accept = head.get(b"accept")
        page = accept is not None and b"text/html" in accept
    return page and head.method in _READ_ONLY and head.get(b"upgrade") is None


def _origin_is_host(head: http.Head) -> bool:
    origin = head.get(b"origin")
    if origin is None:
        return True
    host = head.get(b"host")
    return host is not None and origin.partition(b"://")[2].lower() == host.lower()


def cookie_may_route(head: http.Head) -> bool:
    """Whether a request whose only credential is a cookie may use it: same-origin requests and
    top-level page loads, not what another origin's page sends (fetch, form POST, WebSocket,
    frames), even from the same site (every port of the relay's host is the same site).

    Without fetch metadata (Chromium sends none to an origin that is not potentially
    trustworthy: plain HTTP on a host name other than localhost) a request is taken as
    same-origin only if it says so: an ``Origin`` of this host, or, with no ``Origin`` (a GET:
    browsers send one with every other method), a ``Referer`` of this host or the console's own
    header; else only a page load may use the cookie (a no-cors GET, an image or a script from
    another port's page may not; nor may a non-browser client that sends none of these)."""
    site = head.get(b"sec-fetch-site")
    if site is None:
        if head.get(b"origin") is not None:
            return _origin_is_host(head)
        if head.method not in _READ_ONLY:  # browsers send Origin with every other method
            return True
        return (
            http.referer_is_host(head.get(b"referer"), head.get(b"host"))
            or head.get(http.CONSOLE_HEADER) is not None
            or is_navigation(head)
        )
    if site in _SAME:  # the browser vouches for it (a proxy in front may have rewritten Host)
        return True
    return (
        head.method in _READ_ONLY
        and head.get(b"sec-fetch-mode") == b"navigate"
        and head.get(b"sec-fetch-dest") in (b"document", None)
    )


def path_of(target: bytes) -> bytes:
    """The path and query of a request target, never ``//host`` or ``/\\host`` (no open redirect)."""
    if not target.startswith(b"/"):  # absolute-form: keep the path and query only
        target = b"/" + target.partition(b"://")[2].partition(b"/")[2]
    return b"/" + target.lstrip(b"/\\")


class Router:
    """Decides where each public request goes (see the module's docstring)."""

    log = Logger()

    def __init__(
        self, registry: object, origins: Origins | None, limiter: GuessLimiter, secure_cookies: bool
    ) -> None:
        self.registry = registry
        self.origins = origins
        self.limiter = limiter
        self.secure = b"; Secure" if secure_cookies else b""

    def route(self, head: http.Head, bound: object | None, peer: str) -> object:
        """The record to forward ``head`` to, or the :class:`Answer` to give instead."""
        header = head.get(TOKEN_HEADER)  # dropped with the other rewritten headers by the front
        if header is not None:
            header = header.strip()
        cookies = head.get_all(b"cookie")
        jar = take_arp_cookies(head, cookies) if cookies else None
        origins = self.origins
        by_host = False
        if bound is None and origins is not None and origins.domain is not None:
            by_host, bound = origins.find(head.get(b"host"))
            if by_host and bound is None:
                return self._unknown(peer, "no client is registered at this host name")
        if bound is not None:
            return self._own_origin(head, bound, header, jar, by_host, peer)
        # the shared origin: API clients by ?token= or X-ARP-Token; no cookie routes here
        if head.get(b"service-worker") is not None:
            # a worker registered here would see every client's pages on this origin; a client's
            # own origin (its port, or its host name under --domain) may have one (SECURITY.rst)
            return Answer(
                403,
                "service workers are refused on the relay's shared address, which every client "
                "shares; open the client's own address (the URL arpc printed)",
            )
        tokens = take_query_tokens(head) if b"token=" in head.target else None
        token = tokens[0] if tokens else header
        if token is None:
            legacy = jar.get(LEGACY_COOKIE) if jar else None
            if legacy:
                return self._legacy_cookie(head, legacy[0])
            return Answer(401, "missing token: add ?token=<token> to the URL")
        try:
            record = self.registry.lookup(token.decode("ascii"))  # with --redis: other relays' too
        except UnicodeDecodeError:
            record = None
        if record is None or record.mode != "http":  # a raw TCP client's tunnels carry no HTTP
            return self._unknown(peer, "unknown token: no client is registered with it")
        if not record.online:
            return self._offline(record)
        if origins is not None and is_navigation(head):
            moved = self._to_own_origin(head, record)
            if moved is not None:
                return moved
        return pass_own_access(head, record, jar) if jar else record

    # -- a client's own origin
    def _own_origin(
        self,
        head: http.Head,
        record: object,
        header: bytes | None,
        jar: dict | None,
        by_host: bool,
        peer: str,
    ) -> object:
        if self.registry.clients.get(record.client_id) is not record or record.mode != "http":
            return Answer(404, "the client of this address is no longer registered")
        cid = record.client_id.encode()
        tokens = take_query_tokens(head, cid) if b"token=" in head.target else ()
        name = cookie_name(record.client_id)
        # the host name (under --domain) or the port says which client; the id must still be
        # shown once (then it is kept in a cookie): a host label travels to third parties in
        # Origin, Referer, DNS and SNI, and must not open the client by itself
        if cid in tokens:
            via = "query"
        elif header == cid:
            via = "header"
        elif jar and cid in jar.get(name, ()):
            via = "cookie"
        elif tokens or header:
            return self._unknown(peer, "wrong token for this address")
        else:
            return Answer(
                401,
                "this address serves one client: open the URL arpc printed (it ends in ?token=...) "
                "once in this browser, or send the X-ARP-Token header",
                extra={"reason": "missing"},
            )
        if not record.online:
            return self._offline(record)
        if cid in tokens and is_navigation(head):  # take the token out of the address bar
            location = path_of(head.target)
            # host-only (no Domain): under --domain it reaches this client's host name alone
            cookie = name + b"=" + cid + b"; Path=/; HttpOnly; SameSite=Lax" + self.secure
            headers = [(b"Location", location), (b"Set-Cookie", cookie)]
            return Answer(302, "", headers, body=redirect_body(location, "the token moved into a cookie"))
        if via == "cookie" and not cookie_may_route(head):
            return Answer(
                403,
                "a request from another origin's page carries only this client's cookie: refused "
                "(send the X-ARP-Token header to call this client from elsewhere)",
            )
        return pass_own_access(head, record, jar) if jar else record

    def _to_own_origin(self, head: http.Head, record: object, extra: list | None = None) -> Answer | None:
        """A redirect of a browser's page load to the client's own origin (None: it has none)."""
        origins = self.origins
        if origins is None:
            return None
        base = origins.location(record, head.get(b"host"))
        if base is None:
            return None
        location = base + path_of(head.target)
        # the own origin (a port, or a host name) trades it for its cookie
        location += (b"&" if b"?" in location else b"?") + b"token=" + record.client_id.encode()
        return Answer(
            302,
            "",
            [(b"Location", location), *(extra or [])],
            body=redirect_body(location, "this client has an origin of its own"),
        )

    def _legacy_cookie(self, head: http.Head, value: bytes) -> Answer:
        """The old ``arp_token`` cookie: it routes nothing; a page load goes to the client's origin."""
        gone = LEGACY_COOKIE + b"=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax" + self.secure
        expire = [(b"Set-Cookie", gone)]
        record = self._lookup(value)
        if record is not None and record.online and is_navigation(head):
            moved = self._to_own_origin(head, record, expire)
            if moved is not None:
                return moved
        return Answer(
            401,
            "the arp_token cookie no longer routes requests on the shared address: open the URL "
            "arpc prints (each client has an address of its own), or send ?token= / X-ARP-Token",
            expire,
        )

    def _lookup(self, token: bytes) -> object | None:
        try:
            client_id = token.decode("ascii")
        except UnicodeDecodeError:
            return None
        record = self.registry.clients.get(client_id)
        if record is not None and record.mode != "http":
            return None  # a raw TCP client's tunnels carry no HTTP
        return record

    def _unknown(self, peer: str, message: str) -> Answer:
        limiter = self.limiter
        if limiter.blocked(peer):
            self.log.warn("too many unknown tokens from {peer}", peer=peer)
            return Answer(
                429,
                "too many requests with unknown tokens",
                [(b"Retry-After", b"60")],
                keep=False,
                extra={"retry_after": 60},
            )
        limiter.miss(peer)
        return Answer(404, message)

    @staticmethod
    def _offline(record: object) -> Answer:
        """503 for a client that is away: stopped by its owner, or reconnecting (after a network
        loss, or after this relay restarted); its id stays reserved for it either way."""
        stopped = record.stopped_at
        if stopped is not None:
            return Answer(
                503,
                f"client stopped by its owner at {_utc(stopped)}; its address stays reserved for it",
                [(b"Retry-After", b"60")],
                extra={"retry_after": 60, "reason": "stopped", "stoppedAt": stopped},
            )
        if record.restored:
            message = "the relay restarted; this client is reconnecting: try again in a few seconds"
        else:
            message = "client is offline and reconnecting; its registration is kept while it does"
        extra = {"retry_after": 5, "reason": "reconnecting"}
        return Answer(503, message, [(b"Retry-After", b"5")], extra=extra)
