"""Reading the agents' own on-disk history: Claude Code projects, Codex rollouts, Gemini chats.

Listings read only what they show: a file's stat, its first and last few kilobytes, and
(for message counts) a byte count that is cached and extended as the append-only file grows.
Paths come from the ``cwd`` the CLI recorded, never from decoding a directory name.
Corrupt lines are skipped.  Nothing here ever writes to those directories.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HEAD_BYTES = 32 * 1024
#: How far into a Codex rollout its first prompt is looked for: today's ``session_meta`` and
#: ``turn_context`` lines are long (the first prompt started at byte 34,493: approvals.md §5).
CODEX_HEAD_MAX = 1024 * 1024
TAIL_BYTES = 32 * 1024
COUNT_LIMIT = 8 * 1024 * 1024  # files above this get messageCount null in listings
TITLE_MAX = 200
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UUID_TAIL_RE = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID in its usual hyphenated form."""
    return bool(_UUID_RE.match(text))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(line: bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def head_lines(path: Path, limit: int = HEAD_BYTES) -> list[dict]:
    """The complete, parsable JSON-object lines within the first ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return []
    lines = data.split(b"\n")
    if len(data) == limit:
        lines = lines[:-1]  # maybe cut short
    return [obj for obj in map(_parse, lines) if obj is not None]


def lines_within(path: Path, limit: int) -> Iterator[dict]:
    """The complete, parsable JSON-object lines within the first ``limit`` bytes, read one line
    at a time (stop early and the rest is never read)."""
    try:
        with open(path, "rb") as f:
            read = 0
            while read < limit:
                line = f.readline(limit - read)
                if not line:
                    return
                read += len(line)
                if not line.endswith(b"\n") and read >= limit:
                    return  # cut short by the limit
                obj = _parse(line)
                if obj is not None:
                    yield obj
    except OSError:
        return


def tail_lines(path: Path, size: int, limit: int = TAIL_BYTES) -> list[dict]:
    """The complete, parsable JSON-object lines within the last ``limit`` bytes."""
    if size <= limit:
        return head_lines(path, limit + 1)
    try:
        with open(path, "rb") as f:
            f.seek(size - limit)
            data = f.read(limit)
    except OSError:
        return []
    lines = data.split(b"\n")[1:]  # the first one is probably cut
    return [obj for obj in map(_parse, lines) if obj is not None]


def iter_lines(path: Path) -> Iterator[dict]:
    """Every parsable JSON-object line of a file, streamed."""
    with open(path, "rb") as f:
        for line in f:
            obj = _parse(line)
            if obj is not None:
                yield obj


class StatCache:
    """Values computed from a file, kept while its size and modification time stay the same."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[int, int, dict]] = {}

    def get(self, path: Path, st: os.stat_result) -> dict | None:
        """The value for ``path`` if the file has not changed since it was stored."""
        entry = self._entries.get(path)
        if entry and entry[0] == st.st_mtime_ns and entry[1] == st.st_size:
            return entry[2]
        return None

    def put(self, path: Path, st: os.stat_result, value: dict) -> None:
        """Remember ``value`` for ``path`` as it is now."""
        self._entries[path] = (st.st_mtime_ns, st.st_size, value)


class _Counter:
    """Counts byte patterns in append-only files, remembering where it stopped."""

    def __init__(self, patterns: tuple[bytes, ...]) -> None:
        self.patterns = patterns
        self.cache: dict[Path, tuple[int, int, bytes]] = {}

    def count(self, path: Path, size: int) -> int:
        counted, total, carry = self.cache.get(path, (0, 0, b""))
        if size < counted:
            counted, total, carry = 0, 0, b""
        if size > counted:
            with open(path, "rb") as f:
                f.seek(counted)
                while True:
                    chunk = f.read(1024 * 1024)
                    if not chunk:
                        break
                    # patterns are line-start-free, so split at the last newline to avoid double counts
                    data = carry + chunk
                    cut = data.rfind(b"\n") + 1
                    complete, carry = data[:cut], data[cut:]
                    total += sum(complete.count(p) for p in self.patterns)
                    counted += len(chunk)
        self.cache[path] = (counted, total, carry)
        return total + sum(carry.count(p) for p in self.patterns)


class ProjectScope:
    """The projects whose history may be shown: those recorded under one of ``roots``.

    Recorded paths come from the agents' files, so they are compared as text (normalised, never
    resolved through this machine's symlinks); give each root both as typed and resolved.
    """

    def __init__(self, roots: Iterable[str | os.PathLike]) -> None:
        self.roots = sorted({os.path.normpath(os.fspath(r)) for r in roots})

    def contains(self, path: object) -> bool:
        """Whether the recorded project path ``path`` is one of the roots or inside one."""
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            return False
        path = os.path.normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.roots)

    def may_hold(self, claude_dir: str) -> bool:
        """Whether a Claude project directory name can belong to a path under the roots (a cheap
        first cut: names are lossy, so each transcript's recorded cwd is checked as well)."""
        for root in self.roots:
            prefix = sanitize_path(root)
            n = min(len(prefix), 200)
            if claude_dir[:n] == prefix[:n]:
                return True
        return False


