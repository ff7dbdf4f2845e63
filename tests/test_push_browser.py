"""The console's service worker, push notifications and install manifest in a real Chromium (issue 22).

arpc pushes to the test's own push service on loopback (``--push-allow``); the test decrypts the
message with the subscription keys it made, then hands the plaintext to the console's service
worker with the Chrome DevTools Protocol (``ServiceWorker.deliverPushMessage``: headless Chromium
has no push service of its own). The worker's notification and its Allow action are driven
through Playwright's handle on the worker.
"""

from __future__ import annotations

import json
import time

from twisted.internet.threads import deferToThread
from twisted.web import server

from tests import browser
from tests.command_helpers import Workspace, start_command_arpc
from tests.helpers import listen_backend, start_arps
from tests.test_approvals_browser import COMMAND, Client
from tests.test_console_browser import PHONE, _ShortTemp, run_in_browser
from tests.test_push import Device, PushService

WAIT = 20.0


PAGES: list = []  # the browser thread's first page: its waits run Playwright's event loop


def until(check, what: str, timeout: float = WAIT):
    """Poll ``check()`` (in the browser thread) until it returns something true; between tries
    Playwright runs its event loop, which is when DevTools events arrive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        PAGES[-1].wait_for_timeout(50)
    raise AssertionError(f"timed out waiting for {what}")


def worker_of(page, origin: str):
    """The console's service worker (Playwright's handle), once it is active."""
    page.wait_for_function("navigator.serviceWorker.ready.then(r => !!r.active)", timeout=WAIT * 1000)
    return until(
        lambda: next((w for w in page.context.service_workers if w.url.startswith(origin)), None),
        "the service worker",
    )


def registration_id(page, origin: str) -> tuple:
    """The worker's registration id, as the DevTools protocol names it."""
    cdp = page.context.new_cdp_session(page)
    found: dict = {}
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda e: found.update(
            {r["registrationId"]: r for r in e["registrations"] if r["scopeURL"].startswith(origin)}
        ),
    )
    cdp.send("ServiceWorker.enable")
    until(lambda: found, "the registration")
    return cdp, next(iter(found))


