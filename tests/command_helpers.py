"""Helpers for the command-mode tests: fake agents, history fixtures, API and WebSocket clients."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from tests.helpers import HTTPClient, Relay, TwistdProcess, start_arpc, wait_until

FAKES = Path(__file__).resolve().parent / "fakes"
CLAUDE_ID = "3f6c2b1e-8d4a-4c1b-9e2f-5a7d0c9b1e42"
CODEX_ID = "019a3c5e-7f21-7b40-9d2e-4c1f8a6b2d90"
GEMINI_ID = "c2f1a3d4-5b6e-4f70-8a91-b2c3d4e5f601"


def fake(name: str) -> str:
    """The path of a fake agent CLI."""
    path = FAKES / name
    assert path.stat().st_mode & stat.S_IXUSR, f"{path} must be executable"
    return str(path)


class Workspace:
    """A temp tree: a project root with a project, agent homes, a record dir for the fakes."""

    def __init__(self, test) -> None:
        base = Path(test.mktemp()).resolve()
        self.base = base
        self.root = base / "projects"
        self.project = self.root / "my.proj"
        self.project.mkdir(parents=True)
        self.claude = base / "claude-config"
        self.codex = base / "codex-home"
        self.gemini = base / "gemini-home"
        self.records = base / "records"
        self.records.mkdir()
        self.data = str(base / "arpc-data")
        test.addCleanup(self.kill_leftovers)

    def env(self) -> dict[str, str]:
        """The environment for an arpc under test (its agents inherit it)."""
        return {
            "CLAUDE_CONFIG_DIR": str(self.claude),
            "CODEX_HOME": str(self.codex),
            "GEMINI_CLI_HOME": str(self.gemini),
            "ARP_FAKE_RECORD_DIR": str(self.records),
            "CLAUDECODE": "1",  # arpc must drop it for the child
            "HOME": str(self.base),
            # the fakes (``#!/usr/bin/env python3``) run on the interpreter under test: under
            # ``trial -j`` the workers' PYTHONPATH is that interpreter's sys.path, which another
            # Python (CPython beside PyPy) cannot import its standard library from
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]),
        }

    def recorded(self) -> list[dict[str, Any]]:
        """What every fake agent run recorded (argv, cwd, pids...)."""
        out = []
        for path in sorted(self.records.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except ValueError:
                continue
        return out

    def recorded_for(self, prompt: str) -> list[dict[str, Any]]:
        return [r for r in self.recorded() if r["prompt"] == prompt]

    def kill_leftovers(self) -> None:
        """SIGKILL any fake agent (and child) a failed test may have left behind."""
        for info in self.recorded():
            for pid in (info.get("pid"), info.get("child")):
                if pid and process_running(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def start_command_arpc(
    test,
    relay: Relay,
    ws: Workspace,
    *extra: str,
    env: dict[str, str] | None = None,
    binaries: bool = True,
    wait: bool = True,
) -> TwistdProcess:
    """Start ``arpc --command-mode`` against ``relay`` with the fakes, in ``ws``."""
    args = ["--no-log-file", "--command-mode", "--project-root", str(ws.root)]
    if binaries:
        args += [
            "--command-path",
            fake("claude"),
            "--codex-path",
            fake("codex"),
            "--gemini-path",
            fake("gemini"),
        ]
    return await start_arpc(
        test, relay, *args, *extra, data_dir=ws.data, wait=wait, env={**ws.env(), **(env or {})}
    )


class Api:
    """JSON calls to the command-mode API through the relay: the client id in the query (routing),
    the access token, if given, as ``Authorization: Bearer``."""

    def __init__(self, test, relay: Relay, token: str, access: str | None = None) -> None:
        self.client = HTTPClient(test, ca=relay.tls["ca"] if relay.tls else None)
        self.relay = relay
        self.token = token
        self.access = access

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.relay.public}{path}{sep}token={self.token}"

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.access:
            h["Authorization"] = f"Bearer {self.access}"
        h.update(headers or {})
        response, payload = await self.client.request(method, self.url(path), h, data)
        try:
            return response.code, json.loads(payload)
        except ValueError:
            raise AssertionError(f"{method} {path}: not JSON ({response.code}): {payload[:300]!r}")

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self.call("DELETE", path)

    async def wait_status(self, session_id: str, statuses: tuple[str, ...], timeout: float = 20.0) -> dict:
        """Poll the session until its status is one of ``statuses``; return its detail."""
        seen: dict = {}

        async def check() -> bool:
            code, body = await self.get(f"/api/sessions/{session_id}")
            seen["body"] = body
            return code == 200 and body["status"] in statuses

        deadline = reactor.seconds() + timeout
        while not await check():
            if reactor.seconds() > deadline:
                raise AssertionError(f"session {session_id} not {statuses}: {seen.get('body')}")
            await sleep(0.05)
        return seen["body"]


def sleep(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class StreamClient(WebSocketClientProtocol):
    """Collects the JSON events of a session stream until the server closes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: int | None = None

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"WebSocket refused: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(self)


