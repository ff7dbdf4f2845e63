"""The console's Devices screen in a real Chromium, through a real arps + ``arpc --command-mode``."""

from __future__ import annotations

from tests import browser
from tests.command_helpers import Api, Workspace, start_command_arpc
from tests.helpers import start_arps
from tests.test_console_browser import PHONE, _ShortTemp, run_in_browser, shot


class DevicesBrowserTests(browser.BrowserTestCase):
    """The owner shares a view-only link with a phone, sees it used, and revokes it."""

    timeout = 120

    async def test_share_link_qr_scope_and_revoke(self):
        """Create a link (QR code shown), open it on a second device that may only view, watch a
        session there; revoking it closes its live stream with words, and its next load shows the
        sign-in screen saying it was revoked; a pasted link signs the device in again."""
        ws = Workspace(_ShortTemp(self))
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws)
        owner = Api(self, relay, arpc.token, arpc.access)
        code, running = await owner.post(
            "/api/sessions", {"executor": "Claude", "prompt": "LONG watch me", "projectPath": str(ws.project)}
        )
        self.assertEqual(code, 201, running)
        base = arpc.url.split("/?", 1)[0]  # the client's own address

        def drive(page):
            seen = {}
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(arpc.url)
            page.locator("#nav-devices").wait_for()
            page.locator("#nav-devices").click()
            page.locator("#devices .device").first.wait_for()
            seen["owner_row"] = page.locator("#devices .device").first.inner_text()
            page.locator("#device-name").fill("Alice's phone")
            page.locator('#device-scopes input[value="prompt"]').uncheck()
            page.locator('#device-scopes input[value="approve"]').uncheck()  # checked by default
            page.locator("#device-expiry").select_option(label="1 day")
            page.locator("#create-link").click()
            page.locator("#link-qr").wait_for()
            page.wait_for_function("document.getElementById('link-qr').complete")
            seen["qr_width"] = page.locator("#link-qr").evaluate("img => img.naturalWidth")
            link = page.locator("#link-text").input_value()
            seen["link"] = link
            seen["made"] = page.locator("#new-link").inner_text()
            page.locator('#devices .device[data-status="active"]', has_text="Alice's phone").wait_for()
            shot(page, "devices", full_page=True)

            phone_context = page.context.browser.new_context(viewport=PHONE)
            phone = phone_context.new_page()
            phone.set_default_timeout(15000)
            phone.goto(link)
            phone.locator("#projects").wait_for()
            seen["phone_url"] = phone.url
            seen["phone_devices_hidden"] = phone.locator("#nav-devices").is_hidden()
            phone.goto(f"{base}/#/session/{running['id']}")
            phone.locator('#conn[data-state="live"]').wait_for()
            phone.locator("#events .msg.assistant").first.wait_for()
            seen["phone_cancel"] = phone.locator("#cancel").count()
            seen["phone_new_hidden"] = phone.locator("[data-nav=new]").is_hidden()
            shot(phone, "devices-phone-watching")

            page.reload()
            row = page.locator("#devices .device", has_text="Alice's phone")
            row.locator("text=last used").wait_for()
            seen["row_used"] = row.inner_text()
            row.locator("button[data-revoke]").click()
            page.locator('#devices .device[data-status="revoked"]', has_text="Alice's phone").wait_for()

            phone.locator("#session-error", has_text="revoked").wait_for()
            seen["phone_stream"] = phone.locator("#session-error").inner_text()
            seen["phone_conn"] = phone.locator("#conn").inner_text()
            phone.reload()
            phone.locator("#signin-reason").wait_for()
            seen["reason"] = phone.locator("#signin-reason").get_attribute("data-reason")
            seen["reason_text"] = phone.locator("#signin-reason").inner_text()
            shot(phone, "devices-phone-revoked")

            # a new link, pasted on the sign-in screen, lets the phone in again
            page.locator("#device-name").fill("Alice's phone, again")
            page.locator("#create-link").click()
            page.locator("#new-link", has_text="again").wait_for()
            fresh = page.locator("#link-text").input_value()
            phone.locator("#access-input").fill("no link here")
            phone.locator("#signin button[type=submit]").click()
            seen["paste_error"] = phone.locator("#signin-error").inner_text()
            phone.locator("#access-input").fill(fresh)
            phone.locator("#signin button[type=submit]").click()
            phone.locator("#projects").wait_for()
            seen["phone_again"] = phone.url
            phone_context.close()
            return seen

        seen = await run_in_browser(drive)
        await owner.delete(f"/api/sessions/{running['id']}")
        self.assertIn("owner", seen["owner_row"])
        self.assertIn("this device", seen["owner_row"])
        self.assertGreater(seen["qr_width"], 100)
        self.assertTrue(seen["link"].startswith(f"{base}/?token={arpc.token}&access=arpa_"), seen["link"])
        self.assertIn("may view until", seen["made"])
        self.assertIn("shown only this once", seen["made"])
        self.assertEqual(seen["phone_url"], f"{base}/")  # neither id nor token left in the address bar
        self.assertTrue(seen["phone_devices_hidden"])
        self.assertEqual(seen["phone_cancel"], 0)  # a view-only device is not offered what it may not do
        self.assertTrue(seen["phone_new_hidden"])
        self.assertIn("last used", seen["row_used"])
        self.assertIn("from 127.0.0.1", seen["row_used"])
        self.assertIn("Your access was revoked", seen["phone_stream"])
        self.assertEqual(seen["phone_conn"], "access ended")
        self.assertEqual(seen["reason"], "revoked")
        self.assertIn("revoked", seen["reason_text"])
        self.assertIn("neither a link", seen["paste_error"])
        self.assertEqual(seen["phone_again"], f"{base}/")

    async def test_view_only_device_is_told_it_may_not_start_agents(self):
        """A view-only device that tries to start a session gets a 403 in words, and no agent runs."""
        ws = Workspace(_ShortTemp(self))
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws)
        owner = Api(self, relay, arpc.token, arpc.access)
        code, made = await owner.post("/api/tokens", {"name": "viewer", "scopes": ["view"]})
        self.assertEqual(code, 201, made)

        def drive(page):
            page.goto(made["link"])
            page.locator("#projects").wait_for()
            page.goto(arpc.url.split("/?", 1)[0] + "/#/new")  # the client's own address
            page.locator("#prompt").fill("should not run")
            page.locator("#project").fill(str(ws.project))
            page.locator("#start").click()
            page.locator("#new-error", has_text="Not allowed").wait_for()
            return page.locator("#new-error").inner_text()

        error = await run_in_browser(drive)
        self.assertIn("lacks the 'prompt' scope", error)
        self.assertEqual(ws.recorded_for("should not run"), [])
