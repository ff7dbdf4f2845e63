"""Approvals: an agent's request for permission (or a question for the user), kept as a record.

An approval is asked by an interactive channel (:mod:`.channels`), written to the session's event
log (``approval``, then ``approval_resolved``) and to an index file, so that
``GET /api/approvals`` still knows it after arpc restarts.  It is answered once: by a person
through the API (``allowed``/``denied``), by the timeout policy (``expired``), or because the
agent ended, withdrew the request or the session was cancelled (``cancelled``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

PENDING = "pending"
STATES = (PENDING, "allowed", "denied", "expired", "cancelled")
KEEP_RESOLVED = 2000  # resolved records kept in the index; pending ones are always kept
MAX_DIFF = 64 * 1024  # characters of a summary's diff
MAX_FILE = 1024 * 1024  # bytes of an existing file read to diff a Write against
MAX_MESSAGE = 4000
MAX_ANSWER = 4000


class ApprovalError(Exception):
    """An answer we refuse: ``status`` (400, 404, 409) and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Answer:
    """How an approval was answered, as the channel passes it on to the agent."""

    status: str  # allowed, denied, expired, cancelled
    message: str | None = None
    scope: str = "once"
    answers: dict[str, str] | None = None
    updated_input: dict[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        return self.status == "allowed"


@dataclass
class Pending:
    """A live approval: its record, how to answer the agent, its timeout call."""

    record: dict[str, Any]
    reply: Callable[[Answer], None]
    timer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def unified_diff(path: str, old: str, new: str) -> str:
    """A unified diff of ``old`` -> ``new`` for ``path``, cut at :data:`MAX_DIFF` characters."""
    label = path.lstrip("/")
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{label}", f"b/{label}"
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if len(text) > MAX_DIFF:
        text = text[:MAX_DIFF] + "\n[diff cut]\n"
    return text


def _read_small(path: str) -> str:
    try:
        if os.path.getsize(path) > MAX_FILE:
            return ""
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def shown_path(path: str, cwd: str) -> str:
    """``path`` relative to the project when it is inside it (shorter on a phone), else as given."""
    if os.path.isabs(path) and (path + os.sep).startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, cwd)
    return path


