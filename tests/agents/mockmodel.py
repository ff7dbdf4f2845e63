"""A model server on loopback for the real agent CLIs: Anthropic Messages, OpenAI Responses and
Gemini ``streamGenerateContent``, each as server-sent events.

It is scripted by the prompt, statelessly, so retries and the CLIs' side requests (titles,
next-speaker checks) are answered consistently:

* ``RUN: a ;; b`` -- while fewer tool calls than commands follow the current prompt in the
  conversation, and the request offers a shell tool, the answer is a call of that tool for the
  next command; after the last one, text that quotes the last tool output
  (``Done: <output>``).
* ``SLOW`` -- text deltas every 0.2 s for a minute (something to cancel while it streams).
* anything else: ``Mock says: <prompt>``, in several deltas.

The "current prompt" is the conversation's last user message with text of its own (not a tool
result), so a follow-up is scripted by its own words, while the earlier turns stay visible in
:attr:`MockModel.requests` (a resumed session sends them again).

Run it by hand: ``python -m tests.agents.mockmodel [PORT]`` prints the port it listens on.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import resource, server

SHELL_TOOLS = ("Bash", "exec_command", "shell", "local_shell", "run_shell_command")
SLOW_TICKS = 300  # 0.2 s apart: a minute
_ids = itertools.count(1)


@dataclass
class Turn:
    """What the mock made of one request: the prompt it answered, the tool calls since, the tool
    outputs seen, which tools were offered, and what it answered."""

    api: str
    path: str
    prompt: str
    calls: list  # [(arguments, output or None)] since the prompt
    tools: list[str]
    history: list[str] = field(default_factory=list)  # every user text in the conversation
    answer: str = ""
    body: dict = field(default_factory=dict, repr=False)


def run_commands(prompt: str) -> list[str]:
    """The commands of a ``RUN: a ;; b`` prompt (as ``tests/fakes/_fakelib.py`` reads them)."""
    if "RUN:" not in prompt:
        return []
    return [c.strip() for c in prompt.split("RUN:", 1)[1].split(";;") if c.strip()]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text(block) for block in content)
    if isinstance(content, dict):
        for key in ("text", "content", "output"):
            if key in content:
                return _text(content[key])
    return ""


_CONTEXT = re.compile(r"<([a-z_-]+)>.*?</\1>", re.S)


def _own_text(text: str) -> str:
    """A user message's words without the context blocks the CLIs add (Claude's
    ``<system-reminder>``, Codex's ``<environment_context>``, Gemini's ``<session_context>``)."""
    return _CONTEXT.sub("", text).strip()


# -- reading each API's conversation ------------------------------------------------------------
#
# Each reader gives (prompt, calls since it: [(arguments, output or None)], tool names offered,
# every user text of the conversation).


def read_anthropic(body: dict) -> tuple[str, list[tuple[dict, str | None]], list[str], list[str]]:
    messages = body.get("messages") or []
    prompt, start, history = "", 0, []
    for i, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if message.get("role") != "user" or any(b.get("type") == "tool_result" for b in blocks):
            continue
        words = _own_text("\n".join(b.get("text", "") for b in blocks if b.get("type") == "text"))
        if words:
            prompt, start = words, i
            history.append(words)
    calls: dict[str, list] = {}
    for message in messages[start + 1 :]:
        for block in message.get("content") if isinstance(message.get("content"), list) else []:
            if block.get("type") == "tool_use":
                calls[block.get("id")] = [block.get("input") or {}, None]
            elif block.get("type") == "tool_result" and block.get("tool_use_id") in calls:
                calls[block["tool_use_id"]][1] = _text(block.get("content"))
    tools = [t.get("name", "") for t in body.get("tools") or []]
    return prompt, [tuple(c) for c in calls.values()], tools, history  # type: ignore[misc]


def read_responses(body: dict) -> tuple[str, list[tuple[dict, str | None]], list[str], list[str]]:
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    prompt, start, history = "", 0, []
    for i, item in enumerate(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            words = _own_text(_text(item.get("content")))
            if words:
                prompt, start = words, i
                history.append(words)
    calls: dict[str, list] = {}
    for item in items[start + 1 :]:
        if item.get("type") in ("function_call", "local_shell_call", "custom_tool_call"):
            try:
                arguments = json.loads(item.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            calls[item.get("call_id")] = [arguments, None]
        elif item.get("type", "").endswith("_call_output") and item.get("call_id") in calls:
            calls[item["call_id"]][1] = _text(item.get("output"))
    tools = [t.get("name") or t.get("type", "") for t in body.get("tools") or []]
    return prompt, [tuple(c) for c in calls.values()], tools, history  # type: ignore[misc]


def read_gemini(body: dict) -> tuple[str, list[tuple[dict, str | None]], list[str], list[str]]:
    contents = body.get("contents") or []
    prompt, start, history = "", 0, []
    for i, content in enumerate(contents):
        parts = content.get("parts") or []
        if content.get("role") != "user" or any("functionResponse" in p for p in parts):
            continue
        words = _own_text("\n".join(p.get("text", "") for p in parts if isinstance(p.get("text"), str)))
        if words:
            prompt, start = words, i
            history.append(words)
    calls: list[list] = []
    for content in contents[start + 1 :]:
        for part in content.get("parts") or []:
            if "functionCall" in part:
                calls.append([part["functionCall"].get("args") or {}, None])
            elif "functionResponse" in part and calls:
                response = part["functionResponse"].get("response") or {}
                output = response.get("output", response) if isinstance(response, dict) else response
                calls[-1][1] = output if isinstance(output, str) else json.dumps(output)
    tools = [
        d.get("name", "") for t in body.get("tools") or [] for d in (t.get("functionDeclarations") or [])
    ]
    return prompt, [tuple(c) for c in calls], tools, history  # type: ignore[misc]


# -- what to answer -----------------------------------------------------------------------------

#: What a command run in a read-only sandbox says; a model then asks to run it unsandboxed
#: (Codex's ``sandbox_permissions: "require_escalated"``), which is when Codex asks the user.
SANDBOXED = ("Read-only file system", "Operation not permitted")


#: ``QUESTION`` asks this with Claude's AskUserQuestion (as ``tests/fakes`` does with ASK_QUESTION)
QUESTION = {
    "questions": [
        {
            "question": "Which color?",
            "header": "Color",
            "multiSelect": False,
            "options": [{"label": "Red", "description": "warm"}, {"label": "Blue", "description": "cool"}],
        }
    ]
}


def plan(turn: Turn) -> tuple[str, Any]:
    """("tool", (tool name, command, escalate, input or None)) or ("text", [chunks]) or
    ("slow", None)."""
    if "QUESTION" in turn.prompt and "AskUserQuestion" in turn.tools and not turn.calls:
        return "tool", ("AskUserQuestion", "AskUserQuestion", False, QUESTION)
    commands = run_commands(turn.prompt)
    shell = next((t for t in SHELL_TOOLS if t in turn.tools), None)
    done, retry = 0, False
    for arguments, output in turn.calls:
        escalated = arguments.get("sandbox_permissions") == "require_escalated"
        retry = not escalated and any(s in (output or "") for s in SANDBOXED)
        done += 0 if retry else 1
    if commands and shell and done < len(commands):
        return "tool", (shell, commands[done], retry, None)
    if "SLOW" in turn.prompt and shell:
        return "slow", None
    outputs = [o for _, o in turn.calls if o]
    if outputs:
        last = " ".join(outputs[-1].split())[:200]
        text = f"Done: {last}"
    else:
        text = f"Mock says: {' '.join(turn.prompt.split())[:200]}"
    words = text.split(" ")
    chunks = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    return "text", chunks


class SSE:
    """Server-sent events on one request; stops quietly when the client has gone."""

    def __init__(self, request: server.Request, streams: set | None = None) -> None:
        self.request = request
        self.gone = False
        self.timer: Any = None
        self.streams = streams if streams is not None else set()
        self.streams.add(self)
        request.notifyFinish().addBoth(self._gone)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")

    def _gone(self, _: object) -> None:
        self.gone = True
        self.streams.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def abort(self) -> None:
        """Drop the connection and stop sending."""
        self._gone(None)
        if self.request.channel is not None and self.request.channel.transport is not None:
            self.request.channel.transport.abortConnection()

    def event(self, data: dict, name: str | None = None) -> None:
        if self.gone:
            return
        head = f"event: {name}\n" if name else ""
        self.request.write(f"{head}data: {json.dumps(data)}\n\n".encode())

    def end(self) -> None:
        if not self.gone:
            self._gone(None)
            self.request.finish()


class MockModel(resource.Resource):
    """The three APIs on one site; :attr:`requests` keeps a :class:`Turn` per model request."""

    isLeaf = True
    log = Logger()

    def __init__(self, clock: IReactorTime = default_reactor) -> None:
        super().__init__()
        self.clock = clock
        self.requests: list[Turn] = []
        self.streams: set[SSE] = set()
        self.channels: set[Any] = set()  # open HTTP connections (``listen`` keeps them here)

    def stop(self) -> Deferred[None]:
        """End every stream and connection still open (a slow stream whose agent was cancelled,
        a CLI's keep-alive connection); fires when they are closed."""
        for sse in list(self.streams):
            sse.abort()
        lost = []
        for channel in list(self.channels):
            transport = getattr(getattr(channel, "_channel", channel), "transport", None)
            if transport is not None:
                transport.abortConnection()
                lost.append(channel.lost)
        return DeferredList(lost).addCallback(lambda _: None)

    # -- routing

    def render_GET(self, request: server.Request) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"application/json")
        if path.endswith("/models"):
            return json.dumps({"data": [], "models": [], "object": "list"}).encode()
        request.setResponseCode(404)
        return json.dumps({"error": {"message": f"no {path} here"}}).encode()

    def render_POST(self, request: server.Request) -> Any:
        path = request.path.decode()
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            body = {}
        if path.endswith("/messages/count_tokens"):
            return self._json(request, {"input_tokens": 100})
        if path.endswith("/messages"):
            return self._anthropic(request, path, body)
        if path.endswith("/responses"):
            return self._responses(request, path, body)
        if ":streamGenerateContent" in path or ":generateContent" in path:
            return self._gemini(request, path, body)
        if ":countTokens" in path:
            return self._json(request, {"totalTokens": 100})
        self.log.info("mock model: unknown {path}", path=path)
        request.setResponseCode(404)
        return self._json(request, {"error": {"message": f"no {path} here", "code": 404}})

    def _json(self, request: server.Request, obj: dict) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()

    def _turn(self, api: str, path: str, body: dict, read: Any) -> Turn:
        prompt, calls, tools, history = read(body)
        turn = Turn(api, path, prompt, calls, tools, history, body=body)
        self.requests.append(turn)
        return turn

    def _drip(self, sse: SSE, chunks: list[str], send: Any, done: Any, delay: float = 0.0) -> None:
        """Send ``chunks`` one by one (``delay`` apart), then ``done()``."""
        queue = list(chunks)

        def step() -> None:
            if sse.gone:
                return
            if queue:
                send(queue.pop(0))
                if delay:
                    sse.timer = self.clock.callLater(delay, step)
                else:
                    step()
            else:
                done()

        step()

    # -- Anthropic Messages

    def _anthropic(self, request: server.Request, path: str, body: dict) -> Any:
        turn = self._turn("anthropic", path, body, read_anthropic)
        kind, what = plan(turn)
        model = body.get("model", "claude-mock")
        mid = f"msg_mock{next(_ids)}"
        usage = {
            "input_tokens": 10,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if not body.get("stream"):
            if kind == "tool":
                content = [
                    {
                        "type": "tool_use",
                        "id": f"toolu_mock{next(_ids)}",
                        "name": what[0],
                        "input": what[3] or {"command": what[1]},
                    }
                ]
                turn.answer, stop = f"tool {what[1]}", "tool_use"
            else:
                text = "".join(what or ["tick"])
                content, stop = [{"type": "text", "text": text}], "end_turn"
                turn.answer = text
            message = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return self._json(request, message)
        sse = SSE(request, self.streams)
        start = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        sse.event({"type": "message_start", "message": start}, "message_start")

        def finish(stop: str) -> None:
            sse.event({"type": "content_block_stop", "index": 0}, "content_block_stop")
            delta = {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 12},
            }
            sse.event(delta, "message_delta")
            sse.event({"type": "message_stop"}, "message_stop")
            sse.end()

        if kind == "tool":
            turn.answer = f"tool {what[1]}"
            block = {"type": "tool_use", "id": f"toolu_mock{next(_ids)}", "name": what[0], "input": {}}
            sse.event(
                {"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"
            )
            args = json.dumps(what[3] or {"command": what[1], "description": f"Run {what[1]}"})
            delta = {"type": "input_json_delta", "partial_json": args}
            sse.event({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
            finish("tool_use")
            return server.NOT_DONE_YET
        block = {"type": "text", "text": ""}
        sse.event({"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start")

        def send(chunk: str) -> None:
            turn.answer += chunk
            delta = {"type": "text_delta", "text": chunk}
            sse.event({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")

        chunks, delay = (what, 0.0) if kind == "text" else ([f"tick {i} " for i in range(SLOW_TICKS)], 0.2)
        self._drip(sse, chunks, send, lambda: finish("end_turn"), delay)
        return server.NOT_DONE_YET

    # -- OpenAI Responses

    def _responses(self, request: server.Request, path: str, body: dict) -> Any:
        turn = self._turn("responses", path, body, read_responses)
        kind, what = plan(turn)
        sse = SSE(request, self.streams)
        rid = f"resp_mock{next(_ids)}"
        base = {
            "id": rid,
            "object": "response",
            "created_at": 0,
            "model": body.get("model", "gpt-mock"),
            "status": "in_progress",
            "output": [],
        }
        sse.event({"type": "response.created", "response": base}, "response.created")

        def completed(items: list[dict]) -> None:
            usage = {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 12,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 22,
            }
            done = {**base, "status": "completed", "output": items, "usage": usage}
            sse.event({"type": "response.completed", "response": done}, "response.completed")
            sse.end()

        if kind == "tool":
            name, command = what[0], what[1]
            turn.answer = f"tool {command}"
            if name == "exec_command":
                arguments = {"cmd": command}
                if what[2]:
                    arguments.update(
                        sandbox_permissions="require_escalated", justification=f"May I run {command}?"
                    )
            elif name == "shell":
                arguments = {"command": ["bash", "-lc", command]}
            else:
                arguments = {"command": command}
            item = {
                "type": "function_call",
                "id": f"fc_mock{next(_ids)}",
                "call_id": f"call_mock{next(_ids)}",
                "name": name,
                "arguments": json.dumps(arguments),
                "status": "completed",
            }
            sse.event(
                {"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}},
                "response.output_item.added",
            )
            sse.event(
                {"type": "response.output_item.done", "output_index": 0, "item": item},
                "response.output_item.done",
            )
            completed([item])
            return server.NOT_DONE_YET
        mid = f"msg_mock{next(_ids)}"
        item = {"type": "message", "id": mid, "role": "assistant", "status": "in_progress", "content": []}
        sse.event(
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            "response.output_item.added",
        )
        part = {"type": "output_text", "text": "", "annotations": []}
        sse.event(
            {
                "type": "response.content_part.added",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
            "response.content_part.added",
        )

        def send(chunk: str) -> None:
            turn.answer += chunk
            sse.event(
                {
                    "type": "response.output_text.delta",
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": chunk,
                },
                "response.output_text.delta",
            )

        def done() -> None:
            text = {"type": "output_text", "text": turn.answer, "annotations": []}
            sse.event(
                {
                    "type": "response.output_text.done",
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "text": turn.answer,
                },
                "response.output_text.done",
            )
            final = {**item, "status": "completed", "content": [text]}
            sse.event(
                {"type": "response.output_item.done", "output_index": 0, "item": final},
                "response.output_item.done",
            )
            completed([final])

        chunks, delay = (what, 0.0) if kind == "text" else ([f"tick {i} " for i in range(SLOW_TICKS)], 0.2)
        self._drip(sse, chunks, send, done, delay)
        return server.NOT_DONE_YET

    # -- Gemini

    def _gemini(self, request: server.Request, path: str, body: dict) -> Any:
        turn = self._turn("gemini", path, body, read_gemini)
        model = path.rsplit("/", 1)[-1].split(":", 1)[0]
        config = body.get("generationConfig") or {}
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 12, "totalTokenCount": 22}

        def candidate(parts: list[dict], finish: str | None) -> dict:
            out: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                out["finishReason"] = finish
            return {"candidates": [out], "usageMetadata": usage, "modelVersion": model}

        if config.get("responseMimeType") == "application/json" or config.get("responseJsonSchema"):
            # the CLI's own checks (next speaker, model routing, loop detection): the user speaks next
            answer = {
                "reasoning": "the mock model is done",
                "next_speaker": "user",
                "model_choice": "flash",
                "is_stuck": False,
                "confidence": 0.0,
            }
            kind, what = "json", json.dumps(answer)
        else:
            kind, what = plan(turn)
        if ":generateContent" in path:
            if kind == "tool":
                parts = [{"functionCall": {"name": what[0], "args": {"command": what[1]}}}]
            else:
                parts = [{"text": what if kind == "json" else "".join(what or ["tick"])}]
            turn.answer = json.dumps(parts)
            return self._json(request, candidate(parts, "STOP"))
        sse = SSE(request, self.streams)
        if kind == "tool":
            turn.answer = f"tool {what[1]}"
            call = {"name": what[0], "args": {"command": what[1], "description": f"Run {what[1]}"}}
            sse.event(candidate([{"functionCall": call}], "STOP"))
            sse.end()
            return server.NOT_DONE_YET
        if kind == "json":
            turn.answer = what
            sse.event(candidate([{"text": what}], "STOP"))
            sse.end()
            return server.NOT_DONE_YET

        def send(chunk: str) -> None:
            turn.answer += chunk
            sse.event(candidate([{"text": chunk}], None))

        def done() -> None:
            sse.event(candidate([{"text": ""}], "STOP"))
            sse.end()

        chunks, delay = (what, 0.0) if kind == "text" else ([f"tick {i} " for i in range(SLOW_TICKS)], 0.2)
        self._drip(sse, chunks, send, done, delay)
        return server.NOT_DONE_YET


class _Site(server.Site):
    """A site that keeps its open connections in ``model.channels`` (each with a ``lost``
    Deferred), so :meth:`MockModel.stop` can close them."""

    def __init__(self, model: MockModel) -> None:
        super().__init__(model)
        self.model = model
        self.displayTracebacks = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.lost = Deferred()
        original = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            self.model.channels.discard(channel)
            original(reason)
            channel.lost.callback(None)

        channel.connectionLost = connectionLost
        self.model.channels.add(channel)
        return channel


def listen(model: MockModel, reactor: Any = default_reactor, port: int = 0) -> Any:
    """Serve ``model`` on 127.0.0.1 (``port`` 0: any free one); the listening port."""
    return reactor.listenTCP(port, _Site(model), interface="127.0.0.1")


def main(argv: list[str]) -> None:
    """Serve until interrupted, logging each request's digest to stdout."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    model = MockModel()
    original = model._turn

    def logged(*args: Any) -> Turn:
        turn = original(*args)
        default_reactor.callLater(
            0.5,
            lambda: print(
                json.dumps(
                    {
                        "api": turn.api,
                        "path": turn.path,
                        "prompt": turn.prompt[:80],
                        "calls": len(turn.calls),
                        "tools": turn.tools[:40],
                        "answer": turn.answer[:80],
                    }
                ),
                flush=True,
            ),
        )
        return turn

    model._turn = logged  # type: ignore[method-assign]
    port = listen(model, port=int(argv[1]) if len(argv) > 1 else 0)
    print(f"mock model listening on {port.getHost().port}", flush=True)
    default_reactor.run()


if __name__ == "__main__":
    main(sys.argv)
