"""Option coercers and helpers shared by the arps and arpc command lines."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.python import usage


def positive_int(value: str) -> int:
    """Coerce a command-line value to an integer >= 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def count_or_zero(value: str) -> int:
    """Coerce a command-line value to an integer >= 0 (0: no limit)."""
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 (no limit) or a positive integer")
    return number


def port_number(value: str) -> int:
    """Coerce a command-line value to a TCP port (0 lets the system choose)."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return number


def seconds(value: str) -> float:
    """Coerce a command-line value to a non-negative number of seconds."""
    number = float(value)
    if number < 0:
        raise ValueError("must be a non-negative number of seconds")
    return number


def port_range(value: str) -> tuple[int, int]:
    """Coerce ``FIRST-LAST`` (or a single port) to a pair of ports."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", value.strip())
    if not match:
        raise ValueError("must be a port range like 20000-20100")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise ValueError("must be a port range like 20000-20100 within 1-65535")
    return first, last


def port_range_or_none(value: str) -> tuple[int, int] | None:
    """Coerce ``FIRST-LAST`` to a pair of ports, or ``none``/``off`` to None."""
    if value.strip().lower() in ("none", "off", ""):
        return None
    return port_range(value)


def env_default(name: str, default: str | None = None) -> str | None:
    """The value of environment variable ``name``, if set and not empty."""
    value = os.environ.get(name)
    return value if value else default


LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def log_level(value: str) -> str:
    """Coerce a log level name."""
    value = value.lower()
    if value == "warning":
        value = "warn"
    if value not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return value


def env_log_level() -> str:
    """The log level from ``ARP_LOG_LEVEL`` (default info); a usage error if it is not one."""
    value = env_default("ARP_LOG_LEVEL", "info")
    try:
        return log_level(value)
    except ValueError as e:
        raise usage.UsageError(f"ARP_LOG_LEVEL {value!r}: {e}") from e


# Twisted namespaces whose info events are routine at ARP's scale; shown with --log-level debug.
QUIET_NAMESPACES = (
    "twisted.protocols.amp",  # AMP announces every connection
    "twisted.web.http.HTTPChannel",  # "Timing out client" for every idle keep-alive connection
)


def log_predicate(level: str) -> Any:
    """The filter predicate for ``level``: events below it are dropped, and below ``warn`` for
    the chatty Twisted namespaces in :data:`QUIET_NAMESPACES` unless the level is ``debug``."""
    from twisted.logger import LogLevel, LogLevelFilterPredicate

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    if level != "debug":
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, max(LogLevel.warn, LogLevel.levelWithName(level)))
    return predicate


def install_log_level(level: str) -> None:
    """Drop log events below ``level`` from the global log publisher."""
    from twisted.logger import FilteringLogObserver, globalLogPublisher

    from arp.twisted_private import log_observers

    predicate = log_predicate(level)
    observers = log_observers(globalLogPublisher)
    for observer in observers:
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))


# -- where a server endpoint string listens -------------------------------------------------


@dataclass(frozen=True)
class ListenAddress:
    """Where a server endpoint listens, as Twisted will bind it."""

    family: str  # "INET" (TCP or TLS, IPv4 or IPv6) or "UNIX"
    host: str  # the interface ("" is every interface) or the socket's path
    port: int | None