def _within(cwd: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(cwd, path)


def claude_summary(tool: str, data: dict[str, Any], cwd: str) -> dict[str, Any]:
    """The human summary of a Claude tool call: command and cwd, or path and diff."""
    path = data.get("file_path") or data.get("notebook_path")
    if tool == "Bash" and isinstance(data.get("command"), str):
        return {"command": data["command"], "cwd": cwd, "description": data.get("description")}
    if isinstance(path, str) and tool in ("Edit", "MultiEdit", "Write", "NotebookEdit"):
        full = _within(cwd, path)
        path = shown_path(full, cwd)
        if tool == "Write" and isinstance(data.get("content"), str):
            return {"path": path, "diff": unified_diff(path, _read_small(full), data["content"])}
        edits = data.get("edits") if tool == "MultiEdit" else [data]
        diff = ""
        for edit in edits if isinstance(edits, list) else []:
            if isinstance(edit, dict):
                old, new = edit.get("old_string"), edit.get("new_string", edit.get("new_source"))
                diff += unified_diff(
                    path, old if isinstance(old, str) else "", new if isinstance(new, str) else ""
                )
        return {"path": path, "diff": diff[: MAX_DIFF + 20]}
    if isinstance(path, str):
        return {"path": path}
    return {"title": tool}


def text_of(value: Any, limit: int = 2000) -> str:
    """A short text for any JSON value (a command given as a list is joined with spaces)."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    elif not isinstance(value, str):
        value = json.dumps(value, default=str)
    return value[:limit]


# -- "Allow for this session": what it covers, in words and as rules arpc can check ----------------

EDIT_TOOLS = ("Edit", "MultiEdit", "Write", "NotebookEdit")
#: The Bash commands Claude Code 2.1's acceptEdits mode runs in the project without asking
#: (measured by tests/agents: chmod, ln, tee, git and others still ask)
ACCEPT_EDITS_COMMANDS = "the commands mkdir, touch, cp, mv, rm and sed"
#: A command with any of these is never covered by a prefix rule: ``npm test; curl x | sh`` starts
#: with ``npm test`` but is not an ``npm test`` command.
SHELL_SYNTAX = re.compile(r"[;&|<>`$(){}\[\]*?!~#\\'\"\n\r]")


@dataclass
class Grant:
    """What answering "for this session" covers: ``words`` for the card, ``rules`` for arpc (see
    :func:`covers`), and what the agent itself is sent (Claude's ``updatedPermissions``)."""

    words: str
    rules: list[dict[str, Any]]
    permissions: list[dict[str, Any]] = field(default_factory=list)


def subject(tool: str, data: dict[str, Any], cwd: str, command: str | None = None) -> dict[str, Any]:
    """What a request asks for, as rules compare it: the tool, its input, a command, file paths."""
    if command is None and tool == "Bash" and isinstance(data.get("command"), str):
        command = data["command"]
    path = data.get("file_path") or data.get("notebook_path")
    paths = [os.path.normpath(_within(cwd, path))] if isinstance(path, str) else []
    return {"tool": tool, "input": data, "command": command, "paths": paths}


def _prefix_rule(content: str) -> str | None:
    """The prefix of a Bash rule ``npm test:*`` (legacy) or ``npm test *``, else None."""
    for tail in (":*", " *"):
        if content.endswith(tail) and content[: -len(tail)].strip():
            prefix = content[: -len(tail)].strip()
            return None if "*" in prefix else prefix
    return None


def claude_grant(tool: str, data: dict[str, Any], suggestions: list[Any], cwd: str) -> Grant:
    """Claude: its own ``permission_suggestions``, every one with ``destination: "session"`` (never a
    settings file); kinds we cannot describe are left out.  Without any, exactly this input."""
    words: list[str] = []
    rules: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    for suggestion in suggestions:
        if not isinstance(suggestion, dict):
            continue
        kind = suggestion.get("type")
        if kind == "addRules" and suggestion.get("behavior") == "allow":
            given = [r for r in suggestion.get("rules") or [] if isinstance(r, dict)]
            given = [r for r in given if isinstance(r.get("toolName"), str)]
            if not given:
                continue
            for rule in given:
                name, content = rule["toolName"], rule.get("ruleContent")
                if not isinstance(content, str) or not content:
                    words.append(f"every {name} command" if name == "Bash" else f"every use of {name}")
                    rules.append({"tool": name})
                elif name == "Bash" and _prefix_rule(content):
                    prefix = _prefix_rule(content)
                    words.append(f"Bash commands starting with {prefix}")
                    rules.append({"tool": name, "prefix": prefix})
                elif name == "Bash" and "*" not in content:
                    words.append(f"the Bash command {content}")
                    rules.append({"tool": name, "command": content})
                else:  # a pattern only Claude evaluates: arpc asks again in a later turn
                    words.append(f"{name}({content})")
                    rules.append({"tool": name, "pattern": content})
            sent.append({**suggestion, "rules": given, "destination": "session"})
        elif kind == "setMode" and suggestion.get("mode") == "acceptEdits" and tool in EDIT_TOOLS:
            # Claude 2.1 suggests it for a Bash command too, where it would let the agent run
            # mkdir, touch, cp, mv, rm and sed -i in the project unasked: offered for edits only
            mode = "Claude's acceptEdits mode"
            words.append(f"file edits in this project, and {ACCEPT_EDITS_COMMANDS} there ({mode})")
            rules.append({"tools": list(EDIT_TOOLS), "within": cwd})
            sent.append({**suggestion, "destination": "session"})
        elif kind == "addDirectories":
            dirs = [d for d in suggestion.get("directories") or [] if isinstance(d, str)]
            if dirs:
                words.append("access to " + ", ".join(dirs))
                sent.append({**suggestion, "directories": dirs, "destination": "session"})
    if sent:
        return Grant("; ".join(words), rules, sent)
    if tool == "Bash" and isinstance(data.get("command"), str):
        command = data["command"]
        rule = {"type": "addRules", "rules": [{"toolName": "Bash", "ruleContent": command}]}
        rule.update(behavior="allow", destination="session")
        return Grant(f"exactly the Bash command {command}", [{"tool": "Bash", "command": command}], [rule])
    return Grant(f"exactly this {tool} request", [{"tool": tool, "input": data}])


def covers(rule: dict[str, Any], asked: dict[str, Any]) -> bool:
    """Whether a session rule covers a request (its :func:`subject`); unknown rules cover nothing."""
    if "tool" in rule and rule["tool"] != asked["tool"]:
        return False
    command = asked.get("command")
    if "input" in rule:
        return rule["input"] == asked["input"]
    if "command" in rule:
        return isinstance(command, str) and command == rule["command"]
    if "prefix" in rule:
        prefix = rule["prefix"]
        return (
            isinstance(command, str)
            and not SHELL_SYNTAX.search(command)
            and (command == prefix or command.startswith(prefix + " "))
        )
    if "paths" in rule:
        return bool(asked["paths"]) and set(asked["paths"]) <= set(rule["paths"])
    if "tools" in rule:
        root = rule.get("within", "/").rstrip(os.sep) + os.sep
        return (
            asked["tool"] in rule["tools"]
            and bool(asked["paths"])
            and all(p.startswith(root) for p in asked["paths"])
        )
    if "pattern" in rule:
        return False
    return set(rule) == {"tool"}


class ApprovalBook:
    """Every approval record by id, written to ``approvals.json`` on each change."""

    log = Logger()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("ignoring an unreadable approval index {path}: {e}", path=str(self.path), e=e)
            return
        for record in data.get("approvals", []) if isinstance(data, dict) else []:
            if (
                isinstance(record, dict)
                and isinstance(record.get("id"), str)
                and record.get("status") in STATES
            ):
                self.records[record["id"]] = record

    def new_id(self) -> str:
        """A fresh approval id."""
        return uuid.uuid4().hex

    def put(self, record: dict[str, Any]) -> None:
        """Add or update ``record`` and write the index."""
        self.records[record["id"]] = record
        self.save()

    def save(self) -> None:
        """Write the index atomically; only the newest :data:`KEEP_RESOLVED` resolved records stay."""
        resolved = [r for r in self.records.values() if r["status"] != PENDING]
        if len(resolved) > KEEP_RESOLVED:
            resolved.sort(key=lambda r: r.get("createdAt", ""))
            for record in resolved[: len(resolved) - KEEP_RESOLVED]:
                self.records.pop(record["id"], None)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"approvals": list(self.records.values())}, f, separators=(",", ":"))
        os.replace(tmp, self.path)

    def listing(self, status: str | None = None, session_id: str | None = None) -> list[dict[str, Any]]:
        """Records, oldest first, optionally of one status and one session."""
        records = sorted(self.records.values(), key=lambda r: (r.get("createdAt", ""), r["id"]))
        if status:
            records = [r for r in records if r["status"] == status]
        if session_id:
            records = [r for r in records if r.get("sessionId") == session_id]
        return records

    def pending_of(self, session_id: str) -> list[dict[str, Any]]:
        """The pending records of one session."""
        return self.listing(PENDING, session_id)

    def drop_session(self, session_id: str) -> None:
        """Forget a deleted session's records."""
        for record in self.listing(session_id=session_id):
            self.records.pop(record["id"], None)
        self.save()


