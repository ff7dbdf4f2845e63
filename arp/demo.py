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
    """Run the demo web app (page + WebSocket echo) in this process's reactor."""
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.web import resource, server, static

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    root = resource.Resource()
    root.putChild(b"", static.Data(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"ws", WebSocketResource(factory))
    reactor.listenTCP(port, server.Site(root), interface="127.0.0.1")
    reactor.run()


def _twistd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]


def _wait_for(proc: subprocess.Popen, pattern: str, lines: list[str], timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        for line in list(lines):
            match = regex.search(line)
            if match:
                return match
        if proc.poll() is not None:
            raise SystemExit("arp-demo: a child exited early:\n" + "".join(lines[-20:]))
        time.sleep(0.05)
    raise SystemExit(f"arp-demo: timed out waiting for {pattern!r}:\n" + "".join(lines[-20:]))


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
    conn.request("GET", "/", headers={"Cookie": cookie})
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
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arp-demo``."""
    parser = argparse.ArgumentParser(prog="arp-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-port", type=int, default=18080, help="port of the demo app (18080)")
    parser.add_argument("--public-port", type=int, default=17003, help="relay public port (17003)")
    parser.add_argument("--control-port", type=int, default=17001, help="relay control port (17001)")
    parser.add_argument("--proxy-port", type=int, default=17002, help="relay proxy port (17002)")
    parser.add_argument("--admin-port", type=int, default=17004, help="relay admin port (17004)")
    parser.add_argument("--check", action="store_true", help="fetch through the relay, then exit")
    parser.add_argument("--app", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.app:
        serve_app(args.app_port)
        return 0
    work = tempfile.mkdtemp(prefix="arp-demo-")
    key = os.urandom(12).hex()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children: list[subprocess.Popen] = []

    def spawn(cmd: list[str], echo: bool) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        children.append(proc)
        lines: list[str] = []
        threading.Thread(target=_pump, args=(proc, lines, echo), daemon=True).start()
        return proc, lines

    try:
        app, app_lines = spawn(
            [sys.executable, "-m", "arp.demo", "--app", "--app-port", str(args.app_port)], False
        )
        arps, arps_lines = spawn(
            _twistd(
                "arps",
                "--control-endpoint", f"tcp:{args.control_port}:interface=127.0.0.1",
                "--proxy-endpoint", f"tcp:{args.proxy_port}:interface=127.0.0.1",
                "--public-endpoint", f"tcp:{args.public_port}:interface=127.0.0.1",
                "--admin-endpoint", f"tcp:{args.admin_port}:interface=127.0.0.1",
                "--auth-key", key, "--data-dir", os.path.join(work, "arps"),
            ),
            not args.check,
        )  # fmt: skip
        _wait_for(arps, r"public listening on", arps_lines, 20)
        arpc, arpc_lines = spawn(
            _twistd(
                "arpc", "--server-addr", "127.0.0.1",
                "--control-port", str(args.control_port), "--proxy-port", str(args.proxy_port),
                "--auth-key", key, "--local-port", str(args.app_port),
                "--data-dir", os.path.join(work, "arpc"),
            ),
            not args.check,
        )  # fmt: skip
        url = _wait_for(arpc, r"Public URL: (\S+)", arpc_lines, 20).group(1)
        print(f"\n  ARP demo is up. Open: {url}\n  (Ctrl-C stops arps, arpc and the demo app)\n", flush=True)
        if args.check:
            _check(url)
            return 0
        while all(p.poll() is None for p in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # the throw-away key and data directories


if __name__ == "__main__":
    sys.exit(main())