class _ListenRecorder:
    """Takes the place of the reactor: records the listen call an endpoint makes, binds nothing."""

    def __init__(self) -> None:
        self.address: ListenAddress | None = None

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:
        self.address = ListenAddress("INET", interface, port)

    def listenSSL(
        self, port: int, factory: object, contextFactory: object, backlog: int = 50, interface: str = ""
    ) -> None:
        self.address = ListenAddress("INET", interface, port)

    def listenUNIX(
        self, address: str, factory: object, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> None:
        self.address = ListenAddress("UNIX", address, None)


def listen_address(description: str) -> ListenAddress | None:
    """Where the server endpoint string ``description`` listens, read by Twisted's own parser.

    The string goes through :func:`twisted.internet.endpoints.serverFromString`, exactly as
    arps and arpc use it, and the endpoint's ``listen`` is run against a recorder instead of
    the reactor; so repeated keys, escapes and defaults mean what they mean to Twisted (the
    last ``interface=`` wins).  None for endpoint kinds whose address cannot be known from the
    string (``systemd:``, ``stdio:``, plugins such as ``onion:``).  ``ValueError`` if Twisted
    cannot parse it.
    """
    from twisted.internet import endpoints
    from twisted.internet.protocol import Factory

    recorder = _ListenRecorder()
    try:
        endpoint = endpoints.serverFromString(recorder, description)
    except Exception as e:  # the parsers raise ValueError, TypeError, KeyError, OSError ...
        raise ValueError(f"{description!r} is not a server endpoint Twisted can listen on: {e}") from e
    known = (
        endpoints.TCP4ServerEndpoint,
        endpoints.TCP6ServerEndpoint,
        endpoints.SSL4ServerEndpoint,
        endpoints.UNIXServerEndpoint,
    )
    if not isinstance(endpoint, known):
        return None
    endpoint.listen(Factory())  # synchronous: the recorder returns at once
    return recorder.address


def _loopback_ip(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback(description: str) -> bool:
    """Whether the server endpoint string ``description`` is reachable from this host only.

    A UNIX socket is; a TCP or TLS port is when the interface Twisted binds resolves, the way
    ``bind`` resolves it (IPv6 for an IPv6 literal, else IPv4), to loopback addresses only.
    Every interface (no ``interface=``, ``0.0.0.0``, ``::``) and unknown endpoint kinds are
    not.  ``ValueError`` for a string Twisted cannot parse.
    """
    address = listen_address(description)
    if address is None:
        return False
    if address.family == "UNIX":
        return True
    from twisted.internet.abstract import isIPv6Address

    host = address.host
    if not host:
        return False
    try:
        return _loopback_ip(host)  # an address literal: no lookup
    except ValueError:
        pass
    family = socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET  # as twisted.internet.tcp.Port
    try:
        found = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False  # bind would fail as well
    return bool(found) and all(_loopback_ip(info[4][0]) for info in found)


def require_extra(module: str, option: str, extra: str) -> None:
    """Exit with one line naming the extra to install if ``module`` (which ``option`` needs) is
    missing: ``--redis needs the [redis] extra: pip install 'arp-relay[redis]'``."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
        found = False
    if not found:
        raise SystemExit(f"{option} needs the [{extra}] extra: pip install 'arp-relay[{extra}]'")


# -- the command lines under twistd ---------------------------------------------------------


def arp_version() -> str:
    """ARP's version, from the installed package's metadata (the source tree's if not installed)."""
    from importlib import metadata

    try:
        return metadata.version("arp-relay")
    except metadata.PackageNotFoundError:
        from arp import __version__

        return __version__


def _named(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """``coerce`` whose errors name the option they are about."""

    def named(value: str) -> Any:
        try:
            return coerce(value)
        except ValueError as e:
            raise ValueError(f"--{name} {value!r}: {e}") from e

    named.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return named


_TYPE_ENFORCEMENT = "Parameter type enforcement failed: "  # what twisted.python.usage puts first


class TwistdOptions(usage.Options):
    """What arps' and arpc's command lines share under ``twistd``.

    - ``--version`` shows ARP's version (Twisted's own says Twisted's);
    - a usage error prints that error and a one-line hint, not the whole help that twistd
      prints by default (``twistd arps --help`` still shows it);
    - the pid file is ``<command>.pid`` unless ``--pidfile`` names one, so arps and arpc
      started from one directory do not both claim twistd's ``twistd.pid``.
    Outside twistd (no parent options) usage errors are raised as usual.
    """

    command = "arp"
    TWISTD_PIDFILE = "twistd.pid"  # twistd's default --pidfile

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = []
        for param in cls.__dict__.get("optParameters", []):
            if len(param) > 4 and param[4] is not None:
                param = [*param[:4], _named(param[0], param[4]), *param[5:]]
            params.append(param)
        if "optParameters" in cls.__dict__:
            cls.optParameters = params

    def opt_version(self) -> None:
        """Display ARP's version and exit."""
        import twisted

        print(f"{self.command} (ARP) {arp_version()}, Twisted {twisted.__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            message = str(e)
            if message.startswith(_TYPE_ENFORCEMENT):
                message = message[len(_TYPE_ENFORCEMENT) :]
            message += did_you_mean(message, self.longOpt)
            sys.stderr.write(
                f"twistd {self.command}: {message}\nTry 'twistd {self.command} --help' for the options.\n"
            )
            sys.exit(1)
        self._default_pidfile()

    def _default_pidfile(self) -> None:
        parent = self.parent
        if parent is not None and parent.get("pidfile") == self.TWISTD_PIDFILE:
            parent["pidfile"] = f"{self.command}.pid"
        if parent is not None and parent.get("pidfile"):
            running = pidfile_owner(parent["pidfile"])
            if running is not None:
                sys.stderr.write(pidfile_message(self.command, os.path.abspath(parent["pidfile"]), running))
                sys.exit(1)


_UNKNOWN_OPTION = re.compile(r"^option (--[\w-]+) not recognized$")


def did_you_mean(message: str, long_options: list[str]) -> str:
    """`` (did you mean --NAME?)`` when ``message`` is getopt's "option --X not recognized" and
    a known long option is close to X (``--server-adr``: ``--server-addr``); else ``""``."""
    import difflib

    match = _UNKNOWN_OPTION.match(message)
    if not match:
        return ""
    names = [name.rstrip("=") for name in long_options]
    typed = match.group(1)[2:].split("=", 1)[0]
    close = difflib.get_close_matches(typed, names, n=1, cutoff=0.75)
    return f" (did you mean --{close[0]}?)" if close else ""


def pidfile_owner(path: str) -> int | None:
    """The pid in the pid file ``path`` if that process is alive (twistd would refuse to start)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None  # no file, or twistd's own message about its contents
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale: twistd removes it
    except OSError:
        return pid  # alive, another user's
    return pid


def pidfile_message(command: str, path: str, pid: int) -> str:
    """What a second ``twistd <command>`` with the same pid file says, and what to do."""
    return (
        f"twistd {command}: another process (pid {pid}) holds the pid file {path}: a {command} "
        "already runs from this directory.  Stop it, start this one from another directory, or give "
        f"this one its own pid file before the plugin name: twistd -n --pidfile {command}-2.pid "
        f"{command} ... (--pidfile= for none; then give it other ports too).\n"
    )
