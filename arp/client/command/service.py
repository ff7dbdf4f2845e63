"""The command-mode service: sessions, history readers and the web site, built from arpc's options."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.server import Request, Site
from twisted.web.static import File

from arp import __version__
from arp.client.command.access import AccessStore, qr_terminal
from arp.client.command.executors import Executor
from arp.client.command.history import (
    ClaudeHistory,
    CodexHistory,
    GeminiHistory,
    ProjectScope,
    claude_roots,
    codex_root,
    gemini_root,
)
from arp.client.command.limits import bound_bodies
from arp.client.command.local import check_host
from arp.client.command.notify import Notifier
from arp.client.command.sessions import SessionManager
from arp.client.command.store import SessionStore
from arp.client.command.tunnel import SiteTunnel
from arp.client.command.web import Guard, NotFound, build_root, make_site

CONSOLE_DIR = Path(__file__).resolve().parent / "static"


class ConsoleFiles(File):
    """The web console's files (``static/``): index.html at ``/``, revalidated on every load."""

    contentTypes = {
        **File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".png": "image/png",
        ".svg": "image/svg+xml",
        ".webmanifest": "application/manifest+json",
    }

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # no other origin may frame the console (clickjacking of Allow / Cancel / Revoke),
        # e.g. a page on another localhost port framing --api-endpoint
        request.setHeader(b"content-security-policy", b"frame-ancestors 'self'")
        request.setHeader(b"x-frame-options", b"SAMEORIGIN")
        return super().render(request)


class CommandService(MultiService):
    """Owns the session manager and the site that tunnels (and ``--api-endpoint``) serve."""

    log = Logger()

    def __init__(
        self,
        reactor: object,
        data_dir: Path,
        *,
        binaries: dict[str, str | None],
        project_roots: list[str],
        permission_mode: str,
        max_permission_mode: str | None,
        max_sessions: int,
        cors_origins: list[str],
        client_id: str = "local",
        rotate_owner_token: bool = False,
        revoke_all_tokens: bool = False,
        show_qr: bool = True,
        environ: dict[str, str] | None = None,
        history_anywhere: bool = False,
        api_hosts: Sequence[str] = (),
        approval_timeout: float = 1800.0,
        oneshot: Sequence[str] = (),
        acp_agents: Sequence[Executor] = (),
        notify: Sequence[str] = (),
        push_allow: Sequence[str] = (),
        push_contact: str | None = None,
    ) -> None:
        super().__init__()
        self.access = AccessStore(  # type: ignore[arg-type]
            Path(data_dir), reactor, rotate_owner=rotate_owner_token, revoke_all=revoke_all_tokens
        )
        self.guard = Guard(self.access, client_id)
        self.show_qr = show_qr
        self._announced = False
        environ = dict(os.environ if environ is None else environ)
        roots = claude_roots(environ)
        project_roots = project_roots or [environ.get("HOME") or str(Path.home())]
        self.manager = SessionManager(
            store=SessionStore(Path(data_dir) / "sessions"),
            reactor=reactor,
            binaries=binaries,
            project_roots=project_roots,
            permission_mode=permission_mode,
            max_permission_mode=max_permission_mode,
            max_sessions=max_sessions,
            claude_roots=roots,
            environ=environ,
            approval_timeout=approval_timeout,
            oneshot=oneshot,
            acp_agents=acp_agents,
            version=__version__,
        )
        self.manager.setServiceParent(self)
        self.notifier = Notifier(reactor, list(notify), self.manager, link=self._session_link)
        self.notifier.setServiceParent(self)
        from arp.client.command.push import DEFAULT_CONTACT, PushService

        #: Web Push to the consoles' service workers (approvals, questions, finished sessions)
        self.push = PushService(
            reactor, Path(data_dir), self.access, self.manager, push_allow, push_contact or DEFAULT_CONTACT
        )
        # history is read only for projects under --project-root, unless --history-anywhere
        given = [os.path.abspath(os.path.expanduser(p)) for p in project_roots]
        within = None if history_anywhere else ProjectScope([*given, *self.manager.project_roots])
        self.root = build_root(
            self.manager,
            ClaudeHistory(roots, within=within),
            CodexHistory(codex_root(environ), within=within),
            GeminiHistory(gemini_root(environ), within=within),
            cors_origins,
            self.guard,
            self.push,
        )
        console = ConsoleFiles(str(CONSOLE_DIR))
        console.childNotFound = NotFound(self.root.cors, self.guard)  # a JSON 404, like the API's
        self.root.set_console(console)
        self.site: Site = bound_bodies(make_site(self.root))
        #: the ``--api-endpoint`` site: the same tree, for requests whose Host addresses it
        self.api_site: Site = check_host(bound_bodies(make_site(self.root)), api_hosts)

    def _session_link(self, session_id: str) -> str | None:
        """The session's page on this client's own origin, without the client id: webhook and
        ntfy bodies go to third parties (ntfy topics are public by default), and the id opens the
        client.  A browser that opened the console once has the cookie that takes it there."""
        base = self.guard.route_url().split("?", 1)[0]
        return f"{base}#/session/{session_id}" if base else None

    @property
    def owner_token(self) -> str:
        """The owner's access token (admin), kept in the data dir so the Public URL stays the same."""
        return self.access.owner_token

    def announce(self, url: str) -> None:
        """The relay registered us at ``url`` (which carries the owner token): on the first
        registration, show it as a QR code for a phone."""
        if self._announced or not self.show_qr:
            return
        self._announced = True
        self.log.info("Scan to open the console on a phone:\n{qr}", qr=qr_terminal(url))

    def stopService(self) -> object:
        """Write the tokens' last-used times, then stop the sessions."""
        self.access.close()
        self.push.stop()
        return super().stopService()

    def tunnel_protocol(self, header: bytes, tunnels: set) -> SiteTunnel:
        """What :class:`~arp.client.link.RelayLink` builds for each tunnel in command mode."""
        return SiteTunnel(header, self.site, tunnels)

    def describe(self) -> dict[str, Any]:
        """A summary for the start-up log line."""
        manager = self.manager
        found = {
            f"{name} ({manager.mode(ex)})": ex.resolve(manager.binaries.get(name)) or "not found"
            for name, ex in manager.executors.items()
        }
        return {
            "roots": ", ".join(str(r) for r in self.manager.project_roots),
            "executors": ", ".join(f"{k}: {v}" for k, v in found.items()),
        }
