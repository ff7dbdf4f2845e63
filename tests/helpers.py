"""Test helpers: real twistd processes, a local backend, and simple HTTP clients."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from hashlib import sha256
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

AUTH_KEY = "test-auth-key-0123456789"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
URL_RE = re.compile(r"Public URL: (\S+)")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> defer.Deferred:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    d = defer.Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        try:
            ok = predicate()
        except Exception:
            d.errback()
            return
        if ok:
            d.callback(ok)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError(f"condition not met within {timeout}s"))
        else:
            reactor.callLater(interval, check)

    check()
    return d


def sleep(seconds: float) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(_sleep(seconds))


async def _sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class TwistdProcess(protocol.ProcessProtocol):
    """A ``twistd -n`` child whose output we watch."""

    def __init__(self, name: str, args: list[str], env: dict | None = None, prefix: list[str] = ()) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.prefix = list(prefix)
        self.output = ""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self._watchers: list[tuple[re.Pattern, int, defer.Deferred]] = []
        self.transport = None

    def start(self) -> TwistdProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        if "ARP_AUTH_KEY" not in (self.env or {}):
            env.pop("ARP_AUTH_KEY", None)
        env["PYTHONUNBUFFERED"] = "1"
        argv = self.prefix + TWISTD + self.args
        reactor.spawnProcess(self, argv[0], argv, env=env)
        return self

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport else None

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        for entry in list(self._watchers):
            pattern, start, d = entry
            match = pattern.search(self.output, start)
            if match:
                self._watchers.remove(entry)
                d.callback(match)

    def wait_for(self, pattern: str, timeout: float = 20.0, since: int = 0) -> defer.Deferred:
        """Fire with the first match of ``pattern`` in the output after offset ``since``."""
        d: defer.Deferred = defer.Deferred()
        self._watchers.append((re.compile(pattern), since, d))
        self._check()

        def expired(failure, t):
            raise AssertionError(f"{self.name}: {pattern!r} not seen in {t}s; output:\n{self.output[-3000:]}")

        d.addTimeout(timeout, reactor, onTimeoutCancel=expired)
        return d

    def processEnded(self, reason) -> None:
        self.exit_code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self.exit_signal = getattr(reason.value, "signal", None)
        for _, _, d in self._watchers:
            if not d.called:
                d.errback(AssertionError(f"{self.name} exited; output:\n{self.output[-3000:]}"))
        self._watchers = []
        self.ended.callback(None)

    @property
    def stopped_cleanly(self) -> bool:
        """Exit status 0, or twistd's own re-raise of the SIGTERM it handled."""
        return self.exit_code == 0 or self.exit_signal == signal.SIGTERM

    def signal(self, name: str) -> None:
        if not self.ended.called:
            self.transport.signalProcess(name)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.ended.called:
            return
        self.signal("TERM")
        timer = reactor.callLater(timeout, self.signal, "KILL")
        await self.ended
        if timer.active():
            timer.cancel()

    async def kill(self) -> None:
        if not self.ended.called:
            self.signal("KILL")
        await self.ended


class Relay:
    """A running arps with the ports it listens on.

    ``tls`` holds the certificate paths (:func:`tests.certs.make_ca_and_cert`) of a relay with TLS
    on every hop (control, proxy and public ports), or None for a plain one.
    """

    def __init__(self, proc: TwistdProcess, ports: dict[str, int], tls: dict[str, str] | None = None) -> None:
        self.proc = proc
        self.ports = ports
        self.tls = tls

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def public(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['public']}"

    def client_tls(self):
        """Twisted's client TLS options trusting the test CA (None for a plain relay)."""
        return client_tls(self.tls["ca"]) if self.tls else None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"


LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


def spawn_arps(
    test,
    *extra: str,
    data_dir: str | None = None,
    auth_key: str = AUTH_KEY,
    control: str | None = LOOPBACK_ANY_PORT,
    proxy: str | None = LOOPBACK_ANY_PORT,
    public: str | None = LOOPBACK_ANY_PORT,
    admin: str | None = "none",
) -> TwistdProcess:
    """Start ``twistd arps`` with these endpoints (None: arps's default) and stop it at cleanup.

    Unlike :func:`start_arps` it does not wait for anything: for runs that are
    meant to fail, or that listen somewhere else than loopback.
    """
    args = ["arps"]
    if auth_key:
        args += ["--auth-key", auth_key]
    args += ["--data-dir", data_dir or test.mktemp()]
    for name, endpoint in (("control", control), ("proxy", proxy), ("public", public), ("admin", admin)):
        if endpoint is not None:
            args += [f"--{name}-endpoint", endpoint]
    proc = TwistdProcess("arps", args + list(extra)).start()
    test.addCleanup(proc.stop)
    return proc


