"""Transports that do not match, in words; and one listen backlog for every port however given.

End to end: a real arps and arpc on loopback, each told a different transport
for the control or the proxy port, and the one log line each side writes.  Units:
the backlog rule (:func:`arp.listen.with_backlog`, as a listening port really gets
it), the rate limit of arps's mismatch lines, and the words arpc chooses.
"""

from __future__ import annotations

import re

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest

from arp.control import Register
from arp.listen import LISTEN_BACKLOG, Listener, endpoint_arguments, with_backlog
from arp.mismatch import (
    MismatchLog,
    endpoint_address,
    endpoint_is_tls,
    looks_like_tls,
    plain_on_tls,
    proxy_mismatch,
    registration_hint,
)
from arp.server.origins import endpoint_with_port
from tests.certs import make_ca_and_cert
from tests.helpers import AUTH_KEY, TwistdProcess, client_tls, spawn_arps, start_arps

LOOPBACK = "tcp:0:interface=127.0.0.1"


# -- end to end ---------------------------------------------------------------------------------


async def listening(arps: TwistdProcess) -> dict[str, int]:
    """The ports arps listens on, from its "listening on" lines."""
    ports = {}
    for name in ("control", "proxy", "public"):
        ports[name] = int((await arps.wait_for(rf"{name} listening on \S+:(\d+)")).group(1))
    return ports


