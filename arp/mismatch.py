"""Plain TCP where TLS is expected, and the reverse, said in words.

arps's control and proxy ports each listen with plain TCP (``tcp:``) or TLS
(``ssl:``), and arpc is told ``tcp:`` or ``tls:`` for each.  When the two
disagree, nothing on the wire says so: a TLS ClientHello reads as the start of
a huge AMP box or a bad tunnel header, plain bytes fail the TLS handshake with
"wrong version number", and both ends just see a connection close.  Here each
case becomes one log line that names the port, its role and what to change:

- arps, plain port, a TLS ClientHello (:func:`looks_like_tls`) and arps, TLS
  port, a handshake failed on plain bytes (:func:`plain_on_tls`): logged by
  :class:`MismatchLog`, at most once per port and source address a minute;
- arpc, a control connection that closed before the relay answered anything
  (:func:`registration_hint`): "the relay may expect TLS on HOST:PORT";
- arpc, a relay whose proxy port does not use the transport arpc was told
  (:func:`proxy_mismatch`): arps says in its Register answer whether its ports
  use TLS (optional arguments, which older peers ignore), and arpc refuses to
  run with a proxy endpoint every tunnel would fail on.
"""

from __future__ import annotations

import sys

from twisted.internet.error import ConnectionAborted, ConnectionClosed
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from arp import wire
from arp.listen import endpoint_arguments

#: Endpoint kinds that speak TLS (client ``tls:``, ``ssl:``; server ``ssl:``, txacme's ``le:``),
#: and kinds that do not.  Any other kind (``systemd:``, plugins) is not judged.
TLS_KINDS = frozenset({"tls", "ssl", "le", "lets"})
PLAIN_KINDS = frozenset({"tcp", "tcp6", "unix"})

#: What OpenSSL says when a TLS server's first record is not TLS at all (a plain AMP box or tunnel
#: header: "wrong version number"; an HTTP request: "http request").
_NOT_TLS_REASONS = frozenset(
    {
        "wrong version number",
        "http request",
        "https proxy request",
        "unknown protocol",
        "packet length too long",
    }
)


def endpoint_is_tls(description: str) -> bool | None:
    """Whether the endpoint string ``description`` speaks TLS; None when its kind does not say."""
    kind = endpoint_arguments(description)[0]
    if kind in TLS_KINDS:
        return True
    if kind in PLAIN_KINDS:
        return False
    return None


def endpoint_address(description: str) -> str | None:
    """``host:port`` of a client endpoint string (``tcp:``, ``tls:``, ``ssl:``), else None."""
    kind, positional, keywords = endpoint_arguments(description)
    if kind not in ("tcp", "tcp6", "tls", "ssl"):
        return None
    positional = positional + [None, None]
    host = keywords.get("host", positional[0])
    port = keywords.get("port", positional[1 if "host" not in keywords else 0])
    if not host or not port:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_text(address: object) -> str:
    """``host:port`` of a Twisted address (``[host]:port`` for IPv6)."""
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def looks_like_tls(data: bytes) -> bool:
    """Whether the first bytes of a connection are a TLS handshake record (0x16, then 0x03).

    Never the start of anything arpc sends in the clear: an AMP box starts with
    a key length below 256 (a zero byte), a tunnel header with a letter.
    """
    return data[:1] == b"\x16" and data[1:2] in (b"", b"\x03")


def plain_on_tls(reason: Failure) -> bool:
    """Whether a TLS connection ended because the peer sent something that is not TLS."""
    ssl = sys.modules.get("OpenSSL.SSL")  # loaded whenever a TLS port exists; else not TLS
    if ssl is None or not isinstance(reason.value, ssl.Error):
        return False
    queue = reason.value.args[0] if reason.value.args and isinstance(reason.value.args[0], list) else []
    return any(isinstance(entry, tuple) and entry and entry[-1] in _NOT_TLS_REASONS for entry in queue)


