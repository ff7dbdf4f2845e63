"""``twistd arps``: the options and the service tree of the relay."""

from __future__ import annotations

from arp.lean import MemoryTrimmer, release_startup_memory, skip_tls_if_unused

skip_tls_if_unused()  # before anything imports Twisted's endpoints (see arp/lean.py)

import os

from twisted.application.service import MultiService
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage

from arp import files, options
from arp.listen import DrainingListener, LazyFactory, Listener
from arp.mismatch import endpoint_is_tls
from arp.reactor import install_unless_chosen
from arp.server.arpc_line import ArpcLine, KeySource
from arp.server.control import ControlFactory
from arp.server.origins import public_url_parts
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from arp.server.tunnel import TunnelFactory
from arp.tls import HTTP_1_1
from arp.wire import random_hex

log = Logger()


class Options(options.TwistdOptions):
    """Command line of ``twistd arps``."""

    command = "arps"
    synopsis = "[options]"
    longdesc = (
        "The ARP relay.  arpc clients register on the control port and keep warm "
        "tunnels open to the proxy port.  Each HTTP client gets an origin of its "
        "own (a port from --client-ports, or <id>.<domain>); API clients may also "
        "use the public port with ?token= or an X-ARP-Token header.  Every "
        "--*-endpoint takes a Twisted endpoint string, e.g. "
        "ssl:443:privateKey=key.pem:certKey=cert.pem for TLS."
    )
    optParameters = [
        ["control-port", None, 17001, "Port where arpc clients register.", options.port_number],
        ["proxy-port", None, 17002, "Port where arpc clients open tunnels.", options.port_number],
        ["public-port", None, 17003, "Port where browsers and API clients connect.", options.port_number],
        ["control-endpoint", None, None, "Endpoint string for the control port (overrides --control-port)."],
        ["proxy-endpoint", None, None, "Endpoint string for the proxy port (overrides --proxy-port)."],
        ["public-endpoint", None, None, "Endpoint string for the public port (overrides --public-port)."],
        [
            "auth-key",
            None,
            None,
            "Secret arpc must prove to register (env ARP_AUTH_KEY). Default: generated once "
            "and kept in the data directory.",
        ],
        [
            "auth-keys",
            None,
            None,
            "File of per-tenant auth keys, one 'name key' per line (# comments); each tenant's "
            "arpc uses its own key. With --auth-key too, that key is tenant 'default'.",
        ],
        ["pool-size", None, 5, "Warm idle tunnels kept per client.", options.positive_int],
        ["max-tunnels", None, 200, "Most tunnels one client may hold open.", options.positive_int],
        [
            "max-clients-per-tenant",
            None,
            0,
            "Most client ids one auth key (tenant) may hold registered on this relay, online or "
            "retained; 0: no limit. Set it on a relay shared with --auth-keys, so one tenant "
            "cannot take every client port.",
            options.count_or_zero,
        ],
        [
            "retention",
            None,
            300.0,
            "Seconds a disconnected client's registration is kept (requests get 503 meanwhile).",
            options.seconds,
        ],
        [
            "tunnel-timeout",
            None,
            10.0,
            "Seconds a request waits for a tunnel when the pool is empty (then 504).",
            options.seconds,
        ],
        [
            "response-timeout",
            None,
            300.0,
            "Seconds from the end of a request to the service's response head (then 504).",
            options.seconds,
        ],
        [
            "tunnel-max-idle",
            None,
            600.0,
            "Seconds an idle tunnel is kept before it is replaced by a fresh one.",
            options.seconds,
        ],
        [
            "heartbeat",
            None,
            10.0,
            "Seconds between control-channel heartbeats; a peer silent for 3 of them is dropped.",
            options.seconds,
        ],
        [
            "head-timeout",
            None,
            30.0,
            "Seconds a public client has to send a complete request head (then 408).",
            options.seconds,
        ],
        [
            "idle-timeout",
            None,
            75.0,
            "Seconds an idle keep-alive public connection is kept.",
            options.seconds,
        ],
        [
            "max-head-size",
            None,
            65536,
            "Largest request head accepted, in bytes (then 431).",
            options.positive_int,
        ],
        [
            "max-body-size",
            None,
            0,
            "Largest request body accepted, in bytes (then 413); 0 means no limit.",
            int,
        ],
        [
            "public-url",
            None,
            None,
            "Base URL clients print, e.g. https://relay.example.com. Default: "
            "<scheme>://<server address arpc used>:<public port>. An https:// URL in front of a "
            "plain public endpoint means a TLS-terminating proxy: cookies get Secure and services "
            "see X-Forwarded-Proto: https.",
        ],
        [
            "hsts",
            None,
            0,
            "Over HTTPS, send Strict-Transport-Security: max-age=SECONDS with every response "
            "(0: off). Needs a TLS public endpoint or an https:// --public-url.",
            int,
        ],
        [
            "domain",
            None,
            None,
            "Give each client the origin <client id>.<domain> (wildcard DNS and, for TLS, a "
            "wildcard certificate); replaces --client-ports.",
        ],
        [
            "client-ports",
            None,
            "17100-17999",
            "Without --domain: public ports handed out one per HTTP client, so each has a "
            "browser origin of its own (served like the public port, with its TLS); 'none' to "
            "serve browsers on no origin of their own.",
            options.port_range_or_none,
        ],
        [
            "tcp-ports",
            None,
            None,
            "Port range offered to arpc --tcp clients, e.g. 20000-20100 (default: none).",
            options.port_range,
        ],
        ["tcp-interface", None, None, "Interface the TCP ports listen on (default: all interfaces)."],
        [
            "guess-limit",
            None,
            30,
            "Unknown-token requests allowed per source address per minute (then 429).",
            options.positive_int,
        ],
        [
            "max-connections",
            None,
            0,
            "Public connections (public port and clients' own ports) open at once; more are closed "
            "at once (0: three quarters of the descriptor limit, the rest kept for control and proxy).",
            options.count_or_zero,
        ],
        [
            "max-connections-per-address",
            None,
            0,
            "Public connections one source address (an IPv6 /64) may hold open (0: a quarter of "
            "--max-connections).",
            options.count_or_zero,
        ],
        [
            "grace",
            None,
            10.0,
            "On shutdown, seconds in-flight requests get to finish before they are cut.",
            options.seconds,
        ],
        [
            "admin-endpoint",
            None,
            "tcp:17004:interface=127.0.0.1",
            "Endpoint of the admin panel, JSON API and /metrics ('none' to disable).",
        ],
        [
            "admin-token",
            None,
            None,
            "Token the admin endpoint requires (env ARP_ADMIN_TOKEN); required unless it is loopback-only.",
        ],
        [
            "data-dir",
            None,
            None,
            "Where arps keeps its generated auth key and the client ids it serves, so that after a "
            "restart it answers them as reconnecting (default: ~/.local/share/arps).",
        ],
        [
            "redis",
            None,
            None,
            "Share state with other relays in Redis: redis://[:password@]host:port/db (rediss:// for "
            "TLS; env ARP_REDIS). See README 'Running several relays'.",
        ],
        [
            "advertise",
            None,
            None,
            "With --redis: HOST:PORT other relays reach this relay's proxy port at (default: the "
            "proxy port's own address, or this host's address if it listens on all interfaces).",
        ],
        [
            "redis-timeout",
            None,
            30.0,
            "With --redis: seconds a relay may go without Redis before it drops its clients; also how "
            "long a dead relay counts as holding its clients, and the settle window after Redis "
            "lost its data (give every relay the same).",
            options.seconds,
        ],
        [
            "relay-key",
            None,
            None,
            "With --redis (and required by it): the secret the relays of one group share for their "
            "connections to each other, at least 16 characters, not a tenant's auth key "
            "(env ARP_RELAY_KEY).",
        ],
        ["relay-key-file", None, None, "With --redis: read --relay-key from this file."],
        [
            "log-level",
            None,
            None,
            "debug, info, warn or error (env ARP_LOG_LEVEL; default info).",
            options.log_level,
        ],
    ]

    def postOptions(self) -> None:
        if self["pool-size"] > 1000:
            raise usage.UsageError("--pool-size must be at most 1000")
        if self["pool-size"] > self["max-tunnels"]:
            raise usage.UsageError("--pool-size cannot exceed --max-tunnels")
        if self["heartbeat"] <= 0:
            raise usage.UsageError("--heartbeat must be positive")
        for name, port in (("control", "control-port"), ("proxy", "proxy-port"), ("public", "public-port")):
            if not self[f"{name}-endpoint"]:
                self[f"{name}-endpoint"] = f"tcp:{self[port]}:backlog=1024"
        if self["auth-key"] is None:
            self["auth-key"] = options.env_default("ARP_AUTH_KEY")
        if self["admin-token"] is None:
            self["admin-token"] = options.env_default("ARP_ADMIN_TOKEN")
        if self["admin-endpoint"].lower() in ("none", "off", ""):
            self["admin-endpoint"] = None
        elif not self["admin-token"]:
            try:
                loopback = options.is_loopback(self["admin-endpoint"])  # as Twisted will bind it
            except ValueError as e:
                raise usage.UsageError(f"--admin-endpoint {e}") from e
            if not loopback:
                raise usage.UsageError(
                    "--admin-endpoint is reachable from other hosts: set --admin-token (or ARP_ADMIN_TOKEN)"
                )
        if isinstance(self["client-ports"], str):  # the default is not coerced by usage.Options
            self["client-ports"] = options.port_range_or_none(self["client-ports"])
        own, tcp = self["client-ports"], self["tcp-ports"]
        if own and tcp and not self["domain"] and own[0] <= tcp[1] and tcp[0] <= own[1]:
            raise usage.UsageError("--client-ports and --tcp-ports overlap: give them separate ranges")
        if self["client-ports"] and not self["domain"]:
            from arp.server.origins import endpoint_with_port

            if endpoint_with_port(self["public-endpoint"], 1) is None:
                raise usage.UsageError(
                    "--client-ports needs a tcp: or ssl: --public-endpoint to copy for each client's "
                    "port; use --domain, or --client-ports none"
                )
        public_url = self["public-url"]
        if public_url and not public_url.lower().startswith(("http://", "https://")):
            raise usage.UsageError("--public-url must start with http:// or https://")
        if self["hsts"] < 0:
            raise usage.UsageError("--hsts must be a number of seconds, or 0 for off")
        if self["hsts"] and public_scheme(self["public-endpoint"], public_url) != "https":
            raise usage.UsageError(
                "--hsts needs HTTPS: a TLS --public-endpoint (ssl:...) or an https:// --public-url"
            )
        if self["log-level"] is None:
            self["log-level"] = options.env_log_level()
        if self["redis"] is None:
            self["redis"] = options.env_default("ARP_REDIS")
        if self["redis"]:
            from arp.server.cluster import BadRedisURL, RedisURL

            try:
                self["redis-url"] = RedisURL.parse(self["redis"])
            except BadRedisURL as e:
                raise usage.UsageError(f"--redis {e}") from e
        elif self["advertise"]:
            raise usage.UsageError("--advertise is for relays sharing state: it needs --redis")
        if self["advertise"]:
            host, _, port = self["advertise"].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise usage.UsageError("--advertise must be HOST:PORT, e.g. 10.0.0.5:17002")
        if self["redis-timeout"] < 3:
            raise usage.UsageError("--redis-timeout must be at least 3 seconds")
        self._relay_key()

    def _relay_key(self) -> None:
        """--relay-key, --relay-key-file or ARP_RELAY_KEY: required with --redis, only with it."""
        if self["relay-key"] and self["relay-key-file"]:
            raise usage.UsageError("give --relay-key or --relay-key-file, not both")
        if not self["redis"]:
            if self["relay-key"] or self["relay-key-file"]:
                raise usage.UsageError("--relay-key is for relays sharing state: it needs --redis")
            return
        if self["relay-key-file"]:
            try:
                with open(self["relay-key-file"], encoding="utf-8") as f:
                    self["relay-key"] = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"cannot read --relay-key-file {self['relay-key-file']}: {e}") from e
        elif self["relay-key"] is None:
            self["relay-key"] = options.env_default("ARP_RELAY_KEY")
        if not self["relay-key"]:
            raise usage.UsageError(
                "--redis needs --relay-key KEY (or --relay-key-file PATH, or ARP_RELAY_KEY): a secret "
                "the relays of the group share for their connections to each other, not an auth key"
            )
        if len(self["relay-key"]) < 16:
            raise usage.UsageError("--relay-key must be at least 16 characters (openssl rand -hex 24)")
        if self["relay-key"] == self["auth-key"]:
            raise usage.UsageError("--relay-key must not be the auth key: every arpc knows that one")


