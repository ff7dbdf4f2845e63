"""Secrets, proofs and the tunnel header shared by arps and arpc.

Registration uses a challenge: arps sends a fresh nonce, arpc answers with an
HMAC of it under the shared auth key, so the key never crosses the wire.  The
client's *instance token* (its claim to keep its client id across reconnects)
travels sealed under the same key, so a listener without the key cannot replay
it.  Tunnel connections to the proxy port start with one header line naming
the client and the per-registration tunnel secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

PROTOCOL_VERSION = 1
NONCE_SIZE = 32
TOKEN_SIZE = 32
TUNNEL_MAGIC = b"ARP-TUNNEL/1"
MAX_TUNNEL_HEADER = 256
#: The byte arps sends on a raw TCP tunnel to tell arpc a connection has come in.
TCP_START = b"\n"

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def seal_token(key: bytes, nonce: bytes, token: bytes) -> bytes:
    """Encrypt a TOKEN_SIZE instance token for one registration (one-time pad)."""
    pad = _mac(key, b"arp-seal", nonce)
    return bytes(a ^ b for a, b in zip(token, pad, strict=True))


def unseal_token(key: bytes, nonce: bytes, sealed: bytes) -> bytes:
    """Inverse of :func:`seal_token`."""
    if len(sealed) != TOKEN_SIZE:
        raise ValueError("sealed instance token has the wrong size")
    return seal_token(key, nonce, sealed)


def register_proof(key: bytes, nonce: bytes, client_id: str, sealed: bytes) -> bytes:
    """What arpc sends to prove it knows the auth key, bound to this nonce and id."""
    return _mac(key, b"arp-register", nonce, client_id.encode("utf-8"), sealed)


def check_proof(key: bytes, nonce: bytes, client_id: str, sealed: bytes, proof: bytes) -> bool:
    """Constant-time check of a registration proof."""
    return hmac.compare_digest(register_proof(key, nonce, client_id, sealed), proof)


def tunnel_header(client_id: str, tunnel_secret: str) -> bytes:
    """The first line arpc writes on a new tunnel connection."""
    return b"%s %s %s\r\n" % (TUNNEL_MAGIC, client_id.encode("ascii"), tunnel_secret.encode("ascii"))


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


def redact(client_id: str) -> str:
    """A client id as logs show it: the id is the token that reaches a service, so only a prefix."""
    return client_id if len(client_id) <= 8 else client_id[:6] + "..."


def secrets_equal(a: str, b: str) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
