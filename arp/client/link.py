"""arpc's link to the relay: registration on the control channel, then tunnels on demand.

The link keeps one control connection: connect, register, and after any loss
reconnect with exponential backoff (reset by a successful registration); for five
minutes after losing a registration, retries come about every second instead (the
relay is restarting: a phone is waiting), spread at random.  A
refusal that retrying cannot fix (wrong auth key, a request the relay does not
accept) ends the link and calls ``on_fatal`` with one line saying what to do;
``ClientIdInUse``, ``Unavailable`` and network failures are retried.
"""

from __future__ import annotations

import atexit
import os
import random
import sys
from collections.abc import Callable

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import tls, wire
from arp.control import (
    CLIENT_REGISTRATION_TIMEOUT,
    AuthFailed,
    BadRegistration,
    BoundedBoxes,
    ClientIdInUse,
    Heartbeat,
    Hello,
    Leave,
    OpenTunnels,
    Register,
    Release,
    Unavailable,
)
from arp.mismatch import proxy_mismatch, registration_hint
from arp.splice import tune

#: Most tunnels arpc holds open or is opening at once, whatever the relay asks for (its own
#: ``--max-tunnels`` is 200 by default): a relay (or whoever speaks for it on a plaintext control
#: channel) that asks for 2**31 tunnels gets at most this many connection attempts.
MAX_TUNNELS = 10_000


#: After losing a registration, retries come every FAST_RETRY_MIN + [0, FAST_RETRY_SPREAD) s for
#: FAST_RETRY_WINDOW s (a relay that restarts is back within seconds), then the usual backoff.
FAST_RETRY_MIN = 0.25
FAST_RETRY_SPREAD = 1.0
FAST_RETRY_WINDOW = 300.0
#: How long a stopping arpc waits for the relay to take note that it leaves on purpose.
LEAVE_TIMEOUT = 2.0


def _words(error: BaseException) -> str:
    """An exception in words, even one whose ``str`` fails (Twisted's ``amp.TooLong``)."""
    try:
        return str(error) or repr(error)
    except Exception:
        return type(error).__name__


class RegistrationRefused(Exception):
    """The relay refused this client for a reason that retrying cannot fix."""


@implementer(IHandshakeListener)
class ControlClientProtocol(BoundedBoxes, amp.AMP, TimeoutMixin):
    """arpc's end of the control channel."""

    log = Logger()
    handshake_done = False  # over TLS: whether the handshake completed (a plain relay aborts it)

    def __init__(self, link: RelayLink) -> None:
        super().__init__()
        self.link = link
        self.callLater = link.clock.callLater
        self._beat: LoopingCall | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        tune(self.transport, keepalive=True)
        self.setTimeout(CLIENT_REGISTRATION_TIMEOUT)

    def box_completed(self) -> None:
        self.resetTimeout()  # a whole box from the relay, not a trickle, shows it is alive

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def timeoutConnection(self) -> None:
        self.log.warn("relay silent for too long; reconnecting")
        self.transport.abortConnection()

    def start_heartbeat(self, interval: float) -> None:
        """Send heartbeats every ``interval`` seconds; drop the link after 3 silent ones."""
        self.setTimeout(interval * 3)
        self._beat = LoopingCall(lambda: self.callRemote(Heartbeat).addErrback(lambda f: None))
        self._beat.clock = self.link.clock
        self._beat.start(interval, now=False)

    @OpenTunnels.responder
    def open_tunnels(self, count: int) -> dict:
        self.link.open_tunnels(count)
        return {}

    @Heartbeat.responder
    def heartbeat(self) -> dict:
        return {}

    @Release.responder
    def release(self, reason: str) -> dict:
        self.log.warn("the relay dropped this client: {reason}", reason=reason)
        return {}

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        super().connectionLost(reason)
        self.link.control_lost(self)
        self.lost.callback(None)