def client_tls(ca: str, host: str = "127.0.0.1"):
    """Client TLS options that trust only the CA certificate in the PEM file ``ca``."""
    from twisted.internet import ssl

    with open(ca, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(host, trustRoot=authority)


async def start_arps(
    test,
    *extra: str,
    data_dir: str | None = None,
    ports: dict | None = None,
    auth_key: str = AUTH_KEY,
    tls: bool | dict[str, str] = False,
) -> Relay:
    """Start arps on loopback (free ports unless ``ports`` given) and wait until it listens.

    ``tls``: TLS on the control, proxy and public ports, with a CA and certificate made here
    (or the paths given), as the README's TLS recipe deploys it.
    """
    ports = ports or {"control": 0, "proxy": 0, "public": 0}
    names = ("control", "proxy", "public", "admin")
    endpoints = {name: f"tcp:{ports.get(name, 0)}:interface=127.0.0.1" for name in names}
    paths = None
    if tls:
        from tests.certs import make_ca_and_cert

        paths = tls if isinstance(tls, dict) else make_ca_and_cert(test.mktemp())
        keys = f"privateKey={paths['key']}:certKey={paths['cert']}"
        for name in ("control", "proxy", "public"):
            endpoints[name] = f"ssl:{ports.get(name, 0)}:interface=127.0.0.1:{keys}"
    proc = spawn_arps(test, *extra, data_dir=data_dir, auth_key=auth_key, **endpoints)
    found = {}
    for name in ("control", "proxy", "public", "admin"):
        match = await proc.wait_for(rf"{name} listening on \S+:(\d+)")
        found[name] = int(match.group(1))
    return Relay(proc, found, paths)


def arpc_relay_args(relay: Relay) -> list[str]:
    """The arpc options that reach ``relay`` (``tls:`` endpoints trusting its CA when it has TLS)."""
    if relay.tls:
        trust = f"trustRoots={relay.tls['ca_dir']}"
        return [
            "--control-endpoint",
            f"tls:localhost:{relay.ports['control']}:{trust}",
            "--proxy-endpoint",
            f"tls:localhost:{relay.ports['proxy']}:{trust}",
        ]
    return [
        "--server-addr",
        "127.0.0.1",
        "--control-port",
        str(relay.ports["control"]),
        "--proxy-port",
        str(relay.ports["proxy"]),
    ]


async def start_arpc(
    test,
    relay: Relay,
    *extra: str,
    local_port: int | None = None,
    data_dir: str | None = None,
    auth_key: str = AUTH_KEY,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> TwistdProcess:
    """Start arpc against ``relay``; wait for its Public URL line unless ``wait`` is false."""
    args = ["arpc", *arpc_relay_args(relay), "--data-dir", data_dir or test.mktemp()]
    if auth_key:
        args += ["--auth-key", auth_key]
    if local_port is not None:
        args += ["--local-port", str(local_port)]
    args += list(extra)
    proc = TwistdProcess("arpc", args, env=env).start()
    test.addCleanup(proc.stop)
    if wait:
        match = await proc.wait_for(r"Public URL: (\S+)")
        proc.url = match.group(1)
        query = parse_qs(urlsplit(proc.url).query)
        proc.token = query["token"][0]  # the client id: the relay routes by it
        proc.access = query.get("access", [None])[0]  # command mode: the owner's access token
    return proc


async def admin_json(relay: Relay, path: str) -> object:
    """GET a JSON document from the relay's admin API."""
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(b"GET", f"{relay.admin}{path}".encode())
    return json.loads(await readBody(response))


async def wait_pool_warm(relay: Relay, client_id: str, idle: int = 5, timeout: float = 15.0) -> None:
    """Wait until the relay holds ``idle`` idle tunnels for ``client_id``."""
    deadline = reactor.seconds() + timeout
    while True:
        record = await admin_json(relay, f"/admin/api/clients/{client_id}")
        if record.get("pool", {}).get("idle", 0) >= idle:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"pool of {client_id} not warm: {record}")
        await sleep(0.05)


def free_port() -> int:
    """A loopback port nothing listens on now, for a process the test starts later.

    Picked at random below the kernel's ephemeral range (32768-60999 on Linux)
    and ARP's own default ports (17001-17999, 20000-20999): the kernel hands
    ephemeral ports to every outgoing connection, so a port it gave us could be
    taken by one before our process binds it (a test that restarts a relay on
    the same ports needs it free twice).
    """
    import random

    for _ in range(200):
        port = random.randrange(10000, 17000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise AssertionError("no free port found in 10000-16999")


def free_ports(*names: str, draw: Callable[[], int] | None = None) -> dict[str, int]:
    """Different free ports for ``names`` (two draws of :func:`free_port`, or of ``draw``, can be
    the same port)."""
    ports: dict[str, int] = {}
    for name in names:
        for _ in range(100):
            port = (draw or free_port)()
            if port not in ports.values():
                ports[name] = port
                break
    return ports


# -- a local backend -------------------------------------------------------------


class Echo(resource.Resource):
    """Answers with what it received: method, path, headers, body size and hash."""

    isLeaf = True

    def render(self, request):
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "length": len(body),
                "sha256": sha256(body).hexdigest(),
            }
        ).encode()


