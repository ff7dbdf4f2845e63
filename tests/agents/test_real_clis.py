"""The conformance suite: the real agent CLIs (pinned in ``package.json``), each pointed at the
mock model server (``mockmodel.py``), driven through a real arps and ``arpc --command-mode`` the way
a phone drives them: the HTTP API and the WebSocket stream through the relay.

Not part of ``python -m twisted.trial tests`` (this directory is no package of it): run it with
``python -m twisted.trial tests.agents.test_real_clis`` after ``tests/agents/install.sh``.  A CLI that is not
installed fails its tests; it is never skipped.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.agents.realclis import CLIS, Agents, version
from tests.agents.shapes import compare, shapes
from tests.command_helpers import sleep, wait_events


class Conformance:
    """Every command-mode feature for one CLI (``cli``); a subclass per CLI."""

    cli = ""
    timeout = 150

    async def agents(self, *extra: str, mode: str = "default") -> Agents:
        self.world = Agents(self)
        await self.world.start(*extra, mode=mode)
        self.addCleanup(lambda: self.world.save_transcripts(f"{self.cli}/{self._testMethodName}"))
        return self.world

    def supports(self, feature: str) -> Any:
        return SUPPORTS[self.cli][feature]

    def asked_commands(self, approvals: list[dict]) -> list[str]:
        return [a["summary"].get("command") or a["summary"].get("title") or "" for a in approvals]

    async def test_start_stream_follow_up_history(self):
        """A prompt starts the CLI; its words stream to the phone as it prints them and the turn
        ends ``completed`` with the model's answer as the session's output.  A follow-up resumes
        the CLI's own session (the model sees the first prompt again), and the CLI's history of
        the project lists the session and shows its messages."""
        w = await self.agents()
        sid = await w.start_session(self.cli, "Say hello to the phone")
        stream = await w.stream(sid)
        await wait_events(stream, lambda ev: any(e["kind"] == "status" for e in ev), timeout=90)
        first = await w.finished(sid)
        self.assertEqual(first["status"], "completed", w.describe(first))
        self.assertIn("Mock says: Say hello to the phone", first["output"], w.describe(first))
        kinds = [e["kind"] for e in stream.events]
        self.assertEqual(kinds[0], "turn")
        self.assertIn("agent", kinds)
        self.assertEqual(stream.events[-1]["kind"], "status")
        self.assertEqual(stream.events[-1]["status"], "completed")
        agent_id = first["agentSessionId"]
        self.assertTrue(agent_id, first)
        # history: the CLI's own files, read through arpc
        kind = self.supports("history")
        deadline = reactor.seconds() + 20  # claude-code-acp writes its history after the result
        while True:
            code, body = await w.api.get(f"/api/{kind}/sessions?project={w.ws.project}")
            self.assertEqual(code, 200, body)
            listed = {s["id"]: s for s in body["sessions"]}
            if agent_id in listed or reactor.seconds() > deadline:
                break
            await sleep(0.2)
        self.assertIn(agent_id, listed, body)
        self.assertIn("Say hello to the phone", json.dumps(listed[agent_id]))
        code, detail = await w.api.get(f"/api/{kind}/sessions/{agent_id}")
        self.assertEqual(code, 200, detail)
        self.assertIn("Mock says: Say hello to the phone", json.dumps(detail))
        # follow-up
        code, body = await w.api.post(f"/api/sessions/{sid}/messages", {"prompt": "Say two"})
        self.assertEqual(code, 202, body)
        session = await w.finished(sid)
        if not self.supports("resume"):
            # the CLI's own reason reaches the phone, not only JSON-RPC's "Internal error"
            self.assertEqual(session["status"], "failed", w.describe(session))
            self.assertRegex(session["error"], self.supports("resume_error"))
            return
        self.assertEqual(session["status"], "completed", w.describe(session))
        self.assertIn("Mock says: Say two", session["output"])
        resumed = [t for t in w.mock.requests if t.prompt == "Say two" and t.tools]
        self.assertTrue(resumed, [t.prompt for t in w.mock.requests])
        self.assertIn("Say hello to the phone", resumed[-1].history)
        self.assertEqual(session["agentSessionIds"][0], agent_id)

    async def test_allow_and_deny(self):
        """The model wants two shell commands: the phone sees an approval with the command and
        the folder for each, allows the first (it runs) and denies the second (it does not run;
        the message reaches the model where the CLI carries one); the turn completes."""
        w = await self.agents()
        sid = await w.start_session(self.cli, SCENARIO)
        [approval] = await w.pending(sid)
        self.assertEqual(approval["kind"], "permission")
        self.assertIn("touch allowed.txt", approval["summary"].get("command", ""), approval)
        self.assertEqual(approval["summary"].get("cwd"), str(w.ws.project), approval)
        self.assertFalse((w.ws.project / "allowed.txt").exists())
        record = await w.answer(sid, approval, {"decision": "allow"})
        self.assertEqual(record["status"], "allowed")
        self.assertEqual(record["answeredBy"]["token"], w.arpc.access.split("_")[1])
        [denied] = await w.pending(sid, exclude=[approval["id"]])
        self.assertIn("touch denied.txt", denied["summary"].get("command", ""), denied)
        self.assertTrue((w.ws.project / "allowed.txt").exists())
        record = await w.answer(sid, denied, {"decision": "deny", "message": "not from my phone"})
        self.assertEqual(record["status"], "denied")
        session = await w.finished(sid)
        self.assertEqual(session["status"], "completed", w.describe(session))
        self.assertFalse((w.ws.project / "denied.txt").exists())
        if not self.supports("deny_ends_turn"):  # else the CLI stops the turn on a reject
            self.assertIn("Done:", session["output"])
        outputs = [o for t in w.mock.requests if t.prompt == SCENARIO for _, o in t.calls if o]
        told = any("not from my phone" in o for o in outputs)
        self.assertEqual(told, self.supports("deny_message"), outputs)

    async def test_session_scope(self):
        """ "Allow for this session" covers what the card said: the same command again runs
        without asking anybody and the next, different command asks again (where the CLI's own
        rule is as narrow: see ``scope``); nothing is written into the project's settings
        (except by claude-code-acp, whose "Always Allow" writes Claude's suggestions there)."""
        w = await self.agents()
        sid = await w.start_session(self.cli, "RUN: touch s1.txt ;; touch s1.txt ;; chmod 600 s1.txt")
        [first] = await w.pending(sid)
        self.assertIn("touch s1.txt", self.asked_commands([first])[0])
        self.assertTrue(first["sessionScope"], first)
        await w.answer(sid, first, {"decision": "allow", "scope": "session"})
        [second] = await w.pending(sid, exclude=[first["id"]])
        self.assertIn("chmod 600 s1.txt", self.asked_commands([second])[0], second)
        await w.answer(sid, second, {"decision": "allow"})
        session = await w.finished(sid)
        self.assertEqual(session["status"], "completed", w.describe(session))
        self.assertTrue((w.ws.project / "s1.txt").exists())
        self.assertEqual((w.ws.project / "s1.txt").stat().st_mode & 0o777, 0o600)
        asked = [a for a in await w.approvals_of(sid) if "token" in (a.get("answeredBy") or {})]
        self.assertEqual(len(asked), 2, asked)
        self.assertFalse((w.ws.project / ".claude" / "settings.local.json").exists())

    async def test_cancel_while_asking_and_while_streaming(self):
        """Cancelled while the CLI waits for an answer: the approval is cancelled, the session
        ``cancelled``, the command never runs.  Cancelled while the model streams: ``cancelled``
        with what streamed so far.  No agent process is left either time."""
        w = await self.agents()
        sid = await w.start_session(self.cli, "RUN: touch cancelled.txt")
        [approval] = await w.pending(sid)
        code, body = await w.api.delete(f"/api/sessions/{sid}")
        self.assertEqual(code, 200, body)
        session = await w.finished(sid)
        self.assertEqual(session["status"], "cancelled", w.describe(session))
        code, record = await w.api.get(f"/api/sessions/{sid}/approvals/{approval['id']}")
        self.assertEqual(record["status"], "cancelled")
        self.assertFalse((w.ws.project / "cancelled.txt").exists())
        self.assertEqual(w.leftovers(), [], "\n".join(w.leftovers()))
        sid = await w.start_session(self.cli, "SLOW: count for me")
        stream = await w.stream(sid)
        await wait_events(stream, lambda ev: "tick 3" in json.dumps(ev), timeout=90)
        code, body = await w.api.delete(f"/api/sessions/{sid}")
        self.assertEqual(code, 200, body)
        session = await w.finished(sid)
        self.assertEqual(session["status"], "cancelled", w.describe(session))
        self.assertEqual(w.leftovers(), [], "\n".join(w.leftovers()))

    async def test_permission_modes(self):
        """Each permission mode: whether the CLI asks before a command that writes ("asks"), runs
        it unasked ("runs") or refuses it by itself ("refuses"), as the README's table says."""
        w = await self.agents()
        seen = {}
        for mode in MODES:
            name = f"mode-{mode}.txt"
            sid = await w.start_session(self.cli, f"RUN: touch {name}", permissionMode=mode)
            while True:
                code, session = await w.api.get(f"/api/sessions/{sid}")
                waiting = [a for a in await w.approvals_of(sid) if a["status"] == "pending"]
                if waiting or session["status"] != "running":
                    break
                await sleep(0.1)
            for approval in waiting:
                await w.answer(sid, approval, {"decision": "deny"})
            session = await w.finished(sid)
            if await w.approvals_of(sid):
                seen[mode] = "asks"
            else:
                seen[mode] = "runs" if (w.ws.project / name).exists() else "refuses"
        self.assertEqual(seen, dict(zip(MODES, self.supports("modes"))), json.dumps(seen))

    async def test_fake_matches_real(self):
        """The fake in ``tests/fakes`` that stands for this CLI in the fast tests prints the same
        message types with no field the real CLI lacks, for the same scenario (allow one
        command, deny the next) driven the same way, so the fakes cannot drift from the CLIs."""
        real = await self.agents()
        fake = Agents(self, fakes=True)
        await fake.start(relay=real.relay)
        self.addCleanup(lambda: fake.save_transcripts(f"{self.cli}/{self._testMethodName}"))
        for w in (real, fake):
            sid = await w.start_session(self.cli, "Say hello")
            await w.finished(sid)
            sid = await w.start_session(self.cli, SCENARIO)
            [approval] = await w.pending(sid)
            await w.answer(sid, approval, {"decision": "allow"})
            [denied] = await w.pending(sid, exclude=[approval["id"]])
            await w.answer(sid, denied, {"decision": "deny", "message": "no"})
            session = await w.finished(sid)
            self.assertEqual(session["status"], "completed", w.describe(session))
        problems = compare(shapes(real.transcript(self.cli)), shapes(fake.transcript(self.cli)), self.cli)
        self.assertEqual(problems, [], "\n".join(problems))


class ClaudeQuestion(unittest.TestCase):
    """Claude's AskUserQuestion, the one CLI with a question tool on its channel."""

    timeout = 120

    async def test_question(self):
        """The model asks a question: the phone sees a question card with the options, answers
        with one, and the model gets the answer."""
        w = Agents(self)
        await w.start()
        self.addCleanup(lambda: w.save_transcripts("claude/test_question"))
        sid = await w.start_session("claude", "QUESTION: pick a color")
        [approval] = await w.pending(sid)
        self.assertEqual(approval["kind"], "question", approval)
        self.assertEqual(approval["questions"][0]["question"], "Which color?")
        await w.answer(sid, approval, {"decision": "allow", "answers": {"Which color?": "Red"}})
        session = await w.finished(sid)
        self.assertEqual(session["status"], "completed", w.describe(session))
        self.assertIn("Red", session["output"])


SCENARIO = "RUN: touch allowed.txt ;; touch denied.txt"
MODES = ("plan", "default", "acceptEdits", "bypassPermissions")

#: What each CLI does, as this suite measured it (the README's table of tested versions):
#: ``deny_message`` -- a deny's message reaches the model; ``deny_ends_turn`` -- a reject stops
#: the turn (no text after it); ``resume`` -- a follow-up resumes the CLI's session (else the
#: error the phone sees matches ``resume_error``); ``history`` -- whose history lists it;
#: ``modes`` -- what each of MODES does with a command that writes.
SUPPORTS: dict[str, dict] = {
    "claude": dict(deny_message=True, deny_ends_turn=False, resume=True, history="claude",
                   modes=("asks", "asks", "runs", "runs")),
    "codex": dict(deny_message=False, deny_ends_turn=False, resume=True, history="codex",
                  modes=("asks", "asks", "runs", "runs")),
    "gemini": dict(deny_message=False, deny_ends_turn=True, resume=False, history="gemini",
                   resume_error="Internal error: .*[Ss]ession", scope="exact",
                   modes=("refuses", "asks", "asks", "runs")),
    "claude-acp": dict(deny_message=False, deny_ends_turn=True, resume=True, history="claude",
                       modes=("runs", "asks", "runs", "runs")),
    "codex-acp": dict(deny_message=False, deny_ends_turn=True, resume=True, history="codex",
                      modes=("asks", "asks", "runs", "runs")),
}  # fmt: skip


def _per_cli(cli: str) -> type:
    name = "".join(part.capitalize() for part in cli.split("-"))
    doc = f"The conformance suite against {CLIS[cli][0]} {version(cli)}."
    return type(f"{name}Tests", (Conformance, unittest.TestCase), {"cli": cli, "__doc__": doc})


ClaudeTests = _per_cli("claude")
CodexTests = _per_cli("codex")
GeminiTests = _per_cli("gemini")
ClaudeAcpTests = _per_cli("claude-acp")
CodexAcpTests = _per_cli("codex-acp")
