"""Unit tests of the per-client tunnel pool, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from arp.server.pool import PoolClosed, PoolTimeout, TunnelPool


class FakeTunnel:
    idle_since = 0.0

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class PoolTests(unittest.TestCase):
    """Hits, misses, refills, timeouts, caps and draining."""

    def setUp(self):
        self.clock = Clock()
        self.asked: list[int] = []
        self.pool = TunnelPool("c", 2, 4, 10.0, self.clock, self.asked.append)

    def fill(self, n):
        tunnels = [FakeTunnel() for _ in range(n)]
        for t in tunnels:
            self.assertTrue(self.pool.add(t))
        return tunnels

    def test_goes_online_asks_for_pool_size(self):
        """Coming online asks the client for pool-size tunnels, once."""
        self.pool.set_online(True)
        self.assertEqual(self.asked, [2])
        self.fill(2)
        self.assertEqual(self.asked, [2])

    def test_hit_is_synchronous_and_refills(self):
        """A hit fires at once and asks for a replacement."""
        self.pool.set_online(True)
        a, b = self.fill(2)
        d = self.pool.acquire()
        self.assertIs(self.successResultOf(d), b)  # most recently added first
        self.assertEqual(self.asked, [2, 1])
        self.assertEqual(self.pool.hits, 1)

    def test_miss_waits_then_gets_the_new_tunnel(self):
        """On a miss the request waits and gets the next tunnel that arrives."""
        self.pool.set_online(True)
        d = self.pool.acquire()
        self.assertNoResult(d)
        self.assertEqual(self.pool.misses, 1)
        t = FakeTunnel()
        self.pool.add(t)
        self.assertIs(self.successResultOf(d), t)

    def test_miss_times_out(self):
        """A waiting request fails with PoolTimeout after the wait timeout."""
        self.pool.set_online(True)
        d = self.pool.acquire()
        self.clock.advance(10.5)
        self.failureResultOf(d, PoolTimeout)
        self.assertEqual(self.pool.waiters.__len__(), 0)

    def test_release_returns_tunnel(self):
        """A released tunnel is reused by the next request."""
        self.pool.set_online(True)
        (t,) = self.fill(1)
        d = self.pool.acquire()
        self.assertIs(self.successResultOf(d), t)
        self.pool.release(t)
        self.assertIs(self.successResultOf(self.pool.acquire()), t)

    def test_cap(self):
        """No more than max_tunnels are held, nor asked for."""
        self.pool.set_online(True)
        self.fill(4)
        self.assertFalse(self.pool.add(FakeTunnel()))
        for _ in range(4):
            self.pool.acquire()
        self.pool.acquire()
        self.assertLessEqual(sum(self.asked), 4 + 2)

    def test_offline_drains(self):
        """Going offline closes idle tunnels and fails waiting requests."""
        self.pool.set_online(True)
        d = self.pool.acquire()
        self.pool.set_online(False)
        self.failureResultOf(d, PoolClosed)
        self.pool.set_online(True)
        tunnels = self.fill(2)
        self.pool.set_online(False)
        self.assertTrue(all(t.closed for t in tunnels))

    def test_reap_surplus_and_stale(self):
        """Surplus idle tunnels go after surplus_idle; all go after max_idle."""
        self.pool.set_online(True)
        tunnels = self.fill(4)
        self.clock.advance(31)
        self.assertEqual(self.pool.reap(600, 30), 2)
        self.assertEqual(len(self.pool.idle), 2)
        self.assertEqual(sum(t.closed for t in tunnels), 2)
        self.clock.advance(600)
        self.assertEqual(self.pool.reap(600, 30), 2)

    def test_forget_lost_tunnel(self):
        """A tunnel that closes leaves the pool and a replacement is asked for."""
        self.pool.set_online(True)
        a, b = self.fill(2)
        self.pool.forget(a)
        self.assertEqual(self.pool.idle, [b])
        self.assertEqual(self.asked[-1], 1)
