"""A first run to production without a stumble (issue 23), each point from a real process the way
a user meets it: the arpc line arps prints, pasted into a shell; ``--host-header`` (JupyterLab in
Chromium); the errors a person can act on."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shlex
import socket
import subprocess
import sys

from twisted.internet import reactor, threads
from twisted.trial import unittest

from arp.client.forward import HostRewriter
from tests import browser
from tests.helpers import (
    AUTH_KEY,
    TWISTD,
    HTTPClient,
    TwistdProcess,
    free_port,
    listen_backend,
    start_arpc,
    start_arps,
)
from tests.test_docs import ROOT, readme

SHELL_TWISTD = 'twistd() { exec "$ARP_PYTHON" -c "from twisted.scripts.twistd import run; run()" "$@"; }; '


class ShellProcess(TwistdProcess):
    """A command line run by ``sh`` as a user pastes it, where ``twistd`` is this interpreter's."""

    def __init__(self, name: str, line: str, cwd: str, env: dict[str, str]) -> None:
        super().__init__(name, [], env)
        self.line = line
        self.cwd = cwd

    def start(self) -> ShellProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARP_", "XDG_"))}
        env.update(self.env, PYTHONUNBUFFERED="1", ARP_PYTHON=sys.executable)
        argv = ["/bin/sh", "-c", SHELL_TWISTD + self.line]
        reactor.spawnProcess(self, argv[0], argv, env=env, path=self.cwd)
        return self


class CommandProcess(TwistdProcess):
    """Any command (not twistd) whose output is watched, stopped at cleanup."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: str) -> None:
        super().__init__(name, argv, env)
        self.cwd = cwd

    def start(self) -> CommandProcess:
        env = dict(os.environ, **self.env, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(self, self.args[0], self.args, env=env, path=self.cwd)
        return self


def workdir(test: unittest.TestCase) -> str:
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    return path


ARPC_LINE_RE = r"arpc command: (.+)"


class ArpcCommandLineTests(unittest.TestCase):
    """arps logs, at every start, one ``arpc command:`` line that registers once pasted with the
    relay's host and the local port filled in."""

    timeout = 90

    async def paste(self, line: str, host: str, local_port: int, env: dict[str, str] | None = None) -> str:
        """Run ``line`` in a shell with the placeholders filled in; the arpc's Public URL once it
        logged a line starting ``Registered``."""
        self.assertNotIn("\n", line)
        filled = line.replace("<relay-host>", host).replace("<local-port>", str(local_port))
        self.assertNotIn("<", filled.split("#", 1)[0], "a placeholder is left besides host and port")
        home = workdir(self)
        arpc = ShellProcess("arpc", filled, home, {"HOME": home, **(env or {})}).start()
        self.addCleanup(arpc.stop)
        match = await arpc.wait_for(r"\] Registered\. Public URL: (\S+)")
        await arpc.stop()
        self.assertTrue(os.path.exists(os.path.join(home, ".local", "share", "arpc", "client-id")))
        return match.group(1)

    async def test_generated_key_first_and_later_starts(self):
        """A relay with a generated key on ports that are not 17001/17002: the first start's line
        has the key inline, a later start's reads it with ``cat`` from the absolute path of the
        key file; ``<relay-host>`` stands for the host; both lines register once pasted."""
        data_dir = os.path.abspath(self.mktemp())
        relay = await start_arps(self, data_dir=data_dir, auth_key="")
        key = open(os.path.join(data_dir, "auth-key")).read().strip()
        line = (await relay.proc.wait_for(ARPC_LINE_RE)).group(1)
        self.assertEqual(
            line,
            f"twistd -n arpc --server-addr <relay-host> --control-port {relay.ports['control']} "
            f"--proxy-port {relay.ports['proxy']} --auth-key {key} --local-port <local-port>",
        )
        self.assertIn("/?token=", await self.paste(line, "127.0.0.1", listen_backend(self)))
        await relay.proc.stop()

        relay = await start_arps(self, data_dir=data_dir, auth_key="")
        line = (await relay.proc.wait_for(ARPC_LINE_RE)).group(1)
        self.assertIn(f'--auth-key "$(cat {os.path.join(data_dir, "auth-key")})"', line)
        self.assertNotIn(key, line)
        await self.paste(line, "127.0.0.1", listen_backend(self))

    async def test_public_url_names_the_host(self):
        """With ``--public-url`` the line names the relay's host itself: only the local port is
        left to fill in; a key given with ``--auth-key`` is inline."""
        relay = await start_arps(self, "--public-url", "http://127.0.0.1:8080", "--client-ports", "none")
        line = (await relay.proc.wait_for(ARPC_LINE_RE)).group(1)
        self.assertIn("--server-addr 127.0.0.1 ", line)
        self.assertIn(f"--auth-key {AUTH_KEY} ", line)
        self.assertNotIn("<relay-host>", line)
        await self.paste(line, "(unused)", listen_backend(self))

    async def test_tls_endpoints_with_trust_roots_hint(self):
        """A relay with TLS on its control and proxy ports: the line gives ``tls:`` endpoints and a
        ``trustRoots=`` hint (a shell comment, so the line still runs as pasted); pasted with the
        hint followed (the test's CA is no public one) it registers."""
        relay = await start_arps(self, tls=True)
        line = (await relay.proc.wait_for(ARPC_LINE_RE)).group(1)
        self.assertIn(f"--control-endpoint tls:<relay-host>:{relay.ports['control']} ", line)
        self.assertIn(f"--proxy-endpoint tls:<relay-host>:{relay.ports['proxy']} ", line)
        self.assertRegex(line, r"  # a certificate no public CA signed: add :trustRoots=DIR .*endpoints$")
        trust = f":trustRoots={os.path.abspath(relay.tls['ca_dir'])}"
        for port in (relay.ports["control"], relay.ports["proxy"]):
            line = line.replace(f"<relay-host>:{port} ", f"<relay-host>:{port}{trust} ")
        url = await self.paste(line, "localhost", listen_backend(self))
        self.assertTrue(url.startswith("https://"), url)


