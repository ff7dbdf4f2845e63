"""Issue 21 #1 and #9, attacked the way the red team did: a real redis-server killed and
restarted empty under two real relays while an imposter (holding the shared auth key) registers
a live client's id in a loop, and relay-to-relay headers made by a tenant, replayed at another
relay or twice, for known and unknown ids, and guessed in bulk.
"""

from __future__ import annotations

import os
import re
import signal
import time

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python import usage
from twisted.trial import unittest
from twisted.web import resource, server

from arp import wire
from arp.server.cluster import RELAY_GUESS_LIMIT, RELAY_MAGIC, relay_header, relay_mac_key
from arp.server.tap import Options
from tests.cluster_helpers import (
    HOSTS,
    RELAY_KEY,
    RedisServer,
    eventually,
    free_port_on,
    need_redis,
    relay_url,
    start_client,
    start_relay,
)
from tests.helpers import AUTH_KEY, HTTPClient, free_ports, listen_backend, status_of

REQUEST = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class _Imposter(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return b"imposter"


def _ports() -> dict[str, int]:
    """Three different ports free on every relay address."""
    return free_ports("control", "proxy", "public", draw=free_port_on)


def relay_id_of(relay) -> str:
    """The relay id arps logged when it reached Redis."""
    return re.search(r"as relay (\w+)", relay.proc.output).group(1)


class _Raw(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object) -> None:
        self.done.callback((self.data, reason.type.__name__))


async def exchange(host: str, port: int, payload: bytes, source: str = "127.0.0.1") -> tuple[bytes, str]:
    """Send ``payload`` from ``source`` to ``host:port``; (what came back, how it ended)."""
    proto = _Raw(payload)
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=(source, 0))
    await connectProtocol(endpoint, proto)
    timer = reactor.callLater(15, proto.transport.abortConnection)
    try:
        return await proto.done
    finally:
        if timer.active():
            timer.cancel()


class Attack(unittest.TestCase):
    timeout = 180

    async def start(self, *extra: str) -> None:
        need_redis()
        self.redis = await RedisServer(self).start()
        self.ports = _ports()
        self.backend = listen_backend(self)
        self.relays = [
            await start_relay(self, host, self.ports, self.redis.url, *extra) for host in HOSTS[:2]
        ]
        self.http = HTTPClient(self, persistent=False)

    async def body(self, relay, token: str) -> bytes:
        try:
            response, body = await self.http.request("GET", relay_url(relay, f"/echo?token={token}"))
        except Exception as e:
            return repr(e).encode()
        return body if response.code == 200 else b"%d" % response.code


class RedisRestartWithAnImposter(Attack):
    """Redis (no persistence) killed and started again empty; relay X holds the owner's control
    link, the imposter asks relay Y for the same id in a loop (arpc retries every second)."""

    async def setup_attack(self, *extra: str) -> None:
        await self.start(*extra)
        self.x, self.y = self.relays
        self.token = "71c" + "e" * 29
        self.owner = await start_client(self, [HOSTS[0]], self.ports, self.backend, "--client-id", self.token)
        fake = listen_backend(self, server.Site(_Imposter()))
        self.imposter = await start_client(
            self, [HOSTS[1]], self.ports, fake, "--client-id", self.token, wait=0
        )
        await self.imposter.wait_for("held by another arpc instance")
        self.addCleanup(self.x.proc.signal, signal.SIGCONT)

    async def restart_redis(self) -> None:
        self.since = {r: len(r.proc.output) for r in self.relays}  # log offsets at the restart
        await self.redis.kill()
        self.redis = await RedisServer(self, port=self.redis.port).start()

    async def owner_everywhere(self) -> None:
        async def check() -> bool:
            bodies = [await self.body(r, self.token) for r in self.relays]
            return all(b'"method": "GET"' in b for b in bodies)

        await eventually(check, timeout=30)

    def assert_owner_kept(self) -> None:
        self.assertEqual(self.owner.output.count("Registered. Public URL"), 1, self.owner.output[-3000:])
        self.assertNotIn("dropping it here", self.x.proc.output)
        for relay in self.relays:
            self.assertNotIn("Traceback", relay.proc.output)

    async def test_relay_y_resyncs_first_and_settles(self):
        """Y reaches the new Redis first (X is frozen until Y has begun the settle window and
        refused the imposter as "settling"); X then pins its live client again.  The owner stays
        registered on X, both relays carry requests to it, and the imposter is refused, during
        the window and after it (ClientIdInUse)."""
        await self.setup_attack("--redis-timeout", "10")
        self.x.proc.signal("STOP")
        await self.restart_redis()
        since = len(self.imposter.output)
        await self.y.proc.wait_for("holds no shared state of ours", since=self.since[self.y])
        await self.imposter.wait_for("the relays are settling", since=since)
        self.x.proc.signal(signal.SIGCONT)
        await self.x.proc.wait_for("Redis lost the relays' shared state", since=self.since[self.x])
        await self.owner_everywhere()
        await self.y.proc.wait_for("settle window over", timeout=30, since=self.since[self.y])
        since = len(self.y.proc.output)
        for _ in range(2):  # the imposter's next tries after the window: refused as ClientIdInUse
            await self.y.proc.wait_for("another relay has the id pinned to another identity", since=since)
            since = len(self.y.proc.output)
        await self.owner_everywhere()
        self.assertNotIn("Registered. Public URL", self.imposter.output)
        self.assert_owner_kept()

    async def test_relay_frozen_past_the_window_takes_its_id_back(self):
        """X stays frozen past the settle window, so the imposter's registration at Y pins the id
        after the loss.  When X is back it is not told to drop its live client: its pin from
        before the loss wins, Y drops the imposter, requests reach the owner on both relays and
        the imposter's next tries are refused."""
        await self.setup_attack("--redis-timeout", "5")
        self.x.proc.signal("STOP")
        await self.restart_redis()
        await self.imposter.wait_for("Registered. Public URL", timeout=30)
        since = len(self.y.proc.output)
        self.x.proc.signal(signal.SIGCONT)
        await self.x.proc.wait_for("it is this live client's again", since=self.since[self.x])
        await self.y.proc.wait_for("registered here after Redis lost its data", since=since)
        await self.owner_everywhere()
        since = len(self.y.proc.output)
        await self.y.proc.wait_for("another relay has the id pinned to another identity", since=since)
        await self.owner_everywhere()
        self.assert_owner_kept()

    async def test_redis_flushed_under_live_relays(self):
        """FLUSHALL while the relays stay connected: they notice the missing epoch within a
        refresh, settle, and pin their clients again; the imposter is still refused."""
        await self.setup_attack()
        since = len(self.x.proc.output)
        self.redis.cli("FLUSHALL")
        await self.x.proc.wait_for("Redis lost the relays' shared state", since=since)
        await self.owner_everywhere()
        since = len(self.y.proc.output)
        await self.y.proc.wait_for("another relay has the id pinned to another identity", since=since)
        self.assertNotIn("Registered. Public URL", self.imposter.output)
        self.assert_owner_kept()


