"""Own origins per client on real sockets: spawned arps, arpc in forward mode, raw HTTP (issue 10)."""

from __future__ import annotations

import json
import re
import socket
from hashlib import sha256

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from tests.helpers import (
    admin_json,
    free_port,
    listen_backend,
    raw_exchange,
    sleep,
    start_arpc,
    start_arps,
    status_of,
)


def cookie_of(token: str) -> str:
    return "arp_" + sha256(b"arp-cookie\0" + token.encode()).hexdigest()[:20]


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def request(path: str, host: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def body_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def free_range(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now (for a --client-ports range)."""
    for _ in range(50):
        first = free_port()
        if first + n > 65000:
            continue
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


class OwnPortTests(unittest.TestCase):
    """Without --domain each forward-mode client gets a public port of its own."""

    timeout = 90

    async def _two_clients(self, *arps_args: str):
        self.relay = await start_arps(self, *arps_args)
        self.a = await start_arpc(self, self.relay, local_port=listen_backend(self))
        self.b = await start_arpc(self, self.relay, local_port=listen_backend(self))

    async def test_each_client_prints_its_own_port_and_only_its_id_opens_it(self):
        """Two clients get two ports (printed by arpc); on A's port, B's id or no id reach nothing
        (clear JSON errors), A's id reaches A, and the backend never sees an ARP cookie."""
        await self._two_clients()
        pa, pb = port_of(self.a.url), port_of(self.b.url)
        self.assertNotEqual(pa, pb)
        self.assertNotIn(self.relay.ports["public"], (pa, pb))
        raw = await raw_exchange(pa, request("/echo/x", f"127.0.0.1:{pa}"))
        self.assertEqual(status_of(raw), 401)
        self.assertIn("serves one client", body_of(raw)["error"])
        raw = await raw_exchange(pa, request(f"/echo/x?token={self.b.token}", f"127.0.0.1:{pa}"))
        self.assertEqual(status_of(raw), 404)
        raw = await raw_exchange(
            pa, request("/echo/x", f"127.0.0.1:{pa}", f"Cookie: {cookie_of(self.b.token)}={self.b.token}")
        )
        self.assertEqual(status_of(raw), 401)
        cookies = (
            f"Cookie: x=1; {cookie_of(self.a.token)}={self.a.token}; {cookie_of(self.b.token)}={self.b.token}"
        )
        raw = await raw_exchange(
            pa, request("/echo/x", f"127.0.0.1:{pa}", cookies, "Sec-Fetch-Site: same-origin")
        )
        self.assertEqual(status_of(raw), 200, raw)
        self.assertEqual(body_of(raw)["headers"]["cookie"], ["x=1"])

    async def test_first_load_then_cookie(self):
        """The printed URL's first load trades the token for the client's cookie and a clean
        address; then the cookie alone opens the page and same-origin calls, not other origins' calls."""
        await self._two_clients()
        pa = port_of(self.a.url)
        host = f"127.0.0.1:{pa}"
        raw = await raw_exchange(
            pa, request(f"/echo/page?token={self.a.token}", host, "Sec-Fetch-Mode: navigate")
        )
        self.assertEqual(status_of(raw), 302)
        self.assertIn(b"\r\nLocation: /echo/page\r\n", raw)
        cookie = f"{cookie_of(self.a.token)}={self.a.token}"
        self.assertIn(f"Set-Cookie: {cookie}; Path=/; HttpOnly; SameSite=Lax".encode(), raw)
        raw = await raw_exchange(
            pa, request("/echo/page", host, f"Cookie: {cookie}", "Sec-Fetch-Mode: navigate")
        )
        self.assertEqual(status_of(raw), 200)
        raw = await raw_exchange(
            pa,
            request(
                "/echo/api",
                host,
                f"Cookie: {cookie}",
                f"Origin: http://127.0.0.1:{port_of(self.b.url)}",
                "Sec-Fetch-Site: same-site",
                "Sec-Fetch-Mode: cors",
                "Content-Length: 0",
                method="POST",
            ),
        )
        self.assertEqual(status_of(raw), 403)

    async def test_shared_port_redirects_page_loads_and_routes_api_calls(self):
        """The old URL shape on the shared port: a page load is redirected to the client's own
        port, an API call is still routed, the old cookie answers a clear JSON 401."""
        await self._two_clients()
        public = self.relay.ports["public"]
        raw = await raw_exchange(
            public, request(f"/echo/p?token={self.a.token}", f"127.0.0.1:{public}", "Accept: text/html")
        )
        self.assertEqual(status_of(raw), 302)
        self.assertIn(
            f"Location: http://127.0.0.1:{port_of(self.a.url)}/echo/p?token={self.a.token}".encode(), raw
        )
        raw = await raw_exchange(
            public, request("/echo/p", f"127.0.0.1:{public}", f"X-ARP-Token: {self.a.token}")
        )
        self.assertEqual(status_of(raw), 200)
        raw = await raw_exchange(public, request("/echo/p", "x", f"Cookie: arp_token={self.a.token}"))
        self.assertEqual(status_of(raw), 401)
        self.assertIn("no longer routes", body_of(raw)["error"])

    async def test_taken_port_skipped_exhaustion_refused_port_released(self):
        """A port of the range taken by another program is skipped; with none left the next client
        is refused with a clear message; after retention the port closes."""
        first = free_range(3)
        blocker = reactor.listenTCP(first, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        self.relay = await start_arps(self, "--client-ports", f"{first}-{first + 1}", "--retention", "1")
        a = await start_arpc(self, self.relay, local_port=listen_backend(self))
        self.assertEqual(port_of(a.url), first + 1)
        b = await start_arpc(self, self.relay, local_port=listen_backend(self), wait=False)
        await b.wait_for(rf"no free public port for this client in {first}-{first + 1}")
        await b.stop()
        await a.stop()
        for _ in range(100):  # the registration ends after --retention: the port closes
            clients = (await admin_json(self.relay, "/admin/api/clients"))["clients"]
            if a.token not in [c["clientId"] for c in clients]:
                break
            await sleep(0.1)
        probe = socket.socket()
        self.addCleanup(probe.close)
        self.assertNotEqual(probe.connect_ex(("127.0.0.1", first + 1)), 0, "the port stayed open")

    async def test_https_public_url_sets_secure_cookie(self):
        """Behind a TLS-terminating proxy (``--public-url https://...``) the URL is https and the
        cookie Secure."""
        self.relay = await start_arps(self, "--public-url", "https://relay.example")
        a = await start_arpc(self, self.relay, local_port=listen_backend(self))
        self.assertRegex(a.url, r"^https://relay\.example:\d+/\?token=")
        port = port_of(a.url)
        raw = await raw_exchange(port, request(f"/?token={a.token}", "relay.example", "Accept: text/html"))
        self.assertIn(b"; HttpOnly; SameSite=Lax; Secure\r\n", raw)


class DomainTests(unittest.TestCase):
    """``--domain``: each client at ``<id>.<domain>``, and arpc prints that URL."""

    timeout = 60

    async def test_domain_url_printed_and_routed_by_host(self):
        """arpc prints ``http://<label>.<domain>:<port>/?token=<id>`` with a label that is a hash
        of the id, never the id (host names travel to third parties in Origin, Referer, DNS and
        SNI); the host alone opens nothing, the id once does; a page load on the relay's own name
        goes to the client's host with the id."""
        from arp.server.origins import dns_label

        relay = await start_arps(self, "--domain", "relay.test")
        a = await start_arpc(self, relay, "--client-id", "my-box", local_port=listen_backend(self))
        public = relay.ports["public"]
        host = f"{dns_label('my-box')}.relay.test:{public}"
        self.assertEqual(a.url, f"http://{host}/?token=my-box")
        self.assertNotIn("my-box", a.url.split("?")[0])
        raw = await raw_exchange(public, request("/echo/h", host))
        self.assertEqual(status_of(raw), 401)
        raw = await raw_exchange(public, request("/echo/h", host, "X-ARP-Token: my-box"))
        self.assertEqual(status_of(raw), 200)
        raw = await raw_exchange(public, request("/echo/h?token=my-box", host, "Accept: text/html"))
        self.assertEqual(status_of(raw), 302)
        cookie = re.search(rb"Set-Cookie: (arp_[0-9a-f]+=my-box);", raw).group(1).decode()
        raw = await raw_exchange(public, request("/echo/h", host, f"Cookie: {cookie}\r\nAccept: text/html"))
        self.assertEqual(status_of(raw), 200)
        raw = await raw_exchange(
            public, request("/echo/h?token=my-box", f"relay.test:{public}", "Accept: text/html")
        )
        self.assertIn(f"Location: http://{host}/echo/h?token=my-box\r\n".encode(), raw)
        nobody = request("/echo/h", f"nobody.relay.test:{public}", "X-ARP-Token: my-box")
        raw = await raw_exchange(public, nobody)
        self.assertEqual(status_of(raw), 404)
