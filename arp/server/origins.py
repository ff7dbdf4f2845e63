"""An origin of its own for every HTTP client, so nothing one client serves runs beside another's.

Browsers isolate pages by origin (scheme, host, port).  With one shared public
origin, a page served by client A could call client B's API with the browser's
cookie for B.  So each HTTP client gets an origin of its own:

- with ``arps --domain D``: ``<label>.D`` (the label is a hash of the client id,
  see :func:`dns_label`), routed by the ``Host`` header; the id is still asked
  for once, as on ports;
- otherwise a dedicated public port from ``--client-ports`` (:class:`PortOrigins`),
  served by the same public HTTP front but bound to that one client.  Ports are
  guessable, so requests there must still carry the client id (query, header,
  or the per-client cookie the first load sets).

Cookies ignore ports, so every cookie ARP sets has a per-client name
(:func:`cookie_name`), and none of ARP's cookies ever reach a service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from hashlib import sha256
from urllib.parse import urlsplit

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from arp import wire
from arp.control import Unavailable
from arp.listen import Listener
from arp.tls import NegotiatesHTTP11

#: The legacy cookie of the shared origin (it routes nothing any more; it is stripped and expired).
LEGACY_COOKIE = b"arp_token"
_ARP_COOKIE_RE = re.compile(rb"arp_(?:token|[0-9a-f]{20})")
_HOST_RE = re.compile(rb"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


@lru_cache(maxsize=4096)
def cookie_name(client_id: str) -> bytes:
    """The name of the cookie that carries ``client_id`` on its own origin: ``arp_<20 hex>``.

    Per client, because cookies ignore ports: two clients on one relay host never
    overwrite each other's cookie.
    """
    return b"arp_" + sha256(b"arp-cookie\0" + client_id.encode()).hexdigest()[:20].encode()


#: arpc's access cookies (command mode, arp/client/command/access.py): ``arpc_access_`` and 16 hex
#: digits of the SHA-256 of the client id.  Cookies ignore ports, so the browser sends every
#: client's access cookie to every client's port: the relay passes on only the routed client's.
ACCESS_COOKIE_PREFIX = b"arpc_access_"


@lru_cache(maxsize=4096)
def access_cookie_name(client_id: str) -> bytes:
    """The name of arpc's access cookie for ``client_id`` (as arpc names it)."""
    return ACCESS_COOKIE_PREFIX + sha256(client_id.encode()).hexdigest()[:16].encode()


def is_arp_cookie(name: bytes) -> bool:
    """Whether a cookie called ``name`` is one of ARP's (the relay's to set and to read)."""
    return _ARP_COOKIE_RE.fullmatch(name) is not None


def dns_label(client_id: str) -> str:
    """The host label of a client under ``--domain``: ``c-`` and 40 hex digits of a hash of its
    id.  Never the id itself: browsers send host names to third parties (``Origin``, ``Referer``,
    DNS, SNI), and the id is what opens the client."""
    return "c-" + sha256(b"arp-label\0" + client_id.encode()).hexdigest()[:40]


def split_host(host: bytes | None) -> tuple[bytes | None, bytes]:
    """A ``Host`` header value as (host name, ``:port`` or empty); (None, empty) if malformed."""
    if not host:
        return None, b""
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return None, b""
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, sep, port = host.partition(b":")
        rest = b":" + port if sep else b""
    if rest and not rest[1:].isdigit():
        return None, b""
    if not _HOST_RE.fullmatch(name):
        return None, b""
    return name, rest


def endpoint_with_port(description: str, port: int) -> str | None:
    """``description`` (a ``tcp:``/``ssl:`` server endpoint string) listening on ``port`` instead.

    None when the endpoint type has no port to swap (unix sockets, systemd...).
    """
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        return None
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("port="):
            parts[i] = f"port={port}"
            return ":".join(parts)
    for i, part in enumerate(parts[1:], 1):
        if "=" not in part:
            parts[i] = str(port)
            return ":".join(parts)
    return None


class Origins:
    """Where a client's own origin is: what the registry, arpc and the public front ask."""

    domain: bytes | None = None

    def open_for(self, record: object) -> None:
        """Give a newly registered HTTP client its origin; raise Unavailable if none is left."""

    def close_for(self, record: object) -> None:
        """The client's registration ended: release its origin."""

    def url_for(self, record: object) -> str:
        """The client's base URL for arpc to print (``{host}`` is filled in by arpc)."""
        raise NotImplementedError

    def stop_listening(self) -> None:
        """The relay is shutting down: accept no new connections (open ones are drained)."""

    def location(self, record: object, host: bytes | None) -> bytes | None:
        """The client's origin as an absolute URL for a browser that reached the relay at ``host``."""
        raise NotImplementedError


