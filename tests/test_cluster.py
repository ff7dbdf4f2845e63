"""Several relays sharing state in a real Redis (Debian's redis-server, started per test).

Relays run on 127.0.0.1, .2 and .3 with the same ports; arpc links to all (or some) of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectError
from twisted.trial import unittest

from arp.server.cluster import BadRedisURL, RedisURL, relay_header, relay_mac_key
from tests.cluster_helpers import (
    HOSTS,
    RELAY_KEY,
    RedisServer,
    eventually,
    free_port_on,
    need_redis,
    registered,
    relay_url,
    start_client,
    start_relay,
)
from tests.helpers import (
    AUTH_KEY,
    HTTPClient,
    TwistdProcess,
    free_ports,
    listen_backend,
    raw_exchange,
    spawn_arps,
    status_of,
)


def _ports() -> dict[str, int]:
    """Three different ports free on every relay address."""
    return free_ports("control", "proxy", "public", draw=free_port_on)


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
        arpc = await start_client(
            self, list(HOSTS), self.ports, self.backend, "--client-id", "c0ffee" * 4, wait=3
        )
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

    async def test_client_only_on_a_killed_relay_answers_503_elsewhere(self):
        """kill -9 of the only relay a client is linked to: the other relay answers 503 (offline,
        kept for the retention) at once instead of waiting for a tunnel, then 404."""
        await self.start(2, "--retention", "3")
        token = "dead" + "2" * 28
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)

        async def through_a() -> bool:
            return await self.status(self.relays[0], token) == 200

        await eventually(through_a)
        await self.relays[1].proc.kill()
        code, body = await self.get(self.relays[0], token)
        self.assertEqual(code, 503, body)  # waiting for a tunnel that never comes would be a 504

        async def offline_then_gone() -> bool:
            return await self.status(self.relays[0], token) == 404

        await eventually(offline_then_gone, timeout=20)
        await self.relays[0].proc.wait_for("relay [0-9a-f]+ is gone")

    async def test_admin_and_metrics_show_every_relay(self):
        """The admin API has a row per relay and sums; /metrics labels the per-relay series."""
        await self.start(2)
        token = "ad" + "3" * 30
        await start_client(self, list(HOSTS[:2]), self.ports, self.backend, "--client-id", token, wait=2)
        relay = self.relays[0]
        admin = f"http://{relay.host}:{relay.ports['admin']}"

        async def two_rows() -> object:
            _, body = await self.http.request("GET", f"{admin}/admin/api/stats")
            stats = json.loads(body)
            rows = stats.get("relays", [])
            return stats if len(rows) == 2 and all(r["clients_online"] == 1 for r in rows) else None

        stats = await eventually(two_rows)
        self.assertEqual(stats["all_relays"]["clients_online"], 2)
        self.assertEqual(sum(1 for r in stats["relays"] if r["self"]), 1)
        _, metrics = await self.http.request("GET", f"{admin}/metrics")
        for row in stats["relays"]:
            self.assertIn(f'arp_relay_clients{{relay="{row["relay"]}"'.encode(), metrics)
        self.assertIn(b"arp_relays 2.0", metrics)
        response, body = await self.http.request("GET", f"{admin}/healthz")
        self.assertEqual((response.code, json.loads(body)), (200, {"ok": True, "redis": True}))


class Pinning(ClusterTestCase):
    """The id is pinned to one identity across all relays."""

    async def test_imposter_at_another_relay_is_refused(self):
        """A second arpc (another identity key) claiming the same id at another relay is refused,
        and requests there still reach the real client."""
        await self.start(2)
        token = "feed" + "4" * 28
        await start_client(self, [HOSTS[0]], self.ports, self.backend, "--client-id", token)
        imposter = await start_client(
            self, [HOSTS[1]], self.ports, free_port_on(("127.0.0.1",)), "--client-id", token, wait=0
        )
        await imposter.wait_for("held by another arpc instance")
        await self.relays[1].proc.wait_for("another relay has the id pinned to another identity")
        self.assertNotIn("Registered. Public URL", imposter.output)
        code, _ = await self.get(self.relays[1], token)
        self.assertEqual(code, 200)


class RedisOutage(ClusterTestCase):
    """Redis stopped and started under the relays."""

    timeout = 180  # two settle windows of 30 s (a new Redis, then an emptied one)

    async def test_existing_clients_keep_working_new_ones_wait(self):
        """With Redis down, existing clients answer on every relay and a new registration is
        refused as temporary; once Redis is back the new client registers and is reachable
        through every relay."""
        await self.start(2, "--redis-timeout", "30")
        old = "01d" + "5" * 29
        await start_client(  # a new Redis: the relays settle for --redis-timeout (30 s) first
            self, list(HOSTS[:2]), self.ports, self.backend, "--client-id", old, wait=2, timeout=60
        )
        await self.redis.stop()
        for relay in self.relays:
            await relay.proc.wait_for("lost Redis at")
            self.assertEqual((await self.get(relay, old))[0], 200)
        new = "9e7" + "6" * 29
        newcomer = await start_client(self, [HOSTS[0]], self.ports, self.backend, "--client-id", new, wait=0)
        await newcomer.wait_for("the relay cannot take us now: the relay cannot reach its shared state")
        self.assertNotIn("Registered. Public URL", newcomer.output)
        self.assertEqual((await self.get(self.relays[1], new))[0], 404)
        wrong = await start_client(self, [HOSTS[1]], self.ports, self.backend, wait=0, auth_key="not-the-key")
        await wrong.ended  # a wrong key is still final while Redis is down
        self.assertEqual(wrong.exit_code, 2)
        self.assertIn("the relay refused our auth key", wrong.output)
        self.redis = await RedisServer(self, port=self.redis.port).start()
        await registered(newcomer, 1, timeout=60)  # after the settle window of the empty Redis

        async def everywhere() -> bool:
            codes = [await self.status(r, t) for r in self.relays for t in (old, new)]
            return codes == [200] * 4

        await eventually(everywhere, timeout=20)

    async def test_relay_without_redis_past_the_bound_stops_claiming(self):
        """A relay that has not seen Redis for --redis-timeout drops its clients (it no longer
        claims their ids); they come back once Redis does."""
        await self.start(1)
        token = "b0d" + "7" * 29
        arpc = await start_client(self, [HOSTS[0]], self.ports, self.backend, "--client-id", token)
        await self.redis.stop()
        await self.relays[0].proc.wait_for(r"without Redis for over 3s: dropping 1 clients")
        self.assertEqual((await self.get(self.relays[0], token))[0], 404)
        admin = f"http://{HOSTS[0]}:{self.relays[0].ports['admin']}/healthz"
        response, body = await self.http.request("GET", admin)
        self.assertEqual((response.code, json.loads(body)), (503, {"ok": False, "redis": False}))
        await arpc.wait_for("the relay cannot take us now")
        self.redis = await RedisServer(self, port=self.redis.port).start()
        await registered(arpc, 2, timeout=30)
        self.assertEqual((await self.get(self.relays[0], token))[0], 200)


class RawTCPPorts(ClusterTestCase):
    """``arpc --tcp`` on several relays."""

    async def test_same_port_on_every_relay_and_never_another_clients(self):
        """A raw TCP port given to a client on one relay is not given to another client on
        another relay (though free there), and the client gets that same port on every relay."""
        need_redis()
        first = free_port_on()
        for _ in range(50):
            if all(free_port_on_check(h, first + k) for h in HOSTS[:2] for k in (1, 2)):
                break
            first = free_port_on()
        await self.start_tcp(first)
        y = await start_client(
            self, [HOSTS[1]], self.ports, self.backend, "--tcp", "--client-id", "tcpy" + "0" * 28, wait=0
        )
        await y.wait_for("Registered. Public address")
        self.assertEqual(tcp_ports(y), {first})
        x_dir = self.mktemp()
        x = await start_client(
            self,
            [HOSTS[0]],
            self.ports,
            self.backend,
            "--tcp",
            "--client-id",
            "tcpx" + "0" * 28,
            data_dir=x_dir,
            wait=0,
        )
        await x.wait_for("Registered. Public address")
        self.assertEqual(tcp_ports(x), {first + 1})  # relay 1 would have given it `first`
        blocker = socket.socket()
        blocker.bind((HOSTS[1], first + 1))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        x2 = await start_client(
            self,
            [HOSTS[1]],
            self.ports,
            self.backend,
            "--tcp",
            "--client-id",
            "tcpx" + "0" * 28,
            data_dir=x_dir,
            wait=0,
        )
        # not first + 2: it is x's port
        await x2.wait_for(r"the relay cannot take us now: (no free TCP port|TCP port \d+ is in use)")
        blocker.close()
        await x2.wait_for("Registered. Public address")
        self.assertEqual(tcp_ports(x2), {first + 1}, x2.output[-3000:])

    async def start_tcp(self, first: int) -> None:
        self.redis = await RedisServer(self).start()
        self.ports = _ports()
        self.backend = listen_backend(self)
        self.relays = []
        for host in HOSTS[:2]:
            self.relays.append(
                await start_relay(
                    self,
                    host,
                    self.ports,
                    self.redis.url,
                    "--tcp-ports",
                    f"{first}-{first + 2}",
                    "--tcp-interface",
                    host,
                )
            )


def tcp_ports(proc: TwistdProcess) -> set[int]:
    """The raw TCP ports an arpc was given, from its log."""
    return {int(p) for p in re.findall(r"Public address: tcp://\S+:(\d+)", proc.output)}


def free_port_on_check(host: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Retention(ClusterTestCase):
    """A client gone from every relay."""

    async def test_gone_everywhere_503_then_404_on_every_relay(self):
        """After arpc leaves, every relay (also one it never linked to) answers 503 during the
        retention time, then 404."""
        await self.start(3, "--retention", "8")
        token = "9011e" + "8" * 27
        arpc = await start_client(
            self, list(HOSTS[:2]), self.ports, self.backend, "--client-id", token, wait=2
        )

        async def all_200() -> bool:
            return [await self.status(r, token) for r in self.relays] == [200] * 3

        await eventually(all_200)
        await arpc.stop()

        async def all_503() -> bool:
            return [await self.status(r, token) for r in self.relays] == [503] * 3

        await eventually(all_503, timeout=6)

        async def all_404() -> bool:
            return [await self.status(r, token) for r in self.relays] == [404] * 3

        await eventually(all_404, timeout=20)


class BadInput(ClusterTestCase):
    """Wrong Redis URLs, garbage in Redis, relay-to-relay connections without the credential."""

    async def run_arps(self, *args: str) -> TwistdProcess:
        proc = spawn_arps(self, *args, "--relay-key", RELAY_KEY)
        timer = reactor.callLater(30, proc.signal, "KILL")
        await proc.ended
        if timer.active():
            timer.cancel()
        return proc

    async def test_malformed_redis_url_is_one_line_and_nonzero_exit(self):
        """``--redis http://...`` is refused before anything starts."""
        proc = await self.run_arps("--redis", "http://127.0.0.1:6379/0")
        self.assertNotEqual(proc.exit_code, 0)
        self.assertIn(
            "--redis 'http://127.0.0.1:6379/0': the scheme must be redis:// or rediss://", proc.output
        )
        proc = await self.run_arps("--redis", "redis://127.0.0.1:6379/zero")
        self.assertIn("the path must be a database number", proc.output)

    async def test_unreachable_redis_is_one_line_and_nonzero_exit(self):
        """A Redis nobody listens on: one clear line, exit status 1."""
        need_redis()
        port = free_port_on(("127.0.0.1",))
        proc = await self.run_arps("--redis", f"redis://127.0.0.1:{port}/0")
        self.assertEqual(proc.exit_code, 1)
        lines = [line for line in proc.output.splitlines() if "cannot use Redis" in line]
        self.assertEqual(len(lines), 1, proc.output)
        self.assertIn(f"redis://127.0.0.1:{port}/0", lines[0])
        self.assertNotIn("Traceback", proc.output)

    async def test_wrong_redis_password_is_one_line_and_nonzero_exit(self):
        """A Redis that refuses our password: one clear line, exit status 1."""
        need_redis()
        redis = await RedisServer(self, password="right-password").start()
        proc = await self.run_arps("--redis", f"redis://:wrong@127.0.0.1:{redis.port}/0")
        self.assertEqual(proc.exit_code, 1)
        self.assertIn("cannot use Redis at", proc.output)
        self.assertNotIn("wrong@", proc.output)  # the URL is logged without its password

    async def test_garbage_in_redis_is_ignored_with_a_warning(self):
        """Another program's data under arp: keys and on the channel: warnings, no crash, and
        relays still route through each other."""
        need_redis()
        self.redis = await RedisServer(self).start()
        cli = self.redis.cli
        cli("SET", "arp:id:stringnotahash", "x")
        cli("SET", "arp:id:bad key!", "x")
        cli("HSET", "arp:id:okid", "identity", "zz", "mode", "weird")
        cli("SET", "arp:holders:okid", "not-a-set")
        cli("SADD", "arp:relays", "ghost", "junk")
        cli("SET", "arp:relay:junk", "{not json")
        self.ports = _ports()
        self.backend = listen_backend(self)
        self.relays = [await start_relay(self, h, self.ports, self.redis.url) for h in HOSTS[:2]]
        self.http = HTTPClient(self, persistent=False)
        await self.relays[0].proc.wait_for("ignoring Redis key")
        cli("PUBLISH", "arp:events", "\xff garbage")
        cli("PUBLISH", "arp:events", "up ../../etc x")
        await self.relays[0].proc.wait_for("ignoring a message on arp:events")
        token = "6a4" + "9" * 29
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)

        async def through_a() -> bool:
            return await self.status(self.relays[0], token) == 200

        await eventually(through_a)
        for relay in self.relays:
            self.assertNotIn("Traceback", relay.proc.output)
        claimed = await start_client(
            self, [HOSTS[0]], self.ports, self.backend, "--client-id", "stringnotahash", wait=0
        )
        await claimed.wait_for("the shared state holds something else under this client id")

    async def test_relay_connection_without_the_credential_is_refused(self):
        """A connection to the proxy port posing as a relay: a wrong MAC is refused; a header
        made with the relay key for this relay works once, and the same header replayed is
        refused; one made with another key (the auth key among them) is refused."""
        await self.start(1)
        token = "5ec" + "a" * 29
        await start_client(self, [HOSTS[0]], self.ports, self.backend, "--client-id", token)
        relay = self.relays[0]
        relay_id = re.search(r"as relay (\w+)", relay.proc.output).group(1)
        request = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        now = str(int(time.time())).encode()
        forged = b"ARP-RELAY %s intruder %s %s %s %s\r\n" % (
            token.encode(),
            relay_id.encode(),
            now,
            b"ab" * 16,
            b"00" * 32,
        )
        raw = await raw_exchange(relay.ports["proxy"], forged + request)
        self.assertEqual(raw, b"")
        await relay.proc.wait_for("refused relay connection from .*wrong relay credential")
        header = relay_header(relay_mac_key(RELAY_KEY), token, "peer", relay_id, time.time())
        raw = await raw_exchange(relay.ports["proxy"], header + request)
        self.assertEqual(status_of(raw), 200, raw)
        raw = await raw_exchange(relay.ports["proxy"], header + request)
        self.assertEqual(raw, b"")
        await relay.proc.wait_for("relay header replayed")
        for key in ("another-relay-key-0000", AUTH_KEY):
            raw = await raw_exchange(
                relay.ports["proxy"],
                relay_header(relay_mac_key(key), token, "peer", relay_id, time.time()) + request,
            )
            self.assertEqual(raw, b"")


