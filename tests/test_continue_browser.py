"""Issue 22 in a real browser on a 390 px phone page, light and dark, through arps + arpc with the
fake agents: "Continue here" on Claude and Codex history sessions, the "what changed" diff view on
a git repository and on a plain directory, and the console's polish (the form's order, the first
screen, errors beside their buttons, the live bar over a card, the share link's QR, the nav a
token may use, the Sessions list, no doubled messages).

Screenshots go to ``_trial_temp/screenshots``; ``ARP_UPDATE_SCREENSHOTS=1`` copies the ones the
README shows to ``docs/screenshots``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests import browser
from tests.command_helpers import (
    CLAUDE_ID,
    CODEX_ID,
    Api,
    Workspace,
    start_command_arpc,
    write_claude_history,
    write_codex_history,
)
from tests.helpers import start_arps
from tests.test_approvals_browser import Client
from tests.test_console_browser import PHONE, _ShortTemp, run_in_browser

DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
IN_DOCS = {
    "continue-phone",
    "continued-phone-dark",
    "changes-phone-dark",
    "changes-plain-phone",
    "sessions-phone-dark",
    "new-phone",
}


def shot(page, name: str) -> str:
    """Save ``phone-<name>.png`` (and copy it to the docs when asked to)."""
    path = os.path.join(browser.screenshot_dir(), f"phone-{name}.png")
    page.screenshot(path=path)
    if os.environ.get("ARP_UPDATE_SCREENSHOTS") and name in IN_DOCS:
        shutil.copy(path, DOCS_SHOTS / os.path.basename(path))
    return path


def git(cwd: str, *args: str) -> str:
    """The test's own git (its fixture repository), bounded, no shell."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, timeout=30, check=True
    ).stdout.decode()


def box(locator) -> dict:
    """A locator's bounding box (it must be shown)."""
    found = locator.bounding_box()
    assert found is not None, locator
    return found


def on_top(page, locator) -> bool:
    """Whether the middle of ``locator`` is what a tap there would hit (nothing covers it)."""
    return locator.evaluate(
        """el => { const r = el.getBoundingClientRect();
                  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
                  return hit === el || el.contains(hit); }"""
    )


class _Base(browser.BrowserTestCase):
    timeout = 120

    async def _setup(self, history: bool = True, *extra: str) -> str:
        self.ws = Workspace(_ShortTemp(self))
        if history:
            write_claude_history(self.ws.claude, str(self.ws.project))
            write_codex_history(self.ws.codex, str(self.ws.project))
        self.relay = await start_arps(self)
        self.arpc = await start_command_arpc(self, self.relay, self.ws, *extra)
        self.origin = self.arpc.url.split("/?", 1)[0]
        self.client = Client(self.relay.public, self.arpc.token, self.arpc.access)
        self.api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        return self.arpc.url


