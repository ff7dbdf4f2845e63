"""Approval and question cards in a real browser on a phone-sized page, through arps + arpc.

Screenshots go to ``_trial_temp/screenshots``; with ``ARP_UPDATE_SCREENSHOTS=1`` the ones the
README shows are copied to ``docs/screenshots``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

from tests import browser
from tests.command_helpers import Workspace, start_command_arpc
from tests.helpers import start_arps
from tests.test_console_browser import PHONE, _ShortTemp, run_in_browser

DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
COMMAND = "rm -rf build"
IN_DOCS = {"card-phone", "diff-phone-dark", "question-phone-dark"}  # the README shows these


def shot(page, name: str) -> str:
    """Save ``approvals-<name>.png`` (and copy it to the docs when asked to)."""
    path = os.path.join(browser.screenshot_dir(), f"approvals-{name}.png")
    page.screenshot(path=path)
    if os.environ.get("ARP_UPDATE_SCREENSHOTS") and name in IN_DOCS:
        shutil.copy(path, DOCS_SHOTS / os.path.basename(path))
    return path


class Client:
    """Blocking JSON calls to the API through the relay, for the browser thread."""

    def __init__(self, public: str, token: str, access: str) -> None:
        self.public = public
        self.token = token
        self.access = access

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        sep = "&" if "?" in path else "?"
        request = urllib.request.Request(
            f"{self.public}{path}{sep}token={self.token}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.access}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def pending(self, session_id: str) -> list[dict]:
        """The session's pending approvals (polled until there is one)."""
        for _ in range(300):
            code, body = self.call("GET", "/api/approvals?status=pending")
            found = [a for a in body["approvals"] if a["sessionId"] == session_id]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"session {session_id} never asked")


