"""Just enough HTTP/1.1 to route, rewrite and frame messages without buffering bodies.

arps parses each request and response *head* (strictly: a malformed or
ambiguous head is refused, which also shuts the door on request smuggling) and
then only tracks where a body ends, chunk header by chunk header, while the
body bytes themselves are passed on untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import field

from arp.compat import slots_dataclass

_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET_BAD_RE = re.compile(rb"[\x00-\x20\x7f]")

#: Hop-by-hop headers (RFC 9110 7.6.1) that never cross a hop.  Transfer-Encoding
#: is hop-by-hop too, but arps passes bodies through with their framing intact.  ``Trailer``
#: is end-to-end (RFC 9110 6.6.2): the trailers it announces pass through with the chunked body.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
#: Headers that frame a body: never dropped because a Connection header lists them (the
#: relay frames by them, so dropping them would let the next hop read the body differently).
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NONE: tuple[bytes, ...] = ()  # what get_all returns for an absent header
_EMPTY: frozenset[bytes] = frozenset()
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64


class HTTPError(Exception):
    """A message that cannot be accepted; ``status`` is what the sender should get."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@slots_dataclass
class Head:
    """A parsed request or response head.  Header names keep their case.

    Look-ups go through an index by lower-case name, built on first use, kept
    up to date by :meth:`add` and rebuilt after :meth:`replace` and
    :meth:`remove` (change ``headers`` only through these).
    """

    start: tuple[bytes, bytes, bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _index: dict[bytes, list[bytes]] | None = field(default=None, repr=False, compare=False)
    raw: bytes = field(default=b"", repr=False, compare=False)  # as received (scanned and CRLF request heads)
    _tokens: frozenset[bytes] | None = field(default=None, repr=False, compare=False)
    #: every line of ``raw`` ends in CRLF and ``headers`` are still its lines (not changed since)
    crlf: bool = field(default=False, repr=False, compare=False)

    def _idx(self) -> dict[bytes, list[bytes]]:
        index = self._index
        if index is None:
            index = self._index = _index_of(self.headers)
        return index

    def has_any(self, names: frozenset[bytes]) -> bool:
        """Whether a header named in ``names`` (lower case) is present."""
        return not names.isdisjoint(self._idx())

    def get(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (lower case), or None."""
        values = (self._index or self._idx()).get(name)
        return values[-1] if values else None

    def get_all(self, name: bytes) -> Sequence[bytes]:
        """Every value of header ``name`` (lower case); do not change what it returns."""
        return (self._index or self._idx()).get(name, _NONE)

    def add(self, name: bytes, value: bytes) -> None:
        """Append a header."""
        self.crlf = False  # the headers are no longer the lines received
        self.headers.append((name, value))
        if self._index is not None:
            self._index.setdefault(name.lower(), []).append(value)
        self._tokens = None

    def remove(self, *names: bytes) -> None:
        """Drop every header named in ``names`` (lower case)."""
        self.replace(frozenset(names), [])

    def replace(self, drop: frozenset[bytes], extra: list[tuple[bytes, bytes]]) -> None:
        """Drop every header named in ``drop`` (lower case) and append ``extra``, in one pass."""
        if self.has_any(drop):
            self.headers = [(k, v) for k, v in self.headers if k.lower() not in drop]
            self.crlf = False
        self.headers.extend(extra)
        self._index = None
        self._tokens = None

    def connection_tokens(self) -> frozenset[bytes]:
        """The lower-cased tokens of all Connection headers."""
        tokens = self._tokens
        if tokens is None:
            values = self.get_all(b"connection")
            tokens = _EMPTY
            if len(values) == 1 and b"," not in values[0]:  # the usual single token
                tokens = frozenset((values[0].strip().lower(),))
            elif values:
                tokens = frozenset(t.strip().lower() for value in values for t in value.split(b","))
            self._tokens = tokens
        return tokens

    def serialize_with(self, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """The head with ``extra`` headers appended, as bytes (``head`` itself is not changed).

        A request head whose lines all ended in CRLF and whose headers were not changed since
        it was parsed keeps its header lines as received; any other is written anew by
        :meth:`serialize`.
        """
        raw = self.raw
        if self.crlf and raw:
            lines = [b" ".join(self.start), b"\r\n", raw[raw.find(b"\n") + 1 : -2]]  # header lines with CRLFs
            for name, value in extra:
                lines += [name, b": ", value, b"\r\n"]
            lines.append(b"\r\n")
            return b"".join(lines)
        return self.serialize(extra)

    def serialize(self, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """The head, with ``extra`` headers appended, as bytes written anew (``name: value``
        lines), including the blank line that ends it."""
        lines = [b" ".join(self.start)]
        lines.extend([k + b": " + v for k, v in self.headers])
        lines.extend([k + b": " + v for k, v in extra])
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    # Request helpers
    @property
    def method(self) -> bytes:
        return self.start[0]

    @property
    def target(self) -> bytes:
        return self.start[1]

    @property
    def version(self) -> bytes:
        return self.start[0] if self.start[0].startswith(b"HTTP/") else self.start[2]

    @property
    def status(self) -> int:
        return int(self.start[1])


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a head in ``buf``, or -1."""
    i = buf.find(b"\r\n\r\n", start)
    j = buf.find(b"\n\n", start, len(buf) if i < 0 else i + 2)  # never scan a body that follows
    if i < 0:
        return -1 if j < 0 else j + 2
    if 0 <= j < i:
        return j + 2
    return i + 4


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A header value without its surrounding blanks; greedy, so the engine backtracks over the
#: trailing blanks only, not at every character as a lazy ``*?`` would (three times faster).
_VALUE = rb"((?:[^\r\n]*[^\r\n \t])?)"
_HEADER_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*" + _VALUE + rb"[ \t]*\r?\n")
#: A whole valid header block in one pass: ``name: value`` lines (values without control
#: characters) and the blank line.
_BLOCK_RE = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r?\n)*\r?\n")
_BLOCK_BAD_RE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FOLDED_RE = re.compile(rb"\n[ \t]")


def _start_line(raw: bytes) -> tuple[bytes, int]:
    """The start line (without its line end) and the index where the header block begins."""
    begin = 0
    if raw[:1] in (b"\r", b"\n"):  # stray line ends before a message are allowed (RFC 9112 2.2)
        begin = len(raw) - len(raw.lstrip(b"\r\n"))
    end = raw.find(b"\n", begin)
    if end < 0:
        raise HTTPError(400, "malformed start line")
    line = raw[begin:end]
    return (line[:-1] if line.endswith(b"\r") else line), end + 1


def _check_block(raw: bytes, pos: int) -> None:
    """Validate the header block that starts at ``pos``; raise with the precise reason."""
    if _BLOCK_RE.fullmatch(raw, pos):
        return
    block = raw[pos:]
    if _FOLDED_RE.search(b"\n" + block):
        raise HTTPError(400, "obsolete header line folding is not allowed")
    if _BLOCK_BAD_RE.search(block):
        raise HTTPError(400, "control character in header value")
    raise HTTPError(400, "malformed header line")


def _check_head(raw: bytes, line: bytes, pos: int) -> bool:
    """Validate the header block at ``pos`` (raising with the precise reason) after start line
    ``line``; whether the whole head is CRLF-only, with nothing before its start line (the common
    case, checked first with the stricter expression)."""
    if pos == len(line) + 2 and raw[pos - 2 : pos] == b"\r\n" and _CRLF_BLOCK_RE.fullmatch(raw, pos):
        return True
    _check_block(raw, pos)
    return False


def _parse_headers(raw: bytes, pos: int) -> list[tuple[bytes, bytes]]:
    """Validate the header block at ``pos`` with one regular expression, then split it with another."""
    _check_block(raw, pos)
    return _HEADER_RE.findall(raw, pos)


def _index_of(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Header values by lower-case name (what :meth:`Head.get` looks in)."""
    index: dict[bytes, list[bytes]] = {}
    for key, val in headers:
        name = key.lower()
        values = index.get(name)
        if values is None:
            index[name] = [val]
        else:
            values.append(val)
    return index


def parse_request_head(raw: bytes) -> Head:
    """Parse a request head (everything up to and including the blank line)."""
    return parse_request(raw)[0]


def parse_request(raw: bytes) -> tuple[Head, BodyFramer]:
    """Parse a request head; return it with the framer of the body that follows it."""
    line, pos = _start_line(raw)
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.match(method):
        raise HTTPError(400, "malformed request method")
    if not target or _TARGET_BAD_RE.search(target):
        raise HTTPError(400, "malformed request target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise HTTPError(400, "malformed HTTP version")
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        # absolute-form is for proxies, authority-form for CONNECT: a relay and the service
        # behind it would each take the host from somewhere else
        raise HTTPError(400, "the request target must be a path starting with /")
    crlf = _check_head(raw, line, pos)  # a CRLF-only head can be passed on as received
    headers = _HEADER_RE.findall(raw, pos)
    index = _index_of(headers)
    if len(index.get(b"host", _NONE)) > 1:
        # RFC 9112 3.2: with two, the relay and the service could route by different ones
        raise HTTPError(400, "more than one Host header")
    head = Head((method, target, version), headers, index, raw if crlf else b"", crlf=crlf)
    return head, request_framing(head)  # framing is validated before anything is forwarded


def parse_response_head(raw: bytes) -> Head:
    """Parse a response head (everything up to and including the blank line)."""
    return _response_head(raw, full=True)


_HOP_NAMES = rb"connection|keep-alive|proxy-connection|te|upgrade"
_INTEREST_RE = re.compile(
    rb"\n(content-length|transfer-encoding|" + _HOP_NAMES + rb")[ \t]*:[ \t]*" + _VALUE + rb"[ \t]*\r?(?=\n)",
    re.I,
)
_HOP_LINE_RE = re.compile(rb"\r\n(?:" + _HOP_NAMES + rb")[ \t]*:[^\r\n]*", re.I)
#: The common case of :data:`_BLOCK_RE`: every line ends in CRLF (so no mixed line ends to fix).
_CRLF_BLOCK_RE = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n")
#: The one hop-by-hop line most services send (nginx, Node, Go, ...), removed without a regex.
_KEEP_ALIVE_LINE = b"\r\nConnection: keep-alive"


_VERSIONS = frozenset((b"HTTP/1.0", b"HTTP/1.1"))
_REASON_RE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def scan_response_head(raw: bytes) -> Head:
    """The part of a response head the relay needs: status, framing and hop-by-hop headers.

    The whole block is validated, but only those headers are extracted; the
    rest is forwarded as received (see :func:`forward_response_head`).
    """
    return _response_head(raw, full=False)


def _response_head(raw: bytes, full: bool) -> Head:
    crlf = False
    try:
        line, pos = _start_line(raw)
        if full:
            headers = _parse_headers(raw, pos)
        else:
            crlf = _check_head(raw, line, pos)
    except HTTPError as e:
        raise HTTPError(502, "backend sent a " + e.message)
    version, _, rest = line.partition(b" ")
    status, _, reason = rest.partition(b" ")
    if (
        version not in _VERSIONS
        or len(status) != 3
        or not status.isdigit()
        or (reason and _REASON_RE.fullmatch(reason) is None)
    ):
        # RFC 9112 4: a reason phrase is tabs, spaces and visible characters; a bare CR in it
        # would end the line for a browser and smuggle header lines past the relay
        raise HTTPError(502, "malformed response status line")
    if full:
        return Head((version, status, reason), headers)
    headers = [(name.lower(), value) for name, value in _INTEREST_RE.findall(raw)]
    return Head((version, status, reason), headers, _index_of(headers), raw, crlf=crlf)


def forward_response_head(head: Head, connection: bytes | None) -> bytes:
    """A scanned response head for the next hop: hop-by-hop headers out, our Connection in."""
    raw = head.raw
    index = head._idx()
    # chunked wins over a Content-Length (RFC 9112 6.3); the length must not travel on
    both = b"transfer-encoding" in index and b"content-length" in index
    mixed_endings = not head.crlf and raw.count(b"\n") != raw.count(b"\r\n")
    if both or mixed_endings or head.connection_tokens() - {b"close", b"keep-alive"}:
        full = parse_response_head(raw)  # rare: headers named by Connection, bare-LF lines, both framings
        full.remove(*HOP_BY_HOP, *(head.connection_tokens() - FRAMING))
        if both:
            full.remove(b"content-length")
        if connection:
            full.add(b"Connection", connection)
        return full.serialize()
    if head.headers and not HOP_BY_HOP.isdisjoint(index):
        hops = (
            len(head.headers)
            - len(index.get(b"content-length", _NONE))
            - len(index.get(b"transfer-encoding", _NONE))
        )
        at = raw.find(_KEEP_ALIVE_LINE) if hops == 1 and index.get(b"connection") == [b"keep-alive"] else -1
        end = at + len(_KEEP_ALIVE_LINE)
        if at >= 0 and raw[end : end + 2] == b"\r\n":
            # the usual case, this one hop-by-hop line: cut it out (its CRLF starts the next line)
            raw = raw[:at] + raw[end:]
        else:
            raw = _HOP_LINE_RE.sub(b"", raw)
    if connection:
        raw = raw[:-2] + b"Connection: " + connection + b"\r\n\r\n"
    return raw


def _content_length(head: Head) -> int | None:
    values = head.get_all(b"content-length")
    if not values:
        return None
    lengths = {v.strip() for value in values for v in value.split(b",")}
    if len(lengths) != 1:
        raise HTTPError(400, "conflicting Content-Length headers")
    (text,) = lengths
    if not text.isdigit() or len(text) > 18:
        raise HTTPError(400, "malformed Content-Length")
    return int(text)


def _is_chunked(head: Head) -> bool | None:
    values = head.get_all(b"transfer-encoding")
    if not values:
        return None
    codings = [c.strip().lower() for value in values for c in value.split(b",")]
    if codings[-1] != b"chunked":
        raise HTTPError(400, "unsupported Transfer-Encoding (chunked must come last)")
    return True


def request_framing(head: Head) -> BodyFramer:
    """How the body of request ``head`` is framed."""
    if not head.has_any(FRAMING):
        return BodyFramer(LENGTH, 0)  # the common case: no body
    chunked = _is_chunked(head)
    length = _content_length(head)
    if chunked:
        if length is not None:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length given")
        if head.version == b"HTTP/1.0":
            raise HTTPError(400, "chunked encoding in an HTTP/1.0 request")
        return BodyFramer(CHUNKED, strict=True)
    return BodyFramer(LENGTH, length or 0)


def response_framing(head: Head, request_method: bytes) -> BodyFramer:
    """How the body of response ``head`` to a ``request_method`` request is framed."""
    status = head.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return BodyFramer(LENGTH, 0)
    index = head._idx()
    lengths = index.get(b"content-length")
    if b"transfer-encoding" not in index and lengths is not None and len(lengths) == 1:
        text = lengths[0]
        if text.isdigit() and len(text) <= 18:  # the usual case: one plain Content-Length
            return BodyFramer(LENGTH, int(text))
    try:
        if _is_chunked(head):
            return BodyFramer(CHUNKED)
        length = _content_length(head)
    except HTTPError as e:
        raise HTTPError(502, "backend sent " + e.message)
    if length is not None:
        return BodyFramer(LENGTH, length)
    return BodyFramer(UNTIL_CLOSE)


def wants_keep_alive(head: Head) -> bool:
    """Whether the sender of ``head`` wants the connection kept open afterwards."""
    tokens = head.connection_tokens()
    if head.version == b"HTTP/1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


LENGTH, CHUNKED, UNTIL_CLOSE = "length", "chunked", "until-close"
_DATA, _SIZE, _DATA_END, _TRAILER, _DONE = range(5)


class BodyFramer:
    """Finds where one message body ends in a stream of bytes, without copying it.

    ``feed(data)`` returns how many leading bytes of ``data`` belong to the
    body; once the body is complete ``done`` is true and the rest of ``data``
    belongs to whatever comes next.
    """

    __slots__ = ("kind", "remaining", "strict", "_state", "_line", "_trailers")

    def __init__(self, kind: str, length: int = 0, strict: bool = False) -> None:
        self.kind = kind
        self.strict = strict  # requests: CRLF line ends and bare hex sizes only (no desync with the service)
        self.remaining = length
        self._line = b""
        self._trailers = 0
        if kind == LENGTH:
            self._state = _DATA if length else _DONE
        elif kind == CHUNKED:
            self._state = _SIZE
        else:
            self._state = _DATA

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> int:
        """Consume body bytes from the start of ``data``; return how many were body."""
        if self.kind == UNTIL_CLOSE:
            return len(data)
        pos, end = 0, len(data)
        while pos < end and self._state != _DONE:
            if self._state == _DATA:
                take = min(self.remaining, end - pos)
                self._body(data, pos, take)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self._state = _DATA_END if self.kind == CHUNKED else _DONE
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_CHUNK_LINE:
                    raise HTTPError(400, "chunk header line too long")
                return end
            line = self._line + data[pos:nl]
            self._line = b""
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            elif self.strict:
                raise HTTPError(400, "chunked encoding line without CRLF")
            self._line_complete(line)
        return pos

    def _body(self, data: bytes, pos: int, take: int) -> None:
        """``take`` body bytes stand at ``data[pos:]`` (a subclass may keep them)."""

    def _line_complete(self, line: bytes) -> None:
        if self._state == _SIZE:
            size = line.split(b";", 1)[0]
            if not self.strict:
                size = size.strip()
            if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                raise HTTPError(400, "malformed chunk size")
            self.remaining = int(size, 16)
            self._state = _DATA if self.remaining else _TRAILER
        elif self._state == _DATA_END:
            if line:
                raise HTTPError(400, "chunk data longer than its size")
            self._state = _SIZE
        elif self._state == _TRAILER:
            if not line:
                self._state = _DONE
            else:
                self._trailers += 1
                if self._trailers > MAX_TRAILERS:
                    raise HTTPError(400, "too many trailer lines")


class Dechunker(BodyFramer):
    """A chunked body decoded on the way, for an HTTP/1.0 client that cannot read chunks.

    ``feed`` works as for :class:`BodyFramer`; :meth:`take` then returns the chunk data
    (without sizes, extensions or trailers) found in what was fed since the last call.
    """

    __slots__ = ("_out",)

    def __init__(self) -> None:
        super().__init__(CHUNKED)
        self._out: list[bytes] = []

    def _body(self, data: bytes, pos: int, take: int) -> None:
        self._out.append(data[pos : pos + take])

    def take(self) -> bytes:
        """The decoded body bytes fed since the last call."""
        out, self._out = self._out, []
        return b"".join(out)


def dechunked_response_head(head: Head) -> bytes:
    """A scanned chunked response head for an HTTP/1.0 client: no framing or trailer headers
    (the body ends with the connection) and ``Connection: close``."""
    full = parse_response_head(head.raw)
    full.remove(*HOP_BY_HOP, *FRAMING, b"trailer", *(head.connection_tokens() - FRAMING))
    full.add(b"Connection", b"close")
    return full.serialize()


def error_body(status: int, message: str, **extra: object) -> bytes:
    """The JSON body of every error ARP answers itself: ``{"error": message, "status": status, ...}``.

    The one error helper of the relay, of arpc's forward mode, of the relay's admin page and of the
    command-mode API: ``extra`` adds fields (``limit``, ``retry_after``, ``service``...).
    """
    return json.dumps({"error": message, "status": status, **extra}).encode()


def json_response(
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] = (),
    close: bool = True,  # type: ignore[assignment]
    content_type: bytes = b"application/json",
) -> bytes:
    """A complete HTTP/1.1 response carrying a JSON ``body`` (or another ``content_type``)."""
    reason = REASONS.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
    ]
    lines.extend(k + b": " + v for k, v in extra)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


#: The header the command-mode console adds to its own API calls.  A page of another origin
#: cannot send it without a CORS preflight (which nothing answers), so, where a browser sends no
#: fetch metadata (plain HTTP on a host name that is not localhost), it marks a same-origin call.
CONSOLE_HEADER = b"x-arp-console"


def referer_is_host(referer: bytes | None, host: bytes | None) -> bool:
    """Whether a ``Referer`` names a page of ``host`` (the request's own origin, scheme aside)."""
    if not referer or not host:
        return False
    rest = referer.partition(b"://")[2]
    if not rest:
        return False
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
    return authority.lower() == host.lower()


#: The content type and headers of :func:`html_page`: nothing on it runs or loads.
HTML_TYPE = b"text/html; charset=utf-8"
HTML_HEADERS = [
    (b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    (b"X-Content-Type-Options", b"nosniff"),
]


def html_page(status: int, message: str, refresh: int | None = None, by: str = "the ARP relay") -> bytes:
    """A small page for a browser's page load that ARP answers itself (an error, a client that
    is away): the same words as the JSON, and a reload after ``refresh`` seconds if given;
    ``by`` names who answered (arpc says "arpc on the service's machine")."""
    import html

    reason = REASONS.get(status, b"Error").decode()
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    again = f"<p>This page reloads by itself every {refresh} s.</p>" if refresh else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{status} {html.escape(reason)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}"
        "small{color:#666}</style></head><body>"
        f"<h1>{status} {html.escape(reason)}</h1><p>{html.escape(message)}</p>{again}"
        f"<p><small>Answered by {html.escape(by)}.</small></p></body></html>"
    )
    return page.encode()


REASONS = {
    200: b"OK",
    302: b"Found",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