class Once(Protocol):
    """Sends ``payload`` once connected, and fires ``closed`` when the server closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)


async def send_once(port: int, payload: bytes = b"", tls: object = None) -> None:
    """Connect to 127.0.0.1:``port`` (over TLS with client options ``tls``), send ``payload``, and
    wait until the server closes the connection."""
    client = Once(payload)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    await client.closed.addTimeout(20, reactor)


class MismatchEndToEndTests(unittest.TestCase):
    """Each mismatch, from real processes: one line at arps naming the port's role and TLS, and
    arpc's hint or refusal."""

    timeout = 120

    def arpc(self, control: str, proxy: str) -> TwistdProcess:
        """arpc told these control and proxy endpoint strings (retrying quickly)."""
        args = [
            "arpc",
            "--auth-key",
            AUTH_KEY,
            "--data-dir",
            self.mktemp(),
            "--no-log-file",
            "--local-port",
            "9",
            "--max-backoff",
            "1",
            "--control-endpoint",
            control,
            "--proxy-endpoint",
            proxy,
        ]
        proc = TwistdProcess("arpc", args).start()
        self.addCleanup(proc.stop)
        return proc

    async def test_tls_arpc_against_plain_control_port(self):
        """arpc told tls: for a plain control port: arps names the port and says it got a TLS
        handshake; arpc says the relay may not use TLS there and what to use."""
        relay = await start_arps(self)
        control, proxy = relay.ports["control"], relay.ports["proxy"]
        arpc = self.arpc(f"tls:127.0.0.1:{control}", f"tls:127.0.0.1:{proxy}")
        where = re.escape(f"127.0.0.1:{control}")
        line = await relay.proc.wait_for(
            rf"control port {where} is plain TCP but got a TLS handshake from 127\.0\.0\.1:\d+: "
            rf"arpc uses tls: here; start arpc with --control-endpoint tcp:{where} or give arps ssl: "
            "for this port"
        )
        self.assertNotIn("\n", line.group(0))
        await arpc.wait_for(
            rf"could not register with the relay: .*the relay may not use TLS on {where}: use tcp:{where}"
        )
        self.assertNotIn("Connection was closed cleanly", arpc.output)

    async def test_plain_arpc_against_tls_control_port(self):
        """Plain arpc against a TLS control port: arps says the port expects TLS but got plain TCP;
        arpc says the relay may expect TLS (instead of "Connection was closed cleanly")."""
        relay = await start_arps(self, tls=True)
        control, proxy = relay.ports["control"], relay.ports["proxy"]
        arpc = self.arpc(f"tcp:127.0.0.1:{control}", f"tcp:127.0.0.1:{proxy}")
        where = re.escape(f"127.0.0.1:{control}")
        await relay.proc.wait_for(
            rf"control port {where} expects TLS but got plain TCP from 127\.0\.0\.1:\d+: arpc uses "
            rf"tcp: here; start arpc with --control-endpoint tls:{where} or give arps tcp: for this port"
        )
        await arpc.wait_for(
            rf"could not register with the relay: .*the relay may expect TLS on {where}: use tls:{where}"
        )
        self.assertNotIn("Connection was closed cleanly", arpc.output)

    async def test_tls_control_with_plain_proxy_port(self):
        """TLS control port, plain proxy port, arpc told tls: for both: arpc refuses at registration
        with one line naming the proxy port, plain TCP and tls:, and exits with status 2 (not 504s
        later).  A TLS handshake sent to that proxy port (an older arpc) is logged by arps."""
        paths = make_ca_and_cert(self.mktemp())
        keys = f"privateKey={paths['key']}:certKey={paths['cert']}"
        arps = spawn_arps(self, control=f"ssl:0:interface=127.0.0.1:{keys}", proxy=LOOPBACK)
        ports = await listening(arps)
        trust = f"trustRoots={paths['ca_dir']}"
        arpc = self.arpc(
            f"tls:localhost:{ports['control']}:{trust}", f"tls:localhost:{ports['proxy']}:{trust}"
        )
        where = re.escape(f"localhost:{ports['proxy']}")
        await arpc.wait_for(rf"proxy port {where} is plain TCP but arpc was told tls: ")
        await arpc.ended
        self.assertEqual(arpc.exit_code, 2, arpc.output)
        self.assertNotIn("Registered", arpc.output)
        self.assertEqual(len(re.findall("is plain TCP but arpc was told", arpc.output)), 1, arpc.output)

        await send_once(ports["proxy"], tls=client_tls(paths["ca"]))  # what an older arpc sends
        await arps.wait_for(
            rf"proxy port 127\.0\.0\.1:{ports['proxy']} is plain TCP but got a TLS handshake from "
            r"127\.0\.0\.1:\d+: arpc uses tls: here; start arpc with --proxy-endpoint tcp:"
        )

    async def test_tls_proxy_port_told_plain(self):
        """TLS on both ports, arpc told tls: for control but tcp: for the proxy: arpc refuses at
        registration naming the proxy port, TLS and tcp:.  Plain bytes on that proxy port (an older
        arpc's tunnel) are logged by arps as plain TCP on a TLS port, once per source a minute."""
        relay = await start_arps(self, tls=True)
        control, proxy = relay.ports["control"], relay.ports["proxy"]
        trust = f"trustRoots={relay.tls['ca_dir']}"
        arpc = self.arpc(f"tls:localhost:{control}:{trust}", f"tcp:localhost:{proxy}")
        await arpc.wait_for(rf"proxy port localhost:{proxy} uses TLS but arpc was told tcp: ")
        await arpc.ended
        self.assertEqual(arpc.exit_code, 2, arpc.output)
        self.assertNotIn("Registered", arpc.output)

        for _ in range(3):
            await send_once(proxy, b"ARP-TUNNEL someone 0123456789abcdef\r\n")
        await relay.proc.wait_for(
            rf"proxy port 127\.0\.0\.1:{proxy} expects TLS but got plain TCP from 127\.0\.0\.1:\d+: "
            rf"arpc uses tcp: here; start arpc with --proxy-endpoint tls:127\.0\.0\.1:{proxy}"
        )
        # and the control port still takes a correct arpc
        mark = len(relay.proc.output)
        good = self.arpc(f"tls:localhost:{control}:{trust}", f"tls:localhost:{proxy}:{trust}")
        await good.wait_for(r"Public URL: ")
        await relay.proc.wait_for(r"client \S+ registered from", since=mark)
        lines = re.findall(r"proxy port \S+ expects TLS but got plain TCP", relay.proc.output)
        self.assertEqual(len(lines), 1, relay.proc.output)


# -- the listen backlog -------------------------------------------------------------------------


