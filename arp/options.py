"""Option coercers and helpers shared by the arps and arpc command lines."""

from __future__ import annotations

import os
import re


def positive_int(value: str) -> int:
    """Coerce a command-line value to an integer >= 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


positive_int.coerceDoc = "A positive integer."  # type: ignore[attr-defined]


def port_number(value: str) -> int:
    """Coerce a command-line value to a TCP port (0 lets the system choose)."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return number


port_number.coerceDoc = "A TCP port number."  # type: ignore[attr-defined]


def seconds(value: str) -> float:
    """Coerce a command-line value to a non-negative number of seconds."""
    number = float(value)
    if number < 0:
        raise ValueError("must be a non-negative number of seconds")
    return number


seconds.coerceDoc = "Seconds."  # type: ignore[attr-defined]


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


def install_log_level(level: str) -> None:
    """Drop log events below ``level`` from the global log publisher."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogPublisher,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    if level != "debug":  # AMP announces every connection at info level
        predicate.setLogLevelForNamespace("twisted.protocols.amp", LogLevel.warn)
    observers = list(globalLogPublisher._observers)  # noqa: SLF001
    for observer in observers:
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))


def is_loopback(endpoint: str) -> bool:
    """Whether a server endpoint string listens on loopback only."""
    for part in endpoint.split(":"):
        if part.startswith("interface="):
            iface = part[len("interface=") :].replace("\\", "")
            return iface.startswith("127.") or iface in ("::1", "localhost")
    return endpoint.startswith("unix:")
