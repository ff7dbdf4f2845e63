"""A page on an origin that ``arpc --cors-origin`` lists (or any page, with ``*``) rides the
browser's access cookie.

CORS lets a listed origin *read* answers to requests it makes with a Bearer token (the hosted
console's way).  But a "simple" request -- ``fetch(url, {method: "POST", mode: "no-cors",
credentials: "include", body: "{...}"})`` or a form with ``enctype=text/plain`` -- needs no
preflight, and the browser attaches every cookie of the target (``SameSite=Strict`` does not
help across ports of one host, or from a listed origin on the same site).  arpc's Origin check
let it act because the origin was listed: with ``--cors-origin '*'`` any web page that knew the
address made tokens, started agents and answered approvals with the owner's cookie.

Now the cookie is a credential only for requests of the console's own origin (the browser's
``Sec-Fetch-Site``, else ``Origin``); other origins must present a Bearer token.  The headers
below are the ones Chromium sends for such a fetch.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from arp.client.command.access import AccessStore, cookie_name
from arp.client.command.history import ClaudeHistory, CodexHistory, GeminiHistory
from arp.client.command.sessions import SessionManager
from arp.client.command.store import SessionStore
from arp.client.command.web import Guard, build_root, make_site
from tests import browser
from tests.command_helpers import Workspace
from tests.helpers import HTTPClient

CLIENT = "client1"
BODY = {"name": "made-by-a-foreign-page", "scopes": ["admin"]}


class Site:
    """arpc's command-mode API on a loopback port, allowing ``cors`` origins."""

    def __init__(self, test: unittest.TestCase, cors: list[str]) -> None:
        ws = Workspace(test)
        data = Path(ws.data)
        data.mkdir(parents=True, exist_ok=True)
        clock = Clock()
        clock.advance(1_700_000_000.0)
        self.store = AccessStore(data, clock)
        manager = SessionManager(
            store=SessionStore(data / "sessions"), reactor=reactor, binaries={}, project_roots=[ws.root]
        )
        root = build_root(
            manager,
            ClaudeHistory([]),
            CodexHistory(ws.codex),
            GeminiHistory(ws.gemini),
            cors,
            Guard(self.store, CLIENT),
        )
        port = reactor.listenTCP(0, make_site(root), interface="127.0.0.1")
        test.addCleanup(port.stopListening)
        self.host = f"127.0.0.1:{port.getHost().port}"
        self.http = HTTPClient(test)
        self.cookie = f"{cookie_name(CLIENT)}={self.store.owner_token}"

    async def post_tokens(self, headers: dict[str, str]) -> tuple[int, dict]:
        """``POST /api/tokens`` with ``headers`` (a body any page can send without a preflight)."""
        h = {"Host": self.host, "Content-Type": "text/plain;charset=UTF-8", **headers}
        response, payload = await self.http.request(
            "POST", f"http://{self.host}/api/tokens", h, json.dumps(BODY).encode()
        )
        return response.code, json.loads(payload)

    def made(self) -> int:
        """How many tokens the foreign page managed to create."""
        return sum(1 for g in self.store.grants.values() if g.name == BODY["name"])


