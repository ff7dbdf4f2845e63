"""Access tokens in command mode: the store without sockets, then every API route over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from arp.client.command import web
from arp.client.command.access import (
    CLOSE_REVOKED,
    FLUSH_DELAY,
    GUESS_WINDOW,
    MAX_ENDED,
    MAX_EXPIRES_IN,
    OWNER_FILE,
    TOKEN_RE,
    TOKENS_FILE,
    AccessError,
    AccessStore,
    BadRequest,
    GuessLimiter,
    cookie_name,
    new_token,
    qr_svg_data_url,
    qr_terminal,
    with_access,
)
from arp.client.command.history import ClaudeHistory, CodexHistory, GeminiHistory
from arp.client.command.push import PushService
from arp.client.command.sessions import SessionManager
from arp.client.command.store import SessionStore
from arp.client.command.tunnel import SiteTunnel
from arp.client.command.web import Guard, build_root, make_site
from tests.command_helpers import StreamClient, Workspace, fake
from tests.helpers import HTTPClient, raw_exchange, status_of, wait_until

T0 = 1_700_000_000.0
SID = "e" * 32
UUID = "3f6c2b1e-8d4a-4c1b-9e2f-5a7d0c9b1e42"


def _store(test: unittest.TestCase, clock: Clock | None = None, **kw) -> AccessStore:
    data = Path(test.mktemp())
    data.mkdir(parents=True)
    if clock is None:
        clock = Clock()
        clock.advance(T0)
    return AccessStore(data, clock, **kw)


class Watcher:
    """Records what the store tells a stream."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def access_ended(self, reason: str) -> None:
        self.told.append(reason)


