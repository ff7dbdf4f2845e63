"""Run an agent CLI and record its stdio: ``python tee.py TRANSCRIPT -- COMMAND...``.

Every line arpc writes to the CLI (``"dir": "in"``) and every line the CLI prints (``"out"``) is
appended to TRANSCRIPT as one JSON object (``{"t", "dir", "line"}``, ``line`` parsed when it is
JSON), and passed on unchanged; stderr is the CLI's own.  The CLI runs in our process group, so
arpc's signals reach it directly; we ignore SIGINT ourselves and end with the CLI's exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def main(argv: list[str]) -> int:
    path, command = argv[1], argv[3:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = open(path, "a", buffering=1)
    lock = threading.Lock()
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, restore_signals=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip

    def note(direction: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\n")
        try:
            line = json.loads(text)
        except ValueError:
            line = text
        with lock:
            out.write(json.dumps({"t": round(time.time(), 3), "dir": direction, "line": line}) + "\n")

    def pump_in() -> None:
        assert child.stdin is not None
        try:
            for raw in iter(sys.stdin.buffer.readline, b""):
                note("in", raw)
                child.stdin.write(raw)
                child.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        finally:
            try:
                child.stdin.close()
            except BrokenPipeError:
                pass

    threading.Thread(target=pump_in, daemon=True).start()
    assert child.stdout is not None
    for raw in iter(child.stdout.readline, b""):
        note("out", raw)
        try:
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            break
    status = child.wait()
    out.close()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    os._exit(main(sys.argv))
