"""Command mode without the relay: parsers, executors, store, history readers, the tunnel, the stream."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.server import Site

from arp.client.command import history as history_module
from arp.client.command import sessions as sessions_module
from arp.client.command.access import AccessStore
from arp.client.command.executors import (
    EXECUTORS,
    UnsafeSessionId,
    acp_agent,
    digest,
    executor_named,
    gemini_acp_flag,
    permission_mode,
    strip_ansi,
)
from arp.client.command.history import (
    ClaudeHistory,
    CodexHistory,
    GeminiHistory,
    claude_roots,
    gemini_root,
    lines_within,
    sanitize_path,
)
from arp.client.command.process import probe_output
from arp.client.command.sessions import ApiError, SessionManager
from arp.client.command.store import SessionStore
from arp.client.command.tunnel import SiteTunnel
from arp.client.command.web import VIEWER_BUFFER, Guard, StreamProtocol, build_root, make_site
from tests.command_helpers import (
    CLAUDE_ID,
    CODEX_ID,
    GEMINI_ID,
    Workspace,
    fake,
    process_running,
    write_claude_history,
    write_codex_history,
    write_gemini_history,
)
from tests.helpers import wait_until

KEYS = [
    "type",
    "subtype",
    "message",
    "content",
    "text",
    "item",
    "session_id",
    "thread_id",
    "result",
    "usage",
    "errors",
    "is_error",
    "role",
    "delta",
    "status",
    "error",
    "msg",
    "parent_tool_use_id",
    "total_cost_usd",
]
AGENTS_MD_CLAUDE = [
    '{"type":"system","subtype":"init","cwd":"/home/alice/my.proj","session_id":"3f6c2b1e-8d4a-4c1b-9e2f-5a7d0c9b1e42",'
    '"model":"claude-sonnet-4-5-20250929","permissionMode":"bypassPermissions"}',
    '{"type":"assistant","message":{"id":"msg_01Qa","type":"message","role":"assistant","content":[{"type":'
    '"thinking","thinking":"List files first.","signature":"EqQBCkYI"}]},"parent_tool_use_id":null}',
    '{"type":"assistant","message":{"id":"m","role":"assistant","content":[{"type":"text","text":"Hi"}]},'
    '"parent_tool_use_id":null}',
    '{"type":"result","subtype":"success","is_error":false,"result":"There is a README and a src/ folder.",'
    '"session_id":"3f6c2b1e-8d4a-4c1b-9e2f-5a7d0c9b1e42","total_cost_usd":0.0213,"usage":{"input_tokens":14}}',
    '{"type":"result","subtype":"error_max_turns","is_error":true,"session_id":"x","total_cost_usd":0.051,'
    '"errors":["Reached maximum number of turns (3)"]}',
]


class DigestTests(unittest.TestCase):
    """Reading each CLI's JSON lines, tolerating anything unexpected."""

    def test_claude_lines(self):
        """init gives the session id, text blocks give output, result gives cost and failure."""
        init, thinking, text, ok, bad = (digest("Claude", json.loads(x)) for x in AGENTS_MD_CLAUDE)
        self.assertEqual(init.agent_session_id, "3f6c2b1e-8d4a-4c1b-9e2f-5a7d0c9b1e42")
        self.assertIsNone(thinking.text)
        self.assertEqual(text.text, "Hi")
        self.assertEqual(ok.cost_usd, 0.0213)
        self.assertFalse(ok.failed)
        self.assertEqual(ok.result_text, "There is a README and a src/ folder.")
        self.assertTrue(bad.failed)
        self.assertEqual(bad.error, "Reached maximum number of turns (3)")

    def test_claude_old_cost_field_and_subagent_text(self):
        """Pre-June-2025 ``cost_usd`` is read; a sub-agent's text is not the main output."""
        self.assertEqual(
            digest("Claude", {"type": "result", "subtype": "success", "cost_usd": 0.5}).cost_usd, 0.5
        )
        sub = {
            "type": "assistant",
            "message": {"content": [{"type": "text", "text": "x"}]},
            "parent_tool_use_id": "t",
        }
        self.assertIsNone(digest("Claude", sub).text)

    def test_codex_events(self):
        """thread.started, agent_message items, usage, turn.failed and the old msg format."""
        self.assertEqual(
            digest("Codex", {"type": "thread.started", "thread_id": CODEX_ID}).agent_session_id, CODEX_ID
        )
        item = {"type": "item.completed", "item": {"id": "i", "type": "agent_message", "text": "Fixed."}}
        self.assertEqual(digest("Codex", item).text, "Fixed.")
        failed = digest("Codex", {"type": "turn.failed", "error": {"message": "stream disconnected"}})
        self.assertTrue(failed.failed)
        self.assertEqual(failed.error, "stream disconnected")
        usage = digest("Codex", {"type": "turn.completed", "usage": {"input_tokens": 1}})
        self.assertEqual(usage.usage, {"input_tokens": 1})
        old = digest("Codex", {"id": "0", "msg": {"type": "agent_message", "message": "old"}})
        self.assertEqual(old.text, "old")

    def test_codex_app_server_usage(self):
        """codex app-server 0.171 reports usage in ``thread/tokenUsage/updated`` (the thread's
        total), not on ``turn/completed`` (as tests/agents recorded it)."""
        total = {"totalTokens": 22, "inputTokens": 10, "outputTokens": 12}
        params = {"threadId": "t", "turnId": "u", "tokenUsage": {"total": total, "last": total}}
        d = digest("Codex", {"method": "thread/tokenUsage/updated", "params": params})
        self.assertEqual(d.usage, total)
        self.assertIsNone(digest("Codex", {"method": "thread/tokenUsage/updated", "params": {}}).usage)

    def test_gemini_events(self):
        """init, assistant deltas (not the echoed prompt), error results."""
        self.assertEqual(
            digest("Gemini", {"type": "init", "session_id": GEMINI_ID}).agent_session_id, GEMINI_ID
        )
        self.assertIsNone(digest("Gemini", {"type": "message", "role": "user", "content": "hi"}).text)
        delta = digest("Gemini", {"type": "message", "role": "assistant", "content": "Th", "delta": True})
        self.assertEqual((delta.text, delta.delta), ("Th", True))
        bad = digest("Gemini", {"type": "result", "status": "error", "error": {"message": "quota"}})
        self.assertEqual((bad.failed, bad.error), (True, "quota"))

    def test_unknown_shapes_are_harmless(self):
        """Unknown types, wrong field types and non-objects give an empty digest, never an error."""
        for executor in EXECUTORS:
            for obj in (
                [1, 2],
                "x",
                None,
                {"type": "brand_new"},
                {"type": "assistant", "message": "str"},
                {"type": "result", "errors": 5},
                {"type": "item.completed", "item": []},
            ):
                d = digest(executor, obj)
                self.assertIsNone(d.text)

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded CI machine is slow
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.sampled_from(KEYS), children),
            max_leaves=20,
        )
    )
    def test_any_json_value_is_harmless(self, value):
        """Whatever JSON a CLI prints, reading it never raises."""
        for executor in EXECUTORS:
            digest(executor, value)
            if isinstance(value, dict):
                digest(executor, {**value, "type": "result"})

    def test_strip_ansi(self):
        """Terminal escapes seen on Claude's stdout are removed."""
        self.assertEqual(strip_ansi('\x1b[?1004l{"a":1}'), '{"a":1}')