class ApprovalBrowserTests(browser.BrowserTestCase):
    """A phone answers the agent: cards appear, a tap lets the agent go on, answers elsewhere show."""

    timeout = 120

    async def _setup(self) -> tuple[str, Client, Workspace]:
        ws = Workspace(_ShortTemp(self))
        (ws.project / "README.md").write_text("Hello wrold\n")
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws, "--permission-mode", "default")
        return arpc.url, Client(relay.public, arpc.token, arpc.access), ws

    async def test_tap_allow_on_a_phone(self):
        """On a 390 px page: the card shows the command and cwd with the "needs you" badge; a tap
        on Allow lets the agent continue and its output streams in; in the background a new
        approval raises a browser notification; a card answered by another device turns resolved
        live; the badge is on every screen."""
        url, client, ws = await self._setup()
        project = str(ws.project)

        def drive(page):
            page.goto(url)
            page.wait_for_selector("text=Projects")
            code, session = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_BASH clean up", "projectPath": project},
            )
            assert code == 201, session
            page.goto(url.split("?")[0] + f"?token={client.token}#/session/{session['id']}")
            card = page.locator(".approval-card[data-status=pending]")
            card.wait_for()
            badge = page.locator("#needs-you")
            badge.wait_for()
            seen = {
                "command": card.locator("pre.cmd").inner_text(),
                "cwd": card.locator(".cwd").inner_text(),
                "badge": badge.inner_text(),
                "width": page.evaluate("document.documentElement.scrollWidth"),
            }
            shot(page, "card-phone")
            started = time.time()
            card.locator("button.allow").click()
            page.locator(".msg.assistant .md", has_text="allowed").wait_for()
            seen["tap_to_output_ms"] = (time.time() - started) * 1000
            page.locator(".approval-card[data-status=allowed]").wait_for()
            seen["outcome"] = page.locator(".approval-card .outcome").inner_text()
            page.locator("#status [data-status=completed]").wait_for()
            page.wait_for_function("document.getElementById('needs-you').hidden")
            seen["badge_after"] = badge.is_hidden()
            # in the background with notifications allowed: a new approval raises one
            page.evaluate(
                """() => {
                  window.notes = [];
                  window.Notification = class {
                    static permission = "granted";
                    constructor(title, options) { window.notes.push([title, options.body]); }
                    close() {}
                  };
                  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
                }"""
            )
            # another device answers while this one watches: the card turns, live
            code, session = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_BASH elsewhere", "projectPath": project},
            )
            page.evaluate("location.hash = '#/sessions'")  # same document: the stubs stay
            badge.wait_for()
            seen["badge_on_list"] = badge.inner_text()
            page.wait_for_function("window.notes && window.notes.length > 0")
            seen["notes"] = page.evaluate("window.notes")
            page.evaluate(f"location.hash = '#/session/{session['id']}'")
            page.locator(".approval-card[data-status=pending]").wait_for()
            [approval] = client.pending(session["id"])
            client.call(
                "POST",
                f"/api/sessions/{session['id']}/approvals/{approval['id']}",
                {"decision": "deny", "message": "not from here"},
            )
            page.locator(".approval-card[data-status=denied]").wait_for()
            seen["denied"] = page.locator(".approval-card[data-status=denied] .outcome").inner_text()
            page.locator(".msg.assistant .md", has_text="denied: not from here").wait_for()
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(seen["command"], COMMAND)
        self.assertIn(str(ws.project), seen["cwd"])
        self.assertIn("1", seen["badge"])
        self.assertLessEqual(seen["width"], PHONE["width"])  # nothing wider than the phone
        self.assertIn("Allowed by owner", seen["outcome"])
        self.assertTrue(seen["badge_after"])
        self.assertIn("1", seen["badge_on_list"])
        self.assertIn(["Claude needs approval", COMMAND], seen["notes"])
        self.assertIn("Denied by owner", seen["denied"])
        print(f"\ntap on Allow -> the agent's output on the page: {seen['tap_to_output_ms']:.0f} ms")

    async def test_diff_and_question_cards_dark(self):
        """An edit shows its path and diff; a command made of markup stays text (no element, no
        script run); a question card takes a choice and several checkboxes (phone, dark)."""
        url, client, ws = await self._setup()
        project = str(ws.project)

        def drive(page):
            base = url.split("?")[0] + f"?token={client.token}"
            page.goto(url)
            page.wait_for_selector("text=Projects")
            code, edit = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_EDIT fix the typo", "projectPath": project},
            )
            page.goto(f"{base}#/session/{edit['id']}")
            card = page.locator(".approval-card[data-status=pending]")
            card.wait_for()
            seen = {"diff": card.locator("pre.diff").inner_text()}
            card.evaluate("el => el.scrollIntoView({block: 'start'})")
            page.evaluate("window.scrollBy(0, -60)")  # below the sticky header
            shot(page, "diff-phone-dark")
            card.locator("button.deny").click()
            card.locator(".deny-message").fill("use sed instead")
            shot(page, "deny-phone-dark")
            card.locator("button.confirm-deny").click()
            page.locator(".msg.assistant .md", has_text="denied: use sed instead").wait_for()

            # a hostile command: shown as text, never run as markup
            code, hostile = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_BASH HTML", "projectPath": project},
            )
            page.goto(f"{base}#/session/{hostile['id']}")
            card = page.locator(".approval-card[data-status=pending]")
            card.wait_for()
            seen["markup"] = card.locator("pre.cmd").inner_text()
            seen["elements"] = card.locator("img, script").count()
            seen["pwned"] = page.evaluate("window.pwned === undefined ? null : window.pwned")
            card.locator("button.deny").click()
            card.locator("button.confirm-deny").click()
            page.locator(".approval-card[data-status=denied]").wait_for()

            code, ask = client.call(
                "POST",
                "/api/sessions",
                {"executor": "Claude", "prompt": "ASK_QUESTION colors", "projectPath": project},
            )
            page.goto(f"{base}#/approvals")
            card = page.locator(".approval-card[data-kind=question][data-status=pending]")
            card.wait_for()
            card.locator("label.option", has_text="Red").click()
            card.locator("label.option", has_text="Cheese").click()
            card.locator("label.option", has_text="Basil").click()
            shot(page, "question-phone-dark")
            card.locator("button.answer").click()
            page.wait_for_selector(".approval-card[data-kind=question][data-status=allowed]")
            page.goto(f"{base}#/session/{ask['id']}")
            bubble = page.locator(".msg.assistant .md", has_text="answer:")
            bubble.wait_for()
            seen["answer"] = bubble.inner_text()
            return seen

        seen = await run_in_browser(drive, viewport=PHONE, color_scheme="dark")
        self.assertEqual(
            seen["markup"], '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
        )
        self.assertEqual((seen["elements"], seen["pwned"]), (0, None))
        self.assertIn("-Hello wrold", seen["diff"])
        self.assertIn("+Hello world", seen["diff"])
        expected = {"Which color?": "Red", "Which toppings?": "Cheese, Basil"}
        self.assertIn(json.dumps(expected, sort_keys=True), seen["answer"])