class DomainOrigins(Origins):
    """``arps --domain D``: each client at ``<label>.D`` (wildcard DNS and certificate)."""

    def __init__(self, domain: str, scheme: str, port: Callable[[], str]) -> None:
        """``port()`` gives the ``:port`` suffix of printed URLs (empty for the scheme's default)."""
        self.domain = domain.lower().encode()
        self.scheme = scheme
        self._port = port
        self.labels: dict[bytes, object] = {}

    def open_for(self, record: object) -> None:
        label = dns_label(record.client_id)
        record.label = label
        self.labels[label.encode()] = record

    def close_for(self, record: object) -> None:
        label = record.label.encode()
        if self.labels.get(label) is record:
            del self.labels[label]

    def find(self, host: bytes | None) -> tuple[bool, object | None]:
        """Whether ``host`` is a client host under the domain, and the client's record if known."""
        name, _ = split_host(host)
        if name is None:
            return False, None
        name = name.lower()
        suffix = b"." + self.domain
        if not name.endswith(suffix) or len(name) == len(suffix):
            return False, None
        return True, self.labels.get(name[: -len(suffix)])

    def url_for(self, record: object) -> str:
        return f"{self.scheme}://{record.label}.{self.domain.decode()}{self._port()}"

    def location(self, record: object, host: bytes | None) -> bytes | None:
        return f"{self.scheme}://{record.label}.{self.domain.decode()}".encode() + split_host(host)[1]


class ClientPortFactory(NegotiatesHTTP11, Factory):
    """Connections to one client's own public port: the public front, bound to that client (over
    TLS, ALPN selects ``http/1.1`` as on the public port)."""

    noisy = False

    def __init__(self, front: Factory, record: object) -> None:
        self.front = front
        self.record = record

    def buildProtocol(self, addr: object) -> object:
        proto = self.front.buildProtocol(addr)
        proto.bound = self.record
        return proto


class PortOrigins(Origins):
    """No domain: each HTTP client gets a public port of its own from ``--client-ports``.

    A client's port is derived from a hash of its id (the next free one on a collision), so
    the URL arpc prints stays the same across relay restarts; it is released when the
    client's registration ends.
    """

    log = Logger()

    def __init__(
        self,
        first: int,
        last: int,
        endpoint: Callable[[int], str],
        front: Factory,
        reactor: object,
        scheme: str,
        host: str | None = None,
        tenant_quota: int = 0,
    ) -> None:
        """``endpoint(port)`` is the endpoint string to listen on; ``host`` the public host name
        (from ``--public-url``), else arpc fills in the address it used; ``tenant_quota``: the
        most ports one tenant (auth key) may hold at once (0: no limit)."""
        self.first = first
        self.last = last
        self.endpoint = endpoint
        self.front = front
        self.reactor = reactor
        self.scheme = scheme
        self.host = host
        self.tenant_quota = tenant_quota
        self.used: dict[int, object] = {}

    def _candidates(self, client_id: str) -> list[int]:
        size = self.last - self.first + 1
        start = self.first + int(sha256(b"arp-port\0" + client_id.encode()).hexdigest()[:12], 16) % size
        return list(range(start, self.last + 1)) + list(range(self.first, start))

    def open_for(self, record: object) -> None:
        if record.origin_listener is not None:
            return
        if self.tenant_quota:
            tenant = record.tenant
            held = sum(1 for other in self.used.values() if other.tenant == tenant)
            if held >= self.tenant_quota:
                self.log.warn(
                    "client {client_id} refused a public port: tenant {tenant} holds {held} of "
                    "{first}-{last} (its share)",
                    client_id=wire.redact(record.client_id),
                    tenant=tenant,
                    held=held,
                    first=self.first,
                    last=self.last,
                )
                raise Unavailable(
                    f"this auth key already holds {held} of the relay's client ports (its share of "
                    f"{self.first}-{self.last}); retrying until one of them is released"
                )
        for port in self._candidates(record.client_id):
            if port in self.used:
                continue
            listener = Listener(
                f"own port of client {wire.redact(record.client_id)}",
                self.endpoint(port),
                ClientPortFactory(self.front, record),
                self.reactor,
            )
            try:
                listener.startService()
            except SystemExit as e:  # taken by another program: try the next one
                self.log.debug("{why}", why=str(e))
                continue
            record.origin_listener = listener
            record.origin_port = port
            self.used[port] = record
            return
        self.log.warn(
            "no free public port for client {client_id} in {first}-{last}: registration refused",
            client_id=wire.redact(record.client_id),
            first=self.first,
            last=self.last,
        )
        raise Unavailable(  # arpc retries: ports come free as other registrations end
            f"no free public port for this client in {self.first}-{self.last} (retrying): "
            "the relay's operator can widen --client-ports or use --domain"
        )

    def close_for(self, record: object) -> None:
        listener, record.origin_listener = record.origin_listener, None
        if self.used.get(record.origin_port) is record:
            del self.used[record.origin_port]
        if listener is not None:
            listener.stopService()

    def url_for(self, record: object) -> str:
        return f"{self.scheme}://{self.host or '{host}'}:{record.origin_port}"

    def stop_listening(self) -> None:
        for record in list(self.used.values()):
            listener = record.origin_listener
            if listener is not None and listener.port is not None:
                listener.stopService()

    def location(self, record: object, host: bytes | None) -> bytes | None:
        name = self.host.encode() if self.host else split_host(host)[0]
        if name is None:
            return None
        return f"{self.scheme}://".encode() + name + b":%d" % record.origin_port


def public_url_parts(public_url: str) -> tuple[str, str | None, str]:
    """``--public-url`` as (scheme, host name, ``:port`` or empty)."""
    parts = urlsplit(public_url)
    port = f":{parts.port}" if parts.port else ""
    return parts.scheme or "http", parts.hostname, port
