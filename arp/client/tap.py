"""``twistd arpc``: the options and the service tree of the client."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from arp import __version__, files, options, wire
from arp.client.link import RelayLink
from arp.logs import DailyFileObserver, open_log_directory

log = Logger()


class Options(usage.Options):
    """Command line of ``twistd arpc``."""

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
    ]
    optParameters = [
        ["server-addr", "s", None, "Host name or address of the relay (arps)."],
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
            "remote-port",
            None,
            0,
            "With --tcp: the public port to ask for (default: any the relay offers).",
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
            "Where arpc keeps its client id, instance key and logs (default: ~/.local/share/arpc).",
        ],
        [
            "log-level",
            None,
            None,
            "debug, info, warn or error (env ARP_LOG_LEVEL; default info).",
            options.log_level,
        ],
    ]

    def postOptions(self) -> None:
        if not self["server-addr"] and not self["control-endpoint"]:
            raise usage.UsageError("give the relay's address: --server-addr HOST")
        if not self["server-addr"] and not self["proxy-endpoint"]:
            raise usage.UsageError("--control-endpoint needs --proxy-endpoint (or --server-addr)")
        if self["local-port"] is None:
            raise usage.UsageError("give the local service's port: --local-port PORT")
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
            self["log-level"] = options.log_level(options.env_default("ARP_LOG_LEVEL", "info"))


def _host_of(endpoint: str) -> str:
    match = re.search(r"(?:^|:)host=([^:]+)", endpoint)
    if match:
        return match.group(1)
    parts = endpoint.split(":")
    return parts[1] if len(parts) > 2 else "localhost"


def _guessable(client_id: str) -> bool:
    return len(client_id) < 16 or len(set(client_id)) < 8


def makeService(config: Options) -> MultiService:
    """Build the client's service tree from its options."""
    from twisted.internet import reactor

    reactor.callWhenRunning(options.install_log_level, config["log-level"])
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
    instance_hex, _ = files.read_or_create_secret(data_dir / "instance-key", lambda: wire.random_hex(32))
    instance_token = bytes.fromhex(instance_hex)[: wire.TOKEN_SIZE]
    server = config["server-addr"]
    control = config["control-endpoint"] or f"tcp:host={server}:port={config['control-port']}:timeout=10"
    proxy = config["proxy-endpoint"] or f"tcp:host={server}:port={config['proxy-port']}:timeout=10"
    public_host = server or _host_of(control)
    local_addr, local_port = config["local-addr"], config["local-port"]

    from arp.client.forward import ForwardTunnel, backend_endpoint

    backend = backend_endpoint(reactor, local_addr, local_port)
    raw_tcp = bool(config["tcp"])

    def tunnel_protocol(header: bytes, tunnels: set) -> ForwardTunnel:
        return ForwardTunnel(header, backend, raw_tcp, tunnels)

    log.info(
        "arpc {version} starting: client id {client_id}, forwarding to {addr}:{port}{tcp}",
        version=__version__,
        client_id=client_id,
        addr=local_addr,
        port=local_port,
        tcp=" (raw TCP)" if raw_tcp else "",
    )
    link = RelayLink(
        clock=reactor,
        control_endpoint=clientFromString(reactor, control),
        proxy_endpoint=clientFromString(reactor, proxy),
        tunnel_protocol=tunnel_protocol,
        client_id=client_id,
        instance_token=instance_token,
        auth_key=config["auth-key"],
        mode="tcp" if raw_tcp else "http",
        remote_port=config["remote-port"],
        public_host=public_host,
        max_backoff=config["max-backoff"],
    )
    top = MultiService()
    link.setServiceParent(top)
    return top


__all__ = ["Options", "makeService", "Path"]
