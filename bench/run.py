#!/usr/bin/env python3
"""ARP benchmark: ARP beside a direct connection and beside ``ssh -R``, on loopback.

    python3 bench/run.py            # full run, 5-10 minutes
    python3 bench/run.py --smoke    # seconds; what CI runs

It starts a backend (Debian's nginx with its own config in a temporary
directory, or a Python server with a visible note when nginx is missing) and
measures one target at a time, so they never share the CPU:

- ``direct``: wrk/curl straight to the backend, the physical limit here;
- ``arp``: arps + arpc (forward mode, pool size 5) as real twistd processes;
- ``arp-pypy``: the same on PyPy (``--pypy``, default ``.venv-pypy/bin/python``),
  after 10 s of load for the JIT (skipped with a note when there is no such venv);
- ``splice`` and ``splice-pypy``: two plain Twisted splice processes in a row
  (``bench/splice.py``) on each interpreter, the floor of any two-process
  Twisted relay here: what ARP costs beyond it is its per-request HTTP work;
- ``ssh``: ``ssh -R`` through a local sshd with its own config, host key and
  authorized key, with a session (``sleep``) so both ends set TCP_NODELAY.

Then the scale section: N idle clients with their pools on one arps, and
10,000 idle WebSockets through one arps.  Prints a table with each figure's
ratio to direct and writes JSON and markdown to ``bench/results/`` (or
``--out``).  Only loopback addresses are used; every process started here is
stopped by its PID on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import getpass
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TWISTD_RUN = "from twisted.scripts.twistd import run; run()"
TWISTD = [sys.executable, "-c", TWISTD_RUN, "-n", "--pidfile="]
LUA = HERE / "check.lua"
SMALL = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TARGETS = ("direct", "splice", "splice-pypy", "arp", "arp-pypy", "ssh")
#: arp-pypy's interpreter when --pypy is not given: the venv .ci/run makes
PYPY_DEFAULT = REPO / ".venv-pypy" / "bin" / "python"
#: seconds of keep-alive load before arp-pypy's figures (full run): PyPy's JIT compiles the hot path
PYPY_WARMUP_S = 10
NOFILE_WANT = 65536
ARPS_ENDPOINT_EXTRA = ""  # e.g. ":backlog=4096" (--backlog; it wins over arps's own 1,024)
HIDDEN: set[str] = set()  # tools to treat as missing (--without), to exercise the fallbacks


@dataclass(frozen=True)
class Mode:
    """How long and how big each measurement is."""

    name: str
    keepalive_s: int
    single_s: int
    newconn_s: int
    bulk_bytes: int
    bulk_rounds: int
    clients: tuple[int, ...]
    websockets: int
    idle_s: float
    warmup_s: int
    quiet_wait_s: float


FULL = Mode("full", 10, 10, 10, 100 * 1024 * 1024, 3, (100, 1000), 10000, 10.0, 2, 120.0)
SMOKE = Mode("smoke", 1, 1, 1, 8 * 1024 * 1024, 1, (10,), 200, 1.0, 0, 0.0)


def note(msg: str) -> None:
    print(msg, flush=True)


# -- processes -------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(nofile: int) -> Any:
    """preexec_fn: raise the open-file limit, and die with the bench (PR_SET_PDEATHSIG)."""

    def setup() -> None:
        if nofile:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = max(soft, nofile)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if _libc is not None:
            _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


class Child:
    """A process we started, its output going to a log file we can search."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(
        self, pattern: str, timeout: float, since: int = 0, also: tuple[Child, ...] = ()
    ) -> re.Match:
        """The first match of ``pattern`` in the output; fail after ``timeout`` s or if the process
        (or one of ``also``, the processes it depends on) ends."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output(), since)
            if match:
                return match
            for child in (self, *also):
                if child.popen.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} exited ({child.popen.returncode}):\n{child.output()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: {pattern!r} not seen in {timeout}s:\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)


class Processes:
    """Every process the benchmark starts, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self._n = 0

    def start(self, name: str, args: list[str], nofile: int = 0, env: dict | None = None) -> Child:
        self._n += 1
        log = self.workdir / f"{self._n:02d}-{name}.log"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.pop("ARP_AUTH_KEY", None)
        full_env.update(env or {})
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(self.workdir),
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                preexec_fn=_child_setup(nofile),
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if child is None:
            return
        if child.popen.poll() is None:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.popen.wait(5)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child, timeout=5.0)
            except Exception as e:  # keep going: every process must be stopped
                note(f"  could not stop {child.name} ({child.pid}): {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- /proc -----------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[float, float] | None:
    """(RSS in MB, CPU seconds user+system) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError):
        return None
    return rss_kb / 1024.0, (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_stat(pid: int | None) -> dict | None:
    """RSS (MB) and CPU (s) summed over a process and its descendants."""
    if pid is None:
        return None
    rss = cpu = 0.0
    for p in descendants(pid):
        st = proc_stat(p)
        if st:
            rss += st[0]
            cpu += st[1]
    return {"rss_mb": round(rss, 1), "cpu_s": round(cpu, 2)}


SLEEPER = "print('ready', flush=True); import time; time.sleep(60)"
# how arps and arpc run without a TLS endpoint: pyOpenSSL blocked (arp/lean.py)
NO_TLS_TWISTD = "import sys; sys.modules['OpenSSL'] = None; " + TWISTD_RUN


def floor_rss(procs: Processes, workdir: Path) -> dict:
    """RSS of processes that do (almost) nothing: a bare python3, and Twisted's own simplest plugin.

    ``twistd portforward`` (a TCP port forwarder shipped with Twisted, idle here)
    goes through the same start-up as ``twistd arps``: twistd, its plugin scan,
    an endpoint listening; pyOpenSSL is left out as in arps and arpc.
    """
    out = {}
    for name, args, ready in (
        ("python_mb", [sys.executable, "-c", SLEEPER], "ready"),
        (
            "twistd_mb",
            [sys.executable, "-c", NO_TLS_TWISTD, "-n", "--pidfile=", "portforward"]
            + ["-p", "tcp:0:interface=127.0.0.1", "-h", "127.0.0.1", "-d", "9"],
            "Starting factory",
        ),
    ):
        child = procs.start(name.split("_")[0] + "-floor", args)
        try:
            child.wait_for(ready, 30)
            time.sleep(1.0)
            st = tree_stat(child.pid)
            out[name] = st["rss_mb"] if st else None
        finally:
            procs.stop(child)
    return out


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", -1))
    return -1


def busy_cpus(seconds: float = 1.0) -> float:
    """How many CPUs' worth of time *other* processes used over ``seconds``.

    The whole machine's busy time (from /proc/stat) minus that of the benchmark and
    its children: on a shared machine this tells whether the figures are disturbed."""

    def machine() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    def ours() -> float:
        return sum((proc_stat(p) or (0.0, 0.0))[1] for p in descendants(os.getpid()))

    try:
        total0, idle0 = machine()
        own0 = ours()
        time.sleep(seconds)
        total1, idle1 = machine()
        own1 = ours()
    except OSError:
        return 0.0
    if total1 == total0:
        return 0.0
    ticks = total1 - total0  # summed over all CPUs, in clock ticks
    busy = (ticks - (idle1 - idle0)) / CLK_TCK
    wall = ticks / CLK_TCK / (os.cpu_count() or 1)
    return round(max(0.0, busy - (own1 - own0)) / wall, 2)


def wait_quiet(limit: float) -> float:
    """Wait up to ``limit`` seconds for other processes to leave the CPUs alone; return their last load."""
    deadline = time.monotonic() + limit
    load = busy_cpus()
    while load > 0.2 and time.monotonic() < deadline:
        load = busy_cpus(2.0)
    return load


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# -- load generators -------------------------------------------------------------------------------------


def run_wrk(url: str, threads: int, conns: int, seconds: int, headers: tuple[str, ...] = ()) -> dict:
    """Run wrk with the checking Lua script; return req/s, latency percentiles (us) and failures."""
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(LUA)]
    for h in headers:
        args += ["-H", h]
    args.append(url)
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        env={**os.environ, "EXPECT_SIZE": str(SMALL)},
    )
    match = re.search(r"^BENCH (.*)$", proc.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    socket_errors = int(f["connect"] + f["read"] + f["write"] + f["timeout"])
    return {
        "rps": round(f["requests"] / (f["duration_us"] / 1e6), 1),
        "requests": int(f["requests"]),
        "p50_us": int(f["p50"]),
        "p90_us": int(f["p90"]),
        "p99_us": int(f["p99"]),
        "mean_us": f["mean"],
        "bad_status": int(f["bad_status"]),
        "bad_size": int(f["bad_size"]),
        "socket_errors": socket_errors,
        "ok": f["bad_status"] == 0 and f["bad_size"] == 0 and socket_errors == 0 and f["requests"] > 0,
    }


def python_load(url: str, conns: int, seconds: float, close: bool) -> dict:
    """A much slower stand-in for wrk, so a machine without wrk still checks every target works."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    lat: list[float] = []
    bad = [0, 0, 0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        c = None
        while time.monotonic() < deadline:
            try:
                if c is None:
                    c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                t0 = time.perf_counter()
                c.request("GET", path, headers={"Connection": "close"} if close else {})
                r = c.getresponse()
                body = r.read()
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    bad[0] += r.status != 200
                    bad[1] += len(body) != SMALL
                if close or r.will_close:
                    c.close()
                    c = None
            except OSError:
                with lock:
                    bad[2] += 1
                c = None

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    elapsed = time.monotonic() - start
    lat.sort()

    def pct(q: float) -> int:
        return int(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6) if lat else 0

    return {
        "rps": round(len(lat) / elapsed, 1),
        "requests": len(lat),
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "mean_us": round(statistics.mean(lat) * 1e6, 1) if lat else 0,
        "bad_status": bad[0],
        "bad_size": bad[1],
        "socket_errors": bad[2],
        "ok": not any(bad) and bool(lat),
        "tool": "python (wrk missing)",
    }


def curl(args: list[str], timeout: float = 120.0, keep_body: bool = True) -> dict:
    """One curl request; the body is kept (small answers) or thrown away (bulk downloads)."""
    if not tool("curl"):
        return python_curl(args, timeout, keep_body)
    fmt = "%{http_code} %{size_download} %{size_upload} %{time_total}"
    with tempfile.NamedTemporaryFile(prefix="arp-bench-curl-") as body_file:
        target = body_file.name if keep_body else "/dev/null"
        proc = subprocess.run(
            ["curl", "-sS", "-o", target, "-w", fmt, *args], capture_output=True, timeout=timeout
        )
        body = Path(body_file.name).read_bytes() if keep_body else b""
    parts = proc.stdout.decode(errors="replace").split()
    code, down, up, total = parts if len(parts) == 4 else ("0", "0", "0", "0")
    return {
        "status": int(code),
        "down": int(float(down)),
        "up": int(float(up)),
        "seconds": float(total),
        "body": body,
        "rc": proc.returncode,
        "stderr": proc.stderr.decode(errors="replace")[-500:],
    }


def python_curl(args: list[str], timeout: float, keep_body: bool) -> dict:
    """The few curl invocations used here (GET, or PUT with ``-T file``), for machines without curl."""
    import http.client
    from urllib.parse import urlsplit

    url = args[-1]
    upload = args[args.index("-T") + 1] if "-T" in args else None
    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    t0 = time.perf_counter()
    body = bytearray()
    down = up = 0
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        if upload:
            size = os.path.getsize(upload)
            with open(upload, "rb") as f:
                conn.request("PUT", path, body=f, headers={"Content-Length": str(size)})
            up = size
        else:
            conn.request("GET", path)
        r = conn.getresponse()
        while chunk := r.read(1 << 20):
            down += len(chunk)
            if keep_body:
                body += chunk
        status = r.status
        conn.close()
        rc, err = 0, ""
    except OSError as e:
        status, rc, err = 0, 1, str(e)
    return {
        "status": status,
        "down": down,
        "up": up,
        "seconds": time.perf_counter() - t0,
        "body": bytes(body),
        "rc": rc,
        "stderr": err,
    }


def bulk(url_down: str, url_up: str, upload_file: Path, size: int, rounds: int) -> dict:
    """Download and upload ``size`` bytes ``rounds`` times each; the median MB/s and every check."""
    downs, ups, failures = [], [], []
    for _ in range(rounds):
        r = curl(["--max-time", "100", url_down], timeout=120, keep_body=False)
        n = r["down"]
        if r["status"] == 200 and n == size and r["rc"] == 0:
            downs.append(size / r["seconds"] / 1e6)
        else:
            failures.append(f"download: status {r['status']}, {n} bytes, {r['stderr']}")
        r = curl(["--max-time", "100", "-T", str(upload_file), "-H", "Expect:", url_up], timeout=120)
        got = r["body"].strip()
        if r["status"] == 200 and got == str(size).encode() and r["rc"] == 0:
            ups.append(size / r["seconds"] / 1e6)
        else:
            failures.append(f"upload: status {r['status']}, sink got {got[:60]!r}, {r['stderr']}")
    return {
        "download_mbps": round(statistics.median(downs), 1) if downs else None,
        "upload_mbps": round(statistics.median(ups), 1) if ups else None,
        "download_runs": [round(x, 1) for x in downs],
        "upload_runs": [round(x, 1) for x in ups],
        "failures": failures,
        "ok": not failures,
    }


# -- the backend -----------------------------------------------------------------------------------------


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location / {{ }}
        # uploads: streamed (not buffered to disk) to a sink that reads the whole body first
        location = /upload {{
            client_max_body_size 0;
            client_body_buffer_size 1m;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://127.0.0.1:{sink};
        }}
    }}
}}
"""


class Backend:
    """nginx (or the Python fallback) serving /1k and /100m, and taking uploads at /upload."""

    def __init__(self, procs: Processes, workdir: Path, bulk_bytes: int) -> None:
        self.procs = procs
        self.dir = workdir / "backend"
        www = self.dir / "www"
        www.mkdir(parents=True)
        (www / "1k").write_bytes(os.urandom(SMALL))
        self.big_name = "100m" if bulk_bytes == 100 * 1024 * 1024 else f"{bulk_bytes // 1024}k"
        with open(www / self.big_name, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(bulk_bytes // len(block)):
                f.write(block)
            f.write(block[: bulk_bytes % len(block)])
        self.upload_file = www / self.big_name
        self.kind = ""
        self.version = ""
        self.port = 0
        self.note = ""
        self.nginx: Child | None = None
        self.sink: Child | None = None

    def start(self) -> None:
        py = [sys.executable, str(HERE / "backend.py")]
        nginx = tool("nginx")
        if nginx:
            self.sink = self.procs.start("sink", [*py, "--root", str(self.dir / "www")], nofile=NOFILE_WANT)
            sink_port = int(self.sink.wait_for(r"LISTEN (\d+)", 15).group(1))
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, sink=sink_port))
            self.nginx = self.procs.start(
                "nginx",
                [nginx, "-p", str(self.dir), "-e", str(self.dir / "nginx-error.log"), "-c", str(conf)],
            )
            wait_port(self.port)
            v = subprocess.run([nginx, "-v"], capture_output=True, text=True)
            self.version = (v.stderr or v.stdout).strip().split("/")[-1]
            self.kind = "nginx"
        else:
            self.note = "NOTE: nginx not found; the backend is a Python server, so figures are lower"
            note(self.note)
            self.sink = self.procs.start(
                "backend", [*py, "--root", str(self.dir / "www")], nofile=NOFILE_WANT
            )
            self.port = int(self.sink.wait_for(r"LISTEN (\d+)", 15).group(1))
            self.kind = "python"
        # check both files once
        for name, size in (("1k", SMALL), (self.big_name, self.upload_file.stat().st_size)):
            r = curl([f"http://127.0.0.1:{self.port}/{name}"], keep_body=False)
            if r["status"] != 200 or r["down"] != size:
                raise RuntimeError(f"backend answers /{name} with {r['status']}, {r['down']} bytes")

    def stop(self) -> None:
        self.procs.stop(self.nginx, sig=signal.SIGQUIT)
        self.procs.stop(self.sink)


# -- targets ---------------------------------------------------------------------------------------------


class Target:
    """A way to reach the backend: where to send requests and which processes do the relaying."""

    name = ""
    server_label = ""
    client_label = ""

    def __init__(self, procs: Processes, backend: Backend) -> None:
        self.procs = procs
        self.backend = backend
        self.port = backend.port
        self.suffix = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}{self.suffix}"

    def start(self) -> None:
        pass

    def server_pid(self) -> int | None:
        return None

    def client_pid(self) -> int | None:
        return None

    def stats(self) -> dict:
        return {"server": tree_stat(self.server_pid()), "client": tree_stat(self.client_pid())}

    def stop(self) -> None:
        pass


class Direct(Target):
    name = "direct"


def _arps_has_option(name: str) -> bool:
    from arp.server.tap import Options

    return any(p[0] == name for p in Options.optParameters)


def clients_argv(ports: dict, backend_port: int, key: str, count: int) -> list[str]:
    """argv of bench/clients.py: ``count`` clients of relay ``ports`` serving ``backend_port``."""
    return [
        sys.executable,
        str(HERE / "clients.py"),
        "--control-port",
        str(ports["control"]),
        "--proxy-port",
        str(ports["proxy"]),
        "--backend-port",
        str(backend_port),
        "--auth-key",
        key,
        "--count",
        str(count),
    ]


def start_arps(
    procs: Processes,
    workdir: Path,
    auth_key: str,
    *extra: str,
    nofile: int = 0,
    env: dict | None = None,
    python: str | None = None,
    fixed: dict | None = None,
    data: Path | None = None,
) -> tuple:
    """Start arps on loopback; (child, ports).  ``fixed`` ports and ``data`` dir: a restart of
    the same relay (the child remembers its data dir as ``.data``)."""
    args = [python or TWISTD[0], *TWISTD[1:], "arps"]
    # endpoint strings, as the README's recipes give them (an interface binding, the TLS recipe):
    # the listen backlog measured is the one users get, not the --*-port options' own
    for name in ("control", "proxy", "public"):
        port = (fixed or {}).get(name, 0)
        args += [f"--{name}-endpoint", f"tcp:{port}:interface=127.0.0.1" + ARPS_ENDPOINT_EXTRA]
    if _arps_has_option("admin-endpoint"):
        args += ["--admin-endpoint", "tcp:0:interface=127.0.0.1"]  # never a fixed port
    data = data or Path(tempfile.mkdtemp(prefix="arps-", dir=workdir))
    args += ["--auth-key", auth_key, "--data-dir", str(data), "--pool-size", "5", *extra]
    arps = procs.start("arps", args, nofile=nofile, env=env)
    arps.data = data
    ports = {}
    for name in ("control", "proxy", "public"):
        ports[name] = int(arps.wait_for(rf"{name} listening on \S+:(\d+)", 30).group(1))
    time.sleep(0.2)
    if arps.popen.poll() is not None:
        raise RuntimeError(f"arps exited ({arps.popen.returncode}):\n{arps.output()[-3000:]}")
    return arps, ports


def start_arpc(
    procs: Processes,
    workdir: Path,
    auth_key: str,
    ports: dict,
    local_port: int,
    client_id: str,
    nofile: int = 0,
    env: dict | None = None,
    python: str | None = None,
) -> Child:
    data = Path(tempfile.mkdtemp(prefix="arpc-", dir=workdir))
    args = [
        python or TWISTD[0],
        *TWISTD[1:],
        "arpc",
        "--server-addr",
        "127.0.0.1",
        "--control-port",
        str(ports["control"]),
        "--proxy-port",
        str(ports["proxy"]),
        "--auth-key",
        auth_key,
        "--data-dir",
        str(data),
        "--no-log-file",
        "--local-port",
        str(local_port),
        "--client-id",
        client_id,
    ]
    arpc = procs.start("arpc", args, nofile=nofile, env=env)
    arpc.wait_for(r"Public URL: (\S+)", 30, also=tuple(c for c in procs.children if c.name == "arps"))
    return arpc


class Arp(Target):
    name = "arp"
    server_label = "arps"
    client_label = "arpc"
    python: str | None = None  # the interpreter running arps and arpc (None: this one)

    def __init__(self, procs: Processes, backend: Backend, workdir: Path) -> None:
        super().__init__(procs, backend)
        self.workdir = workdir
        self.arps: Child | None = None
        self.arpc: Child | None = None

    def start(self) -> None:
        key = "bench-" + os.urandom(12).hex()
        client_id = "bench" + os.urandom(14).hex()
        self.arps, ports = start_arps(self.procs, self.workdir, key, python=self.python)
        self.arpc = start_arpc(
            self.procs, self.workdir, key, ports, self.backend.port, client_id, python=self.python
        )
        self.port = ports["public"]
        self.suffix = f"?token={client_id}"
        # the pool is warm when arps has 5 idle tunnels; give the handshakes a moment
        time.sleep(1.0)

    def server_pid(self) -> int | None:
        return self.arps.pid if self.arps else None

    def client_pid(self) -> int | None:
        return self.arpc.pid if self.arpc else None

    def stop(self) -> None:
        self.procs.stop(self.arpc)
        self.procs.stop(self.arps)


class ArpPyPy(Arp):
    """arps and arpc as in ``arp``, on PyPy, after a warm-up for the JIT (recorded with the figures)."""

    name = "arp-pypy"
    warmup_s = PYPY_WARMUP_S

    def __init__(self, procs: Processes, backend: Backend, workdir: Path, python: str) -> None:
        super().__init__(procs, backend, workdir)
        self.python = python

    def describe(self) -> str:
        """The interpreter's name and version, e.g. ``PyPy 7.3.11 (Python 3.9.16)``."""
        code = (
            "import platform, sys; v = sys.pypy_version_info; "
            "print(f'PyPy {v.major}.{v.minor}.{v.micro} (Python {platform.python_version()})')"
        )
        try:
            out = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return "PyPy"
        return out.stdout.strip() or "PyPy"

    @staticmethod
    def available(python: str) -> str:
        """Why PyPy with ARP's dependencies cannot run from ``python`` ("" if it can)."""
        if not shutil.which(python):
            return f"no PyPy interpreter at {python} (make the venv as .ci/run does, or give --pypy)"
        try:
            probe = subprocess.run(
                [python, "-c", "import platform, twisted, arp; print(platform.python_implementation())"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{python} does not run: {e}"
        if probe.returncode != 0:
            return f"{python} cannot import twisted and arp: {probe.stderr.strip()[-300:]}"
        if probe.stdout.strip() != "PyPy":
            return f"{python} is {probe.stdout.strip()}, not PyPy"
        return ""


SSHD_CONF = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
LogLevel ERROR
"""


class Splice(Target):
    """Two plain Twisted splice processes in a row (bench/splice.py): the floor of ARP's stack."""

    name = "splice"
    server_label = "splice A"
    client_label = "splice B"

    def __init__(self, procs: Processes, backend: Backend) -> None:
        super().__init__(procs, backend)
        self.a: Child | None = None
        self.b: Child | None = None

    python = sys.executable

    def start(self) -> None:
        script = str(Path(__file__).with_name("splice.py"))
        self.b = self.procs.start("splice-b", [self.python, script, "0", str(self.backend.port)])
        b_port = int(self.b.wait_for(r"listening on \S+:(\d+)", 30).group(1))
        self.a = self.procs.start("splice-a", [self.python, script, "0", str(b_port)])
        self.port = int(self.a.wait_for(r"listening on \S+:(\d+)", 30).group(1))

    def server_pid(self) -> int | None:
        return self.a.pid if self.a else None

    def client_pid(self) -> int | None:
        return self.b.pid if self.b else None

    def stop(self) -> None:
        self.procs.stop(self.a)
        self.procs.stop(self.b)


class SplicePyPy(Splice):
    """The splice floor on PyPy, after the same warm-up as ``arp-pypy``."""

    name = "splice-pypy"
    warmup_s = PYPY_WARMUP_S

    def __init__(self, procs: Processes, backend: Backend, python: str) -> None:
        super().__init__(procs, backend)
        self.python = python

    describe = ArpPyPy.describe


class Ssh(Target):
    name = "ssh"
    server_label = "sshd"
    client_label = "ssh"

    def __init__(self, procs: Processes, backend: Backend, workdir: Path) -> None:
        super().__init__(procs, backend)
        self.dir = workdir / "ssh"
        self.sshd: Child | None = None
        self.ssh: Child | None = None

    @staticmethod
    def available() -> str:
        missing = [t for t in ("sshd", "ssh", "ssh-keygen") if not tool(t)]
        return "" if not missing else "not installed: " + ", ".join(missing)

    def start(self) -> None:
        self.dir.mkdir()
        os.chmod(self.dir, 0o700)
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)],
                check=True,
                timeout=30,
            )
        shutil.copy(self.dir / "client_ed25519.pub", self.dir / "authorized_keys")
        sshd_port = free_port()
        (self.dir / "sshd_config").write_text(SSHD_CONF.format(port=sshd_port, dir=self.dir))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.sshd = self.procs.start("sshd", [tool("sshd"), "-D", "-e", "-f", str(self.dir / "sshd_config")])
        wait_port(sshd_port)
        self.port = free_port()
        self.ssh = self.procs.start(
            "ssh",
            [
                tool("ssh"),
                "-F",
                "/dev/null",
                "-i",
                str(self.dir / "client_ed25519"),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-p",
                str(sshd_port),
                "-R",
                f"127.0.0.1:{self.port}:127.0.0.1:{self.backend.port}",
                f"{getpass.getuser()}@127.0.0.1",
                "sleep 3600",  # a session: ssh and sshd set TCP_NODELAY only for one
            ],
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                r = curl(["--max-time", "2", self.url("1k")], timeout=5)
                if r["status"] == 200:
                    break
            except (subprocess.TimeoutExpired, ValueError):
                pass
            if self.ssh.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"ssh -R did not come up:\n{self.ssh.output()[-2000:]}\n{self.sshd.output()[-2000:]}"
                )
            time.sleep(0.1)

    def server_pid(self) -> int | None:
        return self.sshd.pid if self.sshd else None

    def client_pid(self) -> int | None:
        return self.ssh.pid if self.ssh else None

    def stop(self) -> None:
        self.procs.stop(self.ssh)
        self.procs.stop(self.sshd)


