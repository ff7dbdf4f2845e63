"""Per-client pools of warm tunnels (the ``ProxyPool``).

A tunnel is a connection arpc opened to the proxy port ahead of need.  A
request takes one from the pool (a *hit*: no extra round trip) or, with the
pool empty (a *miss*), waits a bounded time for one the client is asked to
open.  After a complete HTTP exchange the tunnel comes back for the next
request.  The pool asks the client for replacements over the control channel
so that ``size`` tunnels stay idle, never holding more than ``max_tunnels``.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class PoolTimeout(Exception):
    """No tunnel became available in time."""


class PoolClosed(Exception):
    """The client went offline while a request waited for a tunnel."""


class PoolTunnel(Protocol):
    """What the pool needs of a tunnel."""

    idle_since: float

    def close(self) -> None: ...


class TunnelPool:
    """Idle tunnels, waiting requests and outstanding tunnel requests for one client."""

    log = Logger()

    def __init__(
        self,
        client_id: str,
        size: int,
        max_tunnels: int,
        wait_timeout: float,
        clock: IReactorTime,
        request_tunnels: callable,  # type: ignore[valid-type]
    ) -> None:
        self.client_id = client_id
        self.size = size
        self.max_tunnels = max_tunnels
        self.wait_timeout = wait_timeout
        self.clock = clock
        self.request_tunnels = request_tunnels
        self.idle: list[PoolTunnel] = []  # LIFO: the most recently used goes out first
        self.busy: set[PoolTunnel] = set()
        self.waiters: deque[Deferred] = deque()
        self.pending: deque[float] = deque()  # deadlines of tunnels asked for, not yet arrived
        self.hits = 0
        self.misses = 0
        self.timeouts = 0
        self.waits = 0
        self.wait_seconds = 0.0
        self.opened = 0
        self.online = False

    # -- the request side
    def take(self) -> PoolTunnel | None:
        """An idle tunnel now (a hit), or None."""
        if not self.idle:
            return None
        tunnel = self.idle.pop()
        self.busy.add(tunnel)
        self.hits += 1
        self._top_up()
        return tunnel

    def acquire(self) -> Deferred:
        """A Deferred that fires with a tunnel, at once on a hit."""
        tunnel = self.take()
        if tunnel is not None:
            d: Deferred = Deferred()
            d.callback(tunnel)
            return d
        return self.wait()

    def wait(self) -> Deferred:
        """A miss: ask the client for a tunnel and wait for one, at most ``wait_timeout``."""
        self.misses += 1

        def cancel(d: Deferred) -> None:
            if d in self.waiters:
                self.waiters.remove(d)

        d = Deferred(cancel)
        d.started = self.clock.seconds()  # type: ignore[attr-defined]
        self.waiters.append(d)
        self._top_up()

        def timed_out(failure: object, timeout: float) -> None:
            self.timeouts += 1
            raise PoolTimeout(f"no tunnel from client within {timeout:g}s")

        d.addTimeout(self.wait_timeout, self.clock, onTimeoutCancel=timed_out)
        return d

    def release(self, tunnel: PoolTunnel) -> None:
        """Give back a tunnel whose exchange ended cleanly."""
        self.busy.discard(tunnel)
        if not self.online:
            tunnel.close()
            return
        self._offer(tunnel)

    def forget(self, tunnel: PoolTunnel) -> None:
        """A tunnel was closed or taken for good (raw TCP splice): stop counting it."""
        if tunnel in self.busy:
            self.busy.discard(tunnel)
        elif tunnel in self.idle:
            self.idle.remove(tunnel)
        else:
            return
        self._top_up()

    # -- the client side
    def add(self, tunnel: PoolTunnel) -> bool:
        """A new tunnel arrived from the client.  False if it is over the cap."""
        if self.pending:
            self.pending.popleft()
        if not self.online or self.total >= self.max_tunnels:
            return False
        self.opened += 1
        self._offer(tunnel)
        return True

    def _offer(self, tunnel: PoolTunnel) -> None:
        while self.waiters:
            d = self.waiters.popleft()
            if not d.called:
                self.busy.add(tunnel)
                self.waits += 1
                self.wait_seconds += self.clock.seconds() - d.started
                d.callback(tunnel)
                return
        tunnel.idle_since = self.clock.seconds()
        self.idle.append(tunnel)

    @property
    def total(self) -> int:
        """Tunnels open now (idle and busy)."""
        return len(self.idle) + len(self.busy)

    def _top_up(self) -> None:
        if not self.online or len(self.idle) >= self.size + len(self.waiters):
            return  # enough idle tunnels whatever is pending: the common case, kept cheap
        now = self.clock.seconds()
        while self.pending and self.pending[0] < now:
            self.pending.popleft()
        want = self.size + len(self.waiters) - len(self.idle) - len(self.pending)
        room = self.max_tunnels - self.total - len(self.pending)
        count = min(want, room)
        if count > 0:
            deadline = now + self.wait_timeout
            self.pending.extend([deadline] * count)
            self.request_tunnels(count)

    def set_online(self, online: bool) -> None:
        """The client's control channel came up (refill) or went down (drain)."""
        self.online = online
        self.pending.clear()
        if online:
            self._top_up()
            return
        idle, self.idle = self.idle, []
        for tunnel in idle:
            tunnel.close()
        while self.waiters:
            d = self.waiters.popleft()
            if not d.called:
                d.errback(PoolClosed("client went offline"))

    def reap(self, max_idle: float, surplus_idle: float) -> int:
        """Close idle tunnels past their age; return how many were closed."""
        now = self.clock.seconds()
        keep: list[PoolTunnel] = []
        closed: list[PoolTunnel] = []
        # idle[-1] is the freshest; walk from the freshest so the first `size` stay.
        for tunnel in reversed(self.idle):
            age = now - tunnel.idle_since
            if age > max_idle or (len(keep) >= self.size and age > surplus_idle):
                closed.append(tunnel)
            else:
                keep.append(tunnel)
        if closed:
            self.idle = list(reversed(keep))
            for tunnel in closed:
                tunnel.close()
            self._top_up()
        return len(closed)

    def snapshot(self) -> dict:
        """Pool state for the admin API."""
        return {
            "idle": len(self.idle),
            "busy": len(self.busy),
            "pending": len(self.pending),
            "waiting": len(self.waiters),
            "hits": self.hits,
            "misses": self.misses,
            "timeouts": self.timeouts,
            "opened": self.opened,
        }


__all__ = ["TunnelPool", "PoolTimeout", "PoolClosed"]
