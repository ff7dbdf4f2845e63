"""The public HTTP front: route each request by token to a client's tunnel.

One :class:`PublicHTTPProtocol` per public connection handles its requests one
after another (keep-alive, pipelining).  The same protocol serves the shared
public port and each client's own port (``bound`` to that client, see
:mod:`arp.server.origins`).  For each request it parses the head, asks the
:class:`~arp.server.routing.Router` which client it is for (or which answer to
give instead), takes a tunnel from the client's pool, sends the rewritten head and then
streams the body both ways, tracking only where each body ends.  When both
messages are complete the tunnel goes back to the pool.  A ``101 Switching
Protocols`` answer turns the connection into a raw splice for its lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import http, wire
from arp.server.budget import ConnectionBudget, Refused
from arp.server.exchange import R_BODY, R_DONE, R_HEAD, R_WAIT, S_BODY, S_DECODE, S_HEAD, S_NONE
from arp.server.framing import rewrite_request_head, with_hsts
from arp.server.origins import DomainOrigins, Origins, access_cookie_name
from arp.server.pool import PoolClosed, PoolTimeout
from arp.server.registry import ClientRecord, Registry
from arp.server.routing import (
    FROM_HEADER,
    Answer,
    GuessLimiter,
    Router,
    error_body,
    is_navigation,
    relay_body,
    strip_arp_set_cookies,
)
from arp.server.tunnel import TunnelOwner, TunnelServerProtocol
from arp.splice import Splice, Throttle, fast_write, join, tune, unjoin
from arp.tls import NegotiatesHTTP11

__all__ = ["GuessLimiter", "PublicConfig", "PublicFactory", "PublicHTTPProtocol", "error_body", "with_hsts"]

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MAX_RETRIES = 2
SWEEP_INTERVAL = 1.0  # seconds between timeout checks of all public connections
#: Seconds a client may leave a full buffer of the relay's own answers unread before it is cut.
UNREAD_ANSWERS_TIMEOUT = 15.0
#: After answering a request whose body is still arriving (a 413, a service that answered
#: early), the relay half-closes and reads and drops what the client still sends for this
#: long, up to LINGER_MAX_BYTES, before closing: closing at once would make the kernel answer
#: the client's next bytes with a reset that can destroy the answer before the client reads it.
#: Dropping costs no memory and little CPU; a fast client on a short path can push more than a
#: MiB before it gets round to reading the answer (seen on loopback under load), so the byte
#: bound is generous and the time bound is what ends a client that never stops.
LINGER_CLOSE_TIMEOUT = 2.0
LINGER_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PublicConfig:
    """Limits and timeouts of the public front (seconds, bytes)."""

    scheme: str = "http"
    domain: str | None = None
    max_head: int = 64 * 1024
    max_body: int = 0  # 0: no limit
    head_timeout: float = 30.0
    first_head_timeout: float = 10.0  # from the connection's start to its first complete head
    idle_timeout: float = 75.0
    response_timeout: float = 300.0
    body_timeout: float = 60.0
    guess_limit: int = 30
    guess_window: float = 60.0
    secure_cookies: bool = False  # https public URL (also behind a TLS-terminating proxy)
    hsts: int = 0  # over https: Strict-Transport-Security max-age on every response (0: off)


@implementer(IPushProducer)
class OwnAnswers:
    """Flow control for the answers the relay writes itself (401, 404, 503, redirects...).

    Registered as the public connection's producer while no tunnel is joined to it: once the
    client leaves more than the transport's buffer of our answers unread, reading (and with it
    the parsing of pipelined requests) stops until the buffer drains, as for spliced data.
    """

    __slots__ = ("proto", "paused")

    def __init__(self, proto: PublicHTTPProtocol) -> None:
        self.proto = proto
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.proto.transport.pauseProducing()
        self.proto.answers_unread()

    def resumeProducing(self) -> None:
        self.paused = False
        self.proto.answers_drained()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class PublicHTTPProtocol(Protocol, TunnelOwner):
    """One public connection: requests in, routed through tunnels, responses out."""

    log = Logger()

    def __init__(self, factory: PublicFactory) -> None:
        self.factory = factory
        self.registry: Registry = factory.registry
        self.config: PublicConfig = factory.config
        self.clock = factory.clock
        self._buf = bytearray()
        self._req = R_HEAD
        self._resp = S_NONE
        self._upgraded = False
        self._lingering = False  # answered and half-closed; dropping the rest of a request body
        self._linger_dropped = 0
        self._tunnel: TunnelServerProtocol | None = None
        self._record: ClientRecord | None = None
        self._waiting = None
        self._deadline = 0.0
        self._on_deadline = None
        self._resp_deadline = 0.0
        self._closed = False
        self._eof = False
        self._keep_alive = True
        self._public_close = False
        self._sent_response = False
        self._head: http.Head | None = None
        self._head_bytes = b""
        self._req_framer: http.BodyFramer | None = None
        self._resp_framer: http.BodyFramer | None = None
        self._resp_buf = b""
        self._reusable = True
        self._retries = 0
        self._bodiless = True
        self._body_left = -1
        self._peer = ""
        self._reading: Throttle | None = None  # what pauses our reading for the current tunnel
        self._splice: Splice | None = None  # after a 101: this connection (end 0) and the tunnel (end 1)
        self._body_progress = 0.0  # when request body bytes last arrived
        self._own: OwnAnswers | None = None  # registered while the relay's own answers are written
        self.bound: ClientRecord | None = None  # set on a client's own port: the only client served here
        self._budget_key: str | None = None  # what this connection counts under in the factory's budget
        self._first = True  # no complete request head yet: the first head's deadline runs

    # -- connection life
    def connectionMade(self) -> None:
        tune(self.transport)
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        self.factory.connections.add(self)
        # a new connection has its own short deadline for its first request head: an idle
        # connection holds a descriptor, and a peer that opens thousands must not keep them
        self._set_timer(self.config.first_head_timeout, self._idle_timeout)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self._closed = True
        self.factory.connections.discard(self)
        key, self._budget_key = self._budget_key, None
        if key is not None:
            self.factory.budget.release(key)
        self._cancel_timers()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.detach()
            if self._splice is None:
                tunnel.transport.abortConnection()  # mid-exchange: its stream is not reusable
        if self._splice is not None:
            self._splice.connection_lost(0, reason)
        if self._record is not None:
            self._record.open_connections -= 1
            self._record = None

    def readConnectionLost(self) -> None:
        self._eof = True
        if self._lingering:  # the client read our answer and is done: close for good
            self.transport.loseConnection()
            return
        if self._upgraded:
            if self._splice is not None:
                self._splice.read_lost(0)
        elif (
            self._req == R_HEAD
            and self._resp == S_NONE
            and self._tunnel is None
            and self._waiting is None
            and http.find_head_end(self._buf) < 0
        ):
            self._close()  # nothing more can come: not even a partial head is worth its buffer
        elif self._req == R_BODY:
            self._public_close = True  # this request's body will never be complete
        # otherwise: answer every request already received, then close (see _finished)

    def _finished(self) -> bool:
        """Whether nothing more will be answered: closing, or the client half-closed and no
        complete request is left in the buffer."""
        return self._public_close or (self._eof and http.find_head_end(self._buf) < 0)

    def writeConnectionLost(self) -> None:
        pass

    def finish_and_close(self) -> None:
        """Close now if idle, otherwise once the current exchange is complete."""
        self._public_close = True
        if self._req == R_HEAD and not self._buf and self._tunnel is None and self._waiting is None:
            self._close()

    # -- timers: deadlines checked by the factory's sweep, so a request costs no timer objects
    def _set_timer(self, seconds: float, func: callable) -> None:  # type: ignore[valid-type]
        self._deadline = self.clock.seconds() + seconds
        self._on_deadline = func

    def _cancel_timers(self) -> None:
        self._deadline = self._resp_deadline = 0.0

    def check_deadlines(self, now: float) -> None:
        """Called by the factory about once a second: fire whichever timeout has passed."""
        if self._deadline and now >= self._deadline:
            self._deadline = 0.0
            self._on_deadline()
        if self._resp_deadline and now >= self._resp_deadline and not self._closed:
            self._resp_deadline = 0.0
            self._response_timeout()

    def _idle_timeout(self) -> None:
        if self._buf:
            self._refuse(408, "request head not received in time")
        else:
            self._close()

    def _head_timeout(self) -> None:
        self._refuse(408, "request head not received in time")

    def _body_timeout(self) -> None:
        reading = self._reading
        if self._tunnel is not None and reading is not None and reading.paused:
            # the service stopped reading, so the body waits in our buffers: not the client's delay
            if self.clock.seconds() - self._body_progress < self.config.response_timeout:
                self._set_timer(self.config.body_timeout, self._body_timeout)
                return
            self._fail(504, "the service behind the tunnel stopped reading the request body")
            return
        self._fail(408, "request body stalled")

    def _response_timeout(self) -> None:
        self._fail(504, "the service behind the tunnel did not answer in time")

    # -- public bytes in
    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            self._linger_dropped += len(data)
            if self._linger_dropped > LINGER_MAX_BYTES:
                self.transport.abortConnection()
            return
        if self._req == R_BODY:
            self._request_body(data)
            return
        if self._upgraded:
            if self._tunnel is None:  # TLS may deliver records after the splice ended
                return
            self._splice.moved = True
            fast_write(self._tunnel.transport, data)
            if self._record is not None:
                self._record.bytes_in += len(data)
            return
        if self._req == R_HEAD and not self._buf and not self._first:
            self._set_timer(self.config.head_timeout, self._head_timeout)
        self._buf += data
        if self._req == R_HEAD:
            self._parse_head()
        elif len(self._buf) > self.config.max_head:
            self.transport.pauseProducing()  # pipelined data waits for the current exchange

    def _parse_head(self) -> None:
        # a loop, not recursion: requests answered by the relay itself may be pipelined by the hundred;
        # it stops while the client leaves our answers unread (see OwnAnswers)
        while self._req == R_HEAD and self._buf and not (self._own is not None and self._own.paused):
            buf = self._buf
            end = http.find_head_end(buf)
            if end < 0:
                if len(buf) > self.config.max_head:
                    self._refuse(431, "request head too large", limit=self.config.max_head)
                break
            if end > self.config.max_head:
                self._refuse(431, "request head too large", limit=self.config.max_head)
                return
            self._first = False
            raw = bytes(buf[:end])
            del buf[:end]
            try:
                head, framer = http.parse_request(raw)
            except http.HTTPError as e:
                self._refuse(e.status, e.message)
                return
            self._dispatch(head, framer)
        if self._eof and self._req == R_HEAD and not (self._own is not None and self._own.paused):
            self._req = R_DONE  # half-closed: every complete request is answered
            self._close()

    # -- routing
    def _dispatch(self, head: http.Head, framer: http.BodyFramer) -> None:
        self._cancel_timers()
        if self._record is not None:  # the previous request's client
            self._record.open_connections -= 1
            self._record = None
        self._keep_alive = http.wants_keep_alive(head)
        self._req_framer = framer
        self._bodiless = framer.kind == http.LENGTH and framer.done  # a retry re-sends the head only
        self._body_left = self.config.max_body or -1
        if 0 < self.config.max_body < framer.remaining:
            self._refuse(413, "request body too large", limit=self.config.max_body)
            return
        decision = self.factory.router.route(head, self.bound, self._peer)
        if type(decision) is Answer:
            self._give(decision, head)
            return
        record = decision
        self._record = record
        record.open_connections += 1
        self._head_bytes = rewrite_request_head(
            head, self._peer, self.factory.scheme
        )  # hop-by-hop out, X-Forwarded-* in
        self._head = head
        self._resp = S_NONE
        self._retries = 0
        record.requests += 1
        self._acquire()

    # -- flow control of the relay's own answers
    def _own_on(self) -> None:
        if self._own is None:
            own = OwnAnswers(self)
            try:
                self.transport.registerProducer(own, True)
            except RuntimeError:  # something else already throttles this connection
                return
            self._own = own

    def _own_off(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            self.transport.unregisterProducer()
            if own.paused:
                self.transport.resumeProducing()

    def _close(self) -> None:
        """Close after flushing (a registered, paused producer would keep the close from happening).

        If the client is still sending a request body, close lingering (as nginx and Apache do):
        half-close, drop what still arrives for LINGER_CLOSE_TIMEOUT, then close.
        """
        if self._own is not None:
            self._own_off()
        framer = self._req_framer
        if (
            framer is not None
            and not framer.done
            and not self._eof
            and not self._upgraded
            and not ISSLTransport.providedBy(self.transport)  # TLS cannot half-close
            and hasattr(self.transport, "loseWriteConnection")
        ):
            self._lingering = True
            self._set_timer(LINGER_CLOSE_TIMEOUT, self.transport.loseConnection)
            self.transport.loseWriteConnection()
            self.transport.resumeProducing()
            return
        self.transport.loseConnection()

    def answers_unread(self) -> None:
        """A buffer of our answers is unread: the client has UNREAD_ANSWERS_TIMEOUT to read them."""
        self._set_timer(UNREAD_ANSWERS_TIMEOUT, self._unread_timeout)

    def _unread_timeout(self) -> None:
        self.log.info("{peer} left the relay's answers unread; closing", peer=self._peer)
        self.transport.abortConnection()

    def answers_drained(self) -> None:
        """The client has read our answers: read and answer what it sent meanwhile."""
        if self._closed or self._own is None:
            return
        self._set_timer(self.config.idle_timeout, self._idle_timeout)
        self.transport.resumeProducing()
        if self._req == R_HEAD and self._buf:
            self._parse_head()

    # -- the tunnel
    def _acquire(self) -> None:
        self._req = R_WAIT
        if self._own is not None:
            self._own_off()
        pool = self._record.pool
        tunnel = pool.take()
        if tunnel is not None:  # a hit: no Deferred, no pause
            self._got_tunnel(tunnel)
            return
        self.transport.pauseProducing()
        d = pool.wait()
        self._waiting = d
        d.addCallbacks(self._got_tunnel, self._no_tunnel).addErrback(self._internal_error)

    def _internal_error(self, failure: Failure) -> None:
        self.log.failure("internal error while relaying a request", failure)
        if not self._closed:
            self._fail(500, "internal error in the relay")

    def _no_tunnel(self, failure: Failure) -> None:
        self._waiting = None
        if failure.check(CancelledError) or self._closed:
            return
        if failure.check(PoolTimeout):
            self._fail(504, "no tunnel from the client in time: " + failure.getErrorMessage())
        elif failure.check(PoolClosed):
            self._fail(503, "client went offline", retry_after=5)
        else:
            self.log.failure("acquiring a tunnel failed", failure)
            self._fail(502, "could not get a tunnel")

    def _got_tunnel(self, tunnel: TunnelServerProtocol) -> None:
        self._waiting = None
        if self._closed:
            self._record.pool.release(tunnel) if self._record else tunnel.close()
            return
        self._tunnel = tunnel
        self._reusable = True
        tunnel.attach(self)
        fast_write(tunnel.transport, self._head_bytes)  # first: the bookkeeping below adds no latency
        # (a head never fills a socket buffer: nothing to throttle yet)
        self._reading, _ = join(self.transport, tunnel.transport)
        self._resp = S_HEAD
        self._resp_buf = b""
        if self._req_framer.done:
            self._req = R_DONE
            self._resp_deadline = self.clock.seconds() + self.config.response_timeout
        else:
            self._req = R_BODY
            self._body_progress = self.clock.seconds()
            self._set_timer(self.config.body_timeout, self._body_timeout)
            if self._buf:
                data = bytes(self._buf)
                self._buf.clear()
                self._request_body(data)
        if self._tunnel is not None and not self._buf:
            self.transport.resumeProducing()

    def _request_body(self, data: bytes) -> None:
        try:
            n = self._req_framer.feed(data)
        except http.HTTPError as e:
            self._fail(e.status, e.message)
            return
        if self._deadline:
            self._body_progress = self.clock.seconds()
            self._deadline = self._body_progress + self.config.body_timeout
        if self._body_left >= 0:
            self._body_left -= n
            if self._body_left < 0:
                self._fail(413, "request body too large", limit=self.config.max_body)
                return
        if n:
            fast_write(self._tunnel.transport, data if n == len(data) else data[:n])
            self._record.bytes_in += n
        if self._req_framer.done:
            self._req = R_DONE
            self._deadline = 0.0
            if self._resp == S_HEAD:  # the response timeout runs from the end of the request
                self._resp_deadline = self.clock.seconds() + self.config.response_timeout
            if n < len(data):
                self._buf += data[n:]
                self.transport.pauseProducing()

    # -- tunnel bytes in (TunnelOwner)
    def tunnel_data(self, data: bytes) -> None:
        if self._resp == S_BODY:
            self._response_body(data)
        elif self._upgraded:
            self._splice.moved = True
            fast_write(self.transport, data)
            self._record.bytes_out += len(data)
        elif self._resp == S_HEAD:
            self._response_head(data)
        elif self._resp == S_DECODE:
            self._decoded_body(data)
        else:
            self._reusable = False  # bytes nobody asked for
            self._tunnel.transport.abortConnection()

    def _response_head(self, data: bytes) -> None:
        buf = self._resp_buf + data
        while True:  # a loop, not recursion: a service may send any number of 1xx heads at once
            end = http.find_head_end(buf)
            if end < 0:
                self._resp_buf = buf
                if len(buf) > self.config.max_head:
                    self._fail(502, "response head from the service too large")
                return
            self._resp_buf = b""
            if end > self.config.max_head:  # a whole head in one read is held to the limit too
                self._fail(502, "response head from the service too large")
                return
            if buf.find(b"arp", 0, end) >= 0:  # a service may not set (or overwrite) ARP's cookies
                kept = strip_arp_set_cookies(buf[:end], access_cookie_name(self._record.client_id))
                buf, end = kept + buf[end:], len(kept)
            try:
                head = http.scan_response_head(buf[:end])
                framer = http.response_framing(head, self._head.method)
            except http.HTTPError as e:
                self._fail(502, e.message)
                return
            rest = buf[end:]
            status = head.status
            if status >= 200 or status == 101:
                self._count(status)
            if status == 101:
                if self._head.get(b"upgrade") is not None:
                    self._switch_protocols(head, rest)
                    return
                # not asked for (or the relay took the Upgrade out, h2c): a client would take it
                # as final and its next request, maybe for another client, would read what
                # this service sends next
                self._fail(502, "the service switched protocols (101) on a request that asked for no upgrade")
                return
            if not 100 <= status < 200:
                break
            # 100 Continue and friends: pass on, wait for the final one
            self.transport.write(buf[:end])
            self._sent_response = True
            if not rest:
                return
            buf = rest
        self._resp_deadline = 0.0
        if not http.wants_keep_alive(head) or framer.kind == http.UNTIL_CLOSE:
            self._reusable = False
        close = (
            not self._keep_alive
            or self._finished()
            or framer.kind == http.UNTIL_CLOSE
            or self.factory.stopping
            or self._req != R_DONE  # answered before the whole request was read
        )
        self._public_close = close
        if close:
            connection = b"close"
        elif self._head.version == b"HTTP/1.0":
            connection = b"keep-alive"
        else:
            connection = None
        self._sent_response = True
        if framer.kind == http.CHUNKED and self._head.version == b"HTTP/1.0":
            # an HTTP/1.0 client cannot read chunks: decode them, the close ends the body
            self._public_close = True
            self._resp = S_DECODE
            self._resp_framer = http.Dechunker()
            out = http.dechunked_response_head(head)
            if self.factory.hsts is not None:
                out = with_hsts(out, self.factory.hsts)
            self._decoded_body(rest, out)
            return
        self._resp = S_BODY
        self._resp_framer = framer
        out = http.forward_response_head(head, connection)
        if self.factory.hsts is not None:
            out = with_hsts(out, self.factory.hsts)
        self._response_body(rest, out)

    def _feed_response(self, framer: http.BodyFramer, data: bytes) -> int | None:
        """How much of ``data`` is response body; None (the exchange failed) if it is malformed."""
        try:
            return framer.feed(data)
        except http.HTTPError as e:
            self._fail(502, "service sent " + e.message)
            return None

    def _response_body(self, data: bytes, head: bytes = b"") -> None:
        framer = self._resp_framer
        n = self._feed_response(framer, data)
        if n is None:
            return
        if n or head:
            fast_write(self.transport, head + (data if n == len(data) else data[:n]))
            self._record.bytes_out += n
        if framer.done:
            self._response_complete(n < len(data))

    def _decoded_body(self, data: bytes, head: bytes = b"") -> None:
        framer = self._resp_framer
        n = self._feed_response(framer, data)
        if n is None:
            return
        out = head + framer.take()
        if out:
            fast_write(self.transport, out)
            self._record.bytes_out += n
        if framer.done:
            self._response_complete(n < len(data))

    def _response_complete(self, leftover: bool) -> None:
        """The response body is complete (``leftover``: the tunnel sent more than it)."""
        if leftover:
            self._reusable = False
        self._resp = S_NONE
        if self._req != R_DONE:
            self._reusable = False  # answered before reading the whole request
            self._public_close = True
        self._exchange_done()

    def _switch_protocols(self, head: http.Head, rest: bytes) -> None:
        self._cancel_timers()
        self._upgraded = True
        self._req = R_DONE
        self._resp = S_NONE
        self._sent_response = True
        self._record.pool.forget(self._tunnel)  # this tunnel never comes back
        self._tunnel.record = None
        unjoin(self.transport, self._tunnel.transport)  # the splice registers its own producers
        self._reading = None
        self._splice = Splice(self.transport, self._tunnel.transport, self.clock)
        fast_write(self.transport, head.raw + rest)
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._tunnel.transport.write(data)
        self.transport.resumeProducing()

    def tunnel_eof(self) -> None:
        if self._splice is not None:
            self._splice.read_lost(1)
            return
        self.tunnel_lost(Failure(ConnectionDone("tunnel closed")))

    def tunnel_lost(self, reason: Failure) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is None or self._closed:
            return
        tunnel.detach()
        if self._splice is not None:
            self._splice.connection_lost(1, reason)
            return
        self.transport.unregisterProducer()  # the tunnel no longer produces anything
        if tunnel.transport.connected:
            tunnel.transport.loseConnection()
        if self._resp == S_BODY and self._resp_framer.kind == http.UNTIL_CLOSE:
            self._resp = S_NONE
            self._close()
            return
        if self._resp == S_HEAD and not self._sent_response:
            if not self._resp_buf and self._can_retry(tunnel):
                self._retries += 1
                self.log.info(
                    "tunnel of {client_id} closed as a request went out; retrying",
                    client_id=wire.redact(self._record.client_id),
                )
                self.transport.resumeProducing()
                self._acquire()
                return
            self._fail(502, "the tunnel closed before the service answered")
            return
        self.transport.abortConnection()

    def _can_retry(self, tunnel: TunnelServerProtocol) -> bool:
        return (
            self._retries < MAX_RETRIES
            and self._head.method in IDEMPOTENT
            and self._bodiless
            and self._head.get(b"upgrade") is None
            and self._record is not None
            and self._record.online
        )

    def _unjoin_gone(self, tunnel: TunnelServerProtocol) -> None:
        self.transport.unregisterProducer()
        tunnel.transport.unregisterProducer()
        self.transport.resumeProducing()

    # -- ends of exchanges
    def _exchange_done(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.detach()
            unjoin(self.transport, tunnel.transport)
            if self._reusable and self._record is not None:
                self._record.pool.release(tunnel)
            else:
                self._record.pool.forget(tunnel)
                tunnel.transport.loseConnection()
        self._head = None
        if self._finished():
            self._req = R_DONE  # whatever else arrives is not read
            self._close()
            return
        self._req = R_HEAD
        self._resp = S_NONE
        self._sent_response = False
        self._set_timer(self.config.idle_timeout, self._idle_timeout)
        self.transport.resumeProducing()
        if self._buf:
            self._set_timer(self.config.head_timeout, self._head_timeout)
            self._parse_head()

    def _answer(
        self,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]],
        keep: bool,
        content_type: bytes = b"application/json",
    ) -> None:
        """Send an answer of our own (it says so: ``X-ARP-From: relay``); keep the connection
        only if nothing is left unread."""
        framer = self._req_framer
        unread_body = framer is not None and not framer.done
        close = not keep or not self._keep_alive or self._finished() or unread_body
        if not close:
            self._own_on()
        extra.append((b"Referrer-Policy", b"same-origin"))
        extra.append(FROM_HEADER)
        if self.factory.hsts is not None:
            extra.append((b"Strict-Transport-Security", self.factory.hsts))
        self.transport.write(http.json_response(status, body, extra, close=close, content_type=content_type))
        self._sent_response = True
        if close:
            self._req = R_DONE
            self._close()
        else:
            self._req = R_HEAD
            self._sent_response = False
            if self._own is None or not self._own.paused:  # else: UNREAD_ANSWERS_TIMEOUT runs
                self._set_timer(self.config.idle_timeout, self._idle_timeout)
            # pipelined requests in self._buf are parsed by the loop in _parse_head

    def _count(self, status: int) -> None:
        statuses = self._record.statuses if self._record is not None else self.registry.unrouted
        statuses[status] = statuses.get(status, 0) + 1

    def _give(self, answer: Answer, head: http.Head) -> None:
        """Give an answer the router decided on: JSON, or a small page for a browser's page load."""
        self._count(answer.status)
        if answer.status >= 500 or answer.status == 429:
            self.log.info(
                "{status} to {peer}: {message}", status=answer.status, peer=self._peer, message=answer.message
            )
        headers = list(answer.headers)
        if answer.status >= 400 and answer.body is None and is_navigation(head):
            refresh = answer.extra.get("retry_after") if answer.status == 503 else None
            headers.extend(http.HTML_HEADERS)
            page = http.html_page(answer.status, answer.message, refresh)
            self._answer(answer.status, page, headers, answer.keep, http.HTML_TYPE)
            return
        self._answer(answer.status, answer.encode(), headers, answer.keep)

    def _refuse(self, status: int, message: str, keep: bool = False, **extra: object) -> None:
        """Answer a request that never reached a tunnel."""
        self._count(status)
        headers = []
        retry_after = extra.get("retry_after")
        if retry_after:
            headers.append((b"Retry-After", str(retry_after).encode()))
        if status >= 500 or status in (408, 429, 431):
            self.log.info("{status} to {peer}: {message}", status=status, peer=self._peer, message=message)
        self._answer(status, relay_body(status, message, **extra), headers, keep)

    def _fail(self, status: int, message: str, **extra: object) -> None:
        """Give up on the current exchange: a JSON error if nothing was sent yet, else abort."""
        if self._waiting is not None:  # e.g. the response timeout while waiting to retry
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.detach()
            if self._record is not None:
                self._record.pool.forget(tunnel)
            self._unjoin_gone(tunnel)
            tunnel.transport.abortConnection()
        if self._record is not None:
            self._record.last_error = f"{status} {message}"
        self._cancel_timers()
        if self._sent_response or self._closed:
            self.transport.abortConnection()
            return
        self._refuse(status, message, keep=False, **extra)


