"""The command-mode web console in a real browser, through a real arps + ``arpc --command-mode``."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests import browser
from tests.command_helpers import (
    CLAUDE_ID,
    Api,
    Workspace,
    _jsonl,
    claude_line,
    process_running,
    start_command_arpc,
    write_claude_history,
)
from tests.helpers import HTTPClient, start_arps

MARKDOWN_ID = "44444444-2222-4333-8444-555555555555"
MARKDOWN_TEXT = (
    "## Plan\n\nThe **build** uses `make`:\n\n- one item\n- another item\n\n"
    "```sh\nmake test\n```\n\n<script>window.pwned = 1</script> and [a link](https://example.com/)"
)
DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
IN_DOCS = {"projects", "history", "new", "session", "sessions", "live-phone-dark", "error", "devices"}
PHONE = {"width": 390, "height": 844}


def shot(page, name: str, full_page: bool = False) -> str:
    """Save a screenshot under ``_trial_temp/screenshots/console-<name>.png``."""
    path = os.path.join(browser.screenshot_dir(), f"console-{name}.png")
    size = page.viewport_size
    if full_page:  # a tall viewport rather than full_page=True, which repeats the sticky header
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 2400)})
    page.screenshot(path=path)
    page.set_viewport_size(size)
    if os.environ.get("ARP_UPDATE_SCREENSHOTS") and name in IN_DOCS:  # refresh the ones the docs show
        shutil.copy(path, DOCS_SHOTS / os.path.basename(path))
    return path


def run_in_browser(drive, *args, **kw):
    """:func:`browser.in_browser`, saving a screenshot and the page's console if ``drive`` fails."""

    def wrapped(page, *a):
        logs: list[str] = []
        page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        try:
            return drive(page, *a)
        except Exception:
            # the test's own name (Class.test_x), so one test's failure does not overwrite another's
            name = getattr(drive, "__qualname__", "drive").split(".<locals>")[0]
            page.screenshot(path=os.path.join(browser.screenshot_dir(), f"FAILED-{name}.png"))
            with open(os.path.join(browser.screenshot_dir(), f"FAILED-{name}.log"), "w") as f:
                f.write(page.url + "\n" + "\n".join(logs) + "\n" + page.content())
            raise

    return browser.in_browser(wrapped, *args, **kw)


def start_live_session(page, project: str, prompt: str, answers: int) -> None:
    """From the open console's project list, start ``prompt`` in ``project``; wait until its
    stream is live and shows ``answers`` assistant messages."""
    page.locator("#projects .row").first.wait_for()
    page.locator("a[data-nav=new]").click()
    page.locator("#project").fill(project)
    page.locator("#prompt").fill(prompt)
    page.locator("#start").click()
    page.locator("#conn[data-state=live]").wait_for()
    page.wait_for_function(f"() => document.querySelectorAll('#events .msg.assistant').length >= {answers}")


def ticks_in(page) -> list[int]:
    """The numbers of the ``tick N`` bubbles the page shows, in order."""
    texts = page.locator("#events .msg.assistant .md").all_inner_texts()
    return [int(m.group(1)) for t in texts if (m := re.fullmatch(r"tick (\d+)", t.strip()))]


