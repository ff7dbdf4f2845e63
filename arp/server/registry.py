"""Who is registered: client records, retention after a disconnect, and routing by token."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from arp import wire
from arp.control import AuthFailed, BadRegistration, ClientIdInUse, Unavailable
from arp.server.known import KnownClient, KnownClients, key_fingerprint
from arp.server.pool import TunnelPool

#: Spent tunnel serials remembered per registration; serials older than these are all refused.
MAX_SPENT_SERIALS = 1024


@dataclass(frozen=True)
class RelayConfig:
    """The relay's tunables (all times in seconds)."""

    pool_size: int = 5
    max_tunnels: int = 200
    max_clients_per_tenant: int = 0  # ids one tenant may hold here (online or retained); 0: no limit
    retention: float = 300.0
    tunnel_timeout: float = 10.0
    heartbeat: float = 10.0
    tunnel_max_idle: float = 600.0
    surplus_idle: float = 30.0
    public_url: str = "http://{host}:17003"
    tcp_ports: tuple[int, int] | None = None


@dataclass(eq=False)
class ClientRecord:
    """One registered client, online or within retention."""

    client_id: str
    identity: bytes  # the Ed25519 public key pinned to this id
    mode: str
    pool: TunnelPool
    tenant: str = ""
    tunnel_secret: str = ""  # this registration's tunnel key, derived on both ends, never sent
    relay_exchange: bytes = b""  # the relay's X25519 public key for this registration
    tunnel_floor: int = 0  # tunnel serials at or below this one are spent
    tunnel_serials: set = field(default_factory=set)  # spent serials above the floor
    control: object | None = None
    remote_address: str = ""
    connected_since: float = 0.0
    offline_since: float | None = None
    expiry: object | None = None
    remote_port: int = 0
    tcp_listener: object | None = None
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    open_connections: int = 0
    last_error: str = ""
    statuses: dict = field(default_factory=dict)
    # the client's own browser origin (arp/server/origins.py): a host label or a public port
    label: str = ""
    origin_port: int = 0
    origin_listener: object | None = None
    # why it is offline: its owner stopped arpc at this time (None: not on purpose)
    stopped_at: float | None = None
    restored: bool = False  # brought back from the data dir after a relay restart, not yet back

    @property
    def online(self) -> bool:
        return self.control is not None

    def snapshot(self) -> dict:
        """The record as JSON-able data (no secrets)."""
        return {
            "clientId": self.client_id,
            "identity": wire.fingerprint(self.identity),
            "tenant": self.tenant,
            "mode": self.mode,
            "online": self.online,
            "remoteAddress": self.remote_address,
            "connectedSince": self.connected_since,
            "offlineSince": self.offline_since,
            "stoppedAt": self.stopped_at,
            "remotePort": self.remote_port or None,
            "originPort": self.origin_port or None,
            "pool": self.pool.snapshot(),
            "openConnections": self.open_connections,
            "requests": self.requests,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "lastError": self.last_error,
        }