class PublicFactory(NegotiatesHTTP11, Factory):
    """Builds :class:`PublicHTTPProtocol`; holds what all public connections share.

    Over TLS it tells ALPN that it speaks ``http/1.1`` (see :mod:`arp.tls`).
    """

    noisy = False

    def __init__(
        self,
        registry: Registry,
        config: PublicConfig,
        clock: object,
        origins: Origins | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        """``budget``: the caps on open public connections (:mod:`arp.server.budget`), if any."""
        self.registry = registry
        self.config = config
        self.clock = clock
        self.budget = budget
        self.limiter = GuessLimiter(config.guess_limit, config.guess_window, clock)
        self.scheme = config.scheme.encode()
        self.hsts = b"max-age=%d" % config.hsts if config.hsts and config.scheme == "https" else None
        if origins is None and config.domain:
            origins = DomainOrigins(config.domain, config.scheme, lambda: "")
        self.router = Router(registry, None, self.limiter, config.secure_cookies)
        if origins is not None:
            self.use_origins(origins)
        self.connections: set[PublicHTTPProtocol] = set()
        self.stopping = False
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def use_origins(self, origins: Origins) -> None:
        """Give every HTTP client (registered now or later) its own origin from ``origins``."""
        self.router.origins = origins
        self.registry.origins = origins
        for record in list(self.registry.clients.values()):
            if record.mode == "http":
                origins.open_for(record)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for proto in list(self.connections):
            proto.check_deadlines(now)

    def stopFactory(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()

    @property
    def open_connections(self) -> int:
        """Public connections open now."""
        return len(self.connections)

    def buildProtocol(self, addr: object) -> PublicHTTPProtocol | Refused:
        key = None
        if self.budget is not None:
            key = self.budget.admit(getattr(addr, "host", ""))
            if key is None:
                return Refused()  # over a cap: closed at once, the listener keeps accepting
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)
        proto = PublicHTTPProtocol(self)
        proto._budget_key = key
        return proto

    def drain(self) -> None:
        """Shutting down: close idle connections, close the others after their current response."""
        self.stopping = True
        if self.router.origins is not None:
            self.router.origins.stop_listening()  # the clients' own ports take no new connections
        for proto in list(self.connections):
            proto.finish_and_close()

    def abort_all(self) -> None:
        """The grace period is over: abort whatever is still open."""
        for proto in list(self.connections):
            proto.transport.abortConnection()
