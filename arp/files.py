"""The data directory: where arps keeps its auth key and arpc its identity and logs."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir(app: str) -> str:
    """The platform's per-user data directory for ``app`` (``~/.local/share/<app>`` on Linux)."""
    import platformdirs  # only without --data-dir (the systemd units give one): 0.4 MB otherwise

    return platformdirs.user_data_dir(app, appauthor=False)


def ensure_dir(path: str | os.PathLike, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) if needed; return it as a Path."""
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    return p


def read_or_create_secret(path: Path, make: callable) -> tuple[str, bool]:  # type: ignore[valid-type]
    """Read the secret stored in ``path``, or write ``make()`` there with mode 0600.

    Returns the secret and whether it was created now.
    """
    try:
        value = path.read_text().strip()
        if value:
            return value, False
    except FileNotFoundError:
        pass
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return value, True
