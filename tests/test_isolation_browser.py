"""Cross-tenant attacks in a real Chromium: a forward-mode app's page against two agent consoles.

One relay, two command-mode clients (the victim's laptop and desktop consoles, each opened in the
same browser) and one forward-mode web app whose page is hostile.  The page tries what issue 10
found: a credentialed ``fetch`` and a no-cors POST to a console's API, a form POST navigation, a
WebSocket to a console's stream, a service worker, and cookie forcing from its server and its
script.  Nothing may reach the consoles' clients (the relay counts every request it forwards to
each), and both consoles must still work side by side afterwards.  The app's service worker is
registered on its own port (its own origin) and controls nothing of the consoles'; on the relay's
shared port, which every client shares, a worker is refused.
"""

from __future__ import annotations

import json
import urllib.request
from hashlib import sha256

from twisted.web import resource, server

from tests import browser
from tests.command_helpers import Workspace, start_command_arpc, write_claude_history
from tests.helpers import listen_backend, start_arpc, start_arps
from tests.test_console_browser import _ShortTemp, run_in_browser


def cookie_of(token: str) -> str:
    return "arp_" + sha256(b"arp-cookie\0" + token.encode()).hexdigest()[:20]


def origin_of(url: str) -> str:
    return url.split("/?", 1)[0]


ATTACK = """<!doctype html><title>innocent app</title><script>
(async () => {
  const B = %(victim)s, SHARED = %(shared)s, NAME = %(cookie)s;
  const body = JSON.stringify({executor: "Claude", prompt: "pwned", projectPath: %(project)s});
  const r = {};
  async function attempt(key, fn) {
    try { r[key] = await fn(); } catch (e) { r[key] = "error: " + e.name; }
  }
  await attempt("fetchPost", async () => (await fetch(B + "/api/sessions", {method: "POST",
      credentials: "include", headers: {"Content-Type": "application/json"}, body})).status);
  await attempt("fetchRead", async () => (await fetch(B + "/api/sessions",
      {credentials: "include"})).status);
  await attempt("noCorsPost", async () => { await fetch(B + "/api/sessions", {method: "POST",
      mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"}, body});
      return "sent"; });
  await attempt("sharedPost", async () => { await fetch(SHARED + "/api/sessions", {method: "POST",
      mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"}, body});
      return "sent"; });
  r.webSocket = await new Promise(done => {
    const ws = new WebSocket(B.replace("http", "ws") + "/api/sessions/x/stream");
    ws.onopen = () => done("open"); ws.onerror = () => done("error");
    setTimeout(() => done("timeout"), 5000);
  });
  await attempt("serviceWorker", async () => {
    const reg = await navigator.serviceWorker.register("/sw.js", {scope: "/"});
    return "registered " + reg.scope; });
  await attempt("serverCookie", async () => (await fetch("/setcookie")).status);
  document.cookie = NAME + "=forced-by-script; path=/";
  document.cookie = NAME + "=forced-by-script; path=/api";
  document.cookie = "arp_token=forced-by-script; path=/";
  window.results = r;
})();
</script>"""

FORM = """<!doctype html><form method="POST" action="%(victim)s/api/sessions" enctype="text/plain">
<input name='{"executor": "Claude", "prompt": "pwned-form", "x": "' value='"}'></form>
<script>document.forms[0].submit()</script>"""