def read_auth_keys(path: str) -> dict[str, str]:
    """Read an ``--auth-keys`` file: ``name key`` per line; SystemExit with the line if it is bad."""
    keys: dict[str, str] = {}
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise SystemExit(f"arps: cannot read --auth-keys {path}: {e.strerror}")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] in keys:
            why = "duplicate tenant name" if len(parts) == 2 else "expected 'name key'"
            raise SystemExit(f"arps: --auth-keys {path} line {number}: {why}")
        keys[parts[0]] = parts[1]
    if not keys:
        raise SystemExit(f"arps: --auth-keys {path} names no tenant")
    return keys


def _scheme(endpoint: str) -> str:
    return "https" if endpoint.split(":", 1)[0] in ("ssl", "tls", "le", "lets") else "http"


def public_scheme(endpoint: str, public_url: str | None) -> str:
    """``https`` when the public side is HTTPS: a TLS endpoint, or an https:// public URL (a
    TLS-terminating proxy in front of a plain endpoint); else ``http``."""
    if public_url and public_url.lower().startswith("https://"):
        return "https"
    return _scheme(endpoint)


def makeService(config: Options) -> MultiService:
    """Build the relay's service tree from its options."""
    install_unless_chosen()  # arp/reactor.py: epoll without a log context per event
    from twisted.internet import reactor

    reactor.callWhenRunning(options.install_log_level, config["log-level"])
    reactor.callWhenRunning(release_startup_memory)
    trimmer = MemoryTrimmer(reactor)  # memory back after a flood (see arp/lean.py)
    reactor.callWhenRunning(trimmer.start)
    top = MultiService()
    auth_key = config["auth-key"]
    auth_keys = read_auth_keys(config["auth-keys"]) if config["auth-keys"] else {}
    if auth_key and auth_keys:
        auth_keys.setdefault("default", auth_key)
    if auth_keys:
        log.info("auth keys of {n} tenants from {path}", n=len(auth_keys), path=config["auth-keys"])
    key_source = KeySource(value=auth_key) if auth_key else None
    if auth_keys and not auth_key:
        key_source = KeySource(path=os.path.abspath(config["auth-keys"]), tenant=next(iter(auth_keys)))
    if not auth_key and not auth_keys:
        data_dir = files.ensure_dir(config["data-dir"] or files.default_data_dir("arps"))
        path = data_dir / "auth-key"
        auth_key, created = files.read_or_create_secret(path, lambda: random_hex(24))
        if created:  # the arpc command line below shows it this once
            log.info("generated an auth key in {path}", path=str(path))
            key_source = KeySource(value=auth_key)
        else:
            log.info("using the auth key kept in {path} (give it to arpc as --auth-key)", path=str(path))
            key_source = KeySource(path=str(path.absolute()))
    public_endpoint = config["public-endpoint"]
    public_url = config["public-url"]
    scheme = public_scheme(public_endpoint, public_url)
    browser_scheme = scheme  # https also behind a TLS-terminating proxy (--public-url https://...)
    relay_config = RelayConfig(
        pool_size=config["pool-size"],
        max_tunnels=config["max-tunnels"],
        max_clients_per_tenant=config["max-clients-per-tenant"],
        retention=config["retention"],
        tunnel_timeout=config["tunnel-timeout"],
        heartbeat=config["heartbeat"],
        tunnel_max_idle=config["tunnel-max-idle"],
        public_url=(public_url.rstrip("/") if public_url else ""),
        tcp_ports=config["tcp-ports"],
    )
    registry = Registry(relay_config, auth_keys or auth_key, reactor, known=_known_clients(config))
    registry.setServiceParent(top)
    if config["tcp-ports"]:
        from arp.server.tcp import TCPPorts

        first, last = config["tcp-ports"]
        ports = TCPPorts(first, last, config["tcp-interface"] or "", reactor)
        registry.tcp_opener = lambda record: ports.open_for(record, registry)
    public_config = PublicConfig(
        scheme=scheme,
        domain=None,  # own origins (host names or ports) are chosen below, see _origins
        max_head=config["max-head-size"],
        max_body=config["max-body-size"],
        head_timeout=config["head-timeout"],
        idle_timeout=config["idle-timeout"],
        response_timeout=config["response-timeout"],
        guess_limit=config["guess-limit"],
        secure_cookies=browser_scheme == "https",
        hsts=config["hsts"],
    )
    public_factory = PublicFactory(registry, public_config, reactor, budget=_budget(config, reactor))
    control_factory, tunnel_factory = ControlFactory(registry, reactor), TunnelFactory(registry, reactor)
    control_factory.proxy_tls = endpoint_is_tls(config["proxy-endpoint"])  # told to arpc
    tunnel_factory.mismatch = control_factory.mismatch  # one log limit for both ports
    control = Listener("control", config["control-endpoint"], control_factory, reactor)
    control.setServiceParent(top)
    proxy = Listener("proxy", config["proxy-endpoint"], tunnel_factory, reactor)
    proxy.setServiceParent(top)
    public = DrainingListener("public", public_endpoint, public_factory, reactor, config["grace"])
    public.setServiceParent(top)
    ArpcLine(
        public_url_parts(public_url)[1] if public_url else None,
        (config["control-endpoint"], lambda: control.port),
        (config["proxy-endpoint"], lambda: proxy.port),
        key_source,
    ).setServiceParent(top)  # after the listeners: logs the ports they hold
    if config["admin-endpoint"]:

        def admin() -> IProtocolFactory:
            from arp.server.admin import admin_site  # twisted.web: about 3 MB, loaded on first use

            return admin_site(registry, public_factory, config["admin-token"])

        admin_factory = LazyFactory(admin, (HTTP_1_1,))  # the admin site speaks HTTP/1.1 (TLS ALPN)
        Listener("admin", config["admin-endpoint"], admin_factory, reactor).setServiceParent(top)
    if config["redis"]:
        options.require_extra("txredisapi", "--redis", "redis")
        from arp.server.cluster import Cluster, advertised_address

        Cluster(
            registry,
            config["redis-url"],
            reactor,
            timeout=config["redis-timeout"],
            advertise=config["advertise"],
            proxy_address=lambda: advertised_address(proxy.port),
            relay_key=_relay_key_of_its_own(config["relay-key"], auth_keys or {"default": auth_key}),
        ).setServiceParent(top)

    def listening_port() -> int:  # known once listening (it may be tcp:0)
        return public.port.getHost().port if public.port is not None else config["public-port"]

    origins = _origins(config, public_factory, reactor, browser_scheme, listening_port)
    if origins is not None:
        public_factory.use_origins(origins)

    def public_url_of(client_id: str) -> str:
        record = registry.clients.get(client_id)
        if origins is not None and record is not None and (record.label or record.origin_port):
            return origins.url_for(record)  # the client's own origin
        return relay_config.public_url or f"{scheme}://{{host}}:{listening_port()}"

    registry.public_url = public_url_of  # type: ignore[method-assign]
    return top