class HostRewriterTests(unittest.TestCase):
    """:class:`HostRewriter` on byte streams, without sockets."""

    def feed_all(self, rewriter: HostRewriter, data: bytes, size: int) -> bytes:
        return b"".join(rewriter.feed(data[i : i + size]) for i in range(0, len(data), size))

    def test_each_request_of_a_keep_alive_stream(self):
        """Every head of a stream (bodies by length and chunked between them) gets the new Host and
        keeps the public one in X-Forwarded-Host, whatever the pieces the bytes arrive in;
        bodies pass untouched."""
        stream = (
            b"GET /a HTTP/1.1\r\nHost: relay.test:17100\r\nX-Forwarded-Host: relay.test:17100\r\n\r\n"
            b"POST /b HTTP/1.1\r\nhost: relay.test:17100\r\nContent-Length: 22\r\n\r\n"
            b"Host: not-a-header\r\n\r\n"
            b"PUT /c HTTP/1.1\r\nHost: relay.test:17100\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nHost:\r\n0\r\n\r\n"
            b"GET /d HTTP/1.1\r\nHost: relay.test:17100\r\n\r\n"
        )
        new = b"Host: 127.0.0.1:8888\r\nX-Forwarded-Host: relay.test:17100\r\n\r\n"
        expected = (
            b"GET /a HTTP/1.1\r\nX-Forwarded-Host: relay.test:17100\r\nHost: 127.0.0.1:8888\r\n\r\n"
            b"POST /b HTTP/1.1\r\nContent-Length: 22\r\n" + new + b"Host: not-a-header\r\n\r\n"
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n" + new + b"5\r\nHost:\r\n0\r\n\r\n"
            b"GET /d HTTP/1.1\r\n" + new
        )
        for size in (1, 2, 7, 64, len(stream)):
            self.assertEqual(self.feed_all(HostRewriter(b"127.0.0.1:8888"), stream, size), expected, size)

    def test_own_origin_follows_another_stays(self):
        """The page's own Origin becomes http://<new host>; another site's is left alone."""
        own = HostRewriter(b"127.0.0.1:8000").feed(
            b"POST / HTTP/1.1\r\nHost: relay.test:17100\r\nOrigin: https://relay.test:17100\r\n\r\n"
        )
        self.assertIn(b"\r\nOrigin: http://127.0.0.1:8000\r\n", own)
        self.assertNotIn(b"Origin: https://relay.test", own)
        other = HostRewriter(b"127.0.0.1:8000").feed(
            b"POST / HTTP/1.1\r\nHost: relay.test:17100\r\nOrigin: https://evil.test\r\n\r\n"
        )
        self.assertIn(b"\r\nOrigin: https://evil.test\r\n", other)

    def test_upgrade(self):
        """After an upgrade request, a 101 makes the rest raw (WebSocket frames pass as they are,
        even one that looks like a head); a refused upgrade keeps reading heads."""
        ws = b"GET /ws HTTP/1.1\r\nHost: h:1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        rewriter = HostRewriter(b"127.0.0.1:1")
        self.assertIn(b"Host: 127.0.0.1:1", rewriter.feed(ws))
        self.assertTrue(rewriter.awaiting_answer)
        rewriter.answer(b"HTTP/1.1 1")
        rewriter.answer(b"01 Switching Protocols\r\n\r\n")
        self.assertFalse(rewriter.awaiting_answer)
        frames = b"GET / HTTP/1.1\r\nHost: h:1\r\n\r\n"
        self.assertEqual(rewriter.feed(frames), frames)

        rewriter = HostRewriter(b"127.0.0.1:1")
        rewriter.feed(ws)
        rewriter.answer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertIn(b"Host: 127.0.0.1:1", rewriter.feed(b"GET /next HTTP/1.1\r\nHost: h:1\r\n\r\n"))

    def test_not_http_passes(self):
        """Bytes that are no request head (binary, a malformed head) pass on untouched."""
        for data in (b"\x81\x85abcdefghi", b"NOT A HEAD\r\n\r\nrest"):
            self.assertEqual(HostRewriter(b"x:1").feed(data), data)


