"""Soak: mixed traffic through one arps with several arpc clients, watching memory and descriptors.

Starts an asyncio HTTP backend, one arps and ``--clients`` arpc processes (all
on loopback), then sends ``--requests`` requests (bounded also by
``--max-seconds``) of a mix: small GETs and 64 KiB POSTs on keep-alive
connections, new-connection-per-request GETs, and chunked downloads.  It
records the RSS and open file descriptors of arps and every arpc after a
warm-up and at the end, and prints (and writes with ``--json``) the growth per
100k requests, the failures and the descriptor counts.  Exit status 1 if any
request failed or descriptors leaked.

    python3 tools/soak.py --requests 100000 --clients 4        # full
    python3 tools/soak.py --requests 3000 --clients 2          # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

KEY = "soak-auth-key-0123456789"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- backend --------------------------------------------------------------------------


async def backend_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ")[1]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if path.startswith(b"/chunked"):
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(4):
                    writer.write(b"400\r\n" + b"c" * 1024 + b"\r\n")
                writer.write(b"0\r\n\r\n")
            else:
                payload = b"%d" % len(body) if body else b"x" * 1024
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


# -- clients --------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    close = b"connection: close" in lower
    match = re.search(rb"content-length: *(\d+)", lower)
    if match:
        return status, await reader.readexactly(int(match.group(1))), close
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, body, close
            body += (await reader.readexactly(size + 2))[:-2]
    return status, await reader.read(), True


class Load:
    def __init__(self, port: int, tokens: list[str], total: int, deadline: float) -> None:
        self.port = port
        self.tokens = tokens
        self.total = total
        self.deadline = deadline
        self.sent = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    def take(self) -> bool:
        if self.sent >= self.total or time.monotonic() > self.deadline:
            return False
        self.sent += 1
        return True

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1

    def check(self, status: int, body: bytes, expect: bytes | None, length: int | None) -> None:
        if status != 200:
            self.fail(f"status {status}")
        elif expect is not None and body != expect:
            self.fail("wrong body")
        elif length is not None and len(body) != length:
            self.fail("wrong length")

    async def keep_alive_worker(self, rnd: random.Random) -> None:
        token = rnd.choice(self.tokens)
        reader = writer = None
        while self.take():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                kind = rnd.random()
                if kind < 0.6:
                    writer.write(f"GET /small HTTP/1.1\r\nHost: s\r\nX-ARP-Token: {token}\r\n\r\n".encode())
                    status, body, close = await asyncio.wait_for(read_response(reader), 30)
                    self.check(status, body, None, 1024)
                elif kind < 0.85:
                    data = os.urandom(65536)
                    writer.write(
                        f"POST /up HTTP/1.1\r\nHost: s\r\nX-ARP-Token: {token}\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode()
                        + data
                    )
                    status, body, close = await asyncio.wait_for(read_response(reader), 30)
                    self.check(status, body, b"65536", None)
                else:
                    writer.write(f"GET /chunked HTTP/1.1\r\nHost: s\r\nX-ARP-Token: {token}\r\n\r\n".encode())
                    status, body, close = await asyncio.wait_for(read_response(reader), 30)
                    self.check(status, body, None, 4096)
                if close:
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                self.fail(type(e).__name__)
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def new_connection_worker(self, rnd: random.Random) -> None:
        while self.take():
            token = rnd.choice(self.tokens)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(
                    f"GET /small HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
                    f"X-ARP-Token: {token}\r\n\r\n".encode()
                )
                status, body, _ = await asyncio.wait_for(read_response(reader), 30)
                self.check(status, body, None, 1024)
                writer.close()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                self.fail(type(e).__name__)


# -- processes ------------------------------------------------------------------------


def wait_line(proc: subprocess.Popen, pattern: str, timeout: float = 30) -> re.Match:
    """Wait for ``pattern`` in the log file the process writes."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    text = ""
    while time.monotonic() < deadline:
        with open(proc.log_path, errors="replace") as f:
            text = f.read()
        match = regex.search(text)
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"soak: {pattern!r} not seen:\n" + text[-2000:])


