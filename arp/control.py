"""The AMP commands spoken on the control channel (arpc -> arps port 17001)."""

from __future__ import annotations

from twisted.protocols import amp


class AuthFailed(Exception):
    """The registration proof did not match the relay's auth key."""


class ClientIdInUse(Exception):
    """Another arpc instance holds this client id (connected or within retention)."""


class BadRegistration(Exception):
    """The registration request was malformed or asks for something not allowed."""


class Hello(amp.Command):
    """arpc -> arps: start a registration; arps answers with a fresh nonce."""

    arguments = [(b"version", amp.Integer())]
    response = [(b"nonce", amp.String()), (b"version", amp.Integer())]
    errors = {BadRegistration: b"BAD_REGISTRATION"}


class Register(amp.Command):
    """arpc -> arps: claim a client id, proving the auth key and the instance token."""

    arguments = [
        (b"client_id", amp.Unicode()),
        (b"sealed", amp.String()),
        (b"proof", amp.String()),
        (b"mode", amp.Unicode()),
        (b"remote_port", amp.Integer()),
    ]
    response = [
        (b"tunnel_secret", amp.Unicode()),
        (b"public_url", amp.Unicode()),
        (b"remote_port", amp.Integer()),
        (b"heartbeat", amp.Float()),
    ]
    errors = {
        AuthFailed: b"AUTH_FAILED",
        ClientIdInUse: b"CLIENT_ID_IN_USE",
        BadRegistration: b"BAD_REGISTRATION",
    }


class OpenTunnels(amp.Command):
    """arps -> arpc: open ``count`` more tunnel connections to the proxy port."""

    arguments = [(b"count", amp.Integer())]
    requiresAnswer = False


class Heartbeat(amp.Command):
    """Either way: proves the peer is alive; any traffic resets the other side's timer."""

    arguments: list = []
    response: list = []


class Release(amp.Command):
    """arps -> arpc: the relay is dropping this client (admin action or shutdown)."""

    arguments = [(b"reason", amp.Unicode())]
    requiresAnswer = False