def tool(name: str) -> str | None:
    """The path of a program (also looked for in /usr/sbin), or None if missing or hidden (--without)."""
    if name in HIDDEN or name.rstrip("d") in HIDDEN:
        return None
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


def measure(target: Target, mode: Mode, backend: Backend, profile_dir: Path | None) -> dict:
    """Every per-target figure, with the relaying processes' memory and CPU around them."""
    have_wrk = bool(tool("wrk"))

    def load(path: str, threads: int, conns: int, seconds: int, close: bool = False) -> dict:
        if have_wrk:
            return run_wrk(target.url(path), threads, conns, seconds, ("Connection: close",) if close else ())
        return python_load(target.url(path), min(conns, 8), seconds, close)

    out: dict[str, Any] = {"name": target.name, "background_cpus": wait_quiet(mode.quiet_wait_s)}
    if out["background_cpus"] > 0.2:
        note(f"   NOTE: {out['background_cpus']:.2f} CPUs busy with other work before this target: noisy")
    overflows = listen_overflows()
    out["idle"] = target.stats()
    before = out["idle"]
    started = time.monotonic()
    out["warmup_s"] = max(mode.warmup_s, getattr(target, "warmup_s", 0) if mode.name == "full" else 0)
    if out["warmup_s"]:
        load("1k", 2, 50, out["warmup_s"])
    profilers = []
    if profile_dir is not None and target.server_pid():
        for label, pid in (("server", target.server_pid()), ("client", target.client_pid())):
            out_file = profile_dir / f"{target.name}-{label}.txt"
            profilers.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pid),
                        "-d",
                        str(mode.keepalive_s),
                        "-r",
                        "200",
                        "--format",
                        "raw",
                        "-o",
                        str(out_file),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        time.sleep(0.5)
    ka_before = target.stats()
    out["keepalive"] = load("1k", 2, 50, mode.keepalive_s)
    ka_after = target.stats()
    for p in profilers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    out["keepalive"]["cpu_us_per_request"] = _cpu_per_request(
        ka_before, ka_after, out["keepalive"]["requests"]
    )
    out["single"] = load("1k", 1, 1, mode.single_s)
    out["newconn"] = load("1k", 2, 20, mode.newconn_s, close=True)
    out["bulk"] = bulk(
        target.url(backend.big_name),
        target.url("upload"),
        backend.upload_file,
        backend.upload_file.stat().st_size,
        mode.bulk_rounds,
    )
    out["seconds"] = round(time.monotonic() - started, 1)
    out["listen_overflows"] = listen_overflows() - overflows
    after = target.stats()
    out["after"] = after
    out["cpu_s"] = {
        side: round(after[side]["cpu_s"] - before[side]["cpu_s"], 2) if after[side] and before[side] else None
        for side in ("server", "client")
    }
    out["ok"] = all(out[k]["ok"] for k in ("keepalive", "single", "newconn", "bulk"))
    return out


