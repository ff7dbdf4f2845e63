"""HTTPS through the relay with the clients people use: curl, Python's ssl, Chromium.

Every client here offers ALPN the way it does by default, which is what the
suite's own TLS clients (Twisted's Agent) never did: the relay used to answer
all of them with a ``tlsv1 alert internal error`` (see :mod:`arp.tls`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import socket
import ssl
import string
import struct

from twisted.internet import threads, utils
from twisted.python import usage
from twisted.trial import unittest
from twisted.web import resource

from tests import browser
from tests.certs import make_ca_and_cert, make_lets_encrypt_style
from tests.helpers import (
    AUTH_KEY,
    TwistdProcess,
    backend_site,
    free_port,
    listen_backend,
    raw_exchange,
    start_arpc,
    start_arps,
    status_of,
)
from tests.test_docs import readme

CURL = "/usr/bin/curl"


async def curl(*args: str) -> tuple[str, str, int]:
    """Run curl with its defaults plus ``args``; its stdout, stderr and exit code."""
    out, err, code = await utils.getProcessOutputAndValue(
        CURL, ["-sS", "--max-time", "20", *args], env=dict(os.environ)
    )
    return out.decode(), err.decode(), code


def tls_get(
    port: int, cafile: str, alpn: list[str] | None, path: str, host: str = "127.0.0.1", extra: str = ""
):
    """GET ``path`` over TLS with Python's ssl offering ``alpn``; (selected protocol, raw response).

    Blocking (run it in a thread); raises :class:`ssl.SSLError` when the handshake fails.
    """
    context = ssl.create_default_context(cafile=cafile)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname=host) as conn:
            head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
            conn.sendall(head.encode())
            data = b""
            for _ in range(10000):  # bounded: the relay closes after its answer
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            return conn.selected_alpn_protocol(), data


def served_chain(port: int) -> list[str]:
    """The subjects (CN) of the certificates the server sends, in order (blocking)."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port)) as raw:
        # blocking (pyOpenSSL needs it), but never forever: the kernel times out the reads
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 15, 0))
        conn = SSL.Connection(context, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        chain = [c.get_subject().CN for c in conn.get_peer_cert_chain()]
        conn.shutdown()
        return chain


def body_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


def header_values(raw: bytes, name: bytes) -> list[bytes]:
    """Values of header ``name`` (lower case) in a raw response head."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower() == name
    ]


def tls_args(paths: dict[str, str]) -> str:
    return f"interface=127.0.0.1:privateKey={paths['key']}:certKey={paths['cert']}"


class HTTPSClientsTests(unittest.TestCase):
    """curl and Python's ssl, with ALPN as they offer it, through an arps on ``ssl:``."""

    timeout = 90

    async def _relay(self, *extra: str):
        """A relay with a TLS public endpoint and a forward-mode client; (relay, token, ca path)."""
        paths = make_ca_and_cert(self.mktemp())
        relay = await start_arps(self, "--public-endpoint", f"ssl:0:{tls_args(paths)}", *extra)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        self.assertTrue(arpc.url.startswith("https://"), arpc.url)
        return relay, arpc.token, paths

    async def test_curl_with_its_defaults(self):
        """curl offers ALPN h2 and http/1.1 by default; the relay picks http/1.1 and answers.

        Also with ``--http1.1`` (ALPN http/1.1 only) and ``--no-alpn``; no
        Strict-Transport-Security unless ``--hsts`` asks for it.
        """
        relay, token, paths = await self._relay()
        url = f"https://127.0.0.1:{relay.ports['public']}/echo?token={token}"
        out, err, code = await curl("-v", "--cacert", paths["ca"], "-D", "-", url)
        self.assertEqual(code, 0, err)
        self.assertIn("ALPN: offers h2,http/1.1", err)  # what every default curl does
        self.assertIn("ALPN: server accepted http/1.1", err)
        head, _, body = out.partition("\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertNotIn("strict-transport-security", head.lower())
        self.assertEqual(json.loads(body)["headers"]["x-forwarded-proto"], ["https"])
        for flag in ("--http1.1", "--no-alpn"):
            out, err, code = await curl(
                "--cacert", paths["ca"], "-w", "%{http_code}", "-o", "/dev/null", flag, url
            )
            self.assertEqual((code, out), (0, "200"), f"{flag}: {err}")

    async def test_python_ssl_with_alpn(self):
        """Python's ssl offering ["h2", "http/1.1"] gets http/1.1; ["h2"] alone is refused in the
        handshake with the no_application_protocol alert (and the relay keeps serving); no ALPN works."""
        relay, token, paths = await self._relay()
        port = relay.ports["public"]
        path = f"/echo?token={token}"
        selected, raw = await threads.deferToThread(tls_get, port, paths["ca"], ["h2", "http/1.1"], path)
        self.assertEqual(selected, "http/1.1")
        self.assertEqual(status_of(raw), 200)
        self.assertEqual(json.loads(body_of(raw))["headers"]["x-forwarded-proto"], ["https"])

        with self.assertRaises(ssl.SSLError) as refused:
            await threads.deferToThread(tls_get, port, paths["ca"], ["h2"], path)
        self.assertIn("NO_APPLICATION_PROTOCOL", str(refused.exception).upper().replace(" ", "_"))

        selected, raw = await threads.deferToThread(tls_get, port, paths["ca"], None, path)
        self.assertIsNone(selected)
        self.assertEqual(status_of(raw), 200)
        selected, raw = await threads.deferToThread(tls_get, port, paths["ca"], ["http/1.1"], path)
        self.assertEqual((selected, status_of(raw)), ("http/1.1", 200))

    async def test_admin_endpoint_on_ssl(self):
        """The admin endpoint on ``ssl:`` answers curl's defaults and ALPN http/1.1, refuses h2 alone."""
        paths = make_ca_and_cert(self.mktemp())
        relay = await start_arps(self, "--admin-endpoint", f"ssl:0:{tls_args(paths)}")
        port = relay.ports["admin"]
        out, err, code = await curl("--cacert", paths["ca"], f"https://127.0.0.1:{port}/admin/api/clients")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["clients"], [])
        selected, raw = await threads.deferToThread(
            tls_get, port, paths["ca"], ["h2", "http/1.1"], "/metrics"
        )
        self.assertEqual((selected, status_of(raw)), ("http/1.1", 200))
        self.assertIn(b"arp_", body_of(raw))
        with self.assertRaises(ssl.SSLError) as refused:
            await threads.deferToThread(tls_get, port, paths["ca"], ["h2"], "/metrics")
        self.assertIn("NO_APPLICATION_PROTOCOL", str(refused.exception).upper().replace(" ", "_"))


class ApiEndpointOverTLSTests(unittest.TestCase):
    """arpc's ``--api-endpoint`` (command mode) on ``ssl:`` negotiates like the relay's ports."""

    timeout = 60

    async def test_api_endpoint_on_ssl(self):
        """ALPN h2 + http/1.1 gets http/1.1 and the API answers; h2 alone is refused cleanly."""
        from tests.command_helpers import Workspace, start_command_arpc

        paths = make_ca_and_cert(self.mktemp())
        relay = await start_arps(self)
        ws = Workspace(self)
        arpc = await start_command_arpc(self, relay, ws, "--api-endpoint", f"ssl:0:{tls_args(paths)}")
        port = int((await arpc.wait_for(r"api listening on 127\.0\.0\.1:(\d+)")).group(1))
        selected, raw = await threads.deferToThread(
            tls_get,
            port,
            paths["ca"],
            ["h2", "http/1.1"],
            "/api/health",
            extra=f"Authorization: Bearer {arpc.access}\r\n",
        )
        self.assertEqual((selected, status_of(raw)), ("http/1.1", 200))
        self.assertIn("sessions", json.loads(body_of(raw)))
        with self.assertRaises(ssl.SSLError) as refused:
            await threads.deferToThread(tls_get, port, paths["ca"], ["h2"], "/api/health")
        self.assertIn("NO_APPLICATION_PROTOCOL", str(refused.exception).upper().replace(" ", "_"))


def readme_block(first_line: str, containing: str = "") -> str:
    """The README literal block that starts with ``first_line`` and contains ``containing``
    (up to the next blank line)."""
    text = readme()
    start = text.index("    " + first_line)
    for _ in range(100):  # bounded: the README has a few dozen blocks
        end = text.index("\n\n", start)
        if containing in text[start:end]:
            return text[start:end]
        start = text.index("    " + first_line, end)
    raise AssertionError(f"no README block starts with {first_line!r} and contains {containing!r}")


def run_readme_block(block: str, env: dict[str, str]) -> list[str]:
    """The twistd argv a shell would run for ``block``: ``NAME=value`` lines set variables,
    the rest (with backslash continuations) is one command."""
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    argv: list[str] = []
    for line in lines:
        assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        if assignment:
            env[assignment.group(1)] = string.Template(assignment.group(2)).substitute(env)
        else:
            argv = [string.Template(word).substitute(env) for word in shlex.split(line)]
    return argv


class ReadmeHTTPSRelayTests(unittest.TestCase):
    """The README's HTTPS relay, started from the README's own text with certbot-style files."""

    timeout = 90

    async def test_lets_encrypt_files_as_the_readme_says(self):
        """arps from the README block (fullchain.pem named as certKey and extraCertChain) serves
        the intermediate once, so curl trusting only the root verifies it; arpc registers over
        ``tls:`` and a request reaches the service with HSTS as ``--hsts`` asked.

        Only what a test must change is changed: the certbot directory, the host name
        (``localhost``, which the throw-away certificate names), free loopback ports, plus
        ``--auth-key``, ``--data-dir`` and ``--admin-endpoint none`` so that it runs beside other tests.
        """
        paths = make_lets_encrypt_style(self.mktemp())
        ports = {p: free_port() for p in ("17001", "17002", "443")}
        block = readme_block("D=/etc/letsencrypt/live/relay.example.com")
        block = block.replace("/etc/letsencrypt/live/relay.example.com", paths["live"])
        for port, free in ports.items():
            block = block.replace(f"ssl:{port}:", f"ssl:{free}:interface=127.0.0.1:")
        block = block.replace("https://relay.example.com", f"https://localhost:{ports['443']}")
        argv = run_readme_block(block, {})
        self.assertEqual(argv[:3], ["twistd", "-n", "arps"])
        args = argv[2:] + ["--auth-key", AUTH_KEY, "--data-dir", self.mktemp(), "--admin-endpoint", "none"]
        relay = TwistdProcess("arps", args).start()
        self.addCleanup(relay.stop)
        await relay.wait_for(r"public listening")

        chain = await threads.deferToThread(served_chain, ports["443"])
        self.assertEqual(chain, ["localhost", "ARP test intermediate"])  # the leaf is not sent twice

        block = readme_block("twistd -n arpc --server-addr relay.example.com", "tls:relay.example.com:17001 ")
        block = block.replace("relay.example.com", "localhost")
        for port in ("17001", "17002"):
            block = block.replace(
                f"localhost:{port}", f"localhost:{ports[port]}:trustRoots={paths['ca_dir']}"
            )
        argv = run_readme_block(block, {})
        self.assertEqual(argv[:3], ["twistd", "-n", "arpc"])
        args = [a if a != "KEY" else AUTH_KEY for a in argv[2:]]
        args[args.index("--local-port") + 1] = str(listen_backend(self))
        arpc = TwistdProcess("arpc", args + ["--data-dir", self.mktemp(), "--no-log-file"]).start()
        self.addCleanup(arpc.stop)
        match = await arpc.wait_for(r"Public URL: (\S+)")
        url = match.group(1)
        self.assertRegex(url, r"^https://localhost:\d+/\?token=")  # the client's own port, over TLS

        out, err, code = await curl("--cacert", paths["ca"], "-D", "-", url.replace("/?", "/echo?"))
        self.assertEqual(code, 0, err)
        head, _, body = out.partition("\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertIn("strict-transport-security: max-age=31536000", head.lower())
        self.assertEqual(json.loads(body)["headers"]["x-forwarded-proto"], ["https"])

    async def test_one_combined_pem(self):
        """``privateKey=relay.pem:extraCertChain=relay.pem`` (key, certificate and chain in one
        file) is enough; without ``extraCertChain`` curl cannot verify the server."""
        paths = make_lets_encrypt_style(self.mktemp())
        combined = paths["combined"]
        with_chain = f"ssl:0:interface=127.0.0.1:privateKey={combined}:extraCertChain={combined}"
        relay = await start_arps(self, "--public-endpoint", with_chain)
        out, err, code = await curl(
            "--cacert",
            paths["ca"],
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            f"https://localhost:{relay.ports['public']}/",
        )
        self.assertEqual((code, out), (0, "401"), err)  # TLS fine; the relay asks for a token

        bare = await start_arps(self, "--public-endpoint", f"ssl:0:interface=127.0.0.1:privateKey={combined}")
        out, err, code = await curl("--cacert", paths["ca"], f"https://localhost:{bare.ports['public']}/")
        self.assertEqual(code, 60, err)  # CURLE_PEER_FAILED_VERIFICATION: no intermediate was sent


class ArpcTrustTests(unittest.TestCase):
    """An arpc that refuses the relay's certificate says why in words."""

    timeout = 90

    async def test_untrusted_and_wrong_name(self):
        """Another CA: "certificate not trusted"; the right CA but a name the certificate does not
        list: "host name mismatch"; the right CA and name: registered."""
        paths = make_ca_and_cert(self.mktemp(), ip="127.0.0.2")  # names 127.0.0.2 and localhost
        tls = tls_args(paths)
        control, proxy = free_port(), free_port()
        await start_arps(
            self, "--control-endpoint", f"ssl:{control}:{tls}", "--proxy-endpoint", f"ssl:{proxy}:{tls}"
        )
        other = make_ca_and_cert(self.mktemp())

        def arpc(host: str, ca_dir: str) -> TwistdProcess:
            args = [
                "arpc",
                "--auth-key",
                AUTH_KEY,
                "--data-dir",
                self.mktemp(),
                "--no-log-file",
                "--local-port",
                "9",
                "--max-backoff",
                "1",
                "--control-endpoint",
                f"tls:{host}:{control}:trustRoots={ca_dir}",
                "--proxy-endpoint",
                f"tls:{host}:{proxy}:trustRoots={ca_dir}",
            ]
            proc = TwistdProcess("arpc", args).start()
            self.addCleanup(proc.stop)
            return proc

        untrusting = arpc("localhost", other["ca_dir"])
        line = await untrusting.wait_for(r"could not register with the relay: (.*)")
        self.assertTrue(line.group(1).startswith("certificate not trusted: "), line.group(0))
        await untrusting.stop()

        wrong_name = arpc("127.0.0.1", paths["ca_dir"])
        line = await wrong_name.wait_for(r"could not register with the relay: (.*)")
        self.assertTrue(line.group(1).startswith("host name mismatch: "), line.group(0))
        self.assertIn("not valid for 127.0.0.1", line.group(1))
        await wrong_name.stop()

        good = arpc("localhost", paths["ca_dir"])
        await good.wait_for(r"Public URL: ")
        self.assertNotIn("could not register", good.output)


class HSTSBackend(resource.Resource):
    """Answers with its own (weaker) Strict-Transport-Security header."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"strict-transport-security", b"max-age=0; includeSubDomains")
        return b"mine"


class BehindTLSProxyTests(unittest.TestCase):
    """arps on plain TCP behind a TLS-terminating proxy, told so with ``--public-url https://``."""

    timeout = 60

    async def test_secure_cookie_forwarded_proto_and_hsts(self):
        """Services see X-Forwarded-Proto: https, the token cookie is Secure, and every answer
        (the relay's own, the service's) carries the relay's HSTS, replacing the service's."""
        site = backend_site()
        site.resource.putChild(b"hsts", HSTSBackend())
        relay = await start_arps(self, "--public-url", "https://relay.test", "--hsts", "600")
        arpc = await start_arpc(self, relay, local_port=listen_backend(self, site))
        self.assertRegex(arpc.url, r"^https://relay\.test:\d+/\?token=")  # the client's own port
        port, token = relay.ports["public"], arpc.token
        own = int(arpc.url.split("/?", 1)[0].rsplit(":", 1)[1])

        def get(path: str, accept: str = "application/json") -> bytes:
            head = f"GET {path} HTTP/1.1\r\nHost: relay.test\r\nAccept: {accept}\r\nConnection: close\r\n"
            return (head + "\r\n").encode()

        raw = await raw_exchange(port, get(f"/echo?token={token}"))
        self.assertEqual(status_of(raw), 200)
        self.assertEqual(json.loads(body_of(raw))["headers"]["x-forwarded-proto"], ["https"])
        self.assertEqual(header_values(raw, b"strict-transport-security"), [b"max-age=600"])

        raw = await raw_exchange(own, get(f"/?token={token}", accept="text/html"))
        self.assertEqual(status_of(raw), 302)
        (cookie,) = header_values(raw, b"set-cookie")
        self.assertIn(b"; Secure", cookie)
        self.assertEqual(header_values(raw, b"strict-transport-security"), [b"max-age=600"])

        raw = await raw_exchange(port, get(f"/hsts?token={token}"))
        self.assertEqual((status_of(raw), body_of(raw)), (200, b"mine"))
        self.assertEqual(header_values(raw, b"strict-transport-security"), [b"max-age=600"])

        raw = await raw_exchange(port, get("/?token=nobody-has-this-token"))
        self.assertEqual(status_of(raw), 404)
        self.assertEqual(header_values(raw, b"strict-transport-security"), [b"max-age=600"])

    def test_bad_options_are_refused(self):
        """--hsts without HTTPS, a negative --hsts and a --public-url that is not http(s) are errors."""
        from arp.server.tap import Options

        for argv, words in (
            (["--hsts", "600"], "--hsts needs HTTPS"),
            (["--hsts", "-1"], "--hsts must be"),
            (["--public-url", "relay.example.com"], "--public-url must start with"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(argv)
            self.assertIn(words, str(caught.exception))
        Options().parseOptions(["--hsts", "600", "--public-url", "https://relay.example.com"])
        Options().parseOptions(["--hsts", "600", "--public-endpoint", "ssl:443:privateKey=k.pem"])


def spki_hash(cert_path: str) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate: what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes to trust exactly that key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class ConsoleOverHTTPSTests(browser.BrowserTestCase):
    """The command-mode console opened over https in Chromium, its live stream over wss://, with
    TLS on the control and proxy hops too."""

    timeout = 120

    async def test_console_and_wss_stream_in_chromium(self):
        """Chromium (ALPN h2 + http/1.1) loads the console from the https Public URL, gets a Secure
        cookie, starts a session and follows its output over a wss:// WebSocket through the relay."""
        from tests.command_helpers import Workspace, start_command_arpc, write_claude_history
        from tests.test_console_browser import _ShortTemp, run_in_browser, start_live_session, ticks_in

        paths = make_ca_and_cert(self.mktemp())
        # TLS on every hop, as the README's TLS recipe deploys it: the console is served over a TLS
        # tunnel, which must be a plain byte stream to arpc's web site (issue #19)
        relay = await start_arps(self, "--hsts", "60", tls=paths)
        ws = Workspace(_ShortTemp(self))
        write_claude_history(ws.claude, str(ws.project))
        arpc = await start_command_arpc(self, relay, ws)
        base = arpc.url.split("/?", 1)[0]  # the client's own port, TLS like the public port
        self.assertRegex(base, r"^https://localhost:\d+$")  # the host arpc reached the relay by
        self.assertNotEqual(base, f"https://localhost:{relay.ports['public']}")
        self.assertTrue(arpc.url.startswith(f"{base}/?token={arpc.token}"), arpc.url)
        project = str(ws.project)

        def drive(page):
            sockets: list[str] = []
            page.on("websocket", lambda socket: sockets.append(socket.url))
            response = page.goto(arpc.url)
            seen = {"url": page.url, "hsts": response.headers.get("strict-transport-security")}
            seen["cookies"] = page.context.cookies()
            start_live_session(page, project, "LONG run over https", 5)
            seen["ticks"] = ticks_in(page)
            page.on("dialog", lambda dialog: dialog.accept())
            page.locator("#cancel").click()
            page.locator('#status .pill[data-status="cancelled"]').wait_for()
            seen["sockets"] = sockets
            return seen

        spki = f"--ignore-certificate-errors-spki-list={spki_hash(paths['cert'])}"
        seen = await run_in_browser(drive, extra_args=[spki])
        self.assertEqual(seen["url"], f"{base}/")
        self.assertEqual(seen["hsts"], "max-age=60")
        from arp.server.origins import cookie_name

        (cookie,) = [c for c in seen["cookies"] if c["name"] == cookie_name(arpc.token).decode()]
        self.assertTrue(cookie["secure"])
        self.assertTrue(cookie["httpOnly"])
        self.assertTrue(seen["sockets"], "no WebSocket was opened")
        for url in seen["sockets"]:
            self.assertTrue(url.startswith(base.replace("https://", "wss://") + "/"), url)
        self.assertGreaterEqual(len(seen["ticks"]), 5)
        self.assertEqual(seen["ticks"], list(range(len(seen["ticks"]))))


class UnitTests(unittest.SynchronousTestCase):
    """The small pieces of :mod:`arp.tls` and the HSTS rewrite, without sockets."""

    def test_explain(self):
        """Only TLS failures are explained; odd error shapes do not break the explanation."""
        from OpenSSL import SSL

        from arp.tls import explain

        self.assertIsNone(explain(ValueError("not TLS")))
        verify = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertTrue(explain(verify).startswith("certificate not trusted: "))
        self.assertEqual(
            explain(SSL.SysCallError(-1, "Unexpected EOF")), "TLS handshake failed: (-1, 'Unexpected EOF')"
        )
        other = SSL.Error([("SSL routines", "", "tlsv1 alert protocol version")])
        self.assertEqual(explain(other), "TLS handshake failed: tlsv1 alert protocol version")

    def test_with_hsts(self):
        """The relay's header is added once; a service's own (any case) is dropped first."""
        from arp.server.public import with_hsts

        plain = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(
            with_hsts(plain, b"max-age=5"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nStrict-Transport-Security: max-age=5\r\n\r\n",
        )
        own = b"HTTP/1.1 200 OK\r\nSTRICT-Transport-Security: max-age=0\r\nContent-Length: 0\r\n\r\n"
        out = with_hsts(own, b"max-age=5")
        self.assertEqual(header_values(out, b"strict-transport-security"), [b"max-age=5"])
        self.assertIn(b"Content-Length: 0\r\n", out)
