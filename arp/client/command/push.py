"""Web Push (RFC 8030) to the consoles' service workers: approvals, questions, finished sessions.

A phone's console subscribes with ``POST /api/push/subscriptions``; arpc then sends each event it
asked for to the push service named in the subscription (Google's, Mozilla's, Apple's, ...), which
wakes the console's service worker (``static/sw.js``) even when no page is open.

- **Keys.**  arpc keeps a VAPID key pair (RFC 8292) in its data dir (``push-vapid.pem``, 0600);
  ``GET /api/push/key`` gives the public key the browser subscribes with.  Payloads are encrypted
  for the subscription's own keys (RFC 8291, ``aes128gcm``) with ``http_ece``; the JWT is signed
  with ``py_vapid``.  A payload carries the event, the session and approval ids and the words to
  show, never a secret, a client id or a URL (under ``--domain`` the origin itself holds the client
  id): the service worker builds its links from its own origin.
- **Who.**  Each subscription belongs to the access token that made it: listed with its device
  name, removed when that token is revoked or expires, capped per token (:data:`MAX_PER_TOKEN`).
- **Not an open proxy.**  The endpoint is a URL chosen by whoever subscribes, so arpc would
  otherwise make requests into its own network for them: only ``https``, and only to public
  addresses, checked when subscribing and again on every delivery (after DNS resolution; the
  connection goes to the address that was checked, so a name cannot be re-pointed in between);
  no redirects, a size and a time limit.  ``--push-allow PREFIX`` lets endpoints that start with
  PREFIX through (a test's or a self-hosted push service on a private address; http included).
- **Never in the way.**  An event is queued and sent later; a push service that hangs or fails
  delays nothing but its own deliveries (:data:`MAX_IN_FLIGHT` at a time, :data:`QUEUE` waiting,
  :data:`REQUEST_TIMEOUT` each).  404 and 410 drop the subscription (it expired).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from arp.client.command.access import BadRequest, _write_private, iso

EVENTS = ("approval", "question", "finished", "failed")
MAX_PER_TOKEN = 10  # subscriptions one access token may keep (a phone, a tablet, browsers...)
MAX_TOTAL = 200
MAX_ENDPOINT = 2048
MAX_PAYLOAD = 3000  # bytes of JSON before encryption (a push message is at most 4096 on the wire)
MAX_TEXT = 600  # characters of a command, a path or a question in a payload
MAX_RESPONSE = 64 * 1024  # bytes of a push service's answer read (the rest is dropped)
REQUEST_TIMEOUT = 10.0
MAX_IN_FLIGHT = 8
QUEUE = 200  # deliveries waiting while MAX_IN_FLIGHT are in flight; the oldest are dropped
JWT_LIFETIME = 12 * 3600
FINISHED_TTL = 24 * 3600
DEFAULT_CONTACT = "mailto:arpc@localhost"


_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class PushRefused(Exception):
    """A push endpoint arpc will not contact (a private address, a redirect...)."""


def b64url(data: bytes) -> str:
    """base64url without padding (as the Push API and JWTs write it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url, with or without padding (ValueError if it is not base64url)."""
    if not isinstance(text, str) or not text or len(text) > 200 or not _B64URL.fullmatch(text):
        raise ValueError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as e:
        raise ValueError(f"not base64url ({e})")


def public_address(address: str) -> bool:
    """Whether an IP address is on the public internet (not loopback, private, link-local...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def allowed_prefix(endpoint: str, prefixes: Sequence[str]) -> bool:
    """Whether ``--push-allow`` lets ``endpoint`` through."""
    return any(endpoint.startswith(p) for p in prefixes)


def check_allow_prefix(prefix: str) -> str:
    """Validate a ``--push-allow`` prefix: an http(s) URL with a host, up to its path."""
    parts = urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL prefix, e.g. https://push.lan/")
    if not parts.path.startswith("/"):
        # http://10.0.0.1 would let http://10.0.0.123 through too
        raise ValueError("must end its host part with a /, e.g. http://127.0.0.1:8080/")
    return prefix


def _resolve(reactor: Any, host: str, port: int) -> Deferred:
    """Every address ``host`` resolves to (in a thread: getaddrinfo)."""
    try:
        ipaddress.ip_address(host)
        return succeed([host])
    except ValueError:
        pass

    def lookup() -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(info[4][0] for info in infos))

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), lookup)


