"""Several relays, one routing table: shared state in Redis (``arps --redis URL``).

What lives in Redis (all keys under ``arp:``):

- ``arp:id:<client id>``: a hash {identity, tenant, mode}: the Ed25519 key pinned to
  the id.  No expiry while some relay holds a control link of the client; when the
  last one goes, it expires after the retention time, exactly like one relay's record.
- ``arp:holders:<client id>``: the set of relay ids that hold a control link now.
- ``arp:relay:<relay id>``: a JSON document {advertise, stats} that the relay
  rewrites every ``timeout / 3`` seconds with an expiry of ``timeout``: a relay whose
  key is gone is dead, and the living ones take it out of every holders set.
- ``arp:relays``: the set of relay ids ever seen (the dead are removed).
- ``arp:epoch``: a random value the first relay to reach an empty Redis writes; each relay
  remembers it, so a Redis that lost its data (restarted without persistence, flushed,
  replaced) or restarted at all (its ``run_id`` changed) is noticed, and a new epoch begins.
- ``arp:settle``: set with the new epoch, for ``timeout`` seconds (the settle window): while it
  exists no id without a pin is pinned by a registration (:class:`Unavailable`, arpc retries);
  only the relays re-pin the ids they hold (``kept`` pins).  A relay that had a control link
  before the loss wins over a pin a registration made after it (the other relays drop theirs,
  ``pin`` event), so an imposter can never take a live id across a Redis restart.
- ``arp:tcp-port:<port>``: the client id a raw TCP port is reserved for (on every relay),
  kept as long as the id (its number is also the ``port`` field of ``arp:id:<id>``).
- the channel ``arp:events``: ``up <id> <relay> <mode>``, ``leave <id> <relay>``,
  ``down <id> <relay> <retention ms>``, ``port <id> <relay> <port>``,
  ``pin <id> <relay> <identity hex>`` (the id is that identity's again), so that every
  relay keeps the table above in memory.  **Nothing on the request path talks to
  Redis**: routing reads that memory.

A request reaching a relay where the client has no control link is carried to a
relay that has one, over a connection to that relay's proxy port that starts with
an ``ARP-RELAY`` header: the client id, the sending relay, the receiving relay, a time,
a nonce and their MAC under the relay group's own key (``arps --relay-key``, never a
tenant's auth key, never sent).  A header is good at the one relay it names, once (its
nonce is remembered); any refusal is the same cut connection, whether the id is known
or not, and an address that sends too many bad headers is refused for a while.  The
receiving relay splices it onto one of the client's tunnels.

Failure rules: Redis unreachable -> registrations are refused with
:class:`Unavailable` (arpc retries), the clients already here keep working; after
``timeout`` seconds without Redis the relay drops its clients (it no longer
claims ids others may have given away); when Redis is back every relay claims its
clients again and reloads the table.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from arp import wire
from arp.control import ClientIdInUse, Unavailable
from arp.server.pool import TunnelPool
from arp.server.registry import ClientRecord, Registry
from arp.server.routing import GuessLimiter
from arp.server.tunnel import TunnelOwner, TunnelServerProtocol
from arp.splice import Splice, tune

PREFIX = "arp:"
EVENTS = "arp:events"
RELAY_MAGIC = b"ARP-RELAY"
#: Seconds a relay-to-relay header's time may differ from ours (relays should run NTP).
RELAY_CLOCK_SKEW = 60.0
#: Nonces of relay-to-relay headers remembered (each accepted once within the skew window).
MAX_NONCES = 100_000
#: Seconds a Redis command may take before the connection counts as broken.
REDIS_REPLY_TIMEOUT = 5.0

EPOCH = "arp:epoch"
SETTLE = "arp:settle"
#: The longest settle window, whatever ``--redis-timeout`` is (seconds).
MAX_SETTLE = 30.0
#: Bad relay-to-relay headers one address may send per :data:`RELAY_GUESS_WINDOW` seconds.
RELAY_GUESS_LIMIT = 20
RELAY_GUESS_WINDOW = 60.0

# A registration's claim.  KEYS: id, holders, events, epoch, settle.  ARGV: identity, tenant,
# mode, relay, client id.  -1: not ARP's key; 0: pinned to another identity; -2: settling
# (no new pins yet); -3: no epoch (Redis lost its data and no relay has noticed yet); 1: ours.
_CLAIM = """
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then return -1 end
local cur = redis.call('HGET', KEYS[1], 'identity')
if cur and cur ~= ARGV[1] then return 0 end
local epoch = redis.call('GET', KEYS[4])
if not epoch then return -3 end
if not cur and redis.call('EXISTS', KEYS[5]) == 1 then return -2 end
local h = redis.call('TYPE', KEYS[2]).ok
if h ~= 'set' and h ~= 'none' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'identity', ARGV[1], 'tenant', ARGV[2], 'mode', ARGV[3])
if redis.call('HGET', KEYS[1], 'epoch') ~= epoch then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('HDEL', KEYS[1], 'kept')
end
redis.call('PERSIST', KEYS[1])
local p = redis.call('HGET', KEYS[1], 'port')
if p then redis.call('PERSIST', 'arp:tcp-port:' .. p) end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', KEYS[3], 'up ' .. ARGV[5] .. ' ' .. ARGV[4] .. ' ' .. ARGV[3])
return 1
"""

# A relay re-pins an id it holds (a control link, or retained for ARGV[7] ms more), after a
# reconnection.  KEYS: id, holders, events, epoch.  ARGV: identity, tenant, mode, relay,
# client id, '1' if Redis lost its data since the link began (then a pin another identity got
# after the loss gives way: it cannot be the owner's), ms left of retention ('0': live).
# -1: not ARP's key; 0: held by another identity; 1: pinned; 2: pinned, another pin replaced.
_REPIN = """
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then return -1 end
local epoch = redis.call('GET', KEYS[4]) or ''
local cur = redis.call('HGET', KEYS[1], 'identity')
local result = 1
if cur and cur ~= ARGV[1] then
  local kept = redis.call('HGET', KEYS[1], 'kept') == '1' and redis.call('HGET', KEYS[1], 'epoch') == epoch
  if ARGV[6] ~= '1' or ARGV[7] ~= '0' or kept then return 0 end
  redis.call('DEL', KEYS[1], KEYS[2])
  cur = false
  result = 2
