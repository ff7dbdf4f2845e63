"""The command lines: help text, generated keys and ids, log files."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import sys
from importlib import metadata

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import FilteringLogObserver, globalLogPublisher
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from arp import options
from tests.helpers import (
    TWISTD,
    HTTPClient,
    TwistdProcess,
    free_port,
    listen_backend,
    start_arpc,
    start_arps,
)


def twistd_output(*args: str) -> str:
    result = subprocess.run(TWISTD + list(args), capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


class HelpTests(unittest.TestCase):
    """``twistd --help`` lists the plugins and each plugin explains its options."""

    def test_plugins_listed(self):
        """Both plugins appear in twistd's command list."""
        out = twistd_output("--help")
        self.assertIn("arps", out)
        self.assertIn("arpc", out)

    def test_arps_help(self):
        """arps --help names every port option with its default."""
        out = twistd_output("arps", "--help")
        for flag in (
            "--control-port",
            "--proxy-port",
            "--public-port",
            "--pool-size",
            "--retention",
            "--auth-key",
            "--public-endpoint",
            "--admin-endpoint",
            "--tcp-ports",
            "--grace",
        ):
            self.assertIn(flag, out)
        self.assertIn("[default: 17003]", out)
        self.assertIn("[default: 5]", out)

    def test_arpc_help_and_usage_errors(self):
        """arpc --help explains the options; a bad option value is refused with a message."""
        out = twistd_output("arpc", "--help")
        for flag in ("--server-addr", "--local-port", "--client-id", "--auth-key", "--tcp", "--data-dir"):
            self.assertIn(flag, out)
        out = twistd_output("arpc", "--server-addr", "x", "--auth-key", "k", "--local-port", "99999")
        self.assertIn("must be a port number", out)
        out = twistd_output("arps", "--pool-size", "0")
        self.assertIn("must be a positive integer", out)


class ReactorTests(unittest.TestCase):
    """arps and arpc run on arp-epoll unless ``--reactor`` names another reactor."""

    timeout = 60

    def test_reactor_listed(self):
        """``twistd --help-reactors`` offers arp-epoll."""
        self.assertIn("arp-epoll", twistd_output("--help-reactors"))

    async def test_default_and_chosen_reactor(self):
        """Without --reactor both use RelayReactor; ``--reactor poll`` gets poll; requests go through."""
        backend = listen_backend(self)
        relay = await start_arps(self)
        await relay.proc.wait_for(r"reactor class: arp\.reactor\.RelayReactor")
        client = await start_arpc(self, relay, local_port=backend)
        await client.wait_for(r"reactor class: arp\.reactor\.RelayReactor")
        await self._get(relay, client.token)
        await client.stop()
        polled = TwistdProcess("arpc", ["--reactor", "poll", *client.args]).start()
        self.addCleanup(polled.stop)
        await polled.wait_for(r"reactor class: twisted\.internet\.pollreactor\.PollReactor")
        await polled.wait_for(r"Public URL")
        await self._get(relay, client.token)

    async def _get(self, relay, token: str) -> None:
        response, body = await HTTPClient(self, persistent=False).request(
            "GET", f"{relay.public}/echo/x?token={token}"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["uri"], "/echo/x")


class FilesTests(unittest.TestCase):
    """Keys, ids and logs written to the data directories."""

    timeout = 60

    async def test_generated_auth_key(self):
        """Without --auth-key arps generates one (mode 0600), prints the arpc line, reuses it."""
        data_dir = self.mktemp()
        relay = await start_arps(self, data_dir=data_dir, auth_key="")
        key_path = os.path.join(data_dir, "auth-key")
        key = open(key_path).read().strip()
        self.assertEqual(len(key), 48)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertIn(f"--auth-key {key}", relay.proc.output)
        await relay.proc.stop()
        relay = await start_arps(self, data_dir=data_dir, auth_key="")
        self.assertIn("using the auth key kept in", relay.proc.output)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self), auth_key=key)
        self.assertTrue(arpc.url)

    async def test_client_id_kept_and_log_file(self):
        """arpc's random id survives a restart; it writes arpc.log.YYYY-MM-DD in <data-dir>/logs."""
        relay = await start_arps(self)
        data_dir = self.mktemp()
        port = listen_backend(self)
        first = await start_arpc(self, relay, local_port=port, data_dir=data_dir)
        self.assertRegex(first.token, r"^[0-9a-f]{32}$")
        await first.stop()
        second = await start_arpc(self, relay, local_port=port, data_dir=data_dir)
        self.assertEqual(first.token, second.token)
        log = os.path.join(data_dir, "logs", f"arpc.log.{datetime.date.today().isoformat()}")
        with open(log) as f:
            self.assertIn(f"Public URL: {second.url}", f.read())
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(data_dir, "identity-key")).st_mode), 0o600)

    async def test_guessable_client_id_warns(self):
        """A short --client-id gets a warning, since it is the key to the service."""
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, "--client-id", "demo", local_port=listen_backend(self))
        self.assertIn("short or guessable", arpc.output)


