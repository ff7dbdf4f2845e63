"""How the public front rewrites messages on their way through: request heads, HSTS.

Pure functions over :class:`arp.http.Head`, used by :mod:`arp.server.public`; where each
message ends (body framing) is :class:`arp.http.BodyFramer`'s business.
"""

from __future__ import annotations

from arp import http
from arp.server.routing import TOKEN_HEADER

HSTS = b"strict-transport-security"

#: Connection tokens that name no header to drop: keep-alive signals, framing headers that the
#: relay frames by (dropping them would let the next hop read the body differently), and Host,
#: which every HTTP/1.1 request must carry.
_NOT_LISTED = frozenset({b"close", b"keep-alive", b"upgrade", b"host"}) | http.FRAMING
#: Request headers replaced on the way to the client: hop-by-hop ones, X-Forwarded-*, the token,
#: and ``Forwarded``/``X-Real-IP`` (dropped: a client must not say where it comes from).
#: ``HTTP2-Settings`` belongs to an ``Upgrade: h2c`` offer, which the relay never passes on (it
#: speaks HTTP/1.1 to the service): both go, so the service never sees half an offer.
_REWRITTEN = http.HOP_BY_HOP | {
    b"forwarded",  # a client's own claims of where it is from: only the relay says that
    b"x-real-ip",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"http2-settings",
    TOKEN_HEADER,
}


def with_hsts(raw: bytes, value: bytes) -> bytes:
    """A forwarded response head with the relay's Strict-Transport-Security in place of the service's.

    The relay's host name is shared by every client, so its HSTS policy is the operator's: a
    service cannot shorten it (``max-age=0``) or widen it (``includeSubDomains``).
    """
    if HSTS in raw.lower():  # rare: the service sent its own
        full = http.parse_response_head(raw)
        full.remove(HSTS)
        raw = full.serialize()
    return raw[:-2] + b"Strict-Transport-Security: " + value + b"\r\n\r\n"


def _without_h2c(upgrade: bytes) -> bytes | None:
    """The ``Upgrade`` offer without ``h2c`` (the relay speaks HTTP/1.1), or None if nothing is left."""
    offers = (p.strip() for p in upgrade.split(b","))
    kept = [p for p in offers if p and p.lower().split(b"/")[0] != b"h2c"]
    return b", ".join(kept) if kept else None


def rewrite_request_head(head: http.Head, peer: str, scheme: bytes) -> bytes:
    """The request head for the service, as bytes: hop-by-hop headers (and those the
    ``Connection`` header lists), the token header and ``HTTP2-Settings`` out; the relay's
    ``Connection``/``Upgrade`` and ``X-Forwarded-For/Proto/Host`` in.  When something is taken
    out, ``head`` is changed to match; otherwise (the common case) it is left as received and
    its header lines go on as they came, followed by the added ones."""
    if not head.has_any(_REWRITTEN):  # nothing to take out (so no Upgrade, no X-Forwarded-For)
        extra = [(b"Connection", b"keep-alive")] if head.version == b"HTTP/1.0" else []
        return head.serialize_with(_with_forwarded(extra, head, peer.encode(), scheme))
    upgrade = head.get(b"upgrade")
    if upgrade is not None and b"h2c" in upgrade.lower():
        upgrade = _without_h2c(upgrade)
    listed = head.connection_tokens() - _NOT_LISTED
    # a header the Connection header lists is for the previous hop only: never pass on its value
    forwarded_for = head.get(b"x-forwarded-for") if b"x-forwarded-for" not in listed else None
    extra = []
    if upgrade is not None:
        extra += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    elif head.version == b"HTTP/1.0":
        extra.append((b"Connection", b"keep-alive"))
    peer_bytes = peer.encode()
    if forwarded_for:
        peer_bytes = forwarded_for + b", " + peer_bytes
    head.replace(
        _REWRITTEN | listed if listed else _REWRITTEN, _with_forwarded(extra, head, peer_bytes, scheme)
    )
    return head.serialize()


def _with_forwarded(
    extra: list[tuple[bytes, bytes]], head: http.Head, forwarded_for: bytes, scheme: bytes
) -> list[tuple[bytes, bytes]]:
    """``extra`` with the ``X-Forwarded-For/Proto/Host`` headers appended."""
    extra.append((b"X-Forwarded-For", forwarded_for))
    extra.append((b"X-Forwarded-Proto", scheme))
    host = head.get(b"host")
    if host is not None:
        extra.append((b"X-Forwarded-Host", host))
    return extra
