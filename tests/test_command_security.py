"""Command mode under attack (issue 11): bodies past the limit, a swapped project directory,
hostile agent session ids, DNS rebinding of the local API, and history outside --project-root."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource

from arp.client.command.history import ClaudeHistory, CodexHistory, GeminiHistory, ProjectScope, gemini_root
from arp.client.command.limits import MAX_BODY, BoundedChannel, bound_bodies
from arp.client.command.local import host_allowed
from arp.client.command.process import MOVED_EXIT
from arp.client.command.sessions import ApiError, SessionManager
from arp.client.command.store import SessionStore
from arp.client.command.web import make_site
from tests.command_helpers import (
    CLAUDE_ID,
    CODEX_ID,
    GEMINI_ID,
    Api,
    Workspace,
    fake,
    start_command_arpc,
    write_claude_history,
    write_codex_history,
    write_gemini_history,
)
from tests.helpers import raw_exchange, start_arps, status_of, wait_until

FINAL = ("completed", "failed", "cancelled", "interrupted")
HOSTILE = "--dangerously-skip-permissions"


# -- 1. request bodies -----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def spooled_bytes(pid: int, directory: str) -> int:
    """Bytes in the files process ``pid`` holds open under ``directory`` (temporary files are
    unlinked at once, so they only show up here)."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith(directory):
                total += os.stat(f"{fd_dir}/{name}").st_size
        except OSError:
            continue
    return total


class EndlessChunkedUpload(protocol.Protocol):
    """POSTs a chunked body that never ends (64 KiB chunks, as fast as the socket takes them)
    until an answer arrives or ``cap`` bytes are sent; then keeps reading until the server closes.

    ``sample()`` is called after every chunk, so the test can watch the server while it is attacked.
    """

    CHUNK = 64 * 1024

    def __init__(self, head: bytes, cap: int, sample) -> None:
        self.head = head
        self.cap = cap
        self.sample = sample
        self.sent = 0
        self.sent_at_answer: int | None = None
        self.response = b""
        self.closed: defer.Deferred = defer.Deferred()
        self._chunk = b"%x\r\n" % self.CHUNK + b"x" * self.CHUNK + b"\r\n"
        self._producing = True

    def connectionMade(self) -> None:
        self.transport.write(self.head)
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if not self._producing:
            return
        if self.sent >= self.cap:
            self.stopProducing()
            self.transport.abortConnection()  # no answer after all that: the server is spooling
            return
        self.transport.write(self._chunk)
        self.sent += self.CHUNK
        self.sample()

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def dataReceived(self, data: bytes) -> None:
        if self.sent_at_answer is None:
            self.sent_at_answer = self.sent
        self.response += data
        self.stopProducing()

    def connectionLost(self, reason) -> None:
        self._producing = False
        self.closed.callback(None)


