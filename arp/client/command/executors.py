"""What each agent CLI needs: its command line, its environment, and how to read its output.

The formats are those of ``reference/agents.md``: Claude Code ``stream-json``,
Codex ``exec --json`` and Gemini ``stream-json``.  Readers are tolerant: a line
of an unknown type is kept as it is and simply contributes nothing here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

#: Claude permission modes, least to most permissive.  ``dontAsk`` only runs
#: pre-approved tools, so it ranks with ``default``.
PERMISSION_RANK = {
    "plan": 0,
    "default": 1,
    "dontAsk": 1,
    "acceptEdits": 2,
    "auto": 3,
    "bypassPermissions": 4,
}
PERMISSION_MODES = tuple(PERMISSION_RANK)

#: The same safety level expressed for Codex (``--sandbox``) and Gemini (``--approval-mode``).
_CODEX_SANDBOX = {0: "read-only", 1: "read-only", 2: "workspace-write", 3: "workspace-write"}
_GEMINI_APPROVAL = {0: "plan", 1: "default", 2: "auto_edit", 3: "auto_edit", 4: "yolo"}

#: The session ids the CLIs report and take back for ``--resume``: UUIDs (agents.md §1.2, §3, §4).
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]{0,199}$")
_ANSI_RE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def permission_mode(value: str) -> str:
    """Coerce a Claude permission mode name (used for the command-line options too)."""
    for name in PERMISSION_MODES:
        if value.lower() == name.lower():
            return name
    raise ValueError("must be one of " + ", ".join(PERMISSION_MODES))


permission_mode.coerceDoc = "One of " + ", ".join(PERMISSION_MODES) + "."  # type: ignore[attr-defined]


def valid_model(model: str) -> bool:
    """Whether ``model`` looks like a model name or alias (and cannot pass for a flag)."""
    return bool(_MODEL_RE.match(model))


def strip_ansi(text: str) -> str:
    """Remove terminal escape sequences some CLIs print even without a TTY."""
    return _ANSI_RE.sub("", text)


class UnsafeSessionId(ValueError):
    """An agent session id that does not have its CLI's shape (it never reaches a command line)."""


