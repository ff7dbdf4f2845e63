"""Web Push (issue 22): subscriptions, RFC 8291 payloads, VAPID, and what a push endpoint may be.

The end-to-end tests run real arps and ``arpc --command-mode`` with a push service of the test's
own on loopback (``--push-allow`` lets it through): it decrypts what arpc sends with the keys the
test subscribed with, and verifies the VAPID JWT.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server

from arp.client.command import push
from arp.client.command.access import AccessStore, BadRequest
from tests.command_helpers import Api, Workspace, open_stream, sleep, start_command_arpc, wait_events
from tests.helpers import listen_backend, start_arps


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Device:
    """A browser's push subscription keys (what ``PushManager.subscribe`` makes)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.keys = {"p256dh": b64(point), "auth": b64(self.auth)}

    def subscription(self, endpoint: str, **more) -> dict:
        return {"endpoint": endpoint, "keys": self.keys, **more}

    def decrypt(self, body: bytes) -> dict:
        return json.loads(
            http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")
        )


def verify_vapid(header: str, endpoint: str) -> dict:
    """Check a ``vapid t=JWT, k=KEY`` header (RFC 8292): ES256 over the JWT by KEY, ``aud`` the
    endpoint's origin, ``exp`` within 24 hours, ``sub`` a contact; returns the claims."""
    scheme, _, rest = header.partition(" ")
    assert scheme == "vapid", header
    params = dict(p.strip().split("=", 1) for p in rest.split(","))
    head_b64, claims_b64, sig_b64 = params["t"].split(".")
    assert json.loads(unb64(head_b64)) == {"typ": "JWT", "alg": "ES256"}
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(params["k"]))
    sig = unb64(sig_b64)
    assert len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    claims = json.loads(unb64(claims_b64))
    origin = "/".join(endpoint.split("/")[:3])
    assert claims["aud"] == origin, (claims, origin)
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600, claims
    assert claims["sub"].startswith(("mailto:", "https://")), claims
    claims["k"] = params["k"]
    return claims