async def open_stream(
    test, relay: Relay, token: str, session_id: str, since: int | None = None, access: str | None = None
) -> StreamClient:
    """Open the session's WebSocket through the relay (``access`` as a Bearer header); wait until open."""
    query = f"token={token}" + (f"&since={since}" if since is not None else "")
    scheme = "wss" if relay.tls else "ws"
    url = f"{scheme}://127.0.0.1:{relay.ports['public']}/api/sessions/{session_id}/stream?{query}"
    headers = {"Authorization": f"Bearer {access}"} if access else None
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = StreamClient
    factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=2)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"])
    if relay.tls:
        endpoint = wrapClientTLS(relay.client_tls(), endpoint)
    proto: StreamClient = await endpoint.connect(factory)

    def cleanup() -> defer.Deferred | None:
        if proto.transport is not None and not proto.closed.called:
            proto.transport.abortConnection()
            return proto.closed
        return None

    test.addCleanup(cleanup)
    await proto.opened
    return proto


async def wait_events(proto: StreamClient, predicate, timeout: float = 15.0) -> None:
    """Wait until ``predicate(proto.events)`` holds."""
    await wait_until(lambda: predicate(proto.events), timeout=timeout)


# -- history fixtures in the real layouts (reference/agents.md §2-4) -----------------------


def _jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def claude_line(
    kind: str, n: int, parent: int | None, content: Any, cwd: str, sid: str, **extra: Any
) -> dict:
    line = {
        "parentUuid": f"a0000000-0000-4000-8000-{parent:012d}" if parent else None,
        "isSidechain": False,
        "userType": "external",
        "cwd": cwd,
        "sessionId": sid,
        "version": "2.0.30",
        "gitBranch": "main",
        "type": kind,
        "message": {"role": kind, "content": content}
        if kind == "user"
        else {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 4, "output_tokens": 41},
        },
        "uuid": f"a0000000-0000-4000-8000-{n:012d}",
        "timestamp": f"2025-10-30T09:15:{n:02d}.118Z",
    }
    line.update(extra)
    return line


def write_claude_history(config_dir: Path, project: str = "/home/alice/my.proj") -> dict[str, Any]:
    """The agents.md fixture plus: a second session, a corrupt line, a sidechain file, an agent file,
    an unrelated project whose directory name collides with ours."""
    projects = config_dir / "projects"
    name = "".join(c if c.isalnum() else "-" for c in project)
    d = projects / name
    d.mkdir(parents=True)
    sid = CLAUDE_ID
    lines = [
        claude_line("user", 1, None, "List the files", project, sid),
        claude_line(
            "assistant",
            2,
            1,
            [{"type": "tool_use", "id": "toolu_01Ab", "name": "Bash", "input": {"command": "ls"}}],
            project,
            sid,
            requestId="req_011CUa",
        ),
        claude_line(
            "user",
            3,
            2,
            [
                {
                    "tool_use_id": "toolu_01Ab",
                    "type": "tool_result",
                    "content": "README.md\nsrc",
                    "is_error": False,
                }
            ],
            project,
            sid,
            toolUseResult={"stdout": "README.md\nsrc", "stderr": "", "interrupted": False, "isImage": False},
        ),
        claude_line("assistant", 4, 3, [{"type": "text", "text": "There is a README."}], project, sid),
    ]
    text = _jsonl(lines) + "{not json at all\n"
    text += _jsonl(
        [
            {
                "type": "summary",
                "summary": "Listing project files",
                "leafUuid": "a0000000-0000-4000-8000-000000000004",
            },
            {"type": "custom-title", "customTitle": "File listing", "sessionId": sid},
        ]
    )
    (d / f"{sid}.jsonl").write_text(text)
    os.utime(d / f"{sid}.jsonl", (1_700_000_100, 1_700_000_100))
    second = "11111111-2222-4333-8444-555555555555"
    (d / f"{second}.jsonl").write_text(
        _jsonl(
            [
                claude_line("user", 1, None, "<command-name>/clear</command-name>", project, second),
                claude_line("user", 2, 1, "Fix the typo", project, second),
                claude_line("assistant", 3, 2, [{"type": "text", "text": "Done."}], project, second),
            ]
        )
    )
    os.utime(d / f"{second}.jsonl", (1_700_000_200, 1_700_000_200))
    sidechain = "99999999-2222-4333-8444-555555555555"
    (d / f"{sidechain}.jsonl").write_text(
        _jsonl([claude_line("user", 1, None, "side", project, sidechain, isSidechain=True)])
    )
    os.utime(d / f"{sidechain}.jsonl", (1_699_000_000, 1_699_000_000))
    (d / "agent-abc.jsonl").write_text(_jsonl([claude_line("user", 1, None, "agent", project, sid)]))
    # /home/alice/my-proj sanitizes to the same directory name; it lives in its own session file
    other_project = project.replace(".", "-")
    other = "22222222-2222-4333-8444-555555555555"
    (d / f"{other}.jsonl").write_text(_jsonl([claude_line("user", 1, None, "Other", other_project, other)]))
    os.utime(d / f"{other}.jsonl", (1_699_500_000, 1_699_500_000))
    elsewhere = projects / "-srv-a-b-c"
    elsewhere.mkdir()
    third = "33333333-2222-4333-8444-555555555555"
    (elsewhere / f"{third}.jsonl").write_text(
        _jsonl([claude_line("user", 1, None, "Hello there", "/srv/a_b c", third)])
    )
    os.utime(elsewhere / f"{third}.jsonl", (1_600_000_000, 1_600_000_000))
    return {"project": project, "sessions": [second, sid], "other": other, "third": third}