#: Session ids of agents added with ``--acp-agent``: they travel in JSON, never on a command line.
_ACP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_AGENT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Executor:
    """One agent CLI: its API name, the arpc flag naming its binary, and its command lines.

    ``protocol`` names its interactive channel (:mod:`.channels`): ``claude``, ``codex`` or
    ``acp``; ``command`` is the rest of an ``--acp-agent`` command line after the binary.
    """

    name: str
    flag: str
    default_binary: str
    session_id_pattern: re.Pattern = _UUID_RE
    protocol: str = "acp"
    command: tuple[str, ...] = ()
    oneshot: bool = True  # whether it has a one-shot command line to fall back to

    def valid_session_id(self, session_id: object) -> bool:
        """Whether an id the agent reported has this CLI's shape (so it can go back on its command line)."""
        return isinstance(session_id, str) and bool(self.session_id_pattern.match(session_id))

    def resolve(self, configured: str | None) -> str | None:
        """The absolute path of the binary, or None when it cannot be found."""
        binary = configured or self.default_binary
        if os.sep in binary:
            binary = os.path.abspath(os.path.expanduser(binary))
            return binary if os.path.isfile(binary) and os.access(binary, os.X_OK) else None
        found = shutil.which(binary)
        return os.path.abspath(found) if found else None

    def argv(self, binary: str, prompt: str, model: str | None, mode: str, resume: str | None) -> list[str]:
        """The full command line for one turn (``resume`` continues an agent session).

        ``resume`` must have the CLI's session id shape (:class:`UnsafeSessionId` otherwise); it is
        passed as ``--resume=ID`` where the CLI takes an option, so it is never read as a flag.
        """
        if resume is not None and not self.valid_session_id(resume):
            raise UnsafeSessionId(f"{self.name} session id {resume[:80]!r} does not look like a UUID")
        rank = PERMISSION_RANK[mode]
        model_args = [f"--model={model}"] if model else []
        if self.name == "Claude":
            args = [binary, "-p", "--output-format", "stream-json", "--verbose", *model_args]
            args += ["--permission-mode", mode, "--include-partial-messages"]
            if resume:
                args.append(f"--resume={resume}")
            return [*args, "--", prompt]
        if self.name == "Codex":
            args = [binary, "exec", "--json", "--skip-git-repo-check", *model_args]
            if rank >= 4:
                args.append("--dangerously-bypass-approvals-and-sandbox")
            else:
                args += ["--sandbox", _CODEX_SANDBOX[rank]]
            if resume:  # a subcommand argument, not an option: the validated shape cannot start with -
                args += ["resume", resume]
            return [*args, "--", prompt]
        args = [binary, "--output-format", "stream-json", *model_args]
        args += ["--approval-mode", _GEMINI_APPROVAL[rank]]
        if resume:
            args.append(f"--resume={resume}")
        return [*args, f"--prompt={prompt}"]

    def interactive_argv(
        self,
        binary: str,
        model: str | None,
        mode: str,
        resume: str | None,
        acp_flag: str = "--experimental-acp",
    ) -> list[str]:
        """The command line of an interactive run: the prompt, and for Codex and ACP agents the
        model and the session to resume, go over the channel, not on the command line.
        ``acp_flag``: Gemini's (:func:`gemini_acp_flag`)."""
        if resume is not None and not self.valid_session_id(resume):
            raise UnsafeSessionId(f"{self.name} session id {resume[:80]!r} does not look like a UUID")
        rank = PERMISSION_RANK[mode]
        model_args = [f"--model={model}"] if model else []
        if self.protocol == "claude":
            args = [binary, "-p", "--output-format", "stream-json", "--input-format", "stream-json"]
            args += ["--verbose", "--permission-prompt-tool", "stdio", *model_args, "--permission-mode", mode]
            args.append("--include-partial-messages")  # the answer as it is written (stream_event)
            if resume:
                args.append(f"--resume={resume}")
            return args
        if self.protocol == "codex":
            return [binary, "app-server"]
        if self.name == "Gemini":
            return [binary, acp_flag, *model_args, "--approval-mode", _GEMINI_APPROVAL[rank]]
        return [binary, *self.command]

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """The child's environment: ours, minus what would confuse the CLI."""
        env = {k: v for k, v in base.items() if k not in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")}
        if self.name == "Gemini":
            env.setdefault("GEMINI_CLI_TRUST_WORKSPACE", "true")  # projectPath is under --project-root
        env.setdefault("NO_COLOR", "1")
        return env


#: The first Gemini CLI version known to take ``--acp`` (0.61.0 calls ``--experimental-acp``
#: deprecated: reference/approvals.md §5); older ones, and one whose version is not known yet, get
#: ``--experimental-acp``, which 0.61 still takes.
GEMINI_ACP_SINCE = (0, 61, 0)
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def gemini_acp_flag(version_output: bytes | str | None) -> str:
    """Gemini's ACP flag for what its ``--version`` printed (None: not known)."""
    text = version_output.decode("utf-8", "replace") if isinstance(version_output, bytes) else version_output
    found = _VERSION_RE.search(text or "")
    if found and tuple(int(n) for n in found.groups()) >= GEMINI_ACP_SINCE:
        return "--acp"
    return "--experimental-acp"


EXECUTORS = {
    "Claude": Executor("Claude", "--command-path", "claude", protocol="claude"),
    "Codex": Executor("Codex", "--codex-path", "codex", protocol="codex"),
    "Gemini": Executor("Gemini", "--gemini-path", "gemini", protocol="acp"),
}


def acp_agent(spec: str) -> Executor:
    """Parse ``--acp-agent NAME=COMMAND`` (COMMAND split like a shell would, without one)."""
    name, sep, command = spec.partition("=")
    name = name.strip()
    if not sep or not _AGENT_NAME_RE.match(name):
        raise ValueError("must be NAME=COMMAND, NAME being letters, digits, _ or - (at most 32)")
    if executor_named(name) is not None:
        raise ValueError(f"{name} is a built-in agent")
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise ValueError(f"cannot split the command: {e}")
    if not words:
        raise ValueError("the command is empty")
    return Executor(
        name, "--acp-agent", words[0], _ACP_ID_RE, protocol="acp", command=tuple(words[1:]), oneshot=False
    )


acp_agent.coerceDoc = "NAME=COMMAND, e.g. goose='goose acp' (repeatable)."  # type: ignore[attr-defined]
_ALIASES = {
    "claude": "Claude",
    "claude-code": "Claude",
    "claude_code": "Claude",
    "claudecode": "Claude",
    "codex": "Codex",
    "gemini": "Gemini",
    "gemini-cli": "Gemini",
}


def executor_named(name: object) -> Executor | None:
    """The executor for an API name, case-insensitively (``Claude``, ``CLAUDE_CODE``, ``codex``...)."""
    if not isinstance(name, str):
        return None
    key = _ALIASES.get(name.strip().lower())
    return EXECUTORS[key] if key else None


@dataclass
class Digest:
    """What one output line tells us about the run."""

    text: str | None = None
    delta: bool = False
    agent_session_id: str | None = None
    usage: Any = None
    cost_usd: float | None = None
    failed: bool | None = None
    error: str | None = None
    result_text: str | None = None


def _claude(obj: dict) -> Digest:
    d = Digest()
    kind = obj.get("type")
    if isinstance(obj.get("session_id"), str) and kind in ("system", "result"):
        d.agent_session_id = obj["session_id"]
    if kind == "assistant":
        message = obj.get("message")
        if isinstance(message, dict) and obj.get("parent_tool_use_id") is None:
            content = message.get("content")
            if isinstance(content, str):
                d.text = content
            elif isinstance(content, list):
                texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
                texts = [t for t in texts if isinstance(t, str) and t]
                d.text = "\n".join(texts) or None
    elif kind == "result":
        d.usage = obj.get("usage")
        cost = obj.get("total_cost_usd", obj.get("cost_usd"))
        d.cost_usd = cost if isinstance(cost, (int, float)) else None
        d.failed = bool(obj.get("is_error")) or obj.get("subtype") not in (None, "success")
        if isinstance(obj.get("result"), str):
            d.result_text = obj["result"]
        errors = obj.get("errors")
        if isinstance(errors, list) and errors:
            d.error = "; ".join(str(e) for e in errors)
        elif d.failed and isinstance(obj.get("result"), str):
            d.error = obj["result"]
    return d


def _codex(obj: dict) -> Digest:
    if "method" in obj:
        return _codex_app(obj)
    d = Digest()
    kind = obj.get("type")
    if kind == "thread.started" and isinstance(obj.get("thread_id"), str):
        d.agent_session_id = obj["thread_id"]
    elif kind == "item.completed" and isinstance(obj.get("item"), dict):
        item = obj["item"]
        if item.get("type") in ("agent_message", "assistant_message") and isinstance(item.get("text"), str):
            d.text = item["text"]
    elif kind == "turn.completed":
        d.usage = obj.get("usage")
    elif kind == "turn.failed":
        d.failed = True
        error = obj.get("error")
        d.error = str(error.get("message")) if isinstance(error, dict) else "turn failed"
    elif kind == "error":
        d.error = str(obj.get("message"))
    elif kind is None and isinstance(obj.get("msg"), dict):  # the pre-October-2025 format
        msg = obj["msg"]
        if msg.get("type") == "session_configured" and isinstance(msg.get("session_id"), str):
            d.agent_session_id = msg["session_id"]
        elif msg.get("type") == "agent_message" and isinstance(msg.get("message"), str):
            d.text = msg["message"]
        elif msg.get("type") == "error":
            d.error = str(msg.get("message"))
    return d


def _codex_app(obj: dict) -> Digest:
    """``codex app-server`` notifications (the channel consumes requests and responses)."""
    d = Digest()
    method = obj.get("method")
    params = obj.get("params") if isinstance(obj.get("params"), dict) else {}
    item = params.get("item") if isinstance(params.get("item"), dict) else {}
    if method == "thread/started" and isinstance(params.get("thread"), dict):
        thread_id = params["thread"].get("id")
        d.agent_session_id = thread_id if isinstance(thread_id, str) else None
    elif (
        method == "item/completed"
        and item.get("type") == "agentMessage"
        and isinstance(item.get("text"), str)
    ):
        d.text = item["text"]
    elif method == "turn/completed":
        turn = params.get("turn") if isinstance(params.get("turn"), dict) else {}
        d.usage = turn.get("usage", params.get("usage"))
        if turn.get("status") == "failed":
            d.failed = True
            error = turn.get("error")
            d.error = str(error.get("message")) if isinstance(error, dict) else "turn failed"
    elif method == "thread/tokenUsage/updated" and isinstance(params.get("tokenUsage"), dict):
        # codex-cli 0.171 reports usage here (the thread's total so far), not on turn/completed
        total = params["tokenUsage"].get("total")
        d.usage = total if isinstance(total, dict) else None
    elif method == "error" and isinstance(params.get("error"), dict):
        d.error = str(params["error"].get("message"))
    return d


def _acp(obj: dict) -> Digest:
    """Agent Client Protocol ``session/update`` notifications: the agent's text as deltas."""
    d = Digest()
    params = obj.get("params") if isinstance(obj.get("params"), dict) else {}
    update = params.get("update") if isinstance(params.get("update"), dict) else {}
    content = update.get("content") if isinstance(update.get("content"), dict) else {}
    if obj.get("method") == "session/update" and update.get("sessionUpdate") == "agent_message_chunk":
        if content.get("type") == "text" and isinstance(content.get("text"), str):
            d.text = content["text"]
            d.delta = True
    return d


def _gemini(obj: dict) -> Digest:
    if "method" in obj:
        return _acp(obj)
    d = Digest()
    kind = obj.get("type")
    if kind == "init" and isinstance(obj.get("session_id"), str):
        d.agent_session_id = obj["session_id"]
    elif kind == "message" and obj.get("role") == "assistant" and isinstance(obj.get("content"), str):
        d.text = obj["content"]
        d.delta = bool(obj.get("delta"))
    elif kind == "result":
        d.usage = obj.get("stats")
        d.failed = obj.get("status") not in (None, "success")
        error = obj.get("error")
        if isinstance(error, dict):
            d.error = str(error.get("message"))
    elif kind == "error" and obj.get("severity") == "error":
        d.error = str(obj.get("message"))
    return d


_DIGESTERS = {"Claude": _claude, "Codex": _codex, "Gemini": _gemini}


def digest(executor: str, obj: object) -> Digest:
    """Read one parsed JSON output line of ``executor``; unknown shapes give an empty digest."""
    if not isinstance(obj, dict):
        return Digest()
    try:
        return _DIGESTERS.get(executor, _acp)(obj)
    except (AttributeError, TypeError, ValueError, KeyError):
        return Digest()