def _cpu_per_request(before: dict, after: dict, requests: int) -> dict:
    if not requests:
        return {}
    return {
        side: round((after[side]["cpu_s"] - before[side]["cpu_s"]) / requests * 1e6, 1)
        for side in ("server", "client")
        if after[side] and before[side]
    }


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive shares of functions in a py-spy ``--format raw`` (collapsed stacks) file."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    frame_re = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";"):
            m = frame_re.match(frame.strip())
            if m:
                func, file = m.groups()
                names.append(f"{func} ({file.split('site-packages/')[-1].replace(str(REPO) + '/', '')})")
        if not names:
            continue
        self_n[names[-1]] = self_n.get(names[-1], 0) + n
        for name in set(names):
            incl_n[name] = incl_n.get(name, 0) + n
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples", "  self %   function"]
    for name, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:6.1f}   {name}")
    out.append("  incl %   function")
    for name, n in sorted(incl_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:6.1f}   {name}")
    return "\n".join(out)


# -- scale -----------------------------------------------------------------------------------------------


def scale_clients(procs: Processes, workdir: Path, backend: Backend, n: int, idle_s: float) -> dict:
    """N registered clients with full pools, idle, on one arps: its RSS and CPU."""
    key = "bench-" + os.urandom(12).hex()
    nofile = max(NOFILE_WANT, n * 8 + 1000)
    # every HTTP client has a port of its own: a range wide enough for all of them
    wide = ("--client-ports", f"30000-{30000 + n + 99}") if _arps_has_option("client-ports") else ()
    arps, ports = start_arps(procs, workdir, key, *wide, nofile=nofile)
    loader = None
    try:
        time.sleep(0.3)
        overflows = listen_overflows()
        empty = tree_stat(arps.pid)
        t0 = time.monotonic()
        loader = procs.start(
            f"clients{n}",
            clients_argv(ports, backend.port, key, n),
            nofile=nofile,
        )
        ids = loader.wait_for(r"IDS (.*)", 30, also=(arps,)).group(1).split()
        loader.wait_for(r"READY (\d+) (\d+)", 60 + n * 0.1, also=(arps,))
        ready_s = time.monotonic() - t0
        time.sleep(1.0)
        ready = tree_stat(arps.pid)
        time.sleep(idle_s)
        idle = tree_stat(arps.pid)
        # one request through the first and the last client proves routing still works
        checks = []
        for cid in (ids[0], ids[-1]):
            r = curl(["--max-time", "10", f"http://127.0.0.1:{ports['public']}/1k?token={cid}"], timeout=15)
            checks.append(r["status"] == 200 and len(r["body"]) == SMALL)
        back = relay_restart(procs, workdir, key, arps, ports, loader, ids, n, wide, nofile)
        arps = back.pop("arps")
        return {
            "clients": n,
            "tunnels": n * 5,
            "ready_s": round(ready_s, 1),
            "arps_rss_empty_mb": empty["rss_mb"],
            "arps_rss_mb": idle["rss_mb"],
            "arps_kb_per_client": round((idle["rss_mb"] - empty["rss_mb"]) * 1024 / n, 1),
            "arps_cpu_registering_s": round(ready["cpu_s"] - empty["cpu_s"], 2),
            "arps_cpu_idle_pct": round((idle["cpu_s"] - ready["cpu_s"]) / idle_s * 100, 2),
            "arps_fds": open_fds(arps.pid),
            "loader_rss_mb": (tree_stat(loader.pid) or {}).get("rss_mb"),
            "listen_overflows": listen_overflows() - overflows,
            "requests_ok": all(checks),
            **back,
            "ok": all(checks) and back["restart_ok"],
        }
    finally:
        procs.stop(loader)
        procs.stop(arps)


