"""Interactive channels: the machine protocols on which each agent CLI asks and waits for an answer.

* Claude Code: stream-json in and out with ``--permission-prompt-tool stdio``; permission
  requests are ``control_request`` lines on stdout, answered by ``control_response`` lines on stdin.
* Codex: ``codex app-server``, JSON-RPC over stdio; approvals are requests from the server.
* Gemini (and any agent given by ``--acp-agent``): the Agent Client Protocol, JSON-RPC over stdio;
  approvals are ``session/request_permission`` requests.

A channel writes the prompt, reads every parsed stdout line first (:meth:`Channel.handle` returns
True for protocol plumbing, which does not become a session event), turns requests into approvals
through its :class:`Host` (the session), and closes the agent's stdin when the turn is over.
Claude and Codex then exit; ACP agents do not (reference/approvals.md §5), so for them the turn
ends on the ``session/prompt`` result and the session stops the process.  Facts:
``reference/approvals.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Protocol

from arp.client.command.approvals import (
    Answer,
    Grant,
    claude_grant,
    claude_summary,
    shown_path,
    subject,
    text_of,
    unified_diff,
)

#: What the model is told when a request is not allowed.
DENIED = "The user denied this."
UNSUPPORTED = -32601
MAX_TOOL_CALLS = 200  # ACP tool calls remembered per turn (to complete a permission request)


class Host(Protocol):
    """What a channel needs from its session."""

    @property
    def cwd(self) -> str: ...

    def ask(self, **fields: Any) -> str: ...

    def withdraw(self, key: str, why: str) -> None: ...

    def note_agent_session(self, session_id: object) -> None: ...

    def note_failure(self, message: str) -> None: ...

    def turn_over(self, exits: bool) -> None: ...


class Writer(Protocol):
    """The agent's stdin."""

    def write(self, data: bytes) -> None: ...

    def close_stdin(self) -> None: ...


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class Channel:
    """The part all protocols share: a host, the agent's stdin, the turn's prompt."""

    #: Whether the agent exits by itself once its stdin is closed after a turn.
    exits_at_eof = True

    def __init__(self, host: Host, process: Writer, prompt: str, resume: str | None, options: dict) -> None:
        self.host = host
        self.process = process
        self.prompt = prompt
        self.resume = resume
        self.options = options
        self.done = False

    def send(self, obj: dict[str, Any]) -> None:
        """Write one JSON line to the agent."""
        self.process.write(_line(obj))

    def finish(self) -> None:
        """The turn is over: close stdin and tell the host (which ends the turn, and the agent
        if it does not exit by itself)."""
        if not self.done:
            self.done = True
            self.process.close_stdin()
            self.host.turn_over(self.exits_at_eof)

    def start(self) -> None:
        """Send the prompt (and whatever must come before it)."""
        raise NotImplementedError

    def handle(self, obj: Any) -> bool:
        """Read one stdout object; True if it was protocol plumbing (not a session event)."""
        raise NotImplementedError


