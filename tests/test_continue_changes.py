"""Continue any session (``"resume"``) and what changed (``/changes``), end to end: real arps and
``arpc --command-mode`` processes with the fake agent CLIs; a real git for the repository case."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.trial import unittest

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

FINAL = ("completed", "failed", "cancelled", "interrupted")


def git(cwd: str, *args: str) -> str:
    """Run git in ``cwd`` for the test's own fixture (bounded, no shell)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1")
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, timeout=30, check=True)
    return done.stdout.decode()


class _Base(unittest.TestCase):
    timeout = 60

    async def _setup(self, *extra: str) -> Api:
        self.ws = Workspace(self)
        self.relay = await start_arps(self)
        self.arpc = await start_command_arpc(self, self.relay, self.ws, *extra)
        self.api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        return self.api

    async def _finished(self, prompt: str, **more: object) -> dict:
        body = {"executor": "Claude", "prompt": prompt, "projectPath": str(self.ws.project), **more}
        code, session = await self.api.post("/api/sessions", body)
        self.assertEqual(code, 201, session)
        return await self.api.wait_status(session["id"], FINAL)


class ContinueTests(_Base):
    """``POST /api/sessions`` with ``"resume"``: a desk session continued from the phone."""

    async def test_claude_history_session_continues_in_its_directory(self):
        """A Claude session history lists is resumed in the directory it ran in; the session
        records where it came from, the agent gets --resume with that id, and a follow-up too."""
        api = await self._setup()
        write_claude_history(self.ws.claude, str(self.ws.project))
        code, session = await api.post("/api/sessions", {"resume": CLAUDE_ID, "prompt": "carry on"})
        self.assertEqual(code, 201, session)
        self.assertEqual(session["executor"], "Claude")
        self.assertEqual(session["projectPath"], str(self.ws.project))
        self.assertEqual(session["resumedFrom"]["id"], CLAUDE_ID)
        self.assertEqual(session["resumedFrom"]["executor"], "Claude")
        self.assertEqual(session["resumedFrom"]["title"], "List the files")
        done = await api.wait_status(session["id"], FINAL)
        self.assertEqual(done["status"], "completed", done)
        self.assertEqual(done["turns"][0]["resume"], CLAUDE_ID)
        run = self.ws.recorded_for("carry on")[0]
        self.assertEqual(run["resume"], CLAUDE_ID)
        self.assertIn(f"--resume={CLAUDE_ID}", run["argv"])
        self.assertEqual(run["cwd"], str(self.ws.project))
        code, _ = await api.post(f"/api/sessions/{session['id']}/messages", {"prompt": "and then"})
        self.assertEqual(code, 202)
        await api.wait_status(session["id"], FINAL)
        self.assertEqual(self.ws.recorded_for("and then")[0]["resume"], CLAUDE_ID)
        code, listing = await api.get("/api/sessions")
        row = listing["sessions"][0]
        self.assertEqual(row["resumedFrom"]["id"], CLAUDE_ID)
        self.assertEqual(row["lastMessage"], "Claude says: and then")
        self.assertEqual(row["pendingApprovals"], 0)

    async def test_codex_history_session_continues(self):
        """A Codex rollout is resumed (thread/resume with its id), with or without ``executor``."""
        api = await self._setup()
        write_codex_history(self.ws.codex, str(self.ws.project))
        code, session = await api.post(
            "/api/sessions",
            {
                "resume": CODEX_ID,
                "executor": "codex",
                "prompt": "next step",
                "projectPath": str(self.ws.project),
            },
        )
        self.assertEqual(code, 201, session)
        self.assertEqual(session["executor"], "Codex")
        self.assertEqual(session["resumedFrom"]["title"], "Fix the README typo")
        done = await api.wait_status(session["id"], FINAL)
        self.assertEqual(done["status"], "completed", done)
        self.assertEqual(self.ws.recorded_for("next step")[-1]["resume"], CODEX_ID)
        code, other = await api.post(
            "/api/sessions", {"resume": CODEX_ID, "prompt": "found without executor"}
        )
        self.assertEqual(code, 201, other)
        self.assertEqual(other["executor"], "Codex")
        await api.wait_status(other["id"], FINAL)

    async def test_bad_resume_requests(self):
        """404 for an id history does not know (or another agent's), 403 for a session that ran
        outside --project-root, 400 for a malformed id or another projectPath; nothing starts."""
        api = await self._setup()
        history = write_claude_history(self.ws.claude, str(self.ws.project))
        write_codex_history(self.ws.codex, "/srv/elsewhere")
        cases = [
            ({"resume": "00000000-0000-4000-8000-000000000000", "prompt": "x"}, 404, "history"),
            ({"resume": CLAUDE_ID, "executor": "Codex", "prompt": "x"}, 404, "Codex"),
            ({"resume": "--dangerously-skip-permissions", "prompt": "x"}, 404, "history"),
            ({"resume": history["third"], "prompt": "x"}, 403, "--project-root"),
            ({"resume": CODEX_ID, "prompt": "x"}, 403, "--project-root"),
            ({"resume": 42, "prompt": "x"}, 400, "resume"),
            ({"resume": CLAUDE_ID, "prompt": "x", "projectPath": str(self.ws.root)}, 400, "ran in"),
            ({"resume": CLAUDE_ID, "prompt": ""}, 400, "prompt"),
            ({"resume": CLAUDE_ID, "executor": "Nope", "prompt": "x"}, 400, "executor"),
        ]
        for body, status, words in cases:
            code, answer = await api.post("/api/sessions", body)
            self.assertEqual(code, status, (body, answer))
            self.assertIn(words, answer["error"], body)
        code, listing = await api.get("/api/sessions")
        self.assertEqual(listing["total"], 0)
        self.assertEqual(self.ws.recorded(), [])


