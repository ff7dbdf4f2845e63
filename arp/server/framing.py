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
#: Request headers replaced on the way to the client: hop-by-hop ones, X-Forwarded-*, the token.
#: ``HTTP2-Settings`` belongs to an ``Upgrade: h2c`` offer, which the relay never passes on (it
#: speaks HTTP/1.1 to the service): both go, so the service never sees half an offer.
_REWRITTEN = http.HOP_BY_HOP | {
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
    ``Connection`` header lists), the token header and ``HTTP2-Settings`` out (of ``head`` too);
    the relay's ``Connection``/``Upgrade`` and ``X-Forwarded-For/Proto/Host`` in (in ``head`` too,
    unless nothing was taken out: then its header lines go on as received, and the added ones are
    only in the bytes)."""
    index = head._index if head._index is not None else head._idx()  # noqa: SLF001 - http's own pair
    extra = []
    if _REWRITTEN.isdisjoint(index):  # the common case: only X-Forwarded-* to add
        if head.start[2] == b"HTTP/1.0":
            extra.append((b"Connection", b"keep-alive"))
        extra.append((b"X-Forwarded-For", peer.encode()))
        extra.append((b"X-Forwarded-Proto", scheme))
        host = index.get(b"host")
        if host is not None:
            extra.append((b"X-Forwarded-Host", host[-1]))
        return head.serialize_with(extra)
    upgrade = head.get(b"upgrade")
    if upgrade is not None and b"h2c" in upgrade.lower():
        upgrade = _without_h2c(upgrade)
    listed = head.connection_tokens() - _NOT_LISTED
    # a header the Connection header lists is for the previous hop only: never pass on its value
    forwarded_for = head.get(b"x-forwarded-for") if b"x-forwarded-for" not in listed else None
    host = head.get(b"host")
    if upgrade is not None:
        extra += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    elif head.version == b"HTTP/1.0":
        extra.append((b"Connection", b"keep-alive"))
    peer_bytes = peer.encode()
    extra.append((b"X-Forwarded-For", forwarded_for + b", " + peer_bytes if forwarded_for else peer_bytes))
    extra.append((b"X-Forwarded-Proto", scheme))
    if host is not None:
        extra.append((b"X-Forwarded-Host", host))
    head.replace(_REWRITTEN | listed if listed else _REWRITTEN, extra)
    return head.serialize()