def _error_text(e: Exception) -> str:
    """An error for the results: its first line (what failed) and the end of the output."""
    text = str(e)
    return text if len(text) <= 1300 else text[:300] + " … " + text[-1000:]


def relay_restart(
    procs: Processes,
    workdir: Path,
    key: str,
    arps: Child,
    ports: dict,
    loader: Child,
    ids: list[str],
    n: int,
    extra: tuple,
    nofile: int,
) -> dict:
    """arps killed with SIGKILL under ``n`` registered clients, started again on the same ports
    and data dir: seconds until every client is registered again (counted from when the new
    relay listens), the listen-queue overflows meanwhile, and one request through the last one."""
    since = len(loader.output())
    procs.stop(arps, sig=signal.SIGKILL)  # gone without a word, as in a crash
    loader.wait_for(rf"PROGRESS (?!{n} )\d+ ", 10, since=since)  # the clients saw it go
    overflows = listen_overflows()
    since = len(loader.output())
    t0 = time.monotonic()
    arps, _ = start_arps(procs, workdir, key, *extra, nofile=nofile, fixed=ports, data=arps.data)
    listening_s = time.monotonic() - t0
    loader.wait_for(rf"PROGRESS {n} ", 60 + n * 0.05, since=since, also=(arps,))
    back_s = time.monotonic() - t0 - listening_s
    overflowed = listen_overflows() - overflows
    r = curl(["--max-time", "10", f"http://127.0.0.1:{ports['public']}/1k?token={ids[-1]}"], timeout=15)
    return {
        "arps": arps,
        "restart_listening_s": round(listening_s, 2),
        "restart_all_back_s": round(back_s, 2),
        "restart_listen_overflows": overflowed,
        "restart_ok": r["status"] == 200 and len(r["body"]) == SMALL,
    }