class ClaudeChannel(Channel):
    """Claude Code's stdio control protocol (what the Agent SDK's ``canUseTool`` uses)."""

    def start(self) -> None:
        self.send({"type": "user", "message": {"role": "user", "content": self.prompt}})

    def handle(self, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type")
        if kind == "control_request":
            self._request(obj)
            return True
        if kind == "control_cancel_request":
            rid = obj.get("request_id")
            if isinstance(rid, str):
                self.host.withdraw(f"claude:{rid}", "the agent withdrew the request")
            return True
        if kind == "control_response":
            return True
        if kind == "result":
            self.finish()
        return False

    def _request(self, obj: dict[str, Any]) -> None:
        rid = obj.get("request_id")
        request = obj.get("request")
        if not isinstance(rid, str) or not isinstance(request, dict):
            return
        if request.get("subtype") != "can_use_tool":
            self.send(
                {
                    "type": "control_response",
                    "response": {"subtype": "error", "request_id": rid, "error": "not supported by arpc"},
                }
            )
            return
        tool = request.get("tool_name") if isinstance(request.get("tool_name"), str) else "tool"
        data = request.get("input") if isinstance(request.get("input"), dict) else {}
        suggestions = request.get("permission_suggestions")
        suggestions = suggestions if isinstance(suggestions, list) else []

        def reply(answer: Answer) -> None:
            if answer.status == "cancelled" and answer.message == "withdrawn":
                return  # the agent no longer waits for it
            if answer.allowed:
                given = dict(answer.updated_input if answer.updated_input is not None else data)
                if answer.answers is not None:
                    given["answers"] = answer.answers
                response: dict[str, Any] = {"behavior": "allow", "updatedInput": given}
                if answer.scope == "session" and grant is not None and grant.permissions:
                    response["updatedPermissions"] = grant.permissions
            else:
                response = {"behavior": "deny", "message": answer.message or DENIED}
                if answer.status == "cancelled":
                    response["interrupt"] = True
            self.send(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": rid, "response": response},
                }
            )

        question = tool == "AskUserQuestion"
        questions = data.get("questions") if question and isinstance(data.get("questions"), list) else None
        grant = None if questions else claude_grant(tool, data, suggestions, self.host.cwd)

        def summarize(given: dict[str, Any]) -> dict[str, Any]:
            summary = claude_summary(tool, given, self.host.cwd)
            for key in ("blocked_path", "decision_reason"):
                if isinstance(request.get(key), str):
                    summary[key] = request[key]
            return summary

        summary = summarize(data)
        self.host.ask(
            key=f"claude:{rid}",
            kind="question" if questions else "permission",
            tool=tool,
            input=data,
            summary=summary,
            suggestions=suggestions,
            questions=questions,
            toolUseId=request.get("tool_use_id"),
            reply=reply,
            grant=grant,
            subject=subject(tool, data, self.host.cwd),
            summarize=None if questions else summarize,
        )


def error_text(error: dict[str, Any]) -> str:
    """A JSON-RPC error for people: its message and the reason in ``data.details`` (Gemini's
    "Internal error" says nothing without it)."""
    message = text_of(error.get("message") or error.get("code") or "error", 500)
    data = error.get("data")
    details = data.get("details") if isinstance(data, dict) else data
    if isinstance(details, str) and details.strip() and details.strip() not in message:
        message = f"{message}: {text_of(details.strip(), 1500)}"
    return message