class BacklogTests(unittest.SynchronousTestCase):
    """Every port gets LISTEN_BACKLOG however it is given; an explicit backlog= wins."""

    def test_with_backlog(self):
        """tcp:, tcp6:, ssl: and unix: strings get backlog=1024 unless they give one (by keyword
        or by position); other kinds are left alone."""
        cases = [
            ("tcp:17001", "tcp:17001:backlog=1024"),
            ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=1024"),
            ("tcp:port=0:interface=127.0.0.1", "tcp:port=0:interface=127.0.0.1:backlog=1024"),
            ("tcp:17001:backlog=1024", "tcp:17001:backlog=1024"),
            ("tcp:17001:backlog=5", "tcp:17001:backlog=5"),
            ("tcp:80:127.0.0.1:7", "tcp:80:127.0.0.1:7"),  # backlog 7 given by position
            ("tcp6:80:100", "tcp6:80:100"),
            (r"tcp6:0:interface=\:\:1", r"tcp6:0:interface=\:\:1:backlog=1024"),
            ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=1024"),
            (r"ssl:443:privateKey=a\:backlog=3.pem", r"ssl:443:privateKey=a\:backlog=3.pem:backlog=1024"),
            ("unix:/run/arp.sock", "unix:/run/arp.sock:backlog=1024"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
            ("stdio:", "stdio:"),
        ]
        for given, expected in cases:
            self.assertEqual(with_backlog(given), expected, given)
        self.assertEqual(with_backlog("tcp:1", 7), "tcp:1:backlog=7")

    def test_endpoint_arguments(self):
        """Endpoint strings are split as Twisted splits them: escapes, keywords, positions."""
        self.assertEqual(
            endpoint_arguments(r"tls:host=\:\:1:port=17001:trustRoots=/etc/arp/ca"),
            ("tls", [], {"host": "::1", "port": "17001", "trustRoots": "/etc/arp/ca"}),
        )
        self.assertEqual(
            endpoint_arguments("tcp:relay:17001:timeout=10"), ("tcp", ["relay", "17001"], {"timeout": "10"})
        )
        self.assertEqual(endpoint_arguments("tcp:0:a=b=c"), ("tcp", ["0"], {"a": "b=c"}))

    def listen(self, description: str) -> MemoryReactor:
        memory = MemoryReactor()
        listener = Listener("test", description, Factory.forProtocol(Protocol), memory)
        listener.startService()
        self.addCleanup(listener.stopService)
        return memory

    def test_ports_really_get_it(self):
        """What the reactor is asked for: backlog 1024 on tcp:, tcp6: and ssl: endpoint strings,
        a client's own port made from the public endpoint too; an explicit backlog= wins."""
        self.assertEqual(self.listen(LOOPBACK).tcpServers[0][2], LISTEN_BACKLOG)
        self.assertEqual(self.listen(r"tcp6:0:interface=\:\:1").tcpServers[0][2], LISTEN_BACKLOG)
        self.assertEqual(self.listen("tcp:0:interface=127.0.0.1:backlog=7").tcpServers[0][2], 7)
        paths = make_ca_and_cert(self.mktemp())
        public = f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}:certKey={paths['cert']}"
        self.assertEqual(self.listen(public).sslServers[0][3], LISTEN_BACKLOG)
        own_port = self.listen(endpoint_with_port(public, 17100)).sslServers[0]
        self.assertEqual((own_port[0], own_port[3]), (17100, LISTEN_BACKLOG))

    def test_arps_default_ports(self):
        """``--control-port`` and friends keep their explicit backlog of 1024."""
        from arp.server.tap import Options

        options = Options()
        options.parseOptions(["--auth-key", AUTH_KEY, "--admin-endpoint", "none"])
        for name in ("control", "proxy", "public"):
            self.assertEqual(with_backlog(options[f"{name}-endpoint"]), options[f"{name}-endpoint"])
            self.assertIn(":backlog=1024", options[f"{name}-endpoint"])


# -- arps's log lines ---------------------------------------------------------------------------


def peer(host: str, role_port: int = 17002) -> StringTransport:
    """A transport from ``host`` to the relay's port ``role_port``."""
    family = IPv6Address if ":" in host else IPv4Address
    return StringTransport(
        hostAddress=family("TCP", "127.0.0.1" if family is IPv4Address else "::1", role_port),
        peerAddress=family("TCP", host, 40000),
    )


