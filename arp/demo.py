"""``arp-demo``: run a relay, a client and a small web app on localhost, end to end.

It starts ``twistd arps`` and ``twistd arpc`` as child processes in front of a
demo web app (a page that talks to a WebSocket echo), prints the public URL and
keeps running until Ctrl-C.  With ``--check`` it fetches the page and a
WebSocket echo through the relay and exits, which is how the README's quick
start proves itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>ARP demo</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:2em auto">
<h1>Hello through ARP</h1>
<p>This page is served by a local app on 127.0.0.1 and reached through arps.</p>
<p>WebSocket echo: <span id="ws">connecting...</span></p>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = () => ws.send("ping through the tunnel");
ws.onmessage = (e) => { document.getElementById("ws").textContent = "echoed: " + e.data; };
ws.onerror = () => { document.getElementById("ws").textContent = "failed"; };
</script></body></html>
"""


def serve_app(port: int) -> None:
    """Run the demo web app (page + WebSocket echo) in this process's reactor; port 0: a free one.

    Prints ``demo app listening on 127.0.0.1:PORT``, or, if the port is taken, says so in words
    and exits with status 1.
    """
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.web import resource, server, static

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    root = resource.Resource()
    root.putChild(b"", static.Data(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"ws", WebSocketResource(factory))
    try:
        listening = reactor.listenTCP(port, server.Site(root), interface="127.0.0.1")
    except CannotListenError as e:
        print(f"demo app: cannot listen on 127.0.0.1:{port}: {e.socketError}", flush=True)
        raise SystemExit(1) from None
    print(f"demo app listening on 127.0.0.1:{listening.getHost().port}", flush=True)
    reactor.run()


def _twistd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]


#: What each child is called in messages, and the option that moves each port of the relay.
PORT_OPTIONS = {
    "control": "--control-port",
    "proxy": "--proxy-port",
    "public": "--public-port",
    "admin": "--admin-port",
    "demo app": "--app-port",
}
_BUSY_RE = re.compile(r"(\w+(?: app)?): cannot listen on .*?(\d+): \[Errno \d+\] Address already in use")


class ChildFailed(Exception):
    """A child process of the demo ended or did not get ready: what to tell the user."""


def busy_port(lines: list[str]) -> str | None:
    """In words, the port a child could not listen on because another program holds it (from
    its output), with the option that moves it; None if its output names none."""
    for line in lines:
        match = _BUSY_RE.search(line)
        if match is None:
            continue
        label, port = match.group(1), match.group(2)
        option = PORT_OPTIONS.get(label, "")
        which = "the demo app's port" if label == "demo app" else f"the relay's {label} port"
        move = f"; choose another with {option}, or leave {option} out for a free one" if option else ""
        return f"port {port} ({which}) is already in use by another program{move}"
    return None


class Child:
    """A child process whose output (stdout and stderr) is kept, and echoed if asked."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], echo: bool) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.pump = threading.Thread(target=_pump, args=(self.proc, self.lines, echo), daemon=True)
        self.pump.start()

    def tail(self, n: int = 15) -> str:
        """The child's last ``n`` lines, indented."""
        return "".join("    " + line for line in self.lines[-n:]) or "    (no output)\n"

    def failure(self, what: str) -> ChildFailed:
        """A :class:`ChildFailed` saying ``what``, the busy port if any, and the last lines."""
        busy = busy_port(self.lines)
        words = f"arp-demo: {self.name} {what}"
        if busy:
            words += f": {busy}"
        return ChildFailed(f"{words}\n  last lines of {self.name}:\n{self.tail()}")