class RedisOverTLS(ClusterTestCase):
    """``rediss://`` to a redis-server that speaks only TLS."""

    async def test_relays_share_state_over_tls_and_check_the_certificate(self):
        """Two relays reach Redis over TLS (trusting the test CA given with ?ca=) and route to
        each other's client; a relay trusting another CA cannot start."""
        need_redis()
        from tests.certs import make_ca_and_cert

        paths = make_ca_and_cert(self.mktemp())
        self.redis = await RedisServer(self, tls=paths).start()
        self.ports = _ports()
        self.backend = listen_backend(self)
        self.relays = [await start_relay(self, h, self.ports, self.redis.url) for h in HOSTS[:2]]
        self.http = HTTPClient(self, persistent=False)
        token = "7150" + "f" * 28
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)

        async def through_a() -> bool:
            return await self.status(self.relays[0], token) == 200

        await eventually(through_a)
        other = make_ca_and_cert(self.mktemp())
        url = f"rediss://127.0.0.1:{self.redis.port}/0?ca={os.path.abspath(other['ca'])}"
        proc = spawn_arps(self, "--redis", url, "--relay-key", RELAY_KEY)
        await proc.ended
        self.assertEqual(proc.exit_code, 1)
        self.assertRegex(
            proc.output, r"cannot use Redis at rediss://127\.0\.0\.1:\d+/0: certificate not trusted"
        )


