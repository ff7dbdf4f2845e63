"""The floor of ARP's stack: a plain Twisted TCP relay, for the benchmark's ``splice`` column.

Listens on ``LISTEN_PORT`` (127.0.0.1) and joins every connection to a new
connection to ``TARGET_PORT``, with the same pieces ARP relays bytes with
(:class:`arp.splice.SpliceEnd` with flow control, ``TCP_NODELAY``, the
arp-epoll reactor) and nothing else: no HTTP, no routing, no pool.  Two of
these in a row (``client -> A -> B -> backend``) are the least a two-process
Twisted relay can cost on this machine; the difference to the ``arp`` column is
what ARP's per-request HTTP routing costs.

    python3 bench/splice.py LISTEN_PORT TARGET_PORT
"""

from __future__ import annotations

import sys

sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # no TLS here, as in arps and arpc (arp/lean.py)

from arp.reactor import install  # noqa: E402

install()

from twisted.internet import protocol, reactor  # noqa: E402

from arp.splice import SpliceEnd, tune  # noqa: E402


class Outbound(SpliceEnd):
    """The connection to the target: joined with the inbound one once it is up."""

    def connectionMade(self) -> None:
        tune(self.transport)
        inbound = self.factory.inbound
        if inbound.transport.disconnected:
            self.transport.loseConnection()
            return
        self.splice_to(inbound)
        inbound.transport.resumeProducing()


class Inbound(SpliceEnd):
    """An accepted connection: paused until its outbound connection is up."""

    def connectionMade(self) -> None:
        tune(self.transport)
        self.transport.pauseProducing()
        factory = protocol.ClientFactory()
        factory.protocol = Outbound
        factory.inbound = self
        factory.clientConnectionFailed = lambda connector, reason: self.transport.loseConnection()
        reactor.connectTCP("127.0.0.1", self.factory.target, factory, timeout=10)


def main(argv: list[str]) -> None:
    listen, target = int(argv[1]), int(argv[2])
    factory = protocol.Factory.forProtocol(Inbound)
    factory.target = target
    port = reactor.listenTCP(listen, factory, interface="127.0.0.1")
    print(f"splice listening on 127.0.0.1:{port.getHost().port} -> 127.0.0.1:{target}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