class Registry(Service):
    """The relay's table of clients, keyed by client id (which is also the token)."""

    log = Logger()

    def __init__(
        self,
        config: RelayConfig,
        auth_keys: str | dict[str, str],
        clock: object,
        known: KnownClients | None = None,
    ) -> None:
        """``auth_keys``: the shared auth key, or ``{tenant name: auth key}``; ``known``: the
        opened log of the ids this relay served (:mod:`arp.server.known`), brought back at start."""
        self.config = config
        if isinstance(auth_keys, str):
            auth_keys = {"default": auth_keys}
        if not auth_keys or not all(auth_keys.values()):
            raise ValueError("the relay needs at least one non-empty auth key")
        self.keys = {name: wire.key_bytes(key) for name, key in auth_keys.items()}
        self.clock = clock
        self.clients: dict[str, ClientRecord] = {}
        self.cluster = None  # arp.server.cluster.Cluster with --redis: the other relays
        self.tcp_opener = None  # set by the tap: (record) -> port number, raises BadRegistration
        self.origins = None  # set by the tap: gives each HTTP client its own origin (arp/server/origins.py)
        self.unrouted: dict[int, int] = {}  # statuses of answers that reached no client
        self.retired: dict = {
            "requests": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "hits": 0,
            "misses": 0,
            "timeouts": 0,
            "waits": 0,
            "wait_seconds": 0.0,
            "statuses": {},
        }
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = clock
        self.started_at = time.time()
        self.known = known

    def startService(self) -> None:
        super().startService()
        self._reaper.start(5.0, now=False)
        if self.known is not None:
            self._restore(self.known.known)

    def stopService(self) -> None:
        super().stopService()
        if self._reaper.running:
            self._reaper.stop()
        known, self.known = self.known, None  # a relay that stops still knows its ids when it starts
        if known is not None:
            known.close()
        for record in list(self.clients.values()):
            self._drop(record, "relay stopping")

    def _restore(self, entries: dict[str, KnownClient]) -> None:
        """Bring back the ids this relay served before it restarted, as retained registrations:
        offline, pinned to their identity, on their own origins, for what is left of their
        retention (counted from when they went offline, or from now if they were online)."""
        now = time.time()
        restored = forgotten = 0
        for entry in list(entries.values()):
            key = self.keys.get(entry.tenant)
            since = entry.offline_since if entry.offline_since is not None else now
            left = self.config.retention - (now - since)
            if key is None or key_fingerprint(key) != entry.key:
                forgotten += 1  # its owner could not register again with the key it has
            elif left > 0 and entry.client_id not in self.clients:
                record = self._new_record(entry.client_id, entry.identity, entry.mode, entry.tenant)
                record.remote_port = entry.remote_port
                if entry.mode == "http" and self.origins is not None:
                    try:
                        self.origins.open_for(record)
                    except (BadRegistration, Unavailable):
                        self.known.gone(entry.client_id)
                        continue
                record.offline_since = since
                record.stopped_at = entry.stopped_at
                record.restored = True
                record.expiry = self.clock.callLater(left, self._expire, record)
                self.clients[entry.client_id] = record
                restored += 1
                continue
            self.known.gone(entry.client_id)
        if restored:
            self.log.info(
                "kept {n} client ids from before the restart (answered as reconnecting until their "
                "clients are back, for up to {retention:g}s)",
                n=restored,
                retention=self.config.retention,
            )
        if forgotten:
            self.log.warn(
                "forgot {n} client ids registered with an auth key this relay no longer has",
                n=forgotten,
            )

    def _new_record(self, client_id: str, identity: bytes, mode: str, tenant: str) -> ClientRecord:
        pool = TunnelPool(
            client_id,
            self.config.pool_size,
            self.config.max_tunnels,
            self.config.tunnel_timeout,
            self.clock,
            lambda n, cid=client_id: self._request_tunnels(cid, n),
        )
        return ClientRecord(client_id, identity, mode, pool, tenant=tenant)

    def _reap(self) -> None:
        for record in self.clients.values():
            record.pool.reap(self.config.tunnel_max_idle, self.config.surplus_idle)

    def new_nonce(self) -> bytes:
        """A fresh challenge for one registration."""
        return os.urandom(wire.NONCE_SIZE)

    def admit(
        self,
        nonce: bytes,
        client_id: str,
        identity: bytes,
        exchange: bytes,
        signature: bytes,
        proof: bytes,
        mode: str,
        remote_port: int,
        remote_address: str,
        *,
        binding: bytes = b"",
    ) -> str:
        """Check a registration's proofs and this relay's pin of the id; return the tenant."""
        if not wire.CLIENT_ID_RE.match(client_id):
            raise BadRegistration("client id must be 1-64 of A-Z a-z 0-9 _ . - (starting alnum)")
        if mode not in ("http", "tcp"):
            raise BadRegistration(f"unknown mode {mode!r}")
        if len(nonce) != wire.NONCE_SIZE:
            raise BadRegistration("send Hello first (each connection gets its own nonce)")
        if len(identity) != wire.PUBLIC_KEY_SIZE or len(exchange) != wire.PUBLIC_KEY_SIZE:
            raise BadRegistration("identity and exchange must be 32-byte public keys")
        data = wire.transcript(nonce, client_id, mode, remote_port, identity, exchange, binding)
        admitted = (name for name, key in self.keys.items() if wire.check_admission(key, data, proof))
        tenant = next(admitted, None)
        if tenant is None:
            self.log.warn(
                "refused registration for {client_id} from {address}: wrong auth key",
                client_id=wire.redact(client_id),
                address=remote_address,
            )
            raise AuthFailed("wrong auth key")
        if not wire.verify_signature(identity, signature, data):
            self.log.warn(
                "refused registration for {client_id} from {address}: bad identity signature",
                client_id=wire.redact(client_id),
                address=remote_address,
            )
            raise AuthFailed("the identity signature does not verify")
        self._check_pin(self.clients.get(client_id), client_id, identity, remote_address)
        return tenant

    def _check_pin(
        self, record: ClientRecord | None, client_id: str, identity: bytes, remote_address: str
    ) -> None:
        """Refuse ``identity`` for ``client_id`` if the id is held (``record``) by another key."""
        if record is not None and record.identity != identity:
            self.log.warn(
                "refused registration for {client_id} from {address}: the id is pinned to "
                "identity {pinned} ({state}), not {offered}",
                client_id=wire.redact(client_id),
                address=remote_address,
                pinned=wire.fingerprint(record.identity),
                state="online" if record.online else "retained",
                offered=wire.fingerprint(identity),
            )
            raise ClientIdInUse("this client id is registered by another arpc instance")

    def register(
        self,
        control: object,
        nonce: bytes,
        client_id: str,
        identity: bytes,
        exchange: bytes,
        signature: bytes,
        proof: bytes,
        mode: str,
        remote_port: int,
        remote_address: str,
        *,
        binding: bytes = b"",
        tenant: str | None = None,
    ) -> ClientRecord:
        """Check a registration and bring the client online; raise an AMP error to refuse it.

        The proof must be the transcript's MAC under one of the auth keys (which
        names the tenant), the signature the transcript's signature by
        ``identity``, and ``identity`` the key pinned to ``client_id`` if the id
        is held (online or in retention).  ``tenant``: :meth:`admit` has already
        checked all that (and said which tenant).
        """
        if tenant is None:
            tenant = self.admit(
                nonce, client_id, identity, exchange, signature, proof, mode, remote_port, remote_address,
                binding=binding,
            )
        relay_exchange = wire.new_exchange()
        try:
            tunnel_key = wire.tunnel_key(relay_exchange, exchange, nonce, client_id)
        except ValueError:
            raise BadRegistration("unusable exchange key") from None
        record = self.clients.get(client_id)
        # again: with a cluster the id may have been taken while Redis answered
        self._check_pin(record, client_id, identity, remote_address)
        if record is not None:
            if record.control is not None and record.control is not control:
                old = record.control
                self._offline(record)
                old.drop("replaced by a new connection of the same client")
            if record.expiry is not None and record.expiry.active():
                record.expiry.cancel()
            record.expiry = None
            if (
                record.mode != mode
                or (mode == "tcp" and remote_port not in (0, record.remote_port))
                or (mode == "tcp" and record.restored)  # its port is opened anew
            ):
                if mode == "tcp" and not remote_port:
                    remote_port = record.remote_port  # a restored client keeps its port if it can
                self._remove(record)
                record = None
        if record is None:
            self._check_tenant_quota(tenant, client_id, remote_address)
            record = self._new_record(client_id, identity, mode, tenant)
            if mode == "tcp":
                if self.tcp_opener is None:
                    raise BadRegistration("this relay does not offer TCP ports (see arps --tcp-ports)")
                record.remote_port = remote_port
                self.tcp_opener(record)  # raises BadRegistration / Unavailable if no port can be had
            elif self.origins is not None:
                self.origins.open_for(record)  # raises BadRegistration if no origin can be had
            self.clients[client_id] = record
        record.tenant = tenant
        record.tunnel_secret = tunnel_key
        record.relay_exchange = wire.public_bytes(relay_exchange)
        record.tunnel_floor = 0
        record.tunnel_serials = set()
        record.control = control
        record.remote_address = remote_address
        record.connected_since = time.time()
        record.offline_since = None
        record.stopped_at = None
        record.restored = False
        if self.known is not None:
            self.known.registered(
                KnownClient(
                    client_id=client_id,
                    identity=identity,
                    mode=mode,
                    tenant=tenant,
                    key=key_fingerprint(self.keys[tenant]),
                    label=record.label,
                    origin_port=record.origin_port,
                    remote_port=record.remote_port,
                    registered_at=record.connected_since,
                )
            )
        self.log.info(
            "client {client_id} registered from {address} ({mode} mode, identity {identity}{tenant})",
            client_id=wire.redact(client_id),
            address=remote_address,
            mode=mode,
            identity=wire.fingerprint(identity),
            tenant="" if len(self.keys) == 1 else f", tenant {tenant}",
        )
        return record

    def _check_tenant_quota(self, tenant: str, client_id: str, remote_address: str) -> None:
        """Refuse a new id of ``tenant`` once it holds ``max_clients_per_tenant`` here.

        Retained ids count (they keep their ports), so a tenant cannot cycle
        through the client ports by disconnecting; a returning id is never
        refused (only new ones reach this check).  The refusal is temporary:
        arpc retries, and gets in once one of the tenant's ids expires.
        """
        limit = self.config.max_clients_per_tenant
        if not limit:
            return
        held = sum(1 for record in self.clients.values() if record.tenant == tenant)
        if held >= limit:
            self.log.warn(
                "refused registration for {client_id} from {address}: tenant {tenant} already "
                "holds {held} client ids (--max-clients-per-tenant {limit})",
                client_id=wire.redact(client_id),
                address=remote_address,
                tenant=tenant,
                held=held,
                limit=limit,
            )
            raise Unavailable(f"this auth key already holds {held} client ids on this relay (its limit)")

    def start_pool(self, record: ClientRecord) -> None:
        """Fill the pool of a freshly registered client (after it has its tunnel secret)."""
        if record.online:
            record.pool.set_online(True)

    def _request_tunnels(self, client_id: str, count: int) -> None:
        record = self.clients.get(client_id)
        if record is not None and record.control is not None:
            record.control.open_tunnels(count)

    def control_lost(self, record: ClientRecord, control: object) -> None:
        """The control channel of ``record`` closed; keep the record for the retention time."""
        if record.control is not control:
            return
        self._offline(record)
        if self.known is not None:
            self.known.offline(record.client_id, record.offline_since)
        self.log.info(
            "client {client_id} {how}; keeping its registration for {retention:g}s",
            client_id=wire.redact(record.client_id),
            how="stopped by its owner" if record.stopped_at is not None else "disconnected",
            retention=self.config.retention,
        )
        record.expiry = self.clock.callLater(self.config.retention, self._expire, record)

    def stopping(self, record: ClientRecord, control: object) -> None:
        """The client says its owner is stopping it on purpose (it disconnects next)."""
        if record.control is not control:
            return
        record.stopped_at = time.time()
        if self.known is not None:
            self.known.stopped(record.client_id, record.stopped_at)

    def _offline(self, record: ClientRecord) -> None:
        record.control = None
        record.offline_since = time.time()
        record.pool.set_online(False)
        if self.cluster is not None:
            self.cluster.released(record.client_id)

    def lookup(self, client_id: str) -> ClientRecord | None:
        """The record a public request for ``client_id`` goes to (memory only: the hot path).
        With other relays, a client online elsewhere gets a stand-in that reaches it there."""
        record = self.clients.get(client_id)
        if self.cluster is None:
            return record
        return self.cluster.lookup(client_id, record)

    def _expire(self, record: ClientRecord) -> None:
        record.expiry = None
        if self.clients.get(record.client_id) is record and not record.online:
            self.log.info("registration of {client_id} expired", client_id=wire.redact(record.client_id))
            self._remove(record)

    def _remove(self, record: ClientRecord) -> None:
        if self.clients.get(record.client_id) is record:
            del self.clients[record.client_id]
            self._retire(record)
            if self.known is not None:
                self.known.gone(record.client_id)
        if record.expiry is not None and record.expiry.active():
            record.expiry.cancel()
        record.expiry = None
        if record.tcp_listener is not None:
            listener, record.tcp_listener = record.tcp_listener, None
            listener.stopService()
        if self.origins is not None and record.mode == "http":
            self.origins.close_for(record)

    def _retire(self, record: ClientRecord) -> None:
        """Keep a removed client's counts so that relay-wide counters never go down."""
        retired = self.retired
        for name, value in self._counts(record).items():
            if name == "statuses":
                for status, count in value.items():
                    retired["statuses"][status] = retired["statuses"].get(status, 0) + count
            else:
                retired[name] += value

    @staticmethod
    def _counts(record: ClientRecord) -> dict:
        pool = record.pool
        return {
            "requests": record.requests,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "hits": pool.hits,
            "misses": pool.misses,
            "timeouts": pool.timeouts,
            "waits": pool.waits,
            "wait_seconds": pool.wait_seconds,
            "statuses": record.statuses,
        }

    def totals(self) -> dict:
        """Relay-wide counters (monotonic) and gauges, for the admin API and metrics."""
        totals = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.retired.items()}
        counted = list(self.clients.values())
        if self.cluster is not None:  # requests carried to other relays count here too
            counted += self.cluster.remote.values()
        for record in counted:
            for name, value in self._counts(record).items():
                if name == "statuses":
                    for status, count in value.items():
                        totals["statuses"][status] = totals["statuses"].get(status, 0) + count
                else:
                    totals[name] += value
        for status, count in self.unrouted.items():
            totals["statuses"][status] = totals["statuses"].get(status, 0) + count
        online = [r for r in self.clients.values() if r.online]
        totals.update(
            clients_online=len(online),
            clients_retained=len(self.clients) - len(online),
            tunnels_idle=sum(len(r.pool.idle) for r in self.clients.values()),
            tunnels_busy=sum(len(r.pool.busy) for r in self.clients.values()),
            open_connections=sum(r.open_connections for r in self.clients.values()),
            uptime=time.time() - self.started_at,
        )
        return totals

    def _drop(self, record: ClientRecord, reason: str) -> None:
        control = record.control
        if control is not None:
            self._offline(record)
            control.drop(reason)
        self._remove(record)

    def disconnect(self, client_id: str, reason: str = "disconnected by the relay operator") -> bool:
        """Drop a client now and release its id.  False if it is unknown."""
        record = self.clients.get(client_id)
        if record is None:
            return False
        self._drop(record, reason)
        return True

    def check_tunnel(self, client_id: str, token: str) -> ClientRecord | None:
        """The online record a tunnel header claims, if its one-time token is valid and unspent."""
        record = self.clients.get(client_id)
        if record is None or not record.online:
            return None
        serial = wire.check_tunnel_token(client_id, record.tunnel_secret, token)
        if serial is None or serial <= record.tunnel_floor or serial in record.tunnel_serials:
            return None
        spent = record.tunnel_serials
        spent.add(serial)
        while len(spent) > MAX_SPENT_SERIALS:  # keep the newest; older serials are refused wholesale
            oldest = min(spent)
            spent.discard(oldest)
            record.tunnel_floor = oldest
        return record

    def public_url(self, client_id: str) -> str:
        """The URL arpc prints (``{host}`` is filled in by arpc)."""
        return self.config.public_url
