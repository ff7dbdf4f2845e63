"""The real agent CLIs under test: where they are installed, how each is pointed at the mock model,
and a fixture that runs them behind a real arps and ``arpc --command-mode`` with their stdio
recorded (``tee.py``).

The CLIs come from npm (``package.json`` and its lock file beside this file): ``npm ci`` here
installs the pinned versions into ``node_modules``; ``ARP_AGENTS=latest`` makes
``install.sh`` put today's newest releases into ``.latest/node_modules`` and the suite use those.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import reactor

from tests.agents.mockmodel import MockModel, listen
from tests.command_helpers import Api, Workspace, open_stream, sleep, start_command_arpc
from tests.helpers import Relay, TwistdProcess, start_arps

HERE = Path(__file__).resolve().parent
FAKES = HERE.parent / "fakes"
FINAL = ("completed", "failed", "cancelled", "interrupted")

#: name -> (npm package, binary, arpc executor name, protocol)
CLIS: dict[str, tuple[str, str, str, str]] = {
    "claude": ("@anthropic-ai/claude-code", "claude", "Claude", "claude"),
    "codex": ("@openai/codex", "codex", "Codex", "codex"),
    "gemini": ("@google/gemini-cli", "gemini", "Gemini", "acp"),
    "claude-acp": ("@zed-industries/claude-code-acp", "claude-code-acp", "ClaudeACP", "acp"),
    "codex-acp": ("@zed-industries/codex-acp", "codex-acp", "CodexACP", "acp"),
}
PATH_FLAGS = {"claude": "--command-path", "codex": "--codex-path", "gemini": "--gemini-path"}
#: the fake standing in for each CLI in the fast tests (``tests/fakes``)
FAKE_OF = {"claude": "claude", "codex": "codex", "gemini": "gemini", "claude-acp": "acpagent",
           "codex-acp": "acpagent"}  # fmt: skip


def install_dir() -> Path:
    """Where the CLIs were installed: ``node_modules`` here, or ``.latest`` with ARP_AGENTS=latest."""
    return HERE / ".latest" if os.environ.get("ARP_AGENTS") == "latest" else HERE


def binary(cli: str) -> Path:
    """The installed binary of ``cli``; AssertionError (a failure, never a skip) when missing."""
    path = install_dir() / "node_modules" / ".bin" / CLIS[cli][1]
    if not os.access(path, os.X_OK):
        raise AssertionError(
            f"{path} is not installed: run tests/agents/install.sh (npm ci in tests/agents) first"
        )
    return path


def version(cli: str) -> str:
    """The installed version of ``cli``'s npm package ('missing' if not installed)."""
    try:
        manifest = install_dir() / "node_modules" / CLIS[cli][0] / "package.json"
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "missing"


def marked_processes(marker: str) -> list[int]:
    """The pids of live processes whose environment carries ``ARP_CONFORMANCE=marker``."""
    needle = f"ARP_CONFORMANCE={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


