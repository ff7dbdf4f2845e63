"""One host tries to take all of the relay's descriptors (issue #21.2).

A real arps runs under a small descriptor limit (``prlimit --nofile=512``); an attacker on
127.0.0.1 opens far more idle connections than its share, and sends unfinished heads then
half-closes.  Another address is still answered, a client still registers and serves, and the
attacker's connections over its cap are closed at once.
"""

from __future__ import annotations

import socket
import time

from twisted.internet import threads
from twisted.trial import unittest

from arp.server.budget import default_caps
from tests.helpers import (
    AUTH_KEY,
    HTTPClient,
    TwistdProcess,
    listen_backend,
    start_arpc,
    wait_until,
)
from tests.helpers import Relay as RelayInfo

LIMIT = 512
PRLIMIT = ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"]


def _flood(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` idle connections from 127.0.0.1 (blocking; run in a thread): the sockets that
    connected, and how many were reset before ``connect`` even returned (closed at once)."""
    out, reset = [], 0
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionResetError:
            s.close()
            reset += 1
            continue
        out.append(s)
    return out, reset


def _closed_by_peer(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the other side has closed (EOF or reset), without waiting."""
    closed = 0
    for s in sockets:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def _get_from(address: str, port: int, target: str) -> bytes:
    """One GET from ``address`` (another loopback address than the attacker's), blocking."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0)) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n".encode())
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class DescriptorFloodTests(unittest.TestCase):
    timeout = 120

    async def _relay(self) -> RelayInfo:
        args = ["arps", "--auth-key", AUTH_KEY, "--data-dir", self.mktemp()]
        for name in ("control", "proxy", "public"):
            args += [f"--{name}-endpoint", "tcp:0:interface=127.0.0.1"]
        proc = TwistdProcess("arps", args + ["--admin-endpoint", "none"], prefix=PRLIMIT).start()
        self.addCleanup(proc.stop)
        ports = {}
        for name in ("control", "proxy", "public"):
            ports[name] = int((await proc.wait_for(rf"{name} listening on \S+:(\d+)")).group(1))
        return RelayInfo(proc, ports)

    async def test_idle_flood_from_one_address(self):
        """3x its share of idle connections from one address: the ones over its cap are closed at
        once, the refusal is logged once, and a request from another address is answered by the
        client, which registered and keeps its tunnels."""
        relay = await self._relay()
        total, per_source = default_caps(LIMIT)
        await relay.proc.wait_for(rf"up to {total} public connections at once, {per_source} per source")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        flood, reset = await threads.deferToThread(_flood, relay.ports["public"], per_source * 3)
        self.addCleanup(lambda: [s.close() for s in flood])
        await wait_until(lambda: reset + _closed_by_peer(flood) >= per_source * 2, timeout=15)
        answer = await threads.deferToThread(
            _get_from, "127.0.0.2", relay.ports["public"], f"/echo/x?token={arpc.token}"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])
        self.assertEqual(relay.proc.output.count("127.0.0.1 holds"), 1, relay.proc.output[-2000:])
        # the attacker itself gets nothing more while it holds its share
        more, reset = await threads.deferToThread(_flood, relay.ports["public"], 5)
        self.addCleanup(lambda: [s.close() for s in more])
        await wait_until(lambda: reset + _closed_by_peer(more) == 5, timeout=10)

    async def test_unfinished_heads_then_half_close(self):
        """Connections that send part of a head and half-close are closed at once (they used to be
        kept, with their buffers, for the 30 s head timeout)."""
        relay = await self._relay()
        port = relay.ports["public"]
        partial = b"GET /x HTTP/1.1\r\nHost: relay\r\nX-Pad: " + b"a" * 60000

        def half_close_partial(n: int) -> int:
            closed = 0
            for _ in range(n):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(partial)
                    s.shutdown(socket.SHUT_WR)
                    started = time.monotonic()
                    if s.recv(1) == b"" and time.monotonic() - started < 5:
                        closed += 1
            return closed

        closed = await threads.deferToThread(half_close_partial, 20)
        self.assertEqual(closed, 20)
        # still serving
        client = HTTPClient(self, persistent=False)
        response, _ = await client.request("GET", f"http://127.0.0.1:{port}/")
        self.assertEqual(response.code, 401)