class MismatchLogTests(unittest.SynchronousTestCase):
    """arps's mismatch lines: at most one per port and source a minute, and a cap over all."""

    def setUp(self):
        self.lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace", "").startswith("arp.mismatch"):
                from twisted.logger import formatEvent

                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.clock = Clock()
        self.log = MismatchLog(self.clock, interval=60.0, most=5)

    def test_once_per_port_and_source_a_minute(self):
        """The same source on the same port: one line a minute; another port or source: its own."""
        for _ in range(10):
            self.log.tls_on_plain("control", peer("10.0.0.1", 17001))
        self.assertEqual(len(self.lines), 1)
        self.assertEqual(
            self.lines[0],
            "control port 127.0.0.1:17001 is plain TCP but got a TLS handshake from 10.0.0.1:40000: arpc "
            "uses tls: here; start arpc with --control-endpoint tcp:127.0.0.1:17001 or give arps ssl: "
            "for this port",
        )
        self.log.tls_on_plain("proxy", peer("10.0.0.1"))
        self.log.tls_on_plain("control", peer("10.0.0.2", 17001))
        self.assertEqual(len(self.lines), 3)
        self.clock.advance(59)
        self.log.tls_on_plain("control", peer("10.0.0.1", 17001))
        self.assertEqual(len(self.lines), 3)
        self.clock.advance(1)
        self.log.tls_on_plain("control", peer("10.0.0.1", 17001))
        self.assertEqual(len(self.lines), 4)

    def test_ipv6_range_counts_as_one(self):
        """Addresses of one IPv6 /64 count as one source."""
        for i in range(10):
            self.log.tls_on_plain("proxy", peer(f"2001:db8::{i + 1}"))
        self.assertEqual(len(self.lines), 1)
        self.assertIn("proxy port [::1]:17002", self.lines[0])

    def test_many_sources_are_capped(self):
        """Past ``most`` lines a minute, one line says so and the rest are dropped; memory is
        bounded by the same cap."""
        for i in range(1000):
            self.log.tls_on_plain("control", peer(f"10.0.{i // 250}.{i % 250 + 1}"))
        self.assertEqual(len(self.lines), 6)
        self.assertIn("more than 5 transport mismatches within 60s", self.lines[-1])
        self.assertLessEqual(len(self.log._logged), 5)
        self.clock.advance(60)
        self.log.tls_on_plain("control", peer("10.9.9.9"))
        self.assertEqual(len(self.lines), 7)

    def test_plain_on_tls_only_for_non_tls_bytes(self):
        """A handshake that failed on plain bytes is logged; other losses (a clean close, a client
        that did not trust the certificate) are not."""
        from OpenSSL.SSL import Error

        wrong = Failure(Error([("SSL routines", "", "wrong version number")]))
        http = Failure(Error([("SSL routines", "", "http request")]))
        untrusted = Failure(Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
        self.assertTrue(plain_on_tls(wrong))
        self.assertTrue(plain_on_tls(http))
        self.assertFalse(plain_on_tls(untrusted))
        self.assertFalse(plain_on_tls(Failure(ConnectionDone())))
        here = IPv4Address("TCP", "127.0.0.1", 17002)
        self.log.lost("proxy", peer("10.0.0.1"), here, untrusted)
        self.log.lost("proxy", peer("10.0.0.1"), here, Failure(ConnectionDone()))
        self.assertEqual(self.lines, [])
        self.log.lost("proxy", peer("10.0.0.1"), here, wrong)
        self.assertEqual(
            self.lines,
            [
                "proxy port 127.0.0.1:17002 expects TLS but got plain TCP from 10.0.0.1:40000: arpc uses "
                "tcp: here; start arpc with --proxy-endpoint tls:127.0.0.1:17002 or give arps tcp: for "
                "this port"
            ],
        )

    def test_looks_like_tls(self):
        """A TLS record header is recognised; nothing arpc sends in the clear is."""
        self.assertTrue(looks_like_tls(b"\x16\x03\x01\x02\x00\x01"))
        self.assertTrue(looks_like_tls(b"\x16"))
        self.assertFalse(looks_like_tls(b"\x00\x04_ask"))  # an AMP box
        self.assertFalse(looks_like_tls(b"ARP-TUNNEL x y\r\n"))
        self.assertFalse(looks_like_tls(b"\x16\x00"))
        self.assertFalse(looks_like_tls(b""))


# -- arpc's words -------------------------------------------------------------------------------


class ArpcWordsTests(unittest.SynchronousTestCase):
    """What arpc says about a control connection that closed at once, and a proxy port's transport."""

    def test_endpoint_kinds_and_addresses(self):
        """TLS or not, and host:port, from arpc's endpoint strings."""
        self.assertTrue(endpoint_is_tls("tls:relay.example:17001:trustRoots=/etc/arp/ca"))
        self.assertTrue(endpoint_is_tls("ssl:443:privateKey=k.pem"))
        self.assertFalse(endpoint_is_tls("tcp:host=relay:port=17002:timeout=10"))
        self.assertIsNone(endpoint_is_tls("systemd:domain=INET:index=0"))
        self.assertIsNone(endpoint_is_tls(""))
        self.assertEqual(endpoint_address("tls:relay.example:17001:trustRoots=/x"), "relay.example:17001")
        self.assertEqual(endpoint_address("tcp:host=relay:port=17002:timeout=10"), "relay:17002")
        self.assertEqual(endpoint_address(r"tcp:host=\:\:1:port=17002"), "[::1]:17002")
        self.assertIsNone(endpoint_address("unix:/run/arp.sock"))

    def test_registration_hint(self):
        """Closed before any answer: plain arpc hears the relay may expect TLS; TLS arpc whose
        handshake never finished hears the relay may not use TLS; anything else: no hint."""
        done = ConnectionDone()
        self.assertEqual(
            registration_hint(done, "tcp:host=relay:port=17001:timeout=10", False, False),
            "the control connection closed before the relay answered: the relay may expect TLS on "
            "relay:17001: use tls:relay:17001",
        )
        self.assertEqual(
            registration_hint(ConnectionLost(), "tls:relay:17001", True, False),
            "the control connection closed during the TLS handshake: the relay may not use TLS on "
            "relay:17001: use tcp:relay:17001",
        )
        self.assertIsNone(registration_hint(done, "tls:relay:17001", True, True))
        self.assertIsNone(registration_hint(ConnectionRefusedError(), "tcp:relay:17001", False, False))
        self.assertIsNone(registration_hint(ConnectionAborted(), "tcp:relay:17001", False, False))  # silent
        # a TLS relay that answers plain bytes with an alert: AMP reads a box of impossible length
        from twisted.protocols.amp import TooLong

        garbled = TooLong(True, True, b"\x15\x03", 0)
        hint = registration_hint(garbled, "tcp:relay:17001", False, False)
        self.assertIn("the relay may expect TLS on relay:17001", hint)

    def test_proxy_mismatch(self):
        """Refused only when the relay's proxy transport differs from arpc's and the control
        connection shows nothing in between (no TLS-terminating proxy); unknown: not judged."""
        self.assertEqual(
            proxy_mismatch("tls:relay:17002", False, True, True),
            "proxy port relay:17002 is plain TCP but arpc was told tls: (--proxy-endpoint): every "
            "tunnel would fail; start arpc with --proxy-endpoint tcp:relay:17002, or give arps an ssl: "
            "--proxy-endpoint",
        )
        told_plain = proxy_mismatch("tcp:host=relay:port=17002", True, True, True)
        self.assertTrue(told_plain.startswith("proxy port relay:17002 uses TLS but arpc was told tcp: "))
        self.assertIsNone(proxy_mismatch("tls:relay:17002", True, True, True))
        self.assertIsNone(proxy_mismatch("tcp:relay:17002", False, False, False))
        # arpc speaks TLS to a proxy that ends it in front of a plain relay: not judged
        self.assertIsNone(proxy_mismatch("tls:relay:17002", False, False, True))
        # an older relay says nothing; an endpoint kind that does not say is not judged
        self.assertIsNone(proxy_mismatch("tls:relay:17002", None, None, True))
        self.assertIsNone(proxy_mismatch("systemd:domain=INET:index=0", False, False, False))

    def test_register_answer_stays_compatible(self):
        """The new answer parses with the old Register command (an older arpc), and an older relay's
        answer parses with the new one (the new keys are absent)."""

        class OldRegister(amp.Command):
            arguments = Register.arguments
            response = [r for r in Register.response if r[0] not in (b"control_tls", b"proxy_tls")]

        answer = {"exchange": b"x", "public_url": "http://r", "remote_port": 0, "heartbeat": 10.0}
        proto = amp.AMP()
        new_box = Register.makeResponse({**answer, "control_tls": True, "proxy_tls": False}, proto)
        self.assertEqual(OldRegister.parseResponse(new_box, proto), answer)
        old_box = OldRegister.makeResponse(answer, proto)
        parsed = Register.parseResponse(old_box, proto)
        self.assertIsNone(parsed.get("proxy_tls"))
        self.assertIsNone(parsed.get("control_tls"))
        self.assertIs(Register.parseResponse(new_box, proto)["proxy_tls"], False)
