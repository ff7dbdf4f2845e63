"""The shape of a CLI's transcript: which kinds of message it printed and with which fields, so
that a fake can be checked against the real CLI for the same scenario.

A kind is, for Claude's stream-json, ``type`` (and ``subtype``; a ``control_request`` adds its
request's subtype); for JSON-RPC (Codex, ACP), ``request METHOD``, ``notify METHOD`` (ACP's
``session/update`` adds the update's ``sessionUpdate``) or ``result METHOD`` / ``error METHOD``
for an answer to a request arpc sent.  Its fields are the keys of the message, of its ``params``,
``result``, ``request``, ``update`` and ``item`` (dotted), over every line of that kind.
"""

from __future__ import annotations

from typing import Any

#: What arpc reads, by kind: the real CLI and the fake must both print these in the scenario.
RELIED_ON = {
    "system/init",
    "assistant",
    "control_request/can_use_tool",
    "result/success",
    "result initialize",
    "result thread/start",
    "request item/commandExecution/requestApproval",
    "notify item/completed",
    "notify turn/completed",
    "result session/new",
    "request session/request_permission",
    "notify session/update/agent_message_chunk",
    "notify session/update/tool_call",
    "result session/prompt",
}
NESTED = ("params", "result", "request", "update", "item", "message")


def _fields(obj: dict[str, Any], prefix: str = "", depth: int = 0) -> set[str]:
    out = set()
    for key, value in obj.items():
        out.add(prefix + key)
        if key in NESTED and isinstance(value, dict) and depth < 3:
            out |= _fields(value, f"{prefix}{key}.", depth + 1)
    return out


def shapes(transcript: list[dict]) -> dict[str, set[str]]:
    """kind -> the fields seen with it, over the lines the CLI printed (``dir`` "out")."""
    sent: dict[tuple[int, Any], str] = {}  # (process, id) -> method of arpc's requests
    found: dict[str, set[str]] = {}
    for entry in transcript:
        line = entry["line"]
        if not isinstance(line, dict):
            continue
        if entry["dir"] == "in":
            if "method" in line and "id" in line:
                sent[(entry["process"], line["id"])] = line["method"]
            continue
        if "type" in line and "method" not in line:
            kind = line["type"]
            if isinstance(line.get("subtype"), str):
                kind += "/" + line["subtype"]
            request = line.get("request")
            if kind == "control_request" and isinstance(request, dict):
                kind += "/" + str(request.get("subtype"))
        elif "method" in line:
            kind = ("request " if "id" in line else "notify ") + line["method"]
            update = (line.get("params") or {}).get("update")
            if line["method"] == "session/update" and isinstance(update, dict):
                kind += "/" + str(update.get("sessionUpdate"))
        elif "id" in line:
            method = sent.get((entry["process"], line["id"]), "?")
            kind = ("error " if "error" in line else "result ") + method
        else:
            kind = "?"
        found.setdefault(kind, set()).update(_fields(line))
    return found


#: Kinds a fake prints in the scenario that the real CLI prints only elsewhere, by CLI.
KNOWN = {
    # real Gemini sends tool_call updates only for tools it runs unasked (reads), none here
    "gemini": {"notify session/update/tool_call"},
}


def compare(real: dict[str, set[str]], fake: dict[str, set[str]], cli: str = "") -> list[str]:
    """What the fake does that the real CLI did not (or leaves out of what arpc relies on).
    Answers to requests arpc sent only one of them (``session/set_mode`` when the agent's own
    mode already fits) are not compared."""
    problems = []
    for kind in sorted(fake):
        if kind.startswith(("result ", "error ")) and kind not in real:
            continue
        if kind in KNOWN.get(cli, ()):
            continue
        if kind not in real:
            problems.append(f"the fake prints {kind!r}, the real CLI does not")
        else:
            extra = sorted(fake[kind] - real[kind])
            if extra:
                problems.append(f"the fake's {kind!r} has fields the real one lacks: {extra}")
    for kind in sorted(RELIED_ON & set(real)):
        if kind not in fake:
            problems.append(f"the real CLI prints {kind!r} (arpc reads it), the fake does not")
    return problems