def write_codex_history(codex_home: Path, cwd: str = "/home/alice/proj") -> str:
    """One rollout in ``sessions/YYYY/MM/DD/`` as agents.md §3 shows, plus a corrupt line."""
    d = codex_home / "sessions" / "2025" / "10" / "30"
    d.mkdir(parents=True)
    ts = "2025-10-30T09:15:02.118Z"
    lines = [
        {
            "timestamp": ts,
            "type": "session_meta",
            "payload": {
                "id": CODEX_ID,
                "timestamp": ts,
                "cwd": cwd,
                "originator": "codex_exec",
                "cli_version": "0.50.0",
                "source": "exec",
                "model_provider": "openai",
            },
        },
        {
            "timestamp": ts,
            "type": "turn_context",
            "payload": {"cwd": cwd, "approval_policy": "never", "model": "gpt-5-codex"},
        },
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<environment_context>x</environment_context>"}],
            },
        },
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Fix the README typo"}],
            },
        },
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {
                "type": "function_call",
                "name": "shell",
                "arguments": '{"command":["ls"]}',
                "call_id": "call_1",
            },
        },
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {"type": "function_call_output", "call_id": "call_1", "output": "README.md"},
        },
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Fixed the typo in README.md."}],
            },
        },
        {
            "timestamp": "2025-10-30T09:15:09.900Z",
            "type": "event_msg",
            "payload": {"type": "agent_message", "message": "Fixed the typo in README.md."},
        },
    ]
    text = _jsonl(lines[:3]) + "garbage\n" + _jsonl(lines[3:])
    (d / f"rollout-2025-10-30T09-15-02-{CODEX_ID}.jsonl").write_text(text)
    return CODEX_ID


def write_gemini_history(gemini_home: Path, project: str = "/home/alice/gem") -> str:
    """A v0.39+ JSONL chat in a slug project dir with its ``.project_root`` marker."""
    d = gemini_home / ".gemini" / "tmp" / "gem" / "chats"
    d.mkdir(parents=True)
    (d.parent / ".project_root").write_text(project)
    meta = {
        "sessionId": GEMINI_ID,
        "projectHash": "abc",
        "startTime": "2025-11-20T10:00:00.000Z",
        "lastUpdated": "2025-11-20T10:00:04.000Z",
        "kind": "main",
    }
    lines = [
        meta,
        {"id": "m1", "timestamp": "2025-11-20T10:00:00.000Z", "type": "user", "content": "List the files"},
        {
            "id": "m2",
            "timestamp": "2025-11-20T10:00:03.000Z",
            "type": "gemini",
            "content": "There are two entries.",
            "model": "gemini-2.5-pro",
            "toolCalls": [
                {"id": "t1", "name": "list_directory", "args": {"dir_path": "."}, "status": "success"}
            ],
        },
        {"id": "m3", "timestamp": "2025-11-20T10:00:03.500Z", "type": "user", "content": "never mind"},
        {"$rewindTo": "m3"},
        {"$set": {"lastUpdated": "2025-11-20T10:00:05.000Z"}},
    ]
    (d / f"session-2025-11-20T10-00-{GEMINI_ID[:8]}.jsonl").write_text(_jsonl(lines))
    return GEMINI_ID
