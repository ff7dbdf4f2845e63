"""The ``--api-endpoint`` listener answers only requests addressed to it (no DNS rebinding).

A web page on ``http://evil.example:8765`` whose name is re-pointed at
``127.0.0.1`` can make the browser send requests to a local API under the page's
own origin; the only trace is the ``Host`` header, which still says
``evil.example``.  So the local listener serves a request only when its
``Host`` names this listener: ``localhost`` (or ``*.localhost``), the address
the connection came in on (any loopback address when that is loopback), or a
name given with ``--api-host``; a port, when given, must be the listener's own.
Anything else is a JSON ``421 Misdirected Request``.  Tunnel requests come from
the relay and are not checked here (the relay routes by token).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from twisted.logger import Logger
from twisted.web.server import Request, Site

from arp.http import error_body

_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]\s]+))(?::(?P<port>[0-9]{1,5}))?$")

log = Logger()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_host_name(name: str) -> str:
    """A host name as compared here: lower case, no trailing dot."""
    return name.strip().lower().rstrip(".")


def host_allowed(host: bytes | None, local_host: str, local_port: int, names: Iterable[str] = ()) -> bool:
    """Whether a ``Host`` header value addresses a listener on ``local_host:local_port``."""
    if host is None:
        return False
    match = _HOST_RE.match(host.decode("latin-1").strip())
    if match is None:
        return False
    port = match.group("port")
    if port is not None and int(port) != local_port:
        return False
    if match.group("v6") is not None:
        wanted = _ip(match.group("v6"))
    else:
        name = normalize_host_name(match.group("name"))
        if name == "localhost" or name.endswith(".localhost") or name in set(names):
            return True
        wanted = _ip(name)
    if wanted is None:
        return False
    local = _ip(local_host)
    if local is None:
        return False
    return wanted == local or (wanted.is_loopback and local.is_loopback)


class HostCheckedRequest(Request):
    """A request served only if its ``Host`` names the listener it came in on (see the module).

    Mixed in front of the site's own request class by :func:`check_host`.
    """

    def process(self) -> None:
        address = self.getHost()
        local_host = getattr(address, "host", None)
        if local_host is not None:  # an IP listener (a UNIX socket cannot be reached by a page)
            hosts = self.requestHeaders.getRawHeaders(b"host") or []
            names = getattr(self.channel.site, "api_hosts", ())
            if len(hosts) != 1 or not host_allowed(hosts[0], local_host, address.port, names):
                self._misdirected(hosts)
                return
        super().process()

    def _misdirected(self, hosts: list[bytes]) -> None:
        shown = b", ".join(hosts).decode("latin-1")[:200] or "(none)"
        log.info("refusing a local API request for Host {host!r}", host=shown)
        message = (
            f"Host {shown} is not this API's address: use localhost or the listening "
            "address, or name the host with arpc --api-host"
        )
        data = error_body(421, message) + b"\n"
        self.setResponseCode(421, b"Misdirected Request")
        self.setHeader(b"content-type", b"application/json; charset=utf-8")
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"content-length", str(len(data)).encode())
        self.setHeader(b"connection", b"close")
        self.channel.persistent = False  # nothing more from a client that does not know where it is
        if self.method != b"HEAD":
            self.write(data)
        self.finish()


def check_host(site: Site, names: Iterable[str] = ()) -> Site:
    """Make ``site`` (the ``--api-endpoint`` one) serve only requests whose ``Host`` addresses it."""
    base = site.requestFactory
    if not (isinstance(base, type) and issubclass(base, HostCheckedRequest)):
        base = type(f"HostChecked{base.__name__}", (HostCheckedRequest, base), {})
    site.requestFactory = base
    site.api_hosts = frozenset(normalize_host_name(n) for n in names)  # type: ignore[attr-defined]
    return site