def scale_websockets(procs: Processes, workdir: Path, count: int, hold_s: float) -> dict:
    """``count`` idle WebSockets through one arps and one arpc: all held, RSS per connection."""
    nofile = max(NOFILE_WANT, count * 2 + 2000)
    limit_note = ""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < count * 2 + 100:
        # each WebSocket is two sockets in arps (public + tunnel) and two in arpc (tunnel + service)
        limit_note = (
            f"the open-file hard limit is {hard} and cannot be raised here, so one arps can hold about "
            f"{(hard - 100) // 2:,} WebSockets (2 sockets each), not {count:,}"
        )
        note("  NOTE: " + limit_note)
    server = procs.start("ws-server", [sys.executable, str(HERE / "ws.py"), "serve"], nofile=nofile)
    arps = arpc = holder = None
    try:
        ws_port = int(server.wait_for(r"LISTEN (\d+)", 15).group(1))
        key = "bench-" + os.urandom(12).hex()
        client_id = "benchws" + os.urandom(14).hex()
        # every WebSocket comes from 127.0.0.1: lift arps's per-address cap for this one-source test
        one_source = (
            ("--max-connections-per-address", str(count + 1000))
            if _arps_has_option("max-connections-per-address")
            else ()
        )
        arps, ports = start_arps(procs, workdir, key, *one_source, nofile=nofile)
        arpc = start_arpc(procs, workdir, key, ports, ws_port, client_id, nofile=nofile)
        time.sleep(1.0)
        s0, c0 = tree_stat(arps.pid), tree_stat(arpc.pid)
        overflows = listen_overflows()
        holder = procs.start(
            "ws-hold",
            [
                sys.executable,
                str(HERE / "ws.py"),
                "hold",
                "--port",
                str(ports["public"]),
                "--path",
                f"/ws?token={client_id}",
                "--count",
                str(count),
                "--hold",
                str(hold_s),
            ],
            nofile=nofile,
        )
        m = holder.wait_for(r"OPEN (\d+) (\d+) ([\d.]+)", 120 + count * 0.02, also=(arps, arpc, server))
        time.sleep(min(1.0, hold_s / 2))
        s1, c1 = tree_stat(arps.pid), tree_stat(arpc.pid)
        fds = {"arps": open_fds(arps.pid), "arpc": open_fds(arpc.pid)}
        result = json.loads(holder.wait_for(r"RESULT (.*)", 120 + count * 0.02).group(1))
        opened = int(m.group(1))
        per = max(opened, 1)
        return {
            "websockets": count,
            **result,
            "arps_rss_before_mb": s0["rss_mb"],
            "arps_rss_held_mb": s1["rss_mb"],
            "arps_kb_per_ws": round((s1["rss_mb"] - s0["rss_mb"]) * 1024 / per, 1),
            "arpc_rss_before_mb": c0["rss_mb"],
            "arpc_rss_held_mb": c1["rss_mb"],
            "arpc_kb_per_ws": round((c1["rss_mb"] - c0["rss_mb"]) * 1024 / per, 1),
            "arps_cpu_s": round(s1["cpu_s"] - s0["cpu_s"], 2),
            "fds_held": fds,
            "listen_overflows": listen_overflows() - overflows,
            "note": limit_note,
            "ok": result["opened"] == count and result["echo_ok"] == count,
        }
    finally:
        procs.stop(holder)
        procs.stop(arpc)
        procs.stop(arps)
        procs.stop(server)


