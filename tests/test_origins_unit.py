"""Own origins per client and routing by origin, without sockets (issue 10)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial import unittest

from arp import wire
from arp.control import Unavailable
from arp.server.origins import (
    DomainOrigins,
    PortOrigins,
    access_cookie_name,
    cookie_name,
    dns_label,
    endpoint_with_port,
    is_arp_cookie,
    split_host,
)
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from tests.test_public_unit import FrontFixture, register

C1 = cookie_name("client1")
C2 = cookie_name("client2")


def body_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


class HelperTests(unittest.TestCase):
    """Names, labels and endpoint strings of own origins."""

    def test_cookie_names_are_per_client(self):
        """Each client's cookie has its own name (cookies ignore ports), recognised as ARP's."""
        self.assertNotEqual(C1, C2)
        self.assertTrue(C1.startswith(b"arp_") and len(C1) == 24)
        self.assertTrue(is_arp_cookie(C1) and is_arp_cookie(b"arp_token"))
        self.assertFalse(is_arp_cookie(b"arp_session") or is_arp_cookie(b"session"))

    def test_access_cookie_name_is_arpcs(self):
        """The relay names arpc's access cookie exactly as arpc does."""
        from arp.client.command.access import cookie_name as arpc_cookie_name

        for client_id in ("client1", "My_Box", "a" * 64):
            self.assertEqual(access_cookie_name(client_id).decode(), arpc_cookie_name(client_id))

    def test_dns_labels(self):
        """Every id gets a hashed label that is a DNS label and never contains the id (host names
        travel to third parties); ids that differ only in case get different labels."""
        for odd in ("my-laptop", "MyLaptop", "my_laptop", "a.b", "-x", "x" * 64):
            label = dns_label(odd)
            self.assertRegex(label, r"^c-[0-9a-f]{40}$")
            self.assertNotIn(odd.lower(), label)
        self.assertNotEqual(dns_label("MyLaptop"), dns_label("mylaptop"))

    def test_endpoint_with_port(self):
        """The public endpoint string is copied with the client's port (TLS options kept)."""
        self.assertEqual(
            endpoint_with_port("tcp:0:interface=127.0.0.1", 20001), "tcp:20001:interface=127.0.0.1"
        )
        self.assertEqual(
            endpoint_with_port("ssl:443:privateKey=k.pem:certKey=c.pem", 20002),
            "ssl:20002:privateKey=k.pem:certKey=c.pem",
        )
        self.assertEqual(endpoint_with_port("tcp:port=17003:backlog=5", 7), "tcp:port=7:backlog=5")
        self.assertIsNone(endpoint_with_port("unix:/tmp/sock", 7))

    def test_split_host(self):
        """Host header values are split into name and port; malformed ones are refused."""
        self.assertEqual(split_host(b"relay:8080"), (b"relay", b":8080"))
        self.assertEqual(split_host(b"[::1]:80"), (b"[::1]", b":80"))
        self.assertEqual(split_host(b"relay"), (b"relay", b""))
        for bad in (b"", b"a b", b"relay:x", b"evil/x", b"[::1"):
            self.assertEqual(split_host(bad)[0], None, bad)


