"""Shared code of the fake agent CLIs: argument checks, recording, behaviours chosen by the prompt.

Prompt markers: ``LONG`` runs until killed (an event every 0.1 s, plus a child process that
ignores SIGINT; with ``STUBBORN`` both ignore SIGINT and SIGTERM), ``STDERR`` writes 2 MB to
stderr first, ``FAIL`` ends with an error, ``GARBAGE`` mixes in non-JSON lines, ANSI escapes and
unknown event types.  ``HOSTILE_ID`` reports a session id shaped like a flag
(``--dangerously-skip-permissions``) after a valid one, ``HOSTILE_ONLY`` reports nothing else.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def check_stdin():
    """Exit like a hung CLI would be killed if stdin is an open pipe (it must be closed)."""
    ready, _, _ = select.select([sys.stdin], [], [], 2.0)
    if not ready or os.read(sys.stdin.fileno(), 1) != b"":
        sys.stderr.write("fake: stdin is open; a real CLI would hang here\n")
        sys.exit(3)


def record(name, argv, prompt, extra=None):
    directory = os.environ.get("ARP_FAKE_RECORD_DIR")
    info = {
        "name": name,
        "argv": argv,
        "prompt": prompt,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "isatty": os.isatty(1),
        "env": {k: os.environ.get(k) for k in ("CLAUDECODE", "GEMINI_CLI_TRUST_WORKSPACE", "NO_COLOR")},
    }
    info.update(extra or {})
    if directory:
        path = os.path.join(directory, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(path + ".tmp", path)
    return info


def spawn_child(stubborn=False):
    """A grandchild that ignores SIGINT (so cancelling must escalate) and holds our stdout;
    a stubborn one ignores SIGTERM too, so only SIGKILL ends it."""
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    if stubborn:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "while True: time.sleep(0.1)\n"
    return subprocess.Popen([sys.executable, "-c", code])


def prelude(prompt):
    if "STDERR" in prompt:
        chunk = ("fake stderr noise " * 60 + "\n").encode()
        for _ in range(2 * 1024 * 1024 // len(chunk) + 1):
            os.write(2, chunk)


def long_run(name, argv, prompt, tick):
    """Print ``tick(i)`` every 0.1 s until a signal ends us."""
    stubborn = "STUBBORN" in prompt
    child = spawn_child(stubborn)
    record(name, argv, prompt, {"child": child.pid})
    signal.signal(signal.SIGINT, signal.SIG_IGN if stubborn else (lambda *a: sys.exit(130)))
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    i = 0
    while True:
        emit(tick(i))
        i += 1
        time.sleep(0.1)


def new_id():
    return str(uuid.uuid4())


HOSTILE = "--dangerously-skip-permissions"


def option(args, name):
    """The value of ``name VALUE`` or ``name=VALUE``, as commander/yargs/clap read them."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def session_ids(prompt, resume, make=new_id):
    """(first id reported, later ids reported) for this run; see the module for the markers."""
    if "HOSTILE_ONLY" in prompt:
        return HOSTILE, HOSTILE
    first = resume or make()
    return first, HOSTILE if "HOSTILE_ID" in prompt else first


# -- interactive channels (reference/approvals.md) ----------------------------------------------
#
# Markers that ask (interactive modes only): ``ASK_BASH`` (a shell command), ``ASK_EDIT`` (a file
# edit with a diff), ``ASK_QUESTION`` (Claude's AskUserQuestion), ``ASK_TWICE`` (the same request
# twice), ``RUN: cmd ;; cmd`` (each command in turn), ``WITHDRAW`` (ask, then withdraw the
# request), ``DIE_ASKING`` (ask, then exit 9 without waiting).  Like the real CLIs, a fake does not
# ask again for what a "for this session" answer covers in its own rules (Claude: the session
# rules it was sent; Codex: the exact command of an ``acceptForSession``; ACP: the exact call of
# an ``allow_always``); a new process starts with none.  Each asked request blocks until answered
# (with ``HTML`` in the prompt, Claude's command is markup that must stay text); what the fake was
# told ends up in its output ("allowed: ...", "denied: ...", "answer: ...") and in its record
# file (``told``).