class ExecutorTests(unittest.TestCase):
    """Command lines as agents.md gives them."""

    def test_claude_argv(self):
        """stream-json needs --verbose; the prompt follows --, so a leading dash is not a flag."""
        argv = EXECUTORS["Claude"].argv("/bin/claude", "-rf", "sonnet", "acceptEdits", CLAUDE_ID)
        self.assertEqual(
            argv,
            [
                "/bin/claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--model=sonnet",
                "--permission-mode",
                "acceptEdits",
                "--include-partial-messages",
                f"--resume={CLAUDE_ID}",
                "--",
                "-rf",
            ],
        )

    def test_codex_argv(self):
        """Flags before ``resume``; the permission level maps to a sandbox."""
        argv = EXECUTORS["Codex"].argv("codex", "go", None, "plan", CODEX_ID)
        self.assertEqual(
            argv,
            [
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--sandbox",
                "read-only",
                "resume",
                CODEX_ID,
                "--",
                "go",
            ],
        )
        bypass = EXECUTORS["Codex"].argv("codex", "go", None, "bypassPermissions", None)
        self.assertIn("--dangerously-bypass-approvals-and-sandbox", bypass)

    def test_gemini_argv_and_env(self):
        """--prompt= keeps the prompt one value; the workspace is trusted through the environment."""
        argv = EXECUTORS["Gemini"].argv("gemini", "-x", "flash", "auto", GEMINI_ID)
        self.assertEqual(
            argv,
            [
                "gemini",
                "--output-format",
                "stream-json",
                "--model=flash",
                "--approval-mode",
                "auto_edit",
                f"--resume={GEMINI_ID}",
                "--prompt=-x",
            ],
        )
        env = EXECUTORS["Gemini"].environment({"CLAUDECODE": "1", "PATH": "/bin"})
        self.assertEqual(env["GEMINI_CLI_TRUST_WORKSPACE"], "true")
        self.assertNotIn("CLAUDECODE", EXECUTORS["Claude"].environment({"CLAUDECODE": "1"}))

    def test_session_id_never_becomes_a_flag(self):
        """An agent-reported id that is not a UUID (a flag, a path, a glob) never reaches a command
        line: every executor refuses it; a UUID goes in as one ``--resume=ID`` argument."""
        hostile = [
            "--dangerously-skip-permissions",
            "-r",
            "x --yolo",
            "../../etc/passwd",
            "*",
            "",
            CLAUDE_ID + "\n--yolo",
            " " + CLAUDE_ID,
        ]
        for executor in EXECUTORS.values():
            for bad in hostile:
                self.assertFalse(executor.valid_session_id(bad), bad)
                with self.assertRaises(UnsafeSessionId, msg=f"{executor.name} {bad!r}"):
                    executor.argv("bin", "hi", None, "default", bad)
            self.assertTrue(executor.valid_session_id(CLAUDE_ID))
            argv = executor.argv("bin", "hi", None, "default", CLAUDE_ID)
            self.assertFalse([a for a in argv if a.startswith("-") and "dangerously" in a])
            self.assertEqual(sum(CLAUDE_ID in a for a in argv), 1)

    def test_names(self):
        """Executor names are case-insensitive and accept the vibe-kanban spellings."""
        self.assertEqual(executor_named("CLAUDE_CODE").name, "Claude")
        self.assertEqual(executor_named("codex").name, "Codex")
        self.assertIsNone(executor_named("cursor"))
        self.assertIsNone(executor_named(3))
        self.assertEqual(permission_mode("acceptedits"), "acceptEdits")
        self.assertRaises(ValueError, permission_mode, "yolo")

    def test_resolve(self):
        """A missing binary resolves to None; a relative path becomes absolute."""
        self.assertIsNone(EXECUTORS["Claude"].resolve("/nonexistent/claude"))
        self.assertIsNone(EXECUTORS["Claude"].resolve("no-such-binary-on-path"))
        self.assertTrue(os.path.isabs(EXECUTORS["Claude"].resolve(fake("claude"))))