class ContinueHereTests(_Base):
    """A session started at the desk, continued from the phone."""

    async def test_continue_a_claude_and_a_codex_session(self):
        """The project lists both agents' sessions; "Continue here" under a Claude history session
        starts a session that resumes it in its directory and shows its earlier messages above
        the new turn; the same for a Codex rollout, in dark mode."""
        url = await self._setup()
        project = str(self.ws.project)

        def drive(page):
            seen = {}
            page.goto(url)
            row = page.locator(f'#projects a[data-project="{project}"]')
            row.wait_for()
            seen["project_row"] = row.inner_text()
            row.click()
            page.locator(f'a[data-history="{CODEX_ID}"]').wait_for()
            seen["agents"] = page.locator("#history-sessions a[data-history]").evaluate_all(
                "els => els.map(e => e.dataset.agent)"
            )
            page.locator(f'a[data-history="{CLAUDE_ID}"]').click()
            page.get_by_text("There is a README.").wait_for()
            page.locator("#continue-top").click()
            seen["focused"] = page.evaluate("document.activeElement.id")
            page.locator("#continue-prompt").fill("carry on from the phone")
            shot(page, "continue-phone")
            page.locator("#continue").click()
            page.locator("#events .msg.assistant", has_text="Claude says: carry on from the phone").wait_for()
            page.locator('#status .pill[data-status="completed"]').wait_for()
            page.locator("#earlier .msg").first.wait_for()
            seen["claude_url"] = page.url
            seen["earlier"] = page.locator("#earlier").inner_text()
            seen["from"] = page.locator("#resumed-from").inner_text()
            # the earlier messages come before the new turn
            seen["order"] = page.evaluate(
                "document.getElementById('earlier').compareDocumentPosition(document.getElementById('events'))"
            )

            page.emulate_media(color_scheme="dark")
            page.goto(f"{self.origin}/#/project/{project}")
            page.locator(f'a[data-history="{CODEX_ID}"]').click()
            page.get_by_text("Fixed the typo in README.md.").first.wait_for()
            seen["codex_hash"] = page.evaluate("location.hash")
            page.locator("#continue-prompt").fill("now add a test")
            page.locator("#continue").click()
            page.locator('#status .pill[data-status="completed"]').wait_for()
            page.locator("#earlier .msg").first.wait_for()
            seen["codex_earlier"] = page.locator("#earlier").inner_text()
            seen["earlier_texts"] = page.locator("#earlier").evaluate(
                "el => [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)"
            )
            seen["codex_facts"] = page.locator(".facts").inner_text()
            seen["width"] = page.evaluate("document.documentElement.scrollWidth")
            page.evaluate("document.querySelector('#earlier .earlier-end').scrollIntoView({block: 'center'})")
            shot(page, "continued-phone-dark")

            # an id history does not know: the error is shown beside the button
            page.goto(f"{self.origin}/#/history/codex/00000000-0000-4000-8000-000000000000")
            page.locator("#history-error", has_text="no history session").wait_for()
            seen["unknown"] = page.locator("#continue").count()
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertIn("Claude · Codex", seen["project_row"])
        self.assertEqual(sorted(set(seen["agents"])), ["Claude", "Codex"])
        self.assertEqual(seen["focused"], "continue-prompt")
        self.assertIn("#/session/", seen["claude_url"])
        self.assertIn("List the files", seen["earlier"])
        self.assertIn("There is a README.", seen["earlier"])
        self.assertNotIn("carry on from the phone", seen["earlier"])
        self.assertEqual(seen["from"], "List the files")
        self.assertTrue(seen["order"] & 4)  # DOCUMENT_POSITION_FOLLOWING
        self.assertEqual(self.ws.recorded_for("carry on from the phone")[0]["resume"], CLAUDE_ID)
        self.assertEqual(seen["codex_hash"], f"#/history/codex/{CODEX_ID}")
        self.assertIn("Fixed the typo in README.md.", seen["codex_earlier"])
        self.assertEqual(seen["earlier_texts"], [])  # no stray text (a "null") among the parts
        self.assertIn("Codex", seen["codex_facts"])
        self.assertEqual(self.ws.recorded_for("now add a test")[-1]["resume"], CODEX_ID)
        self.assertLessEqual(seen["width"], PHONE["width"])
        self.assertEqual(seen["unknown"], 0)