ASK_MARKERS = ("ASK_BASH", "ASK_EDIT", "ASK_QUESTION", "ASK_TWICE", "RUN:", "WITHDRAW", "DIE_ASKING")
COMMAND = "rm -rf build"
HTML_COMMAND = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'  # the HTML marker
QUESTION = {
    "question": "Which color?",
    "header": "Color",
    "multiSelect": False,
    "options": [{"label": "Red", "description": "warm"}, {"label": "Blue", "description": "cool"}],
}
TOPPINGS = {
    "question": "Which toppings?",
    "header": "Toppings",
    "multiSelect": True,
    "options": [{"label": "Cheese"}, {"label": "Olives"}, {"label": "Basil"}],
}


def read_json():
    """The next JSON line on stdin, or None at EOF (non-JSON lines are an error)."""
    line = sys.stdin.readline()
    if not line:
        return None
    return json.loads(line)


def drain_stdin():
    """Wait until arpc closes our stdin (a real interactive CLI does not exit before)."""
    while sys.stdin.readline():
        pass


def asks(prompt):
    return any(m in prompt for m in ASK_MARKERS)


def write_told(name, argv, prompt, told, extra=None):
    record(name, argv, prompt, {"told": told, **(extra or {})})


def edit_target():
    path = os.path.join(os.getcwd(), "README.md")
    return path, "Hello wrold\n", "Hello world\n"


# -- ACP (Gemini --experimental-acp and the generic agent) --------------------------------------


def rpc(obj):
    emit({"jsonrpc": "2.0", **obj})


LINGER = 300  # seconds an ACP fake keeps running after its stdin closed (a leak ends by itself)


def linger():
    """What claude-code-acp and codex-acp do when their stdin closes: nothing -- they keep
    running until a signal ends them (reference/approvals.md §5)."""
    deadline = time.monotonic() + LINGER
    while time.monotonic() < deadline:
        time.sleep(0.5)
    return 0


def acp_main(name, argv, exit_at_eof=True):
    """An ACP agent on stdio: initialize, session/new|load, session/prompt, asking on markers.
    Without ``exit_at_eof`` it keeps running after its stdin closes, like the real adapters."""
    told = []
    pending_id = [1000]
    sid = resume = None
    while True:
        msg = read_json()
        if msg is None:
            return 0 if exit_at_eof else linger()
        method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method == "initialize":
            rpc({"id": rid, "result": {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}}})
        elif method in ("session/new", "session/load"):
            sid = resume = params.get("sessionId")
            sid = sid or new_id()
            record(
                name,
                argv,
                "",
                {"acp": method, "cwd_param": params.get("cwd"), "resume": params.get("sessionId")},
            )
            result = {"sessionId": sid} if method == "session/new" else None
            if name == "acpagent":  # modes as codex-acp lists them; it starts in "auto"
                result = {**(result or {}), "modes": {"currentModeId": MODE[0], "availableModes": MODES}}
            rpc({"id": rid, "result": result})
        elif method == "session/set_mode" and name == "acpagent":
            if params.get("sessionId") != sid or params.get("modeId") not in [m["id"] for m in MODES]:
                rpc({"id": rid, "error": {"code": -32602, "message": "Invalid params"}})
            else:
                MODE[0] = params["modeId"]
                rpc({"id": rid, "result": {}})
        elif method == "session/prompt":
            prompt = " ".join(b.get("text", "") for b in params.get("prompt", []) if isinstance(b, dict))
            prelude(prompt)
            if "LONG" in prompt:
                long_run(name, argv, prompt, lambda i, s=params["sessionId"]: acp_chunk(s, f"tick {i} "))
            if "GARBAGE" in prompt:
                print("\x1b[2Kprogress: 50%", flush=True)
                rpc(
                    {
                        "method": "session/update",
                        "params": {"sessionId": sid, "update": {"sessionUpdate": "plan", "entries": []}},
                    }
                )
            listing = {"toolCallId": "t1", "title": "list_directory", "kind": "read"}
            listing["rawInput"] = {"dir_path": "."}
            update(params["sessionId"], {"sessionUpdate": "tool_call", **listing, "status": "pending"})
            done = {"toolCallId": "t1", "status": "completed"}
            if name == "gemini":  # claude-code-acp and codex-acp send no content here
                done["content"] = [{"type": "content", "content": {"type": "text", "text": "2 items"}}]
            update(params["sessionId"], {"sessionUpdate": "tool_call_update", **done})
            text = acp_turn(name, argv, prompt, params["sessionId"], told, pending_id, resume)
            if text is None:
                return 9
            write_told(name, argv, prompt, told, {"resume": resume, "mode": MODE[0]})
            if "FAIL" in prompt:
                # as Gemini 0.61 answers: the reason only in data.details
                error = {"code": -32603, "message": "Internal error", "data": {"details": "quota exceeded"}}
                rpc({"id": rid, "error": error})
                continue
            emit(acp_chunk(params["sessionId"], f"{name.capitalize()} says: "))
            emit(acp_chunk(params["sessionId"], text))
            rpc({"id": rid, "result": {"stopReason": "end_turn"}})
        elif method == "session/cancel":
            told.append({"cancel": True})
        elif rid is not None and method is None:
            pass  # a stray answer
        elif rid is not None:
            rpc({"id": rid, "error": {"code": -32601, "message": f"unknown method {method}"}})