class StoreTests(unittest.TestCase):
    """The token store as a plain object on a fake clock."""

    def test_owner_token_is_private_hashed_and_kept(self):
        """The owner token is created once, in a 0600 file; only its hash is in the 0600 records;
        the next start reads the same one (so the Public URL stays the same)."""
        store = _store(self)
        data = store.path.parent
        token = store.owner_token
        self.assertRegex(token, TOKEN_RE)
        for name in (OWNER_FILE, TOKENS_FILE):
            self.assertEqual(stat.S_IMODE(os.stat(data / name).st_mode), 0o600, name)
        records = (data / TOKENS_FILE).read_text()
        self.assertNotIn(token.rsplit("_", 1)[1], records)  # the secret is not stored
        self.assertNotIn(token, records)
        grant = store.check(token, "1.2.3.4")
        self.assertTrue(grant.owner)
        self.assertEqual(grant.scopes, ("admin",))
        again = AccessStore(data, store.clock)
        self.assertEqual(again.owner_token, token)
        self.assertEqual(len(again.grants), 1)

    def test_rotation_replaces_and_revokes_the_old_owner_token(self):
        """``--rotate-owner-token``: a new token in the file; the old one answers 401 revoked."""
        store = _store(self)
        old = store.owner_token
        rotated = AccessStore(store.path.parent, store.clock, rotate_owner=True)
        self.assertNotEqual(rotated.owner_token, old)
        self.assertEqual((store.path.parent / OWNER_FILE).read_text().strip(), rotated.owner_token)
        with self.assertRaises(AccessError) as e:
            rotated.check(old, "a")
        self.assertEqual((e.exception.status, e.exception.reason), (401, "revoked"))
        self.assertTrue(rotated.check(rotated.owner_token, "a").owner)
        # and the next plain start keeps the rotated one
        self.assertEqual(AccessStore(store.path.parent, store.clock).owner_token, rotated.owner_token)

    def test_rotation_says_what_stays_and_revoke_all_ends_everything(self):
        """A leaked owner URL: tokens minted with it survive --rotate-owner-token (and arpc says
        which); --revoke-all-tokens revokes them all, the owner's with them."""
        from twisted.logger import globalLogPublisher

        store = _store(self)
        _, minted = store.create({"name": "minted with a leaked owner token", "scopes": ["admin"]})
        lines: list[str] = []
        from twisted.logger import formatEvent

        def observe(event: dict) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        rotated = AccessStore(store.path.parent, store.clock, rotate_owner=True)
        self.assertFalse(rotated.check(minted, "a").owner)  # still valid after a rotation
        self.assertTrue(any("1 other access tokens stay valid" in line for line in lines), lines)
        cleared = AccessStore(store.path.parent, store.clock, revoke_all=True)
        for old in (minted, rotated.owner_token):
            with self.assertRaises(AccessError) as e:
                cleared.check(old, "a")
            self.assertEqual(e.exception.reason, "revoked")
        self.assertTrue(cleared.check(cleared.owner_token, "a").owner)
        self.assertTrue(any("revoked every access token (2:" in line for line in lines), lines)

    def test_revoked_owner_token_is_replaced_at_next_start(self):
        """An owner token revoked through the API is replaced when arpc starts again."""
        store = _store(self)
        owner = store.check(store.owner_token, "a")
        store.revoke(owner.id)
        again = AccessStore(store.path.parent, store.clock)
        self.assertNotEqual(again.owner_token, store.owner_token)
        self.assertTrue(again.check(again.owner_token, "a").owner)

    def test_lost_records_are_rebuilt_from_the_owner_file(self):
        """Deleting the records file keeps the owner's link working (the file is the owner's key)."""
        store = _store(self)
        store.path.unlink()
        again = AccessStore(store.path.parent, store.clock)
        self.assertEqual(again.owner_token, store.owner_token)
        self.assertTrue(again.check(store.owner_token, "a").owner)

    def test_damaged_records_file_is_a_clear_error(self):
        """A records file that is not JSON stops arpc with its name rather than dropping every token."""
        store = _store(self)
        store.path.write_text("{nope")
        with self.assertRaises(RuntimeError) as e:
            AccessStore(store.path.parent, store.clock)
        self.assertIn(TOKENS_FILE, str(e.exception))

    def test_each_refusal_names_why(self):
        """Missing, malformed, unknown (also a known id with a wrong secret), expired, revoked."""
        store = _store(self)
        grant, token = store.create({"name": "phone", "scopes": ["view"], "expiresIn": 60})
        gone, gone_token = store.create({"name": "old", "scopes": ["view"]})
        store.revoke(gone.id)
        wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        cases = [
            (None, "missing"),
            ("", "missing"),
            ("arpa_nope", "malformed"),
            ("Bearer " + token, "malformed"),
            (new_token()[1], "unknown"),
            (wrong_secret, "unknown"),
            (gone_token, "revoked"),
        ]
        for presented, reason in cases:
            with self.assertRaises(AccessError, msg=presented) as e:
                store.check(presented, "a")
            self.assertEqual((e.exception.status, e.exception.reason), (401, reason), presented)
        self.assertEqual(store.check(token, "a").id, grant.id)
        store.clock.advance(60)
        with self.assertRaises(AccessError) as e:
            store.check(token, "a")
        self.assertEqual(e.exception.reason, "expired")

    def test_scopes_and_admin_implies_all(self):
        """A token acts only within its scopes; ``admin`` may do everything; None asks for any token."""
        store = _store(self)
        _, viewer = store.create({"name": "v", "scopes": ["view"]})
        _, admin = store.create({"name": "a", "scopes": ["admin"]})
        self.assertEqual(store.authorize(viewer, "view", "x").name, "v")
        self.assertEqual(store.authorize(viewer, None, "x").name, "v")
        with self.assertRaises(AccessError) as e:
            store.authorize(viewer, "prompt", "x")
        self.assertEqual((e.exception.status, e.exception.reason), (403, "scope"))
        self.assertIn("'prompt'", e.exception.message)
        for scope in ("view", "prompt", "approve", "admin"):
            store.authorize(admin, scope, "x")

    def test_creation_rejects_bad_input(self):
        """Unknown scopes, absurd expiries, bad names and unknown fields are 400s; nothing is stored."""
        store = _store(self)
        bad = [
            [],
            "x",
            {"scopes": ["view"]},
            {"name": "", "scopes": ["view"]},
            {"name": "x" * 65, "scopes": ["view"]},
            {"name": "a\nb", "scopes": ["view"]},
            {"name": "p", "scopes": []},
            {"name": "p", "scopes": "view"},
            {"name": "p", "scopes": ["root"]},
            {"name": "p", "scopes": ["view", 1]},
            {"name": "p", "scopes": ["view"], "expiresIn": 0},
            {"name": "p", "scopes": ["view"], "expiresIn": -5},
            {"name": "p", "scopes": ["view"], "expiresIn": 59},
            {"name": "p", "scopes": ["view"], "expiresIn": MAX_EXPIRES_IN + 1},
            {"name": "p", "scopes": ["view"], "expiresIn": 1e308},
            {"name": "p", "scopes": ["view"], "expiresIn": True},
            {"name": "p", "scopes": ["view"], "expiresIn": "3600"},
            {"name": "p", "scopes": ["view"], "admin": True},
        ]
        for body in bad:
            with self.assertRaises(BadRequest, msg=repr(body)) as e:
                store.create(body)
            self.assertEqual(e.exception.status, 400, body)
        self.assertEqual(len(store.grants), 1)  # the owner's only
        grant, token = store.create({"name": " Phone ", "scopes": ["prompt", "view"], "expiresIn": 3600})
        self.assertEqual((grant.name, grant.scopes, grant.expires), ("Phone", ("view", "prompt"), T0 + 3600))

    def test_create_and_revoke_loops_keep_the_file_bounded(self):
        """An admin creating and revoking tokens in a loop cannot grow the records without bound:
        only the newest MAX_ENDED ended tokens are kept (and still say why they fail)."""
        from arp.client.command import access

        self.assertLessEqual(MAX_ENDED, 10 * 1000)
        self.patch(access, "MAX_ENDED", 20)  # the same rule, with a small number
        store = _store(self)
        tokens = []
        for i in range(20 + 50):
            grant, token = store.create({"name": f"t{i}", "scopes": ["view"]})
            store.clock.advance(1)
            store.revoke(grant.id)
            tokens.append(token)
        store.create({"name": "prune", "scopes": ["view"]})
        ended = [g for g in store.grants.values() if g.revoked is not None]
        self.assertEqual(len(ended), 20)
        with self.assertRaises(AccessError) as e:
            store.check(tokens[-1], "1.2.3.4")
        self.assertEqual(e.exception.reason, "revoked")
        with self.assertRaises(AccessError) as e:
            store.check(tokens[0], "1.2.3.5")
        self.assertEqual(e.exception.reason, "unknown")
        self.assertTrue(store.check(store.owner_token, "1.2.3.4").owner)

    def test_revoking_an_unknown_id_is_404(self):
        """Revoking an id that was never issued (or is not an id at all) is a 404."""
        store = _store(self)
        for token_id in ("000000000000", "../../etc", ""):
            with self.assertRaises(BadRequest) as e:
                store.revoke(token_id)
            self.assertEqual(e.exception.status, 404)

    def test_guessing_is_limited_per_address(self):
        """Past the limit an address gets 429 for invalid tokens (valid ones still work, other
        addresses are not affected), until the window has passed."""
        store = _store(self, guess_limit=5)
        for _ in range(5):
            with self.assertRaises(AccessError) as e:
                store.check(new_token()[1], "6.6.6.6")
            self.assertEqual(e.exception.status, 401)
        with self.assertRaises(AccessError) as e:
            store.check(new_token()[1], "6.6.6.6")
        self.assertEqual((e.exception.status, e.exception.retry_after), (429, 60))
        self.assertTrue(store.check(store.owner_token, "6.6.6.6").owner)
        with self.assertRaises(AccessError) as e:
            store.check("junk", "7.7.7.7")
        self.assertEqual(e.exception.status, 401)
        store.clock.advance(GUESS_WINDOW)
        with self.assertRaises(AccessError) as e:
            store.check("junk", "6.6.6.6")
        self.assertEqual(e.exception.status, 401)

    def test_revoked_and_expired_tokens_are_not_guesses(self):
        """A revoked phone that keeps polling does not lock out its address (a shared home IP)."""
        store = _store(self, guess_limit=3)
        gone, token = store.create({"name": "old phone", "scopes": ["view"]})
        store.revoke(gone.id)
        for _ in range(10):
            with self.assertRaises(AccessError) as e:
                store.check(token, "home")
            self.assertEqual(e.exception.reason, "revoked")
        self.assertFalse(store.limiter.blocked("home"))

    def test_limiter_table_is_bounded(self):
        """The limiter forgets the oldest addresses beyond its bound."""
        from arp.client.command import access

        self.patch(access, "MAX_TRACKED", 100)
        limiter = GuessLimiter(Clock(), limit=3)
        for i in range(250):
            limiter.miss(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(limiter.misses), 100)

    def test_last_use_is_recorded_and_written_later(self):
        """Last-used time and address are kept in memory and written within FLUSH_DELAY seconds."""
        store = _store(self)
        grant, token = store.create({"name": "p", "scopes": ["view"]})
        store.clock.advance(5)
        store.check(token, "203.0.113.9")
        self.assertEqual((grant.last_used, grant.last_from), (T0 + 5, "203.0.113.9"))
        on_disk = {t["id"]: t for t in json.loads(store.path.read_text())["tokens"]}
        self.assertIsNone(on_disk[grant.id]["lastUsed"])
        store.clock.advance(FLUSH_DELAY)
        on_disk = {t["id"]: t for t in json.loads(store.path.read_text())["tokens"]}
        self.assertEqual(
            (on_disk[grant.id]["lastUsed"], on_disk[grant.id]["lastFrom"]), (T0 + 5, "203.0.113.9")
        )
        view = store.listing(grant)
        mine = next(v for v in view if v["id"] == grant.id)
        self.assertTrue(mine["current"])
        self.assertEqual(mine["lastUsedFrom"], "203.0.113.9")
        self.assertNotIn("sha256", json.dumps(view))

    def test_watchers_hear_of_revocation_and_expiry(self):
        """A stream watching a token is told when it is revoked, or when it expires; not after unwatch."""
        store = _store(self)
        revoked, _ = store.create({"name": "r", "scopes": ["view"]})
        expiring, _ = store.create({"name": "e", "scopes": ["view"], "expiresIn": 120})
        quiet, _ = store.create({"name": "q", "scopes": ["view"], "expiresIn": 60})
        a, b, c = Watcher(), Watcher(), Watcher()
        self.assertIsNone(store.watch(revoked, a))
        store.watch(expiring, b)
        call = store.watch(quiet, c)
        store.unwatch(quiet, c)
        store.revoke(revoked.id)
        self.assertEqual(a.told, ["revoked"])
        store.clock.advance(119)
        self.assertEqual(b.told, [])
        store.clock.advance(1)
        self.assertEqual(b.told, ["expired"])
        self.assertEqual(c.told, [])
        self.assertFalse(call.active())

    def test_link_cookie_and_qr_helpers(self):
        """The access parameter is added to any URL shape; the cookie name is per client; QR codes
        come as an SVG data URL (for an <img>) and as block characters (for the terminal)."""
        self.assertEqual(with_access("http://r:1/?token=abc", "T"), "http://r:1/?token=abc&access=T")
        self.assertEqual(with_access("https://abc.example/", "T"), "https://abc.example/?access=T")
        self.assertEqual(with_access("http://r/?token=a#/x", "T"), "http://r/?token=a&access=T#/x")
        self.assertNotEqual(cookie_name("client-a"), cookie_name("client-b"))
        self.assertRegex(cookie_name("client-a"), r"^arpc_access_[0-9a-f]{16}$")
        self.assertNotIn("client-a", cookie_name("client-a"))
        url = qr_svg_data_url("http://r/?access=x")
        self.assertTrue(url.startswith("data:image/svg+xml;base64,"))
        svg = base64.b64decode(url.split(",", 1)[1]).decode()
        self.assertIn('<svg xmlns="http://www.w3.org/2000/svg"', svg)  # a document of its own
        self.assertNotIn("<script", svg)
        text = qr_terminal("http://r/?access=x")
        self.assertGreater(text.count("\n"), 10)
        self.assertIn("▀", text)


