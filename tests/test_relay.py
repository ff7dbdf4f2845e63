"""End-to-end behaviour of the relay: WebSockets, pool misses, auth, hijacking, restarts, TLS, TCP."""

from __future__ import annotations

import json
import os

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer

from tests.certs import make_ca_and_cert
from tests.helpers import (
    AUTH_KEY,
    HTTPClient,
    TwistdProcess,
    backend_site,
    free_port,
    listen_backend,
    raw_exchange,
    spawn_arps,
    start_arpc,
    start_arps,
    status_of,
    wait_until,
)


class EchoServer(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def websocket_backend(test) -> int:
    root = backend_site().resource
    factory = WebSocketServerFactory()
    factory.protocol = EchoServer
    factory.setProtocolOptions(maxMessagePayloadSize=4 * 1024 * 1024)
    root.putChild(b"ws", WebSocketResource(factory))
    return listen_backend(test, server.Site(root))


class EchoClient(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.append(payload)
        waiter = self.factory.waiter
        if waiter is not None and not waiter.called:
            self.factory.waiter = None
            waiter.callback(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.closed.callback(code)


async def open_websocket(port: int, path: str, token: str):
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", headers={"X-ARP-Token": token})
    factory.protocol = EchoClient
    factory.setProtocolOptions(maxMessagePayloadSize=4 * 1024 * 1024)
    factory.opened, factory.closed, factory.messages, factory.waiter = (
        defer.Deferred(),
        defer.Deferred(),
        [],
        None,
    )
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    proto = await factory.opened
    return proto, factory


class Identity(resource.Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.encode()

    def render_GET(self, request):
        return self.name


class RelayBehaviourTests(unittest.TestCase):
    """Behaviour that needs several processes or a restart."""

    timeout = 90

    async def test_websocket_echo_through_the_relay(self):
        """A WebSocket upgrade is passed through and spliced: messages small and large echo back."""
        port = websocket_backend(self)
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=port)
        proto, factory = await open_websocket(relay.ports["public"], "/ws", arpc.token)
        for payload in (b"hello", os.urandom(1024 * 1024)):
            factory.waiter = defer.Deferred()
            proto.sendMessage(payload, isBinary=True)
            self.assertEqual(await factory.waiter, payload)
        proto.sendClose(1000)
        self.assertEqual(await factory.closed, 1000)

    async def test_pool_miss_waits_for_a_new_tunnel(self):
        """With a pool of one, concurrent slow requests still all succeed (misses are served)."""
        port = listen_backend(self)
        relay = await start_arps(self, "--pool-size", "1")
        arpc = await start_arpc(self, relay, local_port=port)
        client = HTTPClient(self)
        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(
                    client.request("GET", f"{relay.public}/stream?token={arpc.token}")
                )
                for _ in range(6)
            ]
        )
        for response, body in results:
            self.assertEqual(response.code, 200)
            self.assertIn(b"tick 5", body)

    async def test_wrong_auth_key_is_refused(self):
        """A client with the wrong key is refused with a clear message and is not routable."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=free_port(), auth_key="not-the-key", wait=False)
        await arpc.wait_for(r"refused our auth key")
        await relay.proc.wait_for(r"wrong auth key")
        self.assertNotIn("Public URL", arpc.output)

    async def test_missing_auth_key_is_a_usage_error(self):
        """arpc without any auth key exits at once, saying how to give one."""
        proc = TwistdProcess("arpc", ["arpc", "--server-addr", "127.0.0.1", "--local-port", "1"]).start()
        self.addCleanup(proc.stop)
        await proc.ended
        self.assertNotEqual(proc.exit_code, 0)
        self.assertIn("--auth-key", proc.output)

    async def test_hijack_attempt_is_refused(self):
        """A second arpc instance cannot take a registered client id, even with the right key,
        while the owner keeps it across a restart."""
        owner_port = listen_backend(self, server.Site(Identity("owner")))
        thief_port = listen_backend(self, server.Site(Identity("thief")))
        relay = await start_arps(self, "--retention", "30")
        owner_dir = self.mktemp()
        owner = await start_arpc(
            self,
            relay,
            "--client-id",
            "shared-id-0123456789abcdef",
            local_port=owner_port,
            data_dir=owner_dir,
        )
        thief = await start_arpc(
            self, relay, "--client-id", "shared-id-0123456789abcdef", local_port=thief_port, wait=False
        )
        await thief.wait_for(r"held by another arpc instance")
        client = HTTPClient(self)
        response, body = await client.request("GET", f"{relay.public}/?token={owner.token}")
        self.assertEqual(body, b"owner")
        # The owner goes away; within retention the id is still not the thief's.
        await owner.kill()
        offset = len(thief.output)
        await thief.wait_for(r"held by another arpc instance", since=offset, timeout=40)
        response, body = await client.request("GET", f"{relay.public}/?token={owner.token}")
        self.assertEqual(response.code, 503)
        # The owner comes back (same data directory, same identity key) and gets its id back.
        owner = await start_arpc(
            self,
            relay,
            "--client-id",
            "shared-id-0123456789abcdef",
            local_port=owner_port,
            data_dir=owner_dir,
        )
        response, body = await client.request("GET", f"{relay.public}/?token={owner.token}")
        self.assertEqual(body, b"owner")

    async def test_client_gone_503_then_404(self):
        """Requests for a client that left get 503 with Retry-After during retention, 404 after."""
        port = listen_backend(self)
        relay = await start_arps(self, "--retention", "2")
        arpc = await start_arpc(self, relay, local_port=port)
        await arpc.kill()
        await relay.proc.wait_for(r"disconnected; keeping its registration")
        client = HTTPClient(self)
        response, body = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        self.assertIn("offline", json.loads(body)["error"])
        await relay.proc.wait_for(r"registration of \S+ expired")
        response, body = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 404)

    async def test_relay_restart_client_reconnects(self):
        """arps killed and restarted on the same ports: arpc comes back by itself."""
        port = listen_backend(self)
        ports = {"control": free_port(), "proxy": free_port(), "public": free_port()}
        data_dir = self.mktemp()
        relay = await start_arps(self, ports=ports, data_dir=data_dir)
        arpc = await start_arpc(self, relay, "--max-backoff", "1", local_port=port)
        client = HTTPClient(self, persistent=False)
        response, _ = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 200)
        await relay.proc.kill()
        await arpc.wait_for(r"lost the control connection")
        offset = len(arpc.output)
        relay = await start_arps(self, ports=ports, data_dir=data_dir)
        await arpc.wait_for(r"Public URL", since=offset, timeout=30)
        response, _ = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 200)

    async def test_port_taken_exits_with_message(self):
        """arps exits non-zero with a clear message when a port is taken."""
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        taken = blocker.getHost().port
        proc = spawn_arps(self, public=f"tcp:{taken}:interface=127.0.0.1")
        await proc.ended
        self.assertNotEqual(proc.exit_code, 0)
        self.assertIn("public: cannot listen on", proc.output)
        self.assertIn("Address already in use", proc.output)

    async def test_tls_on_every_hop(self):
        """TLS on control, proxy and public ports, verified by arpc against a throw-away CA."""
        paths = make_ca_and_cert(self.mktemp())
        tls = f"privateKey={paths['key']}:certKey={paths['cert']}:interface=127.0.0.1"
        ports = {"control": free_port(), "proxy": free_port(), "public": free_port()}
        relay_args = [
            "arps",
            "--auth-key",
            AUTH_KEY,
            "--data-dir",
            self.mktemp(),
            "--control-endpoint",
            f"ssl:{ports['control']}:{tls}",
            "--proxy-endpoint",
            f"ssl:{ports['proxy']}:{tls}",
            "--public-endpoint",
            f"ssl:{ports['public']}:{tls}",
            "--admin-endpoint",
            "none",
        ]
        relay = TwistdProcess("arps", relay_args).start()
        self.addCleanup(relay.stop)
        await relay.wait_for(r"public listening")
        backend = listen_backend(self)

        def arpc_args(ca_dir):
            return [
                "arpc",
                "--server-addr",
                "127.0.0.1",
                "--auth-key",
                AUTH_KEY,
                "--data-dir",
                self.mktemp(),
                "--local-port",
                str(backend),
                "--max-backoff",
                "1",
                "--control-endpoint",
                f"tls:127.0.0.1:{ports['control']}:trustRoots={ca_dir}",
                "--proxy-endpoint",
                f"tls:127.0.0.1:{ports['proxy']}:trustRoots={ca_dir}",
            ]

        # A client that does not trust the relay's certificate never registers.
        other = make_ca_and_cert(self.mktemp())
        untrusting = TwistdProcess("arpc", arpc_args(other["ca_dir"])).start()
        self.addCleanup(untrusting.stop)
        await untrusting.wait_for(r"could not register with the relay: certificate not trusted")
        self.assertNotIn("Public URL", untrusting.output)
        await untrusting.stop()

        arpc = TwistdProcess("arpc", arpc_args(paths["ca_dir"])).start()
        self.addCleanup(arpc.stop)
        match = await arpc.wait_for(r"Public URL: (\S+)")
        url = match.group(1)
        # the client's own port serves TLS like the public port it copies
        self.assertRegex(url, r"^https://127\.0\.0\.1:\d+/\?token=")
        self.assertNotIn(f":{ports['public']}/", url)

        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.web.client import Agent, HTTPConnectionPool, readBody
        from twisted.web.iweb import IPolicyForHTTPS
        from zope.interface import implementer

        with open(paths["ca"], "rb") as f:
            ca = Certificate.loadPEM(f.read())

        @implementer(IPolicyForHTTPS)
        class TrustTestCA:
            def creatorForNetloc(self, hostname, port):
                return optionsForClientTLS(hostname.decode(), trustRoot=ca)

        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=TrustTestCA(), pool=pool)
        response = await agent.request(b"GET", url.replace("/?", "/echo?").encode())
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["headers"]["x-forwarded-proto"], ["https"])

    async def _tcp_service_through_relay(self, service: type) -> int:
        """A loopback TCP service speaking ``service``, published by ``arpc --tcp`` through an arps
        with one dedicated port; that port, once arps listens on it."""
        backend = reactor.listenTCP(0, protocol.Factory.forProtocol(service), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        tcp_port = free_port()
        relay = await start_arps(
            self, "--tcp-ports", f"{tcp_port}-{tcp_port}", "--tcp-interface", "127.0.0.1"
        )
        arpc = await start_arpc(self, relay, "--tcp", local_port=backend.getHost().port, wait=False)
        match = await arpc.wait_for(r"Public address: tcp://127\.0\.0\.1:(\d+)")
        self.assertEqual(int(match.group(1)), tcp_port)
        await wait_until(lambda: f"listening on 127.0.0.1:{tcp_port}" in relay.proc.output)
        return tcp_port

    async def test_raw_tcp_service(self):
        """arpc --tcp gets a dedicated public port; a server-speaks-first protocol works, EOF too."""

        @implementer(IHalfCloseableProtocol)
        class Greeter(protocol.Protocol):
            """Speaks first, answers in upper case, and finishes its answer after our EOF."""

            def connectionMade(self):
                self.transport.write(b"220 hello\r\n")

            def dataReceived(self, data):
                self.transport.write(data.upper())

            def readConnectionLost(self):
                self.transport.loseConnection()

            def writeConnectionLost(self):
                pass

        tcp_port = await self._tcp_service_through_relay(Greeter)

        class Client(protocol.Protocol):
            def __init__(self):
                self.data = b""
                self.done = defer.Deferred()

            def dataReceived(self, data):
                self.data += data
                if self.data == b"220 hello\r\n":
                    self.transport.write(b"quiet please")
                    self.transport.loseWriteConnection()
                elif len(self.data) >= len(b"220 hello\r\nQUIET PLEASE"):
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                self.done.callback(self.data)

        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcp_port), client)
        timer = reactor.callLater(20, client.transport.abortConnection)
        data = await client.done
        timer.cancel()
        self.assertEqual(data, b"220 hello\r\nQUIET PLEASE")

    async def test_half_closed_tcp_client_reads_the_answer(self):
        """A TCP client that shuts its write side down still reads the service's answer, through
        ``arps --tcp`` and arpc's forward mode: the service answers only after the EOF reached it,
        and the answer (larger than a socket buffer) flows back over the half-closed splice."""
        answer_size = 512 * 1024

        @implementer(IHalfCloseableProtocol)
        class CountThenAnswer(protocol.Protocol):
            """Reads until EOF, then answers with the byte count and a large body, then closes."""

            def connectionMade(self):
                self.count = 0

            def dataReceived(self, data):
                self.count += len(data)

            def readConnectionLost(self):
                self.transport.write(b"got %d\n" % self.count + b"z" * answer_size)
                self.transport.loseConnection()

            def writeConnectionLost(self):
                pass

        tcp_port = await self._tcp_service_through_relay(CountThenAnswer)
        payload = b"q" * 100_000
        data = await raw_exchange(tcp_port, payload, timeout=20, half_close=True)
        self.assertTrue(data.startswith(b"got 100000\n"), data[:40])
        self.assertEqual(len(data), len(b"got 100000\n") + answer_size)

    async def test_unknown_token_guessing_is_rate_limited(self):
        """Past --guess-limit unknown tokens from one address, the relay answers 429."""
        relay = await start_arps(self, "--guess-limit", "3")
        statuses = []
        for i in range(5):
            raw = await raw_exchange(
                relay.ports["public"],
                f"GET /?token=guess{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            )
            statuses.append(status_of(raw))
        self.assertEqual(statuses, [404, 404, 404, 429, 429])
