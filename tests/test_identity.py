"""Client identity: capture-replay and hijack attempts against a real arps, tunnel-token replay,
per-tenant auth keys, the identity key file, and arpc's exit after a permanent refusal."""

from __future__ import annotations

import os
import stat

from twisted.internet import reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial import unittest

from arp import wire
from arp.control import AuthFailed, ClientIdInUse, Hello, Register
from arp.server.registry import MAX_SPENT_SERIALS, Registry, RelayConfig
from tests.certs import make_ca_and_cert
from tests.control_helpers import connect_control, register_over, register_record, registration
from tests.helpers import (
    AUTH_KEY,
    RawResponse,
    TwistdProcess,
    admin_json,
    free_port,
    listen_backend,
    sleep,
    start_arpc,
    start_arps,
)

VICTIM = "victim-0123456789abcdef"


async def replay(port: int, data: bytes, boxes: int) -> list:
    """Send captured bytes on a new control connection; the first ``boxes`` answer boxes."""
    proto = RawResponse(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    for _ in range(100):
        answers = amp.parseString(proto.data) if proto.data else []
        if len(answers) >= boxes or proto.done.called:
            break
        await sleep(0.05)
    proto.transport.loseConnection()
    await proto.done
    return amp.parseString(proto.data)


class CaptureReplayTests(unittest.TestCase):
    """Someone who captured a registration (and holds the shared auth key) cannot take the id."""

    timeout = 90

    async def asyncSetUp(self):
        self.relay = await start_arps(self, "--retention", "60")
        self.identity = wire.new_identity()
        self.victim = await connect_control(self.relay.ports["control"])
        self.addCleanup(self.victim.transport.abortConnection)
        await register_over(self.victim, VICTIM, AUTH_KEY, self.identity)

    async def pinned(self) -> str:
        record = await admin_json(self.relay, f"/admin/api/clients/{VICTIM}")
        return record["identity"]

    async def test_replayed_bytes_are_refused(self):
        """The victim's registration bytes, replayed verbatim on a new connection, get a new nonce
        and AUTH_FAILED; the id stays pinned to the victim's key."""
        await self.asyncSetUp()
        answers = await replay(self.relay.ports["control"], self.victim.sent, 2)
        self.assertIn(b"nonce", answers[0])
        self.assertEqual(answers[1][b"_error_code"], b"AUTH_FAILED")
        self.assertEqual(await self.pinned(), wire.fingerprint(wire.public_bytes(self.identity)))
        await self.relay.proc.wait_for(r"refused registration for victim... from \S+: wrong auth key")

    async def test_captured_signature_reused(self):
        """With the auth key known, the captured identity and signature on a fresh connection
        (a fresh admission proof, a fresh exchange key) are refused: the signature covers the
        old connection's nonce."""
        await self.asyncSetUp()
        captured = amp.parseString(self.victim.sent)[1]
        thief = await connect_control(self.relay.ports["control"])
        self.addCleanup(thief.transport.abortConnection)
        hello = await thief.callRemote(Hello, version=wire.PROTOCOL_VERSION)
        exchange = wire.public_bytes(wire.new_exchange())
        data = wire.transcript(hello["nonce"], VICTIM, "http", 0, captured[b"identity"], exchange)
        attempt = thief.callRemote(
            Register,
            client_id=VICTIM,
            identity=captured[b"identity"],
            exchange=exchange,
            signature=captured[b"signature"],
            proof=wire.admission_proof(wire.key_bytes(AUTH_KEY), data),
            mode="http",
            remote_port=0,
        )
        with self.assertRaises(AuthFailed):
            await attempt

    async def test_hijack_live_and_retained_then_owner_returns(self):
        """Another key for the id is refused while the owner is online and while its id is
        retained; the owner's key gets the id back."""
        await self.asyncSetUp()
        thief = await connect_control(self.relay.ports["control"])
        self.addCleanup(thief.transport.abortConnection)
        with self.assertRaises(ClientIdInUse):
            await register_over(thief, VICTIM, AUTH_KEY)
        self.victim.transport.loseConnection()
        await self.relay.proc.wait_for(r"victim... disconnected; keeping")
        thief = await connect_control(self.relay.ports["control"])
        self.addCleanup(thief.transport.abortConnection)
        with self.assertRaises(ClientIdInUse):
            await register_over(thief, VICTIM, AUTH_KEY)
        owner = await connect_control(self.relay.ports["control"])
        self.addCleanup(owner.transport.abortConnection)
        answer = await register_over(owner, VICTIM, AUTH_KEY, self.identity)
        self.assertEqual(len(answer["exchange"]), 32)
        record = await admin_json(self.relay, f"/admin/api/clients/{VICTIM}")
        self.assertTrue(record["online"])

    async def test_nothing_secret_on_the_wire(self):
        """Neither direction of a registration carries the auth key, the identity's private key
        or the tunnel key."""
        await self.asyncSetUp()
        wire_bytes = self.victim.sent + self.victim.received
        self.assertNotIn(AUTH_KEY.encode(), wire_bytes)
        self.assertNotIn(wire.key_bytes(AUTH_KEY), wire_bytes)
        self.assertNotIn(self.identity.private_bytes_raw(), wire_bytes)
        self.assertNotIn(b"tunnel_secret", wire_bytes)


class TunnelTokenTests(unittest.TestCase):
    """Tunnel headers carry one-time tokens: a captured header does not open a second tunnel."""

    def setUp(self):
        self.registry = Registry(RelayConfig(), "k", Clock())
        self.control = type("Control", (), {"open_tunnels": lambda s, n: None, "drop": lambda s, r: None})()
        self.record = register_record(self.registry, self.control, "abc", "k")

    def token(self) -> str:
        return wire.parse_tunnel_header(wire.tunnel_header("abc", self.record.tunnel_secret).rstrip())[1]

    def test_replayed_header_refused(self):
        """The same token is accepted once."""
        token = self.token()
        self.assertIs(self.registry.check_tunnel("abc", token), self.record)
        self.assertIsNone(self.registry.check_tunnel("abc", token))

    def test_old_tokens_refused_after_window(self):
        """Past MAX_SPENT_SERIALS tunnels, tokens older than the window are all refused, and
        memory per client stays bounded."""
        first = self.token()
        self.assertIsNotNone(self.registry.check_tunnel("abc", first))
        unused_old = self.token()
        for _ in range(MAX_SPENT_SERIALS + 1):
            self.assertIsNotNone(self.registry.check_tunnel("abc", self.token()))
        self.assertLessEqual(len(self.record.tunnel_serials), MAX_SPENT_SERIALS)
        self.assertIsNone(self.registry.check_tunnel("abc", unused_old))

    def test_new_registration_new_key(self):
        """A token made under a previous registration's key is refused after re-registration."""
        token = self.token()
        identity = wire.new_identity()
        record = register_record(self.registry, self.control, "xyz", "k", identity)
        old = wire.parse_tunnel_header(wire.tunnel_header("xyz", record.tunnel_secret).rstrip())[1]
        register_record(self.registry, self.control, "xyz", "k", identity)
        self.assertIsNone(self.registry.check_tunnel("xyz", old))
        self.assertIsNotNone(self.registry.check_tunnel("abc", token))


class TenantKeyTests(unittest.TestCase):
    """``arps --auth-keys FILE``: each tenant registers with its own key."""

    def test_registry_names_the_tenant(self):
        """A proof under tenant b's key registers as tenant b; an unknown key is refused."""
        registry = Registry(RelayConfig(), {"a": "key-a", "b": "key-b"}, Clock())
        control = type("Control", (), {"open_tunnels": lambda s, n: None, "drop": lambda s, r: None})()
        self.assertEqual(register_record(registry, control, "one", "key-b").tenant, "b")
        self.assertRaises(AuthFailed, register_record, registry, control, "two", "key-c")
        nonce = registry.new_nonce()
        args, _ = registration(nonce, "three", "key-a")
        self.assertEqual(registry.register(control, nonce, *args.values(), "x").tenant, "a")

    async def test_auth_keys_file(self):
        """arps reads the file; an arpc with tenant b's key registers, one with no tenant's key
        exits with a clear line; a malformed file stops arps naming the line."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# tenants\nalpha alpha-key-0123456789\n\nbeta beta-key-0123456789\n")
        relay = await start_arps(self, "--auth-keys", path, auth_key="")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self), auth_key="beta-key-0123456789")
        record = await admin_json(relay, f"/admin/api/clients/{arpc.token}")
        self.assertEqual(record["tenant"], "beta")
        refused = await start_arpc(self, relay, local_port=free_port(), auth_key=AUTH_KEY, wait=False)
        await refused.ended
        self.assertEqual(refused.exit_code, 2)
        with open(path, "w") as f:
            f.write("alpha alpha-key\nbroken\n")
        bad = TwistdProcess("arps", ["arps", "--auth-keys", path, "--data-dir", self.mktemp()]).start()
        self.addCleanup(bad.stop)
        await bad.ended
        self.assertNotEqual(bad.exit_code, 0)
        self.assertIn("line 2: expected 'name key'", bad.output)

    async def test_tenant_quota(self):
        """With --max-clients-per-tenant 1 a tenant that holds an id cannot take another port
        (its second arpc is told and keeps retrying), its first id still comes back, and another
        tenant still registers."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alpha alpha-key-0123456789\nbeta beta-key-0123456789\n")
        relay = await start_arps(self, "--auth-keys", path, "--max-clients-per-tenant", "1", auth_key="")
        alpha_key = "alpha-key-0123456789"
        first = await start_arpc(self, relay, local_port=listen_backend(self), auth_key=alpha_key)
        second = await start_arpc(self, relay, local_port=free_port(), auth_key=alpha_key, wait=False)
        await relay.proc.wait_for(r"tenant alpha already holds 1 client ids \(--max-clients-per-tenant 1\)")
        await second.wait_for(r"already holds 1 client ids on this relay")
        self.assertIsNone(second.exit_code)  # temporary: it retries
        other = await start_arpc(self, relay, local_port=listen_backend(self), auth_key="beta-key-0123456789")
        record = await admin_json(relay, f"/admin/api/clients/{other.token}")
        self.assertEqual(record["tenant"], "beta")
        clients = await admin_json(relay, "/admin/api/clients")
        alpha = [c for c in clients["clients"] if c["tenant"] == "alpha"]
        self.assertEqual([c["clientId"] for c in alpha], [first.token])


