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