class _Page(Resource):
    """A page on another port: another client's app, as far as the browser can tell."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html")
        return b"<!doctype html><title>another client's app</title>"


def chromium_no_cors(origin: str, site: str) -> dict[str, str]:
    """What Chromium sends with a credentialed ``no-cors`` POST from ``origin``."""
    return {"Origin": origin, "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty"}


class CookieRidingTests(unittest.TestCase):
    """Only the console's own origin may use the access cookie."""

    timeout = 30

    async def test_any_origin_with_star_cannot_ride_the_cookie(self):
        """``--cors-origin '*'``: a page on another site, and one on another port of the relay's
        host (another client), POST with the owner's cookie: 401, no token is made."""
        site = Site(self, ["*"])
        for origin, where in (("https://evil.example", "cross-site"), ("http://127.0.0.1:1", "same-site")):
            code, answer = await site.post_tokens({**chromium_no_cors(origin, where), "Cookie": site.cookie})
            self.assertEqual((code, answer.get("reason")), (401, "missing"), (origin, answer))
        self.assertEqual(site.made(), 0)

    async def test_listed_origin_needs_a_bearer_token(self):
        """A listed origin, with the cookie alone: 401 (also for a browser without fetch
        metadata, which sends only ``Origin``); with a Bearer token it acts, as the hosted
        console does."""
        site = Site(self, ["https://console.example"])
        origin = "https://console.example"
        code, _ = await site.post_tokens({**chromium_no_cors(origin, "cross-site"), "Cookie": site.cookie})
        self.assertEqual(code, 401)
        code, _ = await site.post_tokens({"Origin": origin, "Cookie": site.cookie})
        self.assertEqual(code, 401)
        self.assertEqual(site.made(), 0)
        code, _ = await site.post_tokens(
            {
                "Origin": origin,
                "Authorization": f"Bearer {site.store.owner_token}",
                "Content-Type": "application/json",
            }
        )
        self.assertEqual(code, 201)
        self.assertEqual(site.made(), 1)

    async def test_own_origin_and_non_browsers_keep_the_cookie(self):
        """The console's own page (same-origin, or ``Origin`` equal to the host for browsers
        without fetch metadata) and a client that sends no ``Origin`` (curl) still use the cookie."""
        site = Site(self, ["*"])
        own = f"http://{site.host}"
        for headers in (
            {"Origin": own, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
            {"Origin": own},
            {},
        ):
            code, answer = await site.post_tokens({**headers, "Cookie": site.cookie})
            self.assertEqual(code, 201, (headers, answer))
        self.assertEqual(site.made(), 3)


class CookieRidingBrowserTests(browser.BrowserTestCase):
    """The same attack from a page in a real Chromium."""

    timeout = 120

    async def test_page_on_another_port_cannot_act_with_the_cookie(self):
        """``--cors-origin '*'``: the owner opened the console's link (the access cookie is set);
        a page on another port of the same host (same site: the cookie, ``SameSite=Strict``, is
        sent) POSTs ``no-cors`` with credentials.  No token is made; the console's own page,
        with the same cookie, still acts."""
        site = Site(self, ["*"])
        page_port = reactor.listenTCP(0, make_site(_Page()), interface="127.0.0.1")
        self.addCleanup(page_port.stopListening)
        hostile = f"http://127.0.0.1:{page_port.getHost().port}/"
        target = f"http://{site.host}/api/tokens"
        body = json.dumps(BODY)

        def attack(page) -> tuple[list[str], int]:
            page.goto(f"http://{site.host}/?access={site.store.owner_token}")
            cookies = [c["name"] for c in page.context.cookies()]
            page.goto(hostile)
            page.evaluate(
                """([url, body]) => fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
                                                body}).then(() => true, () => false)""",
                [target, body],
            )
            page.goto(f"http://{site.host}/api/nothing")  # the console's own origin
            status = page.evaluate(
                """([url, body]) => fetch(url, {method: "POST", body,
                     headers: {"Content-Type": "application/json"}}).then(r => r.status)""",
                [target, body],
            )
            return cookies, status

        cookies, own_status = await browser.in_browser(attack)
        self.assertIn(cookie_name(CLIENT), cookies)  # the owner's browser holds the cookie
        self.assertEqual(own_status, 201)
        self.assertEqual(site.made(), 1)  # only the console's own request


class CookieTossingTests(unittest.TestCase):
    """Under ``--domain`` a sibling host (``a.D``) can set a cookie for the whole domain (``D``):
    with the name of B's access cookie, the browser sends B two of them (issue #21.7)."""

    def setUp(self) -> None:
        ws = Workspace(self)
        data = Path(ws.data)
        data.mkdir(parents=True, exist_ok=True)
        clock = Clock()
        clock.advance(1_700_000_000.0)
        self.store = AccessStore(data, clock)
        self.guard = Guard(self.store, CLIENT)
        self.owner = self.store.owner_token

    def request(self, cookie: str, https: bool = False):
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b"api", b"me"])
        request.requestHeaders.addRawHeader(b"cookie", cookie.encode())
        request.requestHeaders.addRawHeader(b"sec-fetch-site", b"same-origin")
        request.isSecure = lambda: False  # what a tunnel-carried channel says; the relay tells https
        if https:
            request.requestHeaders.addRawHeader(b"x-forwarded-proto", b"https")
        return request

    def test_tossed_cookie_first_is_skipped_and_not_a_guess(self):
        """A tossed value ahead of the owner's own: the owner's counts, and the tossed one is not
        counted as a guess from the victim's address (past the limit the victim would get 429)."""
        name = cookie_name(CLIENT)
        for _ in range(100):
            request = self.request(f"{name}=arpa_tossed_x; {name}={self.owner}")
            self.assertEqual(self.guard.credential(request), self.owner)
            self.assertTrue(self.store.authorize(self.guard.credential(request), None, "127.0.0.1").owner)
        self.assertFalse(self.store.limiter.blocked("127.0.0.1"))

    def test_https_cookie_is_a_host_cookie(self):
        """Over https the access cookie is ``__Host-``: only its own host can set one (no Domain),
        so a sibling cannot toss it; it is read back first."""
        request = self.request("", https=True)
        grant = self.store.authorize(self.owner, None, "127.0.0.1")
        self.guard.set_cookie(request, grant, self.owner)
        [cookie] = request.responseHeaders.getRawHeaders(b"set-cookie")
        name = cookie_name(CLIENT)
        self.assertTrue(cookie.startswith(f"__Host-{name}={self.owner}; Path=/;".encode()), cookie)
        self.assertIn(b"; Secure", cookie)
        self.assertNotIn(b"Domain", cookie)
        tossed = self.request(f"{name}=arpa_tossed_x; __Host-{name}={self.owner}")
        self.assertEqual(self.guard.credential(tossed), self.owner)