class MiddleSplice(Protocol):
    """One connection through a man in the middle: it ends the client's TLS and opens its own."""

    def __init__(self, upstream) -> None:
        self.upstream = upstream
        self.back: Protocol | None = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        back = Protocol()
        back.dataReceived = self.transport.write
        back.connectionLost = lambda reason: self.transport.loseConnection()
        connecting = connectProtocol(self.upstream, back)
        connecting.addCallbacks(self._up, lambda f: self.transport.abortConnection())

    def _up(self, back: Protocol) -> None:
        self.back = back
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.back.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.back is not None:
            self.back.transport.loseConnection()


class ChannelBindingTests(unittest.TestCase):
    """Over TLS the registration is bound to arpc's TLS session (exported keying material)."""

    timeout = 90

    async def middle(self, listen: str, upstream: str) -> int:
        endpoint = serverFromString(reactor, listen)
        target = clientFromString(reactor, upstream)
        port = await endpoint.listen(Factory.forProtocol(lambda: MiddleSplice(target)))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def attempt(self, control: str, proxy: str) -> TwistdProcess:
        args = ["arpc", "--auth-key", AUTH_KEY, "--data-dir", self.mktemp(), "--no-log-file"]
        args += ["--local-port", str(listen_backend(self))]
        args += ["--control-endpoint", control, "--proxy-endpoint", proxy]
        proc = TwistdProcess("arpc", args).start()
        self.addCleanup(proc.stop)
        return proc

    async def test_man_in_the_middle_refused(self):
        """A man in the middle holding the auth key and a certificate arpc trusts ends arpc's TLS
        and opens its own to arps: the registration it passes on is refused (arpc exits 2 saying
        something in between ends TLS); so is one it downgrades to plain TCP; connected
        directly, the same arpc registers."""
        paths = make_ca_and_cert(self.mktemp())
        tls = f"interface=127.0.0.1:privateKey={paths['key']}:certKey={paths['cert']}"
        relay = await start_arps(
            self, "--control-endpoint", f"ssl:0:{tls}", "--proxy-endpoint", f"ssl:0:{tls}"
        )
        trust = f"trustRoots={paths['ca_dir']}"
        upstream = f"tls:localhost:{relay.ports['control']}:{trust}"
        proxy = f"tls:localhost:{relay.ports['proxy']}:{trust}"

        middle = await self.middle(f"ssl:0:{tls}", upstream)
        relayed = await self.attempt(f"tls:localhost:{middle}:{trust}", proxy)
        await relayed.ended
        self.assertEqual(relayed.exit_code, 2)
        self.assertIn("something in between ends TLS", relayed.output)
        await relay.proc.wait_for(r"its TLS session is not this one")

        stripping = await self.middle("tcp:0:interface=127.0.0.1", upstream)
        downgraded = await self.attempt(f"tcp:127.0.0.1:{stripping}", proxy)
        await downgraded.ended
        self.assertEqual(downgraded.exit_code, 2)
        self.assertIn("something in between ends TLS", downgraded.output)

        direct = await self.attempt(upstream, proxy)
        await direct.wait_for(r"Public URL: ")
        self.assertNotIn("Traceback", relay.proc.output)

    def test_binding_without_tls_is_empty(self):
        """A plain TCP transport has no channel binding (the transcript then has an empty one)."""
        from twisted.internet.testing import StringTransport

        self.assertEqual(wire.channel_binding(StringTransport()), b"")


