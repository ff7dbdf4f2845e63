"""twistd plugins for ARP: ``twistd arps`` (the relay) and ``twistd arpc`` (the client).

Only ServiceMaker lines live here so that ``twistd --help`` stays fast; the real
code is imported when a plugin is used.
"""

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
