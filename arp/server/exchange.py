"""The exchange on one public connection, as two small named state machines.

:class:`arp.server.public.PublicHTTPProtocol` handles one request/response exchange at a time.
What it is doing is two states that move together: how far it has read the *request* from the
public client, and how far it has read the *response* from the tunnel.  The states are named
strings (a debugger and a log show the name); every transition the protocol makes is listed in
:data:`REQUEST_TRANSITIONS` and :data:`RESPONSE_TRANSITIONS`, and
``tests/test_exchange.py`` runs the public front's tests with a protocol that refuses any
transition not listed there.

Why not automat on this path: the exchange makes four to six transitions per request.  Measured
in-process (``python3`` 3.11, this machine), one transition costs about 1.7 us with a
``TypeMachineBuilder`` machine and 7-11 us with a ``MethodicalMachine``, against about 0.05 us for
an attribute assignment; the relay spends about 25 us of CPU per keep-alive request
(``bench/exchange.py``), so automat would add 30 % or more.  The protocol therefore assigns the
named states directly, and the table plus the test keep the machine explicit.

Request side (``_req``):

=========== ============================================================================
R_HEAD      reading a request head (idle between requests, or part of a head buffered)
R_WAIT      routed to a client; waiting for a tunnel from its pool (also for a retry)
R_BODY      a tunnel is joined and the request body is being streamed to it
R_DONE      the whole request is sent (or the connection is closing): no more reading
=========== ============================================================================

Response side (``_resp``):

=========== ============================================================================
S_NONE      no response expected (no exchange, or it is over)
S_HEAD      waiting for (or reading) the response head from the tunnel
S_BODY      streaming the response body to the client, framed as the service framed it
S_DECODE    streaming a chunked body decoded for an HTTP/1.0 client (the close ends it)
=========== ============================================================================
"""

from __future__ import annotations

R_HEAD = "request head"
R_WAIT = "waiting for a tunnel"
R_BODY = "request body"
R_DONE = "request done"

S_NONE = "no response"
S_HEAD = "response head"
S_BODY = "response body"
S_DECODE = "response body, dechunked"

#: state -> the states the request side may go to from it (and on which event).
REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    R_HEAD: frozenset(
        {
            R_WAIT,  # a head routed to a client: take a tunnel
            R_HEAD,  # the relay answered the request itself and keeps the connection
            R_DONE,  # a refusal that closes, or a half-close with every request answered
        }
    ),
    R_WAIT: frozenset(
        {
            R_BODY,  # a tunnel: the head is sent, the body follows
            R_DONE,  # a tunnel for a request without body; or giving up (502/503/504)
        }
    ),
    R_BODY: frozenset(
        {
            R_DONE,  # the body is complete; or the exchange failed or ended early
        }
    ),
    R_DONE: frozenset(
        {
            R_HEAD,  # the exchange is complete and the connection stays: next request
            R_WAIT,  # the tunnel closed before the answer: retry on another one
            R_DONE,  # closing after all
        }
    ),
}

#: state -> the states the response side may go to from it.
RESPONSE_TRANSITIONS: dict[str, frozenset[str]] = {
    S_NONE: frozenset(
        {
            S_NONE,  # a new request is routed (nothing expected yet)
            S_HEAD,  # a tunnel is joined: the response head is next
        }
    ),
    S_HEAD: frozenset(
        {
            S_HEAD,  # retry on another tunnel
            S_BODY,  # a final head forwarded: its body follows
            S_DECODE,  # a chunked final head for an HTTP/1.0 client
            S_NONE,  # 101 Switching Protocols: the connection becomes a splice
        }
    ),
    S_BODY: frozenset({S_NONE}),  # the body is complete, or ended by the tunnel's close
    S_DECODE: frozenset({S_NONE}),  # the decoded body is complete
}
