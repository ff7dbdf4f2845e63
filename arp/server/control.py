"""The relay's end of the control channel: registration, heartbeats, tunnel requests.

Limits on what an arpc (or anyone who connects) may make the relay hold or do:

- a box is capped in keys and bytes while it is read (:class:`arp.control.BoundedBoxes`);
- a box that has started must end within ``BOX_TIMEOUT`` (or the heartbeat
  interval if shorter): a trickle of bytes is not progress;
- before registration: ``RELAY_REGISTRATION_WINDOW`` in all, not extended by anything,
  and at most ``MAX_BOXES_BEFORE_REGISTRATION`` boxes; at most
  ``MAX_PENDING_PER_ADDRESS`` unregistered connections per source address;
- after registration: only a complete box resets the idle timeout (3 heartbeat
  intervals), and at most ``MAX_BOXES_PER_BEAT`` boxes per heartbeat interval
  (a client sends two: its heartbeat and the answer to ours);
- a peer that leaves ``MAX_UNREAD`` bytes of the relay's answers unread for
  the box timeout is closed instead of being buffered for.

Each breach logs one line saying which limit, then aborts the connection.
"""

from __future__ import annotations

from hmac import compare_digest as secrets_equal

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import wire
from arp.control import (
    RELAY_REGISTRATION_WINDOW,
    AuthFailed,
    BadRegistration,
    BoundedBoxes,
    Heartbeat,
    Hello,
    Leave,
    OpenTunnels,
    Register,
    Release,
)
from arp.mismatch import MismatchLog, looks_like_tls
from arp.server.registry import ClientRecord, Registry
from arp.splice import tune

#: Seconds a box may take from its first byte to its end (at most the heartbeat interval).
BOX_TIMEOUT = 10.0
#: Boxes a connection may send before it is registered (Hello and Register).
MAX_BOXES_BEFORE_REGISTRATION = 4
#: Boxes a registered client may send per heartbeat interval.
MAX_BOXES_PER_BEAT = 16
#: Unregistered control connections allowed at once from one source address (an IPv6 /64
#: counts as one; each holds at most one box, MAX_BOX_BYTES, for at most RELAY_REGISTRATION_WINDOW).
MAX_PENDING_PER_ADDRESS = 128
#: Bytes of the relay's answers a peer may leave unread (the transport's buffer size, which
#: calls ``pauseProducing``); if that lasts ``BOX_TIMEOUT``, the peer is closed.
MAX_UNREAD = 64 * 1024