end
if ARGV[7] ~= '0' then
  if cur then return 1 end
  redis.call('HSET', KEYS[1], 'identity', ARGV[1], 'tenant', ARGV[2], 'mode', ARGV[3],
             'epoch', epoch, 'kept', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  redis.call('PUBLISH', KEYS[3], 'down ' .. ARGV[5] .. ' ' .. ARGV[4] .. ' ' .. ARGV[7])
  return 1
end
local h = redis.call('TYPE', KEYS[2]).ok
if h ~= 'set' and h ~= 'none' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'identity', ARGV[1], 'tenant', ARGV[2], 'mode', ARGV[3],
           'epoch', epoch, 'kept', '1')
redis.call('PERSIST', KEYS[1])
local p = redis.call('HGET', KEYS[1], 'port')
if p then redis.call('PERSIST', 'arp:tcp-port:' .. p) end
redis.call('SADD', KEYS[2], ARGV[4])
if result == 2 then redis.call('PUBLISH', KEYS[3], 'pin ' .. ARGV[5] .. ' ' .. ARGV[4] .. ' ' .. ARGV[1]) end
redis.call('PUBLISH', KEYS[3], 'up ' .. ARGV[5] .. ' ' .. ARGV[4] .. ' ' .. ARGV[3])
return result
"""

# The epoch.  KEYS: epoch, settle.  ARGV: the epoch the relay knew ('' if none), a new one, '1'
# if Redis restarted since (its run_id changed), the settle window in ms.  Returns {epoch, 1 if
# this call began it}.  A missing epoch, or the known one after a restart, begins a new one.
_EPOCH = """
local e = redis.call('GET', KEYS[1])
if e and not (ARGV[3] == '1' and e == ARGV[1]) then return {e, 0} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return {ARGV[2], 1}
"""

_RELEASE = """
if redis.call('TYPE', KEYS[2]).ok == 'set' then redis.call('SREM', KEYS[2], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', KEYS[3], 'leave ' .. ARGV[3] .. ' ' .. ARGV[1])
  return 1
end
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local p = redis.call('HGET', KEYS[1], 'port')
  if p then redis.call('PEXPIRE', 'arp:tcp-port:' .. p, ARGV[2]) end
end
redis.call('PUBLISH', KEYS[3], 'down ' .. ARGV[3] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return 0
"""

_RESERVE_PORT = """
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'string' and t ~= 'none' then return -1 end
local cur = redis.call('GET', KEYS[4])
if cur and cur ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[4], ARGV[2])
if redis.call('TYPE', KEYS[1]).ok == 'hash' then redis.call('HSET', KEYS[1], 'port', ARGV[1]) end
redis.call('PUBLISH', KEYS[3], 'port ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[1])
return 1
"""


def advertised_address(port: object) -> tuple[str, int]:
    """Where other relays reach a listening proxy port: its address, or this host's if it
    listens on every interface."""
    address = port.getHost()
    host = address.host
    if host in ("0.0.0.0", "::", ""):
        import socket

        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.gethostname()
    return host, address.port


class RedisUnreachable(Exception):
    """The connection to Redis ended before it answered (the reason in words)."""


def _why(error: BaseException) -> str:
    """A connection failure in words (a TLS failure explained)."""
    from arp import tls

    explained = tls.explain(error)
    if explained:
        return (
            explained.replace("the relay's certificate", "the Redis server's certificate")
            .replace("trustRoots=", "?ca=")
            .replace("trustRoots", "?ca=")
        )
    return str(error) or repr(error)


class BadRedisURL(ValueError):
    """A ``--redis`` URL that cannot be used."""


@dataclass(frozen=True)
class RedisURL:
    """``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for TLS."""

    host: str
    port: int
    db: int
    password: str | None
    username: str | None
    tls: bool
    ca: str | None = None  # rediss://...?ca=/path/ca.pem: trust this CA instead of the system's

    @classmethod
    def parse(cls, text: str) -> RedisURL:
        """Parse ``text``; raise :class:`BadRedisURL` saying what is wrong."""
        try:
            parts = urlsplit(text)
            port = parts.port or 6379
        except ValueError as e:
            raise BadRedisURL(f"{text!r} is not a URL: {e}") from None
        if parts.scheme not in ("redis", "rediss"):
            raise BadRedisURL(f"{text!r}: the scheme must be redis:// or rediss:// (TLS)")
        if not parts.hostname:
            raise BadRedisURL(f"{text!r} names no host (redis://host:6379/0)")
        path = parts.path.strip("/") or "0"
        if not path.isdigit():
            raise BadRedisURL(f"{text!r}: the path must be a database number, e.g. /0")
        query = parse_qs(parts.query)
        if set(query) - {"ca"}:
            raise BadRedisURL(f"{text!r}: the only query parameter is ?ca=/path/ca.pem (with rediss://)")
        ca = query.get("ca", [None])[0]
        if ca is not None:
            if parts.scheme != "rediss":
                raise BadRedisURL(f"{text!r}: ?ca= is for rediss:// (TLS)")
            if not os.path.isfile(ca):
                raise BadRedisURL(f"{text!r}: no CA file {ca}")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path),
            password=unquote(parts.password) if parts.password is not None else None,
            username=unquote(parts.username) if parts.username else None,
            tls=parts.scheme == "rediss",
            ca=ca,
        )

    def safe(self) -> str:
        """The URL without its password, for logs."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def relay_mac_key(text: str) -> bytes:
    """The MAC key of relay-to-relay headers, from the relay group's own secret
    (``arps --relay-key``): never a tenant's auth key, so no arpc can make a header."""
    return wire._mac(wire.key_bytes(text), b"arp-relay-key")


def relay_header(key: bytes, client_id: str, relay_id: str, to_relay: str, now: float) -> bytes:
    """The first line relay ``relay_id`` writes on a connection to relay ``to_relay``'s proxy
    port; good there only, and once."""
    stamp = str(int(now)).encode()
    nonce = os.urandom(16).hex().encode()
    parts = [client_id.encode(), relay_id.encode(), to_relay.encode(), stamp, nonce]
    mac = wire._mac(key, b"arp-relay-tunnel/2", *parts)
    return b" ".join([RELAY_MAGIC, *parts, mac.hex().encode()]) + b"\r\n"


def _redis_protocol(url: RedisURL, subscriber: bool, on_message: object = None) -> type:
    import txredisapi

    base = txredisapi.SubscriberProtocol if subscriber else txredisapi.RedisProtocol

    class Proto(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(
                charset="utf-8", errors="replace", replyTimeout=REDIS_REPLY_TIMEOUT, convertNumbers=False
            )

        def messageReceived(self, pattern: object, channel: object, message: object) -> None:
            if on_message is not None:
                on_message(message)

        def connectionLost(self, why: Failure) -> None:
            self.lost_why = why  # e.g. the TLS handshake's failure, which the pending command hides
            super().connectionLost(why)

    return Proto


class _RedisFactory(Factory):
    noisy = False

    def __init__(self, proto: type) -> None:
        self.proto = proto

    def buildProtocol(self, addr: object) -> object:
        p = self.proto()
        p.factory = self
        return p


class RelayTunnel(TunnelServerProtocol):
    """Our end of a relay-to-relay connection: in the remote client's pool it passes for a
    tunnel (the public front cannot tell), its far end is one of the client's tunnels."""

    def __init__(self, cluster: Cluster, record: ClientRecord, header: bytes) -> None:
        super().__init__(cluster.registry, cluster.clock)
        self.cluster = cluster
        self.header = header
        self.pending_record = record

    def connectionMade(self) -> None:
        tune(self.transport, keepalive=True)
        self.transport.write(self.header)
        record = self.pending_record
        self.record = record
        if not record.pool.add(self):
            self.record = None
            self.transport.loseConnection()


class _Pipe(TunnelOwner):
    """Carries what one end of a relayed splice reads to the other end (see :class:`Splice`)."""

    def __init__(self, splice: Splice, end: int, target: TunnelServerProtocol) -> None:
        self.splice = splice
        self.end = end
        self.target = target

    def tunnel_data(self, data: bytes) -> None:
        self.splice.moved = True
        self.target.transport.write(data)

    def tunnel_eof(self) -> None:
        self.splice.read_lost(self.end)

    def tunnel_lost(self, reason: Failure) -> None:
        self.splice.connection_lost(self.end, reason)


class RelaySplice:
    """A connection from another relay (end 0) joined to one of a local client's tunnels (end 1),
    with the one splice logic of :class:`arp.splice.Splice` (half-close, linger, close)."""

    def __init__(
        self, incoming: TunnelServerProtocol, tunnel: TunnelServerProtocol, clock: object = None
    ) -> None:
        self.ends = (incoming, tunnel)
        self.splice = Splice(incoming.transport, tunnel.transport, clock)
        incoming.attach(_Pipe(self.splice, 0, tunnel))
        tunnel.attach(_Pipe(self.splice, 1, incoming))
        incoming.transport.resumeProducing()


class Cluster(Service):
    """This relay's part in a group of relays sharing state in Redis."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        url: RedisURL,
        clock: object,
        *,
        timeout: float = 30.0,
        advertise: str | None = None,
        proxy_address: object = None,
        exit_on_start_failure: bool = True,
        relay_key: str,
    ) -> None:
        """``proxy_address()``: (host, port) of our proxy port, advertised unless ``advertise``;
        ``relay_key``: the relay group's own secret for relay-to-relay headers (``--relay-key``)."""
        self.registry = registry
        self.url = url
        self.clock = clock
        self.timeout = timeout
        self.advertise_override = advertise
        self.proxy_address = proxy_address
        self.exit_on_start_failure = exit_on_start_failure
        self.relay_id = wire.random_hex(6)
        if not relay_key:
            raise ValueError("relays sharing state need a relay key of their own (--relay-key)")
        self.key = relay_mac_key(relay_key)
        #: the epoch of Redis's state we know (see ``arp:epoch``), and Redis's run_id
        self.epoch: str | None = None
        self.run_id: str | None = None
        self._settle_call: object = None  # logs the end of a settle window we began
        #: bad relay-to-relay headers per source address (the same limit as public guesses)
        self.relay_guesses = GuessLimiter(RELAY_GUESS_LIMIT, RELAY_GUESS_WINDOW, clock)
        self._blocked_logged: dict[str, float] = {}
        self.advertise = ""
        self.redis: object | None = None  # the command connection when it is usable
        self.available = False
        self.lost_since: float | None = None
        self.ever_connected = False
        #: client id -> relay ids (other than us) holding a control link
        self.holders: dict[str, set[str]] = {}
        self.modes: dict[str, str] = {}
        #: client id -> deadline (our clock) of an id no relay holds, within retention
        self.retained: dict[str, float] = {}
        #: relay id -> {"advertise": "host:port", "stats": {...}, "seen": time}
        self.relays: dict[str, dict] = {}
        #: client id -> record standing for a client held by other relays
        self.remote: dict[str, ClientRecord] = {}
        self.nonces: dict[bytes, float] = {}
        self.suspects: dict[str, float] = {}  # relay id -> until when we do not try it
        #: raw TCP port -> (client id, until when it is kept: None while some relay holds the client)
        self.ports: dict[int, tuple[str, float | None]] = {}
        self.ops = 0  # Redis commands sent (the benchmark counts them)
        self._commands: ClientService | None = None
        self._subscriber: ClientService | None = None
        self._tick = LoopingCall(self._refresh)
        self._tick.clock = clock
        self._rr = 0
        registry.cluster = self

    # -- starting and stopping ------------------------------------------------------

    def _endpoint(self) -> object:
        from twisted.internet import reactor

        endpoint = HostnameEndpoint(reactor, self.url.host, self.url.port, timeout=REDIS_REPLY_TIMEOUT)
        if self.url.tls:
            from twisted.internet.ssl import Certificate, optionsForClientTLS

            trust = None
            if self.url.ca:
                with open(self.url.ca, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(optionsForClientTLS(self.url.host, trustRoot=trust), endpoint)
        return endpoint

    def startService(self) -> None:
        super().startService()
        host, port = self.proxy_address() if self.proxy_address is not None else ("127.0.0.1", 0)
        self.advertise = self.advertise_override or f"{host}:{port}"
        policy = backoffPolicy(0.2, max(1.0, self.timeout / 6))
        self._commands = ClientService(
            self._endpoint(),
            _RedisFactory(_redis_protocol(self.url, False)),
            retryPolicy=policy,
            clock=self.clock,
            prepareConnection=self._prepare_commands,
        )
        self._subscriber = ClientService(
            self._endpoint(),
            _RedisFactory(_redis_protocol(self.url, True, self._message)),
            retryPolicy=policy,
            clock=self.clock,
            prepareConnection=self._prepare_subscriber,
        )
        self._commands.startService()
        first = self._commands.whenConnected(failAfterFailures=1)
        first.addErrback(self._start_failed)
        self._tick.start(max(0.2, self.timeout / 6), now=False)

    def _start_failed(self, failure: Failure) -> None:
        if self.ever_connected or not self.running:
            return
        why = failure.getErrorMessage()
        self.log.critical("arps: cannot use Redis at {url}: {why}", url=self.url.safe(), why=why)
        if self.exit_on_start_failure:
            from twisted.internet import reactor

            def leave() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)

            atexit.register(leave)
            if reactor.running:
                reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        if self._tick.running:
            self._tick.stop()
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        waits = []
        redis = self.redis
        if redis is not None and self.available:
            for record in list(self.registry.clients.values()):
                if record.online:
                    waits.append(self._release(record.client_id).addErrback(lambda f: None))
            waits.append(self._cmd("DEL", f"{PREFIX}relay:{self.relay_id}").addErrback(lambda f: None))
            waits.append(self._cmd("SREM", f"{PREFIX}relays", self.relay_id).addErrback(lambda f: None))
        for remote in list(self.remote.values()):
            remote.pool.set_online(False)
        self.remote.clear()

        def stop_links(_: object) -> Deferred:
            stops = [s.stopService() for s in (self._commands, self._subscriber) if s is not None]
            return DeferredList(stops)

        return DeferredList(waits).addCallback(stop_links).addCallback(lambda _: None)

    # -- Redis connections ----------------------------------------------------------

    @inlineCallbacks
    def _login(self, proto: object) -> object:
        yield proto.whenConnected()
        if self.url.password is not None:
            if self.url.username:
                reply = yield proto.execute_command("AUTH", self.url.username, self.url.password)
            else:
                reply = yield proto.execute_command("AUTH", self.url.password)
            if isinstance(reply, Exception):
                raise reply
        if self.url.db:
            reply = yield proto.execute_command("SELECT", self.url.db)
            if isinstance(reply, Exception):
                raise reply

    @inlineCallbacks
    def _prepare_commands(self, proto: object) -> object:
        try:
            yield self._login(proto)
            reply = yield proto.execute_command("PING")
            if isinstance(reply, Exception):
                raise reply
        except Exception as e:
            import txredisapi

            lost = getattr(proto, "lost_why", None)
            if lost is not None and not isinstance(e, txredisapi.ResponseError):
                e = RedisUnreachable(_why(lost.value))
            if not self.ever_connected:
                raise e from None
            self.log.warn("Redis at {url} refused us: {why}", url=self.url.safe(), why=str(e))
            proto.transport.abortConnection()
            raise
        proto.whenDisconnected().addCallback(self._commands_lost)
        self.redis = proto
        first = not self.ever_connected
        self.ever_connected = True
        if first:
            self.log.info(
                "sharing state in Redis at {url} as relay {relay} (advertising {advertise})",
                url=self.url.safe(),
                relay=self.relay_id,
                advertise=self.advertise,
            )
            self._subscriber.startService()
        else:
            self.log.info("Redis at {url} is back; resynchronising", url=self.url.safe())
        yield self._resync()

    @inlineCallbacks
    def _prepare_subscriber(self, proto: object) -> object:
        yield self._login(proto)
        yield proto.subscribe(EVENTS)
        if self.available:  # else the command connection reloads when it is back
            yield self._load()

    def _commands_lost(self, proto: object) -> None:
        if self.redis is proto:
            self.redis = None
        if self.available:
            self.available = False
            self.lost_since = self.clock.seconds()
            self.log.warn(
                "lost Redis at {url}: serving the clients we have, refusing new registrations; "
                "after {timeout:g}s we drop our clients",
                url=self.url.safe(),
                timeout=self.timeout,
            )

    def _cmd(self, *args: object) -> Deferred:
        redis = self.redis
        if redis is None:
            return fail(Unavailable("Redis is not connected"))
        self.ops += 1
        d = redis.execute_command(*args)

        def check(reply: object) -> object:
            if isinstance(reply, Exception):
                raise reply
            return reply

        return d.addCallback(check)

    @inlineCallbacks
    def _resync(self) -> object:
        """Claim every client we hold, announce ourselves, reload the table.  After Redis lost
        its data (a new epoch), also pin the ids we keep within retention and our TCP ports."""
        lost = yield self._check_epoch()
        yield self._announce()
        live = [r for r in self.registry.clients.values() if r.online]
        if lost:
            self.log.warn(
                "Redis lost the relays' shared state (a new epoch began): pinning the {n} clients "
                "linked here again",
                n=len(live),
            )
        for record in live:
            result = yield self._repin(record, lost, 0)
            if self.registry.clients.get(record.client_id) is not record or not record.online:
                continue  # gone while Redis answered
            if result == 0:
                self.log.warn(
                    "client {client_id} is pinned to another identity in Redis now; dropping it here",
                    client_id=wire.redact(record.client_id),
                )
                self.registry.disconnect(record.client_id, "the id is held by another instance")
            elif result == 2:
                self.log.warn(
                    "client {client_id}: a registration after Redis lost its data had pinned the id "
                    "to another identity; it is this live client's again (the others drop theirs)",
                    client_id=wire.redact(record.client_id),
                )
            if lost and record.mode == "tcp" and record.remote_port and record.online:
                try:
                    yield self.reserve_port(record.client_id, record.remote_port)
                except Unavailable as e:
                    self.log.warn(
                        "TCP port {port} of {client_id}: {why}",
                        port=record.remote_port,
                        client_id=wire.redact(record.client_id),
                        why=str(e),
                    )
        if lost:
            now = self.clock.seconds()
            for record in list(self.registry.clients.values()):
                expiry = record.expiry
                if record.online or expiry is None or not expiry.active():
                    continue
                left = int((expiry.getTime() - now) * 1000)
                if left > 0:
                    yield self._repin(record, False, left)
        yield self._load()
        self.available = True
        self.lost_since = None

    def _repin(self, record: ClientRecord, lost: bool, retained_ms: int) -> Deferred:
        return self._eval(
            _REPIN,
            record.client_id,
            record.identity.hex(),
            record.tenant,
            record.mode,
            self.relay_id,
            keys=(EPOCH,),
            extra=("1" if lost else "0", retained_ms),
        )

    @inlineCallbacks
    def _check_epoch(self) -> object:
        """Learn Redis's epoch (beginning one, with a settle window, if Redis has none or has
        restarted); True if it is not the one we knew: Redis lost the state we shared."""
        run_id = None
        try:
            info = yield self._cmd("INFO", "server")
            match = re.search(r"^run_id:(\w+)", info if isinstance(info, str) else "", re.M)
            run_id = match.group(1) if match else None
        except Exception:  # INFO may be refused (ACLs): the epoch key alone tells a loss of data
            pass
        restarted = self.run_id is not None and run_id is not None and run_id != self.run_id
        settle = self.settle_window
        settle_ms = int(settle * 1000)
        reply = yield self._cmd(
            "EVAL",
            _EPOCH,
            2,
            EPOCH,
            SETTLE,
            self.epoch or "",
            wire.random_hex(8),
            "1" if restarted else "0",
            settle_ms,
        )
        epoch, began = str(reply[0]), str(reply[1]) == "1"
        lost = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        if run_id is not None:
            self.run_id = run_id
        if began:
            self.log.warn(
                "Redis at {url} holds no shared state of ours ({why}): settling for {seconds:g}s, in "
                "which the relays pin again the ids they hold and new client ids wait",
                url=self.url.safe(),
                why="it restarted" if restarted else "new, or it lost its data",
                seconds=settle,
            )
            if self._settle_call is not None and self._settle_call.active():
                self._settle_call.cancel()
            self._settle_call = self.clock.callLater(settle, self._settled, epoch)
        return lost

    @property
    def settle_window(self) -> float:
        """Seconds new client ids wait after Redis lost its data: ``--redis-timeout``, at most
        :data:`MAX_SETTLE` (a long timeout, to keep Redis quiet, need not hold up registrations
        for as long: a relay with a live link wins over a later pin anyway)."""
        return min(self.timeout, MAX_SETTLE)

    def _settled(self, epoch: str) -> None:
        if self.epoch == epoch and self.running:
            self.log.info("settle window over: new client ids are pinned again")

    def _data_lost(self, why: str) -> None:
        """Redis's epoch is not ours while we are connected (flushed, or a replica took over):
        reconnect, which claims our clients again in the new epoch."""
        redis = self.redis
        if redis is None:
            return
        self.log.warn(
            "Redis at {url}: {why}; reconnecting to pin our clients again", url=self.url.safe(), why=why
        )
        redis.transport.abortConnection()

    @inlineCallbacks
    def _load(self) -> object:
        """Read the holders and retained ids and the relays from Redis into memory."""
        holders: dict[str, set[str]] = {}
        modes: dict[str, str] = {}
        retained: dict[str, float] = {}
        now = self.clock.seconds()
        cursor = "0"
        for _ in range(100_000):  # bounded: a SCAN visits every key once
            reply = yield self._cmd("SCAN", cursor, "MATCH", f"{PREFIX}id:*", "COUNT", 500)
            cursor, keys = reply[0], reply[1]
            for key in keys:
                client_id = key[len(PREFIX) + 3 :]
                if not wire.CLIENT_ID_RE.match(client_id):
                    self.log.warn("ignoring Redis key {key!r}: not a client id", key=key)
                    continue
                try:
                    members = yield self._cmd("SMEMBERS", f"{PREFIX}holders:{client_id}")
                    mode = yield self._cmd("HGET", key, "mode")
                    ttl = yield self._cmd("PTTL", key)
                except Exception as e:
                    self.log.warn("ignoring Redis key {key!r}: {why}", key=key, why=str(e))
                    continue
                others = {m for m in members if isinstance(m, str) and m != self.relay_id}
                modes[client_id] = mode if mode in ("http", "tcp") else "http"
                if others:
                    holders[client_id] = others
                elif not members and int(ttl) > 0:
                    retained[client_id] = now + int(ttl) / 1000
            if cursor == "0":
                break
        ports: dict[int, tuple[str, float | None]] = {}
        cursor = "0"
        for _ in range(100_000):
            reply = yield self._cmd("SCAN", cursor, "MATCH", f"{PREFIX}tcp-port:*", "COUNT", 500)
            cursor, keys = reply[0], reply[1]
            for key in keys:
                number = key[len(PREFIX) + 9 :]
                try:
                    owner = yield self._cmd("GET", key)
                    ttl = yield self._cmd("PTTL", key)
                except Exception as e:
                    self.log.warn("ignoring Redis key {key!r}: {why}", key=key, why=str(e))
                    continue
                if not number.isdigit() or not isinstance(owner, str) or not wire.CLIENT_ID_RE.match(owner):
                    self.log.warn("ignoring Redis key {key!r}: not a TCP port reservation", key=key)
                    continue
                ports[int(number)] = (owner, now + int(ttl) / 1000 if int(ttl) > 0 else None)
            if cursor == "0":
                break
        self.holders, self.modes, self.retained, self.ports = holders, modes, retained, ports
        yield self._read_relays()
        for client_id in list(self.remote):
            self.route_changed(client_id)

    @inlineCallbacks
    def _read_relays(self) -> object:
        ids = yield self._cmd("SMEMBERS", f"{PREFIX}relays")
        ids = [i for i in ids if isinstance(i, str) and i != self.relay_id]
        docs = (yield self._cmd("MGET", *[f"{PREFIX}relay:{i}" for i in ids])) if ids else []
        relays: dict[str, dict] = {}
        dead: list[str] = []
        for relay_id, doc in zip(ids, docs):
            if doc is None:
                dead.append(relay_id)
                continue
            try:
                info = json.loads(doc)
                host, _, port = str(info["advertise"]).rpartition(":")
                int(port)
                if not host:
                    raise ValueError("no host")
            except (ValueError, KeyError, TypeError):
                self.log.warn(
                    "ignoring Redis key {key!r}: not a relay description", key=f"{PREFIX}relay:{relay_id}"
                )
                continue
            info["id"] = relay_id
            relays[relay_id] = info
        self.relays = relays
        for relay_id in dead:
            yield self._bury(relay_id)

    @inlineCallbacks
    def _bury(self, relay_id: str) -> object:
        """A relay whose key expired is dead: take it out of every holders set."""
        self.log.info("relay {relay} is gone; its clients are reached through the others", relay=relay_id)
        retention = int(self.registry.config.retention * 1000)
        for client_id, held in list(self.holders.items()):
            if relay_id in held:
                yield self._eval(_RELEASE, client_id, relay_id, retention)
        yield self._cmd("SREM", f"{PREFIX}relays", relay_id)

    def _eval(
        self, script: str, client_id: str, *args: object, keys: tuple = (), extra: tuple = ()
    ) -> Deferred:
        names = [f"{PREFIX}id:{client_id}", f"{PREFIX}holders:{client_id}", EVENTS, *keys]
        return self._cmd("EVAL", script, len(names), *names, *args, client_id, *extra)

    def _announce(self) -> Deferred:
        stats = self._stats()
        doc = json.dumps({"advertise": self.advertise, "stats": stats, "at": time.time()})
        d = self._cmd("SET", f"{PREFIX}relay:{self.relay_id}", doc, "PX", int(self.timeout * 1000))
        return d.addCallback(lambda _: self._cmd("SADD", f"{PREFIX}relays", self.relay_id))

    def _stats(self) -> dict:
        totals = self.registry.totals()
        return {
            "clients_online": totals["clients_online"],
            "clients_retained": totals["clients_retained"],
            "requests": totals["requests"],
            "bytes_in": totals["bytes_in"],
            "bytes_out": totals["bytes_out"],
            "tunnels_idle": totals["tunnels_idle"],
            "tunnels_busy": totals["tunnels_busy"],
        }

    def _refresh(self) -> None:
        now = self.clock.seconds()
        config = self.registry.config
        for remote in self.remote.values():  # idle relay-to-relay connections hold a tunnel there
            remote.pool.reap(config.tunnel_max_idle, config.surplus_idle)
        for client_id, deadline in list(self.retained.items()):
            if deadline <= now:
                del self.retained[client_id]
        for port, (_, until) in list(self.ports.items()):
            if until is not None and until <= now:
                del self.ports[port]
        for nonce, seen in list(self.nonces.items()):
            if seen < now - 2 * RELAY_CLOCK_SKEW:
                del self.nonces[nonce]
        if not self.available:
            if self.lost_since is not None and now - self.lost_since > self.timeout:
                self._give_up_ids()
            return
        d = self._announce().addCallback(lambda _: self._read_relays())
        d.addCallback(lambda _: self._cmd("GET", EPOCH)).addCallback(self._epoch_seen)
        d.addErrback(lambda f: self.log.warn("Redis refresh failed: {why}", why=f.getErrorMessage()))

    def _epoch_seen(self, epoch: object) -> None:
        if self.available and self.epoch is not None and epoch != self.epoch:
            self._data_lost("its shared state is gone (no epoch)" if epoch is None else "a new epoch began")

    def _give_up_ids(self) -> None:
        online = [r for r in self.registry.clients.values() if r.online]
        if online:
            self.log.warn(
                "without Redis for over {timeout:g}s: dropping {n} clients (they reconnect to the "
                "other relays, or here once Redis is back)",
                timeout=self.timeout,
                n=len(online),
            )
        for record in list(self.registry.clients.values()):
            self.registry.disconnect(record.client_id, "the relay lost its shared state (Redis)")
        for remote in list(self.remote.values()):
            remote.pool.set_online(False)
        self.remote.clear()
        self.holders.clear()

    # -- registration -------------------------------------------------------------------

    def _claim(self, client_id: str, identity: bytes, tenant: str, mode: str) -> Deferred:
        args = (identity.hex(), tenant, mode, self.relay_id)
        return self._eval(_CLAIM, client_id, *args, keys=(EPOCH, SETTLE))

    @inlineCallbacks
    def claim(self, client_id: str, identity: bytes, tenant: str, mode: str) -> object:
        """Pin ``client_id`` to ``identity`` across the relays and record that we hold it.
        Raises :class:`ClientIdInUse` or :class:`Unavailable`."""
        if not self.available:
            raise Unavailable("the relay cannot reach its shared state (Redis) now; try again shortly")
        try:
            result = yield self._claim(client_id, identity, tenant, mode)
        except Exception as e:
            self.log.warn(
                "claiming {client_id} in Redis failed: {why}", client_id=wire.redact(client_id), why=str(e)
            )
            raise Unavailable(
                "the relay cannot reach its shared state (Redis) now; try again shortly"
            ) from None
        if result == -1:
            self.log.warn(
                "Redis key {key!r} is not ARP's (wrong type); refusing its id", key=f"{PREFIX}id:{client_id}"
            )
            raise Unavailable("the shared state holds something else under this client id")
        if result == -2:
            self.log.info(
                "registration for {client_id} waits: the relays are settling (Redis is new or lost its data)",
                client_id=wire.redact(client_id),
            )
            raise Unavailable(
                "the relays are settling (their shared state in Redis is new or was lost); try again shortly"
            )
        if result == -3:
            self._data_lost("its shared state is gone (no epoch)")
            raise Unavailable(
                "the relays are settling (their shared state in Redis is new or was lost); try again shortly"
            )
        if result == 0:
            self.log.warn(
                "refused registration for {client_id}: another relay has the id pinned to another identity",
                client_id=wire.redact(client_id),
            )
            raise ClientIdInUse("this client id is registered by another arpc instance")
        self.route_changed(client_id)
        if mode != "tcp":
            return 0
        try:
            port = yield self._cmd("HGET", f"{PREFIX}id:{client_id}", "port")
        except Exception:
            port = None
        return int(port) if isinstance(port, str) and port.isdigit() and 0 < int(port) < 65536 else 0

    @inlineCallbacks
    def reserve_port(self, client_id: str, port: int) -> object:
        """Record that raw TCP port ``port`` is ``client_id``'s on every relay (the same port
        everywhere, never another client's).  Raises :class:`Unavailable` if it is taken."""
        keys = [f"{PREFIX}id:{client_id}", f"{PREFIX}holders:{client_id}", EVENTS, f"{PREFIX}tcp-port:{port}"]
        try:
            result = yield self._cmd("EVAL", _RESERVE_PORT, len(keys), *keys, port, client_id, self.relay_id)
        except Exception as e:
            raise Unavailable(f"the relay cannot reach its shared state (Redis) now: {e}") from None
        if result != 1:
            raise Unavailable(f"TCP port {port} is another client's on another relay")
        self.ports[port] = (client_id, None)

    def ports_of_others(self, client_id: str) -> set[int]:
        """TCP ports reserved in Redis for clients other than ``client_id`` (memory only)."""
        now = self.clock.seconds()
        return {
            p
            for p, (owner, until) in self.ports.items()
            if owner != client_id and (until is None or until > now)
        }

    def _release(self, client_id: str) -> Deferred:
        return self._eval(_RELEASE, client_id, self.relay_id, int(self.registry.config.retention * 1000))

    def released(self, client_id: str) -> None:
        """Our control link to ``client_id`` closed."""
        if self.available:
            self._release(client_id).addErrback(
                lambda f: self.log.warn(
                    "releasing {client_id} in Redis failed: {why}",
                    client_id=wire.redact(client_id),
                    why=f.getErrorMessage(),
                )
            )
        self.route_changed(client_id)

    # -- events ---------------------------------------------------------------------------

    def _message(self, message: object) -> None:
        if not isinstance(message, str):
            return
        parts = message.split(" ")
        kind = parts[0]
        if len(parts) < 3 or not wire.CLIENT_ID_RE.match(parts[1]):
            self.log.warn(
                "ignoring a message on {channel}: {message!r}", channel=EVENTS, message=message[:80]
            )
            return
        client_id, relay_id = parts[1], parts[2]
        if kind == "down":  # (ours too) a client's TCP port is kept as long as its id
            until = self.clock.seconds() + self.registry.config.retention
            for port, (owner, _) in list(self.ports.items()):
                if owner == client_id:
                    self.ports[port] = (owner, until)
        if relay_id == self.relay_id:
            return
        if kind == "port":
            if len(parts) > 3 and parts[3].isdigit():
                self.ports[int(parts[3])] = (client_id, None)
            return
        if kind == "pin":  # after Redis lost its data, the id went back to the link it had before
            self.holders.pop(client_id, None)  # the "up" that follows names the relay holding it
            self._pinned_elsewhere(client_id, parts[3] if len(parts) > 3 else "")
            self.route_changed(client_id)
            return
        if kind == "up":
            self.holders.setdefault(client_id, set()).add(relay_id)
            self.modes[client_id] = parts[3] if len(parts) > 3 and parts[3] in ("http", "tcp") else "http"
            self.retained.pop(client_id, None)
            for port, (owner, _) in list(self.ports.items()):
                if owner == client_id:
                    self.ports[port] = (owner, None)
        elif kind in ("leave", "down"):
            held = self.holders.get(client_id)
            if held is not None:
                held.discard(relay_id)
                if not held:
                    del self.holders[client_id]
            if kind == "down" and client_id not in self.holders:
                try:
                    retention = int(parts[3]) / 1000
                except (IndexError, ValueError):
                    retention = self.registry.config.retention
                self.retained[client_id] = self.clock.seconds() + retention
        else:
            self.log.warn(
                "ignoring a message on {channel}: {message!r}", channel=EVENTS, message=message[:80]
            )
            return
        self.route_changed(client_id)

    def _pinned_elsewhere(self, client_id: str, identity_hex: str) -> None:
        """Another relay holds ``client_id`` for ``identity_hex`` since before Redis lost its
        data: a registration of another identity here came after the loss; drop it."""
        record = self.registry.clients.get(client_id)
        if record is None or record.identity.hex() == identity_hex:
            return
        self.log.warn(
            "client {client_id} ({identity}) registered here after Redis lost its data; another "
            "relay had the id linked before: dropping ours",
            client_id=wire.redact(client_id),
            identity=wire.fingerprint(record.identity),
        )
        self.registry.disconnect(
            client_id, "this client id is registered by another arpc instance (since before a Redis restart)"
        )

    # -- routing (memory only) -------------------------------------------------------

    def lookup(self, client_id: str, local: ClientRecord | None) -> ClientRecord | None:
        """The record a request for ``client_id`` goes to: the local one if the client is
        online here, else a stand-in that reaches a relay holding it, else a retained one."""
        if local is not None and local.online:
            return local
        remote = self.remote.get(client_id)
        if remote is not None:
            return remote
        if self.live_holders(client_id):
            return self._remote_record(client_id)
        if local is not None:
            return local
        if self.holders.get(client_id):  # held by relays we cannot reach right now
            return self._retained_record(client_id)
        deadline = self.retained.get(client_id)
        if deadline is not None and deadline > self.clock.seconds():
            return self._retained_record(client_id)
        return None

    def _retained_record(self, client_id: str) -> ClientRecord:
        pool = TunnelPool(client_id, 0, 0, 0.0, self.clock, lambda n: None)
        return ClientRecord(client_id, b"", self.modes.get(client_id, "http"), pool)

    def _remote_record(self, client_id: str) -> ClientRecord:
        config = self.registry.config
        record: ClientRecord | None = None

        def open_tunnels(count: int) -> None:
            if record is not None:
                self.open_remote(record, count)

        pool = TunnelPool(client_id, 0, config.max_tunnels, config.tunnel_timeout, self.clock, open_tunnels)
        record = ClientRecord(client_id, b"", self.modes.get(client_id, "http"), pool)
        record.control = self  # online: reached through another relay
        record.remote_address = "another relay"
        pool.set_online(True)
        self.remote[client_id] = record
        return record

    def route_changed(self, client_id: str) -> None:
        """Drop the stand-in for ``client_id`` if it is online here now, or held nowhere."""
        remote = self.remote.get(client_id)
        if remote is None:
            return
        local = self.registry.clients.get(client_id)
        if (local is not None and local.online) or not self.live_holders(client_id):
            del self.remote[client_id]
            remote.control = None
            remote.pool.set_online(False)
            self.registry._retire(remote)  # its counts stay in the relay's totals

    def live_holders(self, client_id: str) -> list[str]:
        """The relays holding ``client_id`` that we know the address of and last reached."""
        now = self.clock.seconds()
        held = self.holders.get(client_id, ())
        return [r for r in held if r in self.relays and self.suspects.get(r, 0.0) <= now]

    def open_remote(self, record: ClientRecord, count: int) -> None:
        """Open ``count`` relay-to-relay connections for ``record`` to relays that hold it."""
        from twisted.internet import reactor

        held = self.live_holders(record.client_id)
        if not held:
            self.route_changed(record.client_id)
            return
        for _ in range(count):
            self._rr += 1
            relay = self.relays[held[self._rr % len(held)]]
            host, _, port = relay["advertise"].rpartition(":")
            header = relay_header(self.key, record.client_id, self.relay_id, relay["id"], time.time())
            endpoint = HostnameEndpoint(reactor, host.strip("[]"), int(port), timeout=5)
            factory = Factory.forProtocol(lambda h=header: RelayTunnel(self, record, h))
            factory.noisy = False
            endpoint.connect(factory).addErrback(self._unreachable, relay, record)

    def _unreachable(self, failure: Failure, relay: dict, record: ClientRecord) -> None:
        """A relay we meant to carry a request to cannot be reached: avoid it for a while and
        use another holder; with none left, waiting requests get 503 at once (not a timeout)."""
        self.log.warn(
            "cannot reach relay {relay} at {address}: {why}",
            relay=relay["id"],
            address=relay["advertise"],
            why=failure.getErrorMessage(),
        )
        self.suspects[relay["id"]] = self.clock.seconds() + min(self.timeout, 10.0)
        if record.pool.pending:
            record.pool.pending.popleft()
        if self.remote.get(record.client_id) is record:
            if self.live_holders(record.client_id):
                if record.pool.waiters:
                    self.open_remote(record, 1)
            else:
                self.route_changed(record.client_id)

    # the stand-in record's "control link"
    def drop(self, reason: str) -> None:
        """Part of the control-link interface of a stand-in record: nothing to drop."""

    # -- the receiving end of relay-to-relay connections -------------------------------

    def accept_relay(self, proto: TunnelServerProtocol, line: bytes, rest: bytes) -> None:
        """A connection to our proxy port from another relay: check its header, then splice
        it onto one of the client's tunnels.  Every refusal is the same cut connection (a
        known id, an unknown one, a bad or replayed header), and an address that sends too
        many bad headers is refused for a while whatever it sends."""
        peer = proto.transport.getPeer()
        host = str(getattr(peer, "host", peer))
        if self.relay_guesses.blocked(host):
            self._log_blocked(host)
            proto.transport.abortConnection()
            return
        why, guess = self._check_relay_header(line)
        if why:
            if guess:  # not a relay (a relay's header may be stale: its peer restarted meanwhile)
                self.relay_guesses.miss(host)
            proto.log.warn("refused relay connection from {peer}: {why}", peer=peer, why=why)
            proto.transport.abortConnection()
            return
        client_id = line.split(b" ")[1].decode()
        record = self.registry.clients.get(client_id)
        if record is None or not record.online or record.mode != "http":
            proto.transport.abortConnection()  # gone meanwhile: the other relay answers 502/retries
            return
        proto.transport.pauseProducing()
        pending = [rest] if rest else []
        proto.attach(_Buffer(pending))
        d = record.pool.acquire()

        def got(tunnel: TunnelServerProtocol) -> None:
            record.pool.forget(tunnel)  # the far relay keeps the connection; this tunnel is its
            tunnel.record = None
            proto.detach()
            if not proto.transport.connected:
                tunnel.close()
                return
            for chunk in pending:
                tunnel.transport.write(chunk)
            record.requests += 1
            RelaySplice(proto, tunnel, self.clock)

        def failed(failure: Failure) -> None:
            proto.transport.loseConnection()

        d.addCallbacks(got, failed)

    def _log_blocked(self, host: str) -> None:
        now = self.clock.seconds()
        if self._blocked_logged.get(host, -RELAY_GUESS_WINDOW) > now - RELAY_GUESS_WINDOW:
            return
        if len(self._blocked_logged) > 1000:
            self._blocked_logged.clear()
        self._blocked_logged[host] = now
        self.log.warn(
            "refusing relay connections from {host} for a while: over {limit} bad relay headers in "
            "{window:g}s",
            host=host,
            limit=RELAY_GUESS_LIMIT,
            window=RELAY_GUESS_WINDOW,
        )

    def _check_relay_header(self, line: bytes) -> tuple[str, bool]:
        """Why the header ``line`` is refused, or "" if it is good (its nonce is then spent), and
        whether the refusal counts as a guess (a header no holder of the relay key made)."""
        import hmac

        parts = line.split(b" ")
        if len(parts) != 7 or parts[0] != RELAY_MAGIC:
            return "malformed relay header", True
        _, client_id, relay_id, to_relay, stamp, nonce, mac = parts
        try:
            if not wire.CLIENT_ID_RE.match(client_id.decode("ascii")):
                return "malformed client id", True
            when = int(stamp)
            given = bytes.fromhex(mac.decode("ascii"))
        except ValueError:
            return "malformed relay header", True
        expected = wire._mac(self.key, b"arp-relay-tunnel/2", client_id, relay_id, to_relay, stamp, nonce)
        if not hmac.compare_digest(expected, given):
            return "wrong relay credential (the relays must share --relay-key)", True
        if to_relay != self.relay_id.encode():
            return "relay header made for another relay", False
        if abs(time.time() - when) > RELAY_CLOCK_SKEW:
            return "relay header too old or from the future (are the relays' clocks in sync?)", False
        if nonce in self.nonces:
            return "relay header replayed", False
        if len(self.nonces) >= MAX_NONCES:
            return "too many relay connections at once", False
        self.nonces[nonce] = self.clock.seconds()
        return "", False

    # -- the admin view -----------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """False while the relay has given up its clients (Redis lost for over the bound)."""
        if self.available:
            return True
        return self.lost_since is None or self.clock.seconds() - self.lost_since <= self.timeout

    def relay_rows(self) -> list[dict]:
        """One row per relay (this one first), with the stats each publishes."""
        rows = [
            {
                "relay": self.relay_id,
                "advertise": self.advertise,
                "self": True,
                "redis": self.available,
                **self._stats(),
            }
        ]
        for relay_id, info in sorted(self.relays.items()):
            stats = info.get("stats") if isinstance(info.get("stats"), dict) else {}
            row = {"relay": relay_id, "advertise": info.get("advertise", ""), "self": False}
            for name in (
                "clients_online",
                "clients_retained",
                "requests",
                "bytes_in",
                "bytes_out",
                "tunnels_idle",
                "tunnels_busy",
            ):
                value = stats.get(name, 0)
                row[name] = value if isinstance(value, (int, float)) else 0
            rows.append(row)
        return rows


class _Buffer(TunnelOwner):
    """Holds what a relayed connection sends before its tunnel is there."""

    def __init__(self, pending: list[bytes]) -> None:
        self.pending = pending

    def tunnel_data(self, data: bytes) -> None:
        self.pending.append(data)

    def tunnel_eof(self) -> None:
        pass

    def tunnel_lost(self, reason: Failure) -> None:
        pass
