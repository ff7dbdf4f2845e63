"""arpc's link to the relay: registration on the control channel, then tunnels on demand."""

from __future__ import annotations

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from arp import tls, wire
from arp.control import (
    AuthFailed,
    BadRegistration,
    ClientIdInUse,
    Heartbeat,
    Hello,
    OpenTunnels,
    Register,
    Release,
)
from arp.splice import tune

REGISTER_TIMEOUT = 30.0


class ControlClientProtocol(amp.AMP, TimeoutMixin):
    """arpc's end of the control channel."""

    log = Logger()

    def __init__(self, link: RelayLink) -> None:
        super().__init__()
        self.link = link
        self.callLater = link.clock.callLater
        self._beat: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune(self.transport, keepalive=True)
        self.setTimeout(REGISTER_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

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
        self.link.control_lost(self)
        super().connectionLost(reason)


@implementer(IStreamClientEndpoint)
class LoggedEndpoint:
    """Wraps the control endpoint so that every failed attempt says why."""

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, description: str) -> None:
        self.endpoint = endpoint
        self.description = description

    def connect(self, factory: Factory) -> Deferred:
        def failed(failure: Failure) -> Failure:
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
        tunnel_protocol: callable,  # type: ignore[valid-type]
        client_id: str,
        instance_token: bytes,
        auth_key: str,
        mode: str = "http",
        remote_port: int = 0,
        public_host: str = "localhost",
        max_backoff: float = 30.0,
        grace: float = 10.0,
        access_token: str | None = None,
        on_public_url: callable | None = None,  # type: ignore[valid-type]
    ) -> None:
        super().__init__()
        self.clock = clock
        self.proxy_endpoint = proxy_endpoint
        self.tunnel_protocol = tunnel_protocol
        self.client_id = client_id
        self.instance_token = instance_token
        self.key = wire.key_bytes(auth_key)
        self.mode = mode
        self.remote_port = remote_port
        self.public_host = public_host
        self.grace = grace
        self.tunnel_secret = ""
        self.public_url = ""
        self.route_url = ""  # the relay's URL for this client, without our access token
        self.access_token = access_token  # command mode: the owner's, printed in the Public URL
        self.on_public_url = on_public_url
        self.tunnels: set[Protocol] = set()
        self.control: ControlClientProtocol | None = None
        self.registrations = 0
        factory = Factory.forProtocol(lambda: ControlClientProtocol(self))
        factory.noisy = False
        self.service = ClientService(
            LoggedEndpoint(control_endpoint, control_description),
            factory,
            retryPolicy=backoffPolicy(0.5, max_backoff),
            clock=clock,
            prepareConnection=lambda proto: Deferred.fromCoroutine(self._register(proto)),
        )
        self.service.setServiceParent(self)

    async def _register(self, proto: ControlClientProtocol) -> None:
        try:
            hello = await proto.callRemote(Hello, version=wire.PROTOCOL_VERSION)
            nonce = hello["nonce"]
            sealed = wire.seal_token(self.key, nonce, self.instance_token)
            proof = wire.register_proof(self.key, nonce, self.client_id, sealed)
            result = await proto.callRemote(
                Register,
                client_id=self.client_id,
                sealed=sealed,
                proof=proof,
                mode=self.mode,
                remote_port=self.remote_port,
            )
        except AuthFailed:
            self.log.error(
                "the relay refused our auth key; set --auth-key (or ARP_AUTH_KEY) to the relay's key"
            )
            raise
        except ClientIdInUse:
            self.log.error(
                "client id {client_id} is held by another arpc instance; retrying "
                "(use another --client-id, or wait for the relay's retention to end)",
                client_id=self.client_id,
            )
            raise
        except BadRegistration as e:
            self.log.error("the relay refused the registration: {why}", why=str(e))
            raise
        except Exception as e:
            why = tls.explain(e) or str(e) or repr(e)  # a TLS failure in words: untrusted, wrong name...
            self.log.warn("could not register with the relay: {why}", why=why)
            raise
        self.tunnel_secret = result["tunnel_secret"]
        self.control = proto
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
        """The control channel closed: ClientService reconnects by itself."""
        if self.control is not None:
            self.log.warn("lost the control connection to the relay; reconnecting")
        self.control = None

    def open_tunnels(self, count: int) -> None:
        """Open ``count`` tunnel connections to the proxy port."""
        header = wire.tunnel_header(self.client_id, self.tunnel_secret)
        factory = Factory.forProtocol(lambda: self.tunnel_protocol(header, self.tunnels))
        factory.noisy = False
        for _ in range(count):
            d = self.proxy_endpoint.connect(factory)
            d.addErrback(self._tunnel_failed)

    def _tunnel_failed(self, failure: Failure) -> None:
        self.log.warn("could not open a tunnel: {why}", why=failure.getErrorMessage())

    def stopService(self) -> Deferred:
        """Leave the relay; let tunnels that are carrying traffic finish for up to ``grace`` s."""
        stopped = super().stopService()
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
        return gatherResults([stopped, done]) if stopped is not None else done