async def run(args: argparse.Namespace) -> dict:
    work = tempfile.mkdtemp(prefix="arp-soak-")
    result: dict | None = None
    backend_port = free_port()
    server = await asyncio.start_server(backend_conn, "127.0.0.1", backend_port)
    procs: list[subprocess.Popen] = []

    def spawn(argv: list[str]) -> subprocess.Popen:
        log_path = os.path.join(work, f"proc{len(procs)}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    try:
        relay = spawn(TWISTD + [
            "arps", "--auth-key", KEY, "--data-dir", os.path.join(work, "arps"),
            "--control-endpoint", "tcp:0:interface=127.0.0.1",
            "--proxy-endpoint", "tcp:0:interface=127.0.0.1",
            "--public-endpoint", "tcp:0:interface=127.0.0.1", "--admin-endpoint", "none",
        ])  # fmt: skip
        ports = {}
        for name in ("control", "proxy", "public"):
            ports[name] = int(wait_line(relay, rf"{name} listening on \S+:(\d+)").group(1))
        clients, tokens = [], []
        for i in range(args.clients):
            proc = spawn(TWISTD + [
                "arpc", "--server-addr", "127.0.0.1", "--control-port", str(ports["control"]),
                "--proxy-port", str(ports["proxy"]), "--auth-key", KEY, "--local-port", str(backend_port),
                "--data-dir", os.path.join(work, f"arpc{i}"), "--no-log-file",
            ])  # fmt: skip
            tokens.append(wait_line(proc, r"Public URL: \S+token=(\w+)").group(1))
            clients.append(proc)
        deadline = time.monotonic() + args.max_seconds
        warm = max(200, args.requests // 10)
        load = Load(ports["public"], tokens, warm, deadline)
        rnd = random.Random(7)
        await asyncio.gather(
            *[load.keep_alive_worker(random.Random(rnd.random())) for _ in range(args.concurrency)]
        )
        await asyncio.sleep(1)
        before = {
            "arps": {"rss_kb": rss_kb(relay.pid), "fds": fds(relay.pid)},
            "arpc": [{"rss_kb": rss_kb(p.pid), "fds": fds(p.pid)} for p in clients],
        }
        load = Load(ports["public"], tokens, args.requests, deadline)
        started = time.monotonic()
        workers = [load.keep_alive_worker(random.Random(rnd.random())) for _ in range(args.concurrency)]
        workers += [
            load.new_connection_worker(random.Random(rnd.random())) for _ in range(args.concurrency // 4)
        ]
        await asyncio.gather(*workers)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2)  # let idle surplus settle
        after = {
            "arps": {"rss_kb": rss_kb(relay.pid), "fds": fds(relay.pid)},
            "arpc": [{"rss_kb": rss_kb(p.pid), "fds": fds(p.pid)} for p in clients],
        }
        per_100k = 100000 / max(load.sent, 1)
        result = {
            "requests": load.sent,
            "failed": load.failed,
            "errors": load.errors,
            "seconds": round(elapsed, 1),
            "req_per_s": round(load.sent / elapsed, 1) if elapsed else 0,
            "clients": args.clients,
            "before": before,
            "after": after,
            "arps_rss_growth_kb_per_100k": round(
                (after["arps"]["rss_kb"] - before["arps"]["rss_kb"]) * per_100k
            ),
            "arpc_rss_growth_kb_per_100k": round(
                max(a["rss_kb"] - b["rss_kb"] for a, b in zip(after["arpc"], before["arpc"]))
                * per_100k
            ),
            # tunnels come and go with the pool, so allow the pool's size of slack per client
            "fd_leak": after["arps"]["fds"] - before["arps"]["fds"] > 5 * args.clients + 10,
        }
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.close()
        await server.wait_closed()
        if result is not None and not result["failed"] and not result["fd_leak"]:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: logs kept in {work}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100000, help="requests to send (100000)")
    parser.add_argument("--clients", type=int, default=4, help="arpc processes (4)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections (32)")
    parser.add_argument("--max-seconds", type=float, default=900, help="hard time bound (900)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 1 if result["failed"] or result["fd_leak"] else 0


if __name__ == "__main__":
    sys.exit(main())
