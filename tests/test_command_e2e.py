"""Command mode end to end: real arps and ``arpc --command-mode`` processes, fake agent CLIs."""

from __future__ import annotations

import json

from twisted.trial import unittest

from tests.command_helpers import (
    CLAUDE_ID,
    CODEX_ID,
    GEMINI_ID,
    Api,
    Workspace,
    open_stream,
    process_running,
    start_command_arpc,
    wait_events,
    write_claude_history,
    write_codex_history,
    write_gemini_history,
)
from tests.helpers import HTTPClient, raw_exchange, start_arps, status_of, wait_until

FINAL = ("completed", "failed", "cancelled", "interrupted")


class CommandModeTests(unittest.TestCase):
    """A remote client drives agents on the private machine through arps + arpc."""

    timeout = 60
    tls = False  # the subclass below runs every test with TLS on every hop

    async def _setup(self, *extra: str, **kw) -> Api:
        self.ws = Workspace(self)
        self.relay = await start_arps(self, tls=self.tls)
        self.arpc = await start_command_arpc(self, self.relay, self.ws, *extra, **kw)
        self.api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        return self.api

    def _new(self, prompt: str, executor: str = "Claude", **more) -> dict:
        return {"executor": executor, "prompt": prompt, "projectPath": str(self.ws.project), **more}

    async def test_create_poll_stream_continue(self):
        """Create a Claude session, poll it, replay its stream with since=, then continue it."""
        api = await self._setup()
        code, health = await api.get("/api/health")
        self.assertEqual(code, 200)
        self.assertTrue(health["executors"]["Claude"]["found"])
        code, session = await api.post("/api/sessions", self._new("hello"))
        self.assertEqual(code, 201, session)
        self.assertEqual(session["status"], "running")
        sid = session["id"]
        done = await api.wait_status(sid, FINAL)
        self.assertEqual(done["status"], "completed", done)
        self.assertEqual(done["exitCode"], 0)
        self.assertEqual(done["output"], "Claude says: hello")
        self.assertEqual(done["costUsd"], 0.0213)
        agent_id = done["agentSessionId"]
        self.assertTrue(agent_id)
        kinds = [e["kind"] for e in done["events"]]
        self.assertEqual(kinds[0], "turn")
        self.assertEqual(kinds[-1], "status")
        self.assertEqual([e["seq"] for e in done["events"]], list(range(1, len(kinds) + 1)))
        run = self.ws.recorded_for("hello")[0]
        self.assertEqual(run["cwd"], str(self.ws.project))
        self.assertIn("--verbose", run["argv"])
        # the answer as it is written: text deltas stream before the whole message
        datas = [e["data"] for e in done["events"] if e["kind"] == "agent"]
        deltas = [
            d["event"]["delta"]["text"]
            for d in datas
            if d.get("type") == "stream_event" and d["event"].get("type") == "content_block_delta"
        ]
        self.assertEqual("".join(deltas), "Claude says: hello")
        self.assertGreater(len(deltas), 1)
        whole = next(
            i
            for i, d in enumerate(datas)
            if d.get("type") == "assistant" and d["message"]["content"][0]["type"] == "text"
        )
        last_delta = max(i for i, d in enumerate(datas) if d.get("type") == "stream_event")
        self.assertLess(last_delta, whole)
        self.assertEqual(run["argv"][run["argv"].index("--permission-mode") + 1], "acceptEdits")

        # the whole backlog, then the final status, then a close
        stream = await open_stream(self, self.relay, api.token, sid, access=api.access)
        await stream.closed
        self.assertEqual(stream.events, done["events"])
        self.assertEqual(stream.close_code, 1000)
        # since=N: exactly the events after N
        stream = await open_stream(self, self.relay, api.token, sid, since=3, access=api.access)
        await stream.closed
        self.assertEqual([e["seq"] for e in stream.events], [e["seq"] for e in done["events"][3:]])

        code, body = await api.post(f"/api/sessions/{sid}/messages", {"prompt": "and more"})
        self.assertEqual(code, 202, body)
        self.assertEqual(body["events"][0]["kind"], "turn")
        again = await api.wait_status(sid, FINAL)
        self.assertEqual(again["status"], "completed")
        self.assertEqual(again["output"], "Claude says: hello\nClaude says: and more")
        self.assertEqual(len(again["turns"]), 2)
        follow = self.ws.recorded_for("and more")[0]
        self.assertEqual(follow["resume"], agent_id)

        code, listing = await api.get("/api/sessions")
        self.assertEqual(code, 200)
        self.assertEqual([s["id"] for s in listing["sessions"]], [sid])
        self.assertNotIn("events", listing["sessions"][0])

        code, body = await api.delete(f"/api/sessions/{sid}")
        self.assertEqual((code, body), (200, {"deleted": sid}))
        code, body = await api.get(f"/api/sessions/{sid}")
        self.assertEqual(code, 404)

    async def test_live_stream_and_cancel_kills_process_tree(self):
        """A live viewer sees ticks as they come; DELETE ends the agent and its child; the stream ends."""
        api = await self._setup()
        code, session = await api.post("/api/sessions", self._new("LONG run"))
        self.assertEqual(code, 201, session)
        sid = session["id"]
        stream = await open_stream(self, self.relay, api.token, sid, access=api.access)
        await wait_events(stream, lambda evs: sum(1 for e in evs if e["kind"] == "agent") >= 5)
        await wait_until(lambda: self.ws.recorded_for("LONG run"))
        run = self.ws.recorded_for("LONG run")[0]
        self.assertTrue(process_running(run["pid"]))
        self.assertTrue(process_running(run["child"]))
        # a second viewer joining late with since= gets no repeats and no gaps
        late = await open_stream(self, self.relay, api.token, sid, since=2, access=api.access)

        code, body = await api.delete(f"/api/sessions/{sid}")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["status"], "cancelled")
        self.assertFalse(process_running(run["pid"]))
        self.assertFalse(process_running(run["child"]))  # it ignored SIGINT: SIGTERM got it
        await stream.closed
        await late.closed
        self.assertEqual(stream.events[-1]["kind"], "status")
        self.assertEqual(stream.events[-1]["status"], "cancelled")
        seqs = [e["seq"] for e in stream.events]
        self.assertEqual(seqs, list(range(1, seqs[-1] + 1)))
        self.assertEqual([e["seq"] for e in late.events], list(range(3, seqs[-1] + 1)))
        code, detail = await api.get(f"/api/sessions/{sid}")
        self.assertEqual(detail["status"], "cancelled")
        self.assertIn("tick 0", detail["output"])

    async def test_restart_keeps_sessions_and_marks_interrupted(self):
        """After arpc is killed and restarted, finished sessions are intact, a running one is interrupted."""
        api = await self._setup()
        code, finished = await api.post("/api/sessions", self._new("first", "Codex"))
        done = await api.wait_status(finished["id"], FINAL)
        self.assertEqual(done["output"], "Codex says: first")
        code, running = await api.post("/api/sessions", self._new("LONG again"))
        await wait_until(lambda: self.ws.recorded_for("LONG again"))
        await api.wait_status(running["id"], ("running",))
        await self.arpc.kill()  # SIGKILL: no chance to record anything
        run = self.ws.recorded_for("LONG again")[0]
        # the orphaned agent dies of its broken stdout pipe; the child is the workspace's to clean up
        self.arpc = await start_command_arpc(self, self.relay, self.ws)
        api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        code, listing = await api.get("/api/sessions")
        statuses = {s["id"]: s["status"] for s in listing["sessions"]}
        self.assertEqual(statuses, {finished["id"]: "completed", running["id"]: "interrupted"})
        code, detail = await api.get(f"/api/sessions/{finished['id']}")
        self.assertEqual(detail["output"], "Codex says: first")
        self.assertEqual(detail["events"], done["events"])
        code, detail = await api.get(f"/api/sessions/{running['id']}")
        self.assertEqual(detail["events"][-1]["status"], "interrupted")
        stream = await open_stream(
            self, self.relay, api.token, running["id"], since=detail["lastSeq"] - 1, access=api.access
        )
        await stream.closed
        self.assertEqual([e["status"] for e in stream.events], ["interrupted"])
        await wait_until(lambda: not process_running(run["pid"]))
        # an interrupted Claude session can be continued
        code, body = await api.post(f"/api/sessions/{running['id']}/messages", {"prompt": "resume it"})
        self.assertEqual(code, 202, body)
        self.assertEqual((await api.wait_status(running["id"], FINAL))["status"], "completed")

    async def test_codex_gemini_and_failures(self):
        """Codex and Gemini sessions, their continuation, a failing agent, a chatty one, odd output."""
        api = await self._setup()
        ids = {}
        for executor, prompt in (
            ("codex", "hi codex"),
            ("Gemini", "hi gemini"),
            ("Claude", "FAIL now"),
            ("gemini", "FAIL too"),
            ("Claude", "STDERR lots"),
            ("Codex", "GARBAGE in"),
        ):
            code, body = await api.post("/api/sessions", self._new(prompt, executor))
            self.assertEqual(code, 201, body)
            ids[prompt] = body["id"]
            await api.wait_status(body["id"], FINAL)  # --max-sessions 4 by default: one at a time here
        results = {p: (await api.get(f"/api/sessions/{i}"))[1] for p, i in ids.items()}
        self.assertEqual(results["hi codex"]["output"], "Codex says: hi codex")
        self.assertEqual(results["hi gemini"]["output"], "Gemini says: hi gemini")
        self.assertEqual(results["FAIL now"]["status"], "failed")
        self.assertEqual(results["FAIL now"]["error"], "fake failure requested")
        self.assertEqual(results["FAIL too"]["status"], "failed")
        self.assertEqual(results["FAIL too"]["error"], "Internal error: quota exceeded")  # data.details kept
        chatty = results["STDERR lots"]
        self.assertEqual(chatty["status"], "completed")
        stderr = [e["text"] for e in chatty["events"] if e["kind"] == "stderr"]
        self.assertIn("more bytes of stderr not recorded", stderr[-1])
        odd = results["GARBAGE in"]
        self.assertEqual(odd["status"], "completed")
        self.assertIn(
            "Reading prompt from stdin...", [e.get("text") for e in odd["events"] if e["kind"] == "raw"]
        )
        self.assertIn("item/plan/delta", [e.get("type") for e in odd["events"]])
        codex_run = self.ws.recorded_for("hi codex")[0]
        self.assertEqual(codex_run["argv"][1:], ["app-server"])  # the interactive channel
        for prompt, executor in (("hi codex", "codex"), ("hi gemini", "gemini")):
            sid = ids[prompt]
            code, body = await api.post(f"/api/sessions/{sid}/messages", {"prompt": f"more {executor}"})
            self.assertEqual(code, 202, body)
            await api.wait_status(sid, FINAL)
            follow = self.ws.recorded_for(f"more {executor}")[0]
            self.assertEqual(follow["resume"], results[prompt]["agentSessionId"])

    async def test_history_listings(self):
        """Claude projects/sessions/messages, Codex and Gemini sessions, read from the real layouts
        (the fixtures' projects are outside --project-root, so --history-anywhere shows them)."""
        ws_holder = Workspace(self)
        info = write_claude_history(ws_holder.claude)
        write_codex_history(ws_holder.codex)
        write_gemini_history(ws_holder.gemini)
        self.ws = ws_holder
        self.relay = await start_arps(self, tls=self.tls)
        self.arpc = await start_command_arpc(self, self.relay, self.ws, "--history-anywhere")
        api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        code, body = await api.get("/api/claude/projects")
        self.assertEqual(code, 200)
        self.assertIn("/home/alice/my.proj", [p["path"] for p in body["projects"]])
        code, body = await api.get("/api/claude/sessions?project=/home/alice/my.proj&limit=10")
        self.assertEqual([s["id"] for s in body["sessions"]], info["sessions"])
        code, body = await api.get(f"/api/claude/sessions/{CLAUDE_ID}")
        self.assertEqual(code, 200)
        self.assertEqual(len(body["messages"]), 4)
        code, body = await api.get("/api/claude/sessions/00000000-0000-4000-8000-000000000000")
        self.assertEqual(code, 404)
        code, body = await api.get("/api/codex/sessions")
        self.assertEqual([s["id"] for s in body["sessions"]], [CODEX_ID])
        code, body = await api.get(f"/api/codex/sessions/{CODEX_ID}")
        self.assertEqual(body["messages"][0]["text"], "Fix the README typo")
        code, body = await api.get("/api/gemini/sessions?project=/home/alice/gem")
        self.assertEqual([s["id"] for s in body["sessions"]], [GEMINI_ID])
        code, body = await api.get(f"/api/gemini/sessions/{GEMINI_ID}")
        self.assertEqual(body["messages"][1]["role"], "assistant")
        code, body = await api.get("/api/claude/sessions?limit=0")
        self.assertEqual(code, 400)

    async def test_bad_inputs(self):
        """Every bad input gets its status and a JSON message, through the relay."""
        api = await self._setup("--max-sessions", "1", "--permission-mode", "default")
        good = self._new("hi")
        self.assertEqual((await api.post("/api/sessions", raw=b"{not json"))[0], 400)
        cases = [
            ({**good, "executor": "nope"}, 400, "unknown executor"),
            ({**good, "prompt": ""}, 400, "prompt"),
            ({**good, "prompt": "x" * 100_001}, 400, "too long"),
            ({**good, "projectPath": "/etc"}, 400, "--project-root"),
            ({**good, "projectPath": str(self.ws.root / "nope")}, 400, "not an existing directory"),
            ({**good, "permissionMode": "acceptEdits"}, 403, "--max-permission-mode"),
            ({**good, "executor": "Gemini", "model": "-x"}, 400, "model"),
        ]
        for body, status, text in cases:
            code, answer = await api.post("/api/sessions", body)
            self.assertEqual(code, status, answer)
            self.assertIn(text, answer["error"])
        code, answer = await api.post("/api/sessions", raw=b"x" * 300_000)
        self.assertEqual(code, 413)
        code, answer = await api.get("/api/sessions/" + "f" * 32)
        self.assertEqual(code, 404)
        code, answer = await api.post("/api/sessions/" + "f" * 32 + "/messages", {"prompt": "x"})
        self.assertEqual(code, 404)
        code, answer = await api.call("PUT", "/api/sessions")
        self.assertEqual(code, 405)
        code, answer = await api.get("/no-such-page")
        self.assertEqual(code, 404)
        code, answer = await api.get("/api/sessions?offset=x")
        self.assertEqual(code, 400)
        # a foreign page may not start agents (the browser would send our cookie)
        code, answer = await api.post("/api/sessions", good, headers={"Origin": "https://evil.example"})
        self.assertEqual(code, 403)
        self.assertIn("--cors-origin", answer["error"])
        # capacity, and continuing a running session
        code, running = await api.post("/api/sessions", self._new("LONG x"))
        self.assertEqual(code, 201)
        code, answer = await api.post("/api/sessions", good)
        self.assertEqual(code, 429, answer)
        code, answer = await api.post(f"/api/sessions/{running['id']}/messages", {"prompt": "more"})
        self.assertEqual(code, 409)
        # WebSocket to an unknown session is refused
        with self.assertRaises(ConnectionError):
            await open_stream(self, self.relay, api.token, "e" * 32, access=api.access)
        code, answer = await api.delete(f"/api/sessions/{running['id']}")
        self.assertEqual(answer["status"], "cancelled")

    async def test_missing_binary_and_cors(self):
        """A missing CLI names the flag to set; --cors-origin allows exactly the listed origin;
        --api-endpoint serves the same API locally."""
        api = await self._setup(
            "--command-path",
            "/nonexistent/claude",
            "--cors-origin",
            "https://console.example",
            "--api-endpoint",
            "tcp:0:interface=127.0.0.1",
            binaries=False,
        )
        match = await self.arpc.wait_for(r"api listening on 127\.0\.0\.1:(\d+)")
        local = HTTPClient(self)
        response, body = await local.request(
            "GET", f"http://127.0.0.1:{match.group(1)}/api/health", {"Authorization": f"Bearer {api.access}"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["sessions"], {"running": 0, "max": 4})
        code, answer = await api.post("/api/sessions", self._new("hi"))
        self.assertEqual(code, 503)
        self.assertIn("--command-path", answer["error"])
        code, health = await api.get("/api/health")
        self.assertFalse(health["executors"]["Claude"]["found"])
        raw = await raw_exchange(
            self.relay.ports["public"],
            f"OPTIONS /api/sessions?token={api.token} HTTP/1.1\r\nHost: x\r\nOrigin: https://console.example\r\n"
            "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n".encode(),
            tls=self.relay.client_tls(),
        )
        self.assertEqual(status_of(raw), 204)
        self.assertIn(b"Access-Control-Allow-Origin: https://console.example", raw)
        raw = await raw_exchange(
            self.relay.ports["public"],
            f"OPTIONS /api/sessions?token={api.token} HTTP/1.1\r\nHost: x\r\nOrigin: https://other.example\r\n"
            "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n".encode(),
            tls=self.relay.client_tls(),
        )
        self.assertEqual(status_of(raw), 403)
        self.assertNotIn(b"Access-Control-Allow-Origin", raw)


class CommandModeOverTLSTests(CommandModeTests):
    """The same, with TLS on every hop as the README's TLS recipe deploys it: arpc reaches the
    control and proxy ports with ``tls:`` endpoints, clients use https and wss on the public port.
    The command-mode site is served over a TLS tunnel, which is not a TLS transport to it."""

    tls = True