class BodyLimitTests(unittest.TestCase):
    """Request bodies over the limit are refused as the limit is crossed, never spooled past it."""

    timeout = 120

    async def _arpc(self) -> None:
        self.ws = Workspace(self)
        self.tmp = str(Path(self.mktemp()).resolve())
        os.makedirs(self.tmp)
        self.relay = await start_arps(self)
        self.arpc = await start_command_arpc(
            self, self.relay, self.ws, "--api-endpoint", "tcp:0:interface=127.0.0.1", env={"TMPDIR": self.tmp}
        )
        match = await self.arpc.wait_for(r"api listening on 127\.0\.0\.1:(\d+)")
        self.api_port = int(match.group(1))

    async def _attack(self, port: int, head: bytes) -> tuple[EndlessChunkedUpload, int, int]:
        """Run an endless chunked upload; return it with arpc's largest spool and RSS growth seen."""
        pid = self.arpc.pid
        base_rss = rss_bytes(pid)
        seen = {"spool": 0, "rss": 0}

        def sample() -> None:
            seen["spool"] = max(seen["spool"], spooled_bytes(pid, self.tmp))
            seen["rss"] = max(seen["rss"], rss_bytes(pid) - base_rss)

        upload = EndlessChunkedUpload(head, 512 * 1024 * 1024, sample)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), upload)
        timer = reactor.callLater(60, upload.transport.abortConnection)
        self.addCleanup(lambda: timer.cancel() if timer.active() else None)
        await upload.closed
        sample()
        return upload, seen["spool"], seen["rss"]

    def _check_refused(self, upload: EndlessChunkedUpload, spool: int, rss_growth: int) -> None:
        self.assertIsNotNone(upload.sent_at_answer, f"no answer after {upload.sent} bytes of body")
        self.assertEqual(status_of(upload.response), 413, upload.response[:300])
        head, _, body = upload.response.partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", head)
        self.assertIn(str(MAX_BODY).encode(), body)
        self.assertIn("too large", json.loads(body)["error"])
        # the limit is what arpc ever stored, whatever the client pushed
        self.assertLessEqual(spool, MAX_BODY)
        self.assertLess(rss_growth, 32 * 1024 * 1024)

    async def test_endless_chunked_body_is_refused_at_the_limit(self):
        """A chunked POST that never ends, through the relay and on --api-endpoint: a 413 arrives
        while the body is still being sent, arpc never holds more than the limit in its temp dir,
        its memory does not grow with the upload, and the connection is closed."""
        await self._arpc()
        path = f"/api/sessions?token={self.arpc.token}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        upload, spool, rss = await self._attack(self.relay.ports["public"], head)
        self._check_refused(upload, spool, rss)
        local_head = head.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1:%d" % self.api_port)
        upload, spool, rss = await self._attack(self.api_port, local_head)
        self._check_refused(upload, spool, rss)
        # arpc still serves
        code, body = await Api(self, self.relay, self.arpc.token, self.arpc.access).get("/api/health")
        self.assertEqual(code, 200, body)

    async def test_content_length_over_the_limit_is_refused_before_the_body(self):
        """A Content-Length over the limit is a 413 at once: no ``100 Continue``, no byte read."""
        await self._arpc()
        for port, host in (
            (self.relay.ports["public"], "127.0.0.1"),
            (self.api_port, f"127.0.0.1:{self.api_port}"),
        ):
            raw = await raw_exchange(
                port,
                f"POST /api/sessions?token={self.arpc.token} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {10 * 1024**3}\r\n"
                "Expect: 100-continue\r\n\r\n".encode(),
            )
            self.assertEqual(status_of(raw), 413, raw[:300])
            self.assertNotIn(b"100 Continue", raw)

    def test_limit_crossed_and_ended_in_one_read_is_never_rendered(self):
        """A chunked body that crosses the limit and ends in the same read is answered 413 and the
        resource never runs with the truncated body; later pipelined bytes are dropped."""
        rendered = []

        class Sink(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                rendered.append(request.content.read())
                return b"ok"

        site = bound_bodies(make_site(Sink()))
        clock = Clock()
        channel = site.buildProtocol(None)
        channel.callLater = clock.callLater
        self.assertIsInstance(channel, BoundedChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        piece = b"x" * (64 * 1024)
        body = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + body
            + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(rendered, [])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:100])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.assertIsNone(channel.requests[-1].content)  # what was received is freed at once
        self.assertFalse(transport.disconnecting)  # lingers, reading and dropping...
        clock.advance(BoundedChannel.linger)
        self.assertTrue(transport.disconnected or transport.disconnecting)  # ...then cut

    def test_body_at_the_limit_is_served(self):
        """A body of exactly the limit (chunked or with Content-Length) reaches the resource whole."""
        rendered = []

        class Sink(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                rendered.append(len(request.content.read()))
                return b"ok"

        site = bound_bodies(make_site(Sink()))
        for framing in ("chunked", "length"):
            channel = site.buildProtocol(None)
            transport = StringTransport()
            channel.makeConnection(transport)
            body = b"y" * MAX_BODY
            if framing == "chunked":
                head = b"Transfer-Encoding: chunked\r\n\r\n"
                payload = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            else:
                head = b"Content-Length: %d\r\n\r\n" % len(body)
                payload = body
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\n" + head + payload)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:100])
            channel.connectionLost(None)
        self.assertEqual(rendered, [MAX_BODY, MAX_BODY])
        self.assertEqual(site.acceptableProtocols(), [b"http/1.1"])  # no HTTP/2 around the channel


# -- 2 and 3. the project directory and the agent's session id, with the fake CLIs -------------


class AgentTurnTests(unittest.TestCase):
    """Every turn re-checks its directory; agent session ids never become flags."""

    timeout = 60

    def _manager(self, ws: Workspace, **kw) -> SessionManager:
        binaries = {"Claude": fake("claude"), "Codex": fake("codex"), "Gemini": fake("gemini")}
        sub = kw.pop("sub", "")
        manager = SessionManager(
            **kw,
            store=SessionStore(Path(ws.data) / sub),
            reactor=reactor,
            binaries=binaries,
            project_roots=[ws.root],
            environ={**os.environ, **ws.env()},
            grace=0.5,
        )
        self.addCleanup(manager.stopService)
        return manager

    async def _done(self, manager: SessionManager, executor: str, prompt: str, path: Path):
        session = manager.create({"executor": executor, "prompt": prompt, "projectPath": str(path)})
        await wait_until(lambda: not session.running, timeout=15)
        return session

    async def test_follow_up_after_the_directory_became_a_symlink(self):
        """A session's directory swapped for a symlink (out of the root, or to another project in
        it) is refused on the next prompt: 409, and the agent does not run."""
        ws = Workspace(self)
        outside = Path(self.mktemp()).resolve()
        outside.mkdir()
        other = ws.root / "other"
        other.mkdir()
        manager = self._manager(ws)
        project = ws.root / "swapped"
        for target in (outside, other):
            project.mkdir()
            session = await self._done(manager, "Claude", f"first {target.name}", project)
            self.assertEqual(session.status, "completed")
            project.rename(ws.root / f"moved-{target.name}")
            project.symlink_to(target, target_is_directory=True)
            with self.assertRaises(ApiError) as e:
                manager.follow_up(session.id, {"prompt": f"again {target.name}"})
            self.assertEqual(e.exception.status, 409)
            self.assertIn("now resolves to", e.exception.message)
            self.assertEqual(ws.recorded_for(f"again {target.name}"), [])
            project.unlink()
        self.assertFalse([r for r in ws.recorded() if not r["cwd"].startswith(str(ws.root))])

    async def test_directory_swapped_between_check_and_start(self):
        """A swap that lands after arpc's check but before the agent starts is caught by the agent's
        wrapper (it compares the directory it entered): the turn fails, the agent never runs."""
        ws = Workspace(self)
        outside = Path(self.mktemp()).resolve()
        outside.mkdir()
        manager = self._manager(ws)
        project = ws.root / "racy"
        project.mkdir()
        session = await self._done(manager, "Claude", "first", project)
        check = manager._recheck_project

        def check_then_swap(path: str) -> None:
            check(path)
            project.rename(ws.root / "racy-moved")
            project.symlink_to(outside, target_is_directory=True)

        manager._recheck_project = check_then_swap
        manager.follow_up(session.id, {"prompt": "raced"})
        await wait_until(lambda: not session.running, timeout=15)
        self.assertEqual(session.status, "failed")
        self.assertEqual(session.record["exitCode"], MOVED_EXIT)
        self.assertIn("refusing to start the agent", session.record["error"])
        self.assertEqual(ws.recorded_for("raced"), [])

    async def test_hostile_session_id_never_reaches_the_command_line(self):
        """An agent reporting ``--dangerously-skip-permissions`` as its session id: the id is
        ignored, the follow-up resumes the last valid id as ``--resume=ID``; an agent that never
        reports a valid id cannot be continued (409), for each CLI's one-shot command line (in the
        interactive channels of Codex and Gemini the id travels inside JSON, never as an argument)."""
        ws = Workspace(self)
        manager = self._manager(ws)
        session = await self._done(manager, "Claude", "HOSTILE_ID one", ws.project)
        self.assertEqual(session.status, "completed")
        self.assertNotIn(HOSTILE, session.record["agentSessionIds"])
        valid = session.record["agentSessionIds"]
        self.assertEqual(len(valid), 1)
        manager.follow_up(session.id, {"prompt": "two"})
        await wait_until(lambda: not session.running, timeout=15)
        argv = ws.recorded_for("two")[0]["argv"]
        self.assertNotIn(HOSTILE, argv)
        self.assertIn(f"--resume={valid[0]}", argv)
        manager = self._manager(ws, oneshot=("Claude", "Codex", "Gemini"), sub="oneshot")
        for executor in ("Claude", "Codex", "Gemini"):
            session = await self._done(manager, executor, f"HOSTILE_ONLY {executor}", ws.project)
            self.assertEqual(session.record["agentSessionIds"], [], executor)
            with self.assertRaises(ApiError) as e:
                manager.follow_up(session.id, {"prompt": f"more {executor}"})
            self.assertEqual(e.exception.status, 409)
            self.assertEqual(ws.recorded_for(f"more {executor}"), [])
        # a record written before ids were checked: its bad id is not offered either
        session.record["agentSessionIds"] = [HOSTILE]
        with self.assertRaises(ApiError):
            manager.follow_up(session.id, {"prompt": "legacy"})
        self.assertFalse([r for r in ws.recorded() if HOSTILE in r["argv"]])


# -- 4. DNS rebinding of --api-endpoint --------------------------------------------------------


class HostCheckTests(unittest.TestCase):
    """--api-endpoint answers only requests whose Host names it."""

    timeout = 60

    def test_host_allowed(self):
        """localhost names, the listening address (any loopback when it is loopback) and --api-host
        names pass, with our port or none; other names, ports and malformed values do not."""
        ok = [
            b"localhost",
            b"localhost:8765",
            b"LOCALHOST.:8765",
            b"app.localhost:8765",
            b"127.0.0.1:8765",
            b"127.0.0.2:8765",
            b"[::1]:8765",
            b"box.lan:8765",
        ]
        bad = [
            b"evil.example",
            b"evil.example:8765",
            b"localhost:8766",
            b"127.0.0.1:80",
            b"localhost.evil.example:8765",
            b"10.0.0.1:8765",
            b"",
            b"localhost:8765:1",
            b"user@localhost:8765",
            b"[evil.example]:8765",
            None,
        ]
        for host in ok:
            self.assertTrue(host_allowed(host, "127.0.0.1", 8765, ["box.lan"]), host)
        for host in bad:
            self.assertFalse(host_allowed(host, "127.0.0.1", 8765, ["box.lan"]), host)
        self.assertTrue(host_allowed(b"192.168.1.5:8765", "192.168.1.5", 8765))
        self.assertFalse(host_allowed(b"127.0.0.1:8765", "192.168.1.5", 8765))
        self.assertTrue(host_allowed(b"192.168.1.5:8765", "::ffff:192.168.1.5", 8765))

    def test_api_host_option(self):
        """--api-host takes host names (repeatable); a port or a URL is a usage error."""
        from twisted.python.usage import UsageError

        from arp.client.tap import Options

        base = ["--server-addr", "127.0.0.1", "--auth-key", "k", "--command-mode"]
        options = Options()
        options.parseOptions([*base, "--api-host", "box.lan", "--api-host", "10.0.0.7"])
        self.assertEqual(options["api-host"], ["box.lan", "10.0.0.7"])
        for bad in ("box.lan:8765", "http://box.lan", "-x", ""):
            with self.assertRaises(UsageError, msg=bad):
                Options().parseOptions([*base, "--api-host", bad])

    async def test_rebinding_host_is_refused(self):
        """A request on the local API socket with ``Host: evil.example`` (what a rebound page
        sends) gets a JSON 421 and reaches no resource, for the API, the WebSocket and the console,
        even with a valid access token; our own names work; the relay path is unaffected."""
        ws = Workspace(self)
        relay = await start_arps(self)
        arpc = await start_command_arpc(
            self, relay, ws, "--api-endpoint", "tcp:0:interface=127.0.0.1", "--api-host", "box.lan"
        )
        port = int((await arpc.wait_for(r"api listening on 127\.0\.0\.1:(\d+)")).group(1))
        body = json.dumps({"executor": "Claude", "prompt": "rebound", "projectPath": str(ws.project)})
        auth = f"Authorization: Bearer {arpc.access}\r\n"
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
            for request in (
                f"POST /api/sessions HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}",
                f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n",
                f"GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n",
                f"GET /api/sessions/{'a' * 32}/stream HTTP/1.1\r\nHost: {host}\r\n{auth}"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n",
            ):
                raw = await raw_exchange(port, request.encode(), timeout=10)
                self.assertEqual(status_of(raw), 421, raw[:300])
                answer = json.loads(raw.partition(b"\r\n\r\n")[2])
                self.assertIn("--api-host", answer["error"])
        self.assertEqual(ws.recorded_for("rebound"), [])
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"box.lan:{port}"):
            raw = await raw_exchange(
                port, f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode()
            )
            self.assertEqual(status_of(raw), 200, raw[:300])
        code, _ = await Api(self, relay, arpc.token, arpc.access).call(
            "GET", "/api/health", headers={"Host": "evil.example"}
        )
        self.assertEqual(code, 200)


