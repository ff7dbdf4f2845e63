"""Unit tests of request/response head parsing and body framing."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from arp import http
from arp.server.framing import rewrite_request_head


class HeadParsingTests(unittest.TestCase):
    """Heads are parsed strictly; anything ambiguous is refused with a status."""

    def test_request_head(self):
        """Method, target, version and headers (case kept) come out as sent."""
        head = http.parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nX-Y:  z \r\n\r\n")
        self.assertEqual(head.start, (b"GET", b"/a?b=1", b"HTTP/1.1"))
        self.assertEqual(head.headers, [(b"Host", b"h"), (b"X-Y", b"z")])
        self.assertEqual(head.get(b"x-y"), b"z")
        self.assertEqual(head.version, b"HTTP/1.1")

    def test_serialize_round_trip(self):
        """A parsed head serializes back to an equivalent head."""
        raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
        self.assertEqual(http.parse_request_head(raw).serialize(), raw)

    def assertRefused(self, raw: bytes, status: int) -> None:
        with self.assertRaises(http.HTTPError) as ctx:
            http.parse_request_head(raw)
        self.assertEqual(ctx.exception.status, status)

    def test_bad_heads(self):
        """Malformed lines, smuggling vectors and odd versions are refused."""
        self.assertRefused(b"GET /\r\n\r\n", 400)
        self.assertRefused(b"GET / HTTP/2.0\r\n\r\n", 505)
        self.assertRefused(b"GET / FOO\r\n\r\n", 400)
        self.assertRefused(b"G(T / HTTP/1.1\r\n\r\n", 400)
        self.assertRefused(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400)
        self.assertRefused(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400)
        self.assertRefused(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400)
        self.assertRefused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400)
        self.assertRefused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)
        self.assertRefused(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400)
        self.assertRefused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400)
        self.assertRefused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400)

    def test_keep_alive_rules(self):
        """HTTP/1.1 keeps alive unless told to close; HTTP/1.0 only when asked."""

        def ka(raw):
            return http.wants_keep_alive(http.parse_request_head(raw))

        self.assertTrue(ka(b"GET / HTTP/1.1\r\n\r\n"))
        self.assertFalse(ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
        self.assertFalse(ka(b"GET / HTTP/1.0\r\n\r\n"))
        self.assertTrue(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))

    def test_response_framing(self):
        """Responses to HEAD, 1xx/204/304 have no body; otherwise chunked, length or until close."""

        def framing(raw, method=b"GET"):
            return http.response_framing(http.parse_response_head(raw), method)

        self.assertTrue(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD").done)
        self.assertTrue(framing(b"HTTP/1.1 204 No Content\r\n\r\n").done)
        self.assertTrue(framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").done)
        self.assertEqual(framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").kind, http.CHUNKED)
        self.assertEqual(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").remaining, 5)
        self.assertEqual(framing(b"HTTP/1.0 200 OK\r\n\r\n").kind, http.UNTIL_CLOSE)
        with self.assertRaises(http.HTTPError):
            http.parse_response_head(b"HTTX/1.1 200 OK\r\n\r\n")

    def test_find_head_end(self):
        """Both CRLF and bare LF blank lines end a head."""
        self.assertEqual(http.find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), 18)
        self.assertEqual(http.find_head_end(b"GET / HTTP/1.1\n\nrest"), 16)
        self.assertEqual(http.find_head_end(b"GET / HTTP/1.1\r\n"), -1)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_parser_never_crashes(self, data):
        """Any bytes either parse or raise HTTPError with a 4xx/5xx status."""
        try:
            http.parse_request_head(data + b"\r\n\r\n")
        except http.HTTPError as e:
            self.assertTrue(400 <= e.status < 600)


_NAMES = st.sampled_from([b"Host", b"X-Y", b"content-length", b"Connection", b"TE", b"a", b"Keep-Alive"])
_VALUES = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127))
_BLANKS = st.sampled_from([b"", b" ", b"\t", b"  \t"])


def reference_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    """What the header lines of a valid block say, split the plain way."""
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    return [(n, v.strip(b" \t")) for n, _, v in (line.partition(b":") for line in lines if line)]


class HeaderValueTests(unittest.TestCase):
    """Values come out without their surrounding blanks, whatever blanks and line ends are used."""

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.tuples(_NAMES, _BLANKS, _VALUES, _BLANKS, st.booleans()), max_size=6))
    def test_values_match_a_plain_split(self, lines):
        """Parsed and scanned values equal a plain split-and-strip of the same header lines."""
        block = b"".join(
            n + b":" + lead + v + trail + (b"\r\n" if crlf else b"\n") for n, lead, v, trail, crlf in lines
        )
        expected = reference_headers(block)
        if _framing_ok(expected):
            head = http.parse_request_head(b"GET / HTTP/1.1\r\n" + block + b"\r\n")
            self.assertEqual(head.headers, expected)
        response = http.parse_response_head(b"HTTP/1.1 200 OK\r\n" + block + b"\r\n")
        self.assertEqual(response.headers, expected)
        scanned = http.scan_response_head(b"HTTP/1.1 200 OK\r\n" + block + b"\r\n")
        interesting = {b"content-length", b"connection", b"te", b"keep-alive"}
        self.assertEqual(scanned.headers, [(n.lower(), v) for n, v in expected if n.lower() in interesting])


_FWD_NAMES = st.sampled_from(
    [b"Connection", b"connection", b"Keep-Alive", b"Upgrade", b"TE", b"Content-Length", b"X-A", b"Server"]
)
_FWD_VALUES = st.sampled_from([b"keep-alive", b"Keep-Alive", b"close", b"keep-alive, x-a", b"12", b"v"])


class ForwardedResponseHeadTests(unittest.TestCase):
    """What the relay passes on of a response head: every hop-by-hop header out, the rest intact."""

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(st.tuples(_FWD_NAMES, _BLANKS, _FWD_VALUES, _BLANKS, st.booleans()), max_size=6),
        st.sampled_from([None, b"close", b"keep-alive"]),
    )
    @example([(b"Server", b" ", b"v", b"", True), (b"Connection", b" ", b"keep-alive", b"  ", True)], None)
    @example([(b"Connection", b" ", b"keep-alive", b"", True), (b"Upgrade", b" ", b"v", b"", True)], None)
    @example(
        [(b"Connection", b" ", b"keep-alive", b"", True), (b"Keep-Alive", b" ", b"12", b"", True)], b"close"
    )
    def test_hop_by_hop_headers_never_pass(self, lines, connection):
        """Whatever the case, blanks and line ends (the fast cut of ``Connection: keep-alive``
        included), the forwarded head holds exactly the end-to-end headers plus ours."""
        block = b"".join(
            n + b":" + lead + v + trail + (b"\r\n" if crlf else b"\n") for n, lead, v, trail, crlf in lines
        )
        raw = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n"
        try:
            scanned = http.scan_response_head(raw)
            http.response_framing(scanned, b"GET")
        except http.HTTPError:
            return  # e.g. conflicting lengths: refused before anything is forwarded
        sent = reference_headers(block)
        listed = {t.strip().lower() for n, v in sent if n.lower() == b"connection" for t in v.split(b",")}
        drop = http.HOP_BY_HOP | (listed - http.FRAMING)
        expected = [(n, v) for n, v in sent if n.lower() not in drop]
        if connection:
            expected.append((b"Connection", connection))
        out = http.forward_response_head(scanned, connection)
        self.assertEqual(http.parse_response_head(out).headers, expected)
        self.assertNotIn(b"\r\n\r\n", out[:-4])  # one head, one blank line
        # every line passed on is a line as sent, or its normalised form: nothing spliced together
        lines_in = set(raw.replace(b"\r\n", b"\n").split(b"\n"))
        lines_in |= {n + b": " + v for n, v in sent}
        if connection:
            lines_in.add(b"Connection: " + connection)
        for line in out.replace(b"\r\n", b"\n").split(b"\n"):
            self.assertIn(line, lines_in)


    def test_a_blank_line_before_the_status_line_is_not_passed_on(self):
        """A response that starts with a stray bare LF (tolerated before the status line) is
        forwarded written anew, all CRLF: its raw lines are not CRLF-only."""
        raw = b"\nHTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        out = http.forward_response_head(http.scan_response_head(raw), None)
        self.assertEqual(out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def _framing_ok(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these headers is valid: its framing, at most one Host (the parser
    checks both)."""
    lengths = {v.strip() for n, v in headers if n.lower() == b"content-length" for v in v.split(b",")}
    hosts = [n for n, _ in headers if n.lower() == b"host"]
    return len(hosts) <= 1 and (not lengths or (len(lengths) == 1 and next(iter(lengths)).isdigit()))


def chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return body + b"0\r\n" + trailers + b"\r\n"


class FramerTests(unittest.TestCase):
    """The framer finds the end of a body however the bytes are split."""

    def test_length(self):
        """A Content-Length body ends after exactly that many bytes."""
        framer = http.BodyFramer(http.LENGTH, 5)
        self.assertEqual(framer.feed(b"abc"), 3)
        self.assertFalse(framer.done)
        self.assertEqual(framer.feed(b"deNEXT"), 2)
        self.assertTrue(framer.done)

    def test_chunked_with_trailers(self):
        """Chunk extensions and trailers are accepted; the next message is left alone."""
        data = chunked([b"hello", b"world"], b"X-Trailer: 1\r\n") + b"GET /next"
        framer = http.BodyFramer(http.CHUNKED)
        n = framer.feed(data)
        self.assertTrue(framer.done)
        self.assertEqual(data[n:], b"GET /next")

    def test_strict_chunked_requests(self):
        """Request bodies: bare-LF chunk lines and padded sizes are refused (no desync with the service)."""
        head = http.parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        with self.assertRaises(http.HTTPError):
            http.request_framing(head).feed(b"3\nabc\r\n0\r\n\r\n")
        with self.assertRaises(http.HTTPError):
            http.request_framing(head).feed(b" 3\r\nabc\r\n0\r\n\r\n")
        framer = http.request_framing(head)
        self.assertEqual(framer.feed(b"3;x=1\r\nabc\r\n0\r\n\r\n"), 17)
        self.assertTrue(framer.done)

    def test_chunked_lies(self):
        """A chunk longer than its size, or a bad size line, is an error."""
        with self.assertRaises(http.HTTPError):
            http.BodyFramer(http.CHUNKED).feed(b"3\r\nabcdef\r\n")
        with self.assertRaises(http.HTTPError):
            http.BodyFramer(http.CHUNKED).feed(b"zz\r\n")
        with self.assertRaises(http.HTTPError):
            http.BodyFramer(http.CHUNKED).feed(b"1" * (http.MAX_CHUNK_LINE + 10))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=50), max_size=8),
        st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30),
    )
    def test_chunked_any_split(self, pieces, cuts):
        """Fed in arbitrary pieces, the framer ends exactly where the body ends."""
        body = chunked(pieces)
        data = body + b"TAIL"
        framer = http.BodyFramer(http.CHUNKED)
        consumed, pos, i = 0, 0, 0
        while pos < len(data) and not framer.done:
            step = cuts[i % len(cuts)]
            piece = data[pos : pos + step]
            consumed += framer.feed(piece)
            pos += len(piece)
            i += 1
        self.assertTrue(framer.done)
        self.assertEqual(consumed, len(body))