async def fetch(test: unittest.TestCase, relay, token: str, path: str = "/echo/x", headers=None):
    response, body = await HTTPClient(test, persistent=False).request(
        "GET", f"{relay.public}{path}?token={token}", headers or {}
    )
    return response, body


class HostHeaderTests(unittest.TestCase):
    """arpc ``--host-header`` with real processes: what the service sees."""

    timeout = 60

    async def test_rewrite_name_and_pass_through(self):
        """``rewrite``: Host is 127.0.0.1:<local port>; ``NAME``: Host is NAME; neither: the
        public Host; X-Forwarded-Host is the public one in all three."""
        backend = listen_backend(self)
        relay = await start_arps(self)
        public_host = f"127.0.0.1:{relay.ports['public']}"
        for extra, expected in (
            (["--host-header", "rewrite"], f"127.0.0.1:{backend}"),
            (["--host-header", "app.internal:3000"], "app.internal:3000"),
            ([], public_host),
        ):
            arpc = await start_arpc(self, relay, *extra, local_port=backend)
            for _ in range(2):  # the second on a tunnel that carried a request already
                response, body = await fetch(self, relay, arpc.token)
                self.assertEqual(response.code, 200)
                headers = json.loads(body)["headers"]
                self.assertEqual(headers["host"], [expected], extra)
                self.assertEqual(headers["x-forwarded-host"], [public_host])
            await arpc.stop()

    def test_usage(self):
        """A bad --host-header value, or one with --tcp, is a usage error naming it."""
        base = ["arpc", "-s", "h", "--auth-key", "k", "--local-port", "1"]
        for extra, expected in (
            (["--host-header", "a b"], "--host-header 'a b': must be 'rewrite' or a host name"),
            (["--host-header", "rewrite", "--tcp"], "--host-header is for forwarding HTTP"),
        ):
            out = run_twistd(*base, *extra)
            self.assertIn(expected, out)


JUPYTER_WHY = None
try:
    import jupyterlab  # noqa: F401
except ImportError:
    JUPYTER_WHY = (
        "jupyterlab is not installed here: the test extra installs it on CPython only (on PyPy 3.9 "
        "pip cannot resolve its dependencies beside cryptography < 44); CI runs this test on CPython"
        if platform.python_implementation() == "PyPy"
        else "jupyterlab is not installed (it is in the test extra: pip install -e '.[test]')"
    )


def readme_lines_after(marker: str, count: int) -> list[str]:
    """The ``count`` command lines of the README literal block that follows ``marker``."""
    text = readme()
    block = text[text.index(marker) :].split("::\n\n", 1)[1]
    return [line.strip() for line in block.splitlines()[:count]]


