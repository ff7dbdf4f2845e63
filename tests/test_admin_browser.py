"""The admin panel in a real browser (Chromium driven by Playwright)."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import Data

from tests import browser
from tests.helpers import HTTPClient, listen_backend, start_arpc, start_arps


class AdminPanelBrowserTests(browser.BrowserTestCase):
    """An operator opens the panel, sees the client and its counts, and disconnects it."""

    timeout = 120

    async def test_panel_shows_client_and_disconnects_it(self):
        """The panel lists the client with its request count; Disconnect drops it."""
        relay = await start_arps(self, "--admin-token", "panel-secret")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        client = HTTPClient(self)
        for i in range(5):
            response, _ = await client.request("GET", f"{relay.public}/echo/{i}?token={arpc.token}")
            self.assertEqual(response.code, 200)
        shots = browser.screenshot_dir()
        url = f"{relay.admin}/?token=panel-secret"
        token = arpc.token

        def drive(page, url, token):
            page.goto(url)
            row = page.locator(f'tr[data-client="{token}"]')
            row.wait_for()
            requests = row.locator("td.requests").inner_text()
            online = page.locator(".card", has_text="clients online").locator(".v").inner_text()
            page.screenshot(path=os.path.join(shots, "admin-panel.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=os.path.join(shots, "admin-panel-phone.png"), full_page=True)
            page.on("dialog", lambda dialog: dialog.accept())
            row.locator("button").click()
            page.get_by_text("No clients registered.").wait_for()
            return requests, online

        requests, online = await browser.in_browser(drive, url, token)
        self.assertEqual(requests, "5")
        self.assertEqual(online, "1")
        await arpc.wait_for("the relay dropped this client")
        self.assertTrue(os.path.getsize(os.path.join(shots, "admin-panel.png")) > 1000)

    async def test_panel_with_wrong_token_says_why(self):
        """With a wrong admin token the panel says in words why it shows nothing."""
        relay = await start_arps(self, "--admin-token", "panel-secret")

        def drive(page, url):
            page.goto(url)
            alert = page.get_by_role("alert")
            alert.filter(has_text="Cannot load").wait_for()
            return alert.inner_text()

        text = await browser.in_browser(drive, f"{relay.admin}/?token=wrong")
        self.assertIn("admin token required", text)


ATTACK_PAGE = """<!doctype html>
<title>a page on another site</title>
<form method="POST" action="{target}"><input name="confirm" value="yes"></form>
<form method="POST" action="{target}" enctype="text/plain"><input name='{{"a":"' value='"}}'></form>
<script>
async function simpleFetch() {{
  // a "simple" request: the browser sends it without asking; the answer stays opaque
  await fetch("{target}", {{method: "POST", mode: "no-cors", body: "{{}}",
                           headers: {{"Content-Type": "text/plain"}}}});
  return "sent";
}}
</script>
"""


class AdminCrossSiteBrowserTests(browser.BrowserTestCase):
    """A page on another site cannot make the operator's browser disconnect a client."""

    timeout = 120

    async def test_cross_site_form_post_is_refused(self):
        """Two form POSTs and a no-cors fetch from http://localhost:Q to the loopback admin (no
        token) are refused with 403 and the client stays; the panel's own Disconnect still works."""
        relay = await start_arps(self)  # loopback admin, no token: the default set-up
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        target = f"{relay.admin}/admin/api/clients/{arpc.token}/disconnect"
        attacker = Data(ATTACK_PAGE.format(target=target).encode(), "text/html; charset=utf-8")
        attacker.isLeaf = True
        port = reactor.listenTCP(0, Site(attacker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        attack_url = f"http://localhost:{port.getHost().port}/"  # another site than 127.0.0.1
        admin_url = f"{relay.admin}/"
        token = arpc.token

        def drive(page, attack_url, admin_url, token):
            answers = []
            for index in (0, 1):
                page.goto(attack_url)
                assert page.evaluate("document.forms.length") == 2, page.content()
                with page.expect_navigation():
                    page.evaluate(f"document.forms[{index}].submit()")
                answers.append(page.locator("body").inner_text())
            page.goto(attack_url)
            answers.append(page.evaluate("simpleFetch()"))
            page.goto(admin_url)
            row = page.locator(f'tr[data-client="{token}"]')
            row.wait_for()
            page.on("dialog", lambda dialog: dialog.accept())
            row.locator("button").click()
            page.get_by_text("No clients registered.").wait_for()
            return answers

        first, second, fetched = await browser.in_browser(drive, attack_url, admin_url, token)
        for answer in (first, second):
            self.assertEqual(json.loads(answer).get("status"), 403, answer)
        self.assertEqual(fetched, "sent")
        refusals = relay.proc.output.count(
            f"admin refused a POST from http://localhost:{port.getHost().port}"
        )
        self.assertEqual(refusals, 3, relay.proc.output[-2000:])
        await arpc.wait_for("the relay dropped this client")
        self.assertEqual(arpc.output.count("the relay dropped this client"), 1)  # only the panel's click


FRAMING_PAGE = """<!doctype html>
<title>a tenant's page</title>
<p>Win a prize: click the button!</p>
<iframe id="panel" src="{target}" style="width:800px;height:600px;opacity:0.1"></iframe>
"""


class AdminFramingBrowserTests(browser.BrowserTestCase):
    """Clickjacking: a page the operator opens cannot show the admin panel in a frame."""

    timeout = 120

    async def test_panel_refuses_to_be_framed(self):
        """A page on another port frames the panel (with the operator's token in the URL, as a
        bookmark would have it): Chromium refuses to render it, so no client list shows and no
        Disconnect can be clicked through; the panel opened directly still works."""
        relay = await start_arps(self, "--admin-token", "panel-secret")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        panel = f"{relay.admin}/?token=panel-secret"
        attacker = Data(FRAMING_PAGE.format(target=panel).encode(), "text/html; charset=utf-8")
        attacker.isLeaf = True
        port = reactor.listenTCP(0, Site(attacker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        attack_url = f"http://localhost:{port.getHost().port}/"
        token = arpc.token

        def drive(page):
            refusal = page.expect_console_message(lambda m: "frame" in m.text and "ancestor" in m.text)
            with refusal as refused, page.expect_response(lambda r: r.url.startswith(relay.admin)) as framed:
                page.goto(attack_url)
            headers = framed.value.headers
            # a refused frame is Chromium's error page: none of the panel's rows are in it
            rows = page.frame_locator("#panel").locator(f'tr[data-client="{token}"]').count()
            child = [f for f in page.frames if f is not page.main_frame]
            seen = {
                "rows": rows,
                "child_url": child[0].url if child else "",
                "xfo": headers.get("x-frame-options"),
                "csp": headers.get("content-security-policy"),
                "refused": refused.value.text,
            }
            page.goto(panel)
            page.locator(f'tr[data-client="{token}"]').wait_for()
            return seen

        seen = await browser.in_browser(drive)
        self.assertEqual(seen["xfo"], "DENY")
        self.assertEqual(seen["csp"], "frame-ancestors 'none'")
        self.assertEqual(seen["rows"], 0)
        self.assertFalse(seen["child_url"].startswith(relay.admin), seen["child_url"])
        self.assertIn("frame-ancestors 'none'", seen["refused"])
