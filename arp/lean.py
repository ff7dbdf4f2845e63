"""Leave the TLS stack unloaded in a twistd process that has no TLS endpoint.

Twisted's endpoint and TCP modules import pyOpenSSL (and with it
``cryptography``) whenever it is installed, which costs arps and arpc about
12 MB of memory each even when every endpoint is plain TCP.  When twistd runs
``arps`` or ``arpc`` and no argument names a TLS endpoint (``ssl:``, ``tls:``,
``le:``), we mark pyOpenSSL as unavailable before anything imports it; Twisted
then runs without TLS support, which nothing in that process needs.
"""

from __future__ import annotations

import sys

_TLS_MARKERS = ("ssl:", "tls:", "le:", "lets:")


def skip_tls_if_unused(argv: list[str] | None = None) -> bool:
    """Block ``import OpenSSL`` for this twistd process if no argument uses TLS; True if blocked."""
    argv = sys.argv if argv is None else argv
    if "OpenSSL" in sys.modules or "twisted.scripts.twistd" not in sys.modules:
        return False  # already loaded, or not a twistd run (tests import our modules too)
    if any(marker in arg for arg in argv for marker in _TLS_MARKERS):
        return False
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    return True