# -- 5. history outside --project-root ---------------------------------------------------------


class HistoryScopeTests(unittest.TestCase):
    """The agents' history is shown only for projects under --project-root."""

    timeout = 60

    def _fixtures(self, base: Path, inside: str, outside: str) -> dict:
        claude = base / "claude"
        info = write_claude_history(claude, inside)
        (claude / "projects" / "elsewhere").mkdir()
        outside_id = "44444444-2222-4333-8444-555555555555"
        line = {
            "type": "user",
            "cwd": outside,
            "sessionId": outside_id,
            "uuid": "u1",
            "parentUuid": None,
            "message": {"role": "user", "content": "secret plans"},
        }
        (claude / "projects" / "elsewhere" / f"{outside_id}.jsonl").write_text(json.dumps(line) + "\n")
        write_codex_history(base / "codex", outside)
        write_gemini_history(base / "gemini", outside)
        return {"claude": claude, "inside": info, "outside_id": outside_id}

    def test_readers_keep_to_the_scope(self):
        """Listings, project lists and message reads skip projects outside the roots (a look-alike
        prefix such as ``/root-evil`` included); without a scope everything is shown."""
        base = Path(self.mktemp())
        fx = self._fixtures(base, "/work/code/app", "/work/code-evil/app")
        scope = ProjectScope(["/work/code"])
        claude = ClaudeHistory([fx["claude"]], within=scope)
        self.assertEqual({p["path"] for p in claude.projects()}, {"/work/code/app"})
        ids = {s["id"] for s in claude.sessions(limit=500)["sessions"]}
        self.assertIn(CLAUDE_ID, ids)
        self.assertNotIn(fx["outside_id"], ids)
        self.assertNotIn(fx["inside"]["third"], ids)  # /srv/a_b c
        self.assertIsNotNone(claude.messages(CLAUDE_ID))
        self.assertIsNone(claude.messages(fx["outside_id"]))
        self.assertEqual(claude.sessions(project="/work/code-evil/app")["total"], 0)
        codex = CodexHistory(base / "codex", within=scope)
        self.assertEqual(codex.sessions()["total"], 0)
        self.assertIsNone(codex.messages(CODEX_ID))
        gemini = GeminiHistory(gemini_root({"GEMINI_CLI_HOME": str(base / "gemini")}), within=scope)
        self.assertEqual(gemini.sessions()["total"], 0)
        self.assertIsNone(gemini.messages(GEMINI_ID))
        anywhere = ClaudeHistory([fx["claude"]])
        self.assertIsNotNone(anywhere.messages(fx["outside_id"]))
        self.assertEqual(CodexHistory(base / "codex").sessions()["total"], 1)
        self.assertTrue(ProjectScope(["/"]).contains("/anything"))
        for bad in ("relative/app", "/work/code/../etc", "", None, 3):
            self.assertFalse(scope.contains(bad), bad)

    async def test_history_api_outside_the_root(self):
        """Through the relay: history of a project outside --project-root is neither listed nor
        readable; with --history-anywhere it is."""
        ws = Workspace(self)
        outside = "/srv/elsewhere/app"
        write_claude_history(ws.claude, str(ws.project))
        write_claude_history(ws.claude / "second", outside)
        os.rename(
            ws.claude / "second" / "projects" / "-srv-elsewhere-app",
            ws.claude / "projects" / "-srv-elsewhere-app",
        )
        write_codex_history(ws.codex, outside)
        write_gemini_history(ws.gemini, outside)
        relay = await start_arps(self)
        seen = {}
        for flags in ((), ("--history-anywhere",)):
            arpc = await start_command_arpc(self, relay, ws, *flags)
            api = Api(self, relay, arpc.token, arpc.access)
            _, projects = await api.get("/api/claude/projects")
            _, codex = await api.get("/api/codex/sessions")
            _, gemini = await api.get("/api/gemini/sessions")
            code, _ = await api.get(f"/api/codex/sessions/{CODEX_ID}")
            seen[flags] = ({p["path"] for p in projects["projects"]}, codex["total"], gemini["total"], code)
            await arpc.stop()
        paths, codex_total, gemini_total, code = seen[()]
        self.assertIn(str(ws.project), paths)
        self.assertNotIn(outside, paths)
        self.assertNotIn("/srv/a_b c", paths)
        self.assertEqual((codex_total, gemini_total, code), (0, 0, 404))
        paths, codex_total, gemini_total, code = seen[("--history-anywhere",)]
        self.assertIn(outside, paths)
        self.assertEqual((codex_total, gemini_total, code), (1, 1, 200))