class HostileApp(resource.Resource):
    """The forward-mode app: the attack page, a form POST page, a service worker, cookie forcing."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[bytes, bytes] = {}
        self.forced: list[bytes] = []
        self.seen: list[bytes] = []
        self.cookies: list[bytes] = []  # every Cookie header that reached the app

    def render_GET(self, request: server.Request) -> bytes:
        self.seen.append(request.path)
        self.cookies.extend(request.requestHeaders.getRawHeaders(b"cookie", []))
        if request.path == b"/setcookie":
            for cookie in self.forced:
                request.responseHeaders.addRawHeader(b"set-cookie", cookie)
            return b"ok"
        if request.path == b"/sw.js":
            request.setHeader(b"content-type", b"text/javascript")
            # every page of its own origin but the form below (which the test loads next)
            return (
                b"self.addEventListener('fetch', e => { if (!e.request.url.endsWith('/form')) "
                b"e.respondWith(new Response('hijacked')); });"
            )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.pages.get(request.path, b"<!doctype html><title>app</title>")


def client_requests(admin: str, client_id: str) -> int:
    """How many requests the relay has forwarded to ``client_id`` (from a worker thread)."""
    with urllib.request.urlopen(f"{admin}/admin/api/clients/{client_id}", timeout=10) as response:
        return json.load(response)["requests"]


def sessions_of(shared: str, token: str, access: str) -> list:
    """The sessions of a command-mode client, asked as its owner's API client (from a worker thread)."""
    headers = {"X-ARP-Token": token, "Authorization": f"Bearer {access}"}
    request = urllib.request.Request(f"{shared}/api/sessions", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        data = json.load(response)
    return data["sessions"] if isinstance(data, dict) else data


class IsolationBrowserTests(browser.BrowserTestCase):
    """No client's page can act on another client, in a real browser."""

    timeout = 180

    async def test_hostile_app_reaches_no_console_and_both_consoles_work(self):
        """A forward-mode app's page attacks the victim's two consoles (each open in the same
        browser): nothing reaches either client, its cookies are not forced, its service worker
        (registered on its own port) reaches neither console, and both consoles still work side
        by side."""
        relay = await start_arps(self)
        consoles = []
        for _ in range(2):
            ws = Workspace(_ShortTemp(self))
            write_claude_history(ws.claude, str(ws.project))
            consoles.append((ws, await start_command_arpc(self, relay, ws)))
        (ws1, b1), (_, b2) = consoles
        app = HostileApp()
        a = await start_arpc(self, relay, local_port=listen_backend(self, server.Site(app)))
        victim = origin_of(b1.url)
        values = {
            "victim": json.dumps(victim),
            "shared": json.dumps(relay.public),
            "cookie": json.dumps(cookie_of(b1.token)),
            "project": json.dumps(str(ws1.project)),
        }
        app.pages[b"/"] = (ATTACK % values).encode()
        app.pages[b"/form"] = (FORM % {"victim": victim}).encode()
        app.forced = [
            f"{cookie_of(b1.token)}={a.token}; Path=/".encode(),
            f"{cookie_of(b2.token)}=x; Path=/; HttpOnly".encode(),
            b"arp_token=" + a.token.encode() + b"; Path=/",
            b"app=1; Path=/",  # the app's own cookie, which must still reach it
        ]

        def drive(page):
            seen = {}
            context = page.context
            tabs = {}
            for name, (ws, proc) in zip(("b1", "b2"), consoles):
                tab = context.new_page()
                tab.goto(proc.url)
                tab.locator(f'#projects a[data-project="{ws.project}"]').wait_for()
                tabs[name] = tab
            seen["jar_before"] = {c["name"]: c["value"] for c in context.cookies()}
            for tab in tabs.values():  # the consoles' own traffic stops: what follows is the attack
                tab.close()
            before = {p.token: client_requests(relay.admin, p.token) for p in (b1, b2)}
            page.goto(a.url)
            page.wait_for_function("window.results !== undefined", timeout=30000)
            seen["results"] = page.evaluate("window.results")
            # what the page's script sent reached neither client (the relay forwarded nothing)
            seen["requests"] = {
                p.token: client_requests(relay.admin, p.token) - before[p.token] for p in (b1, b2)
            }
            page.goto(origin_of(a.url) + "/form")
            page.wait_for_load_state("load")
            seen["form_page"] = page.content()
            seen["jar_after"] = [(c["name"], c["value"], c["path"]) for c in context.cookies()]
            # both consoles still work, side by side, in this browser
            for name, (ws, proc) in zip(("b1", "b2"), consoles):
                tab = context.new_page()
                tab.goto(origin_of(proc.url) + "/")
                tab.locator(f'#projects a[data-project="{ws.project}"]').wait_for()
                seen[f"{name}_works"] = tab.url
            seen["sessions"] = [sessions_of(relay.public, p.token, p.access) for p in (b1, b2)]
            return seen

        seen = await run_in_browser(drive)
        results = seen["results"]
        self.assertEqual(seen["requests"], {b1.token: 0, b2.token: 0}, f"reached a console: {results}")
        self.assertEqual(seen["sessions"], [[], []])
        # cookies ignore ports: the browser sends the consoles' cookies to the app's port too, but
        # the relay passes the app none of them (neither routing ids nor arpc access tokens)
        self.assertTrue(any(b"app=1" in c for c in app.cookies), f"the app lost its cookie: {app.cookies}")
        for header in app.cookies:
            for secret in (b1.token, b2.token, b1.access, b2.access):
                self.assertNotIn(secret.encode(), header)
        self.assertEqual(ws1.recorded(), [], "an agent ran on the victim's machine")
        self.assertNotEqual(results["fetchPost"], 200, results)
        self.assertNotEqual(results["fetchRead"], 200, results)
        self.assertEqual(results["webSocket"], "error", results)
        # its own origin: allowed, scoped to the app's port; the consoles' pages loaded after it
        # (b1_works, b2_works) were not its to answer
        self.assertEqual(results["serviceWorker"], f"registered {origin_of(a.url)}/", results)
        # the form POST navigation is refused by the relay itself (the browser then loads only the
        # favicon of the error page it shows, a same-origin GET of that origin's own)
        self.assertIn(
            "a request from another origin's page carries only this client's cookie", seen["form_page"]
        )
        for name, value, path in seen["jar_after"]:
            if name in (cookie_of(b1.token), cookie_of(b2.token)) and path == "/":
                self.assertIn(value, (b1.token, b2.token), f"{name} was forced to {value}")
            if name != cookie_of(a.token):  # the app's own cookie, set by the relay on its first load
                self.assertNotEqual(value, a.token, f"the app set {name}")
        self.assertEqual(seen["jar_before"][cookie_of(b1.token)], b1.token)
        self.assertEqual(seen["jar_before"][cookie_of(b2.token)], b2.token)
        self.assertTrue(seen["b1_works"].startswith(origin_of(b1.url)))
        self.assertTrue(seen["b2_works"].startswith(origin_of(b2.url)))


PLAIN_HOST_ATTACK = """<!doctype html><title>innocent app</title>
<img id="img" src="%(victim)s/api/sessions">
<script src="%(victim)s/api/me"></script>
<script>
(async () => {
  const r = {};
  try {
    await fetch(%(victim_json)s + "/api/sessions", {mode: "no-cors", credentials: "include"});
    r.noCorsGet = "sent";
  } catch (e) { r.noCorsGet = "error: " + e.name; }
  window.results = r;
})();
</script>"""


class PlainHTTPHostNameTests(browser.BrowserTestCase):
    """Per-port isolation where Chromium sends no fetch metadata: plain HTTP on a host name that
    is not localhost (``http://relay.test:<port>``, the README quick start's shape)."""

    timeout = 180

    async def test_no_cors_get_image_script_and_frame_of_another_port(self):
        """The victim's console works on ``http://relay.test:<B>``; then a page on another
        client's port of the same host name loads B's API as a no-cors fetch, an image and a
        script (no Sec-Fetch-*, no Origin: only B's cookies): none reaches B (the relay answers
        403); a frame of B's console is refused by the console's frame-ancestors."""
        relay = await start_arps(self)
        ws = Workspace(_ShortTemp(self))
        write_claude_history(ws.claude, str(ws.project))
        victim_proc = await start_command_arpc(self, relay, ws)
        app = HostileApp()
        a = await start_arpc(self, relay, local_port=listen_backend(self, server.Site(app)))

        def named(url: str) -> str:
            return url.replace("127.0.0.1", "relay.test")

        victim = origin_of(named(victim_proc.url))
        app.pages[b"/"] = (
            PLAIN_HOST_ATTACK % {"victim": victim, "victim_json": json.dumps(victim)}
        ).encode()
        app.pages[b"/frame"] = f'<!doctype html><iframe id="f" src="{victim}/"></iframe>'.encode()

        def drive(page):
            seen: dict = {"statuses": [], "asked": []}
            page.goto(named(victim_proc.url))
            # the console's own GETs carry X-ARP-Console: without fetch metadata they still work
            page.locator(f'#projects a[data-project="{ws.project}"]').wait_for()
            before = client_requests(relay.admin, victim_proc.token)
            page.on(
                "response",
                lambda r: seen["statuses"].append((r.url, r.status)) if r.url.startswith(victim) else None,
            )
            page.on("request", lambda r: seen["asked"].append(r.url) if r.url.startswith(victim) else None)
            page.goto(named(a.url))
            page.wait_for_function("window.results !== undefined", timeout=30000)
            page.wait_for_function("document.getElementById('img').complete")
            seen["results"] = page.evaluate("window.results")
            seen["reached"] = client_requests(relay.admin, victim_proc.token) - before
            refusal = page.expect_console_message(lambda m: "frame-ancestors" in m.text)
            with refusal as refused:
                page.goto(origin_of(named(a.url)) + "/frame")
            seen["frame"] = refused.value.text
            return seen

        seen = await run_in_browser(drive, extra_args=["--host-resolver-rules=MAP relay.test 127.0.0.1"])
        self.assertEqual(seen["results"], {"noCorsGet": "sent"})
        self.assertEqual(seen["reached"], 0, seen["statuses"])
        # the browser asked three times (fetch, image, script) and the relay passed on none of them
        self.assertEqual(len([url for url in seen["asked"] if "/api/" in url]), 3, seen["asked"])
        api = [status for url, status in seen["statuses"] if "/api/" in url]
        self.assertTrue(api, seen["statuses"])
        self.assertEqual(set(api), {403}, seen["statuses"])
        self.assertIn("frame-ancestors", seen["frame"])
        self.assertEqual(ws.recorded(), [])


SHARED_WORKER = """<!doctype html><title>app on the shared port</title><script>
(async () => {
  try {
    await navigator.serviceWorker.register("/sw.js" + location.search, {scope: "/"});
    window.results = "registered";
  } catch (e) { window.results = "error: " + e.name + ": " + e.message; }
})();
</script>"""


class SharedPortWorkerTests(browser.BrowserTestCase):
    """Where origins are shared (``--client-ports none``: every client's pages on the public port),
    a service worker would see every client's pages in that browser: the relay refuses it."""

    timeout = 120

    async def test_forward_mode_apps_worker_refused_on_the_shared_port(self):
        """A forward-mode app's page on the shared port registers ``/sw.js?token=<its id>``: the
        relay answers 403, the script never reaches the app, and nothing is registered."""
        relay = await start_arps(self, "--client-ports", "none")
        app = HostileApp()
        app.pages[b"/"] = SHARED_WORKER.encode()
        a = await start_arpc(self, relay, local_port=listen_backend(self, server.Site(app)))
        url = f"{relay.public}/?token={a.token}"

        def drive(page):
            page.goto(url)
            page.wait_for_function("window.results !== undefined", timeout=30000)
            registrations = page.evaluate("navigator.serviceWorker.getRegistrations().then(r => r.length)")
            return page.url, page.evaluate("window.results"), registrations

        where, result, registrations = await run_in_browser(drive)
        self.assertTrue(where.startswith(relay.public), where)  # served on the shared port itself
        self.assertTrue(result.startswith("error"), result)
        self.assertIn("(403)", result)  # Chromium: "A bad HTTP response code (403) was received..."
        self.assertEqual(registrations, 0)
        self.assertNotIn(b"/sw.js", app.seen, "the service worker script reached the app")
