"""``twistd arpc``: the options and the service tree of the client."""

from __future__ import annotations

from arp.lean import release_startup_memory, skip_tls_if_unused

skip_tls_if_unused()  # before anything imports Twisted's endpoints (see arp/lean.py)

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from arp import __version__, files, options, wire
from arp.client.link import RelayLink, exit_with_status
from arp.logs import DailyFileObserver, open_log_directory
from arp.reactor import install_unless_chosen

if TYPE_CHECKING:
    from arp.client.command.service import CommandService

log = Logger()


def _permission_mode(value: str) -> str:
    from arp.client.command.executors import permission_mode

    return permission_mode(value)


def _host_header(value: str) -> str:
    from arp.client.forward import host_header

    return host_header(value)


def _push_contact(value: str) -> str:
    if not value.startswith(("mailto:", "https://")) or len(value) > 200:
        raise ValueError("must be a mailto: or https:// URL")
    return value


_push_contact.coerceDoc = ""  # type: ignore[attr-defined]
_host_header.coerceDoc = ""  # type: ignore[attr-defined]
_permission_mode.coerceDoc = (  # type: ignore[attr-defined]
    "One of plan, default, dontAsk, acceptEdits, auto, bypassPermissions."
)


class Options(options.TwistdOptions):
    """Command line of ``twistd arpc``."""

    command = "arpc"
    synopsis = "--server-addr HOST (--local-port PORT | --command-mode) [options]"
    longdesc = (
        "The ARP client.  It connects out to the relay arps (so this machine needs no "
        "public address), registers, keeps a pool of warm tunnels and reconnects by "
        "itself.  In forward mode each tunnel that gets a request is spliced to a new "
        "connection to --local-addr:--local-port (HTTP, WebSocket, or raw TCP with --tcp). "
        "Endpoint options take Twisted client endpoint strings, e.g. "
        "tls:relay.example.com:17001:trustRoots=/etc/arp/ca for TLS."
    )
    optFlags = [
        ["tcp", None, "Raw TCP service (database, SSH): ask the relay for a dedicated public port."],
        ["no-log-file", None, "Do not write daily log files (arpc.log.YYYY-MM-DD)."],
        ["command-mode", None, "Serve the agent API (Claude Code, Codex, Gemini) instead of forwarding."],
        [
            "history-anywhere",
            None,
            "Command mode: show the agents' history of every project, not only those under --project-root.",
        ],
        [
            "rotate-owner-token",
            None,
            "Command mode: replace the owner's access token (the old Public URL stops working; "
            "tokens made with it stay valid).",
        ],
        [
            "revoke-all-tokens",
            None,
            "Command mode: revoke every access token (the owner's and every share link or device "
            "token made with it) and make a new owner token.",
        ],
        ["no-qr", None, "Command mode: do not show the Public URL as a QR code at start."],
    ]
    optParameters = [
        ["control-port", None, 17001, "The relay's control port.", options.port_number],
        ["proxy-port", None, 17002, "The relay's proxy (tunnel) port.", options.port_number],
        [
            "control-endpoint",
            None,
            None,
            "Client endpoint string for the control port (overrides --server-addr/--control-port).",
        ],
        [
            "proxy-endpoint",
            None,
            None,
            "Client endpoint string for the proxy port (overrides --server-addr/--proxy-port).",
        ],
        [
            "client-id",
            None,
            None,
            "This client's id, which is also its token. Default: 32 random hex characters, "
            "kept in the data directory so the URL survives restarts.",
        ],
        ["auth-key", None, None, "The relay's auth key (env ARP_AUTH_KEY)."],
        ["local-addr", None, "127.0.0.1", "Address of the local service to expose."],
        ["local-port", None, None, "Port of the local service to expose.", options.port_number],
        [
            "host-header",
            None,
            None,
            "Forward mode: the Host header the service gets: 'rewrite' (--local-addr:--local-port, "
            "for Jupyter, Vite, Django), a NAME, or the browser's when not given; X-Forwarded-Host "
            "keeps the public name.",
            _host_header,
        ],
        [
            "remote-port",
            None,
            None,
            "With --tcp: the public port to ask for (default: any port the relay offers).",
            options.port_number,
        ],
        [
            "max-backoff",
            None,
            30.0,
            "Longest wait between reconnection attempts, in seconds.",
            options.seconds,
        ],
        [
            "data-dir",
            None,
            None,
            "Where arpc keeps its client id, identity key, access tokens and logs "
            "(default: ~/.local/share/arpc).",
        ],
        ["command-path", None, None, "Command mode: the Claude Code CLI (default: claude on PATH)."],
        [
            "push-contact",
            None,
            None,
            "Command mode: the contact push services see in Web Push requests (VAPID 'sub'), a "
            "mailto: or https: URL (default: mailto:arpc@localhost).",
            _push_contact,
        ],
        ["codex-path", None, None, "Command mode: the Codex CLI (default: codex on PATH)."],
        ["gemini-path", None, None, "Command mode: the Gemini CLI (default: gemini on PATH)."],
        [
            "api-endpoint",
            None,
            None,
            "Command mode: also serve the API locally on this endpoint, e.g. tcp:8765:interface=127.0.0.1.",
        ],
        [
            "permission-mode",
            None,
            "acceptEdits",
            "Command mode: default Claude permission mode (Codex sandbox / Gemini approval mode follow)",
            _permission_mode,
        ],
        [
            "max-permission-mode",
            None,
            None,
            "Command mode: the highest mode a remote caller may ask for (default: --permission-mode)",
            _permission_mode,
        ],
        ["max-sessions", None, 4, "Command mode: agents allowed to run at once.", options.positive_int],
        [
            "approval-timeout",
            None,
            1800.0,
            "Command mode: seconds an agent's question waits for an answer before it is denied.",
            options.seconds,
        ],
        [
            "log-level",
            None,
            None,
            "debug, info, warn or error (env ARP_LOG_LEVEL; default info).",
            options.log_level,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["project-root"] = []
        self["cors-origin"] = []
        self["api-host"] = []
        self["acp-agent"] = []
        self["oneshot-agent"] = []
        self["notify"] = []
        self["push-allow"] = []
        self["server-addrs"] = []
        self["server-addr"] = None

    def opt_server_addr(self, host: str) -> None:
        """Host name or address of the relay (arps). Several relays: repeat it or separate them
        with commas; a name that resolves to several addresses means one relay per address."""
        hosts = [h.strip() for h in host.split(",") if h.strip()]
        if not hosts:
            raise usage.UsageError("--server-addr needs a host name or address")
        self["server-addrs"].extend(hosts)
        self["server-addr"] = self["server-addrs"][0]

    opt_s = opt_server_addr

    def opt_project_root(self, path: str) -> None:
        """Command mode: a directory agents may work in (repeatable; default: your home)."""
        self["project-root"].append(path)

    def opt_cors_origin(self, origin: str) -> None:
        """Command mode: a browser origin that may call the API, e.g. https://console.example (repeatable)."""
        self["cors-origin"].append(origin)

    def opt_api_host(self, name: str) -> None:
        """Command mode: a host name --api-endpoint may be reached by (besides localhost; repeatable)."""
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", name):
            raise usage.UsageError(f"--api-host {name!r} must be a host name like box.lan (no port)")
        self["api-host"].append(name)

    def opt_acp_agent(self, spec: str) -> None:
        """Command mode: an Agent Client Protocol agent, NAME=COMMAND, e.g. goose='goose acp' (repeatable)."""
        from arp.client.command.executors import acp_agent

        try:
            self["acp-agent"].append(acp_agent(spec))
        except ValueError as e:
            raise usage.UsageError(f"--acp-agent {spec!r}: {e}")

    def opt_oneshot_agent(self, name: str) -> None:
        """Command mode: run Claude, Codex or Gemini one-shot (it cannot ask for approval; repeatable)."""
        from arp.client.command.executors import executor_named

        executor = executor_named(name)
        if executor is None:
            raise usage.UsageError(f"--oneshot-agent {name!r}: use Claude, Codex or Gemini")
        self["oneshot-agent"].append(executor.name)

    def opt_notify(self, url: str) -> None:
        """Command mode: POST approvals and finished sessions to this webhook (ntfy topic URLs get
        ntfy's format; repeatable)."""
        from arp.client.command.notify import check_url

        try:
            self["notify"].append(check_url(url))
        except ValueError as e:
            raise usage.UsageError(f"--notify {url!r}: {e}")

    def opt_push_allow(self, prefix: str) -> None:
        """Command mode: let Web Push endpoints starting with PREFIX through, even on a private
        address or over http (a self-hosted push service; repeatable)."""
        from arp.client.command.push import check_allow_prefix

        try:
            self["push-allow"].append(check_allow_prefix(prefix))
        except ValueError as e:
            raise usage.UsageError(f"--push-allow {prefix!r}: {e}")

    def postOptions(self) -> None:
        if not self["server-addr"] and not self["control-endpoint"]:
            raise usage.UsageError("give the relay's address: --server-addr HOST")
        if not self["server-addr"] and not self["proxy-endpoint"]:
            raise usage.UsageError("--control-endpoint needs --proxy-endpoint (or --server-addr)")
        if self["command-mode"]:
            self._check_command_mode()
        elif self["api-endpoint"]:
            raise usage.UsageError("--api-endpoint serves the agent API: it needs --command-mode")
        elif self["rotate-owner-token"] or self["revoke-all-tokens"]:
            raise usage.UsageError("--rotate-owner-token and --revoke-all-tokens are for --command-mode")
        elif self["local-port"] is None:
            raise usage.UsageError("give the local service's port: --local-port PORT")
        if self["remote-port"] is not None and not self["tcp"]:
            raise usage.UsageError("--remote-port is the public port of a --tcp service: add --tcp")
        if self["host-header"] and (self["tcp"] or self["command-mode"]):
            raise usage.UsageError("--host-header is for forwarding HTTP: not with --tcp or --command-mode")
        if self["client-id"] is not None and not wire.CLIENT_ID_RE.match(self["client-id"]):
            raise usage.UsageError(
                "--client-id must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
            )
        if self["auth-key"] is None:
            self["auth-key"] = options.env_default("ARP_AUTH_KEY")
        if not self["auth-key"]:
            raise usage.UsageError(
                "give the relay's auth key: --auth-key KEY or ARP_AUTH_KEY (arps prints it at first start)"
            )
        if self["log-level"] is None:
            self["log-level"] = options.env_log_level()

    def _check_command_mode(self) -> None:
        if self["tcp"]:
            raise usage.UsageError("--command-mode serves HTTP; it cannot be combined with --tcp")
        if self["api-endpoint"]:
            try:
                options.listen_address(self["api-endpoint"])  # refuse what Twisted cannot listen on
            except ValueError as e:
                raise usage.UsageError(f"--api-endpoint {e}") from e
        for root in self["project-root"]:
            if not os.path.isdir(os.path.expanduser(root)):
                raise usage.UsageError(f"--project-root {root!r} is not a directory")
        from arp.client.command.executors import PERMISSION_RANK

        most = self["max-permission-mode"] or self["permission-mode"]
        if PERMISSION_RANK[self["permission-mode"]] > PERMISSION_RANK[most]:
            raise usage.UsageError("--permission-mode must not be above --max-permission-mode")


def _host_of(endpoint: str) -> str:
    match = re.search(r"(?:^|:)host=([^:]+)", endpoint)
    if match:
        return match.group(1)
    parts = endpoint.split(":")
    return parts[1] if len(parts) > 2 else "localhost"


def _guessable(client_id: str) -> bool:
    return len(client_id) < 16 or len(set(client_id)) < 8


def _identity(path: Path) -> object:
    """This instance's Ed25519 key from ``path`` (mode 0600), created on first use.

    The relay pins the public half to the client id: keep the file (and the
    data directory) to keep the id across restarts; never copy it elsewhere.
    """
    text, _ = files.read_or_create_secret(path, lambda: wire.identity_to_hex(wire.new_identity()))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SystemExit(
            f"arpc: {path} is readable by others (mode {mode:04o}); run: chmod 600 {path}"
        )
    try:
        return wire.identity_from_hex(text)
    except ValueError as e:
        raise SystemExit(f"arpc: {path} is not an arpc identity key ({e}); move it away to make a new one")


def makeService(config: Options) -> MultiService:
    """Build the client's service tree from its options."""
    install_unless_chosen()  # arp/reactor.py: epoll without a log context per event
    from twisted.internet import reactor

    reactor.callWhenRunning(options.install_log_level, config["log-level"])
    reactor.callWhenRunning(release_startup_memory)
    data_dir = files.ensure_dir(config["data-dir"] or files.default_data_dir("arpc"))
    if not config["no-log-file"]:
        observer = DailyFileObserver(open_log_directory(data_dir / "logs"), "arpc")
        globalLogPublisher.addObserver(observer)
    client_id = config["client-id"]
    if client_id is None:
        client_id, _ = files.read_or_create_secret(data_dir / "client-id", lambda: wire.random_hex(16))
    elif _guessable(client_id):
        log.warn(
            "client id {client_id!r} is short or guessable, and it is the token to reach your "
            "service: prefer the default random id",
            client_id=client_id,
        )
    identity = _identity(data_dir / "identity-key")
    server = config["server-addr"]
    relays = relay_addresses(config["server-addrs"]) if not config["control-endpoint"] else [server]
    control = config["control-endpoint"] or f"tcp:host={server}:port={config['control-port']}:timeout=10"
    proxy = config["proxy-endpoint"] or f"tcp:host={server}:port={config['proxy-port']}:timeout=10"
    public_host = server or _host_of(control)
    local_addr, local_port = config["local-addr"], config["local-port"]
    raw_tcp = bool(config["tcp"])
    top = MultiService()

    command = None
    if config["command-mode"]:
        command = _command_mode(config, reactor, data_dir, top, client_id)
        tunnel_protocol = command.tunnel_protocol
    else:
        from arp.client.forward import ForwardTunnel, backend_endpoint

        backend = backend_endpoint(reactor, local_addr, local_port)
        reactor.callWhenRunning(backend.check)  # "nothing listens on ..." at start
        # its own name: the relay loop below rebinds ``host`` (the closure reads it at each tunnel)
        host_header = config["host-header"]
        if host_header == "rewrite":
            host_header = backend.address
        rewrite_to = host_header.encode() if host_header else None

        def tunnel_protocol(header: bytes, tunnels: set) -> ForwardTunnel:
            return ForwardTunnel(header, backend, raw_tcp, tunnels, reactor, rewrite_to)

        log.info(
            "arpc {version} starting: client id {client_id}, forwarding to {addr}:{port}{tcp}",
            version=__version__,
            client_id=client_id,
            addr=local_addr,
            port=local_port,
            tcp=" (raw TCP)" if raw_tcp else "",
        )
    fatal = exit_with_status(reactor, 2)
    links: list[RelayLink] = []
    for relay in relays:
        if len(relays) > 1:  # one link per relay, each reconnecting on its own
            host = relay.replace(":", "\\:")  # an IPv6 address in an endpoint string
            control = f"tcp:host={host}:port={config['control-port']}:timeout=10"
            proxy = f"tcp:host={host}:port={config['proxy-port']}:timeout=10"
        link = RelayLink(
            clock=reactor,
            control_endpoint=clientFromString(reactor, control),
            control_description=control,
            proxy_endpoint=clientFromString(reactor, proxy),
            proxy_description=proxy,
            tunnel_protocol=tunnel_protocol,
            client_id=client_id,
            identity=identity,
            on_fatal=fatal,
            auth_key=config["auth-key"],
            mode="tcp" if raw_tcp else "http",
            remote_port=config["remote-port"] or 0,
            public_host=public_host,
            max_backoff=config["max-backoff"],
            access_token=command.owner_token if command is not None else None,
            on_public_url=command.announce if command is not None and not links else None,
        )
        link.relay = relay
        link.setServiceParent(top)
        links.append(link)
    if len(links) > 1:
        log.info("arpc keeps a link to {n} relays: {relays}", n=len(links), relays=", ".join(relays))
    if command is not None:
        command.guard.route_url = lambda: next((k.route_url for k in links if k.route_url), "")
        command.guard.relays = lambda: [
            {"relay": k.relay, "registered": k.control is not None} for k in links
        ]
    return top


def relay_addresses(hosts: list[str]) -> list[str]:
    """One relay per address: each name in ``hosts`` resolved (at start) to its addresses.

    A single name with a single address stays a name (so TLS checks it and DNS is
    asked again on every reconnect); a name that cannot be resolved now stays too.
    """
    import socket

    from twisted.internet.abstract import isIPAddress, isIPv6Address

    found: list[str] = []
    for host in hosts:
        addresses = [host]
        if not (isIPAddress(host) or isIPv6Address(host)):
            try:
                infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            resolved = list(dict.fromkeys(info[4][0] for info in infos))
            if len(resolved) > 1:
                addresses = resolved
        for address in addresses:
            if address not in found:
                found.append(address)
    return found


def _command_mode(
    config: Options, reactor: object, data_dir: Path, top: MultiService, client_id: str
) -> CommandService:
    """Add the command-mode service to ``top`` and return it."""
    from arp.client.command.service import CommandService
    from arp.listen import Listener

    command = CommandService(
        reactor,
        data_dir,
        binaries={
            "Claude": config["command-path"],
            "Codex": config["codex-path"],
            "Gemini": config["gemini-path"],
        },
        project_roots=config["project-root"],
        permission_mode=config["permission-mode"],
        max_permission_mode=config["max-permission-mode"],
        max_sessions=config["max-sessions"],
        cors_origins=config["cors-origin"],
        history_anywhere=bool(config["history-anywhere"]),
        api_hosts=config["api-host"],
        client_id=client_id,
        rotate_owner_token=bool(config["rotate-owner-token"]),
        revoke_all_tokens=bool(config["revoke-all-tokens"]),
        show_qr=not config["no-qr"],
        approval_timeout=config["approval-timeout"],
        oneshot=config["oneshot-agent"],
        acp_agents=config["acp-agent"],
        notify=config["notify"],
        push_allow=config["push-allow"],
        push_contact=config["push-contact"],
    )
    command.setServiceParent(top)
    if config["api-endpoint"]:
        Listener("api", config["api-endpoint"], command.api_site, reactor).setServiceParent(top)
    info = command.describe()
    log.info(
        "arpc {version} starting: client id {client_id}, command mode; projects under {roots}; {executors}",
        version=__version__,
        client_id=client_id,
        roots=info["roots"],
        executors=info["executors"],
    )
    return command


__all__ = ["Options", "makeService"]
