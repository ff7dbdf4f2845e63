"""The relay's admin endpoint: a panel, a JSON API and Prometheus metrics.

Served on ``--admin-endpoint`` (loopback by default).  When the endpoint is
reachable from elsewhere an ``--admin-token`` is required, given as
``Authorization: Bearer <token>`` or ``?token=<token>``.
"""

from __future__ import annotations

import hmac
import json
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from twisted.web import resource, server

from arp import __version__, wire
from arp.server.public import PublicFactory
from arp.server.registry import Registry


def send_json(request: server.Request, status: int, payload: object) -> bytes:
    """Set status and headers for a JSON answer and return its body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload).encode()


class JSONError(resource.Resource):
    """An error answered as ``{"error": ...}`` whatever the method or path."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: server.Request) -> bytes:
        return send_json(request, self.status, {"error": self.message, "status": self.status})


class RelayCollector:
    """Prometheus collector reading the registry at scrape time (nothing on the hot path)."""

    def __init__(self, registry: Registry, public: PublicFactory) -> None:
        self.registry = registry
        self.public = public

    def collect(self):  # noqa: ANN201 - prometheus API
        totals = self.registry.totals()
        requests = CounterMetricFamily(
            "arp_requests", "Requests answered, by HTTP status.", labels=["status"]
        )
        for status, count in sorted(totals["statuses"].items()):
            requests.add_metric([str(status)], count)
        yield requests
        traffic = CounterMetricFamily("arp_bytes", "Body bytes relayed.", labels=["direction"])
        traffic.add_metric(["in"], totals["bytes_in"])
        traffic.add_metric(["out"], totals["bytes_out"])
        yield traffic
        pool = CounterMetricFamily("arp_pool_requests", "Tunnel requests by outcome.", labels=["outcome"])
        pool.add_metric(["hit"], totals["hits"])
        pool.add_metric(["miss"], totals["misses"])
        pool.add_metric(["timeout"], totals["timeouts"])
        yield pool
        waits = CounterMetricFamily("arp_tunnel_waits", "Requests that waited for a new tunnel.")
        waits.add_metric([], totals["waits"])
        yield waits
        wait_seconds = CounterMetricFamily("arp_tunnel_wait_seconds", "Time spent waiting for tunnels.")
        wait_seconds.add_metric([], totals["wait_seconds"])
        yield wait_seconds
        clients = GaugeMetricFamily("arp_clients", "Registered clients.", labels=["state"])
        clients.add_metric(["online"], totals["clients_online"])
        clients.add_metric(["retained"], totals["clients_retained"])
        yield clients
        tunnels = GaugeMetricFamily("arp_tunnels", "Tunnels held by the relay.", labels=["state"])
        tunnels.add_metric(["idle"], totals["tunnels_idle"])
        tunnels.add_metric(["busy"], totals["tunnels_busy"])
        yield tunnels
        conns = GaugeMetricFamily("arp_public_connections", "Open public connections.")
        conns.add_metric([], self.public.open_connections)
        yield conns


class Metrics(resource.Resource):
    """``/metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: Registry, public: PublicFactory) -> None:
        super().__init__()
        self.collectors = CollectorRegistry(auto_describe=True)
        self.collectors.register(RelayCollector(registry, public))

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.collectors)


class Clients(resource.Resource):
    """``/admin/api/clients`` and ``/admin/api/clients/<id>[/disconnect]``."""

    log = Logger()

    def __init__(self, registry: Registry, public: PublicFactory) -> None:
        super().__init__()
        self.registry = registry
        self.public = public

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
            return send_json(request, 404, {"error": "no such client", "status": 404})
        return send_json(request, 200, record.snapshot())

    def render_DELETE(self, request: server.Request) -> bytes:
        if not self.registry.disconnect(self.client_id):
            return send_json(request, 404, {"error": "no such client", "status": 404})
        self.log.info("admin disconnected client {client_id}", client_id=wire.redact(self.client_id))
        return send_json(request, 200, {"disconnected": self.client_id})

    render_POST = render_DELETE


def _totals(registry: Registry, public: PublicFactory) -> dict:
    totals = registry.totals()
    totals["statuses"] = {str(k): v for k, v in sorted(totals["statuses"].items())}
    totals["public_connections"] = public.open_connections
    totals["version"] = __version__
    return totals


class Stats(resource.Resource):
    """``/admin/api/stats``: relay-wide totals."""

    isLeaf = True

    def __init__(self, registry: Registry, public: PublicFactory) -> None:
        super().__init__()
        self.registry = registry
        self.public = public

    def render_GET(self, request: server.Request) -> bytes:
        return send_json(request, 200, _totals(self.registry, self.public))


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
    site = server.Site(AdminRoot(registry, public, token))
    site.noisy = False
    site.displayTracebacks = False
    return site


def is_loopback(endpoint: str) -> bool:
    """Whether a server endpoint string listens on loopback only."""
    for part in endpoint.split(":"):
        if part.startswith("interface="):
            iface = part[len("interface=") :].replace("\\", "")
            return iface.startswith("127.") or iface in ("::1", "localhost")
    return endpoint.startswith("unix:")
