"""Faults survived: backends that reset or stall, half-closed clients, control-port abuse."""

from __future__ import annotations

import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.trial import unittest

from tests.helpers import (
    HTTPClient,
    admin_json,
    listen_backend,
    raw_exchange,
    sleep,
    start_arpc,
    start_arps,
    status_of,
    wait_until,
)


class Misbehaving(protocol.Protocol):
    """A backend that reads a request head and then does what ``mode`` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.buf = b""

    def dataReceived(self, data):
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        if self.mode == "reset-before-head":
            self.transport.abortConnection()
        elif self.mode == "reset-mid-body":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            reactor.callLater(0.1, self.transport.abortConnection)
        # "stall": say nothing


def misbehaving_backend(test, mode: str) -> int:
    port = reactor.listenTCP(
        0, protocol.Factory.forProtocol(lambda: Misbehaving(mode)), interface="127.0.0.1"
    )
    test.addCleanup(port.stopListening)
    return port.getHost().port


class BackendFaultTests(unittest.TestCase):
    """502/504 for a failing service, and the tunnel is not leaked."""

    timeout = 60

    async def _relay(self, mode: str, *arps_args: str):
        relay = await start_arps(self, *arps_args)
        arpc = await start_arpc(self, relay, local_port=misbehaving_backend(self, mode))
        return relay, arpc

    async def _no_busy_tunnels(self, relay, token):
        async def busy():
            record = await admin_json(relay, f"/admin/api/clients/{token}")
            return record["pool"]["busy"]

        for _ in range(100):
            if await busy() == 0:
                return
            await sleep(0.05)
        self.fail("a tunnel stayed busy after the exchange failed")

    async def test_reset_before_head(self):
        """A backend that resets before answering gives the public client a JSON 502."""
        relay, arpc = await self._relay("reset-before-head")
        raw = await raw_exchange(
            relay.ports["public"], f"GET / HTTP/1.1\r\nX-ARP-Token: {arpc.token}\r\n\r\n".encode()
        )
        self.assertEqual(status_of(raw), 502, repr(raw) + relay.proc.output[-1500:])
        await self._no_busy_tunnels(relay, arpc.token)

    async def test_reset_mid_body(self):
        """A backend that resets mid-body: the public connection is cut (not passed off as complete)."""
        relay, arpc = await self._relay("reset-mid-body")
        raw = await raw_exchange(
            relay.ports["public"], f"GET / HTTP/1.1\r\nX-ARP-Token: {arpc.token}\r\n\r\n".encode()
        )
        self.assertEqual(status_of(raw), 200)
        self.assertTrue(raw.endswith(b"partial"))
        await self._no_busy_tunnels(relay, arpc.token)

    async def test_stalled_backend_504(self):
        """A backend that never answers: 504 after --response-timeout."""
        relay, arpc = await self._relay("stall", "--response-timeout", "1")
        raw = await raw_exchange(
            relay.ports["public"], f"GET / HTTP/1.1\r\nX-ARP-Token: {arpc.token}\r\n\r\n".encode()
        )
        self.assertEqual(status_of(raw), 504)
        self.assertIn(b"did not answer in time", raw)
        await self._no_busy_tunnels(relay, arpc.token)


class ClientBehaviourTests(unittest.TestCase):
    """Public clients that half-close, and abuse of the control and proxy ports."""

    timeout = 90

    async def test_public_half_close_still_gets_response(self):
        """A client that sends its request and shuts its write side still gets the whole answer."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))

        class HalfCloser(protocol.Protocol):
            def __init__(self):
                self.data = b""
                self.done = defer.Deferred()

            def connectionMade(self):
                self.transport.write(
                    f"GET /big/100000 HTTP/1.1\r\nX-ARP-Token: {arpc.token}\r\n\r\n".encode()
                )
                self.transport.loseWriteConnection()

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason):
                self.done.callback(self.data)

        proto = HalfCloser()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.ports["public"]), proto)
        data = await proto.done
        self.assertEqual(status_of(data), 200)
        self.assertEqual(len(data.split(b"\r\n\r\n", 1)[1]), 100000)

    async def test_control_port_abuse(self):
        """An oversize AMP frame and hundreds of silent connections leave the relay serving."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        # an AMP key length prefix claiming 0xffff bytes, then a value way past AMP's 64 KiB cap
        frame = struct.pack("!H", 5) + b"_ask" + b"x" + struct.pack("!H", 0xFFFF) + b"y" * 70000
        raw = await raw_exchange(relay.ports["control"], frame, timeout=10)
        self.assertEqual(raw, b"")
        idle = []

        class Silent(protocol.Protocol):
            def connectionLost(self, reason):
                pass

        for port in (relay.ports["control"], relay.ports["proxy"]):
            for _ in range(300):
                proto = Silent()
                try:
                    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
                except ConnectError:  # control: beyond 128 unregistered per address, reset at once
                    continue
                idle.append(proto)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in idle])
        client = HTTPClient(self)
        response, _ = await client.request("GET", f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(response.code, 200)
        await wait_until(lambda: "Traceback" not in relay.proc.output)
