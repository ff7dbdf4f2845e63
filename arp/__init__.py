"""ARP: AI agent reverse proxy.

``arps`` is the public relay, ``arpc`` the client behind NAT.  Both are twistd
plugins (see ``twisted/plugins/arp_plugins.py``).
"""

__version__ = "0.1.0"