class PublicOnlyEndpoint:
    """Connects to ``host`` only if every address it resolves to is public, and then to the
    address that was checked (TLS still verifies ``host``'s certificate)."""

    def __init__(self, reactor: Any, host: str, port: int, tls: bool, resolve: Callable = _resolve) -> None:
        self.reactor, self.host, self.port, self.tls, self.resolve = reactor, host, port, tls, resolve

    def connect(self, factory: Any) -> Deferred:
        def checked(addresses: list[str]) -> Deferred:
            bad = [a for a in addresses if not public_address(a)]
            if not addresses or bad:
                raise PushRefused(f"{self.host} resolves to a private address ({', '.join(bad) or 'none'})")
            # every address was checked; try them in turn (IPv4 first: many hosts have no IPv6 route)
            ordered = sorted(addresses[:4], key=lambda a: ":" in a)
            return self._try(ordered, factory)

        return self.resolve(self.reactor, self.host, self.port).addCallback(checked)

    def _try(self, addresses: list[str], factory: Any) -> Deferred:
        address, rest = addresses[0], addresses[1:]
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = kind(self.reactor, address, self.port, timeout=REQUEST_TIMEOUT)
        if self.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        d = endpoint.connect(factory)
        if rest:
            d.addErrback(lambda _: self._try(rest, factory))
        return d


class PublicOnlyEndpoints:
    """An ``IAgentEndpointFactory`` whose connections reach public addresses only."""

    def __init__(self, reactor: Any, resolve: Callable = _resolve) -> None:
        self.reactor = reactor
        self.resolve = resolve

    def endpointForURI(self, uri: Any) -> PublicOnlyEndpoint:
        if uri.scheme != b"https":
            raise PushRefused("push endpoints must be https")
        return PublicOnlyEndpoint(self.reactor, uri.host.decode("idna"), uri.port, True, self.resolve)


class AllowedEndpoints:
    """Endpoints for ``--push-allow``ed URLs: any address, http or https."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna")
        endpoint: Any = HostnameEndpoint(self.reactor, host, uri.port, timeout=REQUEST_TIMEOUT)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


class _Capped(Protocol):
    """Reads a response body up to :data:`MAX_RESPONSE` bytes, then drops the connection."""

    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE and self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback(None)


# -- keys and payloads ----------------------------------------------------------------------------


class VapidKeys:
    """arpc's VAPID key pair (RFC 8292), kept in ``push-vapid.pem`` in the data dir."""

    def __init__(self, path: Path, contact: str = DEFAULT_CONTACT) -> None:
        self.path = path
        self.contact = contact
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise ValueError(f"{path}: not a P-256 private key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_private(path, pem.decode("ascii"))
        self.key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key = b64url(raw)

    def authorization(self, endpoint: str, now: float) -> str:
        """The ``Authorization: vapid t=..., k=...`` header for a request to ``endpoint``."""
        from py_vapid import Vapid02

        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(now) + JWT_LIFETIME,
            "sub": self.contact,
        }
        return Vapid02(private_key=self.key).sign(claims)["Authorization"]


