"""The arpc command line arps logs at every start, to paste on the private machine.

One log line that begins ``arpc command: ``, built from what arps really listens on: the
relay's host from ``--public-url`` (else the placeholder ``<relay-host>``), the control and
proxy ports (``--control-port``/``--proxy-port`` when they are not 17001/17002), ``tls:``
endpoints when those ports speak TLS, and the auth key, inline or read from the file arps keeps
it in.  Once ``<relay-host>`` and ``<local-port>`` are filled in, it runs as pasted.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.logger import Logger

from arp.mismatch import endpoint_is_tls

#: What stands for the relay's host name when arps does not know it (no ``--public-url``).
HOST_PLACEHOLDER = "<relay-host>"
#: What stands for the port of the service on the private machine.
LOCAL_PORT_PLACEHOLDER = "<local-port>"
#: arpc's default control and proxy ports (``--server-addr`` alone reaches them).
DEFAULT_PORTS = (17001, 17002)
#: Added after a TLS line: a certificate no public CA signed needs arpc to be told the CA.
TLS_HINT = (
    "# a certificate no public CA signed: add :trustRoots=DIR (a directory holding the CA's "
    ".pem) to both endpoints"
)


@dataclass(frozen=True)
class KeySource:
    """Where the pasted line gets the auth key: ``value`` inline, or ``path`` (a file holding only
    the key, read with ``cat``), or ``path`` and ``tenant`` (an ``--auth-keys`` file)."""

    value: str | None = None
    path: str | None = None
    tenant: str | None = None

    def argument(self) -> str:
        """The shell words after ``--auth-key``."""
        if self.value is not None:
            return shlex.quote(self.value)
        if self.tenant is not None:
            program = f'$1 == "{self.tenant}" {{ print $2 }}'
            return f'"$(awk {shlex.quote(program)} {shlex.quote(self.path)})"'
        return f'"$(cat {shlex.quote(self.path)})"'


def _endpoint_host(host: str) -> str:
    return host.replace(":", "\\:")  # an IPv6 address inside an endpoint string


def arpc_command(
    host: str | None, control_port: int, proxy_port: int, control_tls: bool, proxy_tls: bool, key: KeySource
) -> str:
    """The ``twistd -n arpc ...`` line that registers with this relay (see the module's docstring)."""
    server = host or HOST_PLACEHOLDER
    words = ["twistd", "-n", "arpc"]
    if control_tls or proxy_tls:
        for name, port, tls in (("control", control_port, control_tls), ("proxy", proxy_port, proxy_tls)):
            kind = "tls" if tls else "tcp"
            words += [f"--{name}-endpoint", f"{kind}:{_endpoint_host(server)}:{port}"]
    else:
        words += ["--server-addr", server]
        if (control_port, proxy_port) != DEFAULT_PORTS:
            words += ["--control-port", str(control_port), "--proxy-port", str(proxy_port)]
    line = " ".join(shlex.quote(word) if host else word for word in words)  # <relay-host> unquoted
    line += f" --auth-key {key.argument()} --local-port {LOCAL_PORT_PLACEHOLDER}"
    if control_tls or proxy_tls:
        line += "  " + TLS_HINT
    return line


class ArpcLine(Service):
    """Logs :func:`arpc_command` once arps listens (after its Listeners in the service tree, so
    the ports are the bound ones, also for ``tcp:0``)."""

    log = Logger()

    def __init__(
        self,
        host: str | None,
        control: tuple[str, Callable[[], object]],
        proxy: tuple[str, Callable[[], object]],
        key: KeySource,
    ) -> None:
        self.host = host
        self.control = control  # (endpoint string, the listening port or None)
        self.proxy = proxy
        self.key = key

    @staticmethod
    def _port(listening: object) -> int | None:
        address = getattr(listening, "getHost", lambda: None)()
        return getattr(address, "port", None)

    def startService(self) -> None:
        super().startService()
        control, proxy = self._port(self.control[1]()), self._port(self.proxy[1]())
        if control is None or proxy is None:  # UNIX sockets, systemd: no port to tell arpc
            self.log.info("arpc command: (the control or proxy port is not a TCP port; give arpc endpoints)")
            return
        line = arpc_command(
            self.host,
            control,
            proxy,
            bool(endpoint_is_tls(self.control[0])),
            bool(endpoint_is_tls(self.proxy[0])),
            self.key,
        )
        self.log.info("arpc command: {line}", line=line)