_REQ_NAMES = st.sampled_from(
    [b"Host", b"Connection", b"X-Forwarded-For", b"Upgrade", b"Content-Length", b"X-A", b"Cookie", b"TE"]
)
_REQ_VALUES = st.sampled_from([b"h", b"keep-alive", b"close", b"x-a", b"1.2.3.4", b"websocket", b"0", b"v w"])


class ForwardedRequestHeadTests(unittest.TestCase):
    """The request head the relay sends on: its header lines as received when nothing is taken
    out, else serialized anew; the same headers either way."""

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(st.tuples(_REQ_NAMES, _BLANKS, _REQ_VALUES, _BLANKS, st.booleans()), max_size=6),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    )
    @example([(b"Host", b" ", b"h", b"  ", True), (b"X-A", b"\t", b"v w", b"", True)], b"HTTP/1.1")
    @example([(b"Host", b" ", b"h", b"", True), (b"X-A", b" ", b"v", b"", False)], b"HTTP/1.0")
    def test_as_received_or_anew_the_same_headers(self, lines, version):
        """The fast path (lines kept) and the serialized one agree header by header; every line
        sent ends in CRLF and the head is one head."""
        block = b"".join(
            n + b":" + lead + v + trail + (b"\r\n" if crlf else b"\n") for n, lead, v, trail, crlf in lines
        )
        raw = b"GET /p?q=1 HTTP/1.1\r\n".replace(b"HTTP/1.1", version) + block + b"\r\n"
        try:
            fast, _ = http.parse_request(raw)
        except http.HTTPError:
            return
        slow, _ = http.parse_request(raw)
        slow.crlf = False  # as if a header had been changed: serialized anew
        out_fast = rewrite_request_head(fast, "10.0.0.1", b"https")
        out_slow = rewrite_request_head(slow, "10.0.0.1", b"https")
        parsed_fast, parsed_slow = http.parse_request_head(out_fast), http.parse_request_head(out_slow)
        self.assertEqual(parsed_fast.start, parsed_slow.start)
        self.assertEqual(parsed_fast.headers, parsed_slow.headers)
        self.assertEqual(out_fast.count(b"\n"), out_fast.count(b"\r\n"))
        self.assertTrue(out_fast.endswith(b"\r\n\r\n"))
        self.assertEqual(http.find_head_end(out_fast), len(out_fast))
        self.assertEqual(parsed_fast.get(b"x-forwarded-proto"), b"https")

    def test_a_changed_head_is_serialized_anew(self):
        """Once a header is taken out or added (ARP's cookies, say), the lines as received are
        never sent: what was taken out stays out."""
        head, _ = http.parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: arp_x=secret\r\n\r\n")
        self.assertIn(b"arp_x", head.serialize_with())  # unchanged: the lines as received
        head.remove(b"cookie")
        self.assertNotIn(b"arp_x", head.serialize_with([(b"X-A", b"1")]))
        head.add(b"Cookie", b"app=1")
        out = head.serialize_with()
        self.assertEqual(http.parse_request_head(out).headers, [(b"Host", b"h"), (b"Cookie", b"app=1")])