class JupyterLabTests(browser.BrowserTestCase):
    """The README's JupyterLab recipe: a real JupyterLab behind ``--host-header rewrite``, opened in
    Chromium under a public name (``relay.test``), its kernel WebSocket included."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        if JUPYTER_WHY:
            raise unittest.SkipTest(JUPYTER_WHY)

    async def test_jupyterlab_in_chromium(self):
        """Without the rewrite JupyterLab refuses the public Host (403); with it the login page,
        the lab and a kernel (started over the REST API, code run over its WebSocket) work
        through the relay, Jupyter's own token beside ARP's."""
        jupyter_line, arpc_line = readme_lines_after("JupyterLab, whose own token", 2)
        token = secrets.token_hex(16)
        port = free_port()
        argv = shlex.split(jupyter_line.replace("8888", str(port)).replace("JUPYTER-TOKEN", token))
        self.assertEqual(argv[:2], ["jupyter", "lab"])
        home = workdir(self)
        env = {
            "HOME": home,
            "JUPYTER_CONFIG_DIR": os.path.join(home, "config"),
            "JUPYTER_DATA_DIR": os.path.join(home, "data"),
            "JUPYTER_RUNTIME_DIR": os.path.join(home, "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        argv += ["--allow-root"] if os.geteuid() == 0 else []  # CI containers run as root
        lab = CommandProcess("jupyter", [sys.executable, "-m", "jupyterlab", *argv[2:]], env, home).start()
        self.addCleanup(lab.stop)
        relay = await start_arps(self)
        argv = shlex.split(arpc_line.replace("8888", str(port)))
        self.assertEqual(argv[:3], ["twistd", "-n", "arpc"])
        argv = [{"relay.example.com": "127.0.0.1", "KEY": AUTH_KEY}.get(a, a) for a in argv[2:]]
        argv += ["--control-port", str(relay.ports["control"]), "--proxy-port", str(relay.ports["proxy"])]
        argv += ["--data-dir", self.mktemp()]
        arpc = TwistdProcess("arpc", argv).start()
        self.addCleanup(arpc.stop)
        url = (await arpc.wait_for(r"Public URL: (\S+)")).group(1).replace("127.0.0.1", "relay.test")
        await lab.wait_for(rf"http://127\.0\.0\.1:{port}/", timeout=40)
        no_rewrite = await start_arpc(self, relay, local_port=port)

        def drive(page, token: str) -> dict:
            seen = {}
            plain = page.goto(no_rewrite.url.replace("127.0.0.1", "relay.test"))
            seen["pass-through"] = plain.status
            relay_page = "Answered by the ARP relay" in page.content()
            seen["refused by"] = "the ARP relay" if relay_page else "Jupyter"
            page.goto(url)
            page.wait_for_selector("input[type=password]")
            page.fill("input[type=password]", token)
            page.click("button[type=submit], #login_submit")
            page.wait_for_selector("#jp-main-dock-panel", timeout=30000)
            seen["lab"] = page.url
            seen["kernel"] = page.evaluate(KERNEL_JS)
            return seen

        seen = await browser.in_browser(
            drive, token, extra_args=["--host-resolver-rules=MAP relay.test 127.0.0.1"]
        )
        self.assertEqual((seen["pass-through"], seen["refused by"]), (403, "Jupyter"), seen)
        self.assertIn("/lab", seen["lab"])
        self.assertEqual(seen["kernel"], "42", seen)


#: Run in the lab's page: start a kernel over the REST API and run code over its WebSocket.
KERNEL_JS = """async () => {
  const xsrf = (document.cookie.split('; ').find((c) => c.startsWith('_xsrf=')) || '=').split('=')[1];
  const r = await fetch('/api/kernels', {method: 'POST', body: '{}',
    headers: {'X-XSRFToken': decodeURIComponent(xsrf), 'Content-Type': 'application/json'}});
  if (!r.ok) return 'POST /api/kernels: ' + r.status;
  const kernel = await r.json();
  const ws = new WebSocket(`ws://${location.host}/api/kernels/${kernel.id}/channels`);
  return await new Promise((resolve) => {
    setTimeout(() => resolve('no answer in 20 s'), 20000);
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: 'm1', msg_type: 'execute_request', username: 'arp', session: 's1',
               version: '5.3', date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: 'shell',
      content: {code: 'print(6 * 7)', silent: false, store_history: false,
                user_expressions: {}, allow_stdin: false}}));
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.msg_type === 'stream' && m.content.text.trim() === '42') resolve('42');
    };
    ws.onclose = (e) => resolve('WebSocket closed: ' + e.code);
  });
}"""


def run_twistd(*args: str, cwd: str | None = None, prefix: list[str] | None = None) -> str:
    """Run ``twistd -n --pidfile= ARGS`` to its end; stdout and stderr."""
    argv = (prefix or TWISTD) + list(args)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)
    return result.stdout + result.stderr


class ActionableErrorTests(unittest.TestCase):
    """Each error says what happened and what to do."""

    timeout = 60

    async def test_nothing_listens_on_local_port(self):
        """arpc warns at start that nothing listens on --local-port, and again at the first 502;
        the 502 is an HTML page for a browser's page load (which reloads itself) and JSON for an
        API client, both naming the address."""
        relay = await start_arps(self, "--client-ports", "none")  # page loads served on the public port
        port = free_port()
        arpc = await start_arpc(self, relay, local_port=port)
        warning = f"nothing listens on 127.0.0.1:{port}"
        await arpc.wait_for(warning)
        since = len(arpc.output)
        response, body = await fetch(self, relay, arpc.token, "/", {"Accept": "application/json"})
        self.assertEqual(response.code, 502)
        self.assertIn(f"127.0.0.1:{port}", json.loads(body)["error"])
        self.assertIn("nothing listens there", json.loads(body)["error"])
        await arpc.wait_for(warning, since=since)
        response, body = await HTTPClient(self, persistent=False).request(
            "GET",
            f"{relay.public}/",
            {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "X-ARP-Token": arpc.token},
        )
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        page = body.decode()
        self.assertIn("<h1>502 Bad Gateway</h1>", page)
        self.assertIn(f"127.0.0.1:{port}", page)
        self.assertIn("start it on the machine that runs arpc", page)
        self.assertIn('http-equiv="refresh"', page)
        self.assertEqual(arpc.output.count(warning), 2, "warned at start and at the first 502 only")

    def test_arpc_502_page_in_chromium(self):
        """A browser's page load of arpc's 502 shows the page, not JSON."""
        why = browser.available()
        if why:
            raise unittest.SkipTest(why)
        return self._in_chromium()

    async def _in_chromium(self):
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=free_port())

        def drive(page) -> tuple[int, str]:
            response = page.goto(arpc.url)
            return response.status, page.inner_text("h1")

        status, heading = await browser.in_browser(drive)
        self.assertEqual((status, heading), (502, "502 Bad Gateway"))

    def test_usage_errors(self):
        """--remote-port without --tcp, and a mistyped option with its did-you-mean (which
        ``--help`` does not show)."""
        base = ["-s", "h", "--auth-key", "k", "--local-port", "1"]
        out = run_twistd("arpc", *base, "--remote-port", "20001")
        self.assertIn("twistd arpc: --remote-port is the public port of a --tcp service: add --tcp", out)
        out = run_twistd("arpc", "--server-adr", "h", "--auth-key", "k", "--local-port", "1")
        self.assertIn(
            "twistd arpc: option --server-adr not recognized (did you mean --server-addr?)",
            out.splitlines()[0],
        )
        out = run_twistd("arps", "--pool-sise", "3")
        self.assertIn("(did you mean --pool-size?)", out)
        out = run_twistd("arps", "--zzz")
        self.assertNotIn("did you mean", out)
        self.assertNotIn("did you mean", run_twistd("arpc", "--help"))

    async def test_remote_port_held_by_another_client(self):
        """A second client asking for the --remote-port the first holds is told so (and keeps
        retrying, as a port held by a client may come free)."""
        p = free_port()
        relay = await start_arps(self, "--tcp-ports", f"{p}-{p + 2}", "--tcp-interface", "127.0.0.1")
        backend = listen_backend(self)
        first = await start_arpc(
            self, relay, "--tcp", "--remote-port", str(p), local_port=backend, wait=False
        )
        await first.wait_for(rf"Public address: tcp://127\.0\.0\.1:{p}")
        second = await start_arpc(
            self, relay, "--tcp", "--remote-port", str(p), local_port=backend, wait=False
        )
        await second.wait_for(rf"TCP port {p} is held by another client: ask for another --remote-port")

    async def test_second_arps_in_one_directory(self):
        """A second arps from the directory of a running one names its pid file and where --pidfile
        goes, and exits; with ``--pidfile=`` and the same ports it stops before saying any port
        listens."""
        work = workdir(self)
        ports = {name: free_port() for name in ("control", "proxy", "public")}
        args = ["arps", "--auth-key", AUTH_KEY, "--data-dir", os.path.join(work, "d")]
        args += ["--admin-endpoint", "none"]
        args += [f"--{n}-endpoint=tcp:{p}:interface=127.0.0.1" for n, p in ports.items()]
        python = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
        first = CommandProcess("arps", python + args, {}, work).start()
        self.addCleanup(first.stop)
        await first.wait_for("public listening on")
        pidfile = os.path.join(work, "arps.pid")
        result = subprocess.run(python + args, capture_output=True, text=True, timeout=60, cwd=work)
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertIn(f"holds the pid file {pidfile}", out)
        self.assertIn("before the plugin name: twistd -n --pidfile arps-2.pid arps", out)
        self.assertNotIn("Another twistd server", out)

        # the proxy port is taken (by the first arps): the control port, bound first, is not reported
        args[args.index("--data-dir") + 1] = os.path.join(work, "d2")
        args[-3] = f"--control-endpoint=tcp:{free_port()}:interface=127.0.0.1"
        argv = [*python, "--pidfile=", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=work)
        out = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, out)
        self.assertIn(f"proxy: cannot listen on 'tcp:{ports['proxy']}", out)
        self.assertNotIn("listening on", out)

    def test_redis_without_the_extra(self):
        """``arps --redis`` where txredisapi cannot be imported: one line naming the extra, no traceback."""
        code = "import sys; sys.modules['txredisapi'] = None; from twisted.scripts.twistd import run; run()"
        prefix = [sys.executable, "-c", code, "-n", "--pidfile="]
        data = os.path.abspath(self.mktemp())
        out = run_twistd(
            "arps", "--redis", "redis://127.0.0.1:1/0", "--relay-key", "k" * 32, "--auth-key", AUTH_KEY,
            "--data-dir", data, "--admin-endpoint", "none",
            *(f"--{n}-endpoint=tcp:0:interface=127.0.0.1" for n in ("control", "proxy", "public")),
            prefix=prefix,
        )  # fmt: skip
        lines = [line for line in out.splitlines() if "Traceback" in line or "redis" in line.lower()]
        self.assertEqual(lines, ["--redis needs the [redis] extra: pip install 'arp-relay[redis]'"], out)
        self.assertNotIn("Traceback", out)
        self.assertNotIn("listening on", out)


def quick_start_blocks() -> list[list[str]]:
    """The lines of each literal block of the README from "Quick start" to "How requests are
    routed" (the quick start and the walkthrough), continuation lines joined."""
    text = readme()
    section = text[text.index("Quick start\n===") : text.index("How requests are routed\n===")]
    blocks = []
    for block in section.split("::\n\n")[1:]:
        lines = []
        for line in block.splitlines():
            if not line.startswith("    "):
                break
            lines.append(line.strip())
        blocks.append(lines)
    return blocks


