"""End-to-end: real arps and arpc processes on loopback, real HTTP clients and backends."""

from __future__ import annotations

import json
import re
from hashlib import sha256

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.helpers import (
    HTTPClient,
    listen_backend,
    pattern_bytes,
    raw_exchange,
    start_arpc,
    start_arps,
    status_of,
    wait_pool_warm,
)


class ForwardModeTests(unittest.TestCase):
    """A browser-like client reaches a local web app through arps + arpc."""

    timeout = 60
    tls = False

    async def _setup(self, *arps_args: str):
        self.backend_port = listen_backend(self)
        self.relay = await start_arps(self, *arps_args, tls=self.tls)
        self.arpc = await start_arpc(self, self.relay, local_port=self.backend_port)
        self.client = HTTPClient(self, ca=self.relay.tls["ca"] if self.tls else None)
        return self.arpc.token

    async def test_get_strips_token_and_adds_forwarded_headers(self):
        """The token is removed from the query and X-Forwarded-* headers are added."""
        token = await self._setup()
        url = f"{self.relay.public}/echo/path?a=1&token={token}&b=2"
        response, body = await self.client.request("GET", url)
        self.assertEqual(response.code, 200)
        info = json.loads(body)
        self.assertEqual(info["uri"], "/echo/path?a=1&b=2")
        self.assertEqual(info["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(info["headers"]["x-forwarded-proto"], [self.relay.scheme])
        self.assertEqual(info["headers"]["x-forwarded-host"], [f"127.0.0.1:{self.relay.ports['public']}"])

    async def test_token_from_header_not_from_legacy_cookie(self):
        """X-ARP-Token routes on the shared address and never reaches the backend; the old
        ``arp_token`` cookie routes nothing there any more: a JSON 401 that expires it."""
        token = await self._setup()
        response, body = await self.client.request(
            "GET", f"{self.relay.public}/echo/h", {"X-ARP-Token": token}
        )
        info = json.loads(body)
        self.assertEqual(response.code, 200)
        self.assertNotIn("x-arp-token", info["headers"])
        response, body = await self.client.request(
            "GET", f"{self.relay.public}/echo/c", {"Cookie": f"a=1; arp_token={token}; b=2"}
        )
        self.assertEqual(response.code, 401)
        self.assertIn("no longer routes", json.loads(body)["error"])
        self.assertIn(b"arp_token=; Path=/; Max-Age=0", response.headers.getRawHeaders(b"set-cookie")[0])

    async def test_browser_navigation_is_redirected_to_own_origin(self):
        """A page load with ?token= on the shared address goes to the client's own port, which
        trades the token for the client's own cookie and drops it from the address bar."""
        token = await self._setup()
        raw = await raw_exchange(
            self.relay.ports["public"],
            f"GET /echo/page?token={token}&x=1 HTTP/1.1\r\nHost: relay\r\nAccept: text/html\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        self.assertEqual(status_of(raw), 302)
        port = int(self.arpc.url.split(":")[2].split("/")[0])
        self.assertIn(f"Location: http://relay:{port}/echo/page?x=1&token={token}\r\n".encode(), raw)
        self.assertIn(b"Referrer-Policy: same-origin\r\n", raw)
        raw = await raw_exchange(
            port,
            f"GET /echo/page?x=1&token={token} HTTP/1.1\r\nHost: relay:{port}\r\nAccept: text/html\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        self.assertEqual(status_of(raw), 302)
        self.assertIn(b"Location: /echo/page?x=1\r\n", raw)
        name = "arp_" + sha256(b"arp-cookie\0" + token.encode()).hexdigest()[:20]
        self.assertIn(f"Set-Cookie: {name}={token}; Path=/; HttpOnly; SameSite=Lax\r\n".encode(), raw)
        self.assertIn(b"Content-Type: application/json", raw)
        self.assertEqual(json.loads(raw.partition(b"\r\n\r\n")[2])["location"], "/echo/page?x=1")

    async def test_pipelined_requests_then_half_close(self):
        """Three pipelined GETs followed by EOF (``printf ... | nc -N``): three answers in order, then
        the relay closes."""
        token = await self._setup()
        request = "GET /echo/{} HTTP/1.1\r\nHost: relay\r\nX-ARP-Token: " + token + "\r\n\r\n"
        payload = b"".join(request.format(i).encode() for i in range(3))
        raw = await raw_exchange(self.relay.ports["public"], payload, half_close=True)
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), 3, raw)
        uris = re.findall(rb'"uri": "(/echo/\d)"', raw)
        self.assertEqual(uris, [b"/echo/0", b"/echo/1", b"/echo/2"], raw)

    async def test_large_upload_and_download(self):
        """Several MB go up and come down intact."""
        token = await self._setup()
        payload = pattern_bytes(5 * 1024 * 1024 + 7)
        response, body = await self.client.request(
            "POST", f"{self.relay.public}/echo/up?token={token}", body=payload
        )
        info = json.loads(body)
        self.assertEqual(info["length"], len(payload))
        self.assertEqual(info["sha256"], sha256(payload).hexdigest())
        response, body = await self.client.request(
            "GET", f"{self.relay.public}/big/{8 * 1024 * 1024}?token={token}"
        )
        self.assertEqual(len(body), 8 * 1024 * 1024)
        self.assertEqual(body, pattern_bytes(8 * 1024 * 1024))

    async def test_many_concurrent_requests(self):
        """200 requests, 50 at a time, on keep-alive connections, all answered correctly."""
        token = await self._setup()
        sem = defer.DeferredSemaphore(50)

        async def one(i):
            response, body = await self.client.request("GET", f"{self.relay.public}/echo/{i}?token={token}")
            return response.code, json.loads(body)["uri"]

        results = await defer.gatherResults(
            [sem.run(lambda i=i: defer.Deferred.fromCoroutine(one(i))) for i in range(200)]
        )
        self.assertEqual([r[0] for r in results], [200] * 200)
        self.assertEqual([r[1] for r in results], [f"/echo/{i}" for i in range(200)])

    async def test_new_connection_per_request(self):
        """Clients that close after every request are served and reuse tunnels."""
        token = await self._setup()
        await wait_pool_warm(self.relay, token)
        client = HTTPClient(self, persistent=False)
        for i in range(30):
            response, body = await client.request(
                "GET", f"{self.relay.public}/echo/{i}?token={token}", {"Connection": "close"}
            )
            self.assertEqual(response.code, 200)
        # tunnels go back to the pool after each exchange: 30 requests, no new tunnels
        response, body = await self.client.request("GET", f"{self.relay.admin}/admin/api/clients/{token}")
        pool = json.loads(body)["pool"]
        self.assertEqual(pool["hits"], 30)
        self.assertEqual(pool["misses"], 0)
        # 5 for the pool, plus the one replacement asked for at the first hit
        self.assertLessEqual(pool["opened"], 6)

    async def test_streaming_response_arrives_incrementally(self):
        """Chunked/SSE responses are passed on as produced, not buffered to the end."""
        token = await self._setup()
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        arrivals = []

        class Reader(Protocol):
            def dataReceived(self, data):
                arrivals.append((reactor.seconds(), data))

            def connectionLost(self, reason):
                done.callback(None)

        done = defer.Deferred()
        proto = Reader()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.ports["public"]), proto)
        proto.transport.write(
            f"GET /stream?token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        await done
        body = b"".join(d for _, d in arrivals)
        self.assertIn(b"Transfer-Encoding: chunked", body)
        self.assertIn(b"data: tick 5", body)
        first_tick = next(t for t, d in arrivals if b"tick 1" in d)
        last_tick = next(t for t, d in arrivals if b"tick 5" in d)
        self.assertGreater(last_tick - first_tick, 0.1)

    async def test_unknown_and_missing_token(self):
        """Unknown tokens get 404 JSON, a missing token 401 JSON."""
        await self._setup()
        response, body = await self.client.request("GET", f"{self.relay.public}/x?token=nobody")
        self.assertEqual(response.code, 404)
        self.assertIn("unknown token", json.loads(body)["error"])
        response, body = await self.client.request("GET", f"{self.relay.public}/x")
        self.assertEqual(response.code, 401)

    async def test_malformed_and_oversized_heads(self):
        """Garbage gets 400, an oversized head 431, both as JSON."""
        await self._setup()
        port = self.relay.ports["public"]
        raw = await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
        self.assertEqual(status_of(raw), 400)
        self.assertIn(b'"error"', raw)
        raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        self.assertEqual(status_of(raw), 431)
        raw = await raw_exchange(
            port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(status_of(raw), 400)

    async def test_backend_down_gives_502(self):
        """When nothing listens on the local port, the public client gets a JSON 502."""
        from tests.helpers import free_port

        self.relay = await start_arps(self)
        self.arpc = await start_arpc(self, self.relay, local_port=free_port())
        client = HTTPClient(self)
        response, body = await client.request("GET", f"{self.relay.public}/?token={self.arpc.token}")
        self.assertEqual(response.code, 502)
        self.assertIn("unreachable", json.loads(body)["error"])


class ForwardModeOverTLSTests(unittest.TestCase):
    """Forward mode with TLS on every hop (control, proxy and public ports): the service behind
    a TLS tunnel sees plain HTTP with ``X-Forwarded-Proto: https``, bodies cross intact, and
    concurrent requests all find their way."""

    timeout = 60
    tls = True
    _setup = ForwardModeTests._setup
    test_forwarded_headers = ForwardModeTests.test_get_strips_token_and_adds_forwarded_headers
    test_large_upload_and_download = ForwardModeTests.test_large_upload_and_download
    test_many_concurrent_requests = ForwardModeTests.test_many_concurrent_requests
