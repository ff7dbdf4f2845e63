"""Flow control on real sockets: a slow side never makes the relay's or client's memory grow."""

from __future__ import annotations

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer

from tests.helpers import backend_site, listen_backend, sleep, start_arpc, start_arps

BLOCK = b"x" * 65536
TOTAL = 512 * 1024 * 1024  # far more than any buffer on the way


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@implementer(IPushProducer)
class Pump:
    """Writes BLOCKs to a consumer while it is not paused, up to a total."""

    def __init__(self, consumer, total: int) -> None:
        self.consumer = consumer
        self.left = total
        self.paused = False
        self.sent = 0

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0:
            self.left -= len(BLOCK)
            self.sent += len(BLOCK)
            self.consumer.write(BLOCK)

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.left = 0


class Endless(resource.Resource):
    """A response of TOTAL bytes produced only as fast as it is consumed."""

    isLeaf = True
    pumps: list = []

    def render_GET(self, request):
        request.setHeader(b"content-length", str(TOTAL).encode())
        pump = Pump(request, TOTAL)
        self.pumps.append(pump)
        request.registerProducer(pump, True)
        reactor.callLater(0, pump.resumeProducing)
        return server.NOT_DONE_YET


class Sink(protocol.Protocol):
    """A backend that accepts and then never reads."""

    def connectionMade(self):
        self.transport.pauseProducing()


class FlowControlTests(unittest.TestCase):
    """Memory of arps and arpc stays bounded against a reader or a writer that stalls."""

    timeout = 90

    async def test_slow_reader_download(self):
        """A public client that stops reading: the backend is throttled, not buffered in memory."""
        root = backend_site().resource
        endless = Endless()
        root.putChild(b"endless", endless)
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self, server.Site(root)))
        before = rss_mb(relay.proc.pid), rss_mb(arpc.pid)

        class Stalled(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(f"GET /endless?token={arpc.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

            def dataReceived(self, data):
                self.transport.pauseProducing()  # read one chunk, then stall

        proto = Stalled()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"]), proto)
        self.addCleanup(proto.transport.abortConnection)
        await sleep(3)
        (pump,) = endless.pumps
        self.assertTrue(pump.paused)
        self.assertLess(pump.sent, 64 * 1024 * 1024)  # kernel and relay buffers only
        self.assertLess(rss_mb(relay.proc.pid) - before[0], 40)
        self.assertLess(rss_mb(arpc.pid) - before[1], 40)

    async def test_stalled_backend_upload(self):
        """A backend that stops reading: the public uploader is throttled, memory stays bounded."""
        sink = reactor.listenTCP(0, protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
        self.addCleanup(sink.stopListening)
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=sink.getHost().port)
        before = rss_mb(relay.proc.pid), rss_mb(arpc.pid)

        class Uploader(protocol.Protocol):
            def connectionMade(self):
                head = f"POST /up?token={arpc.token} HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n"
                self.transport.write(head.encode())
                self.pump = Pump(self.transport, TOTAL)
                self.transport.registerProducer(self.pump, True)
                self.pump.resumeProducing()

        proto = Uploader()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"]), proto)
        self.addCleanup(proto.transport.abortConnection)
        await sleep(3)
        self.assertTrue(proto.pump.paused)
        self.assertLess(proto.pump.sent, 64 * 1024 * 1024)
        self.assertLess(rss_mb(relay.proc.pid) - before[0], 40)
        self.assertLess(rss_mb(arpc.pid) - before[1], 40)


class PipelinedRequests(Pump):
    """Writes pipelined token-less requests (each answered by the relay itself) while not paused."""

    REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"

    def __init__(self, consumer, total: int) -> None:
        super().__init__(consumer, total)
        self.block = self.REQUEST * (65536 // len(self.REQUEST))

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0:
            self.left -= len(self.block)
            self.sent += len(self.block)
            self.consumer.write(self.block)


class OwnAnswersFlowTests(unittest.TestCase):
    """The relay's own answers are flow-controlled: a client that pipelines requests and never reads
    the answers is no longer read either (issue 11: 34 -> 441 MB RSS for 32 MB sent before)."""

    timeout = 120

    async def test_pipelined_unread_answers(self):
        """32 MB of pipelined token-less requests whose 401s are never read: the relay stops reading
        (the sender stalls well short of 32 MB), its RSS grows by less than 64 MB, and it closes the
        connection (after UNREAD_ANSWERS_TIMEOUT)."""
        relay = await start_arps(self)
        await sleep(0.5)
        before = rss_mb(relay.proc.pid)

        class Attacker(protocol.Protocol):
            def connectionMade(self):
                self.transport.pauseProducing()  # never read an answer
                self.pump = PipelinedRequests(self.transport, 32 * 1024 * 1024)
                self.transport.registerProducer(self.pump, True)
                self.pump.resumeProducing()

        proto = Attacker()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"]), proto)
        self.addCleanup(proto.transport.abortConnection)
        last, peak = -1, before
        for _ in range(120):  # until the sender is done or has stalled for a second
            await sleep(1)
            peak = max(peak, rss_mb(relay.proc.pid))
            if proto.pump.left <= 0 or (proto.pump.paused and proto.pump.sent == last):
                break
            last = proto.pump.sent
        self.assertGreater(proto.pump.left, 0, "the relay read all 32 MB although no answer was read")
        self.assertTrue(proto.pump.paused)
        # kernel buffers and one bounded write buffer: about 3.4 MB on a machine with a 32 MB tcp_rmem max
        self.assertLess(proto.pump.sent, 24 * 1024 * 1024)
        self.assertLess(peak - before, 64, f"arps grew from {before:.0f} to {peak:.0f} MB")
        # the relay cuts a client that leaves its answers unread (UNREAD_ANSWERS_TIMEOUT)
        done, fired = Deferred(), []
        proto.connectionLost = lambda reason: done.callback(None)

        def give_up():
            fired.append(True)
            proto.transport.abortConnection()

        timer = reactor.callLater(90, give_up)  # a bound on the wait, not a timing assertion
        await done
        if timer.active():
            timer.cancel()
        self.assertEqual(fired, [], "the relay kept the connection of a client that reads nothing")
