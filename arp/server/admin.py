"""The relay's admin endpoint: a panel, a JSON API and Prometheus metrics.

Served on ``--admin-endpoint`` (loopback by default).  When the endpoint is
reachable from elsewhere an ``--admin-token`` is required, given as
``Authorization: Bearer <token>`` or ``?token=<token>``.  Without a token the
``Host`` must be a loopback name or an IP address, so a page whose own name was
rebound to 127.0.0.1 cannot read client ids.

Changes (disconnecting a client) take a request that a page on another site
cannot send without the browser asking first: ``DELETE``, or ``POST`` with a
JSON body or an ``X-ARP-Admin`` header; and its ``Origin`` / ``Sec-Fetch-Site``,
when present, must say it comes from the admin's own origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from importlib import resources
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web import resource, server

from arp import __version__, http, wire
from arp.logs import access_log_formatter
from arp.server.public import PublicFactory
from arp.server.registry import Registry


def send_json(request: server.Request, status: int, payload: object) -> bytes:
    """Set status and headers for a JSON answer and return its body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload).encode()


def send_error(request: server.Request, status: int, message: str) -> bytes:
    """Set status and headers for a JSON error (:func:`arp.http.error_body`) and return its body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return http.error_body(status, message)


class JSONError(resource.Resource):
    """An error answered as ``{"error": ...}`` whatever the method or path."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: server.Request) -> bytes:
        return send_error(request, self.status, self.message)


class RelayView(resource.Resource):
    """A resource that reads the relay's registry and public front."""

    def __init__(self, registry: Registry, public: PublicFactory) -> None:
        super().__init__()
        self.registry = registry
        self.public = public


METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(kind: str, name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> str:
    """One metric family in the Prometheus text format (version 0.0.4)."""
    if kind == "counter":
        name += "_total"
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{key}="{_label_value(val)}"' for key, val in labels.items())
        lines.append(f"{name}{{{text}}} {float(value)!r}" if text else f"{name} {float(value)!r}")
    return "\n".join(lines) + "\n"


def relay_metrics(registry: Registry, public: PublicFactory) -> bytes:
    """The relay's metrics, read from the registry at scrape time (nothing on the hot path)."""
    totals = registry.totals()
    families = [
        _family(
            "counter",
            "arp_requests",
            "Requests answered, by HTTP status.",
            [({"status": str(status)}, count) for status, count in sorted(totals["statuses"].items())],
        ),
        _family(
            "counter",
            "arp_bytes",
            "Body bytes relayed.",
            [({"direction": "in"}, totals["bytes_in"]), ({"direction": "out"}, totals["bytes_out"])],
        ),
        _family(
            "counter",
            "arp_pool_requests",
            "Tunnel requests by outcome.",
            [
                ({"outcome": o}, totals[key])
                for o, key in (("hit", "hits"), ("miss", "misses"), ("timeout", "timeouts"))
            ],
        ),
        _family(
            "counter", "arp_tunnel_waits", "Requests that waited for a new tunnel.", [({}, totals["waits"])]
        ),
        _family(
            "counter",
            "arp_tunnel_wait_seconds",
            "Time spent waiting for tunnels.",
            [({}, totals["wait_seconds"])],
        ),
        _family(
            "gauge",
            "arp_clients",
            "Registered clients.",
            [
                ({"state": "online"}, totals["clients_online"]),
                ({"state": "retained"}, totals["clients_retained"]),
            ],
        ),
        _family(
            "gauge",
            "arp_tunnels",
            "Tunnels held by the relay.",
            [({"state": "idle"}, totals["tunnels_idle"]), ({"state": "busy"}, totals["tunnels_busy"])],
        ),
        _family(
            "gauge", "arp_public_connections", "Open public connections.", [({}, public.open_connections)]
        ),
    ]
    if registry.cluster is not None:
        families += _relay_families(registry.cluster.relay_rows())
    return "".join(families).encode()


def _relay_families(rows: list[dict]) -> list[str]:
    """Per-relay metrics (``relay`` label) as each relay last published them in Redis."""
    return [
        _family(
            "gauge",
            "arp_relay_clients",
            "Clients with a control link to each relay of the group.",
            [({"relay": r["relay"], "advertise": r["advertise"]}, r["clients_online"]) for r in rows],
        ),
        _family(
            "counter",
            "arp_relay_requests",
            "Requests each relay of the group has relayed.",
            [({"relay": r["relay"]}, r["requests"]) for r in rows],
        ),
        _family(
            "gauge",
            "arp_relay_tunnels",
            "Tunnels held by each relay of the group.",
            [({"relay": r["relay"], "state": "idle"}, r["tunnels_idle"]) for r in rows]
            + [({"relay": r["relay"], "state": "busy"}, r["tunnels_busy"]) for r in rows],
        ),
        _family("gauge", "arp_relays", "Relays in the group (this one included).", [({}, len(rows))]),
    ]


class Metrics(RelayView):
    """``/metrics`` in the Prometheus text format."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        return relay_metrics(self.registry, self.public)


class Clients(RelayView):
    """``/admin/api/clients`` and ``/admin/api/clients/<id>[/disconnect]``."""

    log = Logger()

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if not path:
            return self
        return Client(self.registry, path.decode("utf-8", "replace"))

    def render_GET(self, request: server.Request) -> bytes:
        clients = [r.snapshot() for r in self.registry.clients.values()]
        clients.sort(key=lambda c: (not c["online"], c["clientId"]))
        return send_json(request, 200, {"clients": clients, "totals": _totals(self.registry, self.public)})


class Client(resource.Resource):
    """One client: GET its record, DELETE (or POST .../disconnect) to drop it and free its id."""

    log = Logger()

    def __init__(self, registry: Registry, client_id: str) -> None:
        super().__init__()
        self.registry = registry
        self.client_id = client_id

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"disconnect":
            return self
        return JSONError(404, "no such admin resource")

    def render_GET(self, request: server.Request) -> bytes:
        record = self.registry.clients.get(self.client_id)
        if record is None:
            return send_error(request, 404, "no such client")
        return send_json(request, 200, record.snapshot())

    def render_DELETE(self, request: server.Request) -> bytes:
        refused = cross_site_refusal(request)
        if refused:
            self.log.warn(
                "admin refused a {method} from {origin}: {why}",
                method=request.method.decode("ascii", "replace"),
                origin=(request.getHeader(b"origin") or b"-").decode("ascii", "replace"),
                why=refused,
            )
            return send_error(request, 403, refused)
        if not self.registry.disconnect(self.client_id):
            return send_error(request, 404, "no such client")
        self.log.info("admin disconnected client {client_id}", client_id=wire.redact(self.client_id))
        return send_json(request, 200, {"disconnected": self.client_id})

    render_POST = render_DELETE


ADMIN_HEADER = b"x-arp-admin"  # any value: a header a cross-site form or simple request cannot carry
_SAME_ORIGIN_FETCHES = (b"same-origin", b"none")  # Sec-Fetch-Site values of our own page and of curl-likes


def _media_type(request: server.Request) -> bytes:
    return (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()


def _host_name(request: server.Request) -> str | None:
    """The host name in the ``Host`` header (no port, no brackets), or None if it has none."""
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
    try:
        return urlsplit("//" + host).hostname or None
    except ValueError:
        return None


def _origin_host(origin: str) -> str | None:
    """The host name of an ``Origin`` (None for ``null`` and anything not http(s))."""
    try:
        parts = urlsplit(origin)
        return parts.hostname if parts.scheme in ("http", "https") else None
    except ValueError:
        return None


def cross_site_refusal(request: server.Request) -> str | None:
    """Why a state-changing admin request is refused, or None to accept it.

    It must be a request no page on another site can make without a CORS preflight (which the
    admin never grants): ``DELETE``, or a ``POST`` with ``Content-Type: application/json`` or
    an ``X-ARP-Admin`` header.  And when the browser says where it comes from, that must be
    the admin itself: ``Sec-Fetch-Site`` same-origin (or none) and an ``Origin`` whose host is
    the ``Host`` of the request.  (Scheme and port are left to ``Sec-Fetch-Site`` and the
    preflight rule, so the panel keeps working behind a proxy that terminates TLS.)  Clients
    that send neither header (curl, scripts) are judged by the first rule alone.
    """
    method = request.method.upper()
    if (
        method != b"DELETE"
        and _media_type(request) != b"application/json"
        and not request.getHeader(ADMIN_HEADER)
    ):
        return "a change needs DELETE, or POST with Content-Type: application/json or an X-ARP-Admin header"
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_ORIGIN_FETCHES:
        return "cross-site request refused (Sec-Fetch-Site: " + fetch_site.decode("latin-1") + ")"
    origin = request.getHeader(b"origin")
    if origin is not None and _origin_host(origin.decode("latin-1").strip()) != _host_name(request):
        return "cross-origin request refused (Origin: " + origin.decode("latin-1") + ")"
    return None


def loopback_host(request: server.Request) -> bool:
    """Whether the ``Host`` header names this machine the way only a local user would: an IP
    address, ``localhost`` or a ``*.localhost`` name (not a DNS name an attacker controls)."""
    name = _host_name(request) or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _totals(registry: Registry, public: PublicFactory) -> dict:
    totals = registry.totals()
    totals["statuses"] = {str(k): v for k, v in sorted(totals["statuses"].items())}
    totals["public_connections"] = public.open_connections
    totals["version"] = __version__
    if registry.cluster is not None:  # several relays: a row per relay, and the sums
        rows = registry.cluster.relay_rows()
        totals["relays"] = rows
        totals["all_relays"] = {
            name: sum(row[name] for row in rows)
            for name in (
                "clients_online",
                "requests",
                "bytes_in",
                "bytes_out",
                "tunnels_idle",
                "tunnels_busy",
            )
        }
    return totals


class Stats(RelayView):
    """``/admin/api/stats``: relay-wide totals."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return send_json(request, 200, _totals(self.registry, self.public))


class Health(RelayView):
    """``/healthz``: 200 while the relay serves; 503 once it has given up its clients for
    lack of Redis.  Needs no admin token and says nothing about clients."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        cluster = self.registry.cluster
        body: dict = {"ok": True}
        if cluster is not None:
            body["redis"] = cluster.available
            body["ok"] = cluster.serving
        return send_json(request, 200 if body["ok"] else 503, body)


#: Headers on every admin answer: no page may frame the panel (CSP for today's browsers,
#: X-Frame-Options for older ones).
NO_FRAMING = (
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
)


class AdminRoot(resource.Resource):
    """The admin tree; checks the admin token (if any) before anything else."""

    def __init__(self, registry: Registry, public: PublicFactory, token: str | None) -> None:
        super().__init__()
        self.token = token
        page = resources.files("arp.server").joinpath("static/admin.html").read_bytes()
        self.page = page
        api = resource.Resource()
        api.putChild(b"clients", Clients(registry, public))
        api.putChild(b"stats", Stats(registry, public))
        admin = resource.Resource()
        admin.putChild(b"api", api)
        self.putChild(b"admin", admin)
        self.putChild(b"metrics", Metrics(registry, public))
        self.health = Health(registry, public)

    def _authorized(self, request: server.Request) -> bool:
        if not self.token:
            return True
        given = b""
        auth = request.getHeader(b"authorization") or b""
        if auth.lower().startswith(b"bearer "):
            given = auth[7:].strip()
        elif b"token" in request.args:
            given = request.args[b"token"][0]
        return hmac.compare_digest(given, self.token.encode())

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        # never inside another page's frame (clickjacking: a page the operator opens must not
        # show the panel under its own buttons), whatever is answered below
        for name, value in NO_FRAMING:
            request.setHeader(name, value)
        if path == b"healthz" and not request.postpath:
            return self.health  # for load balancers and readiness probes: no token, no data
        if not self.token and not loopback_host(request):
            # a loopback admin without a token: refuse names that DNS rebinding could point here
            return JSONError(
                403, "the admin without --admin-token answers only to localhost or an IP address"
            )
        if path in (b"", b"admin.html") and not request.postpath:
            return self  # the page holds no data; it asks the API, which checks the token
        if not self._authorized(request):
            return JSONError(401, "admin token required (Authorization: Bearer <token> or ?token=)")
        child = self.children.get(path)
        if child is None:
            return JSONError(404, "no such admin resource")
        return child

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self.page


def admin_site(registry: Registry, public: PublicFactory, token: str | None) -> server.Site:
    """The admin ``Site``."""
    site = server.Site(AdminRoot(registry, public, token), logFormatter=access_log_formatter)  # no ?token=
    site.noisy = False
    site.displayTracebacks = False
    return site