def update(sid, body):
    rpc({"method": "session/update", "params": {"sessionId": sid, "update": body}})


def acp_chunk(sid, text):
    return {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {
            "sessionId": sid,
            "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}},
        },
    }


ACP_OPTIONS = [
    {"optionId": "yes", "name": "Allow", "kind": "allow_once"},
    {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "no", "name": "Reject", "kind": "reject_once"},
]


ALWAYS = set()  # the exact calls an allow_always answer covers, in this process


def run_commands(prompt):
    """The commands of a ``RUN: a ;; b`` prompt."""
    return [c.strip() for c in prompt.split("RUN:", 1)[1].split(";;") if c.strip()]


def acp_calls(name, prompt):
    """The tool calls the markers ask for: (call for the tool_call update, call in the request).
    The generic agent (like claude-code-acp) sends the command only in the earlier update; Gemini
    only in the title."""
    path, old, new = edit_target()
    if "ASK_EDIT" in prompt:
        call = {
            "toolCallId": "call_edit",
            "title": "Edit README.md",
            "kind": "edit",
            "content": [{"type": "diff", "path": path, "oldText": old, "newText": new}],
            "locations": [{"path": path}],
        }
        return [(call, call)] * (2 if "ASK_TWICE" in prompt else 1)
    if "RUN:" in prompt:
        commands = run_commands(prompt)
    else:
        commands = [COMMAND] * (2 if "ASK_TWICE" in prompt else 1)
    calls = []
    for n, command in enumerate(commands):
        if name == "gemini":
            call = {"toolCallId": f"call_shell_{n}", "title": command, "kind": "execute"}
            calls.append((call, call))
        else:
            first = {"toolCallId": f"call_shell_{n}", "title": f"Run {command}", "kind": "execute"}
            first["rawInput"] = {"command": command, "cwd": os.getcwd()}
            calls.append((first, {"toolCallId": first["toolCallId"], "title": first["title"]}))
    return calls


MODES = [  # codex-acp's modes: in "auto" and "full-access" it runs commands without asking
    {"id": "read-only", "name": "Read Only"},
    {"id": "auto", "name": "Auto"},
    {"id": "full-access", "name": "Full Access"},
]
MODE = ["auto"]


def acp_turn(name, argv, prompt, sid, told, pending_id, resume=None):
    """Run the tool calls the markers ask for; the text to answer with (None: die)."""
    if not asks(prompt):
        return prompt
    results = []
    for first, call in acp_calls(name, prompt):
        update(sid, {"sessionUpdate": "tool_call", **first, "status": "pending"})
        what = first["title"]
        if name == "acpagent" and MODE[0] != "read-only":
            results.append(f"ran without asking: {what}")
            continue
        exact = json.dumps([first.get("kind"), first.get("rawInput") or first["title"]], sort_keys=True)
        if exact in ALWAYS:
            results.append(f"allowed by the agent's rule: {what}")
            continue
        pending_id[0] += 1
        rid = pending_id[0]
        rpc(
            {
                "id": rid,
                "method": "session/request_permission",
                "params": {"sessionId": sid, "toolCall": call, "options": ACP_OPTIONS},
            }
        )
        if "DIE_ASKING" in prompt:
            write_told(name, argv, prompt, told, {"resume": resume})
            return None
        while True:
            msg = read_json()
            if msg is None:
                return None
            if msg.get("id") == rid and "method" not in msg:
                outcome = (msg.get("result") or {}).get("outcome") or {}
                told.append(outcome)
                break
            if msg.get("method") == "session/cancel":
                told.append({"cancel": True})
        choice = outcome.get("optionId") if outcome.get("outcome") == "selected" else "cancelled"
        if choice == "always":
            ALWAYS.add(exact)
        word = {"yes": "allowed", "always": "allowed always", "no": "denied"}.get(choice, choice)
        results.append(f"{word}: {what}")
    return "; ".join(results)