def help_entries(text: str) -> dict[str, str]:
    """The help text of each ``--option`` in twistd's help output, joined onto one line."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"\s+(?:-\w, )?--([\w-]+)=?\s*(.*)", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current and line.startswith(" " * 20) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


class NewcomerTests(unittest.TestCase):
    """What a new user meets first: the help, usage errors, ``--version``."""

    timeout = 60

    def test_help_texts_are_consistent(self):
        """No option's help states two defaults or ends a sentence twice (``..``)."""
        for command in ("arps", "arpc"):
            entries = help_entries(twistd_output(command, "--help"))
            self.assertIn("tcp-interface" if command == "arps" else "remote-port", entries)
            for name, text in entries.items():
                self.assertNotIn("..", text, f"{command} --{name}: {text}")
                self.assertFalse(
                    "(default" in text and "[default" in text, f"{command} --{name} has two defaults: {text}"
                )

    def test_usage_error_comes_first_with_a_hint(self):
        """A usage error is the first line, naming the option, then one hint line; exit status 1."""
        cases = [
            (["arps", "--pool-size", "0"], "--pool-size '0': must be a positive integer"),
            (["arps", "--no-such-flag"], "--no-such-flag"),
            (["arpc", "--auth-key", "k", "--local-port", "3000"], "--server-addr HOST"),
            (["arpc", "--server-addr", "x", "--auth-key", "k", "--local-port", "99999"], "--local-port"),
        ]
        cases.append((["arpc", "-s", "x", "--auth-key", "k", "--local-port", "1"], "ARP_LOG_LEVEL 'loud'"))
        for args, expected in cases:
            env = dict(os.environ, ARP_LOG_LEVEL="loud" if "ARP_LOG_LEVEL" in expected else "info")
            result = subprocess.run(TWISTD + args, capture_output=True, text=True, timeout=60, env=env)
            lines = (result.stdout + result.stderr).strip().splitlines()
            self.assertEqual(result.returncode, 1, lines)
            self.assertEqual(len(lines), 2, lines)
            self.assertTrue(lines[0].startswith(f"twistd {args[0]}: "), lines)
            self.assertIn(expected, lines[0])
            self.assertEqual(lines[1], f"Try 'twistd {args[0]} --help' for the options.")

    def test_version_is_arps_version(self):
        """``twistd arps --version`` and ``twistd arpc --version`` show ARP's version from its metadata."""
        version = metadata.version("arp-relay")
        for command in ("arps", "arpc"):
            out = twistd_output(command, "--version")
            self.assertIn(f"{command} (ARP) {version}", out)

    def test_usage_errors_raise_outside_twistd(self):
        """Parsed directly (no twistd around it), the options still raise UsageError."""
        from arp.server.tap import Options

        self.assertRaises(usage.UsageError, Options().parseOptions, ["--pool-size", "0"])


class PidfileTests(unittest.TestCase):
    """arps and arpc each default to a pid file of their own."""

    def parse(self, *args: str) -> ServerOptions:
        config = ServerOptions()
        config.parseOptions(list(args))
        return config

    def test_default_pidfile_per_plugin(self):
        """Without --pidfile, arps writes arps.pid and arpc arpc.pid (twistd's default is twistd.pid)."""
        arps = self.parse("-n", "arps", "--auth-key", "k")
        self.assertEqual(arps["pidfile"], os.path.abspath("arps.pid"))
        arpc = self.parse("-n", "arpc", "--server-addr", "h", "--auth-key", "k", "--local-port", "1")
        self.assertEqual(arpc["pidfile"], os.path.abspath("arpc.pid"))

    def test_explicit_pidfile_wins(self):
        """--pidfile PATH and --pidfile= (none) are kept as given."""
        self.assertEqual(self.parse("--pidfile", "mine.pid", "arps")["pidfile"], os.path.abspath("mine.pid"))
        self.assertEqual(self.parse("--pidfile=", "arps")["pidfile"], "")


class LogNoiseTests(unittest.TestCase):
    """Routine Twisted events stay out of an info-level log."""

    def test_timing_out_client_is_not_info(self):
        """An idle HTTP connection timed out by twisted.web logs nothing at info, but does at debug."""
        seen = {}
        for level in ("info", "debug"):
            events = []
            observer = FilteringLogObserver(events.append, [options.log_predicate(level)])
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
            clock = Clock()
            site = Site(Resource(), timeout=5)
            channel = site.buildProtocol(None)
            channel.callLater = clock.callLater
            channel.makeConnection(StringTransport())
            clock.advance(6)
            globalLogPublisher.removeObserver(observer)
            seen[level] = [e.get("log_format", "") for e in events]
        self.assertTrue(any("Timing out client" in f for f in seen["debug"]), seen)
        self.assertFalse(any("Timing out client" in f for f in seen["info"]), seen)