class PushService(resource.Resource):
    """A push service on loopback: ``/ok/...`` keeps each message (201), ``/gone/...`` answers
    410, ``/down/...`` 503, ``/hang/...`` never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict] = []
        self.hanging: list[server.Request] = []
        self.arrived: defer.Deferred | None = None

    def render_POST(self, request: server.Request) -> bytes | int:
        path = request.path.decode()
        record = {
            "path": path,
            "headers": {
                k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
            },
            "body": request.content.read(),
        }
        self.messages.append(record)
        if self.arrived is not None and not self.arrived.called:
            self.arrived.callback(record)
        if path.startswith("/hang/"):
            self.hanging.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode({"/gone": 410, "/down": 503}.get(path[: path.find("/", 1)], 201))
        return b""

    def close(self) -> None:
        for request in self.hanging:
            if not request.finished:
                request.loseConnection()

    async def next(self, path: str, timeout: float = 20.0) -> dict:
        """The next message to ``path`` (or one that arrived already)."""
        deadline = reactor.seconds() + timeout
        while True:
            for record in self.messages:
                if record["path"] == path and not record.get("taken"):
                    record["taken"] = True
                    return record
            if reactor.seconds() > deadline:
                raise AssertionError(f"no push to {path}: {[m['path'] for m in self.messages]}")
            await sleep(0.05)


# -- RFC 8291's example, and the pieces without sockets --------------------------------------------

# RFC 8291, Section 5 and Appendix A
PLAINTEXT = b"When I grow up, I want to be a watermelon"
AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8w"
    "EqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)


def private_key(text: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(unb64(text), "big"), ec.SECP256R1())


class CryptoTests(unittest.TestCase):
    """The aes128gcm and VAPID pieces, on RFC 8291's example and on fresh keys."""

    def test_rfc8291_example(self):
        """http_ece decrypts RFC 8291's example message with the user agent's keys, and encrypts
        the plaintext to exactly that message with the application server's key and salt."""
        ua = private_key(UA_PRIVATE)
        self.assertEqual(
            http_ece.decrypt(unb64(BODY), private_key=ua, auth_secret=unb64(AUTH), version="aes128gcm"),
            PLAINTEXT,
        )
        body = http_ece.encrypt(
            PLAINTEXT,
            private_key=private_key(AS_PRIVATE),
            dh=unb64(UA_PUBLIC),
            auth_secret=unb64(AUTH),
            salt=unb64(SALT),
            version="aes128gcm",
            rs=4096,
        )
        self.assertEqual(b64(body), BODY)

    def test_encrypt_round_trip_fresh_key_each_time(self):
        """arpc's :func:`push.encrypt` decrypts with the subscription's keys; two messages use two
        server keys (the key id in the header differs)."""
        device = Device()
        one = push.encrypt(b'{"a":1}', unb64(device.keys["p256dh"]), device.auth)
        two = push.encrypt(b'{"a":1}', unb64(device.keys["p256dh"]), device.auth)
        self.assertEqual(device.decrypt(one), {"a": 1})
        self.assertNotEqual(one[21:86], two[21:86])

    def test_vapid_key_kept_and_jwt_verifies(self):
        """The VAPID key is made once, 0600, and kept; its JWT verifies (ES256, aud, exp, sub)."""
        path = Path(self.mktemp())
        path.mkdir()
        keys = push.VapidKeys(path / "push-vapid.pem", "mailto:me@example.com")
        self.assertEqual((path / "push-vapid.pem").stat().st_mode & 0o777, 0o600)
        self.assertEqual(push.VapidKeys(path / "push-vapid.pem").public_key, keys.public_key)
        self.assertEqual(len(unb64(keys.public_key)), 65)
        header = keys.authorization("https://push.example:8443/p/xyz", time.time())
        claims = verify_vapid(header, "https://push.example:8443/p/xyz")
        self.assertEqual(claims["sub"], "mailto:me@example.com")
        self.assertEqual(claims["k"], keys.public_key)

    def test_public_addresses(self):
        private = ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1")
        for address in (
            *private,
            "fe80::1",
            "fc00::1",
            "0.0.0.0",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ):
            self.assertFalse(push.public_address(address), address)
        for address in ("8.8.8.8", "142.250.1.1", "2a00:1450:4001::1"):
            self.assertTrue(push.public_address(address), address)

    def test_allow_prefix_checked(self):
        self.assertEqual(push.check_allow_prefix("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/")
        for bad in ("127.0.0.1", "ftp://x/", "http://10.0.0.1"):
            self.assertRaises(ValueError, push.check_allow_prefix, bad)


class Grant:
    def __init__(self, token_id: str, admin: bool = False) -> None:
        self.id = token_id
        self.admin = admin

    def allows(self, scope: str) -> bool:
        return self.admin or scope != "admin"


def resolver(table: dict[str, list[str]]):
    def resolve(_reactor, host: str, _port: int) -> defer.Deferred:
        if host in table:
            return defer.succeed(table[host])
        try:
            return defer.succeed([str(__import__("ipaddress").ip_address(host))])
        except ValueError:
            return defer.fail(OSError(f"{host}: no such host"))

    return resolve


class SubscriptionTests(unittest.TestCase):
    """Bad input, the per-token cap and the address rules, without sockets."""

    def setUp(self):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.access = AccessStore(self.dir, self.clock)
        self.owner = self.access.grants[next(iter(self.access.grants))]
        table = {"push.example": ["142.250.1.1"], "rebind.example": ["142.250.1.1", "10.0.0.7"]}
        self.push = push.PushService(self.clock, self.dir, self.access, resolve=resolver(table))
        self.device = Device()

    def subscribe(self, data, grant=None) -> tuple:
        return self.successResultOf(self.push.subscribe(data, grant or self.owner))

    def refused(self, data, grant=None) -> str:
        failure = self.failureResultOf(self.push.subscribe(data, grant or self.owner), BadRequest)
        self.assertEqual(failure.value.status, 400)
        return failure.value.message

    def test_malformed_subscriptions_refused_with_reason_nothing_stored(self):
        ok = self.device.subscription("https://push.example/x")
        cases = {
            "a subscription is a JSON object": [],
            "endpoint must be": {"keys": self.device.keys},
            "https:// URL": dict(ok, endpoint="http://push.example/x"),
            "too long": dict(ok, endpoint="https://push.example/" + "x" * 3000),
            "keys must be an object": dict(ok, keys="abc"),
            "keys.p256dh must be a P-256": dict(ok, keys={"p256dh": b64(b"\x04" + b"1" * 64), "auth": AUTH}),
            "keys.auth must be 16 bytes": dict(ok, keys={**self.device.keys, "auth": b64(b"short")}),
            "events must be a non-empty list": dict(ok, events=["approval", "mining"]),
            "with a host name": dict(ok, endpoint="https://user:pw@push.example/x"),
        }  # fmt: skip
        for reason, data in cases.items():
            self.assertIn(reason, self.refused(data))
        self.assertIn("not a base64url string", self.refused(dict(ok, keys={"p256dh": "!!", "auth": AUTH})))
        self.assertEqual(self.push.subscriptions, {})
        self.assertFalse((self.dir / "push-subscriptions.json").exists())

    def test_private_addresses_refused(self):
        """Loopback, private and link-local endpoints, and a name that resolves to one, are refused."""
        for endpoint in ("https://127.0.0.1/x", "https://10.0.0.1/x", "https://[::1]/x",
                         "https://169.254.169.254/latest", "https://rebind.example/x"):  # fmt: skip
            self.assertIn("private, loopback or link-local", self.refused(self.device.subscription(endpoint)))
        self.assertIn("does not resolve", self.refused(self.device.subscription("https://nowhere.example/x")))
        self.assertEqual(self.push.subscriptions, {})

    def test_subscribe_list_delete_and_same_endpoint_updates(self):
        created, view = self.subscribe(
            self.device.subscription("https://push.example/x", events=["approval"])
        )
        self.assertTrue(created)
        self.assertEqual(view["endpoint"], "https://push.example/x")
        self.assertEqual(view["events"], ["approval"])
        self.assertEqual(view["token"]["id"], self.owner.id)
        again, same = self.subscribe(self.device.subscription("https://push.example/x"))
        self.assertFalse(again)
        self.assertEqual(same["id"], view["id"])
        self.assertEqual(same["events"], list(push.EVENTS))
        self.assertEqual([s["id"] for s in self.push.listing(self.owner)], [view["id"]])
        # kept across restarts
        reloaded = push.PushService(self.clock, self.dir, self.access)
        self.assertEqual(list(reloaded.subscriptions), [view["id"]])
        self.assertNotIn(view["id"], [s["id"] for s in self.push.listing(Grant("other"))])
        self.assertRaises(BadRequest, self.push.unsubscribe, view["id"], Grant("other"))
        self.assertEqual(self.push.unsubscribe(view["id"], self.owner), {"deleted": view["id"]})
        self.assertEqual(self.push.listing(self.owner), [])

    def test_thousand_subscriptions_from_one_token_capped(self):
        """1,000 subscriptions from one token: the first MAX_PER_TOKEN are kept, every other is
        refused with a reason, and the store holds no more."""
        reasons = set()
        for i in range(1000):
            d = self.push.subscribe(self.device.subscription(f"https://push.example/{i}"), self.owner)
            if i < push.MAX_PER_TOKEN:
                self.assertTrue(self.successResultOf(d)[0])
            else:
                reasons.add(self.failureResultOf(d, BadRequest).value.message)
        self.assertEqual(len(self.push.subscriptions), push.MAX_PER_TOKEN)
        self.assertEqual(len(reasons), 1)
        self.assertIn("already has", reasons.pop())

    def test_revoked_token_loses_its_subscriptions(self):
        phone, _ = self.access.create({"name": "phone", "scopes": ["view", "approve"]})
        _, view = self.subscribe(self.device.subscription("https://push.example/p"), phone)
        self.assertEqual(view["token"], {"id": phone.id, "name": "phone"})
        self.access.revoke(phone.id)
        self.assertEqual(self.push.listing(self.owner), [])
        self.assertEqual(self.push.subscriptions, {})

    def test_delivery_connects_only_to_the_public_address_it_checked(self):
        """On delivery the host is resolved again: a name that now resolves to a private address
        (DNS rebinding) gets no connection at all; a public one is connected to by the address
        that was checked, on 443, and over TLS."""
        from twisted.internet.testing import MemoryReactorClock

        table = {"push.example": ["142.250.1.1"]}
        memory = MemoryReactorClock()
        service = push.PushService(memory, self.dir, self.access, resolve=resolver(table))
        self.successResultOf(
            service.subscribe(self.device.subscription("https://push.example/x"), self.owner)
        )
        [entry] = service.subscriptions.values()
        table["push.example"] = ["10.0.0.7"]
        self.successResultOf(service.deliver(entry, b"{}", {"TTL": "60"}))
        self.assertEqual(memory.tcpClients, [])
        self.assertIn("push.example", service.failing)
        table["push.example"] = ["2a00:1450:4001::1", "142.250.1.1"]
        service.deliver(entry, b"{}", {"TTL": "60"})
        [(host, port, factory, _, _)] = memory.tcpClients
        self.assertEqual((host, port), ("142.250.1.1", 443))  # IPv4 first
        self.assertIn("TLS", type(factory._wrappedFactory).__name__)
        connector = memory.connectors[0]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(memory.tcpClients[1][:2], ("2a00:1450:4001::1", 443))  # then the next checked one
        memory.advance(push.REQUEST_TIMEOUT + 1)  # the delivery times out; nothing is left waiting

    def test_payload_has_no_secret_no_client_id_no_url(self):
        class Session:
            id = "a" * 32
            record = {"executor": "Claude", "projectPath": "/home/me/proj", "status": "running"}

        record = {
            "id": "b" * 16,
            "kind": "permission",
            "tool": "Bash",
            "summary": {"command": "rm -rf build", "cwd": "/home/me/proj"},
            "key": "secret-key",
            "deadline": "2030-01-01T00:00:00Z",
        }
        body = push.push_payload("approval", Session(), record)
        self.assertEqual(body["event"], "approval")
        self.assertEqual(body["approvalId"], "b" * 16)
        self.assertIn("rm -rf build", body["body"])
        self.assertIn("/home/me/proj", body["body"])
        data = push.encode_payload(body)
        self.assertNotIn(b"secret-key", data)
        self.assertNotIn(b"http", data)
        Session.record["status"] = "cancelled"
        self.assertIsNone(push.push_payload("session_finished", Session(), None))
        Session.record.update(status="failed", error="x" * 10000)
        self.assertLess(
            len(push.encode_payload(push.push_payload("session_finished", Session(), None))), 3000
        )


# -- end to end --------------------------------------------------------------------------------------


class PushEndToEndTests(unittest.TestCase):
    """arps, ``arpc --command-mode --push-allow`` and the test's own push service on loopback."""

    timeout = 120

    async def _setup(self) -> Api:
        self.service = PushService()
        self.addCleanup(self.service.close)
        port = listen_backend(self, server.Site(self.service))
        self.base = f"http://127.0.0.1:{port}"
        self.ws = Workspace(self)
        self.relay = await start_arps(self)
        self.arpc = await start_command_arpc(
            self, self.relay, self.ws, "--permission-mode", "default", "--push-allow", self.base + "/"
        )
        self.api = Api(self, self.relay, self.arpc.token, self.arpc.access)
        return self.api

    async def _approval(self, prompt: str = "ASK_BASH one") -> tuple[str, dict]:
        code, session = await self.api.post(
            "/api/sessions", {"executor": "Claude", "prompt": prompt, "projectPath": str(self.ws.project)}
        )
        self.assertEqual(code, 201, session)
        for _ in range(400):
            code, body = await self.api.get("/api/approvals?status=pending")
            found = [a for a in body["approvals"] if a["sessionId"] == session["id"]]
            if found:
                return session["id"], found[0]
            await sleep(0.05)
        raise AssertionError("no approval")

    async def test_delivery_decrypts_jwt_verifies_ttl_urgency_and_410_removes(self):
        """An approval reaches the subscribed device: the payload decrypts with its keys and names
        what runs where (no secret, no client id, no URL), the VAPID JWT verifies with the key
        ``/api/push/key`` gives, TTL and Urgency are set; the session's end is pushed too; a
        410 from the push service removes that subscription; a private address is refused."""
        api = await self._setup()
        code, key = await api.get("/api/push/key")
        self.assertEqual(code, 200, key)
        self.assertEqual(key["events"], ["approval", "question", "finished", "failed"])
        phone, gone = Device(), Device()
        code, made = await api.post("/api/push/subscriptions", phone.subscription(self.base + "/ok/phone"))
        self.assertEqual(code, 201, made)
        code, made_gone = await api.post(
            "/api/push/subscriptions", gone.subscription(self.base + "/gone/old")
        )
        self.assertEqual(code, 201, made_gone)
        code, listed = await api.get("/api/push/subscriptions")
        self.assertEqual(
            {s["id"]: s["endpoint"] for s in listed["subscriptions"]},
            {made["id"]: self.base + "/ok/phone", made_gone["id"]: self.base + "/gone/old"},
        )
        self.assertTrue(all(s["token"]["name"] for s in listed["subscriptions"]), listed)
        # a private address without --push-allow
        code, err = await api.post("/api/push/subscriptions", phone.subscription("https://127.0.0.1:9/x"))
        self.assertEqual(code, 400, err)
        self.assertIn("private, loopback or link-local", err["error"])

        sid, approval = await self._approval()
        message = await self.service.next("/ok/phone")
        headers = message["headers"]
        self.assertEqual(headers["content-encoding"], "aes128gcm")
        self.assertEqual(headers["urgency"], "high")
        self.assertGreater(int(headers["ttl"]), 0)
        claims = verify_vapid(headers["authorization"], self.base + "/ok/phone")
        self.assertEqual(claims["k"], key["publicKey"])
        payload = phone.decrypt(message["body"])
        self.assertEqual(payload["event"], "approval")
        self.assertEqual(payload["sessionId"], sid)
        self.assertEqual(payload["approvalId"], approval["id"])
        self.assertIn("rm -rf build", payload["body"])
        self.assertIn(str(self.ws.project), payload["body"])
        raw = json.dumps(payload)
        for secret in (self.arpc.token, self.arpc.access, "http://", "https://"):
            self.assertNotIn(secret, raw)
        # the 410 removed the other subscription
        await self.service.next("/gone/old")
        for _ in range(200):
            code, listed = await api.get("/api/push/subscriptions")
            if len(listed["subscriptions"]) == 1:
                break
            await sleep(0.05)
        self.assertEqual([s["id"] for s in listed["subscriptions"]], [made["id"]])
        # answered: the session finishes, and that is pushed with a normal urgency
        code, _ = await api.post(f"/api/sessions/{sid}/approvals/{approval['id']}", {"decision": "allow"})
        self.assertEqual(code, 200)
        finished = await self.service.next("/ok/phone")
        self.assertEqual(finished["headers"]["urgency"], "normal")
        self.assertEqual(phone.decrypt(finished["body"])["event"], "finished")

    async def test_bad_input_over_http_and_revocation(self):
        """Malformed subscriptions get 400 with the reason; a device token's subscriptions are
        its own, listed with its name, and go when it is revoked; the per-token cap holds."""
        api = await self._setup()
        device = Device()
        for body, reason in (
            ({"endpoint": "http://push.example/x", "keys": device.keys}, "https://"),
            ({"endpoint": self.base + "/ok/a", "keys": {"p256dh": "x", "auth": "y"}}, "p256dh"),
            ({"endpoint": self.base + "/ok/a"}, "keys must be"),
            ("just a string", "JSON object"),
        ):
            code, err = await api.post("/api/push/subscriptions", body)
            self.assertEqual(code, 400, err)
            self.assertIn(reason, err["error"])
        code, err = await api.call("POST", "/api/push/subscriptions", raw=b"{not json")
        self.assertEqual(code, 400, err)
        code, phone = await api.post("/api/tokens", {"name": "my phone", "scopes": ["view"]})
        viewer = Api(self, self.relay, self.arpc.token, phone["token"])
        codes = []
        for i in range(push.MAX_PER_TOKEN + 2):
            code, body = await viewer.post(
                "/api/push/subscriptions", device.subscription(f"{self.base}/ok/{i}")
            )
            codes.append(code)
        self.assertEqual(codes, [201] * push.MAX_PER_TOKEN + [400, 400])
        self.assertIn("already has", body["error"])
        code, mine = await viewer.get("/api/push/subscriptions")
        self.assertEqual(len(mine["subscriptions"]), push.MAX_PER_TOKEN)
        self.assertEqual({s["token"]["name"] for s in mine["subscriptions"]}, {"my phone"})
        code, gone = await viewer.call("DELETE", f"/api/push/subscriptions/{mine['subscriptions'][0]['id']}")
        self.assertEqual((code, gone), (200, {"deleted": mine["subscriptions"][0]["id"]}))
        code, _ = await api.delete(f"/api/tokens/{phone['id']}")
        self.assertEqual(code, 200)
        code, left = await api.get("/api/push/subscriptions")
        self.assertEqual(left["subscriptions"], [])

    async def test_hanging_and_failing_push_services_delay_nothing(self):
        """A push service that never answers and one that answers 503: the approval still shows
        at once, the agent proceeds when answered and the session completes, with the hanging
        requests still open; the subscriptions are kept (5xx is not expiry)."""
        api = await self._setup()
        for name in ("hang", "down"):
            for i in range(3):
                code, _ = await api.post(
                    "/api/push/subscriptions", Device().subscription(f"{self.base}/{name}/{i}")
                )
                self.assertEqual(code, 201)
        sid, approval = await self._approval()
        stream = await open_stream(self, self.relay, self.arpc.token, sid, since=0, access=self.arpc.access)
        await wait_events(stream, lambda events: any(e.get("kind") == "approval" for e in events))
        await self.service.next("/hang/0")
        code, _ = await api.post(f"/api/sessions/{sid}/approvals/{approval['id']}", {"decision": "allow"})
        self.assertEqual(code, 200)
        done = await api.wait_status(sid, ("completed", "failed"))
        self.assertEqual(done["status"], "completed")
        await stream.closed  # the stream carried the rest and ended with the session
        statuses = [e.get("status") for e in stream.events if e.get("kind") == "status"]
        self.assertEqual(statuses[-1:], ["completed"], [e.get("kind") for e in stream.events])
        self.assertTrue(any(not r.finished for r in self.service.hanging))
        code, listed = await api.get("/api/push/subscriptions")
        self.assertEqual(len(listed["subscriptions"]), 6)