class StoreTests(unittest.TestCase):
    """Records and event logs on disk."""

    def test_roundtrip_and_torn_lines(self):
        """Events come back in order; a torn last line and junk are skipped; delete removes both files."""
        store = SessionStore(Path(self.mktemp()))
        sid = "a" * 32
        store.save({"id": sid, "status": "running"})
        store.append(sid, {"seq": 1, "kind": "turn"})
        store.append(sid, {"seq": 2, "kind": "raw"})
        store.close()
        with open(store.directory / f"{sid}.events.jsonl", "ab") as f:
            f.write(b'junk\n{"seq":3,"kind":"ag')
        self.assertEqual([e["seq"] for e in store.events(sid)], [1, 2])
        self.assertEqual([r["id"] for r in store.load_all()], [sid])
        (store.directory / ("b" * 32 + ".json")).write_text("{broken")
        self.assertEqual(len(list(store.load_all())), 1)
        store.delete(sid)
        self.assertEqual(list(store.directory.glob(f"{sid}*")), [])


class ClaudeHistoryTests(unittest.TestCase):
    """Claude Code transcripts in the real layout."""

    def setUp(self):
        self.config = Path(self.mktemp())
        self.info = write_claude_history(self.config)
        self.history = ClaudeHistory(claude_roots({"CLAUDE_CONFIG_DIR": str(self.config)}))

    def test_projects_from_recorded_cwd(self):
        """Paths come from the recorded cwd (a dot survives), never from the directory name."""
        projects = self.history.projects()
        paths = [p["path"] for p in projects]
        self.assertIn("/home/alice/my.proj", paths)
        self.assertIn("/srv/a_b c", paths)
        mine = next(p for p in projects if p["path"] == "/home/alice/my.proj")
        self.assertEqual(mine["sessionCount"], 4)  # agent-*.jsonl is not a session

    def test_sessions_listing(self):
        """Newest first, titles by precedence, sidechains skipped, corrupt lines ignored."""
        listing = self.history.sessions()
        ids = [s["id"] for s in listing["sessions"]]
        self.assertEqual(ids[:2], self.info["sessions"])
        self.assertNotIn("99999999-2222-4333-8444-555555555555", ids)
        first = next(s for s in listing["sessions"] if s["id"] == CLAUDE_ID)
        self.assertEqual(first["title"], "File listing")
        self.assertEqual(first["summary"], "Listing project files")
        self.assertEqual(first["firstPrompt"], "List the files")
        self.assertEqual(first["messageCount"], 4)
        self.assertEqual(first["projectPath"], "/home/alice/my.proj")
        second = next(s for s in listing["sessions"] if s["id"] == self.info["sessions"][0])
        self.assertEqual(second["title"], "Fix the typo")  # the /clear command line is skipped

    def test_project_filter_and_paging(self):
        """?project= keeps only sessions whose recorded cwd matches, even when directory names collide."""
        listing = self.history.sessions(project="/home/alice/my.proj")
        ids = {s["id"] for s in listing["sessions"]}
        self.assertEqual(ids, set(self.info["sessions"]))  # the sidechain file is not listed
        self.assertNotIn(self.info["other"], ids)
        other = self.history.sessions(project="/home/alice/my-proj")
        self.assertEqual([s["id"] for s in other["sessions"]], [self.info["other"]])
        page = self.history.sessions(offset=1, limit=1)
        self.assertEqual(len(page["sessions"]), 1)
        self.assertEqual(sanitize_path("/srv/a_b c"), "-srv-a-b-c")

    def test_messages(self):
        """The main thread in order, with tool calls and results."""
        result = self.history.messages(CLAUDE_ID)
        roles = [m["role"] for m in result["messages"]]
        self.assertEqual(roles, ["user", "assistant", "user", "assistant"])
        self.assertEqual(result["messages"][1]["toolCalls"][0]["name"], "Bash")
        self.assertEqual(result["messages"][2]["toolResults"][0]["content"], "README.md\nsrc")
        self.assertEqual(result["messages"][3]["text"], "There is a README.")
        self.assertIsNone(self.history.messages("11111111-0000-4000-8000-000000000000"))
        self.assertIsNone(self.history.messages("../../etc/passwd"))

    def test_message_count_grows_with_the_file(self):
        """The cached count is extended, not recomputed, as a transcript is appended to."""
        path = self.history.find(CLAUDE_ID)
        before = self.history.sessions()["sessions"]
        count = next(s for s in before if s["id"] == CLAUDE_ID)["messageCount"]
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {"type": "user", "message": {"role": "user", "content": "more"}}, separators=(",", ":")
                )
            )
            f.write("\n")
        after = self.history.sessions()["sessions"]
        self.assertEqual(next(s for s in after if s["id"] == CLAUDE_ID)["messageCount"], count + 1)

    def test_default_root(self):
        """Without CLAUDE_CONFIG_DIR the root is ~/.claude."""
        self.assertEqual(claude_roots({"HOME": "/h"}), [Path("/h/.claude")])
        self.assertEqual(len(claude_roots({"CLAUDE_CONFIG_DIR": "/a, /b"})), 2)


