"""The ids a relay served, kept in its data dir so that a restart does not forget them.

After a restart (a crash, SIGKILL, an upgrade) every arpc reconnects within seconds, but
until it has, a phone watching the client's console would get 404 "unknown token" and take
its link for wrong.  So each registration is written down as it happens, and at start-up
the relay brings every id back as a *retained* registration: offline, pinned to its
identity key, on its own port or host label, answered with 503 "reconnecting" until the
client is back or ``--retention`` runs out, exactly as after a disconnect.

The file is a log of JSON lines, one per event, appended and flushed at once (a relay
killed with SIGKILL loses nothing the kernel has), and rewritten compactly at start-up and
whenever it has grown well past what it describes:

- ``{"id", "identity", "mode", "tenant", "key", "label", "port", "remotePort", "at"}``: registered;
- ``{"id", "offline": t}``: the control link went away at ``t``;
- ``{"id", "stopped": t}``: the owner stopped arpc on purpose at ``t``;
- ``{"id", "gone": true}``: the id was released (expired, or disconnected by the operator).

``key`` is a fingerprint of the auth key the id registered with: an id whose tenant is gone,
or whose tenant's key changed, is not brought back (its owner could not register again with
the key it has, and nobody else may be served in its name).  A file that another arps holds
(two relays on one data dir) is left to that relay: this one then keeps nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from twisted.logger import Logger

#: The file's name in the data dir.
FILE_NAME = "known-clients.jsonl"
#: Compact the log once it has this many lines more than it has ids (and at start-up).
COMPACT_SLACK = 4096


class KnownClientsError(Exception):
    """The data dir cannot be read or written: the message says which file and why."""


def key_fingerprint(key: bytes) -> str:
    """A short, one-way fingerprint of an auth key (never the key itself on disk)."""
    return sha256(b"arp-known-clients\0" + key).hexdigest()[:16]


@dataclass
class KnownClient:
    """What the relay needs to bring one id back after a restart."""

    client_id: str
    identity: bytes
    mode: str
    tenant: str
    key: str
    label: str = ""
    origin_port: int = 0
    remote_port: int = 0
    registered_at: float = 0.0
    offline_since: float | None = None
    stopped_at: float | None = None

    def lines(self) -> list[dict]:
        """The log lines that describe this id now."""
        out: list[dict] = [
            {
                "id": self.client_id,
                "identity": self.identity.hex(),
                "mode": self.mode,
                "tenant": self.tenant,
                "key": self.key,
                "label": self.label,
                "port": self.origin_port,
                "remotePort": self.remote_port,
                "at": self.registered_at,
            }
        ]
        if self.stopped_at is not None:
            out.append({"id": self.client_id, "stopped": self.stopped_at})
        elif self.offline_since is not None:
            out.append({"id": self.client_id, "offline": self.offline_since})
        return out


def _fold(known: dict[str, KnownClient], line: dict) -> None:
    """Apply one log line to ``known`` (lines that do not parse are ignored)."""
    client_id = line.get("id")
    if not isinstance(client_id, str):
        return
    if line.get("gone"):
        known.pop(client_id, None)
    elif "identity" in line:
        known[client_id] = KnownClient(
            client_id=client_id,
            identity=bytes.fromhex(line["identity"]),
            mode=str(line["mode"]),
            tenant=str(line["tenant"]),
            key=str(line["key"]),
            label=str(line.get("label") or ""),
            origin_port=int(line.get("port") or 0),
            remote_port=int(line.get("remotePort") or 0),
            registered_at=float(line.get("at") or 0.0),
        )
    elif client_id in known:
        entry = known[client_id]
        if "stopped" in line:
            entry.stopped_at = float(line["stopped"])
            entry.offline_since = entry.stopped_at
        elif "offline" in line:
            entry.offline_since = float(line["offline"])


class KnownClients:
    """The log of registrations in ``data_dir`` (see the module docstring)."""

    log = Logger()

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.known: dict[str, KnownClient] = {}
        self._lock = None  # the open lock file: this relay's claim on the log
        self._file = None  # the log, open for appending
        self._lines = 0

    def open(self) -> dict[str, KnownClient]:
        """Read the log, take it for this relay and rewrite it compactly; the ids it holds.

        Raises :class:`KnownClientsError` if the data dir or the log cannot be read or written.
        Returns nothing (and keeps nothing) if another arps holds the log.
        """
        lock_path = self.path.with_suffix(".lock")
        try:
            lock = open(lock_path, "a")  # noqa: SIM115 (kept open: it holds the lock)
        except OSError as e:
            raise KnownClientsError(f"cannot open {lock_path}: {e.strerror or e}") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            self.log.warn(
                "another arps uses {path}: this relay will not keep its client ids across restarts "
                "(give each relay its own --data-dir)",
                path=str(self.path),
            )
            return {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            lock.close()
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise KnownClientsError(f"cannot read {self.path}: {why}") from None
        known: dict[str, KnownClient] = {}
        for raw in text.splitlines():
            try:
                _fold(known, json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line torn by a crash, or not ours: skip it
        self._lock = lock
        self.known = known
        try:
            self._rewrite()
        except KnownClientsError:
            self.close()
            raise
        return dict(known)

    def close(self) -> None:
        for name in ("_file", "_lock"):
            handle = getattr(self, name)
            if handle is not None:
                setattr(self, name, None)
                handle.close()

    # -- events ---------------------------------------------------------------------------

    def registered(self, entry: KnownClient) -> None:
        self.known[entry.client_id] = entry
        self._append(entry.lines()[0])

    def offline(self, client_id: str, at: float) -> None:
        entry = self.known.get(client_id)
        if entry is not None and entry.stopped_at is None:
            entry.offline_since = at
            self._append({"id": client_id, "offline": at})

    def stopped(self, client_id: str, at: float) -> None:
        entry = self.known.get(client_id)
        if entry is not None:
            entry.stopped_at = entry.offline_since = at
            self._append({"id": client_id, "stopped": at})

    def gone(self, client_id: str) -> None:
        if self.known.pop(client_id, None) is not None:
            self._append({"id": client_id, "gone": True})

    # -- the file ---------------------------------------------------------------------------

    def _append(self, line: dict) -> None:
        handle = self._file
        if handle is None:
            return
        try:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
            handle.flush()  # in the kernel's hands: survives the process being killed
        except OSError as e:
            self.log.error("cannot write {path}: {why}", path=str(self.path), why=e.strerror or str(e))
            return
        self._lines += 1
        if self._lines > len(self.known) + COMPACT_SLACK:
            try:
                self._rewrite()
            except KnownClientsError as e:
                self.log.error("{why}", why=str(e))

    def _rewrite(self) -> None:
        """Replace the log by one that says the same in as few lines as it takes (written beside
        it and renamed over it: a crash leaves the old log or the new one, never half of one)."""
        if self._lock is None:
            return
        lines = _lines_of(self.known.values())
        temp = self.path.with_suffix(".tmp")
        try:
            with open(temp, "w", encoding="utf-8") as out:
                out.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
            handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for appends)
        except OSError as e:
            raise KnownClientsError(f"cannot write {self.path}: {e.strerror or e}") from None
        if self._file is not None:
            self._file.close()
        self._file = handle
        self._lines = len(lines)


def _lines_of(entries: Iterable[KnownClient]) -> list[dict]:
    return [line for entry in entries for line in entry.lines()]