def _visible(scope: ProjectScope | None, path: object) -> bool:
    return scope is None or scope.contains(path)


def _page(items: list, offset: int, limit: int) -> list:
    return items[offset : offset + limit]


def _clip(text: str, n: int = TITLE_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# -- Claude Code ---------------------------------------------------------------------------


def claude_roots(environ: dict[str, str] | None = None) -> list[Path]:
    """Claude's config directories: ``CLAUDE_CONFIG_DIR`` (comma list allowed) or ``~/.claude``."""
    environ = os.environ if environ is None else environ
    value = environ.get("CLAUDE_CONFIG_DIR", "").strip()
    if value:
        return [Path(p.strip()).expanduser() for p in value.split(",") if p.strip()]
    home = Path(environ.get("HOME") or Path.home())
    roots = [home / ".claude"]
    if (home / ".config" / "claude" / "projects").is_dir():
        roots.append(home / ".config" / "claude")
    return roots


def sanitize_path(path: str) -> str:
    """Claude's project directory name for ``path`` (see agents.md §2); long names are a prefix."""
    name = re.sub(r"[^A-Za-z0-9]", "-", unicodedata.normalize("NFC", path))
    return name[:200]


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and "text" in b
        )
    return ""


def _real_prompt(line: dict) -> str | None:
    if line.get("type") != "user" or line.get("isMeta") or line.get("isSidechain"):
        return None
    message = line.get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    ):
        return None
    text = _text_of(content).strip()
    if not text or text.startswith(("<command-name>", "<local-command-stdout>", "<command-message>")):
        return None
    return text


