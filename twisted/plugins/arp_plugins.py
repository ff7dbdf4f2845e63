"""twistd plugins for ARP: ``twistd arps`` (the relay) and ``twistd arpc`` (the client).

Only ServiceMaker and Reactor lines live here so that ``twistd --help`` stays fast; the real
code is imported when a plugin is used.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

arps = ServiceMaker(
    "ARP relay server",
    "arp.server.tap",
    "Public relay: control, proxy and public endpoints for arpc clients.",
    "arps",
)
arpc = ServiceMaker(
    "ARP client",
    "arp.client.tap",
    "Connects out to arps and exposes a local service (or the agent API) through it.",
    "arpc",
)
arp_epoll = Reactor(
    "arp-epoll",
    "arp.reactor",
    "epoll without a log context per event (arps and arpc use it unless --reactor says otherwise).",
)