class RedisURLs(unittest.TestCase):
    """Parsing ``--redis``."""

    def test_parse(self):
        """Host, port, database, password (URL-decoded) and TLS come from the URL; the log form
        has no password; malformed URLs say what is wrong."""
        url = RedisURL.parse("rediss://:p%40ss@redis.example:6380/3")
        self.assertEqual(
            (url.host, url.port, url.db, url.password, url.tls), ("redis.example", 6380, 3, "p@ss", True)
        )
        self.assertEqual(url.safe(), "rediss://redis.example:6380/3")
        self.assertEqual(RedisURL.parse("redis://h").port, 6379)
        for bad, why in (
            ("http://h/0", "scheme"),
            ("redis:///0", "names no host"),
            ("redis://h:99999/0", "not a URL"),
            ("redis://h/x", "database number"),
            ("redis://h/0?ca=/etc/hostname", "?ca= is for rediss://"),
            ("rediss://h/0?ca=/no/such/file", "no CA file"),
            ("rediss://h/0?timeout=3", "the only query parameter"),
        ):
            with self.assertRaises(BadRedisURL) as e:
                RedisURL.parse(bad)
            self.assertIn(why, str(e.exception))


HAPROXY_CONF = """global
    maxconn 2000
defaults
    mode http
    option http-server-close
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retry-on conn-failure empty-response
    retries 3
    option redispatch 1
frontend public
    bind 127.0.0.1:{port}
    default_backend relays
backend relays
    balance roundrobin
{servers}
"""


