"""Does arps give memory back after a flood?  (SECURITY.rst, round 3, item 13.)

Starts one arps on loopback, reads its idle RSS, then runs ``--rounds`` rounds of a flood:
``--connections`` connections from one address, each sending ``--head-kib`` KiB of a request
head that never ends and holding it, then all closed at once; after each round it waits up to
``--settle`` seconds for the RSS to come back and prints it.  Connections over the relay's
per-address cap are closed by arps at once (they cost nothing); the ones it keeps hold their
partial heads until the first head's deadline.

    python3 tools/flood_memory.py                       # 5 rounds of 2,000 x 60 KiB
    python3 tools/flood_memory.py --rounds 1 --connections 500
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def start_arps(workdir: str) -> tuple[subprocess.Popen, int]:
    args = ["arps", "--auth-key", "flood-test-key-0123456789", "--data-dir", workdir]
    args += ["--admin-endpoint", "none"]
    for name in ("control", "proxy", "public"):
        args += [f"--{name}-endpoint", "tcp:0:interface=127.0.0.1"]
    log = open(os.path.join(workdir, "arps.log"), "w")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(TWISTD + args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = open(os.path.join(workdir, "arps.log")).read()
        match = re.search(r"public listening on \S+:(\d+)", text)
        if match:
            return proc, int(match.group(1))
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("arps did not start:\n" + open(os.path.join(workdir, "arps.log")).read()[-2000:])


def flood(port: int, connections: int, head_kib: int) -> int:
    """Open ``connections`` connections, send each a partial head, then close them all; how many
    the relay had kept open (not closed at once for being over its cap)."""
    partial = b"GET / HTTP/1.1\r\nHost: relay\r\nX-Pad: " + b"a" * (head_kib * 1024 - 40)
    held = []
    for _ in range(connections):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(partial)
        except OSError:
            s.close()
            continue
        held.append(s)
    time.sleep(1.0)
    kept = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) != b"":
                kept += 1
        except BlockingIOError:
            kept += 1
        except OSError:
            pass
        s.close()
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--head-kib", type=int, default=60)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for RSS to come back")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arp-flood-") as workdir:
        proc, port = start_arps(workdir)
        try:
            time.sleep(25)  # past the trimmer's first look at the idle relay
            idle = rss_mb(proc.pid)
            print(f"idle RSS {idle:.1f} MB")
            for n in range(1, args.rounds + 1):
                kept = flood(port, args.connections, args.head_kib)
                peak = rss_mb(proc.pid)
                deadline = time.monotonic() + args.settle
                now = peak
                while time.monotonic() < deadline:
                    time.sleep(2)
                    now = rss_mb(proc.pid)
                    if now - idle <= 20:
                        break
                waited = args.settle - max(0.0, deadline - time.monotonic())
                print(
                    f"round {n}: {kept} of {args.connections} connections kept; RSS {peak:.1f} MB just "
                    f"after, {now:.1f} MB after {waited:.0f} s ({now - idle:+.1f} MB over idle)"
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
