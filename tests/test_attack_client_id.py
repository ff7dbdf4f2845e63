"""A hostile client picks a client id that ends in a newline.

The id goes into headers the relay writes itself (the own-origin redirect's ``Location``, the
per-client cookie's ``Set-Cookie``) and into log lines.  ``^...$`` with :func:`re.match` lets a
single trailing ``\\n`` through (``$`` also matches before a final newline), so such an id used to
register, and the relay's 302 for it carried a bare line feed that ends the header line early
(browsers read a bare LF as a line end): headers after it were read as the body.
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial import unittest

from arp import wire
from arp.client.tap import Options
from tests.control_helpers import connect_control, register_over
from tests.helpers import AUTH_KEY, raw_exchange, start_arps, status_of

HOSTILE = "hostile-0123456789abcdef\n"


class TrailingNewlineIdTests(unittest.TestCase):
    """An id with a trailing newline is refused wherever an id is checked."""

    timeout = 60

    async def test_relay_refuses_to_register_it(self):
        """Over a real control channel with the right auth key: the registration is refused, and
        the shared public port answers that id with a 404 (no redirect with a bare LF in its head)."""
        relay = await start_arps(self)
        proto = await connect_control(relay.ports["control"])
        self.addCleanup(proto.transport.abortConnection)
        try:
            answer = await register_over(proto, HOSTILE, AUTH_KEY)
        except Exception as e:  # the AMP error arpc gets
            self.assertIn("client id must be", str(e))
        else:
            self.fail(f"an id ending in a newline registered: {answer!r}")
        raw = await raw_exchange(
            relay.ports["public"],
            b"GET /?token=hostile-0123456789abcdef%0A HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: text/html\r\nConnection: close\r\n\r\n",
        )
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertEqual(status_of(raw), 404, raw[:300])
        self.assertNotIn(b"\n", head.replace(b"\r\n", b""))

    def test_arpc_refuses_it_and_tunnel_headers_carry_none(self):
        """``arpc --client-id`` with a trailing newline is a usage error, and a tunnel header naming
        such an id is malformed."""
        options = Options()
        with self.assertRaises(usage.UsageError) as refused:
            options.parseOptions(
                [
                    "--server-addr",
                    "127.0.0.1",
                    "--client-id",
                    HOSTILE,
                    "--local-port",
                    "3000",
                    "--auth-key",
                    "k" * 32,
                ]
            )
        self.assertIn("--client-id must be", str(refused.exception))
        line = b"%s %s %s" % (wire.TUNNEL_MAGIC, HOSTILE.encode(), b"0" * 64)
        with self.assertRaises(wire.BadTunnelHeader):
            wire.parse_tunnel_header(line)
        self.assertIsNone(wire.CLIENT_ID_RE.match(HOSTILE))
        self.assertIsNotNone(wire.CLIENT_ID_RE.match(HOSTILE.strip()))