class ChangesTests(_Base):
    """``GET /api/sessions/{id}/changes``: the files the agent changed, with diffs."""

    async def test_git_repository(self):
        """In a repository: modified, added, deleted and renamed files against the commit the
        session started at, with line counts; a binary and a 1 GB file are summarised, not sent."""
        if shutil.which("git") is None:
            raise unittest.SkipTest("no git")
        api = await self._setup()
        project = str(self.ws.project)
        git(project, "init", "-q")
        with open(os.path.join(project, "README.md"), "w") as f:
            f.write("".join(f"line {i}\n" for i in range(1, 41)) + "Hello wrold\n")
        for name, text in (("gone.txt", "bye\n"), ("old.txt", "same text\n" * 5)):
            with open(os.path.join(project, name), "w") as f:
                f.write(text)
        with open(os.path.join(project, "logo.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)))
        git(project, "add", "-A")
        git(project, "commit", "-qm", "start")
        base = git(project, "rev-parse", "HEAD").strip()
        done = await self._finished("WRITE_FILES please")
        self.assertEqual(done["status"], "completed", done)
        os.remove(os.path.join(project, "gone.txt"))
        git(project, "mv", "old.txt", "new.txt")
        with open(os.path.join(project, "logo.png"), "ab") as f:
            f.write(b"\0\1\2")
        with open(os.path.join(project, "huge.log"), "wb") as f:
            f.truncate(1024**3)  # sparse: 1 GB that takes no disk
        # what the agent could write into .git/config: git must run none of it
        marker = os.path.join(self.ws.base, "ran")
        git(project, "config", "filter.evil.clean", f"touch {marker}-clean; cat")
        git(project, "config", "filter.evil.process", f"sh -c 'touch {marker}-process; exit 1'")
        git(project, "config", "core.fsmonitor", f"touch {marker}-fsmonitor")
        git(project, "config", "diff.evil.textconv", f"touch {marker}-textconv; cat")
        git(project, "config", "diff.evil.command", f"touch {marker}-external")
        with open(os.path.join(project, ".git", "info", "attributes"), "w") as f:
            f.write("*.md filter=evil diff=evil\n")
        started = reactor.seconds()
        code, body = await api.get(f"/api/sessions/{done['id']}/changes")
        self.assertEqual(code, 200, body)
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(body["source"], "git")
        self.assertEqual(body["base"], base)
        self.assertFalse(body["truncated"])
        files = {f["path"]: f for f in body["files"]}
        self.assertEqual(
            set(files), {"README.md", "notes.txt", "gone.txt", "new.txt", "logo.png", "huge.log"}
        )
        readme = files["README.md"]
        self.assertEqual((readme["status"], readme["added"], readme["removed"]), ("modified", 1, 1))
        self.assertIn("-Hello wrold\n+Hello world", readme["diff"])
        self.assertIn("@@ -38,4 +38,4 @@", readme["diff"])
        self.assertEqual((files["notes.txt"]["status"], files["notes.txt"]["added"]), ("added", 2))
        self.assertIn("+first line\n+second line\n", files["notes.txt"]["diff"])
        self.assertEqual((files["gone.txt"]["status"], files["gone.txt"]["removed"]), ("deleted", 1))
        self.assertEqual(files["new.txt"]["status"], "renamed")
        self.assertEqual(files["new.txt"]["oldPath"], "old.txt")
        self.assertIsNone(files["logo.png"]["diff"])
        self.assertTrue(files["logo.png"]["binary"])
        self.assertIn("binary", files["logo.png"]["summary"])
        huge = files["huge.log"]
        self.assertIsNone(huge["diff"])
        self.assertEqual(huge["size"], 1024**3)
        self.assertIn("large file", huge["summary"])
        self.assertEqual([n for n in os.listdir(self.ws.base) if n.startswith("ran")], [])
        for f in body["files"]:
            self.assertIn(f["status"], ("added", "modified", "deleted", "renamed"))
        # a tracked file grown to 1 GB: git summarises it too (it never diffs it)
        with open(os.path.join(project, "README.md"), "r+b") as f:
            f.truncate(1024**3)
        code, body = await api.get(f"/api/sessions/{done['id']}/changes")
        self.assertEqual(code, 200, body)
        readme = next(f for f in body["files"] if f["path"] == "README.md")
        self.assertIsNone(readme["diff"])
        self.assertIn("large file", readme["summary"])

    async def test_plain_directory_from_tool_calls(self):
        """Outside a repository, from the agent's own Write and Edit calls: notes.txt added,
        README.md modified at its real line; a view-only token may read it, an unknown session 404."""
        api = await self._setup()
        with open(os.path.join(self.ws.project, "README.md"), "w") as f:
            f.write("# Title\n\nHello wrold\n")
        done = await self._finished("WRITE_FILES in a plain directory")
        code, body = await api.get(f"/api/sessions/{done['id']}/changes")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["source"], "tools")
        self.assertFalse(body["truncated"])
        files = {f["path"]: f for f in body["files"]}
        self.assertEqual(set(files), {"notes.txt", "README.md"})
        self.assertEqual((files["notes.txt"]["status"], files["notes.txt"]["added"]), ("added", 2))
        readme = files["README.md"]
        self.assertEqual((readme["status"], readme["added"], readme["removed"]), ("modified", 1, 1))
        self.assertIn("@@ -3,1 +3,1 @@\n-Hello wrold\n+Hello world\n", readme["diff"])
        # a session that changed nothing
        quiet = await self._finished("just talk")
        code, body = await api.get(f"/api/sessions/{quiet['id']}/changes")
        self.assertEqual((code, body["files"]), (200, []))
        # view scope is enough; a missing session is a 404
        code, token = await api.post("/api/tokens", {"name": "watcher", "scopes": ["view"]})
        self.assertEqual(code, 201, token)
        viewer = Api(self, self.relay, self.arpc.token, token["token"])
        code, body = await viewer.get(f"/api/sessions/{done['id']}/changes")
        self.assertEqual(code, 200, body)
        code, body = await viewer.post("/api/sessions", {"resume": CLAUDE_ID, "prompt": "x"})
        self.assertEqual(code, 403, body)
        code, body = await api.get("/api/sessions/" + "0" * 32 + "/changes")
        self.assertEqual(code, 404, body)
        code, body = await api.post(f"/api/sessions/{done['id']}/changes", {})
        self.assertEqual(code, 405, body)


class ToolEditsTests(unittest.TestCase):
    """:func:`tool_changes` reads each agent's own edit calls (no process, no socket)."""

    def _agent(self, data: dict) -> dict:
        return {"kind": "agent", "data": data}

    def test_codex_acp_and_failed_claude_edits(self):
        """Codex app-server file changes (update with its diff, add, delete), an ACP diff with
        its final status, and a Claude edit whose call failed (left out)."""
        from arp.client.command.changes import tool_changes

        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        events = [
            self._agent(
                {
                    "method": "item/completed",
                    "params": {
                        "item": {
                            "type": "fileChange",
                            "status": "completed",
                            "changes": [
                                {
                                    "path": f"{cwd}/a.py",
                                    "kind": {"type": "update"},
                                    "diff": "@@ -1 +1 @@\n-x\n+y\n",
                                },
                                {"path": f"{cwd}/new.txt", "kind": {"type": "add"}, "diff": "one\ntwo\n"},
                                {"path": f"{cwd}/gone.txt", "kind": "delete"},
                            ],
                        }
                    },
                }
            ),
            self._agent(
                {
                    "method": "item/completed",
                    "params": {
                        "item": {"type": "fileChange", "status": "declined", "changes": [{"path": "no.txt"}]}
                    },
                }
            ),
            self._agent(
                {
                    "method": "session/update",
                    "params": {
                        "update": {
                            "sessionUpdate": "tool_call",
                            "toolCallId": "t1",
                            "status": "pending",
                            "content": [
                                {
                                    "type": "diff",
                                    "path": f"{cwd}/acp.md",
                                    "oldText": "a\nb\n",
                                    "newText": "a\nc\n",
                                }
                            ],
                        }
                    },
                }
            ),
            self._agent(
                {
                    "method": "session/update",
                    "params": {
                        "update": {
                            "sessionUpdate": "tool_call_update",
                            "toolCallId": "t1",
                            "status": "completed",
                        }
                    },
                }
            ),
            self._agent(
                {
                    "type": "assistant",
                    "message": {
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "e1",
                                "name": "Edit",
                                "input": {
                                    "file_path": f"{cwd}/failed.py",
                                    "old_string": "p",
                                    "new_string": "q",
                                },
                            }
                        ]
                    },
                }
            ),
            self._agent(
                {
                    "type": "user",
                    "message": {"content": [{"type": "tool_result", "tool_use_id": "e1", "is_error": True}]},
                }
            ),
        ]
        body = tool_changes(events, cwd)
        files = {f["path"]: f for f in body["files"]}
        self.assertEqual(set(files), {"a.py", "new.txt", "gone.txt", "acp.md"})
        self.assertEqual(
            (files["a.py"]["status"], files["a.py"]["added"], files["a.py"]["removed"]), ("modified", 1, 1)
        )
        self.assertEqual((files["new.txt"]["status"], files["new.txt"]["added"]), ("added", 2))
        self.assertEqual(files["gone.txt"]["status"], "deleted")
        self.assertIn("-b\n+c\n", files["acp.md"]["diff"])
        self.assertFalse(body["truncated"])

    def test_a_huge_write_is_cut(self):
        """A 3 MB Write: its diff is cut at 256 KiB (with a summary), the answer says truncated
        only when its 2 MiB is spent."""
        from arp.client.command.changes import MAX_FILE_DIFF, tool_changes

        big = "x" * 99 + "\n"
        events = [
            self._agent(
                {
                    "type": "assistant",
                    "message": {
                        "content": [
                            {
                                "type": "tool_use",
                                "id": f"w{i}",
                                "name": "Write",
                                "input": {"file_path": f"/p/f{i}", "content": big * 30000},
                            }
                            for i in range(10)
                        ]
                    },
                }
            )
        ]
        body = tool_changes(events, "/p")
        first = body["files"][0]
        self.assertTrue(first["truncated"])
        self.assertLessEqual(len(first["diff"]), MAX_FILE_DIFF)
        self.assertEqual(first["added"], 30000)  # counted before the cut
        self.assertTrue(body["truncated"])
        self.assertIsNone(body["files"][-1]["diff"])
        self.assertLess(sum(len(f["diff"] or "") for f in body["files"]), 2 * 1024 * 1024 + 1)


class AcpReplayTests(unittest.TestCase):
    """An ACP agent replays the conversation it loads: that is not the new turn's output."""

    def test_replay_during_session_load_is_not_recorded(self):
        """Updates between session/load and its result are plumbing; the prompt's are events."""
        from arp.client.command.channels import AcpChannel
        from tests.test_approvals_units import FakeHost, FakeWriter

        host, writer = FakeHost(), FakeWriter()
        channel = AcpChannel(host, writer, "go on", "s-1", {"rank": 1, "mode": "default"})
        channel.start()
        channel.handle({"jsonrpc": "2.0", "id": 1, "result": {"agentCapabilities": {"loadSession": True}}})
        self.assertEqual(writer.lines[-1]["method"], "session/load")
        old = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "earlier"}}
        self.assertTrue(
            channel.handle({"jsonrpc": "2.0", "method": "session/update", "params": {"update": old}})
        )
        channel.handle({"jsonrpc": "2.0", "id": 2, "result": None})
        self.assertEqual(writer.lines[-1]["method"], "session/prompt")
        new = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "now"}}
        self.assertFalse(
            channel.handle({"jsonrpc": "2.0", "method": "session/update", "params": {"update": new}})
        )
