"""Sessions on disk: a small JSON record per session and an append-only JSONL of its events.

Layout under the data directory::

    sessions/<id>.json           the record (rewritten atomically on every status change)
    sessions/<id>.events.jsonl   one event per line, appended as it happens

A torn last line (arpc killed mid-write) is skipped when reading back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twisted.logger import Logger

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def valid_id(session_id: str) -> bool:
    """Whether ``session_id`` is one of our session ids (32 hex digits)."""
    return bool(_ID_RE.match(session_id))


class SessionStore:
    """Reads and writes session records and event logs in one directory."""

    log = Logger()

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._appenders: dict[str, IO[bytes]] = {}

    def _record_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.json"

    def _events_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.events.jsonl"

    def save(self, record: dict[str, Any]) -> None:
        """Write ``record`` atomically (temp file, fsync-free rename)."""
        path = self._record_path(record["id"])
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, separators=(",", ":"))
        os.replace(tmp, path)

    def load_all(self) -> Iterator[dict[str, Any]]:
        """Every readable record; unreadable ones are logged and skipped."""
        for path in self.directory.glob("*.json"):
            if not valid_id(path.stem):
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                self.log.warn("skipping unreadable session record {path}: {e}", path=str(path), e=e)
                continue
            if isinstance(record, dict) and record.get("id") == path.stem:
                yield record

    def append(self, session_id: str, event: dict[str, Any]) -> None:
        """Append one event and flush it to the OS."""
        f = self._appenders.get(session_id)
        if f is None:
            fd = os.open(self._events_path(session_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            f = self._appenders[session_id] = os.fdopen(fd, "ab")
        f.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        f.flush()

    def close_events(self, session_id: str) -> None:
        """Close the event log of a session that is not running any more."""
        f = self._appenders.pop(session_id, None)
        if f is not None:
            f.close()

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """All events of a session, in order; corrupt or torn lines are skipped."""
        out = []
        try:
            with open(self._events_path(session_id), "rb") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and isinstance(event.get("seq"), int):
                        out.append(event)
        except FileNotFoundError:
            pass
        return out

    def delete(self, session_id: str) -> None:
        """Remove a session's record and events."""
        self.close_events(session_id)
        for path in (self._record_path(session_id), self._events_path(session_id)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Close every open event log."""
        for session_id in list(self._appenders):
            self.close_events(session_id)
