"""Keep arps and arpc small: no TLS stack when no endpoint uses TLS, no heap kept from start-up.

Twisted's endpoint and TCP modules import pyOpenSSL (and with it
``cryptography``) whenever it is installed, which costs arps and arpc about
12 MB of memory each even when every endpoint is plain TCP.  When twistd runs
``arps`` or ``arpc`` and no argument names a TLS endpoint (``ssl:``, ``tls:``,
``le:``), we mark pyOpenSSL as unavailable before anything imports it; Twisted
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