class ArpcExitTests(unittest.TestCase):
    """arpc ends with one clear line after a permanent refusal; it keeps trying after a
    temporary one; shutting down says so; no tracebacks."""

    timeout = 90

    async def test_wrong_key_exits_non_zero(self):
        """A wrong --auth-key: exit status 2, one error line saying what to do, no retries, no
        automat NoTransition traceback."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=free_port(), auth_key="not-the-key", wait=False)
        await arpc.ended
        self.assertEqual(arpc.exit_code, 2)
        self.assertEqual(arpc.output.count("refused our auth key"), 1, arpc.output)
        self.assertIn("--auth-key KEY or ARP_AUTH_KEY", arpc.output)
        self.assertNotIn("Traceback", arpc.output)
        self.assertNotIn("NoTransition", arpc.output)
        self.assertNotIn("connecting to the relay again", arpc.output)

    async def test_temporary_refusal_keeps_retrying(self):
        """An id held by another instance is temporary: arpc retries (with backoff) and a
        SIGINT then ends it without a traceback."""
        relay = await start_arps(self, "--retention", "30")
        owner = await start_arpc(self, relay, "--client-id", VICTIM, local_port=listen_backend(self))
        second = await start_arpc(self, relay, "--client-id", VICTIM, local_port=free_port(), wait=False)
        await second.wait_for(r"held by another arpc instance")
        offset = len(second.output)
        await second.wait_for(r"held by another arpc instance", since=offset)
        self.assertFalse(second.ended.called)
        second.signal("INT")
        await second.ended
        self.assertNotIn("Traceback", second.output)
        self.assertTrue(owner.url)

    async def test_busy_relay_keeps_retrying(self):
        """A relay with no free TCP port refuses for now (UNAVAILABLE): arpc keeps retrying with
        backoff instead of exiting, and gets the port once it is free."""
        port = free_port()
        relay = await start_arps(self, "--tcp-ports", f"{port}-{port}", "--retention", "1")
        first = await start_arpc(self, relay, "--tcp", local_port=listen_backend(self), wait=False)
        await first.wait_for(rf"Public address: tcp://\S+:{port}")
        second = await start_arpc(self, relay, "--tcp", local_port=listen_backend(self), wait=False)
        await second.wait_for(r"cannot take us now: no free TCP port")
        await second.wait_for(r"cannot take us now", since=second.output.index("cannot take us now") + 1)
        self.assertFalse(second.ended.called)
        await first.stop()
        await second.wait_for(rf"Public address: tcp://\S+:{port}", timeout=30)
        self.assertNotIn("Traceback", second.output)

    async def test_sigterm_logs_shutdown(self):
        """On SIGTERM arpc says it is shutting down, not that it lost the relay and reconnects."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        await arpc.stop()
        self.assertTrue(arpc.stopped_cleanly)
        self.assertIn("arpc shutting down: leaving the relay", arpc.output)
        self.assertIn("left the relay (shutting down)", arpc.output)
        self.assertNotIn("reconnecting", arpc.output)
        self.assertNotIn("Traceback", arpc.output)


class IdentityFileTests(unittest.TestCase):
    """arpc's identity key file."""

    async def test_identity_file(self):
        """Created with mode 0600 as an Ed25519 key; kept across restarts (same id, same pin);
        arpc refuses to use it once others can read it, saying how to fix it."""
        relay = await start_arps(self)
        data_dir = self.mktemp()
        first = await start_arpc(self, relay, local_port=listen_backend(self), data_dir=data_dir)
        path = os.path.join(data_dir, "identity-key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        identity = wire.identity_from_hex(open(path).read())
        record = await admin_json(relay, f"/admin/api/clients/{first.token}")
        self.assertEqual(record["identity"], wire.fingerprint(wire.public_bytes(identity)))
        await first.stop()
        again = await start_arpc(self, relay, local_port=listen_backend(self), data_dir=data_dir)
        self.assertEqual(again.token, first.token)
        await again.stop()
        os.chmod(path, 0o644)
        loose = await start_arpc(self, relay, local_port=free_port(), data_dir=data_dir, wait=False)
        await loose.ended
        self.assertNotEqual(loose.exit_code, 0)
        self.assertIn(f"chmod 600 {path}", loose.output)