class PushBrowserTests(browser.BrowserTestCase):
    """Notifications with answers, on a phone-sized console."""

    timeout = 150

    async def test_push_notification_allow_answers_view_only_refused(self):
        """The console registers its worker on the client's own origin at page load (no
        permission asked); arpc's push for an approval, delivered to it, shows a notification
        with the command and where it runs; its Allow action answers the approval and the agent
        proceeds; on a view-only device the same Allow is refused and the approval stays."""
        service = PushService()
        self.addCleanup(service.close)
        base = f"http://127.0.0.1:{listen_backend(self, server.Site(service))}"
        ws = Workspace(_ShortTemp(self))
        relay = await start_arps(self)
        arpc = await start_command_arpc(
            self, relay, ws, "--permission-mode", "default", "--push-allow", base + "/"
        )
        client = Client(relay.public, arpc.token, arpc.access)
        project = str(ws.project)
        device = Device()
        origin = arpc.url.split("/?", 1)[0]

        def pushed_plaintext(approval_id: str) -> str:
            """What arpc pushed for this approval, decrypted with the subscription's keys."""

            def find() -> dict | None:
                for m in list(service.messages):
                    if m["path"] == "/ok/phone":
                        payload = device.decrypt(m["body"])
                        if payload.get("approvalId") == approval_id:
                            return payload
                return None

            return json.dumps(until(find, "arpc's push"))

        def ask() -> tuple[str, dict]:
            code, session = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_BASH tidy", "projectPath": project},
            )
            assert code == 201, session
            [approval] = client.pending(session["id"])
            return session["id"], approval

        def notification(page, origin: str, payload: str) -> tuple:
            worker = worker_of(page, origin)
            cdp, rid = registration_id(page, origin)
            before = worker.evaluate("async () => (await registration.getNotifications()).length")
            cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": origin + "/", "registrationId": rid, "data": payload},
            )
            until(
                lambda: (
                    worker.evaluate("async () => (await registration.getNotifications()).length") > before
                ),
                "the notification",
            )
            shown = worker.evaluate(
                """async () => (await registration.getNotifications()).map(n => (
                     {title: n.title, body: n.body, tag: n.tag, data: n.data,
                      actions: (n.actions || []).map(a => a.action)}))"""
            )
            return worker, shown[-1]

        def drive(page):
            PAGES.append(page)
            seen: dict = {}
            # the subscription the push service gets (headless Chromium cannot subscribe itself)
            code, sub = client.call(
                "POST", "/api/push/subscriptions", device.subscription(base + "/ok/phone")
            )
            assert code == 201, sub
            code, viewer = client.call("POST", "/api/tokens", {"name": "view only", "scopes": ["view"]})
            assert code == 201, viewer
            page.context.grant_permissions(["notifications"], origin=origin)
            page.add_init_script(
                """window.__asked = false;
                   const ask = Notification.requestPermission.bind(Notification);
                   Notification.requestPermission = (...a) => { window.__asked = true; return ask(...a); };"""
            )
            page.goto(arpc.url)
            page.wait_for_selector("text=Projects")
            seen["scope"] = page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
            seen["permission_after_load"] = page.evaluate("Notification.permission")
            seen["asked_on_load"] = page.evaluate("window.__asked || false")
            sid, approval = ask()
            payload = pushed_plaintext(approval["id"])
            seen["payload"] = json.loads(payload)
            worker, seen["shown"] = notification(page, origin, payload)
            # a tap (no action) opens the session in the open console
            seen["tap"] = worker.evaluate(
                """async (aid) => {
                     const [n] = await registration.getNotifications({tag: "approval-" + aid});
                     return await self.answerFromNotification(n, "");
                   }""",
                approval["id"],
            )
            page.wait_for_function(f"location.hash === '#/session/{sid}'")
            seen["answer"] = worker.evaluate(
                """async (aid) => {
                     const [n] = await registration.getNotifications({tag: "approval-" + aid});
                     return await self.answerFromNotification(n, "allow");
                   }""",
                approval["id"],
            )
            seen["after"] = until(
                lambda: (lambda c, b: b if b["status"] in ("completed", "failed") else None)(
                    *client.call("GET", f"/api/sessions/{sid}")
                ),
                "the session to finish",
            )
            seen["answered_by"] = client.call("GET", f"/api/sessions/{sid}/approvals/{approval['id']}")[1]
            # a view-only device: its own context (cookies), the share link, the same action
            phone = page.context.browser.new_context(viewport=PHONE)
            try:
                phone.grant_permissions(["notifications"], origin=origin)
                other = phone.new_page()
                other.set_default_timeout(15000)
                other.goto(viewer["link"])
                other.wait_for_selector("#view")
                sid2, approval2 = ask()
                payload2 = pushed_plaintext(approval2["id"])
                worker2, seen["shown2"] = notification(other, origin, payload2)
                seen["refused"] = worker2.evaluate(
                    """async (aid) => {
                         const [n] = await registration.getNotifications({tag: "approval-" + aid});
                         return await self.answerFromNotification(n, "allow");
                       }""",
                    approval2["id"],
                )
                seen["still"] = client.call("GET", f"/api/sessions/{sid2}/approvals/{approval2['id']}")[1]
                seen["refusal_note"] = worker2.evaluate(
                    "async () => (await registration.getNotifications()).map(n => n.title + ': ' + n.body)"
                )
                client.call("POST", f"/api/sessions/{sid2}/approvals/{approval2['id']}", {"decision": "deny"})
            finally:
                phone.close()
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(seen["scope"], origin + "/")
        self.assertFalse(seen["asked_on_load"])
        payload = seen["payload"]
        self.assertEqual(payload["event"], "approval")
        self.assertNotIn("url", payload)
        shown = seen["shown"]
        self.assertIn("Bash", shown["title"])
        self.assertIn(COMMAND, shown["body"])
        self.assertIn(str(ws.project), shown["body"])
        self.assertEqual(shown["actions"], ["allow", "deny"])
        self.assertEqual(shown["data"]["approvalId"], payload["approvalId"])
        self.assertEqual(seen["tap"], {"opened": f"{origin}/#/session/{seen['payload']['sessionId']}"})
        self.assertEqual(seen["answer"], {"ok": True, "message": "Allowed"})
        self.assertEqual(seen["after"]["status"], "completed")
        self.assertEqual(seen["answered_by"]["status"], "allowed")
        self.assertTrue(seen["answered_by"]["answeredBy"], seen["answered_by"])
        self.assertFalse(seen["refused"]["ok"], seen["refused"])
        self.assertIn("approve", seen["refused"]["message"])
        self.assertEqual(seen["still"]["status"], "pending")
        self.assertTrue(
            any(n.startswith("Could not answer: Not answered") for n in seen["refusal_note"]), seen
        )

    async def test_installable_manifest_and_icons(self):
        """The console is installable: Chromium finds the manifest (standalone, opens on the
        session list) and its icons, with no installability error; light and dark theme colours."""
        ws = Workspace(_ShortTemp(self))
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws)
        origin = arpc.url.split("/?", 1)[0]

        def drive(page):
            PAGES.append(page)
            page.goto(arpc.url)
            page.wait_for_selector("text=Projects")
            worker_of(page, origin)
            cdp = page.context.new_cdp_session(page)
            manifest = cdp.send("Page.getAppManifest")
            errors = cdp.send("Page.getInstallabilityErrors")
            srcs = [icon["src"] for icon in json.loads(manifest["data"])["icons"]]
            icons = page.evaluate(
                """async (srcs) => Promise.all(srcs.map(async (src) => {
                     const r = await fetch(src);
                     return [src, r.status, r.headers.get("content-type")]; }))""",
                srcs,
            )
            themes = page.evaluate(
                "[...document.querySelectorAll('meta[name=theme-color]')].map(m => [m.media, m.content])"
            )
            return manifest, errors, themes, icons

        manifest, errors, themes, icons = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(manifest["errors"], [], manifest)
        self.assertEqual(manifest["url"], origin + "/manifest.webmanifest")
        data = json.loads(manifest["data"])
        self.assertEqual(data["display"], "standalone")
        self.assertEqual(data["start_url"], "./#/sessions")
        # Playwright's contexts are incognito ones, where Chromium never installs; nothing else
        ids = [e["errorId"] for e in errors["installabilityErrors"]]
        self.assertEqual([e for e in ids if e != "in-incognito"], [], errors)
        self.assertEqual(len(icons), 4)
        for src, status, kind in icons:
            self.assertEqual(status, 200, src)
            self.assertTrue(kind.startswith("image/"), (src, kind))
        self.assertEqual(
            {media for media, _ in themes}, {"(prefers-color-scheme: light)", "(prefers-color-scheme: dark)"}
        )

    async def test_permission_asked_only_by_the_button(self):
        """Loading the console asks nothing; the Notifications button asks for permission, and
        where the browser cannot subscribe (headless Chromium has no push service) it says why
        next to the button, with nothing registered at arpc."""
        ws = Workspace(_ShortTemp(self))
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws)
        client = Client(relay.public, arpc.token, arpc.access)

        def drive(page):
            PAGES.append(page)
            page.add_init_script(
                """window.__asked = 0;
                   const ask = Notification.requestPermission.bind(Notification);
                   Notification.requestPermission = (...a) => { window.__asked += 1; return ask(...a); };"""
            )
            page.goto(arpc.url)
            page.wait_for_selector("text=Projects")
            page.evaluate("location.hash = '#/devices'")
            page.wait_for_selector("#push-enable")
            before = page.evaluate("window.__asked")
            off_visible = page.locator("#push-disable").is_visible()
            page.click("#push-enable")
            page.wait_for_function("document.getElementById('push-error').textContent !== ''")
            return before, off_visible, page.evaluate("window.__asked"), page.inner_text("#push-error")

        before, off_visible, after, error = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(before, 0)
        self.assertFalse(off_visible)
        self.assertEqual(after, 1)
        self.assertTrue(error.startswith("Notifications not turned on: "), error)
        code, listed = await deferToThread(client.call, "GET", "/api/push/subscriptions")
        self.assertEqual((code, listed), (200, {"subscriptions": []}))
