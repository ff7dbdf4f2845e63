"""The command lines: help text, generated keys and ids, log files."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess

from twisted.trial import unittest

from tests.helpers import TWISTD, HTTPClient, TwistdProcess, listen_backend, start_arpc, start_arps


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