def _relay_key_of_its_own(relay_key: str, auth_keys: dict[str, str]) -> str:
    """``relay_key``, unless a tenant knows it (it is one of the ``--auth-keys``): SystemExit."""
    tenant = next((name for name, key in auth_keys.items() if key == relay_key), None)
    if tenant is not None:
        raise SystemExit(
            f"arps: --relay-key is tenant {tenant}'s auth key: give the relays a secret of their own"
        )
    return relay_key


def _budget(config: Options, reactor: object) -> object:
    """The caps on open public connections, from the options or the descriptor limit (whose soft
    value is raised to the hard one here)."""
    from arp.server.budget import ConnectionBudget, default_caps, raise_descriptor_limit

    limit = raise_descriptor_limit()
    total, per_source = default_caps(limit)
    total = config["max-connections"] or total
    per_source = config["max-connections-per-address"] or max(1, total // 4)
    log.info(
        "up to {total} public connections at once, {per_source} per source address "
        "(descriptor limit {limit})",
        total=total,
        per_source=per_source,
        limit=limit,
    )
    return ConnectionBudget(total, per_source, reactor)


def _known_clients(config: Options) -> object:
    """The log of the ids this relay served, opened (see :mod:`arp.server.known`); exits with the
    reason in words if the data dir cannot be read or written."""
    from arp.server.known import KnownClients, KnownClientsError

    try:
        known = KnownClients(files.ensure_dir(config["data-dir"] or files.default_data_dir("arps")))
        known.open()
    except (KnownClientsError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SystemExit(
            f"arps: {why} (the relay keeps the client ids it serves in its data dir, so that a "
            "restart does not forget them: fix its permissions or give another --data-dir)"
        ) from None
    return known


def _origins(
    config: Options, front: PublicFactory, reactor: object, browser_scheme: str, listening_port: object
) -> object | None:
    """The own origins of HTTP clients: host names under --domain, else ports from --client-ports."""
    from arp.server.origins import DomainOrigins, PortOrigins, endpoint_with_port, public_url_parts

    public_url = config["public-url"]
    host, url_port = None, ""
    if public_url:
        _, host, url_port = public_url_parts(public_url)
    if config["domain"]:

        def port_suffix() -> str:
            if public_url:
                return url_port
            port = listening_port()
            return "" if (browser_scheme, port) in (("http", 80), ("https", 443)) else f":{port}"

        return DomainOrigins(config["domain"], browser_scheme, port_suffix)
    if not config["client-ports"]:
        return None
    first, last = config["client-ports"]
    endpoint = config["public-endpoint"]

    def endpoint_for(port: int) -> str:
        return endpoint_with_port(endpoint, port)

    # with several tenants, none may take more than half of the ports (the others' share)
    quota = max(1, (last - first + 1) // 2) if config["auth-keys"] else 0
    return PortOrigins(first, last, endpoint_for, front, reactor, browser_scheme, host, tenant_quota=quota)