class CodexGeminiHistoryTests(unittest.TestCase):
    """Codex rollouts and Gemini chats."""

    def test_codex(self):
        """Listing reads session_meta and the first real prompt; detail has messages and tool calls."""
        home = Path(self.mktemp())
        write_codex_history(home)
        history = CodexHistory(home)
        listing = history.sessions()
        self.assertEqual(listing["total"], 1)
        s = listing["sessions"][0]
        self.assertEqual(
            (s["id"], s["projectPath"], s["title"]), (CODEX_ID, "/home/alice/proj", "Fix the README typo")
        )
        self.assertEqual(history.sessions(project="/elsewhere")["total"], 0)
        detail = history.messages(CODEX_ID)
        self.assertEqual([m["role"] for m in detail["messages"]], ["user", "assistant", "tool", "assistant"])
        self.assertEqual(detail["messages"][1]["toolCalls"][0]["input"], {"command": ["ls"]})

    def test_codex_first_prompt_past_32_kib(self):
        """Today's rollouts start with long session_meta and turn_context lines: the first prompt
        (here past byte 40,000) and the model are still found, and reading stops at a cap."""
        home = Path(self.mktemp())
        write_codex_history(home)
        [path] = (home / "sessions").glob("*/*/*/rollout-*.jsonl")
        lines = path.read_text().splitlines(keepends=True)
        meta = json.loads(lines[0])
        meta["payload"]["base_instructions"] = {"text": "You are Codex. " * 3000}
        lines[0] = json.dumps(meta) + "\n"
        path.write_text("".join(lines))
        self.assertGreater(path.read_text().index("Fix the README typo"), 40_000)
        [s] = CodexHistory(home).sessions()["sessions"]
        self.assertEqual((s["title"], s["model"]), ("Fix the README typo", "gpt-5-codex"))
        self.patch(history_module, "CODEX_HEAD_MAX", 30_000)  # a prompt beyond the cap is not read
        [s] = CodexHistory(home).sessions()["sessions"]
        self.assertIsNone(s["title"])
        self.assertEqual(list(lines_within(path, 10)), [])

    def test_gemini(self):
        """JSONL chats: metadata line, $rewindTo and $set, project path from the marker file."""
        home = Path(self.mktemp())
        write_gemini_history(home)
        history = GeminiHistory(gemini_root({"GEMINI_CLI_HOME": str(home)}))
        listing = history.sessions()
        s = listing["sessions"][0]
        self.assertEqual(
            (s["id"], s["projectPath"], s["title"]), (GEMINI_ID, "/home/alice/gem", "List the files")
        )
        self.assertEqual(history.sessions(project="/home/alice/gem")["total"], 1)
        detail = history.messages(GEMINI_ID)
        self.assertEqual([m["role"] for m in detail["messages"]], ["user", "assistant"])
        self.assertEqual(detail["messages"][1]["toolCalls"][0]["name"], "list_directory")

    def test_gemini_legacy_json(self):
        """A pre-v0.39 single-JSON chat in a SHA-256 project dir is listed and read."""
        import hashlib

        home = Path(self.mktemp())
        digest_dir = hashlib.sha256(b"/p").hexdigest()
        d = home / ".gemini" / "tmp" / digest_dir / "chats"
        d.mkdir(parents=True)
        chat = {
            "sessionId": GEMINI_ID,
            "projectHash": digest_dir,
            "startTime": "t",
            "lastUpdated": "u",
            "messages": [{"id": "1", "type": "user", "content": [{"text": "Hi"}]}],
        }
        (d / f"session-2025-01-01T00-00-{GEMINI_ID[:8]}.json").write_text(json.dumps(chat))
        history = GeminiHistory(home / ".gemini")
        self.assertEqual(history.sessions(project="/p")["sessions"][0]["title"], "Hi")
        self.assertEqual(history.messages(GEMINI_ID)["messages"][0]["text"], "Hi")