class ChangesViewTests(_Base):
    """What the agent changed, as a phone shows it."""

    async def test_diff_view_on_a_repository_and_a_plain_directory(self):
        """A git repository (dark): the changed and the new file, line numbers, added and removed
        lines, the unchanged lines above the hunk collapsed, a binary summarised.  A plain
        directory (light): the same from the agent's Write and Edit calls."""
        await self._setup(history=False)
        repo = str(self.ws.project)
        plain = self.ws.root / "plain"
        plain.mkdir()
        git(repo, "init", "-q")
        Path(repo, "README.md").write_text("".join(f"line {i}\n" for i in range(1, 41)) + "Hello wrold\n")
        Path(repo, "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + bytes(range(200)))
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "start")
        (plain / "README.md").write_text("# Title\n\nHello wrold\n")
        code, in_repo = self.client.call(
            "POST", "/api/sessions", {"executor": "Claude", "prompt": "WRITE_FILES here", "projectPath": repo}
        )
        self.assertEqual(code, 201, in_repo)
        await self.api.wait_status(in_repo["id"], ("completed",))
        Path(repo, "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + bytes(range(100)))
        code, in_plain = self.client.call(
            "POST",
            "/api/sessions",
            {"executor": "Claude", "prompt": "WRITE_FILES there", "projectPath": str(plain)},
        )
        self.assertEqual(code, 201, in_plain)
        await self.api.wait_status(in_plain["id"], ("completed",))

        def drive(page):
            seen = {}
            page.goto(self.arpc.url)
            page.locator("#projects").wait_for()
            page.goto(f"{self.origin}/#/session/{in_repo['id']}")
            page.locator("#changes-link").click()
            readme = page.locator('details.file-diff[data-path="README.md"]')
            readme.locator(".dl.add").wait_for()
            seen["total"] = page.locator("#changes-total").inner_text()
            seen["files"] = page.locator("details.file-diff").evaluate_all(
                "els => els.map(e => [e.dataset.path, e.dataset.status, e.open])"
            )
            seen["skip"] = readme.locator(".dl.skip").first.inner_text()
            seen["add"] = readme.locator(".dl.add").inner_text()
            seen["del"] = readme.locator(".dl.del").inner_text()
            seen["add_numbers"] = readme.locator(".dl.add .ln").all_inner_texts()
            seen["del_numbers"] = readme.locator(".dl.del .ln").all_inner_texts()
            seen["logo"] = page.locator('details.file-diff[data-path="logo.png"]').inner_text()
            seen["notes"] = page.locator(
                'details.file-diff[data-path="notes.txt"] .dl.add .tx'
            ).all_inner_texts()
            seen["width"] = page.evaluate("document.documentElement.scrollWidth")
            shot(page, "changes-phone-dark")
            page.emulate_media(color_scheme="light")
            page.goto(f"{self.origin}/#/changes/{in_plain['id']}")
            plain_readme = page.locator('details.file-diff[data-path="README.md"]')
            plain_readme.locator(".dl.add").wait_for()
            seen["plain_total"] = page.locator("#changes-total").inner_text()
            seen["plain_add_numbers"] = plain_readme.locator(".dl.add .ln").all_inner_texts()
            seen["plain_files"] = page.locator("details.file-diff").evaluate_all(
                "els => els.map(e => [e.dataset.path, e.dataset.status])"
            )
            seen["plain_width"] = page.evaluate("document.documentElement.scrollWidth")
            shot(page, "changes-plain-phone")
            return seen

        seen = await run_in_browser(drive, viewport=PHONE, color_scheme="dark")
        self.assertIn("3 files changed", seen["total"])
        self.assertIn("git", seen["total"])
        self.assertEqual(
            sorted(seen["files"]),
            [["README.md", "modified", True], ["logo.png", "modified", True], ["notes.txt", "added", True]],
        )
        self.assertIn("37 unchanged lines above", seen["skip"])
        self.assertIn("Hello world", seen["add"])
        self.assertIn("Hello wrold", seen["del"])
        self.assertEqual([n for n in seen["add_numbers"] if n], ["41"])
        self.assertEqual([n for n in seen["del_numbers"] if n], ["41"])
        self.assertIn("binary file: not shown", seen["logo"])
        self.assertEqual(seen["notes"], ["first line", "second line"])
        self.assertLessEqual(seen["width"], PHONE["width"])
        self.assertIn("2 files changed", seen["plain_total"])
        self.assertIn("edit and write calls", seen["plain_total"])
        self.assertEqual([n for n in seen["plain_add_numbers"] if n], ["3"])
        self.assertEqual(sorted(seen["plain_files"]), [["README.md", "modified"], ["notes.txt", "added"]])
        self.assertLessEqual(seen["plain_width"], PHONE["width"])


class PolishTests(_Base):
    """The console's rough edges of issue 22, at 390 px."""

    async def test_first_screen_form_errors_and_share_link(self):
        """No history: the first screen offers "Start a session"; the form puts the prompt first
        (in view with the keyboard's half of the screen gone); an error appears beside Start; a
        phone link has approve by default, says what each scope allows, and its QR is scrolled
        into view; a view-only device sees no nav item it cannot use, a revoked one none (light)."""
        url = await self._setup(history=False)

        def drive(page):
            seen = {}
            page.goto(url)
            page.locator("#start-first").click()
            page.locator("#new-session").wait_for()
            seen["hash"] = page.evaluate("location.hash")
            seen["order"] = page.locator(
                "#new-session input, #new-session textarea, #new-session select"
            ).evaluate_all("els => els.map(e => e.id)")
            seen["prompt_top"] = box(page.locator("#prompt"))["y"]
            shot(page, "new-phone")
            page.locator("#prompt").fill("hello")
            page.locator("#project").fill("/etc")
            page.locator("#start").click()
            error = page.locator("#new-error", has_text="project-root")
            error.wait_for()
            start, err = box(page.locator("#start")), box(error)
            seen["error_gap"] = err["y"] - (start["y"] + start["height"])
            seen["error_visible"] = 0 <= err["y"] and err["y"] + err["height"] <= PHONE["height"]

            page.locator("#nav-devices").click()
            page.locator("#devices .device").first.wait_for()
            seen["defaults"] = page.locator("#device-scopes input:checked").evaluate_all(
                "els => els.map(e => e.value)"
            )
            seen["help"] = page.locator("#device-scopes").inner_text()
            page.locator("#device-name").fill("Phone")
            page.locator("#create-link").click()
            page.locator("#link-qr").wait_for()
            page.wait_for_function("document.getElementById('link-qr').complete")
            qr = box(page.locator("#link-qr"))
            seen["qr_in_view"] = qr["y"] >= 0 and qr["y"] + qr["height"] <= PHONE["height"]
            seen["made"] = page.locator("#new-link").inner_text()

            code, viewer = self.client.call("POST", "/api/tokens", {"name": "watcher", "scopes": ["view"]})
            assert code == 201, viewer
            other = page.context.browser.new_context(viewport=PHONE)
            watcher = other.new_page()
            watcher.goto(viewer["link"])
            watcher.locator("#projects").wait_for()
            watcher.wait_for_function("document.querySelector('[data-nav=new]').hidden")
            seen["viewer_nav"] = watcher.locator("header nav a:visible").all_inner_texts()
            self.client.call("DELETE", f"/api/tokens/{viewer['id']}")
            watcher.reload()
            watcher.locator("#signin-reason").wait_for()
            seen["revoked_nav"] = watcher.locator("header nav a:visible").all_inner_texts()
            other.close()
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(seen["hash"], "#/new")
        self.assertEqual(seen["order"][:2], ["prompt", "project"])
        self.assertLess(seen["prompt_top"], PHONE["height"] / 2 - 60)  # above a phone keyboard
        self.assertLess(seen["error_gap"], 40)
        self.assertTrue(seen["error_visible"])
        self.assertEqual(seen["defaults"], ["view", "prompt", "approve"])
        self.assertIn("allow or deny what the agent asks to run", seen["help"])
        self.assertTrue(seen["qr_in_view"])
        self.assertIn("may view, prompt, approve", seen["made"])
        self.assertEqual(seen["viewer_nav"], ["Projects", "Sessions"])
        self.assertEqual(seen["revoked_nav"], [])

    async def test_live_bar_sessions_list_and_cancelled_card_dark(self):
        """An agent waits for an approval: during an outage the live bar stays one line and Deny
        is still tappable; the Sessions list shows each session's last message, marks the one
        that needs you and the tab's title counts it; cancelled, the card says so once (dark)."""
        url = await self._setup(False, "--permission-mode", "default")
        project = str(self.ws.project)
        code, done = self.client.call(
            "POST", "/api/sessions", {"executor": "Claude", "prompt": "say hello", "projectPath": project}
        )
        self.assertEqual(code, 201, done)
        await self.api.wait_status(done["id"], ("completed",))

        def drive(page):
            seen = {}
            sockets = []

            def route(ws):
                # nothing that blocks in here: Playwright on PyPy hangs on a blocking call inside a
                # WebSocket route handler (the outage is made from this thread, below)
                sockets.append(ws)
                ws.connect_to_server()

            page.route_web_socket(re.compile(r".*/stream\?.*"), route)
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(url)
            page.locator("#projects").wait_for()
            page.locator("a[data-nav=new]").click()
            page.locator("#prompt").fill("ASK_BASH tidy the build")
            page.locator("#project").fill(project)
            page.locator("#start").click()
            card = page.locator(".approval-card[data-status=pending]")
            card.wait_for()
            page.locator("#conn[data-state=live]").wait_for()
            page.context.set_offline(True)  # the outage: every reconnect fails at once
            sockets[0].close(code=4000, reason="network dropped")
            page.locator("#conn[data-state=reconnecting]").wait_for()
            page.wait_for_function("document.getElementById('conn').textContent.length > 20")
            seen["conn"] = page.locator("#conn").inner_text()
            bar = box(page.locator(".live-bar"))
            seen["bar_height"] = bar["height"]
            deny = card.locator("button.deny")
            # the card's buttons brought to the bottom of the screen, where the bar is
            deny.evaluate("el => el.scrollIntoView({block: 'end'})")
            seen["deny_on_top"] = on_top(page, deny)
            seen["allow_on_top"] = on_top(page, card.locator("button.allow"))
            deny.click()  # Playwright refuses to click what something else covers
            seen["deny_form"] = card.locator(".deny-form").is_visible()
            page.context.set_offline(False)  # the network is back: the console is live again
            page.locator("#conn[data-state=live]").wait_for()

            page.locator("a[data-nav=sessions]").click()
            page.locator("#sessions .row.needs").wait_for()
            page.wait_for_function("document.title.startsWith('(1) ')")
            seen["title"] = page.title()
            seen["needs"] = page.locator("#sessions .row.needs").inner_text()
            seen["last"] = page.locator(
                f'#sessions a[data-session="{done["id"]}"] .last-message'
            ).inner_text()
            shot(page, "sessions-phone-dark")

            page.locator("#sessions .row.needs").click()
            page.locator("#cancel").click()
            page.locator('.approval-card[data-status="cancelled"]').wait_for()
            page.locator('#status .pill[data-status="cancelled"]').wait_for()
            seen["cancelled_card"] = page.locator('.approval-card[data-status="cancelled"]').inner_text()
            seen["facts"] = page.locator(".facts").inner_text()
            page.wait_for_function("!document.title.startsWith('(')")
            return seen

        seen = await run_in_browser(drive, viewport=PHONE, color_scheme="dark")
        self.assertIn("reconnect", seen["conn"])
        self.assertLess(seen["bar_height"], 80)
        self.assertTrue(seen["deny_on_top"])
        self.assertTrue(seen["allow_on_top"])
        self.assertTrue(seen["deny_form"])
        self.assertTrue(seen["title"].startswith("(1) Sessions"), seen["title"])
        self.assertIn("Needs you", seen["needs"])
        self.assertIn("ASK_BASH tidy the build", seen["needs"])
        self.assertEqual(seen["last"], "Claude says: say hello")
        self.assertEqual(seen["cancelled_card"].count("the session was cancelled"), 1, seen["cancelled_card"])
        self.assertNotIn("Error", seen["facts"])