class _ShortTemp:
    """Hands :class:`Workspace` a short temp dir, so paths on screenshots stay readable."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.test = test
        self.addCleanup = test.addCleanup

    def mktemp(self) -> str:
        base = tempfile.mkdtemp(prefix="arp-")
        self.test.addCleanup(shutil.rmtree, base, True)
        return os.path.join(base, "w")


class ConsoleBrowserTests(browser.BrowserTestCase):
    """A user opens the Public URL on a phone or a desktop and drives agents from the console."""

    timeout = 90

    async def _setup(self, *extra: str) -> str:
        self.ws = Workspace(_ShortTemp(self))
        self.history = write_claude_history(self.ws.claude, str(self.ws.project))
        d = next((self.ws.claude / "projects").glob("*my-proj"))
        (d / f"{MARKDOWN_ID}.jsonl").write_text(
            _jsonl(
                [
                    claude_line("user", 1, None, "Make a *plan*", str(self.ws.project), MARKDOWN_ID),
                    claude_line(
                        "assistant",
                        2,
                        1,
                        [{"type": "text", "text": MARKDOWN_TEXT}],
                        str(self.ws.project),
                        MARKDOWN_ID,
                    ),
                ]
            )
        )
        self.relay = await start_arps(self)
        self.arpc = await start_command_arpc(self, self.relay, self.ws, *extra)
        self.origin = self.arpc.url.split("/?", 1)[0]  # the client's own address (its own port)
        return self.arpc.url  # …/?token=<client id>&access=<owner token>

    async def test_assets_are_served_with_types_and_no_cache(self):
        """``/`` is index.html; the modules are text/javascript; nothing is cached stale."""
        await self._setup()
        client = HTTPClient(self)
        token = {"X-ARP-Token": self.arpc.token}
        bodies = {}
        for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")):
            response, bodies[path] = await client.request("GET", self.relay.public + path, token)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(kind), path)
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"], path)
        self.assertIn(b'<script type="module" src="app.js">', bodies["/"])
        response, body = await client.request("GET", self.relay.public + "/no-such-file.js", token)
        self.assertEqual(response.code, 404)
        self.assertIn(b'"error"', body)

    async def test_history_start_stream_and_follow_up(self):
        """Projects, a history session rendered as markdown with folded tool calls, a new session
        streamed live, a follow-up, and the session list (desktop, light)."""
        url = await self._setup()
        project = str(self.ws.project)
        token = self.arpc.token

        def drive(page):
            seen = {}
            page.goto(url)
            # the relay answered with a 302 (routing cookie), then arpc with a 302 (access cookie):
            # neither the client id nor the access token is left in the address bar
            seen["url"] = page.url
            page.locator(f'#projects a[data-project="{project}"]').wait_for()
            seen["projects"] = page.locator("#projects .row .path").all_inner_texts()
            shot(page, "projects")

            page.locator(f'#projects a[data-project="{project}"]').click()
            page.locator(f'a[data-history="{CLAUDE_ID}"]').wait_for()
            seen["titles"] = page.locator("#history-sessions .name").all_inner_texts()
            page.locator(f'a[data-history="{CLAUDE_ID}"]').click()
            page.get_by_text("There is a README.").wait_for()
            call = page.locator("details.tool-call").first
            seen["call_open_before"] = call.get_attribute("open")
            seen["call_summary"] = call.locator("summary").inner_text()
            call.locator("summary").click()
            seen["call_body"] = call.locator("pre").inner_text()
            seen["result"] = page.locator("details.tool-result pre").first.text_content()
            seen["roles"] = page.locator("#messages .msg .role").all_inner_texts()
            seen["times"] = page.locator("#messages .msg time").count()
            shot(page, "history", full_page=True)

            page.goto(f"{self.origin}/#/history/{MARKDOWN_ID}")
            md = page.locator("#messages .msg.assistant .md")
            md.locator("h2").wait_for()
            seen["md"] = {
                "h2": md.locator("h2").inner_text(),
                "strong": md.locator("strong").inner_text(),
                "code": md.locator("p code").inner_text(),
                "items": md.locator("li").all_inner_texts(),
                "pre": md.locator("pre code").inner_text(),
                "scripts": md.locator("script").count(),
                "href": md.locator("a").get_attribute("href"),
                "pwned": page.evaluate("window.pwned === undefined"),
                "user_em": page.locator("#messages .msg.user em").inner_text(),
            }
            shot(page, "markdown")

            # start a session from the form; the project list offers the known projects
            page.locator("a[data-nav=new]").click()
            page.locator("#prompt").fill("hello console")
            page.locator("#project").fill(project)
            page.locator(f'#known-projects option[value="{project}"]').wait_for(state="attached")
            seen["options"] = page.locator("#known-projects option").evaluate_all(
                "els => els.map(e => e.value)"
            )
            page.locator("#model").fill("sonnet")
            shot(page, "new")
            page.locator("#start").click()
            page.locator("#events .msg.assistant", has_text="Claude says: hello console").wait_for()
            page.locator('#status .pill[data-status="completed"]').wait_for()
            # streamed as it was written (text deltas), then the whole message: shown once
            answer = page.locator("#events .msg.assistant", has_text="Claude says: hello console")
            seen["answers"] = answer.count()
            seen["streaming"] = page.locator("#events .msg.streaming").count()
            seen["session_url"] = page.url
            seen["session_parts"] = {
                "tool": page.locator("#events details.tool-call summary").first.inner_text(),
                "user": page.locator("#events .msg.user .md").first.inner_text(),
                "end": page.locator("#events .note.end").inner_text(),
            }

            page.locator("#follow-up").fill("and more")
            page.locator("#send").click()
            page.locator("#events .msg.assistant", has_text="Claude says: and more").wait_for()
            page.locator('#events .note.end[data-status="completed"]').nth(1).wait_for()
            page.locator('#status .pill[data-status="completed"]').wait_for()
            seen["users"] = page.locator("#events .msg.user .md").all_inner_texts()
            seqs = page.locator("#events [data-seq]").evaluate_all("els => els.map(e => +e.dataset.seq)")
            seen["seqs"] = seqs
            shot(page, "session", full_page=True)

            page.locator("a[data-nav=sessions]").click()
            page.locator("#sessions a[data-session]").wait_for()
            seen["rows"] = page.locator("#sessions a[data-session]").all_inner_texts()
            shot(page, "sessions")
            return seen

        seen = await run_in_browser(drive)
        self.assertEqual((seen["answers"], seen["streaming"]), (1, 0))
        self.assertEqual(seen["url"], f"{self.origin}/")
        self.assertNotIn(token, seen["url"])
        self.assertNotIn("access", seen["url"])
        self.assertIn(project, seen["projects"])
        self.assertNotIn("/srv/a_b c", seen["projects"])  # outside --project-root: not shown
        self.assertIn("File listing", seen["titles"])
        self.assertIsNone(seen["call_open_before"])  # folded until tapped
        self.assertIn("Bash: ls", seen["call_summary"])
        self.assertIn('"command": "ls"', seen["call_body"])
        self.assertEqual(seen["result"], "README.md\nsrc")
        self.assertEqual(seen["roles"], ["You", "Assistant"])
        self.assertEqual(seen["times"], 2)
        md = seen["md"]
        self.assertEqual(md["h2"], "Plan")
        self.assertEqual(md["strong"], "build")
        self.assertEqual(md["code"], "make")
        self.assertEqual(md["items"], ["one item", "another item"])
        self.assertEqual(md["pre"], "make test")
        self.assertEqual(md["scripts"], 0)
        self.assertTrue(md["pwned"])
        self.assertEqual(md["href"], "https://example.com/")
        self.assertEqual(md["user_em"], "plan")
        self.assertIn(project, seen["options"])
        self.assertIn("#/session/", seen["session_url"])
        self.assertIn("Bash: ls", seen["session_parts"]["tool"])
        self.assertEqual(seen["session_parts"]["user"], "hello console")
        self.assertIn("completed", seen["session_parts"]["end"])
        self.assertEqual(seen["users"], ["hello console", "and more"])
        self.assertEqual(seen["seqs"], sorted(set(seen["seqs"])))
        # every event is on the page but Claude's text deltas, which grew the answer's bubble, and
        # the whole answer after them, which became that bubble (one per turn)
        sid = seen["session_url"].rsplit("/", 1)[1]
        api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        code, detail = await api.get(f"/api/sessions/{sid}")
        self.assertEqual(code, 200)
        missing = set(range(1, max(seen["seqs"]) + 1)) - set(seen["seqs"])
        kinds = {e["seq"]: e.get("data", {}).get("type") for e in detail["events"] if e["seq"] in missing}
        self.assertEqual(set(kinds.values()), {"stream_event", "assistant"}, kinds)
        self.assertEqual(list(kinds.values()).count("assistant"), 2, kinds)
        self.assertEqual(len(seen["rows"]), 1)
        self.assertIn("hello console", seen["rows"][0])
        self.assertIn("completed", seen["rows"][0])
        self.assertTrue(self.ws.recorded_for("and more")[0]["resume"])  # the same Claude conversation

    async def test_live_stream_reconnects_and_cancel_on_a_phone_in_dark_mode(self):
        """A long run streams live; the socket drops and the console reconnects with since= (no
        repeats, no gaps); Cancel stops the agent and shows cancelled (390x844, dark)."""
        url = await self._setup()
        project = str(self.ws.project)

        def drive(page):
            urls: list[str] = []

            def route(ws):
                urls.append(ws.url)
                server = ws.connect_to_server()
                if len(urls) > 1:
                    return
                count = [0]

                def forward(message):
                    if count[0] >= 5:
                        return
                    ws.send(message)
                    count[0] += 1
                    if count[0] == 5:  # the network drops after five events
                        server.close(code=1001, reason="gone")
                        ws.close(code=4000, reason="network dropped")

                server.on_message(forward)

            page.route_web_socket(re.compile(r".*/stream\?.*"), route)
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(url)
            start_live_session(page, project, "LONG run from a phone", 15)
            # the first socket has dropped and the second has brought news (on a loaded machine the
            # page's first load can already show 15 answers while the first socket is still live)
            page.wait_for_function(
                "() => { const s = window.arpConsoleStream; return s.connections === 2 && s.ws !== null"
                " && s.lastSeq > +new URL(s.ws.url).searchParams.get('since'); }"
            )
            # the phone's network comes back (or it wakes up): the console starts over from since=
            page.evaluate("window.dispatchEvent(new Event('online'))")
            page.wait_for_function("() => document.querySelectorAll('#events .msg.assistant').length >= 25")
            page.locator("#conn[data-state=live]").wait_for()
            shot(page, "live-phone-dark")
            page.locator("#cancel").click()
            page.locator('#status .pill[data-status="cancelled"]').wait_for()
            page.locator('#events .note.end[data-status="cancelled"]').wait_for()
            seqs = page.locator("#events [data-seq]").evaluate_all("els => els.map(e => +e.dataset.seq)")
            shot(page, "cancelled-phone-dark")
            return urls, ticks_in(page), seqs

        urls, ticks, seqs = await run_in_browser(drive, viewport=PHONE, color_scheme="dark")
        self.assertEqual(len(urls), 3, urls)
        first_since = int(parse_qs(urlsplit(urls[0]).query)["since"][0])
        second_since = int(parse_qs(urlsplit(urls[1]).query)["since"][0])
        self.assertEqual(second_since, first_since + 5)  # exactly what the page had seen
        self.assertGreater(int(parse_qs(urlsplit(urls[2]).query)["since"][0]), second_since)
        self.assertEqual(ticks, list(range(len(ticks))))  # no repeats, no gaps
        self.assertGreaterEqual(len(ticks), 25)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        run = self.ws.recorded_for("LONG run from a phone")[0]
        self.assertFalse(process_running(run["pid"]))
        self.assertFalse(process_running(run["child"]))

    async def test_network_back_while_asking_why_leaves_one_live_socket(self):
        """A phone on a train: the stream drops in a tunnel, the reconnect cannot connect, and the
        console asks the API why; that request hangs. Out of the tunnel the browser says 'online':
        the console connects at once and is live. When the hanging request finally fails, the
        console stays live on that one socket: no second socket beside it, no "retrying" over
        "live" (the page runs on a fake clock, moved past every reconnect delay at the end)."""
        url = await self._setup()
        project = str(self.ws.project)
        asking = re.compile(r".*/api/sessions/[^/?]+\?since=\d+$")

        def drive(page):
            urls: list[str] = []
            sockets = []
            held = []

            def route(ws):
                urls.append(ws.url)
                sockets.append(ws)
                ws.connect_to_server()

            page.clock.install()
            # a failed fetch, then api()'s and retry()'s continuations, all in one microtask checkpoint
            page.add_init_script(
                "window.__fetchFailed = 0; const realFetch = window.fetch;"
                "window.fetch = (...a) => realFetch(...a).catch((e) => { window.__fetchFailed++; throw e; });"
            )
            page.route_web_socket(re.compile(r".*/stream\?.*"), route)
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(url)
            start_live_session(page, project, "LONG run on a train", 1)
            page.route(asking, lambda route: held.append(route))
            page.context.set_offline(True)  # into the tunnel
            sockets[0].close(code=4000, reason="network dropped")
            with page.expect_request(asking):  # the reconnect could not connect: it asks the API why
                page.clock.run_for(1000)  # past the first reconnect delay
            for _ in range(100):  # the route's event follows the request's; a round trip or two
                if held:
                    break
                page.evaluate("0")
            page.context.set_offline(False)  # out of the tunnel: the browser fires 'online'
            page.locator("#conn[data-state=live]").wait_for()
            held[0].abort("internetdisconnected")  # the question finally fails
            page.wait_for_function("() => window.__fetchFailed === 1")
            page.clock.run_for(60000)  # past every reconnect delay
            after = page.evaluate(
                "() => ({connections: window.arpConsoleStream.connections,"
                " state: document.querySelector('#conn').dataset.state,"
                " text: document.querySelector('#conn').textContent})"
            )
            page.unroute(asking)
            page.wait_for_function("() => document.querySelectorAll('#events .msg.assistant').length >= 3")
            page.locator("#cancel").click()
            page.locator('#events .note.end[data-status="cancelled"]').wait_for()
            return urls, after, ticks_in(page)

        urls, after, ticks = await run_in_browser(drive, viewport=PHONE)
        # the first socket, the one that could not connect, the one the 'online' kick opened
        self.assertEqual(after, {"connections": 3, "state": "live", "text": "● live"})
        self.assertEqual(len(urls), 3, urls)
        self.assertEqual(ticks, list(range(len(ticks))))
        run = self.ws.recorded_for("LONG run on a train")[0]
        self.assertFalse(process_running(run["pid"]))

    async def test_known_project_never_lands_in_a_field_the_user_is_in(self):
        """The New form fills the project field with a known project once the list loads, but
        not while the user is in the (empty) field: what they type stays exactly what they typed.
        The list is held back until the field has focus (the tap-then-type of a slow phone, and
        Playwright's fill: focus, then insert), which doubled the path before."""
        url = await self._setup()
        project = str(self.ws.project)
        origin = self.origin

        def drive(page):
            held = []
            known = f'#known-projects option[value="{project}"]'
            page.goto(url)
            page.locator("#projects .row").first.wait_for()
            page.route(re.compile(r".*/api/claude/projects$"), lambda route: held.append(route))
            with page.expect_request(re.compile(r".*/api/claude/projects$")):
                page.goto(f"{origin}/#/new")
            field = page.locator("#project")
            field.focus()  # the user is in the empty field...
            for _ in range(100):  # the route's event follows the request's; a round trip or two
                if held:
                    break
                page.evaluate("0")
            held[0].continue_()  # ...when the known projects arrive
            page.locator(known).wait_for(state="attached")  # the prefill was decided in that step
            page.keyboard.insert_text(project)
            typed = field.input_value()
            # not in the field: the first known project is offered as before
            page.unroute(re.compile(r".*/api/claude/projects$"))
            page.locator("a[data-nav=projects]").click()
            page.locator("#projects .row").first.wait_for()
            page.locator("a[data-nav=new]").click()
            page.locator(known).wait_for(state="attached")
            return typed, field.input_value()

        typed, offered = await run_in_browser(drive)
        self.assertEqual(typed, project)
        self.assertEqual(offered, project)

    async def test_failures_are_shown_in_words(self):
        """Bad input (an empty prompt), a missing agent CLI (naming the flag to set), and an
        offline client (the relay's 503) each appear as a sentence on the page."""
        url = await self._setup("--codex-path", "/nonexistent/codex")
        project = str(self.ws.project)
        arpc = self.arpc

        def drive(page):
            seen = {}
            page.goto(url)
            page.locator("#projects .row").first.wait_for()
            page.locator("a[data-nav=new]").click()
            page.locator("#project").fill(project)
            page.locator("#start").click()
            error = page.locator("#new-error")
            error.filter(has_text="prompt").wait_for()
            seen["empty"] = error.inner_text()
            seen["codex_option"] = page.locator("#executor option[value=Codex]").inner_text()
            page.locator("#prompt").fill("hi")
            page.locator("#executor").select_option("Codex")
            page.locator("#start").click()
            error.filter(has_text="--codex-path").wait_for()
            seen["missing"] = error.inner_text()
            shot(page, "error")
            page.locator("#executor").select_option("Claude")
            page.locator("#project").fill("/etc")
            page.locator("#start").click()
            error.filter(has_text="project-root").wait_for()
            seen["outside"] = error.inner_text()

            page.locator("a[data-nav=sessions]").click()
            page.locator("#sessions .empty").wait_for()
            threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(arpc.kill()))
            box = page.locator("#sessions-error")
            box.filter(has_text="offline").wait_for()
            seen["offline"] = box.inner_text()
            shot(page, "offline")
            return seen

        seen = await run_in_browser(drive)
        self.assertEqual(seen["empty"], "Bad input: prompt is required: a non-empty string")
        self.assertIn("not found: set --codex-path", seen["codex_option"])
        self.assertTrue(
            seen["missing"].startswith("Unavailable: the Codex CLI was not found"), seen["missing"]
        )
        self.assertIn("--codex-path /path/to/codex", seen["missing"])
        self.assertTrue(seen["outside"].startswith("Bad input: projectPath '/etc'"), seen["outside"])
        self.assertIn("Unavailable: client is offline", seen["offline"])

    async def test_follow_up_from_another_device_appears(self):
        """A finished session is open on the phone; a follow-up is sent from another device (the
        API): the open page shows the new turn and its answer without a reload (issue 20 #13)."""
        url = await self._setup()
        api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        new = {"executor": "Claude", "prompt": "first here", "projectPath": str(self.ws.project)}
        code, session = await api.post("/api/sessions", new)
        self.assertEqual(code, 201, session)
        await api.wait_status(session["id"], ("completed",))
        sid = session["id"]

        def follow_up() -> None:
            async def send() -> None:
                code, body = await api.post(f"/api/sessions/{sid}/messages", {"prompt": "sent from the desk"})
                assert code == 202, body

            threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(send()))

        def drive(page):
            loads = []
            page.on("load", lambda _: loads.append(1))
            page.goto(url)
            page.locator("#projects .row").first.wait_for()
            page.goto(f"{self.origin}/#/session/{sid}")
            page.locator('#events .note.end[data-status="completed"]').wait_for()
            before = len(loads)
            follow_up()
            page.locator("#events .msg.user", has_text="sent from the desk").wait_for(timeout=20000)
            answer = page.locator("#events .msg.assistant", has_text="Claude says: sent from the desk")
            answer.wait_for(timeout=20000)
            page.locator('#events .note.end[data-status="completed"]').nth(1).wait_for(timeout=20000)
            return {
                "reloads": len(loads) - before,
                "users": page.locator("#events .msg.user .md").all_inner_texts(),
            }

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertEqual(seen["reloads"], 0)
        self.assertEqual(seen["users"], ["first here", "sent from the desk"])

    async def test_codex_and_gemini_sessions_render(self):
        """Codex's items and Gemini's streamed deltas render as text, thinking and folded tools."""
        url = await self._setup()
        project = str(self.ws.project)

        def start(page, executor, prompt):
            page.goto(f"{self.origin}/#/new")
            page.locator("#executor option[value=Gemini]").wait_for(state="attached")
            page.locator("#executor").select_option(executor)
            page.locator("#project").fill(project)
            page.locator("#prompt").fill(prompt)
            page.locator("#start").click()
            page.locator('#events .note.end[data-status="completed"]').wait_for()
            return {
                "assistant": page.locator("#events .msg.assistant .md").all_inner_texts(),
                "tools": page.locator("#events details.tool-call summary").all_inner_texts(),
                "results": page.locator("#events details.tool-result summary").all_inner_texts(),
                "thinking": page.locator("#events details.thinking strong").all_text_contents(),
            }

        def drive(page):
            page.goto(url)
            page.locator("#projects .row").first.wait_for()
            return start(page, "Gemini", "hi gemini"), start(page, "Codex", "hi codex")

        gemini, codex = await run_in_browser(drive)
        self.assertEqual(gemini["assistant"], ["Gemini says: hi gemini"])  # two deltas, one bubble
        self.assertEqual(len(gemini["tools"]), 1)
        self.assertIn("list_directory", gemini["tools"][0])
        self.assertIn("2 items", gemini["results"][0])
        self.assertEqual(codex["assistant"], ["Codex says: hi codex"])
        self.assertIn("shell: bash -lc ls", codex["tools"][0])
        self.assertIn("exit 0", codex["results"][0])
        self.assertEqual(codex["thinking"], ["Thinking"])