# -- over real HTTP ---------------------------------------------------------------------------

#: (method, path, body, the scope it needs, the status when allowed): every API route.
ROUTES = [
    ("GET", "/api/health", None, "view", 200),
    ("GET", "/api/sessions", None, "view", 200),
    ("POST", "/api/sessions", {"executor": "Claude"}, "prompt", 400),  # checked after access
    ("GET", f"/api/sessions/{SID}", None, "view", 404),
    ("DELETE", f"/api/sessions/{SID}", None, "prompt", 404),
    ("POST", f"/api/sessions/{SID}/messages", {"prompt": "x"}, "prompt", 404),
    ("GET", f"/api/sessions/{SID}/changes", None, "view", 404),
    ("GET", "/api/approvals", None, "view", 200),
    ("GET", f"/api/sessions/{SID}/approvals/{SID}", None, "view", 404),
    ("POST", f"/api/sessions/{SID}/approvals/{SID}", {"decision": "allow"}, "approve", 404),
    ("GET", "/api/claude/projects", None, "view", 200),
    ("GET", "/api/claude/sessions", None, "view", 200),
    ("GET", f"/api/claude/sessions/{UUID}", None, "view", 404),
    ("GET", "/api/codex/sessions", None, "view", 200),
    ("GET", f"/api/codex/sessions/{UUID}", None, "view", 404),
    ("GET", "/api/gemini/sessions", None, "view", 200),
    ("GET", f"/api/gemini/sessions/{UUID}", None, "view", 404),
    ("GET", "/api/me", None, None, 200),
    ("GET", "/api/tokens", None, "admin", 200),
    ("POST", "/api/tokens", {"name": "matrix", "scopes": ["view"], "expiresIn": 600}, "admin", 201),
    ("DELETE", "/api/tokens/000000000000", None, "admin", 404),
    ("GET", "/api/push/key", None, "view", 200),
    ("GET", "/api/push/subscriptions", None, "view", 200),
    ("POST", "/api/push/subscriptions", {"endpoint": "http://push.example/x"}, "view", 400),
    ("DELETE", "/api/push/subscriptions/0000000000000000", None, "view", 404),
]
STREAM = ("GET", f"/api/sessions/{SID}/stream", None, "view", 404)  # an upgrade; 404: no such session
SCOPE_TOKENS = ("view", "prompt", "approve", "admin")
INVALID = ("missing", "malformed", "unknown", "expired", "revoked")


