"""In-process microbenchmark of the relay's per-request work (no sockets, no reactor).

Drives one keep-alive public connection of :class:`arp.server.public.PublicHTTPProtocol` over
StringTransports: a GET in, the head out to a pooled tunnel, a 1 KiB response back, the tunnel
returned to the pool; prints microseconds of CPU per request.  Run it against two trees,
alternating, to compare (the machine's noise is far below the figure's change that matters)::

    for i in 1 2 3; do
        PYTHONPATH=/path/to/old python3 bench/exchange.py
        PYTHONPATH=$PWD python3 bench/exchange.py
    done
"""

from __future__ import annotations

import sys
import time

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from arp import wire
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from arp.server.tunnel import TunnelServerProtocol
from tests.control_helpers import register_record

KEY = "bench-key"
#: what wrk sends in ``bench/run.py`` (the token in the query) and what nginx answers there
REQUEST = b"GET /1k?token=client1 HTTP/1.1\r\nHost: 127.0.0.1:17001\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 17:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Tue, 01 Dec 2026 17:30:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6929d0b8-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)


class _Control:
    """The least a registered client's control connection must offer."""

    def __init__(self) -> None:
        self.transport = StringTransport()

    def open_tunnels(self, count: int) -> None:
        pass

    def callRemote(self, *args: object, **kwargs: object) -> None:  # noqa: N802 - AMP's name
        pass


def run(requests: int) -> float:
    """Microseconds of CPU per request over ``requests`` keep-alive requests."""
    clock = Clock()
    registry = Registry(RelayConfig(pool_size=1, retention=60), KEY, clock)
    record = register_record(registry, _Control(), "client1", KEY)
    registry.start_pool(record)
    factory = PublicFactory(registry, PublicConfig(), clock)
    tunnel = TunnelServerProtocol(registry, clock)
    tunnel.makeConnection(StringTransport())
    tunnel.dataReceived(wire.tunnel_header("client1", record.tunnel_secret))
    public = factory.buildProtocol(None)
    out = StringTransport()
    public.makeConnection(out)
    sent = tunnel.transport
    start = time.process_time()
    for _ in range(requests):
        public.dataReceived(REQUEST)
        tunnel.dataReceived(RESPONSE)
        sent.clear()
        out.clear()
    elapsed = time.process_time() - start
    if tunnel not in record.pool.idle or record.requests != requests or record.statuses != {200: requests}:
        raise SystemExit("the requests were not all relayed: the benchmark is broken")
    return elapsed / requests * 1e6


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    run(2000)  # warm up
    print(f"{min(run(n) for _ in range(5)):.2f} us/request")
