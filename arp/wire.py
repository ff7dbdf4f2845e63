"""Registration proofs, client identities, and the tunnel header shared by arps and arpc.

Registration is a challenge: arps sends a fresh nonce on each control
connection, and arpc answers with

- an HMAC of the registration *transcript* (nonce, client id, mode, port and the
  public keys below) under the shared auth key: the admission check, so the
  auth key never crosses the wire;
- its Ed25519 public key (its identity, kept in arpc's data directory) and a
  signature of the same transcript: the proof that it owns the id, which arps
  pins to the id (nothing secret is sent, so a capture gives an eavesdropper
  nothing to unseal or replay: the next connection has another nonce);
- over TLS, the session's exported keying material in the transcript, so a
  man in the middle who terminates TLS cannot pass a registration on;
- an ephemeral X25519 public key; arps answers with its own, and both derive
  the registration's tunnel key from the shared secret.  Tunnel connections to
  the proxy port start with one header line naming the client and a one-time
  token (a serial number and its MAC under the tunnel key), so the tunnel key
  never crosses the wire either and a captured header cannot be used again.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PROTOCOL_VERSION = 2
NONCE_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
TUNNEL_MAGIC = b"ARP-TUNNEL/1"
MAX_TUNNEL_HEADER = 256
#: The byte arps sends on a raw TCP tunnel to tell arpc a connection has come in.
TCP_START = b"\n"

#: A client id; ``\Z``, not ``$`` (which also matches before a final newline: the id goes into headers).
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_TUNNEL_TOKEN_RE = re.compile(r"[0-9a-f]{64}")


class BadTunnelHeader(ValueError):
    """The first line on a proxy-port connection was not a valid tunnel header."""


def random_hex(nbytes: int = 16) -> str:
    """Return ``2 * nbytes`` random hex characters."""
    return os.urandom(nbytes).hex()


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, label, hashlib.sha256)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def key_bytes(auth_key: str) -> bytes:
    """The HMAC key derived from the textual auth key."""
    return hashlib.sha256(b"arp-auth-key\0" + auth_key.encode("utf-8")).digest()


def transcript(
    nonce: bytes,
    client_id: str,
    mode: str,
    remote_port: int,
    identity: bytes,
    exchange: bytes,
    binding: bytes = b"",
) -> bytes:
    """What one registration commits to: signed by the identity key and MACed with the auth key.

    The relay's nonce makes it good for one control connection only; ``binding``
    (see :func:`channel_binding`) ties it to arpc's TLS session, if it has one.
    """
    parts = (
        nonce,
        client_id.encode("utf-8"),
        mode.encode("utf-8"),
        str(remote_port).encode("ascii"),
        identity,
        exchange,
        binding,
    )
    out = [b"arp-register/2"]
    for part in parts:
        out.append(len(part).to_bytes(4, "big"))
        out.append(part)
    return b"".join(out)


def channel_binding(transport: object) -> bytes:
    """The TLS session's exported keying material (RFC 5705), or b"" on a connection without TLS.

    Both ends of one TLS session get the same 32 bytes; a man in the middle who
    terminates TLS has two sessions and so two different values.
    """
    from twisted.internet.interfaces import ISSLTransport

    if not ISSLTransport.providedBy(transport):
        return b""
    try:
        export = transport.getHandle().export_keying_material  # type: ignore[attr-defined]
        return bytes(export(b"EXPORTER-arp-register", 32))
    except Exception:  # an SSL object without exporters, or a handshake not finished
        return b""


def admission_proof(key: bytes, data: bytes) -> bytes:
    """The MAC of a registration transcript under the (derived) auth key."""
    return _mac(key, b"arp-admit", data)


def check_admission(key: bytes, data: bytes, proof: bytes) -> bool:
    """Constant-time check of an admission proof."""
    return hmac.compare_digest(admission_proof(key, data), proof)


# -- identities (Ed25519) and the tunnel key exchange (X25519) -------------------
# ``cryptography`` is imported on first use: ``twistd --help`` and the tests that
# never register stay light.


def new_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key for one arpc instance."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def identity_to_hex(identity: Ed25519PrivateKey) -> str:
    """The private key as the hex text kept in arpc's ``identity-key`` file."""
    return identity.private_bytes_raw().hex()


