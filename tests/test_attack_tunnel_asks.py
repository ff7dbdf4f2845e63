"""A relay asks arpc for more tunnels than any pool needs.

``OpenTunnels`` carries a count the relay chooses (an AMP integer): arpc used to start that many
connection attempts at once, so a hostile relay -- or whoever speaks for it on a plaintext
control channel -- could have arpc allocate billions of pending connections.  Now arpc holds at
most ``MAX_TUNNELS`` tunnels open or opening, logs the trimmed ask, and opens more as others end.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from arp import wire
from arp.client.link import MAX_TUNNELS, RelayLink
from tests.test_link import FakeEndpoint


class TunnelAskTests(unittest.TestCase):
    """The link's answer to hostile ``OpenTunnels`` counts."""

    def setUp(self):
        self.proxy = FakeEndpoint()
        self.proxy.hang = True  # attempts stay pending, as against a black-holed proxy port
        self.link = RelayLink(
            clock=Clock(),
            control_endpoint=FakeEndpoint(),
            proxy_endpoint=self.proxy,
            tunnel_protocol=lambda header, tunnels: None,
            client_id="client1",
            identity=wire.new_identity(),
            auth_key="k",
        )

    def test_huge_asks_are_trimmed(self):
        """An ask past the cap opens only up to it; a second ask opens nothing; when attempts
        fail, room is made again."""
        self.link.open_tunnels(MAX_TUNNELS + 500)
        self.assertEqual(self.proxy.attempts, MAX_TUNNELS)
        self.link.open_tunnels(2**31 - 1)
        self.assertEqual(self.proxy.attempts, MAX_TUNNELS)
        self.assertEqual(self.link.connecting, MAX_TUNNELS)

    def test_room_returns_as_attempts_end(self):
        """Attempts that fail give their room back."""
        pending: list[Deferred] = []
        self.proxy.connect = lambda factory: pending.append(Deferred()) or pending[-1]
        self.link.open_tunnels(MAX_TUNNELS)
        self.assertEqual(len(pending), MAX_TUNNELS)
        for d in pending[:3]:
            d.errback(ConnectionRefusedError())
        self.link.open_tunnels(10)
        self.assertEqual(len(pending), MAX_TUNNELS + 3)
