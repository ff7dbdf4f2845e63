"""Helpers for several relays sharing one Redis: a throw-away redis-server, relays on
127.0.0.1/.2/.3 with the same ports, and an arpc linked to some or all of them."""

from __future__ import annotations

import shutil
import socket
import subprocess

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from tests.helpers import AUTH_KEY, Relay, TwistdProcess, kill_pid, sleep

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
#: The relay group's own key (``arps --relay-key``), which no tenant knows.
RELAY_KEY = "relay-group-key-" + "5" * 16


def need_redis() -> None:
    """Skip (saying why) when Debian's redis-server is not installed; CI installs it."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        raise unittest.SkipTest("needs redis-server and redis-cli (apt-get install redis-server)")


def free_port_on(hosts: tuple[str, ...] = HOSTS) -> int:
    """A port free on every address in ``hosts`` (relays share ports on loopback), picked at
    random below the kernel's ephemeral range and ARP's default ports, like
    :func:`tests.helpers.free_port` (an outgoing connection could take an ephemeral one
    before our process binds it, e.g. while Redis is restarted on its port)."""
    import random

    for _ in range(200):
        port = random.randrange(10000, 17000)
        ok = True
        for host in hosts:
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            return port
    raise RuntimeError("no port free on every loopback address in 10000-16999")


class _Watch(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = ""
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        if "Ready to accept connections" in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError(f"redis-server ended:\n{self.output[-2000:]}"))
        self.ended.callback(None)


class RedisServer:
    """A redis-server of the test's own, on a free loopback port, in a temp dir, without
    persistence; stopped (SIGKILL by PID) at cleanup, and by :meth:`stop` on demand."""

    def __init__(
        self,
        test: unittest.TestCase,
        port: int | None = None,
        password: str | None = None,
        tls: dict | None = None,
    ) -> None:
        """``tls``: paths from :func:`tests.certs.make_ca_and_cert` to serve TLS only."""
        import os

        self.test = test
        self.port = port or free_port_on(("127.0.0.1",))
        self.password = password
        self.tls = {k: os.path.abspath(v) for k, v in tls.items()} if tls else None
        self.dir = test.mktemp()
        self.proc: _Watch | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ca={self.tls['ca']}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> RedisServer:
        import os

        os.makedirs(self.dir, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            os.path.abspath(self.dir),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += [
                "--tls-cert-file",
                self.tls["cert"],
                "--tls-key-file",
                self.tls["key"],
                "--tls-ca-cert-file",
                self.tls["ca"],
                "--tls-auth-clients",
                "no",
            ]
        self.proc = _Watch()
        reactor.spawnProcess(self.proc, REDIS_SERVER, args, env={})
        self.test.addCleanup(self.kill)
        timer = reactor.callLater(15, self.kill)
        try:
            await self.proc.ready
        finally:
            if timer.active():
                timer.cancel()
        return self

    async def kill(self) -> None:
        """SIGKILL the server (by its PID) and wait until it is gone."""
        proc = self.proc
        if proc is not None and not proc.ended.called:
            if proc.transport.pid is not None:
                kill_pid(proc.transport.pid)
            await proc.ended

    stop = kill

    def cli(self, *args: str) -> str:
        """Run one redis-cli command against this server (a short blocking call)."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *auth, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip()


async def start_relay(
    test: unittest.TestCase,
    host: str,
    ports: dict[str, int],
    redis_url: str,
    *extra: str,
    auth_key: str = AUTH_KEY,
    relay_key: str = RELAY_KEY,
) -> Relay:
    """An arps on ``host`` (same ports on every host) sharing state in ``redis_url``."""
    args = ["arps"]
    for name in ("control", "proxy", "public"):
        args += [f"--{name}-endpoint", f"tcp:{ports[name]}:interface={host}"]
    args += ["--admin-endpoint", f"tcp:0:interface={host}", "--auth-key", auth_key]
    args += ["--data-dir", test.mktemp(), "--redis", redis_url, "--redis-timeout", "3"]
    args += ["--relay-key", relay_key, *extra]
    proc = TwistdProcess(f"arps@{host}", args).start()
    test.addCleanup(proc.stop)
    match = await proc.wait_for(r"admin listening on \S+:(\d+)")
    await proc.wait_for(r"sharing state in Redis")
    relay = Relay(proc, {**ports, "admin": int(match.group(1))})
    relay.host = host
    return relay


def relay_url(relay: Relay, path: str = "/") -> str:
    return f"http://{relay.host}:{relay.ports['public']}{path}"


async def start_client(
    test: unittest.TestCase,
    hosts: list[str],
    ports: dict[str, int],
    local_port: int,
    *extra: str,
    data_dir: str | None = None,
    wait: int = 1,
    auth_key: str = AUTH_KEY,
    timeout: float = 20.0,
) -> TwistdProcess:
    """An arpc linked to every relay in ``hosts``; waits for ``wait`` registrations (at most
    ``timeout`` seconds: relays that start on a new Redis settle for --redis-timeout first)."""
    args = [
        "arpc",
        "--server-addr",
        ",".join(hosts),
        "--control-port",
        str(ports["control"]),
        "--proxy-port",
        str(ports["proxy"]),
        "--data-dir",
        data_dir or test.mktemp(),
        "--auth-key",
        auth_key,
        "--local-port",
        str(local_port),
        "--max-backoff",
        "1",
        *extra,
    ]
    proc = TwistdProcess("arpc", args).start()
    test.addCleanup(proc.stop)
    await registered(proc, wait, timeout)
    return proc


async def registered(proc: TwistdProcess, count: int, timeout: float = 20.0) -> None:
    """Wait until ``proc`` has logged ``count`` registrations in all."""

    async def check() -> bool:
        if proc.ended.called:
            raise AssertionError(f"{proc.name} ended:\n{proc.output[-3000:]}")
        return proc.output.count("Registered. Public URL") >= count

    await eventually(check, timeout)


async def eventually(check, timeout: float = 15.0, interval: float = 0.1) -> object:
    """Await ``check()`` (a coroutine function) until it returns something true."""
    deadline = reactor.seconds() + timeout
    while True:
        result = await check()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"not true within {timeout}s: last result {result!r}")
        await sleep(interval)