class ClaudeHistory:
    """Claude Code transcripts under ``<root>/projects/<sanitized-cwd>/<uuid>.jsonl``."""

    def __init__(self, roots: list[Path], within: ProjectScope | None = None) -> None:
        self.roots = roots
        self.within = within
        self._heads = StatCache()
        self._counter = _Counter((b'"type":"user"', b'"type":"assistant"'))

    def _project_dirs(self) -> list[Path]:
        dirs = []
        for root in self.roots:
            try:
                dirs.extend(p for p in (root / "projects").iterdir() if p.is_dir())
            except OSError:
                continue
        if self.within is not None:
            dirs = [d for d in dirs if self.within.may_hold(d.name)]
        return dirs

    @staticmethod
    def _transcripts(directory: Path) -> list[tuple[Path, os.stat_result]]:
        out = []
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return out
        for entry in entries:
            if entry.name.endswith(".jsonl") and is_uuid(entry.name[:-6]) and entry.is_file():
                try:
                    out.append((Path(entry.path), entry.stat()))
                except OSError:
                    continue
        return out

    def _head(self, path: Path, st: os.stat_result) -> dict:
        """What the first lines say: cwd, first prompt, sidechain, start time (cached)."""
        cached = self._heads.get(path, st)
        if cached is not None:
            return cached
        info: dict[str, Any] = {"cwd": None, "firstPrompt": None, "sidechain": False, "startedAt": None}
        lines = head_lines(path)
        info["sidechain"] = bool(lines and lines[0].get("isSidechain"))
        for line in lines:
            if info["cwd"] is None and isinstance(line.get("cwd"), str):
                info["cwd"] = line["cwd"]
            if info["startedAt"] is None and isinstance(line.get("timestamp"), str):
                info["startedAt"] = line["timestamp"]
            if info["firstPrompt"] is None:
                info["firstPrompt"] = _real_prompt(line)
        self._heads.put(path, st, info)
        return info

    def projects(self) -> list[dict[str, Any]]:
        """Every project: real path (from recorded cwd), session count, last activity; newest first."""
        by_path: dict[str, dict[str, Any]] = {}
        for directory in self._project_dirs():
            files = self._transcripts(directory)
            if not files:
                continue
            files.sort(key=lambda fs: fs[1].st_mtime, reverse=True)
            cwd = None
            for path, st in files[:20]:
                cwd = self._head(path, st)["cwd"]
                if cwd:
                    break
            if not _visible(self.within, cwd):
                continue
            key = cwd or f"?{directory}"
            entry = by_path.setdefault(
                key, {"path": cwd, "directory": directory.name, "sessionCount": 0, "lastActivity": None}
            )
            entry["sessionCount"] += len(files)
            last = _iso(files[0][1].st_mtime)
            if entry["lastActivity"] is None or last > entry["lastActivity"]:
                entry["lastActivity"] = last
        return sorted(by_path.values(), key=lambda e: e["lastActivity"] or "", reverse=True)

    def sessions(self, project: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Sessions newest first, optionally only those whose recorded cwd is ``project``."""
        dirs = self._project_dirs()
        if project:
            wanted = sanitize_path(project.rstrip("/") or "/")
            dirs = [d for d in dirs if d.name == wanted or (len(wanted) >= 200 and d.name.startswith(wanted))]
        files = [fs for d in dirs for fs in self._transcripts(d)]
        if project:
            files = [fs for fs in files if self._head(*fs)["cwd"] in (project, project.rstrip("/"))]
        if self.within is not None:
            files = [fs for fs in files if self.within.contains(self._head(*fs)["cwd"])]
        files.sort(key=lambda fs: fs[1].st_mtime, reverse=True)
        page = []
        for path, st in _page(files, offset, limit):
            head = self._head(path, st)
            if head["sidechain"]:
                continue
            page.append(self._summary(path, st, head))
        return {"sessions": page, "total": len(files), "offset": offset, "limit": limit}

    def _summary(self, path: Path, st: os.stat_result, head: dict) -> dict[str, Any]:
        titles: dict[str, str] = {}
        for line in tail_lines(path, st.st_size) + (head_lines(path) if st.st_size > TAIL_BYTES else []):
            kind = line.get("type")
            for key, field in (
                ("custom-title", "customTitle"),
                ("ai-title", "aiTitle"),
                ("last-prompt", "lastPrompt"),
                ("summary", "summary"),
            ):
                if kind == key and isinstance(line.get(field), str):
                    titles[key] = line[field]
        title = next(
            (titles[k] for k in ("custom-title", "ai-title", "last-prompt", "summary") if k in titles),
            head["firstPrompt"],
        )
        count = self._counter.count(path, st.st_size) if st.st_size <= COUNT_LIMIT else None
        return {
            "id": path.stem,
            "projectPath": head["cwd"],
            "title": _clip(title) if title else None,
            "summary": titles.get("summary"),
            "firstPrompt": _clip(head["firstPrompt"]) if head["firstPrompt"] else None,
            "messageCount": count,
            "startedAt": head["startedAt"],
            "lastActivity": _iso(st.st_mtime),
            "sizeBytes": st.st_size,
        }

    def _shown(self, path: Path) -> bool:
        if self.within is None:
            return True
        try:
            st = path.stat()
        except OSError:
            return False
        return self.within.contains(self._head(path, st)["cwd"])

    def find(self, session_id: str) -> Path | None:
        """The transcript of ``session_id``, if any."""
        if not is_uuid(session_id):
            return None
        for root in self.roots:
            for path in (root / "projects").glob(f"*/{session_id}.jsonl"):
                return path
        return None

    def locate(self, session_id: str) -> dict[str, Any] | None:
        """Where a session ran, as its transcript records it, wherever that is (None: no such
        session): ``{"id", "projectPath", "title"}``, for continuing it (``"resume"``)."""
        path = self.find(session_id)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        head = self._head(path, st)
        if head["sidechain"]:
            return None
        title = head["firstPrompt"]
        return {"id": session_id, "projectPath": head["cwd"], "title": _clip(title) if title else None}

    def messages(self, session_id: str, offset: int = 0, limit: int = 200) -> dict[str, Any] | None:
        """The visible messages of a session's main thread, in order (None if there is no such file)."""
        path = self.find(session_id)
        if path is None or not self._shown(path):
            return None
        entries: dict[str, dict] = {}
        order: list[str] = []
        parents: set[str] = set()
        cwd = None
        for line in iter_lines(path):
            if cwd is None and isinstance(line.get("cwd"), str):
                cwd = line["cwd"]
            uid = line.get("uuid")
            if line.get("type") not in ("user", "assistant", "progress", "system", "attachment"):
                continue
            if not isinstance(uid, str):
                continue
            entries[uid] = line
            order.append(uid)
            if isinstance(line.get("parentUuid"), str):
                parents.add(line["parentUuid"])
        leaf = None
        for uid in reversed(order):
            line = entries[uid]
            if (
                uid not in parents
                and not line.get("isSidechain")
                and not line.get("isMeta")
                and line.get("type") in ("user", "assistant")
            ):
                leaf = uid
                break
        chain: list[dict] = []
        seen: set[str] = set()
        while leaf is not None and leaf in entries and leaf not in seen:
            seen.add(leaf)
            line = entries[leaf]
            chain.append(line)
            parent = line.get("parentUuid") or line.get("logicalParentUuid")
            leaf = parent if isinstance(parent, str) else None
        chain.reverse()
        visible = [m for m in (_claude_message(line) for line in chain) if m is not None]
        return {
            "id": session_id,
            "projectPath": cwd,
            "messages": _page(visible, offset, limit),
            "total": len(visible),
            "offset": offset,
            "limit": limit,
        }


def _claude_message(line: dict) -> dict[str, Any] | None:
    if line.get("type") not in ("user", "assistant") or line.get("isMeta"):
        return None
    message = line.get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    calls, results, texts, thinking = [], [], [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            elif kind in ("tool_use", "server_tool_use"):
                calls.append({"id": block.get("id"), "name": block.get("name"), "input": block.get("input")})
            elif kind == "tool_result":
                out = block.get("content")
                results.append(
                    {
                        "toolUseId": block.get("tool_use_id"),
                        "content": out if isinstance(out, str) else _text_of(out),
                        "isError": bool(block.get("is_error")),
                    }
                )
    return {
        "uuid": line.get("uuid"),
        "role": message.get("role") or line.get("type"),
        "timestamp": line.get("timestamp"),
        "text": "\n".join(texts),
        "thinking": "\n".join(thinking) or None,
        "toolCalls": calls,
        "toolResults": results,
        "model": message.get("model"),
    }


# -- Codex ---------------------------------------------------------------------------------


def codex_root(environ: dict[str, str] | None = None) -> Path:
    """``$CODEX_HOME`` or ``~/.codex``."""
    environ = os.environ if environ is None else environ
    if environ.get("CODEX_HOME"):
        return Path(environ["CODEX_HOME"]).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".codex"


_CODEX_CONTEXT = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>")


def _codex_text(content: object) -> str:
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return content if isinstance(content, str) else ""


class CodexHistory:
    """Codex rollouts: ``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<uuid>.jsonl``."""

    def __init__(self, root: Path, within: ProjectScope | None = None) -> None:
        self.root = root
        self.within = within
        self._heads = StatCache()
        self._counter = _Counter((b'"type":"message"',))

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        out = []
        for path in (self.root / "sessions").glob("*/*/*/rollout-*.jsonl"):
            try:
                out.append((path, path.stat()))
            except OSError:
                continue
        return out

    def _head(self, path: Path, st: os.stat_result) -> dict:
        cached = self._heads.get(path, st)
        if cached is not None:
            return cached
        match = _UUID_TAIL_RE.search(path.stem)
        info: dict[str, Any] = {"id": match.group(1) if match else path.stem, "cwd": None}
        info.update(firstPrompt=None, startedAt=None, cliVersion=None, model=None)
        for line in lines_within(path, CODEX_HEAD_MAX):
            if info["firstPrompt"] is not None and info["model"] is not None:
                break
            payload = line.get("payload")
            if not isinstance(payload, dict):
                continue
            kind = line.get("type")
            if kind == "session_meta":
                if isinstance(payload.get("id"), str):
                    info["id"] = payload["id"]
                info["cwd"] = payload.get("cwd") if isinstance(payload.get("cwd"), str) else info["cwd"]
                info["startedAt"] = payload.get("timestamp") or line.get("timestamp")
                info["cliVersion"] = payload.get("cli_version")
            elif kind == "turn_context":
                info["model"] = info["model"] or payload.get("model")
                if info["cwd"] is None and isinstance(payload.get("cwd"), str):
                    info["cwd"] = payload["cwd"]
            elif info["firstPrompt"] is None:
                text = None
                if (
                    kind == "response_item"
                    and payload.get("type") == "message"
                    and payload.get("role") == "user"
                ):
                    text = _codex_text(payload.get("content"))
                elif kind == "event_msg" and payload.get("type") == "user_message":
                    text = payload.get("message") if isinstance(payload.get("message"), str) else None
                if text and not text.lstrip().startswith(_CODEX_CONTEXT):
                    info["firstPrompt"] = text.strip()
        self._heads.put(path, st, info)
        return info

    def sessions(self, project: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Rollouts newest first, optionally only those recorded in ``project``."""
        files = self._files()
        if project:
            files = [fs for fs in files if self._head(*fs)["cwd"] in (project, project.rstrip("/"))]
        if self.within is not None:
            files = [fs for fs in files if self.within.contains(self._head(*fs)["cwd"])]
        files.sort(key=lambda fs: fs[1].st_mtime, reverse=True)
        page = []
        for path, st in _page(files, offset, limit):
            head = self._head(path, st)
            count = self._counter.count(path, st.st_size) if st.st_size <= COUNT_LIMIT else None
            page.append(
                {
                    "id": head["id"],
                    "projectPath": head["cwd"],
                    "title": _clip(head["firstPrompt"]) if head["firstPrompt"] else None,
                    "firstPrompt": _clip(head["firstPrompt"]) if head["firstPrompt"] else None,
                    "model": head["model"],
                    "cliVersion": head["cliVersion"],
                    "messageCount": count,
                    "startedAt": head["startedAt"],
                    "lastActivity": _iso(st.st_mtime),
                    "sizeBytes": st.st_size,
                }
            )
        return {"sessions": page, "total": len(files), "offset": offset, "limit": limit}

    def find(self, session_id: str) -> Path | None:
        """The rollout file of ``session_id``."""
        if not is_uuid(session_id):
            return None
        for path in (self.root / "sessions").glob(f"*/*/*/rollout-*-{session_id}.jsonl"):
            return path
        return None

    def locate(self, session_id: str) -> dict[str, Any] | None:
        """Where a rollout ran, wherever that is (None: no such rollout): ``{"id", "projectPath",
        "title"}``; the id is the one listings show (its ``session_meta``)."""
        path = self.find(session_id)
        if path is None:
            return None
        try:
            head = self._head(path, path.stat())
        except OSError:
            return None
        title = head["firstPrompt"]
        return {"id": head["id"], "projectPath": head["cwd"], "title": _clip(title) if title else None}

    def messages(self, session_id: str, offset: int = 0, limit: int = 200) -> dict[str, Any] | None:
        """Messages, tool calls and their outputs in order (None if there is no such rollout)."""
        path = self.find(session_id)
        if path is None:
            return None
        if self.within is not None:
            try:
                st = path.stat()
            except OSError:
                return None
            if not self.within.contains(self._head(path, st)["cwd"]):
                return None
        out: list[dict[str, Any]] = []
        cwd = None
        for line in iter_lines(path):
            payload = line.get("payload")
            if not isinstance(payload, dict):
                continue
            if line.get("type") == "session_meta" and isinstance(payload.get("cwd"), str):
                cwd = payload["cwd"]
            if line.get("type") != "response_item":
                continue
            kind = payload.get("type")
            ts = line.get("timestamp")
            if kind == "message":
                text = _codex_text(payload.get("content"))
                if payload.get("role") == "user" and text.lstrip().startswith(_CODEX_CONTEXT):
                    continue
                if payload.get("role") in ("developer", "system"):
                    continue
                out.append({"role": payload.get("role"), "timestamp": ts, "text": text})
            elif kind in ("function_call", "custom_tool_call", "local_shell_call"):
                args = payload.get("arguments", payload.get("input", payload.get("action")))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass
                out.append(
                    {
                        "role": "assistant",
                        "timestamp": ts,
                        "text": "",
                        "toolCalls": [
                            {"id": payload.get("call_id"), "name": payload.get("name"), "input": args}
                        ],
                    }
                )
            elif kind in ("function_call_output", "custom_tool_call_output"):
                result = payload.get("output")
                if isinstance(result, dict):
                    result = result.get("content", json.dumps(result))
                out.append(
                    {
                        "role": "tool",
                        "timestamp": ts,
                        "text": "",
                        "toolResults": [{"toolUseId": payload.get("call_id"), "content": result}],
                    }
                )
        return {
            "id": session_id,
            "projectPath": cwd,
            "messages": _page(out, offset, limit),
            "total": len(out),
            "offset": offset,
            "limit": limit,
        }


# -- Gemini --------------------------------------------------------------------------------


def gemini_root(environ: dict[str, str] | None = None) -> Path:
    """``$GEMINI_CLI_HOME/.gemini`` (or ``$GEMINI_CLI_HOME`` if it holds ``tmp/``), else ``~/.gemini``."""
    environ = os.environ if environ is None else environ
    if environ.get("GEMINI_CLI_HOME"):
        home = Path(environ["GEMINI_CLI_HOME"]).expanduser()
        return home if (home / "tmp").is_dir() and not (home / ".gemini").is_dir() else home / ".gemini"
    return Path(environ.get("HOME") or Path.home()) / ".gemini"


class GeminiHistory:
    """Gemini chats: ``~/.gemini/tmp/<project id>/chats/session-*.json`` (or ``.jsonl`` since v0.39)."""

    def __init__(self, root: Path, within: ProjectScope | None = None) -> None:
        self.root = root
        self.within = within
        self._heads = StatCache()

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        out = []
        for pattern in ("tmp/*/chats/session-*.jsonl", "tmp/*/chats/session-*.json"):
            for path in self.root.glob(pattern):
                try:
                    out.append((path, path.stat()))
                except OSError:
                    continue
        return out

    def _project_path(self, project_dir: Path) -> str | None:
        marker = project_dir / ".project_root"
        try:
            text = marker.read_text().strip()
            if text:
                return text
        except OSError:
            pass
        try:
            registry = json.loads((self.root / "projects.json").read_text())
        except (OSError, ValueError):
            return None
        mapping = registry.get("projects", registry) if isinstance(registry, dict) else {}
        if isinstance(mapping, dict):
            for path, slug in mapping.items():
                if slug == project_dir.name or (isinstance(slug, dict) and project_dir.name in slug.values()):
                    return path
        return None

    def _load(self, path: Path, st: os.stat_result, full: bool) -> tuple[dict, list[dict]]:
        """Metadata and (when ``full``) the records of one chat file."""
        records: list[dict] = []
        if path.suffix == ".jsonl":
            lines = list(iter_lines(path)) if full else head_lines(path, 8192)
            meta = lines[0] if lines and "sessionId" in lines[0] else {}
            for line in lines[1:] if meta else lines:
                if "$rewindTo" in line:
                    target = line["$rewindTo"]
                    for i, r in enumerate(records):
                        if r.get("id") == target:
                            del records[i:]
                            break
                elif "$set" in line and isinstance(line["$set"], dict):
                    meta = {**meta, **line["$set"]}
                elif "type" in line:
                    records.append(line)
            return meta, records
        if not full and st.st_size > 4 * 1024 * 1024:
            return {}, []
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}, []
        if not isinstance(data, dict):
            return {}, []
        messages = data.get("messages")
        return data, [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    def _head(self, path: Path, st: os.stat_result) -> dict:
        cached = self._heads.get(path, st)
        if cached is not None:
            return cached
        meta, records = self._load(path, st, full=False)
        first = next((r for r in records if r.get("type") == "user"), None)
        prompt = _gemini_text(first.get("content")) if first else None
        info = {
            "id": meta.get("sessionId") if isinstance(meta.get("sessionId"), str) else None,
            "projectPath": self._project_path(path.parent.parent),
            "projectHash": meta.get("projectHash"),
            "startedAt": meta.get("startTime"),
            "lastUpdated": meta.get("lastUpdated"),
            "firstPrompt": prompt.strip() if prompt else None,
        }
        self._heads.put(path, st, info)
        return info

    def sessions(self, project: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Chats newest first, optionally only those of ``project``."""
        files = self._files()
        if project:
            import hashlib

            digest = hashlib.sha256(project.encode()).hexdigest()
            files = [
                fs
                for fs in files
                if self._head(*fs)["projectPath"] == project or fs[0].parent.parent.name == digest
            ]
        if self.within is not None:  # chats that do not record their project are shown only anywhere
            files = [fs for fs in files if self.within.contains(self._head(*fs)["projectPath"])]
        files.sort(key=lambda fs: fs[1].st_mtime, reverse=True)
        page = []
        for path, st in _page(files, offset, limit):
            head = self._head(path, st)
            page.append(
                {
                    "id": head["id"],
                    "projectPath": head["projectPath"],
                    "projectHash": head["projectHash"],
                    "title": _clip(head["firstPrompt"]) if head["firstPrompt"] else None,
                    "firstPrompt": _clip(head["firstPrompt"]) if head["firstPrompt"] else None,
                    "startedAt": head["startedAt"],
                    "lastActivity": head["lastUpdated"] or _iso(st.st_mtime),
                    "sizeBytes": st.st_size,
                }
            )
        return {"sessions": page, "total": len(files), "offset": offset, "limit": limit}

    def locate(self, session_id: str) -> dict[str, Any] | None:
        """Where a chat ran, wherever that is (None: no such chat): ``{"id", "projectPath", "title"}``."""
        if not is_uuid(session_id):
            return None
        for path, st in self._files():
            head = self._head(path, st)
            if head["id"] == session_id:
                title = head["firstPrompt"]
                clipped = _clip(title) if title else None
                return {"id": session_id, "projectPath": head["projectPath"], "title": clipped}
        return None

    def messages(self, session_id: str, offset: int = 0, limit: int = 200) -> dict[str, Any] | None:
        """A chat's user and model messages with their tool calls (None if not found)."""
        if not is_uuid(session_id):
            return None
        for path, st in self._files():
            if session_id[:8] not in path.name:
                continue
            if self.within is not None and not self.within.contains(self._head(path, st)["projectPath"]):
                continue
            meta, records = self._load(path, st, full=True)
            if meta.get("sessionId") != session_id:
                continue
            out = []
            for r in records:
                kind = r.get("type")
                if kind not in ("user", "gemini", "error", "warning", "info"):
                    continue
                calls = r.get("toolCalls") if isinstance(r.get("toolCalls"), list) else []
                out.append(
                    {
                        "id": r.get("id"),
                        "role": {"gemini": "assistant"}.get(kind, kind),
                        "timestamp": r.get("timestamp"),
                        "text": _gemini_text(r.get("content")),
                        "model": r.get("model"),
                        "toolCalls": [
                            {
                                "id": c.get("id"),
                                "name": c.get("name"),
                                "input": c.get("args"),
                                "status": c.get("status"),
                                "result": c.get("result"),
                            }
                            for c in calls
                            if isinstance(c, dict)
                        ],
                    }
                )
            return {
                "id": session_id,
                "projectPath": self._project_path(path.parent.parent),
                "messages": _page(out, offset, limit),
                "total": len(out),
                "offset": offset,
                "limit": limit,
            }
        return None


def _gemini_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            if isinstance(p, str)
            else ""
            for p in content
        )
    return ""
