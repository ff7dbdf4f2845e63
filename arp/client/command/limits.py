"""Request bodies the command-mode site refuses are refused as they cross the limit, not after.

Twisted's :class:`~twisted.web.http.HTTPChannel` spools a whole request body
(to a temporary file when its length is unknown or large) before any resource
sees it, so a resource that refuses large bodies would refuse them only after
the last byte.  Here the channel refuses a ``Content-Length`` above the limit
as soon as the head is read (before any ``100 Continue``), and the request
counts a chunked body as it is decoded and refuses it on the chunk that
crosses the limit.  Either way the client gets a JSON ``413`` with
``Connection: close``, and what it sent so far is freed; whatever it still
sends is read and dropped (so it sees the answer instead of a reset), for
:data:`BODY_LINGER` seconds at most, and then the connection is closed.
Nothing is stored past the limit.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from arp.client.command.web import MAX_BODY  # the largest body the API takes (JSON bodies are far smaller)
from arp.http import error_body

#: How long a refused client may keep sending (its bytes are dropped) before it is cut off.
BODY_LINGER = 2.0


def refusal(status: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP response with a JSON ``{"error": ...}`` body."""
    body = error_body(status, message) + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedRequest(Request):
    """A request that counts its body as it arrives and has its channel refuse it past the limit.

    Meant to be mixed in front of the site's own request class (see :func:`bound_bodies`).
    """

    body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if getattr(channel, "refused", False):
            return
        self.body_received += len(data)
        limit = getattr(channel, "max_body", MAX_BODY)
        if self.body_received > limit:
            channel.refuse_body(f"request body too large: at most {limit} bytes")
            return
        super().handleContentChunk(data)


class BoundedChannel(HTTPChannel):
    """An HTTP channel that refuses request bodies over :attr:`max_body` as soon as it knows.

    After a refusal nothing more is parsed: the rest of the connection's bytes are
    counted and dropped until the client closes or :attr:`linger` seconds pass.
    """

    log = Logger()
    max_body = MAX_BODY
    linger = BODY_LINGER
    refused = False
    dropped = 0
    _linger_call = None

    def allHeadersReceived(self) -> None:
        # ``length`` is the request's Content-Length (None when chunked), known before any body byte
        if self.length is not None and self.length > self.max_body:
            self.refuse_body(f"request body too large: at most {self.max_body} bytes")
            return
        super().allHeadersReceived()

    def refuse_body(self, message: str) -> None:
        """Answer 413 now, stop parsing, drop what follows, close after :attr:`linger` seconds."""
        if self.refused:
            return
        self.refused = True
        self.persistent = False
        self.setTimeout(None)
        self.log.info("refusing a request body from {peer}: {why}", peer=_peer(self), why=message)
        self.transport.write(refusal(413, "Content Too Large", message))
        if self.requests:  # the request being received (earlier ones were answered): free its body now
            request = self.requests[-1]
            content, request.content = request.content, None
            if content is not None:
                content.close()
        self._linger_call = self.callLater(self.linger, self._cut)

    def _cut(self) -> None:
        self._linger_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self.dropped += len(data)
            return
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            self.dropped += len(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.refused:  # the end of a body already refused (in the same read): never render it
            return
        super().allContentReceived()

    def connectionLost(self, reason: object) -> None:
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        super().connectionLost(reason)


def _peer(channel: HTTPChannel) -> str:
    try:
        return str(channel.transport.getPeer())
    except Exception:
        return "?"


def bound_bodies(site: Site) -> Site:
    """Make ``site`` refuse request bodies over :data:`MAX_BODY` bytes as they arrive (see the module).

    The site keeps its own request class, with :class:`BoundedRequest` mixed in front.
    """
    base = site.requestFactory
    if not (isinstance(base, type) and issubclass(base, BoundedRequest)):
        if isinstance(base, type) and issubclass(base, Request) and base is not Request:
            base = type(f"Bounded{base.__name__}", (BoundedRequest, base), {})
        else:
            base = BoundedRequest
    site.requestFactory = base
    site.protocol = BoundedChannel  # type: ignore[assignment]
    # HTTP/1.1 only: an HTTP/2 connection (TLS with ALPN, when h2 is installed) would bypass the channel
    site.acceptableProtocols = lambda: [b"http/1.1"]  # type: ignore[method-assign]
    return site