#: Each command line of the quick start and the walkthrough, and the test that runs it (or why
#: none can).  A command added to those sections fails test_every_command_is_run until it is here.
RUN_BY = {
    "pip install . && arp-demo --check": "tests.test_demo.DemoTests.test_readme_quick_start_with_17004_held",
    "pip install -e '.[test]' && python3 -m twisted.trial -j2 tests": (
        "not run by a test: it is CI's own command (.ci/run), checked in test_every_command_is_run"
    ),
    "apt-get install pypy3 pypy3-venv pypy3-dev gcc": "not run: needs root; .ci/run installs the same",
    "pypy3 -m venv /opt/arp-pypy && /opt/arp-pypy/bin/pip install .": "not run: .ci/run makes .venv-pypy",
    "/opt/arp-pypy/bin/twistd -n arps --pool-size 5": "not run: the whole suite runs on that PyPy",
    "twistd -n arps --pool-size 5": "ReadmeWalkthroughTests.test_relay_as_the_readme_starts_it",
    "arpc command: ": "ReadmeWalkthroughTests.test_relay_as_the_readme_starts_it (the logged line)",
    "twistd -n arpc --server-addr relay.example.com --auth-key KEY --local-port 3000": (
        "tests.test_cli.ReadmeCommandsTests.test_arps_and_arpc_from_one_directory"
    ),
    "twistd -n arps --control-endpoint tcp:17001:interface=127.0.0.1": (
        "ReadmeWalkthroughTests.test_laptop_form"
    ),
    'twistd -n arpc --server-addr 127.0.0.1 --auth-key "$(cat ~/.local/share/arps/auth-key)"': (
        "ReadmeWalkthroughTests.test_laptop_form"
    ),
    "twistd -n arps --domain relay.example.com --public-endpoint ssl:443:": (
        "ReadmeWalkthroughTests.test_domain_form"
    ),
    "jupyter lab --no-browser --ip 127.0.0.1 --port 8888": "JupyterLabTests.test_jupyterlab_in_chromium",
    "twistd -n arpc --server-addr relay.example.com --auth-key KEY --local-port 8888 --host-header rewrite": (
        "JupyterLabTests.test_jupyterlab_in_chromium"
    ),
    "twistd -n arpc --server-addr relay.example.com --auth-key KEY --local-port 5173 --host-header rewrite": (
        "ReadmeWalkthroughTests.test_vite_and_django_lines"
    ),
    "twistd -n arpc --server-addr relay.example.com --auth-key KEY --local-port 8000 --host-header rewrite": (
        "ReadmeWalkthroughTests.test_vite_and_django_lines"
    ),
}