def _wait_for(child: Child, pattern: str, children: list[Child], timeout: float) -> re.Match:
    """The first match of ``pattern`` in ``child``'s output; ChildFailed if any child ends first
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while True:
        for line in list(child.lines):
            match = regex.search(line)
            if match:
                return match
        for other in children:
            code = other.proc.poll()
            if code is not None:
                other.pump.join(5)  # its last lines may still be in the pipe (bounded: EOF is near)
                raise other.failure(f"exited early (status {code})")
        if time.monotonic() >= deadline:
            raise child.failure(f"did not get ready in {timeout:g} s")
        time.sleep(0.05)


def _pump(proc: subprocess.Popen, lines: list[str], echo: bool) -> None:
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if echo:
            sys.stdout.write(line)


def _check(url: str) -> None:
    """Fetch the page and echo a WebSocket message through the relay, with the cookie."""
    import http.client
    import urllib.parse

    from autobahn.websocket.protocol import WebSocketProtocol  # noqa: F401  (import check only)

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"/?{parts.query}", headers={"Accept": "text/html"})
    response = conn.getresponse()
    response.read()
    cookie = response.getheader("Set-Cookie", "").split(";", 1)[0]
    if response.status != 302 or not cookie:
        raise SystemExit(f"arp-demo: expected a redirect with a cookie, got {response.status}")
    conn.request("GET", "/", headers={"Cookie": cookie, "Accept": "text/html"})  # a page load
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or b"Hello through ARP" not in body:
        raise SystemExit(f"arp-demo: page not served through the relay ({response.status})")
    conn.close()
    print(f"arp-demo: page OK through {parts.hostname}:{parts.port}")
    _check_websocket(parts.hostname, parts.port, cookie)


def _check_websocket(host: str, port: int, cookie: str) -> None:
    import base64
    import socket

    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n"
            f"Origin: http://{host}:{port}\r\n\r\n"  # the page's own origin, as a browser sends it
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("arp-demo: WebSocket handshake failed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("arp-demo: WebSocket upgrade refused: " + head.split(b"\r\n")[0].decode())
    message = b"ping through the tunnel"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
    sock.sendall(bytes([0x81, 0x80 | len(message)]) + mask + masked)
    frame = sock.recv(4096)
    if frame[2 : 2 + len(message)] != message:
        raise SystemExit("arp-demo: WebSocket echo did not come back")
    sock.close()
    print("arp-demo: WebSocket echo OK")


def _port_or_free(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a port number (0: a free one)")
    return port


def _client_ports(value: str) -> str:
    from arp.options import port_range_or_none

    try:
        port_range_or_none(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def free_port() -> int:
    """A port of 127.0.0.1 the kernel says is free now (for the client's own port, which arps
    opens only when the client registers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``arp-demo``."""
    from arp.options import arp_version

    free = "default: a free port"
    parser = argparse.ArgumentParser(
        prog="arp-demo",
        description=__doc__.split("\n\n")[0]
        + " Every port is a free one unless given; all listen on 127.0.0.1 only.",
    )
    parser.add_argument("--version", action="version", version=f"arp-demo (ARP) {arp_version()}")
    parser.add_argument("--app-port", type=_port_or_free, default=0, help=f"port of the demo app ({free})")
    parser.add_argument("--public-port", type=_port_or_free, default=0, help=f"relay public port ({free})")
    parser.add_argument("--control-port", type=_port_or_free, default=0, help=f"relay control port ({free})")
    parser.add_argument("--proxy-port", type=_port_or_free, default=0, help=f"relay proxy port ({free})")
    parser.add_argument("--admin-port", type=_port_or_free, default=0, help=f"relay admin port ({free})")
    parser.add_argument(
        "--client-ports",
        type=_client_ports,
        default=None,
        help="the relay's --client-ports, e.g. 17100-17199, or none (default: one free port)",
    )
    parser.add_argument("--check", action="store_true", help="fetch through the relay, then exit")
    parser.add_argument("--app", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arp-demo``."""
    args = parse_args(argv)
    if args.app:
        serve_app(args.app_port)
        return 0
    work = tempfile.mkdtemp(prefix="arp-demo-")
    key = os.urandom(12).hex()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ARP_AUTH_KEY", None)
    children: list[Child] = []

    def spawn(name: str, cmd: list[str], echo: bool) -> Child:
        child = Child(name, cmd, env, echo)
        children.append(child)
        return child

    def endpoint(port: int) -> str:
        return f"tcp:{port}:interface=127.0.0.1"

    client_ports = args.client_ports
    if client_ports is None:
        port = free_port()
        client_ports = f"{port}-{port}"
    try:
        app_cmd = [sys.executable, "-m", "arp.demo", "--app", "--app-port", str(args.app_port)]
        app = spawn("demo app", app_cmd, False)
        arps = spawn(
            "arps",
            _twistd(
                "arps",
                "--control-endpoint", endpoint(args.control_port),
                "--proxy-endpoint", endpoint(args.proxy_port),
                "--public-endpoint", endpoint(args.public_port),
                "--admin-endpoint", endpoint(args.admin_port),
                "--client-ports", client_ports,
                "--auth-key", key, "--data-dir", os.path.join(work, "arps"),
            ),
            not args.check,
        )  # fmt: skip
        app_port = _wait_for(app, r"demo app listening on 127\.0\.0\.1:(\d+)", children, 20).group(1)
        ports = {}
        for name in ("control", "proxy", "public", "admin"):
            ports[name] = _wait_for(arps, rf"{name} listening on 127\.0\.0\.1:(\d+)", children, 20).group(1)
        arpc = spawn(
            "arpc",
            _twistd(
                "arpc", "--server-addr", "127.0.0.1",
                "--control-port", ports["control"], "--proxy-port", ports["proxy"],
                "--auth-key", key, "--local-port", app_port,
                "--data-dir", os.path.join(work, "arpc"), "--no-log-file",
            ),
            not args.check,
        )  # fmt: skip
        url = _wait_for(arpc, r"Public URL: (\S+)", children, 20).group(1)
        print(
            f"arp-demo: ports on 127.0.0.1: public {ports['public']}, control {ports['control']}, "
            f"proxy {ports['proxy']}, admin {ports['admin']}, demo app {app_port}, "
            f"client ports {client_ports}",
            flush=True,
        )
        print(f"\n  ARP demo is up. Open: {url}\n  (Ctrl-C stops arps, arpc and the demo app)\n", flush=True)
        if args.check:
            _check(url)
            return 0
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        ended = next(c for c in children if c.proc.poll() is not None)
        print(ended.failure(f"exited (status {ended.proc.returncode})"), file=sys.stderr)
        return 1
    except ChildFailed as e:
        print(e, file=sys.stderr, end="")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # the throw-away key and data directories


if __name__ == "__main__":
    sys.exit(main())
