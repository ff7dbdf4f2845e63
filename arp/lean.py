"""Keep arps and arpc small: no TLS stack when no endpoint uses TLS, no heap kept from start-up.

Twisted's endpoint and TCP modules import pyOpenSSL (and with it
``cryptography``) whenever it is installed, which costs arps and arpc about
12 MB of memory each even when every endpoint is plain TCP.  When twistd runs
``arps`` or ``arpc`` and no argument names a TLS endpoint (``ssl:``, ``tls:``,
``le:``) and arpc is not in command mode (whose Web Push and webhooks go to https
services), we mark pyOpenSSL as unavailable before anything imports it; Twisted
then runs without TLS support, which nothing in that process needs.
"""

from __future__ import annotations

import os
import sys

_TLS_MARKERS = ("ssl:", "tls:", "le:", "lets:")


def skip_tls_if_unused(argv: list[str] | None = None) -> bool:
    """Block ``import OpenSSL`` for this twistd process if no argument uses TLS; True if blocked."""
    argv = sys.argv if argv is None else argv
    if "OpenSSL" in sys.modules or "twisted.scripts.twistd" not in sys.modules:
        return False  # already loaded, or not a twistd run (tests import our modules too)
    if any(marker in arg for arg in argv for marker in _TLS_MARKERS):
        return False
    if "--command-mode" in argv:
        return False  # Web Push and --notify reach https services (arp/client/command/push.py)
    if any(arg.startswith("--redis") for arg in argv) or os.environ.get("ARP_REDIS"):
        return False  # txredisapi imports twisted.internet.ssl whether TLS is used or not
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    return True


def release_startup_memory() -> bool:
    """Hand the heap that start-up freed back to the OS (glibc only); True if it could.

    Importing and compiling leave freed blocks at the top of the C heap that
    glibc keeps for later; ``malloc_trim`` returns them, about 1 MB of RSS for
    arps and arpc.  Called once, when the reactor is running.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (ImportError, OSError, AttributeError):
        return False  # not glibc (macOS, musl, Windows): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm`` (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryTrimmer:
    """Gives memory back after a flood: every ``interval`` s, if RSS is more than ``slack``
    bytes over the lowest it has been seen at, collect cycles and trim the C heap.

    A flood of connections (thousands of partial heads, see SECURITY.rst) leaves freed buffers
    in the heap that glibc keeps for later: RSS stayed hundreds of MB up after the flood had
    ended.  ``malloc_trim`` hands free pages back to the OS (also from the middle of the heap);
    it costs a few milliseconds, and runs only when RSS is up.
    """

    def __init__(self, clock: object, interval: float = 20.0, slack: int = 8 * 1024 * 1024) -> None:
        from twisted.internet.task import LoopingCall

        self.interval = interval
        self.slack = slack
        self.floor = 0  # the lowest RSS seen at a check (the idle relay's)
        self.trims = 0
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        rss = rss_bytes()
        if not rss:
            return
        if not self.floor or rss < self.floor:
            self.floor = rss
            return
        if rss - self.floor > self.slack:
            import gc

            gc.collect()
            if release_startup_memory():
                self.trims += 1
            after = rss_bytes()
            if after - self.floor > self.slack:  # memory in use (more clients): not a flood's leftovers
                self.floor = after
