"""The admin panel in a real browser (Chromium driven by Playwright)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests import browser
from tests.helpers import HTTPClient, listen_backend, start_arpc, start_arps


class AdminPanelBrowserTests(unittest.TestCase):
    """An operator opens the panel, sees the client and its counts, and disconnects it."""

    timeout = 120

    def setUp(self):
        why = browser.available()
        if why:
            raise unittest.SkipTest(why)

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