class ApiFixture:
    """The command-mode site on a loopback port, its token store on a fake clock."""

    def __init__(
        self, test: unittest.TestCase, ws: Workspace, manager: SessionManager | None = None, **kw
    ) -> None:
        data = Path(ws.data)
        data.mkdir(parents=True, exist_ok=True)
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = AccessStore(data, self.clock, **kw)
        self.guard = Guard(self.store, "client1")
        if manager is None:
            manager = SessionManager(
                store=SessionStore(data / "sessions"), reactor=reactor, binaries={}, project_roots=[ws.root]
            )
        self.push = PushService(reactor, data, self.store)
        self.root = build_root(
            manager,
            ClaudeHistory([]),
            CodexHistory(ws.codex),
            GeminiHistory(ws.gemini),
            [],
            self.guard,
            self.push,
        )
        self.site = make_site(self.root)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        test.addCleanup(self.port.stopListening)
        self.number = self.port.getHost().port
        self.base = f"http://127.0.0.1:{self.number}"
        self.http = HTTPClient(test)

    async def call(self, method: str, path: str, body=None, token: str | None = None, headers=None):
        h = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        response, payload = await self.http.request(method, self.base + path, h, data)
        return response, json.loads(payload)

    async def upgrade(self, path: str, token: str | None) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return await raw_exchange(
            self.number,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{auth}\r\n".encode(),
        )