# -- report ----------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass

    def version(args: list[str]) -> str:
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0].split(" Copyright")[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "missing"

    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "os": _os_name(),
        "wrk": version(["wrk", "-v"]),
        "ssh": version(["ssh", "-V"]),
        "curl": version(["curl", "--version"]),
        "arp_revision": rev,
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            return next(
                line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY_NAME")
            )
    except (OSError, StopIteration):
        return platform.system()


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) or digits:
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def figure_rows(results: dict) -> list[tuple[str, list[str]]]:
    """Rows of the main table: figure, then per target value and ratio to direct."""
    targets = [t for t in TARGETS if t in results["targets"]]
    direct = results["targets"].get("direct")

    def get(t: str, path: str) -> Any:
        v: Any = results["targets"][t]
        for part in path.split("."):
            if not isinstance(v, dict) or part not in v:
                return None
            v = v[part]
        return v

    rows = []
    specs = [
        ("keep-alive req/s (wrk -t2 -c50)", "keepalive.rps", 0, "higher"),
        ("keep-alive p50, µs", "keepalive.p50_us", 0, "lower"),
        ("keep-alive p99, µs", "keepalive.p99_us", 0, "lower"),
        ("one connection p50, µs (wrk -t1 -c1)", "single.p50_us", 0, "lower"),
        ("one connection p99, µs", "single.p99_us", 0, "lower"),
        ("added p50 over direct, µs", "added_p50_us", 0, "none"),
        ("new connection per request, req/s (-c20)", "newconn.rps", 0, "higher"),
        ("download, MB/s", "bulk.download_mbps", 0, "higher"),
        ("upload, MB/s", "bulk.upload_mbps", 0, "higher"),
        ("server RSS idle, MB (arps / sshd)", "idle.server.rss_mb", 1, "none"),
        ("server RSS after load, MB", "after.server.rss_mb", 1, "none"),
        ("client RSS idle, MB (arpc / ssh)", "idle.client.rss_mb", 1, "none"),
        ("client RSS after load, MB", "after.client.rss_mb", 1, "none"),
        ("server CPU, s (whole target run)", "cpu_s.server", 1, "none"),
        ("client CPU, s", "cpu_s.client", 1, "none"),
        ("server CPU per keep-alive request, µs", "keepalive.cpu_us_per_request.server", 1, "none"),
        ("client CPU per keep-alive request, µs", "keepalive.cpu_us_per_request.client", 1, "none"),
    ]
    for label, path, digits, better in specs:
        cells = []
        base = get("direct", path) if direct else None
        for t in targets:
            v = get(t, path)
            cells.append(_fmt(v, digits))
            if t != "direct":
                if better != "none" and v is not None and base:
                    cells.append(f"{v / base:.2f}×")
                else:
                    cells.append("")
        rows.append((label, cells))
    cells = []
    for t in targets:
        tr = results["targets"][t]
        bad = sum(
            tr[k].get(f, 0)
            for k in ("keepalive", "single", "newconn")
            for f in ("bad_status", "bad_size", "socket_errors")
        )
        bad += len(tr["bulk"]["failures"])
        total = sum(tr[k]["requests"] for k in ("keepalive", "single", "newconn"))
        cells.append(f"{total:,} ok" if bad == 0 else f"{bad:,} FAILED of {total:,}")
        if t != "direct":
            cells.append("")
    rows.append(("responses checked (status 200 + size)", cells))
    return rows