class MismatchLog:
    """Logs transport mismatches on arps's ports, each as one line.

    At most one line per port and source address (an IPv6 /64 counts as one)
    per ``interval`` seconds, and at most ``most`` lines per interval in all
    (then one line says the rest are not logged): whoever sends the wrong bytes
    cannot fill the relay's log.  It keeps at most ``most`` addresses.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = 60.0, most: int = 20) -> None:
        self.clock = clock
        self.interval = interval
        self.most = most
        self._window = float("-inf")  # when the current interval began
        self._count = 0  # lines logged in it
        self._logged: set[tuple[str, str]] = set()  # (role, source) logged in it

    def _may_log(self, role: str, transport: ITransport) -> bool:
        now = self.clock.seconds()
        if now - self._window >= self.interval:
            self._window, self._count = now, 0
            self._logged.clear()
        key = (role, wire.source_range(str(getattr(transport.getPeer(), "host", ""))))
        if key in self._logged:
            return False
        self._count += 1
        if self._count > self.most:
            if self._count == self.most + 1:
                self.log.warn(
                    "more than {most} transport mismatches within {interval:g}s: not logging more "
                    "of them for now",
                    most=self.most,
                    interval=self.interval,
                )
            return False
        self._logged.add(key)
        return True

    def tls_on_plain(self, role: str, transport: ITransport) -> None:
        """A TLS handshake arrived on the plain ``role`` port (control or proxy)."""
        if not self._may_log(role, transport):
            return
        address = address_text(transport.getHost())
        self.log.warn(
            "{role} port {address} is plain TCP but got a TLS handshake from {peer}: arpc uses tls: "
            "here; start arpc with --{role}-endpoint tcp:{address} or give arps ssl: for this port",
            role=role,
            address=address,
            peer=address_text(transport.getPeer()),
        )

    def noise(self, role: str, transport: ITransport, what: str) -> None:
        """A connection to the ``role`` port that never registered sent something invalid, timed
        out or was refused: one line (no traceback), within the same limits as the mismatches,
        so that connections which send nothing valid cannot fill the relay's log."""
        if not self._may_log(role + " noise", transport):
            return
        self.log.info(
            "{role} connection from {peer}: {what} (logged once a minute per address)",
            role=role,
            peer=address_text(transport.getPeer()),
            what=what,
        )

    def lost(self, role: str, transport: ITransport, here: object, reason: Failure) -> None:
        """A TLS connection to the ``role`` port at address ``here`` closed before it sent anything
        of ARP's: if its handshake failed on plain bytes, say so.  (``here`` is taken while the
        connection is open: a closed TLS transport cannot tell it.)"""
        if not plain_on_tls(reason) or not self._may_log(role, transport):
            return
        address = address_text(here)
        self.log.warn(
            "{role} port {address} expects TLS but got plain TCP from {peer}: arpc uses tcp: here; "
            "start arpc with --{role}-endpoint tls:{address} or give arps tcp: for this port",
            role=role,
            address=address,
            peer=address_text(transport.getPeer()),
        )


def registration_hint(
    failure: BaseException, control: str, tls_used: bool, handshake_done: bool
) -> str | None:
    """arpc: why a control connection to ``control`` (an endpoint string) may have closed before
    the relay answered anything, if the transports may not match; else None.

    A TLS relay closes a plain connection cleanly without a word; a plain relay
    (of this version) aborts a TLS handshake at once.  A connection arpc itself
    aborted (the relay stayed silent) says nothing about TLS.
    """
    from twisted.protocols.amp import TooLong

    # a TLS relay either closes a plain connection or answers it with a TLS alert, which AMP
    # reads as a box of an impossible length
    garbled = isinstance(failure, TooLong) and not tls_used
    if not garbled and (not isinstance(failure, ConnectionClosed) or isinstance(failure, ConnectionAborted)):
        return None
    where = endpoint_address(control) or "the relay's control port"
    if tls_used and not handshake_done:
        return (
            f"the control connection closed during the TLS handshake: the relay may not use TLS on "
            f"{where}: use tcp:{where}"
        )
    if not tls_used:
        return (
            f"the control connection closed before the relay answered: the relay may expect TLS on "
            f"{where}: use tls:{where}"
        )
    return None


def proxy_mismatch(
    proxy: str, proxy_tls: bool | None, relay_control_tls: bool | None, control_tls: bool
) -> str | None:
    """arpc: what is wrong when the relay's proxy port does not use the transport of ``proxy``
    (arpc's ``--proxy-endpoint``), or None when it does (or when it cannot be told).

    ``proxy_tls`` and ``relay_control_tls`` are what the relay said of its ports
    (None from a relay that does not say), ``control_tls`` whether arpc's own
    control connection uses TLS.  When the two ends disagree about the control
    connection, something in between changes it (a TLS-terminating proxy), and
    it may do the same for tunnels: not judged.
    """
    told = endpoint_is_tls(proxy)
    if proxy_tls is None or relay_control_tls is None or told is None:
        return None
    if relay_control_tls != control_tls or told == proxy_tls:
        return None
    where = endpoint_address(proxy) or "(its address)"
    kind = endpoint_arguments(proxy)[0]
    if proxy_tls:
        return (
            f"proxy port {where} uses TLS but arpc was told {kind}: (--proxy-endpoint): every tunnel "
            f"would fail; start arpc with --proxy-endpoint tls:{where}, or give arps a tcp: "
            "--proxy-endpoint"
        )
    return (
        f"proxy port {where} is plain TCP but arpc was told {kind}: (--proxy-endpoint): every tunnel "
        f"would fail; start arpc with --proxy-endpoint tcp:{where}, or give arps an ssl: "
        "--proxy-endpoint"
    )
