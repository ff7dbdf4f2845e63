"""Several relays sharing state in a real Redis (Debian's redis-server, started per test).

Relays run on 127.0.0.1, .2 and .3 with the same ports; arpc links to all (or some) of them.
"""

from __future__ import annotations

import time

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectError
from twisted.trial import unittest

from tests.cluster_helpers import (
    HOSTS,
    RedisServer,
    eventually,
    free_port_on,
    need_redis,
    registered,
    relay_url,
    start_client,
    start_relay,
)
from tests.helpers import AUTH_KEY, TWISTD, HTTPClient, TwistdProcess, listen_backend, raw_exchange, sleep, status_of


def _ports() -> dict[str, int]:
    return {name: free_port_on() for name in ("control", "proxy", "public")}


class ClusterTestCase(unittest.TestCase):
    """Common set-up: one Redis, a backend, relays on the loopback addresses."""

    timeout = 120

    async def start(self, relays: int = 3, *extra: str) -> None:
        need_redis()
        self.redis = await RedisServer(self).start()
        self.ports = _ports()
        self.backend = listen_backend(self)
        self.relays = []
        for host in HOSTS[:relays]:
            self.relays.append(await start_relay(self, host, self.ports, self.redis.url, *extra))
        self.http = HTTPClient(self, persistent=False)

    async def get(self, relay, token: str, path: str = "/echo") -> tuple[int, bytes]:
        response, body = await self.http.request("GET", relay_url(relay, f"{path}?token={token}"))
        return response.code, body

    async def status(self, relay, token: str) -> int:
        try:
            return (await self.get(relay, token))[0]
        except ConnectError:
            return 0


class EveryRelayReachesTheClient(ClusterTestCase):
    """arpc on every relay; requests through each relay; one relay killed."""

    async def test_requests_through_every_relay_then_one_killed(self):
        """Every relay answers for the client; after kill -9 of one relay the others keep
        answering, and the only requests lost are those in flight on the killed relay."""
        await self.start(3)
        arpc = await start_client(self, list(HOSTS), self.ports, self.backend, "--client-id", "c0ffee" * 4,
                                  wait=3)
        token = "c0ffee" * 4
        for relay in self.relays:
            code, body = await self.get(relay, token)
            self.assertEqual(code, 200, body)
        victim = self.relays[2]
        rotation = list(self.relays)
        inflight = {r: 0 for r in self.relays}
        results = {"ok": 0, "ok_after": 0}
        lost = {r: 0 for r in self.relays}
        killed = {"at": None, "inflight": 0}
        stop = {"now": False}

        async def worker(n: int) -> None:
            i = n
            while not stop["now"]:
                relay = rotation[i % len(rotation)]
                i += 1
                inflight[relay] += 1
                try:
                    code = (await self.get(relay, token))[0]
                except Exception:
                    code = 0
                finally:
                    inflight[relay] -= 1
                if code == 200:
                    results["ok"] += 1
                    if killed["at"] is not None:
                        results["ok_after"] += 1
                else:
                    lost[relay] += 1

        workers = [defer.ensureDeferred(worker(n)) for n in range(6)]
        await eventually(lambda: defer.succeed(results["ok"] >= 60))
        rotation.remove(victim)  # what a load balancer does: no new requests to it from now on
        killed["inflight"] = inflight[victim]  # the requests kill -9 may cost
        killed["at"] = time.monotonic()
        await victim.proc.kill()
        await eventually(lambda: defer.succeed(results["ok_after"] >= 60))
        stop["now"] = True
        await defer.gatherResults(workers)
        self.assertEqual([lost[r] for r in self.relays[:2]], [0, 0], results)
        self.assertLessEqual(lost[victim], killed["inflight"], results)
        self.assertIn("Registered. Public URL", arpc.output)

    async def test_client_on_one_relay_is_reached_through_another(self):
        """A client linked to relay B only answers requests sent to relay A (carried relay to relay)."""
        await self.start(2)
        token = "b0b" + "1" * 29
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)

        async def through_a() -> bool:
            return await self.status(self.relays[0], token) == 200

        await eventually(through_a)
        code, body = await self.get(self.relays[0], token, "/echo/hello")
        self.assertEqual(code, 200)
        self.assertIn(b"/echo/hello", body)
