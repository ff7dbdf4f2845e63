"""TLS on ARP's endpoints: ALPN that every client can use, and handshake failures in words.

Twisted installs an ALPN callback on every server context it makes from an
``ssl:`` endpoint.  Its choice comes from the wrapped factory when that factory
provides :class:`~twisted.internet.interfaces.IProtocolNegotiationFactory`; a
factory that does not (such as a plain ``Factory``) makes it answer every
client that offers ALPN (curl, browsers, most HTTP libraries) with an empty
protocol name, which OpenSSL turns into a fatal ``internal error`` alert.  And
when a client offers nothing the factory speaks (``h2`` alone), the same empty
answer fails the same way.

So every listening factory that speaks HTTP/1.1 says so through
``acceptableProtocols()`` (:class:`NegotiatesHTTP11`), and :func:`negotiate`
replaces Twisted's choice on ``ssl:`` endpoints with one that follows RFC 7301:
the first of the factory's protocols that the client offered; a fatal
``no_application_protocol`` alert when the client offered only others (``h2``
alone: it learns at once that this server speaks HTTP/1.1, rather than sending
an HTTP/2 preface to an HTTP/1.1 parser); and no ALPN at all for a client that
offers none, or on a port whose protocol has no ALPN name (control, proxy).

OpenSSL is imported only inside the functions that need it: ``arp/lean.py``
keeps it out of processes that use no TLS.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import ILoggingContext, IProtocolFactory, IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import implementer

from arp.twisted_private import ssl_context_factory

HTTP_1_1 = b"http/1.1"

log = Logger()


@implementer(IProtocolNegotiationFactory)
class NegotiatesHTTP11:
    """Mixin for a factory whose protocol speaks HTTP/1.1: ALPN selects ``http/1.1``."""

    def acceptableProtocols(self) -> list[bytes]:
        """The ALPN names this factory's protocol speaks."""
        return [HTTP_1_1]


def protocols_of(factory: object) -> tuple[bytes, ...]:
    """The ALPN names ``factory`` says its protocol speaks (none if it does not say)."""
    negotiating = IProtocolNegotiationFactory(factory, None)
    return tuple(negotiating.acceptableProtocols()) if negotiating is not None else ()


def negotiate(endpoint: object, protocols: Sequence[bytes]) -> bool:
    """Make the TLS server ``endpoint`` choose its ALPN protocol from ``protocols`` (see above).

    Also drops the server's own certificate from ``extraCertChain``, so that a
    ``fullchain.pem`` (or one combined PEM) can be named both as ``certKey``
    and as ``extraCertChain`` without the certificate being sent twice.

    Returns False, changing nothing, for an endpoint that is not an ``ssl:``
    one (plain TCP, or a TLS endpoint from a plugin whose context we cannot
    reach); those keep Twisted's choice, which the factory's
    ``acceptableProtocols()`` still makes right for every client that offers
    one of them.
    """
    creator = ssl_context_factory(endpoint)
    get_context = getattr(creator, "getContext", None)
    if get_context is None:
        return False
    leaf = getattr(creator, "certificate", None)
    chain = getattr(creator, "extraCertChain", None)
    if leaf is not None and chain:
        creator.extraCertChain = [c for c in chain if c.digest("sha256") != leaf.digest("sha256")]
    get_context().set_alpn_select_callback(_selector(tuple(protocols)))  # builds the context
    return True


@implementer(IProtocolFactory, ILoggingContext)
class ChoiceMade:
    """The factory listening on an endpoint whose ALPN choice :func:`negotiate` made.

    It hides the real factory's :class:`IProtocolNegotiationFactory`: Twisted
    before 26 (the last releases for Python 3.9, so for Debian's PyPy) installs
    its own choice on the context at every connection of a factory providing it,
    over ours, and that one answers a client offering only ``h2`` with the
    ``internal error`` alert.  Everything else goes to the real factory.
    """

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: object) -> object:
        return self.factory.buildProtocol(addr)

    def logPrefix(self) -> str:
        """The real factory's log prefix."""
        prefix = getattr(self.factory, "logPrefix", None)
        return prefix() if prefix is not None else self.factory.__class__.__name__


def _selector(ours: tuple[bytes, ...]):  # noqa: ANN202 -- returns a pyOpenSSL callback
    from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS, Connection, Error

    class NoApplicationProtocol(Error):
        """The client offered only ALPN protocols this port does not speak."""

    def select(connection: Connection, offered: list[bytes]) -> bytes | object:
        for name in ours:
            if name in offered:
                return name
        if not ours:
            return NO_OVERLAPPING_PROTOCOLS  # not an ALPN protocol: carry on as if none was offered
        # raising makes pyOpenSSL answer with the fatal no_application_protocol alert (RFC 7301 3.2)
        # and re-raise this from the handshake, where Twisted closes the connection; the argument
        # has the shape of OpenSSL's error queue, which Twisted reads
        offers = b", ".join(offered).decode("ascii", "replace")
        reason = f"no application protocol: the client offered {offers}"
        raise NoApplicationProtocol([("arp", "alpn", reason)])

    return select


def explain(failure: BaseException) -> str | None:
    """Say in words why a TLS connection to the relay failed, or None if it is not a TLS failure."""
    try:  # both are there whenever a TLS endpoint is used; imported only on this failure path
        from OpenSSL.SSL import Error
        from service_identity import VerificationError
    except ImportError:
        return None
    if isinstance(failure, VerificationError):  # the certificate names other hosts
        names = []
        for mismatch in failure.errors:
            wanted = getattr(mismatch, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
            if name is not None:
                names.append(name.decode() if isinstance(name, bytes) else str(name))
        return (
            "host name mismatch: the relay's certificate is not valid for "
            f"{', '.join(names) or 'the host name we connected to'} (connect with a name the "
            "certificate lists, or give the relay a certificate for this name)"
        )
    if not isinstance(failure, Error):
        return None
    queue = failure.args[0] if failure.args and isinstance(failure.args[0], list) else []
    reasons = [str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry]
    if "certificate verify failed" in reasons:
        return (
            "certificate not trusted: the relay's certificate is not signed by a CA in trustRoots= "
            "(or the system's CAs when trustRoots is not given), or it has expired"
        )
    return "TLS handshake failed: " + ("; ".join(reasons) or str(failure))