class ReadmeWalkthroughTests(unittest.TestCase):
    """Every shell command of the README's quick start and walkthrough, taken from its text."""

    timeout = 90

    def test_every_command_is_run(self):
        """Each command line of those sections is one :data:`RUN_BY` knows; the test command is
        the one CI runs."""
        lines = [line for block in quick_start_blocks() for line in block]
        self.assertGreaterEqual(len(lines), 10)
        for line in lines:
            self.assertTrue(any(line.startswith(known) for known in RUN_BY), f"no test runs {line!r}")
        with open(os.path.join(ROOT, ".ci", "run")) as f:
            ci = f.read()
        self.assertIn("python3 -m pip install -q -e '.[test]'", ci)
        self.assertIn('"$python" -m twisted.trial "$@" ${TARGET:-tests}', ci)  # TARGET: the agents suite
        self.assertIn("run_suite \"CPython $(python3", ci)
        self.assertIn("python3 -j2", ci)

    def block_with(self, start: str) -> list[str]:
        for block in quick_start_blocks():
            if block[0].startswith(start):
                return block
        raise AssertionError(f"no README block starts with {start!r}")

    async def test_relay_as_the_readme_starts_it(self):
        """``twistd -n arps --pool-size 5`` from a fresh home: it keeps the key in
        ``~/.local/share/arps/auth-key`` and logs the ``arpc command:`` line the README shows
        (here with the ports of the loopback endpoints the test adds, as the command as written
        binds every address); pasted, the line registers."""
        (command,) = self.block_with("twistd -n arps --pool-size 5")
        (example,) = self.block_with("arpc command: ")
        work = workdir(self)
        argv = shlex.split(command)[2:] + [
            f"--{name}-endpoint=tcp:0:interface=127.0.0.1" for name in ("control", "proxy", "public", "admin")
        ]
        python = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n"]
        first = CommandProcess("arps", python + argv, {"HOME": work}, work).start()
        self.addCleanup(first.stop)
        await first.wait_for(ARPC_LINE_RE)
        await first.stop()
        key_file = os.path.join(work, ".local", "share", "arps", "auth-key")
        self.assertTrue(os.path.exists(key_file))
        arps = CommandProcess("arps", python + argv, {"HOME": work}, work).start()  # a later start
        self.addCleanup(arps.stop)
        line = (await arps.wait_for(ARPC_LINE_RE)).group(1)
        ports = [(await arps.wait_for(rf"{n} listening on \S+:(\d+)")).group(1) for n in ("control", "proxy")]
        expected = example[len("arpc command: ") :].replace("/home/arp", work)
        expected = expected.replace(
            "--server-addr <relay-host>",
            f"--server-addr <relay-host> --control-port {ports[0]} --proxy-port {ports[1]}",
        )
        self.assertEqual(line, expected)
        await ArpcCommandLineTests.paste(self, line, "127.0.0.1", listen_backend(self))

    async def test_laptop_form(self):
        """The two loopback lines for a laptop, as written but for the port numbers (free ones
        here) and the admin port (the test adds a free one: 17004 may be taken on a shared
        machine): arpc registers with the key read from arps's key file and a request reaches
        the service."""
        arps_line, arpc_line = self.block_with("twistd -n arps --control-endpoint tcp:17001:")
        self.assertNotIn("interface=", arps_line.replace("interface=127.0.0.1", ""))
        work = workdir(self)
        ports = {p: str(free_port()) for p in ("17001", "17002", "17003")}
        for default, port in ports.items():
            arps_line = arps_line.replace(f"tcp:{default}:", f"tcp:{port}:")
        backend = listen_backend(self)
        arps_line += " --admin-endpoint tcp:0:interface=127.0.0.1"
        arps = ShellProcess("arps", arps_line, work, {"HOME": work}).start()
        self.addCleanup(arps.stop)
        await arps.wait_for("public listening on 127.0.0.1:")
        arpc_line = arpc_line.replace("--local-port 3000", f"--local-port {backend}")
        arpc_line += f" --control-port {ports['17001']} --proxy-port {ports['17002']}"
        arpc = ShellProcess("arpc", arpc_line, work, {"HOME": work}).start()
        self.addCleanup(arpc.stop)
        url = (await arpc.wait_for(r"Public URL: (\S+)")).group(1)
        self.assertTrue(url.startswith("http://127.0.0.1:"), url)
        client = HTTPClient(self, persistent=False)
        response, body = await client.request("GET", url.replace("/?", "/echo/x?"))
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["uri"], "/echo/x")
        for proc in (arpc, arps):
            await proc.stop()
            self.assertTrue(proc.stopped_cleanly)

    async def test_vite_and_django_lines(self):
        """The Vite and Django lines, each in front of a stand-in service on a free port: the
        service sees ``Host: 127.0.0.1:<port>``, its page's own Origin as ``http://127.0.0.1:<port>``
        (what Vite's and Django's checks compare) and the public name in X-Forwarded-Host."""
        relay = await start_arps(self, "--client-ports", "none")
        public = f"127.0.0.1:{relay.ports['public']}"
        vite = "twistd -n arpc --server-addr relay.example.com --auth-key KEY --local-port 5173"
        for line in self.block_with(vite):
            backend = listen_backend(self)
            argv = shlex.split(re.sub(r"--local-port \d+", f"--local-port {backend}", line))
            argv = [{"relay.example.com": "127.0.0.1", "KEY": AUTH_KEY}.get(a, a) for a in argv[2:]]
            argv += ["--control-port", str(relay.ports["control"]), "--proxy-port", str(relay.ports["proxy"])]
            arpc = TwistdProcess("arpc", argv + ["--data-dir", self.mktemp()]).start()
            self.addCleanup(arpc.stop)
            token = re.search(r"token=(\w+)", (await arpc.wait_for(r"Public URL: (\S+)")).group(1)).group(1)
            response, body = await HTTPClient(self, persistent=False).request(
                "POST", f"{relay.public}/echo/x", {"X-ARP-Token": token, "Origin": f"http://{public}"}, b"a=1"
            )
            headers = json.loads(body)["headers"]
            self.assertEqual(headers["host"], [f"127.0.0.1:{backend}"])
            self.assertEqual(headers["origin"], [f"http://127.0.0.1:{backend}"])
            self.assertEqual(headers["x-forwarded-host"], [public])
            await arpc.stop()

    async def test_domain_form(self):
        """``--domain`` with a TLS public endpoint as the README gives it (a throw-away wildcard
        certificate, a free loopback port): a client is served at ``https://<id>.relay.example.com``."""
        (line,) = self.block_with("twistd -n arps --domain relay.example.com")
        paths = wildcard_cert(self.mktemp(), "relay.example.com")
        port = free_port()
        line = line.replace("ssl:443:", f"ssl:{port}:interface=127.0.0.1:")
        line = line.replace("privateKey=key.pem", f"privateKey={paths['key']}")
        line = line.replace("certKey=wildcard.pem", f"certKey={paths['cert']}")
        argv = shlex.split(line)
        self.assertEqual(argv[:3], ["twistd", "-n", "arps"])
        extra = ["--auth-key", AUTH_KEY, "--data-dir", self.mktemp()]
        extra += [f"--{n}-endpoint=tcp:0:interface=127.0.0.1" for n in ("control", "proxy", "admin")]
        relay = TwistdProcess("arps", argv[2:] + extra).start()
        self.addCleanup(relay.stop)
        ports = {}
        for name in ("control", "proxy"):
            ports[name] = (await relay.wait_for(rf"{name} listening on \S+:(\d+)")).group(1)
        args = ["arpc", "--server-addr", "127.0.0.1", "--control-port", ports["control"]]
        args += ["--proxy-port", ports["proxy"], "--auth-key", AUTH_KEY, "--data-dir", self.mktemp()]
        arpc = TwistdProcess("arpc", args + ["--local-port", str(listen_backend(self))]).start()
        self.addCleanup(arpc.stop)
        url = (await arpc.wait_for(r"Public URL: (\S+)")).group(1)
        match = re.fullmatch(rf"https://([\w-]+)\.relay\.example\.com:{port}/\?token=(\w+)", url)
        self.assertIsNotNone(match, url)
        host = f"{match.group(1)}.relay.example.com"
        status, sans = await threads.deferToThread(tls_get, port, host, f"/echo/x?token={match.group(2)}")
        self.assertEqual(status, 200)
        self.assertIn("*.relay.example.com", sans)


def wildcard_cert(directory: str, domain: str) -> dict[str, str]:
    """A self-signed certificate for ``*.domain`` and its key, as PEM files in ``directory``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    paths = {"key": os.path.join(directory, "key.pem"), "cert": os.path.join(directory, "wildcard.pem")}
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))  # fmt: skip
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def tls_get(port: int, host: str, path: str) -> tuple[int, list[str]]:
    """GET ``path`` over TLS from 127.0.0.1:``port`` as ``host`` (SNI and Host); the status and the
    DNS names of the certificate served (not verified: it is the test's own self-signed one)."""
    import ssl

    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            der = sock.getpeercert(binary_form=True)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return int(answer.split(b" ", 2)[1]), sans.value.get_values_for_type(x509.DNSName)