def goals(results: dict) -> list[tuple[str, str, bool | None]]:
    """The issue's targets for ARP, with the measured value and whether it is met."""
    t = results["targets"]
    if "arp" not in t or "direct" not in t:
        return []
    a, d = t["arp"], t["direct"]

    def ratio(path: str) -> float | None:
        x, y = a, d
        for p in path.split("."):
            x, y = x.get(p) if x else None, y.get(p) if y else None
        return x / y if x and y else None

    out = []

    def add(label: str, value: float | None, ok: bool | None, fmt: str) -> None:
        out.append((label, "—" if value is None else fmt.format(value), ok))

    r = ratio("keepalive.rps")
    add("keep-alive ≥ 0.35× direct", r, r is not None and r >= 0.35, "{:.3f}×")
    r = ratio("newconn.rps")
    add("new connection ≥ 0.25× direct", r, r is not None and r >= 0.25, "{:.3f}×")
    v = a.get("added_p50_us")
    add("added p50 ≤ 60 µs", v, v is not None and v <= 60, "{:+.0f} µs")
    r = ratio("bulk.download_mbps")
    add("download ≥ 0.25× direct", r, r is not None and r >= 0.25, "{:.3f}×")
    r = ratio("bulk.upload_mbps")
    add("upload ≥ 0.25× direct", r, r is not None and r >= 0.25, "{:.3f}×")
    v = a["idle"]["server"]["rss_mb"]
    add("arps RSS idle ≤ 35 MB", v, v <= 35, "{:.1f} MB")
    v = a["after"]["server"]["rss_mb"]
    add("arps RSS after load ≤ 60 MB", v, v <= 60, "{:.1f} MB")
    v = a["idle"]["client"]["rss_mb"]
    add("arpc RSS idle ≤ 35 MB", v, v <= 35, "{:.1f} MB")
    for s in results.get("scale", {}).get("clients", []):
        if s.get("clients") == 1000:
            v = s.get("arps_rss_mb")
            add("1,000 clients × 5 tunnels ≤ 150 MB arps RSS", v, v is not None and v <= 150, "{:.1f} MB")
    ws = results.get("scale", {}).get("websockets")
    if ws and ws.get("websockets") == 10000:
        add("10,000 WebSockets held", ws.get("echo_ok"), ws.get("ok"), "{:,} echoed")
    return out