def encrypt(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """``payload`` encrypted for one subscription (RFC 8291, aes128gcm, a fresh key each time)."""
    import http_ece

    return http_ece.encrypt(
        payload,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=p256dh,
        auth_secret=auth,
        version="aes128gcm",
    )


def _clip(value: Any, limit: int = MAX_TEXT) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def approval_words(agent: str, record: dict) -> tuple[str, str]:
    """The title and body of an approval's or a question's notification (what and where)."""
    summary = record.get("summary") or {}
    tool = record.get("tool") or "a tool"
    if record.get("kind") == "question":
        questions = [q.get("question") for q in record.get("questions") or [] if isinstance(q, dict)]
        return f"{agent} asks", _clip(" / ".join(q for q in questions if q) or summary.get("title") or tool)
    if summary.get("command"):
        where = summary.get("cwd")
        body = f"Runs: {summary['command']}" + (f"\nin {where}" if where else "")
    elif summary.get("path"):
        body = f"{tool}: {summary['path']}"
    else:
        body = str(summary.get("title") or tool)
    return f"{agent} wants to run {tool}", _clip(body)


def push_payload(event: str, session: Any, approval: dict | None) -> dict[str, Any] | None:
    """The JSON a service worker gets for one manager event (None: nothing to push)."""
    record = session.record
    agent = record.get("executor") or "The agent"
    project = record.get("projectPath") or ""
    body: dict[str, Any] = {"sessionId": session.id, "agent": agent, "project": _clip(project, 300)}
    if event == "approval" and approval is not None:
        kind = "question" if approval.get("kind") == "question" else "approval"
        title, text = approval_words(agent, approval)
        body.update(
            event=kind,
            approvalId=approval.get("id"),
            title=title,
            body=text,
            tool=approval.get("tool"),
            deadline=approval.get("deadline"),
        )
        return body
    if event == "session_finished":
        status = record.get("status")
        if status == "completed":
            body.update(event="finished", title=f"{agent} finished", body=_clip(project, 300))
        elif status == "failed":
            why = record.get("error") or "the session failed"
            body.update(event="failed", title=f"{agent} failed", body=_clip(why, 300))
        else:
            return None  # cancelled: by whoever is looking
        return body
    return None


def encode_payload(body: dict[str, Any]) -> bytes:
    """The payload's JSON, shortened to fit a push message."""
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_PAYLOAD:
        body = dict(body, body=_clip(body.get("body"), 200), project=_clip(body.get("project"), 100))
        data = json.dumps(body, separators=(",", ":")).encode()
    return data


# -- subscriptions --------------------------------------------------------------------------------


def check_subscription(data: Any, prefixes: Sequence[str]) -> dict[str, Any]:
    """A valid subscription from a request body, or :class:`BadRequest` (400) naming the reason."""
    if not isinstance(data, dict):
        raise BadRequest(400, 'a subscription is a JSON object: {"endpoint", "keys": {"p256dh", "auth"}}')
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BadRequest(400, "endpoint must be the push service's URL (PushSubscription.endpoint)")
    if len(endpoint) > MAX_ENDPOINT:
        raise BadRequest(400, f"endpoint is too long: at most {MAX_ENDPOINT} characters")
    parts = urlsplit(endpoint)
    if not allowed_prefix(endpoint, prefixes):
        if parts.scheme != "https":
            raise BadRequest(400, "endpoint must be an https:// URL")
        if not parts.hostname or parts.username or parts.password:
            raise BadRequest(400, "endpoint must be an https:// URL with a host name")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise BadRequest(400, "endpoint has a bad port")
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise BadRequest(400, "keys must be an object with p256dh and auth (PushSubscription.toJSON())")
    try:
        p256dh = unb64url(keys.get("p256dh"))
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        if len(p256dh) != 65:
            raise ValueError("not an uncompressed point")
    except (ValueError, TypeError) as e:
        raise BadRequest(400, f"keys.p256dh must be a P-256 public key, base64url ({e})")
    try:
        auth = unb64url(keys.get("auth"))
    except ValueError as e:
        raise BadRequest(400, f"keys.auth must be 16 bytes, base64url ({e})")
    if len(auth) != 16:
        raise BadRequest(400, "keys.auth must be 16 bytes, base64url")
    events = data.get("events", list(EVENTS))
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) for e in events)
        or set(events) - set(EVENTS)
    ):
        raise BadRequest(400, f"events must be a non-empty list of: {', '.join(EVENTS)}")
    return {
        "endpoint": endpoint,
        "keys": {"p256dh": b64url(p256dh), "auth": b64url(auth)},
        "events": [e for e in EVENTS if e in events],
    }