@implementer(IPushProducer)
class ControlServerProtocol(BoundedBoxes, amp.AMP, TimeoutMixin):
    """One arpc's control connection."""

    log = Logger()

    def __init__(self, registry: Registry, clock: object, factory: ControlFactory | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.clock = clock
        self.callLater = clock.callLater
        self.factory = factory
        self.closing = ""  # set by the factory: refuse this connection as soon as it is made
        self.nonce: bytes | None = None
        self.record: ClientRecord | None = None
        self.boxes = 0
        self.chatter = 0
        self.box_timeout = min(BOX_TIMEOUT, registry.config.heartbeat)
        self._box_timer: object | None = None
        self._unread_timer: object | None = None
        self._beat: LoopingCall | None = None
        self._spoke = False  # whether the peer has sent anything yet
        self._here: object | None = None  # over TLS: the port's address, for a mismatch line

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.closing:
            self.refuse(self.closing)
            return
        tune(self.transport, keepalive=True)
        if self.factory is not None and ISSLTransport.providedBy(self.transport):
            self._here = self.transport.getHost()  # a closed TLS transport cannot tell it
        self.transport.registerProducer(self, True)  # told when our answers go unread
        self.setTimeout(RELAY_REGISTRATION_WINDOW)

    def dataReceived(self, data: bytes) -> None:
        if not self._spoke:
            self._spoke = True
            if looks_like_tls(data) and not ISSLTransport.providedBy(self.transport):
                self._box_refused = True  # an arpc told tls: on this plain port
                if self.factory is not None:
                    self.factory.mismatch.tls_on_plain("control", self.transport)
                self.transport.abortConnection()
                return
        if self._box_timer is None:  # the first bytes of a box: it must end in time
            self._box_timer = self.clock.callLater(self.box_timeout, self._box_expired)
        try:
            super().dataReceived(data)
        except Exception as e:  # a box AMP cannot take (no command, an answer to nothing...)
            self.refuse(f"not an ARP control message ({type(e).__name__})")

    def refuse(self, why: str) -> None:
        """Stop parsing and abort; logged as usual for a registered client, within the per-address
        limits (:class:`arp.mismatch.MismatchLog`) for a connection that never registered."""
        if self.record is not None or self.factory is None:
            super().refuse(why)
            return
        self._box_refused = True
        self.factory.mismatch.noise("control", self.transport, f"closed: {why}")
        self.transport.abortConnection()

    def box_completed(self) -> None:
        if self._box_timer is not None:
            if self._box_timer.active():
                self._box_timer.cancel()
            self._box_timer = None
        self.boxes += 1
        if self.record is None:
            if self.boxes > MAX_BOXES_BEFORE_REGISTRATION:
                self.refuse(f"more than {MAX_BOXES_BEFORE_REGISTRATION} boxes before registering")
            return
        self.chatter += 1
        if self.chatter > MAX_BOXES_PER_BEAT:
            self.refuse(f"more than {MAX_BOXES_PER_BEAT} boxes in one heartbeat interval")
            return
        self.resetTimeout()  # only a whole box is progress

    def _box_expired(self) -> None:
        self._box_timer = None
        self.refuse(f"a box not finished within {self.box_timeout:g}s")

    # IPushProducer: the transport's buffer of our answers is full (the peer is not reading)
    def pauseProducing(self) -> None:
        if self._unread_timer is None:
            self._unread_timer = self.clock.callLater(self.box_timeout, self._unread_expired)

    def resumeProducing(self) -> None:
        if self._unread_timer is not None:
            if self._unread_timer.active():
                self._unread_timer.cancel()
            self._unread_timer = None

    def stopProducing(self) -> None:
        self.resumeProducing()

    def _unread_expired(self) -> None:
        self._unread_timer = None
        self.refuse(f"it left more than {MAX_UNREAD} bytes of answers unread for {self.box_timeout:g}s")

    def timeoutConnection(self) -> None:
        who = wire.redact(self.record.client_id) if self.record else self.peer_address()
        if self.record is None:
            if self.factory is not None:
                self.factory.mismatch.noise("control", self.transport, "did not register in time")
            else:
                self.log.info("control connection of {who} did not register in time", who=who)
        else:
            self.log.info("control connection of {who} timed out", who=who)
        self.transport.abortConnection()

    @Hello.responder
    def hello(self, version: int) -> dict:
        if version != wire.PROTOCOL_VERSION:
            raise BadRegistration(
                f"protocol version {version} not supported (relay speaks {wire.PROTOCOL_VERSION}): "
                "use an arpc of the relay's version"
            )
        if self.nonce is not None or self.record is not None:
            raise BadRegistration("one Hello per connection")
        self.nonce = self.registry.new_nonce()
        return {"nonce": self.nonce, "version": wire.PROTOCOL_VERSION}

    @Register.responder
    def register(
        self,
        client_id: str,
        identity: bytes,
        exchange: bytes,
        signature: bytes,
        proof: bytes,
        mode: str,
        remote_port: int,
        binding: bytes | None = None,
    ) -> dict:
        if self.record is not None:
            raise BadRegistration("already registered on this connection")
        if self.nonce is None:
            raise BadRegistration("send Hello first (each connection gets its own nonce)")
        nonce, self.nonce = self.nonce, b""  # one registration attempt per connection
        binding = binding or b""
        ours = wire.channel_binding(self.transport)
        # without TLS here (TLS ended by a proxy in front) there is nothing to compare
        if ours and not secrets_equal(binding, ours):
            self.log.warn(
                "refused registration for {client_id} from {address}: its TLS session is not this one "
                "(something between arpc and the relay terminates TLS)",
                client_id=wire.redact(client_id),
                address=self.peer_address(),
            )
            raise AuthFailed("the TLS session arpc signed is not the relay's (something in between ends TLS)")
        address = self.peer_address()
        args = (nonce, client_id, identity, exchange, signature, proof, mode, remote_port, address)
        cluster = self.registry.cluster
        if cluster is not None:  # several relays: pin the id in Redis first (refused if it is down)
            tenant = self.registry.admit(*args, binding=binding)
            done = cluster.claim(client_id, identity, tenant, mode)
            done.addCallback(self._claimed, args, binding, tenant)
            return done
        return self._registered(self.registry.register(self, *args, binding=binding), client_id)

    def _claimed(self, port: int, args: tuple, binding: bytes, tenant: str) -> dict | Deferred:
        if port:  # raw TCP: the port this client has on every relay
            args = (*args[:7], port, *args[8:])
        record = self.registry.register(self, *args, binding=binding, tenant=tenant)
        if self.transport.disconnecting or not self.transport.connected:
            self.registry.control_lost(record, self)  # gone while Redis answered
            raise BadRegistration("the control connection closed during registration")
        if record.mode != "tcp":
            return self._registered(record, args[1])

        def refused(failure: Failure) -> Failure:
            if record.control is self:
                self.registry.control_lost(record, self)
            self.registry.disconnect(record.client_id)
            return failure

        reserved = self.registry.cluster.reserve_port(record.client_id, record.remote_port)
        reserved.addCallbacks(lambda _: self._registered(record, args[1]), refused)
        return reserved

    def _registered(self, record: ClientRecord, client_id: str) -> dict:
        self.record = record
        if self.registry.cluster is not None:
            self.registry.cluster.route_changed(client_id)
        if self.factory is not None:
            self.factory.registered(self)
        interval = self.registry.config.heartbeat
        self.setTimeout(interval * 3)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(interval, now=False)
        # after the answer (from which arpc derives the tunnel key) has gone out
        self.clock.callLater(0, self.registry.start_pool, record)
        answer = {
            "exchange": record.relay_exchange,
            "public_url": self.registry.public_url(client_id),
            "remote_port": record.remote_port,
            "heartbeat": interval,
            # so that arpc can check its endpoints' transports (see arp/mismatch.py)
            "control_tls": ISSLTransport.providedBy(self.transport),
        }
        proxy_tls = self.factory.proxy_tls if self.factory is not None else None
        if proxy_tls is not None:
            answer["proxy_tls"] = proxy_tls
        return answer

    @Heartbeat.responder
    def heartbeat(self) -> dict:
        return {}

    @Leave.responder
    def leave(self) -> dict:
        if self.record is not None:
            self.registry.stopping(self.record, self)
        return {}

    def _heartbeat(self) -> None:
        self.chatter = 0
        self.callRemote(Heartbeat).addErrback(lambda f: None)

    def open_tunnels(self, count: int) -> None:
        """Ask the client to open ``count`` tunnel connections."""
        self.callRemote(OpenTunnels, count=count)  # no answer expected (requiresAnswer=False)

    def drop(self, reason: str) -> None:
        """Tell the client why, then close the connection."""
        self.record = None
        try:
            self.callRemote(Release, reason=reason)
        except Exception:
            pass
        self.transport.unregisterProducer()  # a TLS transport would wait for it before closing
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if not self.boxes and self._here is not None:  # a TLS handshake that failed on plain bytes?
            self.factory.mismatch.lost("control", self.transport, self._here, reason)
        self.setTimeout(None)
        if self._box_timer is not None and self._box_timer.active():
            self._box_timer.cancel()
        self._box_timer = None
        self.resumeProducing()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.factory is not None:
            self.factory.registered(self)
        if self.record is not None:
            self.registry.control_lost(self.record, self)
            self.record = None
        super().connectionLost(reason)


def source_of(addr: object) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one host's range)."""
    return wire.source_range(str(getattr(addr, "host", addr)))


class ControlFactory(Factory):
    """Builds :class:`ControlServerProtocol` for the control port; caps unregistered
    connections per source address."""

    noisy = False
    log = Logger()
    #: Whether the relay's proxy port uses TLS (told to arpc at registration); None: unknown.
    proxy_tls: bool | None = None

    def __init__(self, registry: Registry, clock: object) -> None:
        self.registry = registry
        self.clock = clock
        self.pending: dict[str, set[ControlServerProtocol]] = {}
        self.mismatch = MismatchLog(clock)  # TLS on a plain port, or the reverse

    def buildProtocol(self, addr: object) -> ControlServerProtocol:
        host = source_of(addr)
        waiting = self.pending.setdefault(host, set())
        if len(waiting) >= MAX_PENDING_PER_ADDRESS:
            # a protocol that closes at once (None would break a TLS wrapper around this factory)
            proto = ControlServerProtocol(self.registry, self.clock)
            proto.closing = f"{len(waiting)} unregistered control connections from {host} already open"
            return proto
        proto = ControlServerProtocol(self.registry, self.clock, self)
        proto.pending_host = host
        waiting.add(proto)
        return proto

    def registered(self, proto: ControlServerProtocol) -> None:
        """``proto`` registered or closed: it no longer counts as pending."""
        host = getattr(proto, "pending_host", None)
        waiting = self.pending.get(host)
        if waiting is not None:
            waiting.discard(proto)
            if not waiting:
                del self.pending[host]