@implementer(IStreamClientEndpoint)
class LoggedEndpoint:
    """Wraps the control endpoint so that every failed attempt says why."""

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, description: str) -> None:
        self.endpoint = endpoint
        self.description = description

    def connect(self, factory: Factory) -> Deferred:
        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError, ConnectingCancelledError):
                return failure  # we are stopping
            self.log.warn(
                "cannot reach the relay at {where}: {why}",
                where=self.description,
                why=failure.getErrorMessage(),
            )
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class RelayLink(MultiService):
    """Keeps arpc registered with arps and answers its requests for tunnels."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: object,
        control_endpoint: IStreamClientEndpoint,
        control_description: str = "the control port",
        proxy_endpoint: IStreamClientEndpoint,
        proxy_description: str = "",
        tunnel_protocol: callable,  # type: ignore[valid-type]
        client_id: str,
        identity: object,
        auth_key: str,
        mode: str = "http",
        remote_port: int = 0,
        public_host: str = "localhost",
        max_backoff: float = 30.0,
        grace: float = 10.0,
        on_fatal: Callable[[str], None] | None = None,
        access_token: str | None = None,
        on_public_url: callable | None = None,  # type: ignore[valid-type]
    ) -> None:
        """``identity``: this instance's Ed25519 private key (:func:`arp.wire.new_identity`).
        ``on_fatal(message)`` runs once if the relay refuses us for good (default: log it)."""
        super().__init__()
        self.clock = clock
        self.endpoint = LoggedEndpoint(control_endpoint, control_description)
        self.proxy_endpoint = proxy_endpoint
        self.proxy_description = proxy_description  # its endpoint string: checked at registration
        self.tunnel_protocol = tunnel_protocol
        self.client_id = client_id
        self.identity = identity
        self.identity_public = wire.public_bytes(identity)
        self.key = wire.key_bytes(auth_key)
        self.mode = mode
        self.remote_port = remote_port
        self.public_host = public_host
        self.grace = grace
        self.on_fatal = on_fatal
        self.retry_delay = backoffPolicy(0.5, max_backoff)
        self.lost_at: float | None = None  # when a registration was last lost (fast retries after it)
        self.failures = 0
        self.tunnel_secret = ""
        self.public_url = ""
        self.route_url = ""  # the relay's URL for this client, without our access token
        self.access_token = access_token  # command mode: the owner's, printed in the Public URL
        self.on_public_url = on_public_url
        self.tunnels: set[Protocol] = set()
        self.connecting = 0  # tunnel connections asked for, not yet made or failed
        self.control: ControlClientProtocol | None = None
        self.connection: ControlClientProtocol | None = None  # registered or not
        self.registrations = 0
        self.stopping = False
        self.refused: str | None = None
        self._attempt: Deferred | None = None
        self._retry: object | None = None
        self.factory = Factory.forProtocol(lambda: ControlClientProtocol(self))
        self.factory.noisy = False

    # -- connecting and reconnecting ------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self.stopping or self.refused:
            return
        self._attempt = self.endpoint.connect(self.factory)
        self._attempt.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        self._schedule_retry()  # not if stopping

    def _connected(self, proto: ControlClientProtocol) -> None:
        self._attempt = None
        self.connection = proto
        if self.stopping:
            proto.transport.loseConnection()
            return
        Deferred.fromCoroutine(self._register(proto)).addErrback(self._register_failed, proto)

    def _register_failed(self, failure: Failure, proto: ControlClientProtocol) -> None:
        if failure.check(RegistrationRefused):
            self.refused = str(failure.value)
            if self.on_fatal is not None:
                self.on_fatal(self.refused)
        # the retry (if any) is scheduled when this connection is gone: see control_lost
        if not proto.lost.called:
            proto.transport.abortConnection()

    def _schedule_retry(self) -> None:
        if self.stopping or self.refused or self._retry is not None:
            return
        self.failures += 1
        delay = self.retry_delay(self.failures)
        if self.lost_at is not None and self.clock.seconds() - self.lost_at < FAST_RETRY_WINDOW:
            # we were registered a moment ago: the relay is restarting, or the network blinked.
            # Come back within about a second of it, not after a long backoff (the phone is
            # watching); random spread keeps a thousand clients from arriving in one instant.
            delay = min(delay, FAST_RETRY_MIN + random.random() * FAST_RETRY_SPREAD)
        if self.failures <= 3 or self.failures % 60 == 0:  # fast retries: not a line a second
            self.log.info("connecting to the relay again in {delay:.1f}s", delay=delay)
        self._retry = self.clock.callLater(delay, self._connect)

    async def _register(self, proto: ControlClientProtocol) -> None:
        hello: dict | None = None
        try:
            hello = await proto.callRemote(Hello, version=wire.PROTOCOL_VERSION)
            nonce = hello["nonce"]
            exchange = wire.new_exchange()
            exchange_public = wire.public_bytes(exchange)
            binding = wire.channel_binding(proto.transport)
            data = wire.transcript(
                nonce,
                self.client_id,
                self.mode,
                self.remote_port,
                self.identity_public,
                exchange_public,
                binding,
            )
            result = await proto.callRemote(
                Register,
                client_id=self.client_id,
                identity=self.identity_public,
                exchange=exchange_public,
                signature=self.identity.sign(data),
                proof=wire.admission_proof(self.key, data),
                mode=self.mode,
                remote_port=self.remote_port,
                binding=binding,
            )
            tunnel_secret = wire.tunnel_key(exchange, result["exchange"], nonce, self.client_id)
        except AuthFailed as e:
            if "TLS session" in str(e):
                raise RegistrationRefused(
                    f"the relay refused us: {e}: check that --control-endpoint reaches arps itself "
                    "(a TLS proxy in front of arps must pass TLS through, or arps listen without TLS)"
                ) from None
            why = "" if str(e) == "wrong auth key" else f" ({e})"
            raise RegistrationRefused(
                f"the relay refused our auth key{why}: start arpc with the relay's key, "
                "--auth-key KEY or ARP_AUTH_KEY (arps prints it at its first start)"
            ) from None
        except BadRegistration as e:
            raise RegistrationRefused(f"the relay refused the registration: {e}") from None
        except ClientIdInUse:
            self.lost_at = None  # the relay is up and answering: back to the usual backoff
            self.log.error(
                "client id {client_id} is held by another arpc instance (another identity key); "
                "retrying (use another --client-id, or this instance's --data-dir, or wait for "
                "the relay's retention to end)",
                client_id=self.client_id,
            )
            raise
        except Unavailable as e:
            self.lost_at = None
            self.log.warn("the relay cannot take us now: {why}; retrying", why=str(e))
            raise
        except Exception as e:
            if not self.stopping:
                why = tls.explain(e)  # a TLS failure in words: untrusted, wrong name...
                if why is None and hello is None:  # closed before any answer: plain TCP against TLS?
                    secure = ISSLTransport.providedBy(proto.transport)
                    why = registration_hint(e, self.endpoint.description, secure, proto.handshake_done)
                why = why or _words(e)
                self.log.warn("could not register with the relay: {why}", why=why)
            raise
        mismatch = proxy_mismatch(
            self.proxy_description,
            result.get("proxy_tls"),
            result.get("control_tls"),
            ISSLTransport.providedBy(proto.transport),
        )
        if mismatch is not None:  # every tunnel would fail: say so now rather than as 504s
            raise RegistrationRefused(mismatch)
        self.tunnel_secret = tunnel_secret
        self.control = proto
        self.failures = 0
        self.lost_at = None
        self.registrations += 1
        proto.start_heartbeat(result["heartbeat"])
        base = result["public_url"].replace("{host}", self.public_host)
        if self.mode == "tcp":
            host = self.public_host
            self.public_url = f"tcp://{host}:{result['remote_port']}"
            self.log.info("Registered. Public address: {url}", url=self.public_url)
        else:
            self.route_url = f"{base}/?token={self.client_id}"
            self.public_url = self.route_url
            if self.access_token:  # the routing id for the relay, the access token for arpc
                from arp.client.command.access import with_access

                self.public_url = with_access(self.route_url, self.access_token)
            self.log.info("Registered. Public URL: {url}", url=self.public_url)
            if self.on_public_url is not None:
                self.on_public_url(self.public_url)

    def control_lost(self, proto: ControlClientProtocol) -> None:
        """A control connection closed: reconnect unless we are stopping or were refused."""
        if proto is self.connection:
            self.connection = None
        if self.control is proto:
            self.control = None
            if self.stopping:
                self.log.info("left the relay (shutting down)")
            else:
                self.lost_at = self.clock.seconds()
                self.log.warn("lost the control connection to the relay; reconnecting")
        self._schedule_retry()

    # -- tunnels ----------------------------------------------------------------

    def open_tunnels(self, count: int) -> None:
        """Open ``count`` tunnel connections to the proxy port, each with its own one-time header."""
        if self.refused:  # e.g. a proxy port of the wrong transport: arpc is stopping
            return
        client_id, key = self.client_id, self.tunnel_secret

        def build() -> Protocol:
            return self.tunnel_protocol(wire.tunnel_header(client_id, key), self.tunnels)

        room = MAX_TUNNELS - len(self.tunnels) - self.connecting
        if count > room:
            self.log.warn(
                "the relay asked for {count} tunnels; opening {room} (at most {limit} at once)",
                count=count,
                room=max(room, 0),
                limit=MAX_TUNNELS,
            )
            count = room
        if count <= 0:
            return
        factory = Factory.forProtocol(build)
        factory.noisy = False
        for _ in range(count):
            self.connecting += 1
            d = self.proxy_endpoint.connect(factory)
            d.addBoth(self._tunnel_settled)
            d.addErrback(self._tunnel_failed)

    def _tunnel_settled(self, result: object) -> object:
        self.connecting -= 1
        return result

    def _tunnel_failed(self, failure: Failure) -> None:
        self.log.warn("could not open a tunnel: {why}", why=failure.getErrorMessage())

    # -- stopping -----------------------------------------------------------------

    def _leave(self, proto: ControlClientProtocol) -> None:
        """Tell the relay we stop on purpose (it then says "stopped by its owner", not
        "reconnecting"), then close; at most ``LEAVE_TIMEOUT`` s for its answer."""
        if self.control is not proto:
            proto.transport.loseConnection()
            return
        said = proto.callRemote(Leave)
        said.addTimeout(LEAVE_TIMEOUT, self.clock)
        said.addErrback(lambda failure: None)  # an older relay, or one that is gone: close anyway
        said.addCallback(lambda _: proto.transport.loseConnection())

    def stopService(self) -> Deferred:
        """Leave the relay; let tunnels that are carrying traffic finish for up to ``grace`` s."""
        self.stopping = True
        if self.refused is None:
            self.log.info("arpc shutting down: leaving the relay")
        stopped = super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        waits = [stopped] if stopped is not None else []
        if self.connection is not None:
            waits.append(self.connection.lost)
            self._leave(self.connection)
        for tunnel in list(self.tunnels):
            if not tunnel.in_use:
                tunnel.transport.loseConnection()
        done: Deferred = Deferred()
        deadline = self.clock.seconds() + self.grace

        def check() -> None:
            if not self.tunnels:
                done.callback(None)
            elif self.clock.seconds() >= deadline:
                self.log.warn("grace period over; cutting {n} tunnels", n=len(self.tunnels))
                for tunnel in list(self.tunnels):
                    tunnel.transport.abortConnection()
                done.callback(None)
            else:
                self.clock.callLater(0.05, check)

        check()
        waits.append(done)
        return gatherResults(waits).addCallback(lambda _: None)


def exit_with_status(reactor: object, status: int) -> Callable[[str], None]:
    """An ``on_fatal`` for twistd: log the message as one error line, stop, exit with ``status``.

    twistd always exits 0 once its reactor stops, so the status is set at
    interpreter exit, after twistd has finished its own shutdown.
    """
    log = Logger(namespace="arpc")

    def fatal(message: str) -> None:
        log.error("{message}", message=message)

        def leave() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

        atexit.register(leave)
        if reactor.running:
            reactor.stop()

    return fatal