class ForwardErrorTests(unittest.TestCase):
    """The 502 arpc answers for a dead local service names that service."""

    def test_502_names_host_and_port(self):
        """A refused connection to 127.0.0.1:3000 gives a 502 whose body says 127.0.0.1:3000."""
        from twisted.internet.error import ConnectionRefusedError

        from arp.client.forward import ForwardTunnel, LocalService, backend_endpoint

        class Refusing:
            def connect(self, factory):
                return defer.fail(ConnectionRefusedError())

        for host, port, expected in (("127.0.0.1", 3000, "127.0.0.1:3000"), ("::1", 8080, "[::1]:8080")):
            self.assertEqual(backend_endpoint(None, host, port).address, expected)
            tunnel = ForwardTunnel(b"H", LocalService(Refusing(), expected), False, set())
            transport = StringTransport()
            tunnel.makeConnection(transport)
            tunnel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = transport.value()[1:].partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 502 "), head)
            answer = json.loads(body)
            self.assertEqual(answer["service"], expected)
            self.assertIn(expected, answer["error"])


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")


def readme_command(plugin: str) -> list[str]:
    """The first ``twistd -n <plugin> ...`` command line of the README's quick start, as argv."""
    with open(README) as f:
        match = re.search(rf"^\s+(twistd -n {plugin} .*)$", f.read(), re.MULTILINE)
    return match.group(1).split()


class ReadmeProcess(TwistdProcess):
    """A README command line run as written (no ``--pidfile=``), in a given directory."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str]) -> None:
        super().__init__(argv[2], argv[1:], env)
        self.argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv[1:]]
        self.cwd = cwd

    def start(self) -> ReadmeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARP_", "XDG_"))}
        env.update(self.env, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(self, self.argv[0], self.argv, env=env, path=self.cwd)
        return self


class ReadmeCommandsTests(unittest.TestCase):
    """The README's own commands, run from one directory as a newcomer would."""

    timeout = 90

    async def test_arps_and_arpc_from_one_directory(self):
        """``twistd -n arps ...`` then ``twistd -n arpc ...`` from one directory both run, each with
        its own pid file; the dead local service's 502 names it; both stop and remove their pid files."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        env = {"HOME": work}  # the generated key and the client id land in <work>/.local/share
        arps_argv = readme_command("arps")
        self.assertEqual(arps_argv[:3], ["twistd", "-n", "arps"])
        arps_argv += [
            f"--{name}-endpoint=tcp:0:interface=127.0.0.1" for name in ("control", "proxy", "public")
        ]
        arps_argv += ["--admin-endpoint=tcp:0:interface=127.0.0.1"]
        arps = ReadmeProcess(arps_argv, work, env).start()
        self.addCleanup(arps.stop)
        ports = {}
        for name in ("control", "proxy", "public"):
            ports[name] = (await arps.wait_for(rf"{name} listening on \S+:(\d+)")).group(1)
        key = (await arps.wait_for(r"--auth-key (\w+)")).group(1)

        service_port = str(free_port())  # nothing listens there: the service is "down"
        arpc_argv = readme_command("arpc")
        self.assertEqual(arpc_argv[:3], ["twistd", "-n", "arpc"])
        replace = {"relay.example.com": "127.0.0.1", "KEY": key, "3000": service_port}
        arpc_argv = [replace.get(arg, arg) for arg in arpc_argv]
        arpc_argv += ["--control-port", ports["control"], "--proxy-port", ports["proxy"]]
        arpc = ReadmeProcess(arpc_argv, work, env).start()
        self.addCleanup(arpc.stop)
        url = (await arpc.wait_for(r"Public URL: \S+token=(\w+)")).group(1)

        for proc, name in ((arps, "arps.pid"), (arpc, "arpc.pid")):
            with open(os.path.join(work, name)) as f:
                self.assertEqual(int(f.read()), proc.pid)
        self.assertFalse(os.path.exists(os.path.join(work, "twistd.pid")))

        response, body = await HTTPClient(self, persistent=False).request(
            "GET", f"http://127.0.0.1:{ports['public']}/?token={url}"
        )
        self.assertEqual(response.code, 502)
        self.assertIn(f"127.0.0.1:{service_port}", json.loads(body)["error"])

        await arpc.stop()
        await arps.stop()
        self.assertTrue(arpc.stopped_cleanly and arps.stopped_cleanly)
        self.assertEqual(sorted(f for f in os.listdir(work) if f.endswith(".pid")), [])