class LoadBalancer(ClusterTestCase):
    """HAProxy (Debian's) in front of three relays, as in etc/cluster."""

    async def test_relay_killed_behind_haproxy_costs_only_in_flight_requests(self):
        """Requests through HAProxy keep succeeding when one relay is killed with SIGKILL; the
        failures are no more than the requests that were in flight when it died."""
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if haproxy is None:
            raise unittest.SkipTest("needs haproxy (apt-get install haproxy; CI installs it)")
        await self.start(3)
        token = "1b" + "c" * 30
        await start_client(self, list(HOSTS), self.ports, self.backend, "--client-id", token, wait=3)
        port = free_port_on(("127.0.0.1",))
        servers = "\n".join(
            f"    server r{i} {r.host}:{r.ports['public']}" for i, r in enumerate(self.relays)
        )
        conf = Path(self.mktemp())
        conf.write_text(HAPROXY_CONF.format(port=port, servers=servers))
        lb = TwistdProcess("haproxy", [])
        reactor.spawnProcess(lb, haproxy, [haproxy, "-db", "-f", str(conf)], env={})
        self.addCleanup(lambda: lb.kill())
        url = f"http://127.0.0.1:{port}/echo?token={token}"

        async def lb_answers() -> bool:
            try:
                response, _ = await self.http.request("GET", url)
            except ConnectError:
                return False
            return response.code == 200

        await eventually(lb_answers)
        counts = {"ok": 0, "failed": 0, "inflight": 0, "ok_after": 0}
        state = {"killed": False, "inflight_at_kill": 0, "stop": False}

        async def worker() -> None:
            while not state["stop"]:
                counts["inflight"] += 1
                try:
                    response, _ = await self.http.request("GET", url)
                    ok = response.code == 200
                except Exception:
                    ok = False
                finally:
                    counts["inflight"] -= 1
                counts["ok" if ok else "failed"] += 1
                if ok and state["killed"]:
                    counts["ok_after"] += 1

        workers = [defer.ensureDeferred(worker()) for _ in range(4)]
        await eventually(lambda: defer.succeed(counts["ok"] >= 40))
        state["inflight_at_kill"] = counts["inflight"]  # an upper bound on what the kill can cost
        state["killed"] = True
        await self.relays[1].proc.kill()
        await eventually(lambda: defer.succeed(counts["ok_after"] >= 60))
        state["stop"] = True
        await defer.gatherResults(workers)
        self.assertLessEqual(counts["failed"], state["inflight_at_kill"], counts)