class JsonRpcChannel(Channel):
    """JSON-RPC 2.0 over stdio (Codex omits ``"jsonrpc"``; ACP has it): our requests and their
    answers, the agent's requests, which must be answered once."""

    jsonrpc = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._next = 0
        self._waiting: dict[int, Callable[[dict], None]] = {}

    def call(self, method: str, params: dict[str, Any], then: Callable[[dict], None]) -> None:
        """Send a request; ``then(result)`` runs with its result (an error fails the turn)."""
        self._next += 1
        self._waiting[self._next] = then
        message = {"method": method, "id": self._next, "params": params}
        if self.jsonrpc:
            message["jsonrpc"] = "2.0"
        self.send(message)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification."""
        message: dict[str, Any] = {"method": method, "params": params}
        if self.jsonrpc:
            message["jsonrpc"] = "2.0"
        self.send(message)

    def respond(self, rid: Any, result: Any = None, error: dict | None = None) -> None:
        """Answer one of the agent's requests."""
        message: dict[str, Any] = {"id": rid}
        if error is not None:
            message["error"] = error
        else:
            message["result"] = result
        if self.jsonrpc:
            message["jsonrpc"] = "2.0"
        self.send(message)

    def handle(self, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        if "method" in obj and "id" in obj:
            params = obj.get("params") if isinstance(obj.get("params"), dict) else {}
            if not self.request(obj["id"], obj["method"], params):
                self.respond(obj["id"], error={"code": UNSUPPORTED, "message": "not supported by arpc"})
            return True
        if "id" in obj and ("result" in obj or "error" in obj):
            then = self._waiting.pop(obj["id"], None) if isinstance(obj["id"], int) else None
            if isinstance(obj.get("error"), dict):
                self.host.note_failure(error_text(obj["error"]))
                self.finish()
            elif then is not None:
                then(obj.get("result") if isinstance(obj.get("result"), dict) else {})
            return True
        if "method" in obj:
            params = obj.get("params") if isinstance(obj.get("params"), dict) else {}
            self.notification(obj["method"], params)
        return False

    def request(self, rid: Any, method: str, params: dict[str, Any]) -> bool:
        """Handle a request from the agent; False if we do not know it."""
        return False

    def notification(self, method: str, params: dict[str, Any]) -> None:
        """See a notification (it also becomes a session event)."""


#: Claude permission rank -> Codex (approvalPolicy, sandbox): the lower modes ask.  Codex takes
#: ``untrusted | on-request | granular | never`` (``on-failure`` is gone: reference/approvals.md §5).
CODEX_POLICY = {
    0: ("untrusted", "read-only"),
    1: ("untrusted", "workspace-write"),
    2: ("on-request", "workspace-write"),
    3: ("on-request", "workspace-write"),
    4: ("never", "danger-full-access"),
}


class CodexChannel(JsonRpcChannel):
    """``codex app-server``: initialize, thread/start (or resume), turn/start; approvals are requests."""

    jsonrpc = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.thread: str | None = None
        self._items: dict[str, dict] = {}

    def start(self) -> None:
        info = {"clientInfo": {"name": "arpc", "title": "ARP", "version": self.options.get("version", "0")}}
        self.call("initialize", info, self._initialized)

    def _initialized(self, result: dict) -> None:
        self.notify("initialized", {})
        policy, sandbox = CODEX_POLICY[self.options["rank"]]
        params: dict[str, Any] = {"cwd": self.host.cwd, "approvalPolicy": policy, "sandbox": sandbox}
        if self.options.get("model"):
            params["model"] = self.options["model"]
        if self.resume:
            # excludeTurns: we do not need the history back (its full hydration is deprecated)
            resume = {**params, "threadId": self.resume, "excludeTurns": True}
            self.call("thread/resume", resume, self._thread)
        else:
            self.call("thread/start", params, self._thread)

    def _thread(self, result: dict) -> None:
        thread = result.get("thread") if isinstance(result.get("thread"), dict) else {}
        self.thread = thread.get("id") if isinstance(thread.get("id"), str) else self.resume
        self.host.note_agent_session(self.thread)
        if self.thread is None:
            self.host.note_failure("codex app-server started no thread")
            self.finish()
            return
        turn = {"threadId": self.thread, "input": [{"type": "text", "text": self.prompt}]}
        self.call("turn/start", turn, lambda result: None)

    def notification(self, method: str, params: dict[str, Any]) -> None:
        item = params.get("item")
        if method == "item/started" and isinstance(item, dict) and isinstance(item.get("id"), str):
            if item.get("type") == "fileChange":
                self._items[item["id"]] = item
        elif method == "turn/completed":
            turn = params.get("turn") if isinstance(params.get("turn"), dict) else {}
            if turn.get("status") == "failed":
                error = turn.get("error")
                self.host.note_failure(
                    str(error.get("message")) if isinstance(error, dict) else "turn failed"
                )
            self.finish()

    def request(self, rid: Any, method: str, params: dict[str, Any]) -> bool:
        if method == "item/commandExecution/requestApproval":
            command = text_of(params.get("command"))
            cwd = params.get("cwd") if isinstance(params.get("cwd"), str) else self.host.cwd
            summary = {"command": command, "cwd": cwd, "reason": params.get("reason")}
            tool = "command"
            asked = subject(tool, {}, cwd, command)
            grant = Grant(
                f"the command {command}, exactly (Codex remembers it too)",
                [{"tool": tool, "command": command}],
            )
        elif method == "item/fileChange/requestApproval":
            item = self._items.get(str(params.get("itemId")), {})
            summary = {"reason": params.get("reason")}
            changes = item.get("changes") if isinstance(item.get("changes"), list) else []
            paths = [c.get("path") for c in changes if isinstance(c, dict) and isinstance(c.get("path"), str)]
            if paths:
                summary["path"] = ", ".join(shown_path(p, self.host.cwd) for p in paths)
                summary["diff"] = "".join(
                    c["diff"] for c in changes if isinstance(c, dict) and isinstance(c.get("diff"), str)
                )
            tool = "fileChange"
            params = {**params, "changes": changes}
            asked = {
                "tool": tool,
                "input": {},
                "command": None,
                "paths": [os.path.normpath(os.path.join(self.host.cwd, p)) for p in paths],
            }
            shown = ", ".join(shown_path(p, self.host.cwd) for p in paths) or "these files"
            grant = Grant(
                f"edits to {shown} (Codex remembers these files too)",
                [{"tool": tool, "paths": asked["paths"]}],
            )
        else:
            return False

        def reply(answer: Answer) -> None:
            if answer.status == "cancelled" and answer.message == "withdrawn":
                return
            if answer.allowed:
                decision = "acceptForSession" if answer.scope == "session" else "accept"
            else:
                decision = "cancel" if answer.status == "cancelled" else "decline"
            self.respond(rid, {"decision": decision})

        self.host.ask(
            key=f"codex:{rid}", kind="permission", tool=tool, input=params, summary=summary,
            reply=reply, grant=grant if asked["command"] or asked["paths"] else None, subject=asked,
        )  # fmt: skip
        return True


class AcpChannel(JsonRpcChannel):
    """The Agent Client Protocol: initialize, session/new (or load), session/prompt; the turn ends
    with the ``session/prompt`` result (the agent keeps running after stdin closes)."""

    exits_at_eof = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.acp_session: str | None = None
        self._calls: dict[str, dict[str, Any]] = {}  # tool calls by toolCallId, merged from updates
        self._loading = False  # between session/load and its result

    def start(self) -> None:
        capabilities = {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}
        self.call("initialize", {"protocolVersion": 1, "clientCapabilities": capabilities}, self._initialized)

    def _initialized(self, result: dict) -> None:
        params = {"cwd": self.host.cwd, "mcpServers": []}
        if self.resume:
            self.acp_session = self.resume
            self._loading = True
            self.call("session/load", {**params, "sessionId": self.resume}, self._session)
        else:
            self.call("session/new", params, self._session)

    def handle(self, obj: Any) -> bool:
        replayed = isinstance(obj, dict) and obj.get("method") == "session/update" and "id" not in obj
        if self._loading and replayed:
            # session/load replays the whole conversation as updates: what the session shows
            # already (or, continued from history, what the history shows), not this turn's output
            return True
        return super().handle(obj)

    def _session(self, result: dict) -> None:
        self._loading = False
        if isinstance(result.get("sessionId"), str):
            self.acp_session = result["sessionId"]
        if self.acp_session is None:
            self.host.note_failure("the agent opened no session")
            self.finish()
            return
        self.host.note_agent_session(self.acp_session)
        modes = result.get("modes") if isinstance(result.get("modes"), dict) else {}
        mode = acp_mode(self.options.get("mode"), modes.get("availableModes"))
        if mode is not None and mode != modes.get("currentModeId"):
            # without it codex-acp runs commands in its own default mode, without asking
            self.call("session/set_mode", {"sessionId": self.acp_session, "modeId": mode}, self._prompt)
        else:
            self._prompt({})

    def _prompt(self, result: dict) -> None:
        prompt = {"sessionId": self.acp_session, "prompt": [{"type": "text", "text": self.prompt}]}
        self.call("session/prompt", prompt, self._ended)

    def _ended(self, result: dict) -> None:
        reason = result.get("stopReason")
        if reason not in (None, "end_turn", "max_tokens", "max_turn_requests", "cancelled"):
            self.host.note_failure(f"the agent stopped: {reason}")
        self.finish()

    def notification(self, method: str, params: dict[str, Any]) -> None:
        update = params.get("update") if isinstance(params.get("update"), dict) else {}
        if method != "session/update" or update.get("sessionUpdate") not in ("tool_call", "tool_call_update"):
            return
        call_id = update.get("toolCallId")
        if isinstance(call_id, str):
            known = self._calls.pop(call_id, {})
            known.update({k: v for k, v in update.items() if v is not None and k != "sessionUpdate"})
            self._calls[call_id] = known  # newest last
            while len(self._calls) > MAX_TOOL_CALLS:
                self._calls.pop(next(iter(self._calls)))

    def request(self, rid: Any, method: str, params: dict[str, Any]) -> bool:
        if method != "session/request_permission":
            return False
        asked = params.get("toolCall") if isinstance(params.get("toolCall"), dict) else {}
        # the command and folder may have come only in earlier tool_call updates (claude-code-acp)
        call = dict(self._calls.get(str(asked.get("toolCallId")), {}))
        call.update({k: v for k, v in asked.items() if v not in (None, {}, [])})
        options = [o for o in params.get("options") or [] if isinstance(o, dict) and "optionId" in o]
        summary = acp_summary(call, self.host.cwd)

        def pick(*kinds: str) -> dict | None:
            for kind in kinds:
                for option in options:
                    if option.get("kind") == kind:
                        return option
            return None

        def reply(answer: Answer) -> None:
            if answer.status == "cancelled" and answer.message == "withdrawn":
                return
            if answer.status == "cancelled":
                self.respond(rid, {"outcome": {"outcome": "cancelled"}})
                return
            if answer.allowed:  # never an allow_always the person did not choose
                chosen = pick("allow_always" if answer.scope == "session" else "allow_once")
            else:
                chosen = pick("reject_once", "reject_always")
            if chosen is None:
                self.respond(rid, {"outcome": {"outcome": "cancelled"}})
            else:
                self.respond(rid, {"outcome": {"outcome": "selected", "optionId": chosen["optionId"]}})

        tool = call.get("kind") if isinstance(call.get("kind"), str) else "tool"
        raw = call.get("rawInput") if isinstance(call.get("rawInput"), dict) and call["rawInput"] else None
        exact = {"kind": tool, "rawInput": raw, "title": None if raw else call.get("title")}
        what = summary.get("command") or summary.get("path") or summary["title"]
        always = pick("allow_always")
        grant = None
        if always is not None:
            name = text_of(always.get("name") or "Always allow", 100)
            words = f'the agent\'s own "{name}" for {what}; arpc repeats only this exact {tool} call'
            grant = Grant(words, [{"tool": tool, "input": exact}])
        self.host.ask(
            key=f"acp:{rid}", kind="permission", tool=tool, input=call, summary=summary,
            suggestions=options, reply=reply, grant=grant,
            subject={"tool": tool, "input": exact, "command": None, "paths": []},
        )  # fmt: skip
        return True

    def cancel(self) -> None:
        """Ask the agent to stop the turn (``session/cancel``)."""
        if self.acp_session:
            self.notify("session/cancel", {"sessionId": self.acp_session})


#: The ACP mode ids that stand for each permission mode, best first: the mode's own name
#: (claude-code-acp: default, acceptEdits, plan, bypassPermissions), then codex-acp's
#: (read-only asks before running anything, auto runs commands in the workspace, full-access).
ACP_MODES = {
    "plan": ("plan", "read-only"),
    "default": ("default", "read-only"),
    "dontAsk": ("dontAsk", "default", "read-only"),
    "acceptEdits": ("acceptEdits", "auto"),
    "auto": ("auto", "acceptEdits"),
    "bypassPermissions": ("bypassPermissions", "full-access"),
}


def acp_mode(permission_mode: object, available: object) -> str | None:
    """The id of the agent's mode for ``permission_mode`` among its ``availableModes`` (None if
    it lists none that fits: then the agent keeps its own)."""
    ids = [m.get("id") for m in available if isinstance(m, dict)] if isinstance(available, list) else []
    ids = [i for i in ids if isinstance(i, str)]
    for wanted in ACP_MODES.get(permission_mode, ()) if isinstance(permission_mode, str) else ():
        for mode_id in ids:
            if mode_id.lower() == wanted.lower():
                return mode_id
    return None


def acp_summary(call: dict[str, Any], cwd: str) -> dict[str, Any]:
    """The human summary of an ACP tool call: its title, and a path and diff, or a command (from
    ``rawInput``, else the title of a shell call) and the folder it runs in."""
    title = text_of(call.get("title") or call.get("kind") or "tool", 500)
    summary: dict[str, Any] = {"title": title}
    raw = call.get("rawInput") if isinstance(call.get("rawInput"), dict) else {}
    for block in call.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "diff" and isinstance(block.get("path"), str):
            old = block.get("oldText") if isinstance(block.get("oldText"), str) else ""
            new = block.get("newText") if isinstance(block.get("newText"), str) else ""
            path = shown_path(block["path"], cwd)
            summary["path"] = path
            summary["diff"] = summary.get("diff", "") + unified_diff(path, old, new)
    if "path" in summary:
        return summary
    command = raw.get("command", raw.get("cmd"))
    if command is not None:
        summary["command"] = text_of(command)
    elif call.get("kind") in ("execute", "other", None):
        summary["command"] = title
    else:
        return summary
    folder = raw.get("cwd", raw.get("workdir"))
    summary["cwd"] = folder if isinstance(folder, str) and folder else cwd
    return summary


CHANNELS: dict[str, type[Channel]] = {"claude": ClaudeChannel, "codex": CodexChannel, "acp": AcpChannel}
