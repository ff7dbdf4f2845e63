"""Daily log files named ``<name>.log.YYYY-MM-DD``, as the original arpc wrote them."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from twisted.logger import ILogObserver, formatEventAsClassicLogText
from zope.interface import implementer

#: Query parameters that carry secrets: a client id (the relay's ``token=``, the admin token) and
#: arpc's access tokens (``access=``).
_SECRET_PARAM = re.compile(rb"((?:^|[?&;])(?:access|token)=)[^&;#\s]*")


def redact_query(uri: bytes) -> bytes:
    """``uri`` with the values of its ``token=`` and ``access=`` parameters replaced."""
    return _SECRET_PARAM.sub(rb"\1[redacted]", uri) if b"=" in uri else uri


class _Redacted:
    """A request as the access log sees it: secrets out of its target and ``Referer``."""

    def __init__(self, request: object) -> None:
        self._request = request
        self.uri = redact_query(request.uri)

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_query(value)
        return value


def access_log_formatter(timestamp: str, request: object) -> str:
    """Twisted's combined log line (a Site's ``logFormatter``), without the secrets a URL may
    carry: a Site's access log goes to the process's log (and arpc's log files), where tokens
    must not be."""
    from twisted.web.http import combinedLogFormatter  # only where a Site is served

    return combinedLogFormatter(timestamp, _Redacted(request))


@implementer(ILogObserver)
class DailyFileObserver:
    """Write log events as text to ``<directory>/<name>.log.<date>``, a new file each day."""

    def __init__(self, directory: str | os.PathLike, name: str, keep_days: int = 14) -> None:
        self.directory = Path(directory)
        self.name = name
        self.keep_days = keep_days
        self._date: datetime.date | None = None
        self._file = None

    @property
    def current_path(self) -> Path:
        """The file written today."""
        return self.directory / f"{self.name}.log.{datetime.date.today().isoformat()}"

    def _rotate(self, today: datetime.date) -> None:
        if self._file is not None:
            self._file.close()
        self._date = today
        self._file = open(self.directory / f"{self.name}.log.{today.isoformat()}", "a")
        cutoff = today - datetime.timedelta(days=self.keep_days)
        for old in self.directory.glob(f"{self.name}.log.*"):
            try:
                if datetime.date.fromisoformat(old.name.rsplit(".", 1)[1]) < cutoff:
                    old.unlink()
            except (ValueError, OSError):
                continue

    def __call__(self, event: dict) -> None:
        text = formatEventAsClassicLogText(event)
        if not text:
            return
        today = datetime.date.today()
        if today != self._date:
            self._rotate(today)
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        """Close the current file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def open_log_directory(preferred: str | os.PathLike) -> Path:
    """``preferred`` if it can be created and written, else ``./arpc/logs``."""
    for candidate in (Path(preferred), Path.cwd() / "arpc" / "logs"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            probe = candidate / ".write-test"
            probe.write_text("")
            probe.unlink()
            return candidate
        except OSError:
            continue
    raise OSError(f"no writable log directory (tried {preferred} and ./arpc/logs)")