class ArpcOnEveryRelay(unittest.TestCase):
    """arpc's --server-addr with several relays."""

    def test_repeated_and_comma_separated_server_addresses(self):
        """``-s a,b --server-addr c`` names three relays; the first is the public host."""
        from arp.client.tap import Options

        options = Options()
        options.parseOptions(
            [
                "-s",
                "a.example, b.example",
                "--server-addr",
                "c.example",
                "--auth-key",
                "k",
                "--local-port",
                "80",
            ]
        )
        self.assertEqual(options["server-addrs"], ["a.example", "b.example", "c.example"])
        self.assertEqual(options["server-addr"], "a.example")

    def test_a_name_with_several_addresses_is_one_relay_per_address(self):
        """A name resolving to several addresses becomes one link per address (duplicates
        merged); a name with one address, or none yet, stays a name."""
        from arp.client import tap

        answers = {
            "relays.example": ["10.0.0.1", "10.0.0.2", "10.0.0.1", "fd00::3"],
            "one.example": ["10.0.0.9"],
        }

        def fake_getaddrinfo(host: str, port: object, type: int = 0) -> list:  # noqa: A002
            if host not in answers:
                raise OSError("no such name")
            return [(0, type, 0, "", (a, 0)) for a in answers[host]]

        with mock.patch("socket.getaddrinfo", fake_getaddrinfo):
            found = tap.relay_addresses(["relays.example", "one.example", "later.example", "10.0.0.2"])
        self.assertEqual(found, ["10.0.0.1", "10.0.0.2", "fd00::3", "one.example", "later.example"])

    async def test_one_arpc_registers_with_every_relay(self):
        """One arpc process given three relays registers three times, lists them in its log,
        and each relay routes to it."""
        need_redis()
        redis = await RedisServer(self).start()
        ports = _ports()
        backend = listen_backend(self)
        relays = [await start_relay(self, h, ports, redis.url) for h in HOSTS]
        token = "e11" + "d" * 29
        arpc = await start_client(self, list(HOSTS), ports, backend, "--client-id", token, wait=3)
        self.assertIn("arpc keeps a link to 3 relays: 127.0.0.1, 127.0.0.2, 127.0.0.3", arpc.output)
        http = HTTPClient(self, persistent=False)
        for relay in relays:
            response, _ = await http.request("GET", relay_url(relay, f"/echo?token={token}"))
            self.assertEqual(response.code, 200)
            self.assertIn("client e11ddd... registered", relay.proc.output)

    async def test_command_mode_health_lists_the_relays(self):
        """Command mode's /api/health names every relay arpc links to and whether it is
        registered there; the API answers through either relay."""
        need_redis()
        from tests.command_helpers import Api, Workspace, start_command_arpc

        redis = await RedisServer(self).start()
        ports = _ports()
        relays = [await start_relay(self, h, ports, redis.url) for h in HOSTS[:2]]
        arpc = await start_command_arpc(self, relays[0], Workspace(self), "--server-addr", HOSTS[1])
        await registered(arpc, 2)
        for relay in relays:
            api = Api(self, relay, arpc.token, arpc.access)
            api.relay = SimpleNamespace(public=relay_url(relay, "").rstrip("/"))  # this relay's address
            code, health = await api.get("/api/health")
            self.assertEqual(code, 200, health)
            self.assertEqual(
                health["relays"],
                [{"relay": "127.0.0.1", "registered": True}, {"relay": "127.0.0.2", "registered": True}],
            )