def _site(manager: SessionManager, ws: Workspace) -> tuple[Site, str]:
    """The command-mode site over ``manager``, and an owner's Authorization header line."""
    data = Path(ws.data)
    data.mkdir(parents=True, exist_ok=True)
    guard = Guard(AccessStore(data, Clock()), "client1")
    root = build_root(manager, ClaudeHistory([]), CodexHistory(ws.codex), GeminiHistory(ws.gemini), [], guard)
    return make_site(root), f"Authorization: Bearer {guard.store.owner_token}\r\n"


class SiteTunnelTests(unittest.TestCase):
    """The tunnel hands its bytes to the Site and stays usable for keep-alive requests."""

    def test_header_then_requests(self):
        """The header goes first; two requests on one tunnel both get JSON answers; lost -> discarded."""
        ws = Workspace(self)
        manager = SessionManager(
            store=SessionStore(Path(ws.data)), reactor=reactor, binaries={}, project_roots=[ws.root]
        )
        site, owner = _site(manager, ws)
        tunnels: set = set()
        tunnel = SiteTunnel(b"HEADER\n", site, tunnels)
        transport = StringTransport()
        tunnel.makeConnection(transport)
        self.assertEqual(transport.value(), b"HEADER\n")
        self.assertIn(tunnel, tunnels)
        self.assertIsNone(tunnel.wrappedProtocol)  # no channel (and no idle timer) before use
        transport.clear()
        tunnel.dataReceived(f"GET /api/sessions HTTP/1.1\r\nHost: relay\r\n{owner}\r\n".encode())
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b'"sessions":[]', transport.value())
        transport.clear()
        tunnel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: relay\r\n\r\n")
        self.assertIn(b"404 Not Found", transport.value())
        self.assertIn(b'"error"', transport.value())
        tunnel.connectionLost(None)
        self.assertNotIn(tunnel, tunnels)

    async def test_websocket_upgrade_swaps_wrapped_protocol(self):
        """After a WebSocket upgrade the tunnel wraps Autobahn's protocol and still sees connectionLost."""
        await self._upgrade(StringTransport())

    async def test_websocket_upgrade_over_a_tls_tunnel(self):
        """A tunnel carried by TLS is a plain byte stream to the channel above it: the upgrade
        works (Autobahn asked a TLS-looking tunnel for a channel id it cannot give, issue #19)."""
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        tunnel = await self._upgrade(transport)
        self.assertFalse(ISSLTransport.providedBy(tunnel))

    async def _upgrade(self, transport: StringTransport) -> SiteTunnel:
        ws = Workspace(self)
        store = SessionStore(Path(ws.data))
        sid = "d" * 32
        store.save(
            {
                "id": sid,
                "executor": "Codex",
                "status": "completed",
                "turns": [],
                "lastSeq": 1,
                "createdAt": "2025-01-01T00:00:00.000Z",
                "projectPath": str(ws.project),
            }
        )
        store.append(sid, {"seq": 1, "kind": "status", "status": "completed"})
        store.close()
        manager = SessionManager(
            store=SessionStore(Path(ws.data)), reactor=reactor, binaries={}, project_roots=[ws.root]
        )
        from arp.client.command import web as web_module

        # the close-handshake timer's txaio bucket outlives the connection until it is due
        self.patch(web_module, "WS_CLOSE_TIMEOUT", 1.0)
        site, owner = _site(manager, ws)
        tunnels: set = set()
        tunnel = SiteTunnel(b"H\n", site, tunnels)
        tunnel.makeConnection(transport)
        transport.clear()
        tunnel.dataReceived(
            f"GET /api/sessions/{sid}/stream?since=0 HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n{owner}"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.assertIn(b"101 Switching Protocols", transport.value())
        self.assertIsInstance(tunnel.wrappedProtocol, StreamProtocol)
        self.assertIn(b'"status":"completed"', transport.value())
        closing = tunnel.wrappedProtocol
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(tunnel, tunnels)
        self.assertIsNone(closing.transport.wrappedProtocol)  # the tunnel let go of it
        # Autobahn's timers run on txaio's batched timer: let its pending bucket fire
        await wait_until(lambda: not any("_BatchedTimer" in repr(c) for c in reactor.getDelayedCalls()), 5)
        return tunnel


class SlowViewerTests(unittest.TestCase):
    """A viewer that cannot keep up is closed with 1013; the session is never paused."""

    def test_paused_viewer_overflows(self):
        """While paused, events queue; past the byte cap the viewer gets close code 1013."""

        class FakeSession:
            id = "s"
            viewers: set = set()

        proto = StreamProtocol()
        proto.session = FakeSession()
        FakeSession.viewers.add(proto)
        sent, closes = [], []
        proto.sendMessage = lambda payload, isBinary=False: sent.append(payload)
        proto.sendClose = lambda code=None, reason=None: closes.append(code)
        proto.send_event({"seq": 1})
        proto.pauseProducing()
        big = "x" * 10_000
        n = 0
        while not closes:
            n += 1
            proto.send_event({"seq": n + 1, "text": big})
            self.assertLess(n, VIEWER_BUFFER // 10_000 + 5)
        self.assertEqual(closes, [1013])
        self.assertEqual(len(sent), 1)
        self.assertNotIn(proto, FakeSession.viewers)

    def test_resume_drains_queue_in_order(self):
        """Events queued while paused are sent in order on resume."""
        proto = StreamProtocol()
        sent = []
        proto.sendMessage = lambda payload, isBinary=False: sent.append(json.loads(payload)["seq"])
        proto.pauseProducing()
        for i in range(1, 4):
            proto.send_event({"seq": i})
        self.assertEqual(sent, [])
        proto.resumeProducing()
        self.assertEqual(sent, [1, 2, 3])


class ManagerTests(unittest.TestCase):
    """The session manager running the fake agents directly (no relay, no HTTP)."""

    timeout = 30

    def _manager(self, ws: Workspace, **kw) -> SessionManager:
        binaries = {"Claude": fake("claude"), "Codex": fake("codex"), "Gemini": fake("gemini")}
        kw.setdefault("binaries", binaries)
        env = {**os.environ, **ws.env()}
        manager = SessionManager(
            store=SessionStore(Path(ws.data)),
            reactor=reactor,
            project_roots=[ws.root],
            environ=env,
            grace=0.5,
            **kw,
        )
        self.addCleanup(manager.stopService)
        return manager

    async def test_run_records_and_reload(self):
        """A run is recorded as it happens and read back by a new manager (the restart case)."""
        ws = Workspace(self)
        manager = self._manager(ws)
        session = manager.create({"executor": "Claude", "prompt": "hello", "projectPath": str(ws.project)})
        await wait_until(lambda: not session.running, timeout=15)
        self.assertEqual(session.status, "completed")
        self.assertEqual(session.output(), "Claude says: hello")
        self.assertEqual(session.record["costUsd"], 0.0213)
        run = ws.recorded_for("hello")[0]
        self.assertEqual(run["cwd"], str(ws.project))
        self.assertFalse(run["isatty"])
        self.assertIsNone(run["env"]["CLAUDECODE"])
        self.assertEqual(run["pgid"], run["pid"])  # its own process group
        again = self._manager(ws)
        reloaded = again.get(session.id)
        self.assertEqual(reloaded.status, "completed")
        self.assertEqual(reloaded.output(), "Claude says: hello")
        self.assertEqual([e["seq"] for e in reloaded.events()], list(range(1, session.record["lastSeq"] + 1)))

    async def test_running_session_reloads_as_interrupted(self):
        """A record left 'running' (arpc died) comes back 'interrupted' with a final status event."""
        ws = Workspace(self)
        store = SessionStore(Path(ws.data))
        sid = "c" * 32
        store.save(
            {
                "id": sid,
                "executor": "Claude",
                "status": "running",
                "turns": [{"prompt": "p"}],
                "lastSeq": 1,
                "createdAt": "2025-01-01T00:00:00.000Z",
                "projectPath": str(ws.project),
            }
        )
        store.append(sid, {"seq": 1, "kind": "turn", "turn": 1})
        store.close()
        manager = self._manager(ws)
        session = manager.get(sid)
        self.assertEqual(session.status, "interrupted")
        self.assertEqual(session.events()[-1]["kind"], "status")
        self.assertEqual(session.events()[-1]["status"], "interrupted")

    async def test_validation(self):
        """Each bad input is refused with its status and a message."""
        ws = Workspace(self)
        manager = self._manager(
            ws, max_sessions=1, permission_mode="default", max_permission_mode="acceptEdits"
        )
        good = {"executor": "Claude", "prompt": "hi", "projectPath": str(ws.project)}
        cases = [
            ([], 400, "JSON object"),
            ({**good, "executor": "cursor"}, 400, "unknown executor"),
            ({**good, "prompt": "  "}, 400, "prompt is required"),
            ({**good, "prompt": "x" * 100_001}, 400, "too long"),
            ({**good, "projectPath": "relative/dir"}, 400, "absolute"),
            ({**good, "projectPath": str(ws.root / "missing")}, 400, "not an existing directory"),
            ({**good, "projectPath": "/"}, 400, "--project-root"),
            ({**good, "projectPath": str(ws.root / "..")}, 400, "--project-root"),
            ({**good, "model": "--evil"}, 400, "model"),
            ({**good, "permissionMode": "bypassPermissions"}, 403, "--max-permission-mode"),
            ({**good, "permissionMode": "sudo"}, 400, "permissionMode"),
        ]
        for body, status, text in cases:
            with self.assertRaises(ApiError, msg=repr(body)[:80]) as e:
                manager.create(body)
            self.assertEqual(e.exception.status, status, e.exception.message)
            self.assertIn(text, e.exception.message)
        missing = self._manager(ws, binaries={"Codex": "/nonexistent/codex"})
        with self.assertRaises(ApiError) as e:
            missing.create({**good, "executor": "Codex"})
        self.assertEqual(e.exception.status, 503)
        self.assertIn("--codex-path", e.exception.message)
        running = manager.create({**good, "prompt": "LONG", "project_path": str(ws.project)})
        with self.assertRaises(ApiError) as e:
            manager.create(good)
        self.assertEqual(e.exception.status, 429)
        with self.assertRaises(ApiError) as e:
            manager.follow_up(running.id, {"prompt": "more"})
        self.assertEqual(e.exception.status, 409)
        await manager.cancel(running)
        self.assertEqual(running.status, "cancelled")

    async def test_turn_end_stops_an_agent_that_stays(self):
        """An ACP agent ends its turn on the prompt result and is stopped a moment later; a Claude
        that hangs after its result is terminated after the timeout and the turn still counts as
        completed."""
        self.patch(sessions_module, "TURN_EXIT_TIMEOUT", 0.3)
        ws = Workspace(self)
        helper = acp_agent(f"Helper={fake('acpagent')} --stdio")
        manager = self._manager(ws, acp_agents=[helper])
        session = manager.create({"executor": "Helper", "prompt": "stay", "projectPath": str(ws.project)})
        await wait_until(lambda: not session.running, timeout=15)
        self.assertEqual((session.status, session.record["exitCode"]), ("completed", None))
        self.assertEqual(session.events()[-1]["kind"], "status")
        [run] = ws.recorded_for("stay")
        self.assertIsNone(session.process)
        await wait_until(lambda: not process_running(run["pid"]) and not manager.retiring, timeout=10)
        session = manager.create({"executor": "Claude", "prompt": "LINGER", "projectPath": str(ws.project)})
        await wait_until(lambda: not session.running, timeout=15)
        self.assertEqual(session.status, "completed", session.record)
        self.assertFalse(process_running(ws.recorded_for("LINGER")[0]["pid"]))

    async def test_gemini_acp_flag_detected(self):
        """Gemini's ``--version`` says which ACP flag it takes: ``--acp`` from 0.61 (no deprecation
        warning), ``--experimental-acp`` before, and until the version is known."""
        for version, flag in (("0.61.0", "--acp"), ("0.60.3", "--experimental-acp")):
            ws = Workspace(self)
            manager = self._manager(ws)
            manager.environ["ARP_FAKE_GEMINI_VERSION"] = version
            gemini = manager.executor("Gemini")
            binary = fake("gemini")
            self.assertEqual(manager.acp_flag(gemini, binary), "--experimental-acp")  # not known yet
            self.assertEqual(await manager.detect_acp_flag(gemini, binary), flag)
            self.assertEqual(manager.acp_flag(gemini, binary), flag)
            session = manager.create({"executor": "Gemini", "prompt": "hi", "projectPath": str(ws.project)})
            await wait_until(lambda s=session: not s.running, timeout=15)
            self.assertEqual(session.status, "completed", session.record)
            self.assertIn(flag, ws.recorded_for("hi")[0]["argv"])
            stderr = "".join(e["text"] for e in session.events() if e["kind"] == "stderr")
            self.assertNotIn("deprecated", stderr)
        self.assertEqual(gemini_acp_flag(b"0.61.0\n"), "--acp")
        self.assertEqual(gemini_acp_flag(b"1.2.3"), "--acp")
        self.assertEqual(gemini_acp_flag(b"0.9.99"), "--experimental-acp")
        self.assertEqual(gemini_acp_flag(None), "--experimental-acp")

    async def test_probe_output_is_bounded(self):
        """A probe that hangs is killed after its timeout (None), one that fails gives None, one
        that talks too much is cut."""
        import sys

        env = dict(os.environ)
        hang = [sys.executable, "-c", "import time; time.sleep(60)"]
        self.assertIsNone(await probe_output(reactor, hang, env, timeout=0.3))
        self.assertIsNone(await probe_output(reactor, [sys.executable, "-c", "raise SystemExit(3)"], env))
        self.assertIsNone(await probe_output(reactor, ["/nonexistent/gemini", "--version"], env))
        chatty = [sys.executable, "-c", "print('x' * 100000)"]
        self.assertEqual(len(await probe_output(reactor, chatty, env)), 4096)

    async def test_cancel_escalates_to_sigkill(self):
        """An agent and child that ignore SIGINT and SIGTERM are still ended, by SIGKILL to the group."""
        ws = Workspace(self)
        manager = self._manager(ws)
        manager.grace = 0.2
        session = manager.create(
            {"executor": "Gemini", "prompt": "LONG STUBBORN", "projectPath": str(ws.project)}
        )
        await wait_until(lambda: ws.recorded_for("LONG STUBBORN"))
        run = ws.recorded_for("LONG STUBBORN")[0]
        self.assertTrue(process_running(run["child"]))
        # the fake records its run before its first tick reaches us (slower on PyPy): wait for it
        await wait_until(lambda: "tick 0" in session.output())
        await manager.cancel(session)
        self.assertEqual(session.status, "cancelled")
        await wait_until(lambda: not process_running(run["pid"]) and not process_running(run["child"]), 2)
        self.assertIn("tick 0", session.output())