def check_answer(record: dict[str, Any], body: object, may_edit: bool = False) -> Answer:
    """Validate an answer body against the record it answers (:class:`ApprovalError` 400 if bad).

    ``updatedInput`` changes what the agent runs, so it is a prompt, not just an answer: 403
    unless ``may_edit`` (the token has the ``prompt`` scope), and it may only change keys the
    tool input had, of a request whose input can be edited (Claude's), allowed once.
    """
    if not isinstance(body, dict):
        raise ApprovalError(400, "the body must be a JSON object")
    decision = body.get("decision")
    if decision not in ("allow", "deny"):
        raise ApprovalError(400, "decision must be 'allow' or 'deny'")
    message = body.get("message")
    if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE):
        raise ApprovalError(400, f"message must be a string of at most {MAX_MESSAGE} characters")
    scope = body.get("scope", "once")
    if scope not in ("once", "session"):
        raise ApprovalError(400, "scope must be 'once' or 'session'")
    if scope == "session" and decision == "allow" and not record.get("sessionScope"):
        raise ApprovalError(400, "this request cannot be allowed for the session: answer it once")
    updated = body.get("updatedInput")
    if updated is not None:
        if not isinstance(updated, dict):
            raise ApprovalError(400, "updatedInput must be a JSON object")
        if not may_edit:
            raise ApprovalError(403, "changing the tool input (updatedInput) needs the prompt scope")
        if not record.get("editable"):
            raise ApprovalError(400, "this agent cannot run an edited tool input")
        if decision != "allow" or scope != "once":
            raise ApprovalError(400, "updatedInput goes with decision allow, scope once")
        original = record.get("input") if isinstance(record.get("input"), dict) else {}
        new = sorted(str(k) for k in updated if k not in original)
        if new:
            raise ApprovalError(
                400, f"updatedInput may only change the tool's inputs: not {', '.join(new)[:200]}"
            )
    answers = body.get("answers")
    checked: dict[str, str] | None = None
    if answers is not None:
        if not isinstance(answers, dict):
            raise ApprovalError(400, "answers must be an object {question: answer}")
        asked = {q.get("question"): q for q in record.get("questions") or [] if isinstance(q, dict)}
        checked = {}
        for question, answer in answers.items():
            if question not in asked:
                raise ApprovalError(400, f"the agent did not ask {str(question)[:200]!r}")
            if isinstance(answer, list) and all(isinstance(a, str) for a in answer):
                if len(answer) > 1 and not asked[question].get("multiSelect"):
                    raise ApprovalError(400, f"{question[:200]!r} takes one answer")
                answer = ", ".join(answer)
            if not isinstance(answer, str) or not answer.strip() or len(answer) > MAX_ANSWER:
                raise ApprovalError(400, f"the answer to {question[:200]!r} must be a non-empty string")
            checked[question] = answer
    if decision == "allow" and record.get("kind") == "question" and not checked:
        raise ApprovalError(400, "a question is answered with answers: {question: answer}")
    return Answer(
        "allowed" if decision == "allow" else "denied",
        message=message,
        scope=scope,
        answers=checked,
        updated_input=updated,
    )
