"""Connection budgets for the public side: descriptors are a shared, finite resource.

Every open connection holds a file descriptor, and arps has one table of them for its public
port, the clients' own ports, the control port and the proxy port.  Without a cap, one host
that opens (and keeps) twenty thousand idle connections takes the relay to its limit: no
browser is answered and no arpc can register or open a tunnel.  So connections to the public
port and the clients' own ports count against:

- a global cap, which leaves a reserve of descriptors for control and proxy connections
  (the tunnels that carry the traffic, and the registrations that bring clients back), and
- a per-source cap (an IPv6 address counts as its /64, as for the guess limit), a fraction of
  the global one, so that one host cannot take the whole budget from the others.

A connection over a cap is accepted and closed at once: the listener keeps accepting (a full
listen queue would refuse everyone alike), and the refused peer costs no buffer and no timer.
Defaults come from the process's descriptor limit (:func:`default_caps`), whose soft value arps
raises to the hard one at start (:func:`raise_descriptor_limit`).
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from arp import wire

#: Share of the descriptor limit kept for control and proxy connections, log files, listeners.
RESERVE_SHARE = 4  # a quarter
#: Least number of descriptors kept in reserve, however low the limit.
MIN_RESERVE = 64
#: One source may hold at most this share of the global cap.
PER_SOURCE_SHARE = 4  # a quarter
#: Refusals are logged at most once per source and this many seconds.
LOG_INTERVAL = 60.0
#: Sources whose last log time is remembered (oldest forgotten first).
MAX_LOGGED_SOURCES = 4096


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_caps(limit: int) -> tuple[int, int]:
    """(global cap, per-source cap) of public connections under a descriptor ``limit``."""
    reserve = max(MIN_RESERVE, limit // RESERVE_SHARE)
    total = max(1, limit - reserve)
    return total, max(1, total // PER_SOURCE_SHARE)


class Refused(Protocol):
    """The protocol of a connection over its budget: closed as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class ConnectionBudget:
    """Counts public connections, in all and per source, and says whether another may open."""

    log = Logger()

    def __init__(self, total: int, per_source: int, clock: object) -> None:
        self.total = total
        self.per_source = per_source
        self.clock = clock
        self.open = 0
        self.by_source: dict[str, int] = {}
        self.refused = 0
        self._logged: dict[str, float] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``: the key to :meth:`release` it with, or None
        if it is over a cap (then it must be closed at once)."""
        key = wire.source_range(address)
        held = self.by_source.get(key, 0)
        if self.open >= self.total or held >= self.per_source:
            self.refused += 1
            self._log_refusal(key, held)
            return None
        self.open += 1
        self.by_source[key] = held + 1
        return key

    def release(self, key: str) -> None:
        """A connection counted under ``key`` closed."""
        self.open -= 1
        held = self.by_source.get(key, 0) - 1
        if held > 0:
            self.by_source[key] = held
        else:
            self.by_source.pop(key, None)

    def _log_refusal(self, key: str, held: int) -> None:
        now = self.clock.seconds()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            return
        self._logged[key] = now
        while len(self._logged) > MAX_LOGGED_SOURCES:
            self._logged.pop(next(iter(self._logged)))
        if held >= self.per_source:
            self.log.warn(
                "{source} holds {held} public connections (its limit, --max-connections-per-address): "
                "closing its new ones",
                source=key,
                held=held,
            )
        else:
            self.log.warn(
                "{open} public connections open (the limit, --max-connections): closing new ones "
                "(descriptors are kept for the control and proxy ports)",
                open=self.open,
            )