def identity_from_hex(text: str) -> Ed25519PrivateKey:
    """Load an identity written by :func:`identity_to_hex`; ValueError if it is not one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("the identity key is not hex") from None
    if len(raw) != 32:
        raise ValueError("the identity key must be 32 bytes (64 hex characters)")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an Ed25519 or X25519 private key."""
    return key.public_key().public_bytes_raw()


def fingerprint(public: bytes) -> str:
    """A short printable name of a public key, for logs."""
    return "SHA256:" + hashlib.sha256(public).hexdigest()[:16]


def verify_signature(public: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is the Ed25519 signature of ``data`` by ``public``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def new_exchange() -> X25519PrivateKey:
    """A fresh ephemeral X25519 key for one registration's tunnel key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate()


def tunnel_key(mine: X25519PrivateKey, theirs: bytes, nonce: bytes, client_id: str) -> str:
    """The registration's tunnel key (hex), the same on both ends; ValueError for a bad peer key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    if len(theirs) != PUBLIC_KEY_SIZE:
        raise ValueError("the key exchange value has the wrong size")
    shared = mine.exchange(X25519PublicKey.from_public_bytes(theirs))  # ValueError if all-zero
    return _mac(shared, b"arp-tunnel-key", nonce, client_id.encode("utf-8")).hex()


#: Serial numbers of the tunnel tokens this process makes: never the same twice.
_serials = itertools.count(1)


def tunnel_token(client_id: str, key: str, serial: int) -> str:
    """The one-time token of tunnel number ``serial``: the serial and its MAC under the tunnel key."""
    mac = _mac(bytes.fromhex(key), b"arp-tunnel", client_id.encode("utf-8"), serial.to_bytes(8, "big"))
    return serial.to_bytes(8, "big").hex() + mac[:24].hex()


def check_tunnel_token(client_id: str, key: str, token: str) -> int | None:
    """The serial of a valid tunnel token, or None."""
    if not key or not _TUNNEL_TOKEN_RE.fullmatch(token):
        return None
    serial = int(token[:16], 16)
    if not hmac.compare_digest(tunnel_token(client_id, key, serial), token):
        return None
    return serial


def tunnel_header(client_id: str, key: str) -> bytes:
    """The first line arpc writes on a new tunnel connection: a fresh one-time token each call."""
    token = tunnel_token(client_id, key, next(_serials))
    return b"%s %s %s\r\n" % (TUNNEL_MAGIC, client_id.encode("ascii"), token.encode("ascii"))


def parse_tunnel_header(line: bytes) -> tuple[str, str]:
    """Parse a tunnel header line (without its line ending) into (client_id, secret)."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != TUNNEL_MAGIC:
        raise BadTunnelHeader("not an ARP tunnel header")
    try:
        client_id, secret = parts[1].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise BadTunnelHeader("tunnel header is not ASCII")
    if not CLIENT_ID_RE.match(client_id) or not re.fullmatch(r"[0-9a-f]{32,128}", secret):
        raise BadTunnelHeader("malformed client id or secret")
    return client_id, secret


def source_range(host: str) -> str:
    """Whom an address counts against in per-source limits: an IPv4 address, or an IPv6 /64 (one
    host's range: rotating addresses within it must not reset a limit); anything else as given."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a UNIX socket, "relay", or a test's fake address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def redact(client_id: str) -> str:
    """A client id as logs show it: the id is the token that reaches a service, so only a prefix."""
    return client_id if len(client_id) <= 8 else client_id[:6] + "..."


def secrets_equal(a: str, b: str) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
