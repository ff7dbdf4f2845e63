"""Registering on the control channel the way arpc does, for tests that attack it."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols import amp

from arp import wire
from arp.control import Heartbeat, Hello, OpenTunnels, Register, Release


def registration(
    registry_nonce: bytes,
    client_id: str,
    auth_key: str,
    identity: object | None = None,
    mode: str = "http",
    remote_port: int = 0,
) -> tuple[dict, object]:
    """The Register arguments arpc would send for ``registry_nonce``, and its X25519 key."""
    identity = identity or wire.new_identity()
    exchange = wire.new_exchange()
    public = wire.public_bytes(identity)
    exchange_public = wire.public_bytes(exchange)
    data = wire.transcript(registry_nonce, client_id, mode, remote_port, public, exchange_public)
    args = {
        "client_id": client_id,
        "identity": public,
        "exchange": exchange_public,
        "signature": identity.sign(data),
        "proof": wire.admission_proof(wire.key_bytes(auth_key), data),
        "mode": mode,
        "remote_port": remote_port,
    }
    return args, exchange


def register_record(registry, control, client_id: str, auth_key: str, identity=None, mode="http", port=0):
    """Register ``client_id`` on ``registry`` directly (no socket); return the record."""
    nonce = registry.new_nonce()
    args, _ = registration(nonce, client_id, auth_key, identity, mode, port)
    return registry.register(
        control,
        nonce,
        args["client_id"],
        args["identity"],
        args["exchange"],
        args["signature"],
        args["proof"],
        args["mode"],
        args["remote_port"],
        "1.2.3.4:5",
    )


class Recorder(amp.AMP):
    """An AMP client that keeps every byte it sent and received."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = b""
        self.received = b""
        self.closed = None

    def makeConnection(self, transport) -> None:
        write = transport.write

        def recording_write(data: bytes) -> None:
            self.sent += data
            write(data)

        transport.write = recording_write
        super().makeConnection(transport)

    @OpenTunnels.responder
    def open_tunnels(self, count: int) -> dict:
        return {}

    @Heartbeat.responder
    def heartbeat(self) -> dict:
        return {}

    @Release.responder
    def release(self, reason: str) -> dict:
        return {}

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        super().dataReceived(data)

    def connectionLost(self, reason) -> None:
        self.closed = reason
        super().connectionLost(reason)


async def connect_control(port: int) -> Recorder:
    """A recording AMP connection to the relay's control port on loopback."""
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Recorder())


async def register_over(proto: amp.AMP, client_id: str, auth_key: str, identity=None) -> dict:
    """Hello + Register on ``proto`` as arpc does; the Register answer."""
    hello = await proto.callRemote(Hello, version=wire.PROTOCOL_VERSION)
    args, _ = registration(hello["nonce"], client_id, auth_key, identity)
    return await proto.callRemote(Register, **args)
