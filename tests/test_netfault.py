"""A network that silently drops packets, between arpc in its own namespace and arps.

The test makes a network namespace and a veth pair (root and iproute2 needed;
it is skipped with the reason where the machine forbids namespaces), runs arpc
and its backend inside the namespace, then takes the link down: no RST, no
FIN, just silence.  Both sides must notice within the heartbeat timeout,
requests meanwhile get a quick 503 rather than hanging, and arpc must come back
by itself when the link returns.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from tests.helpers import AUTH_KEY, HTTPClient, TwistdProcess, free_port, sleep, spawn_arps


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespace:
    """A network namespace joined to the root namespace by a veth pair."""

    def __init__(self) -> None:
        n = random.randrange(1, 250)
        tag = f"{os.getpid() % 10000}x{n}"
        self.name = f"arpt{tag}"
        self.host_if, self.ns_if = f"va{tag}", f"vb{tag}"
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"

    def create(self) -> None:
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            ip("link", "set", self.ns_if, "netns", self.name)
            ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            ip("netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")
            ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        except Exception:
            self.destroy()
            raise

    def link(self, up: bool) -> None:
        ip("link", "set", self.host_if, "up" if up else "down")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class Backend(protocol.ProcessProtocol):
    def __init__(self):
        from twisted.internet import defer

        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


class BlackholeTests(unittest.TestCase):
    """Silent packet loss is detected by heartbeats on both sides and recovered from."""

    timeout = 120

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to create a network namespace")
        self.ns = Namespace()
        try:
            self.ns.create()
        except (OSError, subprocess.CalledProcessError) as e:
            raise unittest.SkipTest(f"this machine forbids network namespaces: {e}")
        self.addCleanup(self.ns.destroy)

    async def test_blackhole_detected_and_recovered(self):
        """Both sides drop the dead link within ~3 heartbeats; arpc reconnects after it returns."""
        ns = self.ns
        control, proxy, public, backend_port = free_port(), free_port(), free_port(), 18999
        relay = spawn_arps(
            self,
            "--heartbeat",
            "1",
            control=f"tcp:{control}:interface={ns.host_ip}",
            proxy=f"tcp:{proxy}:interface={ns.host_ip}",
            public=f"tcp:{public}:interface=127.0.0.1",
        )
        await relay.wait_for("public listening")
        backend = Backend()
        argv = ns.exec_prefix + [
            sys.executable,
            "-m",
            "http.server",
            str(backend_port),
            "--bind",
            "127.0.0.1",
        ]
        reactor.spawnProcess(backend, argv[0], argv, env=dict(os.environ), path=os.getcwd())

        def stop_backend():
            if backend.transport.pid is not None:
                backend.transport.signalProcess("KILL")
            return backend.ended

        self.addCleanup(stop_backend)
        arpc = TwistdProcess(
            "arpc",
            [
                "arpc",
                "--server-addr",
                ns.host_ip,
                "--control-port",
                str(control),
                "--proxy-port",
                str(proxy),
                "--auth-key",
                AUTH_KEY,
                "--data-dir",
                self.mktemp(),
                "--local-port",
                str(backend_port),
                "--max-backoff",
                "1",
            ],
            prefix=ns.exec_prefix,
        ).start()
        self.addCleanup(arpc.stop)
        match = await arpc.wait_for(r"Public URL: \S+token=(\w+)")
        token = match.group(1)
        client = HTTPClient(self, persistent=False)
        url = f"http://127.0.0.1:{public}/?token={token}"
        for _ in range(50):  # the backend may still be starting inside the namespace
            response, _ = await client.request("GET", url)
            if response.code == 200:
                break
            await sleep(0.1)
        self.assertEqual(response.code, 200)

        ns.link(False)
        start = reactor.seconds()
        await relay.wait_for(r"control connection of \S+ timed out", timeout=15)
        await arpc.wait_for(r"relay silent for too long", timeout=15)
        detected = reactor.seconds() - start
        self.assertLess(detected, 15)
        response, body = await client.request("GET", url)
        self.assertEqual(response.code, 503)

        offset = len(arpc.output)
        ns.link(True)
        await arpc.wait_for(r"Public URL", since=offset, timeout=30)
        response, _ = await client.request("GET", url)
        self.assertEqual(response.code, 200)