class Big(resource.Resource):
    """``/big/<n>``: n deterministic bytes."""

    isLeaf = True

    def render_GET(self, request):
        n = int(request.postpath[0]) if request.postpath and request.postpath[0] else 1024
        return pattern_bytes(n)


def pattern_bytes(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


class Stream(resource.Resource):
    """``/stream``: chunked response, one chunk every 50 ms, 5 chunks."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/event-stream")
        count = [0]

        def tick():
            if request.finished or getattr(request, "_gone", False):
                return
            count[0] += 1
            request.write(b"data: tick %d\n\n" % count[0])
            if count[0] < 5:
                reactor.callLater(0.05, tick)
            else:
                request.finish()

        request.notifyFinish().addErrback(lambda f: setattr(request, "_gone", True))
        reactor.callLater(0, tick)
        return server.NOT_DONE_YET


class Slow(resource.Resource):
    """``/slow/<seconds>``: sends a first line at once and the rest after ``seconds``."""

    isLeaf = True

    def render_GET(self, request):
        delay = float(request.postpath[0]) if request.postpath and request.postpath[0] else 1.0
        request.setHeader(b"content-length", b"21")
        request.write(b"first half......\n")

        def finish():
            if not request.finished and not getattr(request, "_gone", False):
                request.write(b"end\n")
                request.finish()

        request.notifyFinish().addErrback(lambda f: setattr(request, "_gone", True))
        reactor.callLater(delay, finish)
        return server.NOT_DONE_YET


def backend_site() -> server.Site:
    root = resource.Resource()
    root.putChild(b"echo", Echo())
    root.putChild(b"big", Big())
    root.putChild(b"stream", Stream())
    root.putChild(b"slow", Slow())
    site = server.Site(root)
    site.noisy = False
    return site


def listen_backend(test, site=None) -> int:
    port = reactor.listenTCP(0, site or backend_site(), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port.getHost().port


# -- clients ---------------------------------------------------------------------


class HTTPClient:
    """Twisted's Agent with a pool that is closed at cleanup."""

    def __init__(self, test, persistent: bool = True, ca: str | None = None) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 50
        if ca is None:
            self.agent = Agent(reactor, pool=self.pool)
        else:
            from twisted.internet import ssl
            from twisted.web.client import BrowserLikePolicyForHTTPS

            with open(ca, "rb") as f:
                authority = ssl.Certificate.loadPEM(f.read())
            policy = BrowserLikePolicyForHTTPS(trustRoot=authority)
            self.agent = Agent(reactor, contextFactory=policy, pool=self.pool)
        test.addCleanup(self.pool.closeCachedConnections)

    async def request(self, method: str, url: str, headers: dict | None = None, body=None):
        import io

        from twisted.web.client import FileBodyProducer

        producer = None
        if body is not None:
            producer = body if not isinstance(body, bytes) else FileBodyProducer(io.BytesIO(body))
        h = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await self.agent.request(method.encode(), url.encode(), h, producer)
        data = await readBody(response)
        return response, data


class RawResponse(protocol.Protocol):
    def __init__(self, payload: bytes, chunks: list[bytes] | None = None, half_close: bool = False) -> None:
        self.payload = payload
        self.half_close = half_close
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.payload:
            self.transport.write(self.payload)
        if self.half_close:
            self.transport.loseWriteConnection()  # send EOF, keep reading

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


async def raw_exchange(
    port: int, payload: bytes, timeout: float = 15.0, half_close: bool = False, tls=None
) -> bytes:
    """Send ``payload`` on a new connection (then EOF if ``half_close``) and return everything
    read until the server closes; over TLS with the client options ``tls``, if given."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    proto = RawResponse(payload, half_close=half_close)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await connectProtocol(endpoint, proto)
    timer = reactor.callLater(timeout, proto.transport.abortConnection)
    data = await proto.done
    if timer.active():
        timer.cancel()
    return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