class PushService:
    """The subscriptions of one arpc and their deliveries."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        data_dir: Path,
        access: Any,
        manager: Any = None,
        allow: Sequence[str] = (),
        contact: str = DEFAULT_CONTACT,
        agent: Any = None,
        resolve: Callable = _resolve,
    ) -> None:
        self.reactor = reactor
        self.access = access
        self.manager = manager
        self.allow = list(allow)
        self.resolve = resolve
        self.keys = VapidKeys(Path(data_dir) / "push-vapid.pem", contact)
        self.path = Path(data_dir) / "push-subscriptions.json"
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self._load()
        self.prune()  # e.g. after --revoke-all-tokens
        from arp.twisted_private import quiet_connection_pool

        pool = quiet_connection_pool(reactor, persistent=False)
        self.agent = agent or Agent.usingEndpointFactory(reactor, PublicOnlyEndpoints(reactor, resolve), pool)
        self.allowed_agent = agent or Agent.usingEndpointFactory(reactor, AllowedEndpoints(reactor), pool)
        self.queue: deque[tuple[str, bytes, dict[str, Any]]] = deque()
        self.in_flight = 0
        self.failing: set[str] = set()  # push service origins that failed (logged once each)
        self.sent = 0
        self.dropped = 0
        self.stopped = False
        if manager is not None:
            manager.listeners.append(self.event)

    # -- the store
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warn("ignoring {path}: {error}", path=self.path, error=e)
            return
        for entry in data.get("subscriptions", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                self.subscriptions[entry["id"]] = entry

    def save(self) -> None:
        """Write every subscription now."""
        body = {"version": 1, "subscriptions": list(self.subscriptions.values())}
        _write_private(self.path, json.dumps(body, indent=1) + "\n")

    def _grant_active(self, token_id: str) -> bool:
        grant = self.access.grants.get(token_id)
        return grant is not None and grant.state(self.access.clock.seconds()) == "active"

    def prune(self) -> None:
        """Drop the subscriptions of revoked, expired or deleted tokens."""
        gone = [sid for sid, s in self.subscriptions.items() if not self._grant_active(s.get("token", ""))]
        for sid in gone:
            del self.subscriptions[sid]
        if gone:
            self.save()
            self.log.info("{n} push subscription(s) of ended tokens removed", n=len(gone))

    def view(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A subscription as the API lists it (no keys)."""
        grant = self.access.grants.get(entry.get("token", ""))
        return {
            "id": entry["id"],
            "endpoint": entry["endpoint"],
            "events": entry["events"],
            "token": {"id": entry.get("token"), "name": grant.name if grant else None},
            "createdAt": entry.get("createdAt"),
            "lastDeliveredAt": entry.get("lastDeliveredAt"),
        }

    def listing(self, grant: Any) -> list[dict[str, Any]]:
        """The subscriptions ``grant`` may see: all for admin, else its own."""
        self.prune()
        mine = [s for s in self.subscriptions.values() if grant.allows("admin") or s.get("token") == grant.id]
        return [self.view(s) for s in sorted(mine, key=lambda s: s.get("createdAt") or "")]

    def subscribe(self, data: Any, grant: Any) -> Deferred:
        """Check and store a subscription; a Deferred of ``(created, view)`` (BadRequest if refused)."""
        try:
            entry = check_subscription(data, self.allow)
        except BadRequest as e:
            return fail(e)
        self.prune()
        same = [
            s
            for s in self.subscriptions.values()
            if s["endpoint"] == entry["endpoint"] and s["token"] == grant.id
        ]
        if not same:
            if sum(1 for s in self.subscriptions.values() if s.get("token") == grant.id) >= MAX_PER_TOKEN:
                return _failed(
                    400,
                    f"this device already has {MAX_PER_TOKEN} push subscriptions: delete one "
                    "(DELETE /api/push/subscriptions/{id}) first",
                )
            if len(self.subscriptions) >= MAX_TOTAL:
                return _failed(400, f"arpc keeps at most {MAX_TOTAL} push subscriptions")
        d = self._check_address(entry["endpoint"])

        def store(_: object) -> tuple[bool, dict[str, Any]]:
            if same:
                same[0].update(keys=entry["keys"], events=entry["events"])
                self.save()
                return False, self.view(same[0])
            if sum(1 for s in self.subscriptions.values() if s.get("token") == grant.id) >= MAX_PER_TOKEN:
                raise BadRequest(400, f"this device already has {MAX_PER_TOKEN} push subscriptions")
            entry.update(id=secrets.token_hex(8), token=grant.id, createdAt=iso(self.reactor.seconds()))
            self.subscriptions[entry["id"]] = entry
            self.save()
            self.log.info(
                "push subscription {id} added by token {token} ({host})",
                id=entry["id"],
                token=grant.id,
                host=urlsplit(entry["endpoint"]).hostname,
            )
            return True, self.view(entry)

        return d.addCallback(store)

    def _check_address(self, endpoint: str) -> Deferred:
        """Refuse (400) an endpoint whose host is, or resolves to, a non-public address."""
        if allowed_prefix(endpoint, self.allow):
            return succeed(None)
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        d = self.resolve(self.reactor, host, parts.port or 443)

        def checked(addresses: list[str]) -> None:
            bad = [a for a in addresses if not public_address(a)]
            if bad or not addresses:
                raise BadRequest(
                    400,
                    f"endpoint {host} is a private, loopback or link-local address "
                    f"({', '.join(bad) or 'none'}); arpc --push-allow PREFIX lets a push service "
                    "there through",
                )

        def unresolved(failure: Failure) -> None:
            if failure.check(BadRequest):
                return failure  # type: ignore[return-value]
            raise BadRequest(400, f"endpoint host {host} does not resolve ({failure.getErrorMessage()})")

        return d.addCallback(checked).addErrback(unresolved)

    def unsubscribe(self, sub_id: str, grant: Any) -> dict[str, Any]:
        """Delete a subscription (its own token's, or any for admin)."""
        entry = self.subscriptions.get(sub_id)
        if entry is None or not (grant.allows("admin") or entry.get("token") == grant.id):
            raise BadRequest(404, f"no push subscription {sub_id!r}")
        del self.subscriptions[sub_id]
        self.save()
        return {"deleted": sub_id}

    # -- deliveries
    def event(self, event: str, session: Any, approval: dict | None) -> None:
        """A manager event: queue a push to every subscription that asked for it (returns at once)."""
        if not self.subscriptions or self.stopped:
            return
        body = push_payload(event, session, approval)
        if body is None:
            return
        self.prune()
        data = encode_payload(body)
        urgent = body["event"] in ("approval", "question")
        timeout = getattr(self.manager, "approval_timeout", 1800.0)
        headers = {
            "TTL": str(int(min(timeout, FINISHED_TTL)) if urgent else FINISHED_TTL),
            "Urgency": "high" if urgent else "normal",
        }
        for sid, entry in self.subscriptions.items():
            if body["event"] in entry.get("events", EVENTS):
                self._enqueue(sid, data, headers)

    def _enqueue(self, sid: str, data: bytes, headers: dict[str, Any]) -> None:
        if len(self.queue) >= QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append((sid, data, headers))
        self._next()

    def _next(self) -> None:
        while self.queue and self.in_flight < MAX_IN_FLIGHT and not self.stopped:
            sid, data, headers = self.queue.popleft()
            entry = self.subscriptions.get(sid)
            if entry is None:
                continue
            self.in_flight += 1
            d = self.deliver(entry, data, headers)
            d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self.in_flight -= 1
        self._next()

    def deliver(self, entry: dict[str, Any], data: bytes, headers: dict[str, Any]) -> Deferred:
        """Send one encrypted message to one subscription; never fails (problems are logged)."""
        endpoint = entry["endpoint"]
        keys = entry["keys"]
        try:
            body = encrypt(data, unb64url(keys["p256dh"]), unb64url(keys["auth"]))
            authorization = self.keys.authorization(endpoint, time.time())
        except Exception as e:
            self.log.warn("push subscription {id}: cannot encrypt ({error})", id=entry["id"], error=e)
            return succeed(None)
        raw = {
            b"content-type": [b"application/octet-stream"],
            b"content-encoding": [b"aes128gcm"],
            b"authorization": [authorization.encode("ascii")],
            b"user-agent": [b"arpc-push"],
            **{k.lower().encode(): [v.encode()] for k, v in headers.items()},
        }
        agent = self.allowed_agent if allowed_prefix(endpoint, self.allow) else self.agent
        try:
            d = agent.request(b"POST", endpoint.encode(), Headers(raw), FileBodyProducer(BytesIO(body)))
        except Exception as e:  # e.g. PushRefused from the endpoint factory
            d = Deferred()
            d.errback(Failure(e))
        d.addTimeout(REQUEST_TIMEOUT, self.reactor)

        def answered(response: Any) -> Deferred:
            done: Deferred = Deferred()
            response.deliverBody(_Capped(done))
            done.addTimeout(REQUEST_TIMEOUT, self.reactor)
            done.addErrback(lambda _: None)
            return done.addCallback(lambda _: self._answered(entry, response.code))

        d.addCallback(answered)
        d.addErrback(self._failed, entry)
        return d

    def _answered(self, entry: dict[str, Any], code: int) -> None:
        host = urlsplit(entry["endpoint"]).netloc
        if 200 <= code < 300:
            self.sent += 1
            entry["lastDeliveredAt"] = iso(self.reactor.seconds())
            if host in self.failing:
                self.failing.discard(host)
                self.log.info("push service {host} works again", host=host)
            return
        if code in (404, 410):
            if self.subscriptions.pop(entry["id"], None) is not None:
                self.save()
                self.log.info(
                    "push subscription {id} expired ({code} from {host}): removed",
                    id=entry["id"],
                    code=code,
                    host=host,
                )
            return
        self._failed(Failure(OSError(f"HTTP {code}")), entry)

    def _failed(self, failure: Failure, entry: dict[str, Any]) -> None:
        host = urlsplit(entry["endpoint"]).netloc
        if host not in self.failing:
            self.failing.add(host)
            self.log.warn(
                "push to {host} failed ({error}); logged once until it works again",
                host=host,
                error=failure.getErrorMessage() or failure.type.__name__,
            )

    def stop(self) -> None:
        """Send nothing more (queued deliveries are dropped)."""
        self.stopped = True
        self.queue.clear()


def _failed(status: int, message: str) -> Deferred:
    return fail(BadRequest(status, message))
