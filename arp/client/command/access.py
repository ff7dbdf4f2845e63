"""Access tokens for command mode: who may reach this agent, with which rights.

The relay routes by client id, an *address*; it never grants anything. Access to the agent is a
separate credential that arpc itself issues, scopes, records and revokes:

- a token is ``arpa_<id>_<secret>``: a 12-hex-digit id (not secret; it names the token in lists
  and audit records) and 256 random bits (43 base64url characters);
- only the SHA-256 of a token is stored (``access-tokens.json`` in the data dir, mode 0600), and a
  presented token is compared with :func:`hmac.compare_digest`;
- each token has a name, scopes (:data:`SCOPES`; ``admin`` implies them all), an optional expiry,
  its creation time, and when and from where it was last used;
- the *owner* token is created on first start and its secret kept in ``access-owner-token``
  (mode 0600, as Jupyter keeps its token), so that every start prints the same Public URL;
  ``--rotate-owner-token`` replaces it;
- failed guesses (malformed or unknown tokens) are counted per source address; past the limit
  that address gets 429 for any credential that is not valid.

:class:`AccessStore` is a plain object with the clock injected; the web layer
(:mod:`arp.client.command.web`) finds the credential in a request and asks it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from arp.wire import source_range

#: Scopes, in the order the console shows them.
SCOPES = ("view", "prompt", "approve", "admin")
SCOPE_HELP = {
    "view": "read sessions, history and live output",
    "prompt": "start, continue and cancel sessions",
    "approve": "answer the agent's questions",
    "admin": "manage access tokens (implies every scope)",
}
TOKEN_RE = re.compile(r"^arpa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
ID_RE = re.compile(r"^[0-9a-f]{12}$")
MAX_EXPIRES_IN = 366 * 24 * 3600  # a year and a day: beyond that, a link is forever in practice
MAX_NAME = 64
MAX_TOKENS = 200  # live tokens; revoked and expired ones are kept KEEP_ENDED seconds to say why
KEEP_ENDED = 30 * 24 * 3600
MAX_ENDED = 1000  # ended tokens kept at most (the newest), so create-and-revoke loops cannot grow the file
FLUSH_DELAY = 30.0  # last-used times are written at most this often
GUESS_LIMIT = 20
GUESS_WINDOW = 60.0
MAX_TRACKED = 10_000  # addresses the guess limiter remembers
TOKENS_FILE = "access-tokens.json"
OWNER_FILE = "access-owner-token"
#: WebSocket close codes sent to a stream whose token stops being valid.
CLOSE_REVOKED = 4001
CLOSE_EXPIRED = 4002


class AccessError(Exception):
    """Refused: ``status`` 401 (``reason`` missing/malformed/unknown/expired/revoked), 403 (scope)
    or 429 (too many guesses)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The JSON body of the refusal."""
        return {"error": self.message, "reason": self.reason}


class BadRequest(Exception):
    """Token management input that cannot be accepted (400), or an unknown id (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Watcher(Protocol):
    """Something that holds access open with a grant (a WebSocket stream)."""

    def access_ended(self, reason: str) -> None: ...


def iso(ts: float | None) -> str | None:
    """A POSIX time as the API shows times (UTC, milliseconds, ``Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh ``(id, token)``."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return token_id, f"arpa_{token_id}_{secret}"


@dataclass
class Grant:
    """One token's record (never its secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    hash: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    last_from: str | None = None
    owner: bool = False
    watchers: set = field(default_factory=set, repr=False, compare=False)

    def allows(self, scope: str) -> bool:
        """Whether this token may act in ``scope`` (``admin`` may do everything)."""
        return "admin" in self.scopes or scope in self.scopes

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def actor(self) -> dict[str, str]:
        """Who acted, for session audit records."""
        return {"token": self.id, "name": self.name}

    def view(self, now: float) -> dict[str, Any]:
        """The record as ``GET /api/tokens`` shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "owner": self.owner,
            "status": self.state(now),
            "createdAt": iso(self.created),
            "expiresAt": iso(self.expires),
            "revokedAt": iso(self.revoked),
            "lastUsedAt": iso(self.last_used),
            "lastUsedFrom": self.last_from,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "sha256": self.hash,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "lastUsed": self.last_used,
            "lastFrom": self.last_from,
            "owner": self.owner,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grant:
        scopes = tuple(s for s in d["scopes"] if s in SCOPES)
        return cls(
            id=str(d["id"]),
            name=str(d["name"]),
            scopes=scopes,
            hash=str(d["sha256"]),
            created=float(d["created"]),
            expires=None if d.get("expires") is None else float(d["expires"]),
            revoked=None if d.get("revoked") is None else float(d["revoked"]),
            last_used=None if d.get("lastUsed") is None else float(d["lastUsed"]),
            last_from=d.get("lastFrom"),
            owner=bool(d.get("owner")),
        )


class GuessLimiter:
    """Failed token guesses per source address in a sliding window (a bounded table)."""

    def __init__(self, clock: IReactorTime, limit: int = GUESS_LIMIT, window: float = GUESS_WINDOW) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.misses: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        times = self.misses.get(address)
        if times is None:
            return None
        cutoff = self.clock.seconds() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self.misses[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        """Whether ``address`` has used up its guesses for now (an IPv6 address counts as its /64,
        so rotating addresses within one host's range does not reset the count)."""
        times = self._recent(source_range(address))
        return times is not None and len(times) >= self.limit

    def miss(self, address: str) -> None:
        """Count one failed guess from ``address`` (an IPv6 address: its /64)."""
        address = source_range(address)
        times = self._recent(address)
        if times is None:
            times = self.misses[address] = deque(maxlen=self.limit)
            while len(self.misses) > MAX_TRACKED:
                self.misses.popitem(last=False)
        self.misses.move_to_end(address)
        times.append(self.clock.seconds())


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class AccessStore:
    """The tokens of one arpc, kept in its data directory."""

    log = Logger()

    def __init__(
        self,
        data_dir: Path,
        clock: IReactorTime,
        *,
        rotate_owner: bool = False,
        revoke_all: bool = False,
        guess_limit: int = GUESS_LIMIT,
        guess_window: float = GUESS_WINDOW,
    ) -> None:
        self.path = Path(data_dir) / TOKENS_FILE
        self.owner_path = Path(data_dir) / OWNER_FILE
        self.clock = clock
        self.limiter = GuessLimiter(clock, guess_limit, guess_window)
        self.grants: dict[str, Grant] = {}
        self._flush_call: IDelayedCall | None = None
        self._load()
        if revoke_all:
            self._revoke_all()
        self.owner_token = self._owner(rotate_owner or revoke_all)

    def _revoke_all(self) -> None:
        """Revoke every active token (``--revoke-all-tokens``): the owner's and all minted with it."""
        now = self.clock.seconds()
        revoked = [g for g in self.grants.values() if g.state(now) == "active"]
        for grant in revoked:
            grant.revoked = now
        self.save()
        self.log.info(
            "revoked every access token ({n}: {names}); a new owner token follows",
            n=len(revoked),
            names=", ".join(f"{g.id} ({g.name})" for g in revoked) or "none",
        )

    # -- storage ------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as e:
            raise RuntimeError(f"{self.path} is damaged ({e}); move it away to start with a new owner token")
        for item in data.get("tokens", []):
            try:
                grant = Grant.from_json(item)
            except (KeyError, TypeError, ValueError):
                self.log.warn("skipping a damaged record in {path}", path=str(self.path))
                continue
            self.grants[grant.id] = grant
        self._prune()

    def save(self) -> None:
        """Write every record now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        body = {"version": 1, "tokens": [g.to_json() for g in self.grants.values()]}
        _write_private(self.path, json.dumps(body, indent=1) + "\n")

    def _save_soon(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(FLUSH_DELAY, self.save)

    def close(self) -> None:
        """Write pending last-used times (arpc is stopping)."""
        if self._flush_call is not None and self._flush_call.active():
            self.save()

    def _prune(self) -> None:
        now = self.clock.seconds()
        for grant in list(self.grants.values()):
            ended = grant.revoked if grant.revoked is not None else grant.expires
            if ended is not None and ended <= now - KEEP_ENDED:
                del self.grants[grant.id]
        ended_grants = [g for g in self.grants.values() if g.state(now) != "active"]
        if len(ended_grants) > MAX_ENDED:
            ended_grants.sort(key=lambda g: g.revoked if g.revoked is not None else (g.expires or 0.0))
            for grant in ended_grants[: len(ended_grants) - MAX_ENDED]:
                del self.grants[grant.id]

    def _owner(self, rotate: bool) -> str:
        """The owner token: the one in the owner file, unless rotated, revoked or lost."""
        token = None
        try:
            token = self.owner_path.read_text().strip()
        except FileNotFoundError:
            pass
        grant = None
        match = TOKEN_RE.match(token or "")
        if match:
            grant = self.grants.get(match.group(1))
            if grant is None or not hmac.compare_digest(grant.hash, digest(token)):
                grant = None  # the record is gone: recreate it from the file
                if match.group(1) not in self.grants:
                    grant = Grant(
                        match.group(1), "owner", ("admin",), digest(token), self.clock.seconds(), owner=True
                    )
                    self.grants[grant.id] = grant
                    self.save()
        if grant is not None and not rotate and grant.state(self.clock.seconds()) == "active":
            return token  # type: ignore[return-value]
        now = self.clock.seconds()
        for old in self.grants.values():
            if old.owner and old.revoked is None:
                old.revoked = now
        token_id, token = new_token()
        self.grants[token_id] = Grant(token_id, "owner", ("admin",), digest(token), now, owner=True)
        self.save()
        _write_private(self.owner_path, token + "\n")
        why = "rotated" if rotate else ("revoked; made a new one" if grant is not None else "created")
        self.log.info("owner access token {id} {why}", id=token_id, why=why)
        others = [g for g in self.grants.values() if not g.owner and g.state(now) == "active"]
        if rotate and others:  # say plainly what a rotation does not revoke
            self.log.warn(
                "--rotate-owner-token replaced the owner token only: {n} other access tokens stay "
                "valid ({names}); revoke them in Devices, or restart with --revoke-all-tokens",
                n=len(others),
                names=", ".join(f"{g.id} ({g.name})" for g in others),
            )
        return token

    # -- checking -----------------------------------------------------------------------------

    def check(self, token: str | None, address: str) -> Grant:
        """The grant behind ``token``, presented from ``address``; :class:`AccessError` (401/429) if none."""
        if not token:
            raise AccessError(
                401,
                "missing",
                "missing access token: open the Public URL arpc printed (…&access=…) or send "
                "Authorization: Bearer <token>",
            )
        now = self.clock.seconds()
        match = TOKEN_RE.match(token)
        grant = self.grants.get(match.group(1)) if match else None
        # hash and compare even when the id is unknown, so that timing says nothing about ids
        presented = digest(token) if match else ""
        valid = grant is not None and hmac.compare_digest(grant.hash, presented)
        if not valid:
            if self.limiter.blocked(address):
                raise AccessError(429, "guessing", "too many invalid access tokens; wait a minute", 60)
            self.limiter.miss(address)
            if match is None:
                raise AccessError(401, "malformed", "malformed access token: expected arpa_<id>_<secret>")
            raise AccessError(401, "unknown", "unknown access token")
        assert grant is not None
        state = grant.state(now)
        if state == "revoked":
            raise AccessError(401, "revoked", f"access token {grant.id} ({grant.name}) was revoked")
        if state == "expired":
            raise AccessError(401, "expired", f"access token {grant.id} ({grant.name}) has expired")
        if grant.last_from != address or grant.last_used is None or now - grant.last_used >= 1.0:
            grant.last_used, grant.last_from = now, address
            self._save_soon()
        return grant

    def recognizes(self, token: str) -> bool:
        """Whether ``token`` is an active token of this store (no guess is counted either way)."""
        match = TOKEN_RE.match(token)
        grant = self.grants.get(match.group(1)) if match else None
        presented = digest(token) if match else ""
        return (
            grant is not None
            and hmac.compare_digest(grant.hash, presented)
            and grant.state(self.clock.seconds()) == "active"
        )

    def authorize(self, token: str | None, scope: str | None, address: str) -> Grant:
        """:meth:`check`, then 403 unless the grant has ``scope`` (None: any valid token)."""
        grant = self.check(token, address)
        if scope is not None and not grant.allows(scope):
            raise AccessError(
                403,
                "scope",
                f"this access token ({grant.name}) lacks the {scope!r} scope; "
                f"it has: {', '.join(grant.scopes)}",
            )
        return grant

    # -- managing -----------------------------------------------------------------------------

    def create(self, body: object) -> tuple[Grant, str]:
        """A new token from a ``POST /api/tokens`` body; returns its grant and the secret."""
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object")
        unknown = set(body) - {"name", "scopes", "expiresIn"}
        if unknown:
            raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise BadRequest(400, f"name must be a non-empty string of at most {MAX_NAME} characters")
        if any(not c.isprintable() for c in name):
            raise BadRequest(400, "name must be printable text")
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise BadRequest(400, f"scopes must be a non-empty list of: {', '.join(SCOPES)}")
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise BadRequest(400, f"unknown scope(s) {', '.join(map(repr, bad))}: use {', '.join(SCOPES)}")
        expires_in = body.get("expiresIn")
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or not 60 <= expires_in <= MAX_EXPIRES_IN
        ):
            raise BadRequest(
                400, f"expiresIn must be a number of seconds from 60 to {MAX_EXPIRES_IN} (or left out: never)"
            )
        now = self.clock.seconds()
        self._prune()
        if sum(1 for g in self.grants.values() if g.state(now) == "active") >= MAX_TOKENS:
            raise BadRequest(400, f"at most {MAX_TOKENS} tokens may be active: revoke some first")
        token_id, token = new_token()
        ordered = tuple(s for s in SCOPES if s in scopes)
        grant = Grant(
            token_id,
            name.strip(),
            ordered,
            digest(token),
            now,
            expires=None if expires_in is None else now + float(expires_in),
        )
        self.grants[token_id] = grant
        self.save()
        self.log.info(
            "access token {id} ({name}) created: {scopes}", id=token_id, name=grant.name, scopes=ordered
        )
        return grant, token

    def revoke(self, token_id: str) -> Grant:
        """Revoke a token at once: it fails from the next request, and its streams are closed."""
        grant = self.grants.get(token_id) if ID_RE.match(token_id) else None
        if grant is None:
            raise BadRequest(404, f"no access token {token_id!r}")
        if grant.revoked is None:
            grant.revoked = self.clock.seconds()
            self.save()
            self.log.info("access token {id} ({name}) revoked", id=grant.id, name=grant.name)
        for watcher in list(grant.watchers):
            watcher.access_ended("revoked")
        grant.watchers.clear()
        return grant

    def listing(self, current: Grant | None = None) -> list[dict[str, Any]]:
        """Every kept token, newest first, without secrets; ``current`` marked."""
        now = self.clock.seconds()
        views = []
        for grant in sorted(self.grants.values(), key=lambda g: g.created, reverse=True):
            view = grant.view(now)
            view["current"] = grant is current
            views.append(view)
        return views

    def watch(self, grant: Grant, watcher: Watcher) -> IDelayedCall | None:
        """Tell ``watcher`` when ``grant`` is revoked or expires; returns the expiry call, if any."""
        grant.watchers.add(watcher)
        if grant.expires is None:
            return None
        delay = max(0.0, grant.expires - self.clock.seconds())
        return self.clock.callLater(delay, self._expired, grant, watcher)

    def _expired(self, grant: Grant, watcher: Watcher) -> None:
        if watcher in grant.watchers:
            grant.watchers.discard(watcher)
            watcher.access_ended("expired")

    @staticmethod
    def unwatch(grant: Grant, watcher: Watcher) -> None:
        """Stop telling ``watcher`` about ``grant``."""
        grant.watchers.discard(watcher)


def cookie_name(client_id: str) -> str:
    """The name of arpc's access cookie: per client, because cookies ignore ports.

    The relay can compute it for each client (``arpc_access_`` + the first 16 hex digits of the
    SHA-256 of the client id), so it can pass a client's own access cookie and drop all others.
    """
    return "arpc_access_" + hashlib.sha256(client_id.encode()).hexdigest()[:16]


def with_access(url: str, token: str) -> str:
    """``url`` with ``access=<token>`` added to its query (before any fragment)."""
    base, hash_mark, fragment = url.partition("#")
    sep = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        sep = ""
    return f"{base}{sep}access={token}{hash_mark}{fragment}"


def qr_svg_data_url(text: str) -> str:
    """``text`` as a QR code, an SVG ``data:`` URL for an ``<img>`` (no script can run in it)."""
    import io

    import segno  # only when a link is made: it is not needed to serve the API

    out = io.BytesIO()
    segno.make(text, error="m").save(
        out, kind="svg", scale=6, border=4, dark="#000", light="#fff", xmldecl=False, omitsize=True
    )
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def qr_terminal(text: str) -> str:
    """``text`` as a QR code drawn with block characters, for a terminal or a log."""
    import io

    import segno

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue().rstrip("\n")
