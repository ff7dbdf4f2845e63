"""Many arpc clients in one process: N registrations with their warm pools, for the scale figures.

Each client is a real :class:`arp.client.link.RelayLink` (the control protocol,
the registration proof, heartbeats, tunnels opened on the relay's request) with
forward-mode tunnels to ``--backend-port``; only the process is shared, so a
thousand clients do not need a thousand Python interpreters.  Prints
``PROGRESS registered tunnels`` four times a second and ``READY ...`` once every client
is registered and holds its pool, then runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from arp import wire
from arp.client.forward import ForwardTunnel, backend_endpoint
from arp.client.link import RelayLink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--backend-port", type=int, required=True)
    parser.add_argument("--auth-key", required=True)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50, help="clients started per 50 ms")
    parser.add_argument("--prefix", default="scale")
    parser.add_argument("--hosts", default="127.0.0.1", help="relays, comma-separated (spread)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])], redirectStandardIO=False
    )

    backend = backend_endpoint(reactor, "127.0.0.1", args.backend_port)
    hosts = args.hosts.split(",")
    controls = [TCP4ClientEndpoint(reactor, h, args.control_port, timeout=10) for h in hosts]
    proxies = [TCP4ClientEndpoint(reactor, h, args.proxy_port, timeout=10) for h in hosts]

    def tunnel_protocol(header: bytes, tunnels: set) -> ForwardTunnel:
        return ForwardTunnel(header, backend, False, tunnels)

    links: list[RelayLink] = []
    for i in range(args.count):
        links.append(
            RelayLink(
                clock=reactor,
                control_endpoint=controls[i % len(hosts)],
                proxy_endpoint=proxies[i % len(hosts)],
                tunnel_protocol=tunnel_protocol,
                client_id=f"{args.prefix}-{i:05d}-{os.urandom(12).hex()}",
                identity=wire.new_identity(),
                auth_key=args.auth_key,
            )
        )
    print("IDS " + " ".join(link.client_id for link in links[:3] + links[-3:]), flush=True)

    started = [0]

    def start_batch() -> None:
        for link in links[started[0] : started[0] + args.batch]:
            link.startService()
        started[0] = min(len(links), started[0] + args.batch)
        if started[0] < len(links):
            reactor.callLater(0.05, start_batch)

    ready = [False]

    def report() -> None:
        registered = sum(1 for link in links if link.control is not None and link.registrations)
        tunnels = sum(len(link.tunnels) for link in links)
        print(f"PROGRESS {registered} {tunnels}", flush=True)
        if not ready[0] and registered == len(links) and tunnels >= len(links) * args.pool_size:
            ready[0] = True
            print(f"READY {registered} {tunnels}", flush=True)

    reactor.callWhenRunning(start_batch)
    task.LoopingCall(report).start(0.25, now=False)  # fine enough to time a return after a relay restart

    def stop() -> None:
        for link in links:
            if link.running:
                link.stopService()

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()


if __name__ == "__main__":
    main()