class RelayKey(Attack):
    """Relay-to-relay headers: the relay group's own key, bound to one relay and one use."""

    async def test_a_tenant_cannot_make_a_relay_header(self):
        """A tenant with its own --auth-keys key makes headers every way it could (the old
        derivation from its key, the new one, its key as the relay key): all refused at both
        relays, the same way as for an unknown id; the relay key's header works."""
        keys = self.mktemp()
        with open(keys, "w") as f:
            f.write("alice alice-key-0123456789abcdef\nbob bob-key-0123456789abcdef\n")
        await self.start("--auth-keys", os.path.abspath(keys))
        token = "b0b" + "1" * 29
        await start_client(  # on Y only: relays carry requests for it from X
            self,
            [HOSTS[1]],
            self.ports,
            self.backend,
            "--client-id",
            token,
            wait=1,
            auth_key="bob-key-0123456789abcdef",
        )
        alice = "alice-key-0123456789abcdef"
        old_key = wire._mac(wire.key_bytes(alice), b"arp-relay-to-relay")  # before issue 21 #9
        now = str(int(time.time())).encode()
        for relay in self.relays:
            to = relay_id_of(relay)
            headers = [
                b" ".join(
                    [
                        RELAY_MAGIC,
                        token.encode(),
                        b"peer",
                        now,
                        b"ab" * 16,
                        wire._mac(old_key, b"arp-relay-tunnel", token.encode(), b"peer", now, b"ab" * 16)
                        .hex()
                        .encode(),
                    ]
                )
                + b"\r\n",
                relay_header(old_key, token, "peer", to, time.time()),
                relay_header(relay_mac_key(alice), token, "peer", to, time.time()),
                relay_header(wire.key_bytes(alice), token, "peer", to, time.time()),
            ]
            unknown = relay_header(relay_mac_key(alice), "nobody" + "0" * 26, "peer", to, time.time())
            answers = {await exchange(relay.host, self.ports["proxy"], h + REQUEST) for h in headers}
            answers.add(await exchange(relay.host, self.ports["proxy"], unknown + REQUEST))
            self.assertEqual(len(answers), 1, answers)
            self.assertEqual(next(iter(answers))[0], b"")
            good = relay_header(relay_mac_key(RELAY_KEY), token, "peer", to, time.time())
            if relay is self.relays[1]:
                data, _ = await exchange(relay.host, self.ports["proxy"], good + REQUEST)
                self.assertEqual(status_of(data), 200, data)

    async def test_header_is_good_at_one_relay_once(self):
        """A header accepted at Y (the client's relay) is refused when replayed at X, and when
        replayed at Y; a relay-key header for an unknown id is answered as a forged one for a
        known id."""
        await self.start()
        token = "0ce" + "2" * 29
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)
        x, y = self.relays
        header = relay_header(relay_mac_key(RELAY_KEY), token, "peer", relay_id_of(y), time.time())
        data, _ = await exchange(y.host, self.ports["proxy"], header + REQUEST)
        self.assertEqual(status_of(data), 200, data)
        replayed_x = await exchange(x.host, self.ports["proxy"], header + REQUEST)
        await x.proc.wait_for("refused relay connection from .*made for another relay")
        replayed_y = await exchange(y.host, self.ports["proxy"], header + REQUEST)
        await y.proc.wait_for("refused relay connection from .*relay header replayed")
        unknown = relay_header(
            relay_mac_key(RELAY_KEY), "nobody" + "0" * 26, "peer", relay_id_of(y), time.time()
        )
        unknown_answer = await exchange(y.host, self.ports["proxy"], unknown + REQUEST)
        forged = relay_header(
            relay_mac_key("not-the-relay-key-000"), token, "peer", relay_id_of(y), time.time()
        )
        forged_answer = await exchange(y.host, self.ports["proxy"], forged + REQUEST)
        self.assertEqual({replayed_x, replayed_y, unknown_answer, forged_answer}, {forged_answer})
        self.assertEqual(forged_answer[0], b"")

    async def test_guess_limit(self):
        """An address that sends RELAY_GUESS_LIMIT bad headers is refused even with a good one
        for a minute (logged once); another address is still served."""
        await self.start()
        token = "9e5" + "3" * 29
        await start_client(self, [HOSTS[1]], self.ports, self.backend, "--client-id", token)
        y = self.relays[1]
        to = relay_id_of(y)
        guesses = [
            relay_header(os.urandom(32), token if n % 2 else f"guess{n:04d}", "peer", to, time.time())
            for n in range(RELAY_GUESS_LIMIT)
        ]
        for guess in guesses:
            data, _ = await exchange(y.host, self.ports["proxy"], guess + REQUEST, source="127.0.0.3")
            self.assertEqual(data, b"")
        good = relay_header(relay_mac_key(RELAY_KEY), token, "peer", to, time.time())
        data, _ = await exchange(y.host, self.ports["proxy"], good + REQUEST, source="127.0.0.3")
        self.assertEqual(data, b"")
        await y.proc.wait_for("refusing relay connections from 127.0.0.3 for a while")
        self.assertEqual(y.proc.output.count("refused relay connection from"), RELAY_GUESS_LIMIT)
        data, _ = await exchange(y.host, self.ports["proxy"], good + REQUEST, source="127.0.0.1")
        self.assertEqual(status_of(data), 200, data)