class Agents:
    """One test's world: the mock model, arps, an arpc running the real CLIs (each behind
    ``tee.py``), the API as a phone uses it, and the transcripts.

    ``fakes=True`` runs the fakes of ``tests/fakes`` in place of the real CLIs, recorded the same
    way, for comparing the two.
    """

    def __init__(self, test: Any, fakes: bool = False) -> None:
        self.test = test
        self.fakes = fakes
        self.marker = uuid.uuid4().hex
        self.mock = MockModel()
        self.ws = Workspace(test)
        self.bin = self.ws.base / "bin"
        self.transcripts = self.ws.base / "transcripts"
        self.bin.mkdir()
        self.transcripts.mkdir()
        (self.ws.base / "tmp").mkdir()
        test.addCleanup(self._kill_leftovers)

    async def start(self, *extra: str, mode: str = "default", relay: Relay | None = None) -> Api:
        port = listen(self.mock, reactor)
        self.test.addCleanup(port.stopListening)
        self.test.addCleanup(self.mock.stop)
        self.port = port.getHost().port
        self._configure()
        self.relay = relay or await start_arps(self.test)
        args = ["--permission-mode", mode, "--max-permission-mode", "bypassPermissions", "--no-qr"]
        for cli, (_, _, executor, _) in CLIS.items():
            wrapper = self._wrapper(cli)
            if cli in PATH_FLAGS:
                args += [PATH_FLAGS[cli], str(wrapper)]
            else:
                args += ["--acp-agent", f"{executor}={wrapper}"]
        self.arpc: TwistdProcess = await start_command_arpc(
            self.test, self.relay, self.ws, *args, *extra, env=self.env(), binaries=False
        )
        self.api = Api(self.test, self.relay, self.arpc.token, self.arpc.access)
        return self.api

    # -- the CLIs' configuration

    def env(self) -> dict[str, str]:
        """What arpc (and so each CLI) gets on top of the Workspace's environment."""
        base = f"http://127.0.0.1:{self.port}"
        return {
            "ARP_CONFORMANCE": self.marker,
            "ANTHROPIC_BASE_URL": base,
            "ANTHROPIC_API_KEY": "sk-ant-mock",
            "IS_SANDBOX": "1",  # Claude as root in bypassPermissions
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "MOCK_API_KEY": "sk-mock",  # Codex's provider key (config.toml env_key)
            "GOOGLE_GEMINI_BASE_URL": base,
            "GEMINI_API_KEY": "mock-gemini-key",
            "GEMINI_TELEMETRY_ENABLED": "false",
            "GEMINI_CLI_NO_RELAUNCH": "true",  # no second node process: saves seconds per start
            # Codex refuses to put its sandbox helper under the temp dir, where trial's may be
            "TMPDIR": str(self.ws.base / "tmp"),
            "ARP_TRANSCRIPTS": str(self.transcripts),
        }

    def _configure(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        self.ws.codex.mkdir(parents=True, exist_ok=True)
        (self.ws.codex / "config.toml").write_text(
            'model = "gpt-5-codex"\nmodel_provider = "mock"\ncheck_for_update_on_startup = false\n'
            "[analytics]\nenabled = false\n[feedback]\nenabled = false\n"
            f'[model_providers.mock]\nname = "mock"\nbase_url = "{base}/v1"\nwire_api = "responses"\n'
            'env_key = "MOCK_API_KEY"\nrequest_max_retries = 0\nstream_max_retries = 0\n'
        )
        settings = self.ws.gemini / ".gemini"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "settings.json").write_text(
            json.dumps(
                {
                    "security": {"auth": {"selectedType": "gemini-api-key"}},
                    "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
                    "privacy": {"usageStatisticsEnabled": False},
                    "telemetry": {"enabled": False},
                }
            )
        )
        self.ws.claude.mkdir(parents=True, exist_ok=True)

    def _wrapper(self, cli: str) -> Path:
        """An executable that runs ``cli`` (or its fake) through ``tee.py``."""
        real = FAKES / FAKE_OF[cli] if self.fakes else binary(cli)
        extra = " --stdio" if self.fakes and FAKE_OF[cli] == "acpagent" else ""
        path = self.bin / CLIS[cli][1]
        tee = f'"{sys.executable}" "{HERE / "tee.py"}" "$ARP_TRANSCRIPTS/{cli}-$$.jsonl"'
        path.write_text(f'#!/bin/sh\nexec {tee} -- "{real}"{extra} "$@"\n')
        path.chmod(0o755)
        return path

    # -- sessions, as a phone drives them

    def new(self, cli: str, prompt: str, **more: Any) -> dict:
        return {"executor": CLIS[cli][2], "prompt": prompt, "projectPath": str(self.ws.project), **more}

    async def start_session(self, cli: str, prompt: str, **more: Any) -> str:
        code, session = await self.api.post("/api/sessions", self.new(cli, prompt, **more))
        self.test.assertEqual(code, 201, session)
        return session["id"]

    async def pending(self, sid: str, n: int = 1, timeout: float = 60.0, exclude: Any = ()) -> list[dict]:
        """Wait until the session has ``n`` pending approvals (not in ``exclude``, ids): fails if
        it ends first."""
        deadline = reactor.seconds() + timeout
        while True:
            code, body = await self.api.get("/api/approvals?status=pending")
            found = [a for a in body["approvals"] if a["sessionId"] == sid and a["id"] not in exclude]
            if len(found) >= n:
                return found
            code, session = await self.api.get(f"/api/sessions/{sid}")
            if session["status"] != "running":
                raise AssertionError(f"session ended without asking: {self.describe(session)}")
            if reactor.seconds() > deadline:
                raise AssertionError(f"no approval within {timeout}s: {self.describe(session)}")
            await sleep(0.1)

    async def answer(self, sid: str, approval: dict, body: dict) -> dict:
        code, record = await self.api.post(f"/api/sessions/{sid}/approvals/{approval['id']}", body)
        self.test.assertEqual(code, 200, record)
        return record

    async def finished(self, sid: str, timeout: float = 90.0) -> dict:
        """Wait for the session's turn to end; its detail."""
        return await self.api.wait_status(sid, FINAL, timeout=timeout)

    async def approvals_of(self, sid: str) -> list[dict]:
        code, body = await self.api.get("/api/approvals")
        return [a for a in body["approvals"] if a["sessionId"] == sid]

    async def stream(self, sid: str, since: int | None = 0) -> Any:
        arpc = self.arpc
        return await open_stream(self.test, self.relay, arpc.token, sid, since=since, access=arpc.access)

    @staticmethod
    def describe(session: dict) -> str:
        stderr = "".join(e.get("text", "") for e in session.get("events", []) if e["kind"] == "stderr")
        return (
            f"status={session['status']} error={session.get('error')!r} output={session.get('output')!r} "
            f"stderr={stderr[-1500:]!r}"
        )

    # -- transcripts and leftovers

    def transcript(self, cli: str) -> list[dict]:
        """Every line ``cli`` printed or was sent in this test, process by process, in order."""
        lines: list[dict] = []
        files = sorted(self.transcripts.glob(f"{cli}-*.jsonl"), key=lambda p: p.stat().st_mtime)
        for n, path in enumerate(files):
            for raw in path.read_text().splitlines():
                lines.append({**json.loads(raw), "process": n})
        return lines

    def save_transcripts(self, name: str) -> list[Path]:
        """Copy this test's transcripts to ``transcripts/<name>/`` in trial's directory (and to
        ``tests/agents/transcripts`` with ARP_UPDATE_TRANSCRIPTS=1)."""
        saved = []
        targets = [Path("transcripts") / name]
        if os.environ.get("ARP_UPDATE_TRANSCRIPTS") and not self.fakes:
            targets.append(HERE / "transcripts" / name)
        for cli in CLIS:
            lines = [line for line in self.transcript(cli) if line["line"] != ""]
            if not lines:
                continue
            for target in targets:
                target.mkdir(parents=True, exist_ok=True)
                out = target / f"{cli}{'-fake' if self.fakes else ''}.jsonl"
                out.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
                saved.append(out)
        return saved

    def leftovers(self) -> list[str]:
        """Agent processes of this test still running (not arpc itself): pid and command line."""
        found = []
        for pid in marked_processes(self.marker):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            except OSError:
                continue
            # arpc itself, and the ``gemini --version`` it runs at start (node takes seconds)
            if pid != self.arpc.pid and not command.endswith("--version"):
                found.append(f"{pid} {command[:300]}")
        return found

    def _kill_leftovers(self) -> None:
        for pid in marked_processes(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.ws.base / "tmp", ignore_errors=True)