class ScopeMatrixTests(unittest.TestCase):
    """Every API route x every scope x no token / malformed / unknown / expired / revoked."""

    timeout = 60

    def _credentials(self, api: ApiFixture) -> dict[str, str | None]:
        store = api.store
        tokens: dict[str, str | None] = {"missing": None, "malformed": "arpa_x", "unknown": new_token()[1]}
        for scope in SCOPE_TOKENS:
            tokens[scope] = store.create({"name": scope, "scopes": [scope]})[1]
        tokens["expired"] = store.create({"name": "exp", "scopes": ["admin"], "expiresIn": 60})[1]
        revoked, tokens["revoked"] = store.create({"name": "rev", "scopes": ["admin"]})
        store.revoke(revoked.id)
        store.clock.advance(61)
        return tokens

    def test_every_route_is_in_the_matrix(self):
        """Each resource method that has a handler is listed in ROUTES (or is the stream), and
        declares a scope: a new route cannot slip in without one."""
        ws = Workspace(self)
        api = ApiFixture(self, ws)
        covered = set()
        for method, path, *_ in [*ROUTES, STREAM]:
            request = DummyRequest([p.encode() for p in path.lstrip("/").split("/")])
            request.method = method.encode()
            resource = api.site.getResourceFor(request)
            covered.add((type(resource).__name__, method))
        handlers = set()
        for name in dir(web):
            cls = getattr(web, name)
            if isinstance(cls, type) and issubclass(cls, web.JsonResource):
                for attr in dir(cls):
                    if attr.startswith("handle_"):
                        self.assertIn(attr[7:], cls.scopes, f"{name}.{attr} declares no scope")
                        handlers.add((name, attr[7:]))
        self.assertEqual(handlers, covered - {("StreamGate", "GET")})
        self.assertIn(("StreamGate", "GET"), covered)

    async def test_matrix(self):
        """401 naming why for each invalid credential; 403 without the route's scope; the route's
        own answer with it (admin passes everywhere)."""
        ws = Workspace(self)
        api = ApiFixture(self, ws, guess_limit=10_000)
        tokens = self._credentials(api)
        failures = []
        for method, path, body, scope, allowed in ROUTES:
            for who, token in tokens.items():
                response, answer = await api.call(method, path, body, token)
                if who in INVALID:
                    expected, reason = 401, who
                elif scope is None or who in (scope, "admin"):
                    expected, reason = allowed, None
                else:
                    expected, reason = 403, "scope"
                got = (response.code, answer.get("reason") if isinstance(answer, dict) else None)
                if response.code != expected or (reason is not None and got[1] != reason):
                    failures.append(f"{method} {path} as {who}: {got}, wanted {(expected, reason)}")
                if response.code == 401 and not response.headers.hasHeader(b"www-authenticate"):
                    failures.append(f"{method} {path} as {who}: 401 without WWW-Authenticate")
        for who, token in tokens.items():
            raw = await api.upgrade(STREAM[1], token)
            if who in INVALID:
                expected = 401
                if f'"reason":"{who}"'.encode() not in raw:
                    failures.append(f"stream as {who}: no reason in {raw[:300]!r}")
            else:
                expected = 404 if who in ("view", "admin") else 403
            if status_of(raw) != expected:
                failures.append(f"stream as {who}: {status_of(raw)}, wanted {expected}")
        self.assertEqual(failures, [])

    async def test_credentials_travel_as_header_cookie_or_query(self):
        """Bearer header, this client's cookie, or ?access=; another client's cookie or a Basic
        header is no credential; a refused request changes nothing."""
        ws = Workspace(self)
        api = ApiFixture(self, ws)
        owner = api.store.owner_token
        console = {"X-ARP-Console": "1"}  # a GET with a cookie only: the console's own call says so
        ok = {
            "cookie": {"Cookie": f"other=1; {cookie_name('client1')}={owner}", **console},
            "basic+cookie": {
                "Authorization": "Basic eDp5",
                "Cookie": f"{cookie_name('client1')}={owner}",
                **console,
            },
        }
        for label, headers in ok.items():
            response, answer = await api.call("GET", "/api/me", headers=headers)
            self.assertEqual(response.code, 200, label)
            self.assertTrue(answer["owner"])
        response, answer = await api.call("GET", f"/api/me?access={owner}")
        self.assertEqual(response.code, 200)
        response, answer = await api.call(
            "GET", "/api/me", headers={"Cookie": f"{cookie_name('client2')}={owner}"}
        )
        self.assertEqual((response.code, answer["reason"]), (401, "missing"))
        before = len(api.store.grants)
        response, answer = await api.call(
            "POST", "/api/tokens", {"name": "x", "scopes": ["view"]}, token="arpa_x"
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(len(api.store.grants), before)

    async def test_token_management_over_http(self):
        """Create (secret and link once, QR as an image), list without secrets, bad input 400,
        revoke at once (404 for an unknown id), and the revoked token is refused from then on."""
        ws = Workspace(self)
        api = ApiFixture(self, ws)
        owner = api.store.owner_token
        response, made = await api.call(
            "POST", "/api/tokens", {"name": "Phone", "scopes": ["view", "prompt"], "expiresIn": 3600}, owner
        )
        self.assertEqual(response.code, 201, made)
        self.assertEqual(set(made) >= {"id", "token", "name", "scopes", "expiresAt", "link"}, True)
        self.assertEqual(made["scopes"], ["view", "prompt"])
        self.assertEqual(made["expiresAt"], "2023-11-14T23:13:20.000Z")
        self.assertEqual(made["link"], f"{api.base}/?access={made['token']}")  # no relay: this origin
        self.assertTrue(made["qr"].startswith("data:image/svg+xml;base64,"))
        api.guard.route_url = lambda: "http://relay.example:17003/?token=client1"
        response, second = await api.call("POST", "/api/tokens", {"name": "Tab", "scopes": ["view"]}, owner)
        self.assertEqual(
            second["link"], f"http://relay.example:17003/?token=client1&access={second['token']}"
        )
        response, listing = await api.call("GET", "/api/tokens", token=owner)
        self.assertNotIn(made["token"], json.dumps(listing))
        self.assertNotIn("sha256", json.dumps(listing))
        names = {t["name"]: t for t in listing["tokens"]}
        self.assertEqual(set(names), {"owner", "Phone", "Tab"})
        self.assertTrue(names["owner"]["current"])
        for body in (
            {"name": "x", "scopes": ["sudo"]},
            {"name": "x", "scopes": ["view"], "expiresIn": 10**12},
        ):
            response, answer = await api.call("POST", "/api/tokens", body, owner)
            self.assertEqual(response.code, 400, answer)
        response, answer = await api.call("POST", "/api/tokens", token=owner, headers={})
        self.assertEqual(response.code, 400)
        response, me = await api.call("GET", "/api/me", token=made["token"])
        self.assertEqual((me["name"], me["allows"]), ("Phone", ["view", "prompt"]))
        response, answer = await api.call("DELETE", f"/api/tokens/{made['id']}", token=owner)
        self.assertEqual((response.code, answer["status"]), (200, "revoked"))
        response, answer = await api.call("GET", "/api/health", token=made["token"])
        self.assertEqual((response.code, answer["reason"]), (401, "revoked"))
        response, answer = await api.call("DELETE", "/api/tokens/0123456789ab", token=owner)
        self.assertEqual(response.code, 404)

    async def test_guessing_is_rate_limited_and_xff_cannot_dodge_it(self):
        """A direct client that rotates X-Forwarded-For is still one address: after the limit it
        gets 429 with Retry-After; its spoofed header is not recorded as anyone's address."""
        ws = Workspace(self)
        api = ApiFixture(self, ws, guess_limit=5)
        for i in range(5):
            response, answer = await api.call(
                "GET", "/api/health", token=new_token()[1], headers={"X-Forwarded-For": f"10.0.0.{i}"}
            )
            self.assertEqual(response.code, 401)
        response, answer = await api.call(
            "GET", "/api/health", token=new_token()[1], headers={"X-Forwarded-For": "10.9.9.9"}
        )
        self.assertEqual((response.code, answer["reason"]), (429, "guessing"))
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"60"])
        response, answer = await api.call(
            "GET", "/api/health", token=api.store.owner_token, headers={"X-Forwarded-For": "10.9.9.9"}
        )
        self.assertEqual(response.code, 200)
        owner = next(g for g in api.store.grants.values() if g.owner)
        self.assertEqual(owner.last_from, "127.0.0.1")

    def test_through_a_tunnel_the_relay_address_counts(self):
        """Through a relay tunnel, the last X-Forwarded-For entry (the one the relay appended) is
        the source address: earlier entries, which the browser could have sent, are not."""
        ws = Workspace(self)
        api = ApiFixture(self, ws)
        tunnel = SiteTunnel(b"H\n", api.site, set())
        transport = StringTransport()
        tunnel.makeConnection(transport)
        tunnel.dataReceived(
            f"GET /api/me HTTP/1.1\r\nHost: relay\r\nX-Forwarded-For: 1.1.1.1, 198.51.100.7\r\n"
            f"Authorization: Bearer {api.store.owner_token}\r\n\r\n".encode()
        )
        self.assertIn(b"200 OK", transport.value())
        owner = next(g for g in api.store.grants.values() if g.owner)
        self.assertEqual(owner.last_from, "198.51.100.7")
        tunnel.connectionLost(None)

    async def test_page_load_trades_the_token_for_a_cookie(self):
        """``/?access=`` answers 302 to the same URL without it, with an HttpOnly SameSite=Strict
        cookie (Secure behind https); a bad token goes to the sign-in screen, with no cookie; the
        redirect never leaves this origin."""
        ws = Workspace(self)
        api = ApiFixture(self, ws)
        owner = api.store.owner_token
        name = cookie_name("client1")

        async def load(target: str, extra: str = "") -> bytes:
            return await raw_exchange(
                api.number, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()
            )

        raw = await load(f"/?access={owner}&x=1")
        self.assertEqual(status_of(raw), 302)
        self.assertIn(b"\r\nLocation: /?x=1\r\n", raw)
        cookie = next(line for line in raw.split(b"\r\n") if line.lower().startswith(b"set-cookie:"))
        self.assertIn(f"{name}={owner}; Path=/;".encode(), cookie)
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=Strict", cookie)
        self.assertNotIn(b"Secure", cookie)
        self.assertIn(b"Referrer-Policy: no-referrer", raw)
        raw = await load(f"/?access={owner}", "X-Forwarded-Proto: https\r\n")
        self.assertIn(b"; Secure", raw)
        raw = await load("/sessions?access=arpa_forged")
        self.assertEqual(status_of(raw), 302)
        self.assertIn(b"\r\nLocation: /sessions#/signin/malformed\r\n", raw)
        self.assertNotIn(b"Set-Cookie", raw)
        raw = await load(f"//evil.example/?access={owner}")
        self.assertIn(b"\r\nLocation: /evil.example/\r\n", raw)
        raw = await load(f"/?access={owner}", "Content-Length: 0\r\n")
        self.assertEqual(status_of(raw), 302)
        post = await raw_exchange(
            api.number,
            f"POST /?access={owner} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        self.assertEqual(status_of(post), 405)
        self.assertNotIn(b"Set-Cookie", post)

    async def test_revoking_closes_open_streams(self):
        """A viewer streaming a running session is closed with 4001 the moment its token is revoked;
        another viewer with another token keeps streaming."""
        ws = Workspace(self)
        env = {**os.environ, **ws.env()}
        data = Path(ws.data)
        data.mkdir(parents=True, exist_ok=True)
        manager = SessionManager(
            store=SessionStore(data / "sessions"),
            reactor=reactor,
            binaries={"Claude": fake("claude")},
            project_roots=[ws.root],
            environ=env,
            grace=0.5,
        )
        self.addCleanup(manager.stopService)
        api = ApiFixture(self, ws, manager)
        owner = api.store.owner_token
        response, viewer = await api.call(
            "POST", "/api/tokens", {"name": "viewer", "scopes": ["view"]}, owner
        )
        response, session = await api.call(
            "POST",
            "/api/sessions",
            {"executor": "Claude", "prompt": "LONG x", "projectPath": str(ws.project)},
            owner,
        )
        self.assertEqual(response.code, 201, session)
        me = api.store.check(owner, "x")
        self.assertEqual(session["createdBy"], {"token": me.id, "name": "owner"})
        turn = next(e for e in session["events"] if e["kind"] == "turn")
        self.assertEqual(turn["by"], {"token": me.id, "name": "owner"})

        async def open_as(token: str) -> StreamClient:
            url = f"ws://127.0.0.1:{api.number}/api/sessions/{session['id']}/stream"
            factory = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}"})
            factory.protocol = StreamClient
            factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=2)
            proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", api.number).connect(factory)
            self.addCleanup(lambda: proto.transport.abortConnection() if not proto.closed.called else None)
            await proto.opened
            return proto

        doomed = await open_as(viewer["token"])
        kept = await open_as(owner)
        await wait_until(lambda: len(doomed.events) >= 3 and len(kept.events) >= 3, timeout=15)
        response, _ = await api.call("DELETE", f"/api/tokens/{viewer['id']}", token=owner)
        self.assertEqual(response.code, 200)
        await doomed.closed
        self.assertEqual(doomed.close_code, CLOSE_REVOKED)
        seen = len(kept.events)
        await wait_until(lambda: len(kept.events) > seen + 2, timeout=15)
        self.assertFalse(kept.closed.called)
        response, cancelled = await api.call("DELETE", f"/api/sessions/{session['id']}", token=owner)
        self.assertEqual(cancelled["status"], "cancelled")
        await kept.closed
        response, detail = await api.call("GET", f"/api/sessions/{session['id']}", token=owner)
        end = [e for e in detail["events"] if e["kind"] == "status"][-1]
        self.assertEqual(end["by"], {"token": me.id, "name": "owner"})
        await wait_until(lambda: not any("_BatchedTimer" in repr(c) for c in reactor.getDelayedCalls()), 5)


class OptionsTests(unittest.TestCase):
    """The access flags of ``twistd arpc``."""

    def test_rotate_needs_command_mode(self):
        """``--rotate-owner-token`` is refused in forward mode, where arpc issues no tokens."""
        from twisted.python import usage

        from arp.client.tap import Options

        base = ["--server-addr", "relay", "--auth-key", "k"]
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions([*base, "--local-port", "80", "--rotate-owner-token"])
        self.assertIn("--command-mode", str(e.exception))
        options = Options()
        options.parseOptions([*base, "--command-mode", "--rotate-owner-token", "--no-qr"])
        self.assertTrue(options["rotate-owner-token"])
        self.assertTrue(options["no-qr"])