class RelayKeyOptions(unittest.TestCase):
    """``--relay-key``: required by --redis, only with it, not a tenant's key."""

    def parse(self, *args: str, env: dict[str, str] | None = None) -> Options:
        from unittest import mock

        options = Options()
        with mock.patch.dict(os.environ, env or {}, clear=False):
            for name in ("ARP_RELAY_KEY", "ARP_REDIS"):
                if name not in (env or {}):
                    os.environ.pop(name, None)
            options.parseOptions(["--auth-key", AUTH_KEY, *args])
        return options

    def test_options(self):
        redis = ("--redis", "redis://127.0.0.1:6379/0")
        with self.assertRaisesRegex(usage.UsageError, "--redis needs --relay-key"):
            self.parse(*redis)
        with self.assertRaisesRegex(usage.UsageError, "it needs --redis"):
            self.parse("--relay-key", RELAY_KEY)
        with self.assertRaisesRegex(usage.UsageError, "at least 16 characters"):
            self.parse(*redis, "--relay-key", "short")
        with self.assertRaisesRegex(usage.UsageError, "must not be the auth key"):
            self.parse(*redis, "--relay-key", AUTH_KEY)
        self.assertEqual(self.parse(*redis, "--relay-key", RELAY_KEY)["relay-key"], RELAY_KEY)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(RELAY_KEY + "\n")
        self.assertEqual(self.parse(*redis, "--relay-key-file", path)["relay-key"], RELAY_KEY)
        self.assertEqual(self.parse(*redis, env={"ARP_RELAY_KEY": RELAY_KEY})["relay-key"], RELAY_KEY)
        self.assertIsNone(self.parse(env={"ARP_RELAY_KEY": RELAY_KEY})["relay-key"])

    def test_a_tenants_key_is_refused(self):
        from arp.server.tap import _relay_key_of_its_own

        with self.assertRaisesRegex(SystemExit, "tenant bob's auth key"):
            _relay_key_of_its_own(RELAY_KEY, {"alice": "a" * 20, "bob": RELAY_KEY})
        self.assertEqual(_relay_key_of_its_own(RELAY_KEY, {"alice": "a" * 20}), RELAY_KEY)
