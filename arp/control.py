"""The AMP commands spoken on the control channel (arpc -> arps port 17001), and its limits.

Twisted's AMP bounds the length of one key (255 bytes) and one value (64 KiB)
but neither the number of keys in a box nor the size of a box, so a peer that
never ends a box could make the other side keep any amount of it.
:class:`BoundedBoxes` caps both, for both ends of the channel.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.protocols import amp

#: Most keys one box may have.  The largest box ARP sends (Register) has 9.
MAX_BOX_KEYS = 32
#: Most bytes (keys, values and their length prefixes) one box may have.  ARP's are under 1 KiB.
MAX_BOX_BYTES = 16 * 1024

# The two ends wait for different things, so each wait has its own name:
#: arps: seconds a new control connection has to register (Hello + Register); nothing extends it.
RELAY_REGISTRATION_WINDOW = 15.0
#: arpc: seconds it waits, from connecting until the relay registers it, for a whole box from the
#: relay (any whole box resets it) before it calls the relay silent and reconnects.  Longer than the
#: relay's window, so the relay's own refusal (with its reason) arrives first.
CLIENT_REGISTRATION_TIMEOUT = 30.0


class AuthFailed(Exception):
    """The registration did not prove the relay's auth key (or the identity's signature failed)."""


class ClientIdInUse(Exception):
    """Another arpc instance (another identity key) holds this client id, online or in retention."""


class BadRegistration(Exception):
    """The registration request was malformed or asks for something not allowed.

    Retrying the same request cannot help: arpc stops.
    """


class Unavailable(Exception):
    """The relay cannot take this registration now (no free TCP port, too busy): try again later."""


class Hello(amp.Command):
    """arpc -> arps: start a registration; arps answers with a fresh nonce for this connection."""

    arguments = [(b"version", amp.Integer())]
    response = [(b"nonce", amp.String()), (b"version", amp.Integer())]
    errors = {BadRegistration: b"BAD_REGISTRATION"}


class Register(amp.Command):
    """arpc -> arps: claim a client id with the identity key's signature and the auth key's MAC.

    ``identity`` is arpc's Ed25519 public key, ``signature`` its signature of the
    registration transcript (:func:`arp.wire.transcript`), ``proof`` the MAC of the
    same transcript under the auth key, ``exchange`` an ephemeral X25519 public key,
    ``binding`` arpc's TLS channel binding (empty without TLS), also in the transcript.
    The answer carries the relay's X25519 public key; both ends derive the tunnel key.
    Nothing secret is in either box.
    """

    arguments = [
        (b"client_id", amp.Unicode()),
        (b"identity", amp.String()),
        (b"exchange", amp.String()),
        (b"signature", amp.String()),
        (b"proof", amp.String()),
        (b"mode", amp.Unicode()),
        (b"remote_port", amp.Integer()),
        (b"binding", amp.String(optional=True)),
    ]
    response = [
        (b"exchange", amp.String()),
        (b"public_url", amp.Unicode()),
        (b"remote_port", amp.Integer()),
        (b"heartbeat", amp.Float()),
        # whether the relay's control and proxy ports use TLS, so that arpc can refuse a proxy
        # endpoint every tunnel would fail on (arp/mismatch.py); optional: older peers ignore them
        (b"control_tls", amp.Boolean(optional=True)),
        (b"proxy_tls", amp.Boolean(optional=True)),
    ]
    errors = {
        AuthFailed: b"AUTH_FAILED",
        ClientIdInUse: b"CLIENT_ID_IN_USE",
        BadRegistration: b"BAD_REGISTRATION",
        Unavailable: b"UNAVAILABLE",
    }


class OpenTunnels(amp.Command):
    """arps -> arpc: open ``count`` more tunnel connections to the proxy port."""

    arguments = [(b"count", amp.Integer())]
    requiresAnswer = False


class Heartbeat(amp.Command):
    """Either way: proves the peer is alive; the only chatter a registered client sends."""

    arguments: list = []
    response: list = []


class Leave(amp.Command):
    """arpc -> arps: the owner is stopping this client on purpose (arpc disconnects next).

    The relay then tells browsers "stopped by its owner" instead of "reconnecting", and still
    keeps the id for the retention time.  A relay older than this command answers with an
    unknown-command error, which arpc ignores.
    """

    arguments: list = []
    response: list = []


class Release(amp.Command):
    """arps -> arpc: the relay is dropping this client (admin action or shutdown)."""

    arguments = [(b"reason", amp.Unicode())]
    requiresAnswer = False


class BoundedBoxes:
    """Mixin for :class:`amp.AMP` that refuses a box with too many keys or bytes as it arrives.

    The count is kept while the box is being read, and includes the part of a
    key or value still arriving, so a box that is never ended (or one huge
    value) is cut at the cap instead of being held.  On a breach :meth:`box_too_large`
    runs (default: log and abort the connection) and nothing more is parsed.
    :meth:`box_completed` runs for every complete box before it is dispatched.
    """

    log = Logger()
    max_box_keys = MAX_BOX_KEYS
    max_box_bytes = MAX_BOX_BYTES
    _box_keys = 0
    _box_bytes = 0
    _box_refused = False
    _unparsed = 0  # bytes received but not yet parsed into a key or value (a partial string)

    def dataReceived(self, data: bytes) -> None:
        self._unparsed += len(data)
        super().dataReceived(data)  # type: ignore[misc]
        held = self._box_bytes + self._unparsed
        if not self._box_refused and held > self.max_box_bytes:  # e.g. one huge value, still coming
            self.box_too_large(self._box_keys, held)

    def stringReceived(self, string: bytes) -> None:
        self._unparsed -= len(string) + 2
        if self._box_refused:
            return
        if self.state in ("init", "key"):  # StatefulStringProtocol: a key (or the box's end) is next
            if not string:
                if not self._box_keys:
                    self.refuse("empty control box")
                    return
                self._box_keys = self._box_bytes = 0
                self.box_completed()
                if not self._box_refused:
                    super().stringReceived(string)  # type: ignore[misc]
                return
            self._box_keys += 1
        self._box_bytes += len(string) + 2
        if self._box_keys > self.max_box_keys or self._box_bytes > self.max_box_bytes:
            self._box_refused = True
            self.box_too_large(self._box_keys, self._box_bytes)
            return
        super().stringReceived(string)  # type: ignore[misc]

    def box_completed(self) -> None:
        """A whole box has arrived (called before it is dispatched)."""

    def box_too_large(self, keys: int, size: int) -> None:
        """A box went over a cap: log it and abort the connection."""
        self.refuse(
            f"control box over the limit ({keys} keys, {size} bytes; at most {self.max_box_keys} keys, "
            f"{self.max_box_bytes} bytes)"
        )

    def refuse(self, why: str) -> None:
        """Stop parsing, log ``why`` and abort the connection."""
        self._box_refused = True
        self.log.warn("closing the control connection of {peer}: {why}", peer=self.peer_address(), why=why)
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def peer_address(self) -> str:
        """The peer's address as ``host:port``."""
        peer = self.transport.getPeer()  # type: ignore[attr-defined]
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