class PortOriginTests(FrontFixture, unittest.TestCase):
    """Each HTTP client's own port routes only to that client, and only with its id."""

    def setUp(self):
        super().setUp()
        self.other, _ = register(self.registry, "client2")
        self.port_origins()

    def test_each_client_has_its_own_port_and_url(self):
        """Two clients, two ports; the URL arpc prints names the client's port."""
        self.assertNotEqual(self.record.origin_port, self.other.origin_port)
        self.assertEqual(self.origins.url_for(self.record), f"http://{{host}}:{self.record.origin_port}")
        self.assertEqual(set(self.origins.used), {self.record.origin_port, self.other.origin_port})

    def test_own_port_requires_the_id(self):
        """Ports are guessable: without the id the request gets a JSON 401; another id gets 404;
        the right id (header) is forwarded, and never reaches the service."""
        public, transport = self.own()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        self.assertIn("serves one client", body_of(transport.value())["error"])
        self.assertIn(b"Referrer-Policy: same-origin\r\n", transport.value())
        public, transport = self.own()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client2\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "), transport.value())
        t = self.tunnel()
        public, transport = self.own()
        public.dataReceived(b"GET /x HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(t.transport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertNotIn(b"client1", t.transport.value())

    def test_first_load_trades_token_for_the_clients_cookie(self):
        """``?token=`` on a page load: a 302 to the clean URL (a JSON body saying where) with an
        HttpOnly cookie named for this client."""
        public, transport = self.own()
        public.dataReceived(
            b"GET /app?a=1&token=client1 HTTP/1.1\r\nHost: relay:20000\r\nAccept: text/html\r\n\r\n"
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 302 "), out)
        self.assertIn(b"\r\nLocation: /app?a=1\r\n", out)
        self.assertIn(b"\r\nSet-Cookie: " + C1 + b"=client1; Path=/; HttpOnly; SameSite=Lax\r\n", out)
        self.assertIn(b"Content-Type: application/json", out)
        self.assertEqual(body_of(out)["location"], "/app?a=1")

    def test_cookie_routes_same_origin_requests_and_page_loads(self):
        """The client's cookie routes its own pages' requests and top-level page loads."""
        for headers in (
            b"Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n",
            b"Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n",
            b"Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n",
            b"Origin: http://relay:20000\r\n",  # a browser without fetch metadata, same origin
            # without fetch metadata and Origin (plain HTTP on a host name), a GET says it is
            # same-origin with a Referer of this host, the console's header, or is a page load
            b"Referer: http://relay:20000/some/page?x=1\r\n",
            b"X-ARP-Console: 1\r\n",
            b"Accept: text/html,application/xhtml+xml\r\n",
        ):
            t = self.tunnel()
            public, transport = self.own()
            public.dataReceived(
                b"GET /api HTTP/1.1\r\nHost: relay:20000\r\nCookie: "
                + C1
                + b"=client1\r\n"
                + headers
                + b"\r\n"
            )
            self.assertTrue(t.transport.value().startswith(b"GET /api "), headers)
            t.transport.clear()
            t.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_cookie_does_not_route_other_origins_requests(self):
        """A page on another origin (another client's port is the same site) cannot use the cookie:
        credentialed fetch, form POST, WebSocket and frames get a JSON 403 and reach nothing."""
        t = self.tunnel()
        for headers in (
            b"POST /api/sessions HTTP/1.1\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: cors\r\n"
            b"Content-Length: 0\r\n",
            b"POST /api/sessions HTTP/1.1\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: navigate\r\n"
            b"Sec-Fetch-Dest: document\r\nContent-Length: 0\r\n",
            b"GET /stream HTTP/1.1\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: websocket\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
            b"GET / HTTP/1.1\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: navigate\r\n"
            b"Sec-Fetch-Dest: iframe\r\n",
            b"POST /api HTTP/1.1\r\nOrigin: http://relay:20001\r\nContent-Length: 0\r\n",  # no fetch metadata
            # no fetch metadata, no Origin (a no-cors GET, an image from another port's page)
            b"GET /api HTTP/1.1\r\nReferer: http://relay:20001/\r\n",
            b"GET /api HTTP/1.1\r\nAccept: image/avif,image/webp,*/*\r\n",
            b"GET /api HTTP/1.1\r\n",
        ):
            public, transport = self.own()
            public.dataReceived(headers + b"Host: relay:20000\r\nCookie: " + C1 + b"=client1\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "), (headers, transport.value()))
        self.assertEqual(t.transport.value(), b"")

    def test_other_clients_cookie_or_a_forced_one_opens_nothing(self):
        """Client2's cookie on client1's port, or client1's cookie name forced to another value,
        routes nowhere: the port decides the client, the cookie only proves its id."""
        t = self.tunnel()
        for cookie in (C2 + b"=client2", C1 + b"=client2", b"arp_token=client1"):
            public, transport = self.own()
            public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nCookie: " + cookie + b"\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), (cookie, transport.value()))
        self.assertEqual(t.transport.value(), b"")

    def test_forwarded_request_carries_no_arp_cookie(self):
        """Every ARP cookie, this client's, another's and the old one, is taken out; others stay."""
        t = self.tunnel()
        public, _ = self.own()
        public.dataReceived(
            b"GET / HTTP/1.1\r\nHost: relay\r\nSec-Fetch-Site: same-origin\r\nCookie: a=1; "
            + C1
            + b"=client1; arp_token=client2\r\nCookie: "
            + C2
            + b"=client2; b=2\r\n\r\n"
        )
        sent = t.transport.value()
        self.assertIn(b"\r\nCookie: a=1; b=2\r\n", sent)
        self.assertNotIn(b"arp_", sent)
        self.assertNotIn(b"client", sent)

    def test_service_cannot_set_arp_cookies(self):
        """A service's Set-Cookie for any ARP cookie is dropped; its own cookies pass."""
        t = self.tunnel()
        public, transport = self.own()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        t.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: " + C2 + b"=client1; Path=/\r\nset-cookie:  arp_token=x\r\n"
            b"Set-Cookie: session=ok; HttpOnly\r\nSet-Cookie: " + C1 + b"=evil\r\nContent-Length: 2\r\n\r\nok"
        )
        out = transport.value()
        self.assertEqual(
            out, b"HTTP/1.1 200 OK\r\nSet-Cookie: session=ok; HttpOnly\r\nContent-Length: 2\r\n\r\nok"
        )

    def test_only_the_routed_clients_access_cookie_reaches_it(self):
        """arpc's access cookies (per client, and cookies ignore ports) of other clients are taken
        out; the routed client's own passes, so its arpc can check it."""
        t = self.tunnel()
        public, _ = self.own()
        a1, a2 = access_cookie_name("client1"), access_cookie_name("client2")
        public.dataReceived(
            b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\nCookie: x=1; "
            + a2
            + b"=arpa_other_secret; "
            + a1
            + b"=arpa_own_secret\r\n\r\n"
        )
        sent = t.transport.value()
        self.assertNotIn(b"arpa_other_secret", sent)
        self.assertIn(b"\r\nCookie: x=1\r\n", sent)
        self.assertIn(b"\r\nCookie: " + a1 + b"=arpa_own_secret\r\n", sent)

    def test_service_cannot_set_another_clients_access_cookie(self):
        """A service may set its own arpc's access cookie, not another client's."""
        t = self.tunnel()
        public, transport = self.own()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        a1, a2 = access_cookie_name("client1"), access_cookie_name("client2")
        t.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: "
            + a2
            + b"=forced; Path=/\r\nSet-Cookie: "
            + a1
            + b"=mine; HttpOnly\r\nContent-Length: 0\r\n\r\n"
        )
        out = transport.value()
        self.assertNotIn(a2, out)
        self.assertIn(b"Set-Cookie: " + a1 + b"=mine; HttpOnly\r\n", out)

    def test_service_worker_scripts_on_the_own_port(self):
        """A client's own port is its own origin: its service worker script reaches it (the
        console's worker shows push notifications); what a worker on a reused port can do is in
        SECURITY.rst."""
        t = self.tunnel()
        public, transport = self.own()
        public.dataReceived(
            b"GET /sw.js HTTP/1.1\r\nHost: relay\r\nService-Worker: script\r\nSec-Fetch-Site: same-origin\r\n"
            b"Cookie: " + C1 + b"=client1\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        self.assertTrue(t.transport.value().startswith(b"GET /sw.js HTTP/1.1\r\n"))

    def test_service_worker_scripts_refused_on_the_shared_port(self):
        """The shared port is every client's origin: a worker registered there (with ?token= or
        X-ARP-Token) would see every client's pages in that browser: refused, nothing forwarded."""
        t = self.tunnel()
        for request in (
            b"GET /sw.js?token=client1 HTTP/1.1\r\nHost: relay\r\nService-Worker: script\r\n\r\n",
            b"GET /sw.js HTTP/1.1\r\nHost: relay\r\nService-Worker: script\r\nX-ARP-Token: client1\r\n\r\n",
        ):
            public, transport = self.public()
            public.dataReceived(request)
            out = transport.value()
            self.assertTrue(out.startswith(b"HTTP/1.1 403 "), out)
            self.assertIn("shared address", body_of(out)["error"])
        self.assertEqual(t.transport.value(), b"")

    def test_shared_port_sends_page_loads_to_the_own_port(self):
        """A browser page load with ?token= on the shared port is redirected to the client's port
        (with the token, which the own port trades for its cookie); no cookie is set here."""
        public, transport = self.public()
        public.dataReceived(
            b"GET /app?token=client1&a=1 HTTP/1.1\r\nHost: relay.example:17003\r\n"
            b"Sec-Fetch-Mode: navigate\r\n\r\n"
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 302 "), out)
        location = b"http://relay.example:%d/app?a=1&token=client1" % self.record.origin_port
        self.assertIn(b"\r\nLocation: " + location + b"\r\n", out)
        self.assertNotIn(b"Set-Cookie", out)
        self.assertEqual(body_of(out)["location"], location.decode())

    def test_shared_port_still_routes_api_clients(self):
        """API clients (no page load) keep ``?token=`` and X-ARP-Token routing on the shared port."""
        t = self.tunnel()
        public, _ = self.public()
        public.dataReceived(b"GET /api?token=client1 HTTP/1.1\r\nHost: relay\r\nAccept: */*\r\n\r\n")
        self.assertTrue(t.transport.value().startswith(b"GET /api HTTP/1.1\r\n"))

    def test_legacy_cookie_routes_nothing_on_the_shared_port(self):
        """The old ``arp_token`` cookie: an API call gets a JSON 401, a page load a redirect to the
        client's own port; both expire the cookie, nothing is forwarded."""
        t = self.tunnel()
        public, transport = self.public()
        public.dataReceived(
            b"POST /api HTTP/1.1\r\nHost: relay\r\nCookie: arp_token=client1\r\nContent-Length: 0\r\n\r\n"
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 401 "), out)
        self.assertIn(b"arp_token=; Path=/; Max-Age=0", out)
        public, transport = self.public()
        public.dataReceived(
            b"GET / HTTP/1.1\r\nHost: relay\r\nCookie: arp_token=client1\r\nAccept: text/html\r\n\r\n"
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 302 "), out)
        self.assertIn(b"Location: http://relay:%d/?token=client1\r\n" % self.record.origin_port, out)
        self.assertIn(b"arp_token=; Path=/; Max-Age=0", out)
        self.assertEqual(t.transport.value(), b"")

    def test_secure_cookie_for_https(self):
        """With an https public URL (also behind a TLS-terminating proxy) the cookie is Secure."""
        factory = PublicFactory(self.registry, PublicConfig(secure_cookies=True), self.clock)
        factory.router.origins = self.origins
        public = factory.buildProtocol(None)
        public.bound = self.record
        transport = StringTransport()
        public.makeConnection(transport)
        public.dataReceived(b"GET /?token=client1 HTTP/1.1\r\nHost: relay\r\nAccept: text/html\r\n\r\n")
        self.assertIn(b"; HttpOnly; SameSite=Lax; Secure\r\n", transport.value())

    def test_port_released_after_retention(self):
        """When the registration ends (retention over) the port closes and is free again."""
        port = self.record.origin_port
        listener = self.record.origin_listener
        self.registry.control_lost(self.record, self.control)
        self.assertIn(port, self.origins.used)  # kept while retained: requests get 503
        public, transport = self.own()
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.clock.advance(61)
        self.assertNotIn(port, self.origins.used)
        self.assertIsNone(listener.port)
        public.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertIn(b"no longer registered", transport.value())

    def test_exhaustion_is_a_clear_registration_error(self):
        """With every port of the range handed out, registering one more client fails clearly,
        as a refusal arpc retries (Unavailable: ports come free as registrations end), not one
        that makes it exit."""
        for i in range(8):
            register(self.registry, f"more{i}")
        e = self.assertRaises(Unavailable, register, self.registry, "one-too-many")
        self.assertIn("no free public port for this client in 20000-20009", str(e))
        self.assertNotIn("one-too-many", self.registry.clients)

    def test_tenant_quota_of_client_ports(self):
        """With a per-tenant quota (arps --auth-keys: half the range), one key holder cannot take
        the ports of the others: its next id is refused for now (Unavailable), another tenant's
        id still gets a port."""
        origins = self.port_origins()
        held = len(origins.used)  # the fixture's clients: tenant default's too
        origins.tenant_quota = held + 2
        self.registry.keys["other"] = wire.key_bytes("another-tenant-key-0123")
        for i in range(2):
            register(self.registry, f"mine{i}")
        e = self.assertRaises(Unavailable, register, self.registry, "mine-too-many")
        self.assertIn(f"already holds {held + 2} of the relay's client ports", str(e))
        theirs, _ = register(self.registry, "theirs", key="another-tenant-key-0123")
        self.assertEqual(theirs.tenant, "other")
        self.assertTrue(theirs.origin_port)

    def test_same_port_for_the_same_id(self):
        """A client's port follows from its id, so the printed URL survives a relay restart (a
        new registration); another id gets another port."""
        first = self.record.origin_port
        self.registry.disconnect("client1")
        self.assertNotIn(first, self.origins.used)
        again, _ = register(self.registry, "client1")
        self.assertEqual(again.origin_port, first)


class DomainOriginTests(unittest.TestCase):
    """``--domain``: each client at ``<label>.<domain>``, routed by host name."""

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry(RelayConfig(pool_size=1), "unit-key", self.clock)
        self.origins = DomainOrigins("relay.test", "https", lambda: ":8443")
        self.factory = PublicFactory(
            self.registry, PublicConfig(domain="relay.test"), self.clock, self.origins
        )
        self.record, _ = register(self.registry, "client1")
        self.odd, _ = register(self.registry, "My_Box")

    def public(self, request: bytes) -> bytes:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(request)
        return transport.value()

    def host(self, record) -> bytes:
        return record.label.encode() + b".relay.test"

    def test_urls(self):
        """arpc prints the client's host URL: a hashed label, never the id."""
        self.assertRegex(self.origins.url_for(self.record), r"^https://c-[0-9a-f]{40}\.relay\.test:8443$")
        self.assertNotIn("client1", self.origins.url_for(self.record))
        self.assertRegex(self.origins.url_for(self.odd), r"^https://c-[0-9a-f]{40}\.relay\.test:8443$")

    def test_host_alone_opens_nothing_the_id_once_does(self):
        """The host name says which client, but does not open it (host names travel to third
        parties): without the id, 401; with the id (query, header or cookie), forwarded; a label of
        nobody is a 404 counted as a guess."""
        from arp import wire
        from arp.server.tunnel import TunnelServerProtocol

        t = TunnelServerProtocol(self.registry, self.clock)
        t.makeConnection(StringTransport())
        t.dataReceived(wire.tunnel_header("client1", self.record.tunnel_secret))
        host = self.host(self.record).upper()
        out = self.public(b"GET /x HTTP/1.1\r\nHost: " + host + b":8443\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 401 "), out)
        self.assertEqual(t.transport.value(), b"")
        self.public(b"GET /x HTTP/1.1\r\nHost: " + host + b":8443\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(t.transport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        out = self.public(b"GET /x HTTP/1.1\r\nHost: nobody.relay.test\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "))

    def test_token_moves_into_a_host_only_cookie(self):
        """``?token=<id>`` on the client's host: a page load is redirected to the clean URL and the
        id kept in a cookie of that host alone (no Domain attribute: no other host gets it)."""
        out = self.public(
            b"GET /a?token=client1 HTTP/1.1\r\nHost: "
            + self.host(self.record)
            + b"\r\nAccept: text/html\r\n\r\n"
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 302 "))
        self.assertIn(b"\r\nLocation: /a\r\n", out)
        cookie = [line for line in out.split(b"\r\n") if line.startswith(b"Set-Cookie: ")][0]
        self.assertIn(b"=client1; Path=/; HttpOnly", cookie)
        self.assertNotIn(b"Domain", cookie)

    def test_shared_host_page_load_goes_to_the_client_host(self):
        """A page load with ?token= on the relay's own name goes to ``<label>.<domain>``."""
        out = self.public(
            b"GET /p?token=client1 HTTP/1.1\r\nHost: relay.test:8443\r\nSec-Fetch-Mode: navigate\r\n\r\n"
        )
        self.assertIn(b"\r\nLocation: https://" + self.host(self.record) + b":8443/p?token=client1\r\n", out)

    def test_service_worker_on_the_host_name_not_on_the_relays_name(self):
        """Under --domain a client's host name is its own origin: its worker script reaches it;
        on the relay's own name (shared by every client) it is refused, token or not."""
        from arp.server.tunnel import TunnelServerProtocol

        t = TunnelServerProtocol(self.registry, self.clock)
        t.makeConnection(StringTransport())
        t.dataReceived(wire.tunnel_header("client1", self.record.tunnel_secret))
        out = self.public(
            b"GET /api?token=client1 HTTP/1.1\r\nHost: relay.test:8443\r\nService-Worker: script\r\n\r\n"
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 403 "), out)
        self.assertEqual(t.transport.value(), b"")
        self.public(
            b"GET /sw.js HTTP/1.1\r\nHost: " + self.host(self.record) + b"\r\nService-Worker: script\r\n"
            b"Sec-Fetch-Site: same-origin\r\nCookie: " + C1 + b"=client1\r\n\r\n"
        )
        self.assertTrue(t.transport.value().startswith(b"GET /sw.js HTTP/1.1\r\n"), t.transport.value())

    def test_labels_released(self):
        """A removed client's label routes nothing any more."""
        host = self.host(self.record)
        self.registry.disconnect("client1")
        self.assertNotIn(self.record.label.encode(), self.origins.labels)
        out = self.public(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nX-ARP-Token: client1\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "))


class MemoryPortsTests(unittest.TestCase):
    """PortOrigins listens with the endpoint string it is given."""

    def test_listens_on_the_copied_endpoint(self):
        """The client's port listens on the interface of the public endpoint."""
        clock = Clock()
        registry = Registry(RelayConfig(pool_size=1), "unit-key", clock)
        reactor = MemoryReactor()
        front = PublicFactory(registry, PublicConfig(), clock)
        origins = PortOrigins(
            21000, 21001, lambda p: endpoint_with_port("tcp:0:interface=127.0.0.1", p), front, reactor, "http"
        )
        front.use_origins(origins)
        record, _ = register(registry, "client1")
        (port, _, _, interface) = reactor.tcpServers[0]
        self.assertIn(port, (21000, 21001))
        self.assertEqual((port, interface), (record.origin_port, "127.0.0.1"))


class OptionsTests(unittest.TestCase):
    """``arps --client-ports``: a default range, ``none``, and clear errors."""

    def parse(self, *args: str):
        from arp.server.tap import Options

        options = Options()
        options.parseOptions(["--auth-key", "k", *args])
        return options

    def test_default_and_none(self):
        """By default HTTP clients get ports 17100-17999; ``none`` turns own ports off."""
        self.assertEqual(self.parse()["client-ports"], (17100, 17999))
        self.assertIsNone(self.parse("--client-ports", "none")["client-ports"])
        self.assertEqual(self.parse("--client-ports", "30000-30009")["client-ports"], (30000, 30009))

    def test_clear_errors(self):
        """Overlapping with --tcp-ports, or a public endpoint with no port to copy, is a usage error."""
        from twisted.python.usage import UsageError

        e = self.assertRaises(UsageError, self.parse, "--tcp-ports", "17500-17600")
        self.assertIn("overlap", str(e))
        e = self.assertRaises(UsageError, self.parse, "--public-endpoint", "unix:/tmp/arps.sock")
        self.assertIn("--client-ports none", str(e))
        self.parse("--public-endpoint", "unix:/tmp/arps.sock", "--domain", "relay.test")  # fine with a domain


class DrainTests(FrontFixture, unittest.TestCase):
    """Shutting down: the clients' own ports stop listening with the public port."""

    def test_drain_stops_own_ports(self):
        """``drain()`` closes every own port's listener; releasing the client later is harmless."""
        self.port_origins()
        listener = self.record.origin_listener
        self.factory.drain()
        self.assertIsNone(listener.port)
        self.registry.disconnect("client1")
        self.assertEqual(self.origins.used, {})
