"""What a session changed: the files, with a diff a phone can show.

From the project's git working tree when it is a repository (the working tree and the index
against the commit that was ``HEAD`` when the session started, plus untracked files), otherwise
from the agent's own edit and write tool calls in the session's events.  Git runs without a
shell, with a time limit and an output cap, and with nothing of the repository's configuration
that runs commands (fsmonitor, external diff, textconv); it never writes (no optional locks).
A binary file, or one above :data:`BIG_FILE` bytes, is summarised and never read whole; one
file's diff is cut at :data:`MAX_FILE_DIFF` bytes and the whole answer at :data:`MAX_TOTAL`.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

MAX_FILES = 300  # files listed; more and the answer says truncated
MAX_FILE_DIFF = 256 * 1024  # characters of one file's diff
MAX_TOTAL = 2 * 1024 * 1024  # characters of all the diffs of one answer
BIG_FILE = 1024 * 1024  # bytes: a larger file is summarised (git treats it as binary)
GIT_TIMEOUT = 10.0  # seconds one git command may take
GIT_OUTPUT = 8 * 1024 * 1024  # bytes read from one git command; then it is killed
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
STATUSES = ("added", "modified", "deleted", "renamed")
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
#: Two git computations at a time for the whole arpc: a viewer tapping reload cannot pile them up.
_LIMIT = DeferredSemaphore(2)


class _Collect(ProcessProtocol):
    """Collects a process's stdout up to ``limit`` bytes (then kills it) and a little stderr."""

    def __init__(self, limit: int, done: Deferred) -> None:
        self.limit = limit
        self.done = done
        self.out: list[bytes] = []
        self.size = 0
        self.err = b""
        self.overflow = False
        self.timed_out = False

    def outReceived(self, data: bytes) -> None:
        if self.overflow:
            return
        room = self.limit - self.size
        self.out.append(data[:room])
        self.size += min(len(data), room)
        if len(data) > room:
            self.overflow = True
            self.kill()

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-4096:]

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback((code, b"".join(self.out), self.err, self.overflow or self.timed_out))


def git_binary() -> str | None:
    """The git to run, if this machine has one."""
    return shutil.which("git")


def run_git(
    reactor: Any,
    cwd: str,
    args: list[str],
    limit: int = GIT_OUTPUT,
    timeout: float = GIT_TIMEOUT,
    ceiling: str | None = None,
) -> Deferred[tuple[int | None, bytes, bytes, bool]]:
    """Run ``git ARGS`` in ``cwd``: ``(exit code, stdout, stderr tail, cut short)``; git looks for
    the repository no higher than ``ceiling``'s children (default: ``cwd`` itself)."""
    git = git_binary()
    if git is None:
        raise FileNotFoundError("git")
    argv = [
        "git",
        "-c", "core.fsmonitor=false",
        "-c", "core.quotepath=off",
        "-c", f"core.bigFileThreshold={BIG_FILE}",
        "-c", "core.untrackedCache=false",
        "-c", "diff.noprefix=false",
        "-c", "color.ui=never",
        *args,
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/"),
        "LC_ALL": "C",
        "GIT_OPTIONAL_LOCKS": "0",  # never refresh (write) the index
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PAGER": "cat",
        # never a repository above the project root (the ceiling itself is not looked at)
        "GIT_CEILING_DIRECTORIES": ceiling or os.path.dirname(os.path.realpath(cwd)),
    }
    done: Deferred = Deferred()
    proto = _Collect(limit, done)
    reactor.spawnProcess(proto, git, argv, env, path=cwd)

    def overdue() -> None:
        proto.timed_out = True
        proto.kill()

    timer = reactor.callLater(timeout, overdue)

    def stop_timer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    done.addBoth(stop_timer)
    return done


def _lines_counted(diff: str) -> tuple[int, int]:
    added = removed = 0
    in_hunk = False
    for line in diff.split("\n"):
        if line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith("+"):
            added += 1
        elif in_hunk and line.startswith("-"):
            removed += 1
    return added, removed


