"""Guessing tokens from many IPv6 addresses of one host.

A host on IPv6 usually holds a whole /64 (2^64 addresses): rotating the source address reset
the per-address guess limits of the relay (unknown client ids) and of arpc (unknown access
tokens), and flooded their bounded tables.  The control port already counted a /64 as one
source; now both guess limiters do too.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from arp.client.command.access import AccessError, AccessStore, new_token
from arp.server.routing import GuessLimiter


def rotating(count: int) -> list[str]:
    """``count`` addresses of one /64, as a host that rotates its source address would use."""
    return [f"2001:db8:1:2:{i:x}:{i:x}:{i:x}:1" for i in range(1, count + 1)]


class RelayGuessRangeTests(unittest.TestCase):
    """The relay's limiter of unknown client ids."""

    def test_rotating_ipv6_addresses_share_one_limit(self):
        """Three misses from three addresses of one /64 block a fourth address of it; another /64,
        an IPv4 address and its IPv4-mapped IPv6 form are counted apart from it (and as one)."""
        clock = Clock()
        limiter = GuessLimiter(3, 60.0, clock)
        for address in rotating(3):
            self.assertFalse(limiter.blocked(address))
            limiter.miss(address)
        self.assertTrue(limiter.blocked("2001:db8:1:2:ffff::9"))
        self.assertFalse(limiter.blocked("2001:db8:1:3::1"))
        for _ in range(3):
            limiter.miss("10.0.0.1")
        self.assertTrue(limiter.blocked("::ffff:10.0.0.1"))
        clock.advance(61)
        self.assertFalse(limiter.blocked("2001:db8:1:2:ffff::9"))


class ArpcGuessRangeTests(unittest.TestCase):
    """arpc's limiter of invalid access tokens (the address is the relay's X-Forwarded-For entry)."""

    def test_rotating_ipv6_addresses_share_one_limit(self):
        """Past the limit from addresses of one /64, a new address of it gets 429, not another
        401; a valid token from that range still works."""
        data = Path(self.mktemp())
        data.mkdir(parents=True)
        clock = Clock()
        clock.advance(1_700_000_000.0)
        store = AccessStore(data, clock, guess_limit=5)
        for address in rotating(5):
            with self.assertRaises(AccessError) as refused:
                store.check(new_token()[1], address)
            self.assertEqual(refused.exception.status, 401)
        with self.assertRaises(AccessError) as refused:
            store.check(new_token()[1], "2001:db8:1:2:aaaa::1")
        self.assertEqual(refused.exception.status, 429)
        self.assertTrue(store.check(store.owner_token, "2001:db8:1:2:aaaa::1").owner)