def markdown(results: dict) -> str:
    targets = [t for t in TARGETS if t in results["targets"]]
    m = results["machine"]
    lines = [
        f"# ARP benchmark ({results['mode']} run, {results['date']})",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['os']}, Linux {m['kernel']}, Python {m['python']}; "
        f"backend {results['backend']['kind']} {results['backend']['version']}; {m['wrk']}; {m['ssh']}; "
        f"ARP {m['arp_revision']}.  Loopback only; one target at a time.",
        "",
    ]
    pypy = results["targets"].get("arp-pypy") or results["targets"].get("splice-pypy")
    if pypy:
        lines += [
            f"arp-pypy, splice-pypy: on {pypy.get('interpreter', 'PyPy')}, measured after "
            f"{pypy.get('warmup_s', 0)} s of keep-alive load (the JIT's warm-up).",
            "",
        ]
    for n in results.get("notes", []):
        lines += [f"**{n}**", ""]
    header = ["figure"]
    for t in targets:
        header += [t] if t == "direct" else [t, "ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for label, cells in figure_rows(results):
        lines.append("| " + " | ".join([label, *cells]) + " |")
    lines.append("")
    g = goals(results)
    if g:
        lines += ["Targets for ARP (issue 3):", "", "| target | measured | met |", "|---|---:|:---:|"]
        for label, value, ok in g:
            lines.append(f"| {label} | {value} | {'yes' if ok else 'NO'} |")
        lines.append("")
    floor = results.get("floor") or {}
    if floor.get("twistd_mb"):
        lines += [
            f"For scale, on this machine a bare `python3` holds {floor['python_mb']} MB, and Twisted's own "
            f"simplest plugin, `twistd -n portforward` (idle, pyOpenSSL left out as in arps and arpc), "
            f"{floor['twistd_mb']} MB.",
            "",
        ]
    scale = results.get("scale", {})
    if scale.get("clients"):
        lines += [
            "Idle clients on one arps (pool size 5 each):",
            "",
            "| clients | tunnels | arps RSS, MB | per client, KB | ready in, s | arps CPU to register, s "
            "| arps CPU idle, % | requests ok | listen overflows | all back after a SIGKILL restart, s "
            "| overflows then |",
            "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
        ]
        for s in scale["clients"]:
            if "error" in s:
                lines.append(f"| {s.get('clients')} | FAILED: {s['error'][:80]} | | | | | | | | | |")
                continue
            back = s.get("restart_all_back_s")
            lines.append(
                f"| {s['clients']:,} | {s['tunnels']:,} | {s['arps_rss_mb']:.1f} "
                f"| {s['arps_kb_per_client']:.1f} "
                f"| {s['ready_s']:.1f} | {s['arps_cpu_registering_s']:.2f} | {s['arps_cpu_idle_pct']:.2f} "
                f"| {'yes' if s['requests_ok'] else 'NO'} | {s.get('listen_overflows', '')} "
                f"| {'' if back is None else f'{back:.2f}'} | {s.get('restart_listen_overflows', '')} |"
            )
        lines.append("")
    ws = scale.get("websockets")
    if ws:
        if "error" in ws:
            lines += [f"WebSockets: FAILED: {ws['error'][:300]}", ""]
        else:
            lines += [
                "Idle WebSockets through one arps and one arpc:",
                "",
                "| WebSockets | opened | echoed after hold | open time, s | arps RSS, MB | arps KB/WS "
                "| arpc RSS, MB | arpc KB/WS |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {ws['websockets']:,} | {ws['opened']:,} | {ws['echo_ok']:,} | {ws['open_seconds']} "
                f"| {ws['arps_rss_before_mb']:.1f} → {ws['arps_rss_held_mb']:.1f} "
                f"| {ws['arps_kb_per_ws']:.1f} "
                f"| {ws['arpc_rss_before_mb']:.1f} → {ws['arpc_rss_held_mb']:.1f} "
                f"| {ws['arpc_kb_per_ws']:.1f} |",
                "",
            ]
            if ws.get("errors"):
                lines += [f"Failed opens: {ws['errors']}.", ""]
            if ws.get("note"):
                lines += [f"Note: {ws['note']}.", ""]
    lines += [
        "Method: `python3 bench/run.py` (see bench/README.rst).  wrk runs `bench/check.lua`, which counts "
        "every response whose status is not 200 or whose body is not 1,024 bytes; bulk runs check the "
        "status and the byte count (the upload sink answers with the bytes it read).  RSS is VmRSS, CPU is "
        "utime+stime from /proc; for ssh the server column sums sshd and its session processes.",
        "",
    ]
    return "\n".join(lines)


def print_table(results: dict) -> None:
    targets = [t for t in TARGETS if t in results["targets"]]
    header = ["figure"]
    for t in targets:
        header += [t] if t == "direct" else [t, "×direct"]
    rows = [header] + [[label, *cells] for label, cells in figure_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        note("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            note("  ".join("-" * w for w in widths))
    for label, value, ok in goals(results):
        note(f"  [{'ok' if ok else '--'}] {label}: {value}")


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="ARP benchmark (loopback only).")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds, for CI")
    parser.add_argument("--out", default=str(HERE / "results"), help="where JSON and markdown go")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS)
    )
    parser.add_argument(
        "--pypy",
        default=str(PYPY_DEFAULT),
        help="PyPy (a venv's bin/python with ARP installed) for the arp-pypy target (default: .venv-pypy)",
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the scale section")
    parser.add_argument(
        "--backlog", type=int, help="listen backlog of arps's endpoints (default: arps's own, 1024)"
    )
    parser.add_argument(
        "--clients",
        type=lambda v: [int(x) for x in v.split(",") if x],
        help="idle client counts, e.g. 100,1000",
    )
    parser.add_argument(
        "--prelude", help="experiments: Python code arps and arpc run before twistd (e.g. a monkeypatch)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--scale-only", action="store_true", help="only the scale section")
    parser.add_argument("--profile", metavar="DIR", help="py-spy arps and arpc during the keep-alive run")
    parser.add_argument("--without", default="", help="treat these tools as missing, e.g. wrk,nginx,ssh,curl")
    args = parser.parse_args()
    HIDDEN.update(t for t in args.without.split(",") if t)
    if args.prelude:
        TWISTD[2] = args.prelude + "\n" + TWISTD_RUN
        results_notes = [f"experiment: arps and arpc run with the prelude {args.prelude!r}"]
    else:
        results_notes = []
    if args.backlog:
        global ARPS_ENDPOINT_EXTRA
        ARPS_ENDPOINT_EXTRA = f":backlog={args.backlog}"
    mode = SMOKE if args.smoke else FULL
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    wanted = [] if args.scale_only else [t for t in args.targets.split(",") if t]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # past the hard limit if we may (root with CAP_SYS_RESOURCE); children inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE_WANT), max(hard, NOFILE_WANT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    workdir = Path(tempfile.mkdtemp(prefix="arp-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    procs = Processes(workdir)
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode.name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "notes": results_notes,
        "skipped": {},
        "targets": {},
        "scale": {},
    }
    status = 0
    try:
        note(f"ARP benchmark, {mode.name} run; work directory {workdir}")
        load = busy_cpus()
        if load > 0.2:
            results["notes"].append(
                f"{load:.2f} CPUs were busy with other work at the start, so the figures are noisy"
            )
            note("NOTE: " + results["notes"][-1])
        for missing, instead in (("wrk", "a slow Python client"), ("curl", "a Python client")):
            if not tool(missing):
                results["notes"].append(f"{missing} not found: its figures come from {instead}")
                note("NOTE: " + results["notes"][-1])
        backend = Backend(procs, workdir, mode.bulk_bytes)
        backend.start()
        results["backend"] = {"kind": backend.kind, "version": backend.version, "port": backend.port}
        if backend.note:
            results["notes"].append(backend.note)
        for name in wanted:
            if name == "direct":
                target: Target = Direct(procs, backend)
            elif name == "splice":
                target = Splice(procs, backend)
            elif name == "arp":
                target = Arp(procs, backend, workdir)
            elif name in ("arp-pypy", "splice-pypy"):
                why = ArpPyPy.available(args.pypy)
                if why:
                    results["skipped"][name] = why
                    results["notes"].append(f"{name} target skipped: {why}")
                    note("NOTE: " + results["notes"][-1])
                    continue
                if name == "arp-pypy":
                    target = ArpPyPy(procs, backend, workdir, args.pypy)
                else:
                    target = SplicePyPy(procs, backend, args.pypy)
            elif name == "ssh":
                why = Ssh.available()
                if why:
                    results["skipped"]["ssh"] = why
                    results["notes"].append(f"ssh target skipped: {why}")
                    note("NOTE: " + results["notes"][-1])
                    continue
                target = Ssh(procs, backend, workdir)
            else:
                raise SystemExit(f"unknown target {name}")
            note(f"== {name}")
            try:
                target.start()
                r = measure(target, mode, backend, profile_dir if name == "arp" else None)
            finally:
                target.stop()
            if isinstance(target, (ArpPyPy, SplicePyPy)):
                r["interpreter"] = target.describe()
            results["targets"][name] = r
            ka, single, nc, b = r["keepalive"], r["single"], r["newconn"], r["bulk"]
            note(
                f"   keep-alive {ka['rps']:,.0f} req/s p50 {ka['p50_us']} µs p99 {ka['p99_us']} µs; "
                f"one conn p50 {single['p50_us']} µs; new conn {nc['rps']:,.0f} req/s; "
                f"down {b['download_mbps']} MB/s up {b['upload_mbps']} MB/s; ok={r['ok']}"
            )
            for f in b["failures"]:
                note("   bulk failure: " + f)
        direct = results["targets"].get("direct")
        for name, r in results["targets"].items():
            if direct and name != "direct":
                r["added_p50_us"] = r["single"]["p50_us"] - direct["single"]["p50_us"]
        if "arp" in results["targets"]:
            results["floor"] = floor_rss(procs, workdir)
            note(f"   floor RSS: {results['floor']}")
        if not args.no_scale and ("arp" in wanted or args.scale_only):
            clients = []
            for n in args.clients if args.clients is not None else mode.clients:
                note(f"== scale: {n} idle clients")
                try:
                    s = scale_clients(procs, workdir, backend, n, mode.idle_s)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    s = {"clients": n, "error": _error_text(e), "ok": False}
                note(f"   {s}")
                clients.append(s)
            results["scale"]["clients"] = clients
            note(f"== scale: {mode.websockets} idle WebSockets")
            try:
                ws = scale_websockets(procs, workdir, mode.websockets, 3.0 if mode.name == "full" else 0.5)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                ws = {"websockets": mode.websockets, "error": _error_text(e), "ok": False}
            note(f"   {ws}")
            results["scale"]["websockets"] = ws
        backend.stop()
    except KeyboardInterrupt:
        note("interrupted; stopping everything")
        status = 130
    except Exception as e:
        note(f"benchmark failed: {type(e).__name__}: {e}")
        results["error"] = f"{type(e).__name__}: {e}"
        status = 1
    finally:
        procs.stop_all()
    results["seconds"] = round(time.monotonic() - started, 1)
    if status == 130:
        return status
    results["ok"] = (
        status == 0
        and all(r["ok"] for r in results["targets"].values())
        and all(s.get("ok") for s in results["scale"].get("clients", []))
        and results["scale"].get("websockets", {"ok": True}).get("ok", False)
    )
    name = "latest" if mode.name == "full" else "smoke"
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if results["targets"]:
        (out_dir / f"{name}.md").write_text(markdown(results))
        note("")
        print_table(results)
    if profile_dir:
        for path in sorted(profile_dir.glob("*.txt")):
            summary = summarize_profile(path)
            (path.with_suffix(".summary")).write_text(summary + "\n")
            note("\n" + summary)
    note(f"\nwrote {out_dir / (name + '.json')} in {results['seconds']} s; ok={results['ok']}")
    if status == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        note(f"logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