class _Budget:
    """The characters of diff text an answer still has room for."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL
        self.truncated = False

    def fit(self, entry: dict[str, Any], diff: str | None) -> dict[str, Any]:
        """Put ``diff`` in ``entry``: cut to :data:`MAX_FILE_DIFF`, or left out once the total is spent."""
        entry.setdefault("truncated", False)
        if diff is None:
            entry["diff"] = None
            return entry
        if len(diff) > MAX_FILE_DIFF:
            diff = diff[: diff.rfind("\n", 0, MAX_FILE_DIFF) + 1 or MAX_FILE_DIFF]
            entry["truncated"] = True
            entry.setdefault("summary", f"the diff is longer than {MAX_FILE_DIFF // 1024} KiB: cut there")
        if len(diff) > self.left:
            entry["diff"] = None
            entry["truncated"] = True
            entry["summary"] = "not shown: this answer's size limit was reached"
            self.truncated = True
            return entry
        self.left -= len(diff)
        entry["diff"] = diff
        return entry


def _entry(path: str, status: str, added: int | None, removed: int | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "status": status, "added": added, "removed": removed}
    entry.update(extra)
    return entry


# -- git -------------------------------------------------------------------------------------


def _split_z(data: bytes) -> list[str]:
    parts = data.decode("utf-8", "surrogateescape").split("\0")
    return parts[:-1] if parts and parts[-1] == "" else parts


def _parse_name_status(data: bytes) -> list[tuple[str, str, str | None]]:
    """``git diff --name-status -z``: (status, path, old path)."""
    tokens = _split_z(data)
    out = []
    i = 0
    while i < len(tokens):
        letter = tokens[i][:1]
        if letter in ("R", "C") and i + 2 < len(tokens):
            old, new = tokens[i + 1], tokens[i + 2]
            out.append(("renamed" if letter == "R" else "added", new, old if letter == "R" else None))
            i += 3
            continue
        if i + 1 >= len(tokens):
            break
        status = {"A": "added", "D": "deleted"}.get(letter, "modified")
        out.append((status, tokens[i + 1], None))
        i += 2
    return out


def _parse_numstat(data: bytes) -> list[tuple[int | None, int | None]]:
    """``git diff --numstat -z``: (added, removed) in order; None for a binary (or big) file."""
    tokens = _split_z(data)
    out = []
    i = 0
    while i < len(tokens):
        fields = tokens[i].split("\t", 2)
        if len(fields) < 3:
            break
        counts = tuple(int(f) if f.isdigit() else None for f in fields[:2])
        out.append(counts)
        i += 3 if fields[2] == "" else 1  # a rename: the two paths follow
    return out  # type: ignore[return-value]


def _split_patch(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    if not text:
        return []
    chunks = re.split(r"(?m)^(?=diff --git )", text)
    return [c for c in chunks if c.startswith("diff --git ")]


def _size(path: Path) -> int | None:
    try:
        return path.lstat().st_size
    except OSError:
        return None


def _summary_of(path: Path, binary_hint: bool) -> tuple[int | None, str]:
    size = _size(path)
    if size is not None and size > BIG_FILE:
        return size, f"large file ({size:,} bytes): not shown"
    return size, "binary file: not shown" if binary_hint else "not shown"


def _new_file(path: Path, shown: str) -> tuple[dict[str, Any], str | None]:
    """An untracked file as an all-added diff, unless it is big, binary or not a regular file."""
    try:
        st = path.lstat()
    except OSError:
        return {"summary": "could not be read"}, None
    if not path.is_file() or path.is_symlink():
        return {"summary": "not a regular file: not shown", "size": st.st_size}, None
    if st.st_size > BIG_FILE:
        return {
            "summary": f"large file ({st.st_size:,} bytes): not shown",
            "size": st.st_size,
            "binary": False,
        }, None
    try:
        with open(path, "rb") as f:
            data = f.read(BIG_FILE + 1)
    except OSError:
        return {"summary": "could not be read"}, None
    if b"\0" in data[:8000]:
        return {"summary": "binary file: not shown", "size": len(data), "binary": True}, None
    lines = data.decode("utf-8", "replace").splitlines()
    head = f"--- /dev/null\n+++ b/{shown}\n@@ -0,0 +1,{len(lines)} @@\n"
    return {"size": len(data)}, head + "".join(f"+{line}\n" for line in lines)


def _runner(reactor: Any, cwd: str, ceiling: str | None, config: list[str] | None = None) -> Any:
    def run(args: list[str], limit: int = GIT_OUTPUT) -> Deferred:
        return run_git(reactor, cwd, [*(config or []), *args], limit=limit, ceiling=ceiling)

    return run


def _filters_off(listing: bytes) -> list[str] | None:
    """``-c`` options that switch off every filter driver ``git config --get-regexp`` named (a
    driver's clean or process command runs when git diff reads the working tree); None when a
    name cannot be given on a command line."""
    names = set()
    for key in _split_z(listing):
        key = key.split("\n", 1)[0]
        if key.startswith("filter.") and key.count(".") >= 2:
            names.add(key[len("filter.") : key.rfind(".")])
    if any("=" in n or "\n" in n or not n for n in names):
        return None
    return [
        opt
        for n in sorted(names)
        for k in ("process", "clean", "smudge")
        for opt in ("-c", f"filter.{n}.{k}=")
    ]


async def git_changes(
    reactor: Any, cwd: str, base: str | None, ceiling: str | None = None
) -> dict[str, Any] | None:
    """The changes in the git working tree at ``cwd`` since ``base`` (a commit; None: HEAD), or
    None when ``cwd`` is not in a git working tree (or git cannot tell).  ``ceiling``: see
    :func:`run_git` (the directory above the ``--project-root``)."""
    if git_binary() is None or not os.path.isdir(cwd):
        return None
    run = _runner(reactor, cwd, ceiling)
    code, out, _, _ = await run(["rev-parse", "--is-inside-work-tree"], limit=4096)
    if code != 0 or out.strip() != b"true":
        return None
    # reading the configuration runs nothing; the filters it names would run on diff
    _, listing, _, _ = await run(
        ["config", "--null", "--name-only", "--get-regexp", r"^filter\."], limit=65536
    )
    off = _filters_off(listing)
    if off is None:
        log.warn("not running git diff in {cwd}: a filter driver's name cannot be switched off", cwd=cwd)
        return None
    run = _runner(reactor, cwd, ceiling, off)
    if base is None or not _SHA_RE.match(base):
        base = None
    if base is not None:
        code, _, _, _ = await run(["cat-file", "-e", f"{base}^{{commit}}"], limit=4096)
        base = base if code == 0 else None
    if base is None:
        code, out, _, _ = await run(["rev-parse", "--verify", "-q", "HEAD^{commit}"], limit=4096)
        text = out.decode("ascii", "replace").strip()
        base = text if code == 0 and _SHA_RE.match(text) else EMPTY_TREE
    common = ["diff", base, "-M", "--relative", "--no-ext-diff", "--no-textconv", "--no-color"]
    code, names, err, cut = await run([*common, "--name-status", "-z"])
    if code != 0:
        log.info(
            "git diff in {cwd} failed: {err}", cwd=cwd, err=err.decode("utf-8", "replace").strip()[-300:]
        )
        return None
    _, counts, _, _ = await run([*common, "--numstat", "-z"])
    _, patch, _, patch_cut = await run([*common, "-U3", "--src-prefix=a/", "--dst-prefix=b/"])
    _, others, _, others_cut = await run(
        ["ls-files", "--others", "--exclude-standard", "-z"], limit=1024 * 1024
    )
    entries = _parse_name_status(names)
    numbers = _parse_numstat(counts)
    chunks = _split_patch(patch)
    budget = _Budget()
    truncated = cut or others_cut
    files: list[dict[str, Any]] = []
    for i, (status, path, old) in enumerate(entries):
        if len(files) >= MAX_FILES:
            truncated = True
            break
        added, removed = numbers[i] if i < len(numbers) and len(numbers) == len(entries) else (None, None)
        chunk = chunks[i] if i < len(chunks) and len(chunks) == len(entries) else None
        entry = _entry(path, status, added, removed, **({"oldPath": old} if old else {}))
        if chunk is not None and re.search(r"(?m)^Binary files .* differ$", chunk) and "\n@@" not in chunk:
            entry["binary"] = added is None
            entry["size"], entry["summary"] = _summary_of(Path(cwd) / path, True)
            if entry["size"] is not None and entry["size"] > BIG_FILE:
                entry["binary"] = False
            chunk = None
        elif chunk is None:
            partial = patch_cut and i >= len(chunks) - 1
            entry["summary"] = "not shown: the diff was too long" if partial else "not shown"
            entry["truncated"] = partial
            truncated = truncated or partial
        elif patch_cut and i == len(chunks) - 1:
            entry["truncated"] = True  # the last chunk read may have been cut
            truncated = True
        if entry["added"] is None and chunk is not None:
            entry["added"], entry["removed"] = _lines_counted(chunk)
        files.append(budget.fit(entry, chunk))
    for path in _split_z(others):
        if len(files) >= MAX_FILES:
            truncated = True
            break
        extra, diff = _new_file(Path(cwd) / path, path)
        added = diff.count("\n+") - 1 if diff else None  # minus the +++ line
        files.append(budget.fit(_entry(path, "added", added, 0 if diff else None, **extra), diff))
    files.sort(key=lambda f: f["path"])
    return {
        "source": "git",
        "base": None if base == EMPTY_TREE else base,
        "files": files,
        "truncated": truncated or budget.truncated,
    }


async def git_head(reactor: Any, cwd: str, ceiling: str | None = None) -> str | None:
    """The commit ``HEAD`` names in the working tree at ``cwd`` (None: not a repository, no commit)."""
    if git_binary() is None:
        return None
    run = _runner(reactor, cwd, ceiling)
    code, out, _, _ = await run(["rev-parse", "--verify", "-q", "HEAD^{commit}"], limit=4096)
    text = out.decode("ascii", "replace").strip()
    return text if code == 0 and _SHA_RE.match(text) else None


# -- the agent's own tool calls ---------------------------------------------------------------


class _Edit:
    """One change the agent made to one file: hunks (unified diff lines) and what it was."""

    def __init__(self, path: str, kind: str, hunks: str | None = None, content: str | None = None) -> None:
        self.path = path
        self.kind = kind  # "create", "update", "delete"
        self.hunks = hunks
        self.content = content


def _edit_hunks(old: str, new: str, path: Path | None) -> str:
    """A unified diff of one replacement, its line numbers those of the file now when it can be found."""
    start = 1
    if path is not None and new:
        try:
            if path.stat().st_size <= BIG_FILE:
                text = path.read_text("utf-8", "replace")
                at = text.find(new)
                if at >= 0:
                    start = text.count("\n", 0, at) + 1
        except OSError:
            pass
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3))[
        2:
    ]  # no ---/+++ header
    out = []
    for line in lines:
        m = _HUNK_RE.match(line)
        if m:
            a, b = int(m.group(1)), int(m.group(3))
            al, bl = m.group(2) or "1", m.group(4) or "1"
            line = f"@@ -{a + start - 1},{al} +{b + start - 1},{bl} @@"
        out.append(line + "\n")
    return "".join(out)


def _structured(patch: object) -> str | None:
    """Claude's ``structuredPatch`` (its tool result of an edit) as unified diff hunks."""
    if not isinstance(patch, list) or not patch:
        return None
    out = []
    for hunk in patch:
        if not isinstance(hunk, dict) or not isinstance(hunk.get("lines"), list):
            return None
        out.append(
            f"@@ -{hunk.get('oldStart', 0)},{hunk.get('oldLines', 0)} "
            f"+{hunk.get('newStart', 0)},{hunk.get('newLines', 0)} @@\n"
        )
        out.extend(f"{line}\n" for line in hunk["lines"] if isinstance(line, str))
    return "".join(out)


def _all_added(content: str) -> str:
    lines = content.splitlines()
    return f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{line}\n" for line in lines)


def _codex_kind(kind: object) -> str:
    if isinstance(kind, dict):
        kind = kind.get("type")
    return {"add": "create", "delete": "delete"}.get(kind if isinstance(kind, str) else "", "update")


def tool_edits(events: Iterable[dict[str, Any]], cwd: str) -> list[_Edit]:
    """Every file change in a session's events that the agent reported as done, in order."""
    edits: list[_Edit] = []
    claude_calls: dict[str, list[_Edit]] = {}  # tool_use id -> edits, dropped if the call failed
    acp_calls: dict[str, dict[str, Any]] = {}  # toolCallId -> {"diffs": [...], "status": ...}
    gemini_calls: dict[str, list[_Edit]] = {}
    order: list[tuple[str, str]] = []  # ("claude"|"acp"|"gemini"|"done", id) to keep edits in order

    def absolute(p: object) -> Path | None:
        if not isinstance(p, str) or not p or "\0" in p:
            return None
        return Path(p) if os.path.isabs(p) else Path(cwd) / p

    for event in events:
        if event.get("kind") != "agent" or not isinstance(event.get("data"), dict):
            continue
        d = event["data"]
        kind = d.get("type")
        method = d.get("method")
        if kind == "assistant" and isinstance(d.get("message"), dict):
            for block in d["message"].get("content") or []:
                if not isinstance(block, dict) or block.get("type") != "tool_use":
                    continue
                name, args = block.get("name"), block.get("input")
                if not isinstance(args, dict) or name not in ("Edit", "MultiEdit", "Write", "NotebookEdit"):
                    continue
                target = absolute(args.get("file_path") or args.get("notebook_path"))
                if target is None:
                    continue
                found: list[_Edit] = []
                if name == "Write" and isinstance(args.get("content"), str):
                    found.append(_Edit(str(target), "create", content=args["content"]))
                elif name == "Edit":
                    old, new = args.get("old_string"), args.get("new_string")
                    if isinstance(old, str) and isinstance(new, str):
                        found.append(_Edit(str(target), "update", _edit_hunks(old, new, target)))
                elif name == "MultiEdit" and isinstance(args.get("edits"), list):
                    for e in args["edits"]:
                        if (
                            isinstance(e, dict)
                            and isinstance(e.get("old_string"), str)
                            and isinstance(e.get("new_string"), str)
                        ):
                            found.append(
                                _Edit(
                                    str(target),
                                    "update",
                                    _edit_hunks(e["old_string"], e["new_string"], target),
                                )
                            )
                else:
                    found.append(_Edit(str(target), "update"))
                if found and isinstance(block.get("id"), str):
                    claude_calls[block["id"]] = found
                    order.append(("claude", block["id"]))
        elif kind == "user" and isinstance(d.get("message"), dict):
            result = d.get("tool_use_result") if isinstance(d.get("tool_use_result"), dict) else {}
            for block in d["message"].get("content") or []:
                if not isinstance(block, dict) or block.get("type") != "tool_result":
                    continue
                found = claude_calls.get(block.get("tool_use_id"))
                if found is None:
                    continue
                if block.get("is_error"):
                    found.clear()
                elif result:
                    hunks = _structured(result.get("structuredPatch"))
                    for e in found:
                        if result.get("type") == "update" and e.kind == "create":
                            e.kind = "update"
                            e.hunks = hunks or e.hunks
                        elif hunks and e.kind == "update" and len(found) == 1:
                            e.hunks = hunks
        elif method == "item/completed" or kind == "item.completed":
            item = (d.get("params") or {}).get("item") if method else d.get("item")
            if not isinstance(item, dict) or item.get("type") not in ("fileChange", "file_change"):
                continue
            if item.get("status") not in (None, "completed"):
                continue
            for change in item.get("changes") or []:
                if not isinstance(change, dict):
                    continue
                target = absolute(change.get("path"))
                if target is None:
                    continue
                what = _codex_kind(change.get("kind"))
                diff = change.get("diff") if isinstance(change.get("diff"), str) else None
                if what == "create" and diff is not None and not diff.startswith("@@"):
                    edits.append(_Edit(str(target), what, content=diff))
                else:
                    edits.append(_Edit(str(target), what, diff if diff and "@@" in diff else None))
        elif method == "session/update":
            update = (d.get("params") or {}).get("update")
            if not isinstance(update, dict) or not isinstance(update.get("toolCallId"), str):
                continue
            call = acp_calls.setdefault(update["toolCallId"], {"diffs": [], "status": None})
            if call["status"] is None and not call["diffs"]:
                order.append(("acp", update["toolCallId"]))
            diffs = [
                c for c in update.get("content") or [] if isinstance(c, dict) and c.get("type") == "diff"
            ]
            if diffs:
                call["diffs"] = diffs
            if isinstance(update.get("status"), str):
                call["status"] = update["status"]
        elif kind == "tool_use" and d.get("tool_name") in ("write_file", "replace", "edit"):
            args = d.get("parameters") if isinstance(d.get("parameters"), dict) else {}
            target = absolute(args.get("file_path"))
            if target is None or not isinstance(d.get("tool_id"), str):
                continue
            if isinstance(args.get("content"), str):
                gemini_calls[d["tool_id"]] = [_Edit(str(target), "create", content=args["content"])]
            elif isinstance(args.get("old_string"), str) and isinstance(args.get("new_string"), str):
                hunks = _edit_hunks(args["old_string"], args["new_string"], target)
                gemini_calls[d["tool_id"]] = [_Edit(str(target), "update", hunks)]
            order.append(("gemini", d["tool_id"]))
        elif kind == "tool_result" and isinstance(d.get("tool_id"), str):
            if d.get("status") not in (None, "success"):
                gemini_calls.pop(d["tool_id"], None)
    # the ACP and Claude edits keep their place among each other; Codex's were appended as seen
    for source, key in order:
        if source == "claude":
            edits.extend(claude_calls.get(key, []))
        elif source == "gemini":
            edits.extend(gemini_calls.get(key, []))
        elif source == "acp":
            call = acp_calls[key]
            if call["status"] not in ("completed",):
                continue
            for diff in call["diffs"]:
                target = absolute(diff.get("path"))
                new = diff.get("newText")
                if target is None or not isinstance(new, str):
                    continue
                old = diff.get("oldText")
                if isinstance(old, str):
                    edits.append(_Edit(str(target), "update", _edit_hunks(old, new, target)))
                else:
                    edits.append(_Edit(str(target), "create", content=new))
    return edits


def tool_changes(events: Iterable[dict[str, Any]], cwd: str) -> dict[str, Any]:
    """The files the agent's own edit and write tool calls changed (a plain directory's answer)."""
    by_path: dict[str, list[_Edit]] = {}
    for edit in tool_edits(events, cwd):
        by_path.setdefault(edit.path, []).append(edit)
    budget = _Budget()
    files = []
    truncated = False
    for path, edits in sorted(by_path.items()):
        if len(files) >= MAX_FILES:
            truncated = True
            break
        shown = os.path.relpath(path, cwd) if path.startswith(cwd.rstrip("/") + "/") else path
        kinds = [e.kind for e in edits]
        if kinds[-1] == "delete" or (not os.path.lexists(path) and "delete" in kinds):
            status = "deleted"
        elif kinds[0] == "create":
            status = "added"
        else:
            status = "modified"
        parts = []
        unknown = False
        for e in edits:
            if e.kind == "create" and e.content is not None:
                parts.append(_all_added(e.content))
            elif e.hunks:
                parts.append(e.hunks)
            elif e.kind != "delete":
                unknown = True
        diff = "".join(parts) or None
        if diff is not None:
            diff = f"--- a/{shown}\n+++ b/{shown}\n" + diff
        added, removed = _lines_counted(diff) if diff else (0, 0)
        entry = _entry(shown, status, added, removed, edits=len(edits))
        if unknown and diff is None:
            entry["summary"] = "the agent did not report what it changed"
        files.append(budget.fit(entry, diff))
    return {"source": "tools", "base": None, "files": files, "truncated": truncated or budget.truncated}


async def session_changes(
    reactor: Any, cwd: str, base: str | None, events: Iterable[dict[str, Any]], ceiling: str | None = None
) -> dict[str, Any]:
    """A session's changes: from git when ``cwd`` is in a working tree, else from its tool calls."""
    found = None
    if os.path.isdir(cwd):

        async def from_git() -> dict[str, Any] | None:
            try:
                return await git_changes(reactor, cwd, base, ceiling)
            except FileNotFoundError:
                return None

        found = await _LIMIT.run(lambda: ensureDeferred(from_git()))
    return found if found is not None else tool_changes(events, cwd)
