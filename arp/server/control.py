"""The relay's end of the control channel: registration, heartbeats, tunnel requests."""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from arp import wire
from arp.control import BadRegistration, Heartbeat, Hello, OpenTunnels, Register, Release
from arp.server.registry import ClientRecord, Registry
from arp.splice import tune

REGISTER_TIMEOUT = 15.0


class ControlServerProtocol(amp.AMP, TimeoutMixin):
    """One arpc's control connection."""

    log = Logger()

    def __init__(self, registry: Registry, clock: object) -> None:
        super().__init__()
        self.registry = registry
        self.clock = clock
        self.callLater = clock.callLater
        self.nonce: bytes | None = None
        self.record: ClientRecord | None = None
        self._beat: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune(self.transport, keepalive=True)
        self.setTimeout(REGISTER_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        if self.record is not None:  # before registration the 15 s limit is not extended by chatter
            self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        who = wire.redact(self.record.client_id) if self.record else self.peer_address()
        self.log.info("control connection of {who} timed out", who=who)
        self.transport.abortConnection()

    def peer_address(self) -> str:
        """The peer's address as ``host:port``."""
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"

    @Hello.responder
    def hello(self, version: int) -> dict:
        if version != wire.PROTOCOL_VERSION:
            raise BadRegistration(
                f"protocol version {version} not supported (relay speaks {wire.PROTOCOL_VERSION})"
            )
        self.nonce = self.registry.new_nonce()
        return {"nonce": self.nonce, "version": wire.PROTOCOL_VERSION}

    @Register.responder
    def register(self, client_id: str, sealed: bytes, proof: bytes, mode: str, remote_port: int) -> dict:
        if self.nonce is None:
            raise BadRegistration("send Hello first")
        if self.record is not None:
            raise BadRegistration("already registered on this connection")
        nonce, self.nonce = self.nonce, None  # one registration attempt per nonce
        record = self.registry.register(
            self, nonce, client_id, sealed, proof, mode, remote_port, self.peer_address()
        )
        self.record = record
        interval = self.registry.config.heartbeat
        self.setTimeout(interval * 3)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(interval, now=False)
        # after the answer (which carries the tunnel secret) has gone out
        self.clock.callLater(0, self.registry.start_pool, record)
        return {
            "tunnel_secret": record.tunnel_secret,
            "public_url": self.registry.public_url(client_id),
            "remote_port": record.remote_port,
            "heartbeat": interval,
        }

    @Heartbeat.responder
    def heartbeat(self) -> dict:
        return {}

    def _heartbeat(self) -> None:
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
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.record is not None:
            self.registry.control_lost(self.record, self)
            self.record = None
        super().connectionLost(reason)


class ControlFactory(Factory):
    """Builds :class:`ControlServerProtocol` for the control port."""

    noisy = False

    def __init__(self, registry: Registry, clock: object) -> None:
        self.registry = registry
        self.clock = clock

    def buildProtocol(self, addr: object) -> ControlServerProtocol:
        return ControlServerProtocol(self.registry, self.clock)
