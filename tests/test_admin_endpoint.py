"""The admin endpoint's loopback check reads endpoint strings the way Twisted binds them, and the
admin API refuses changes a page on another site could make (and hosts a rebinding page uses)."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial import unittest

from arp import options
from tests.certs import make_ca_and_cert
from tests.helpers import (
    AUTH_KEY,
    HTTPClient,
    listen_backend,
    spawn_arps,
    start_arpc,
    start_arps,
)

# (endpoint string, whether only this host can reach it once Twisted has bound it)
HOSTILE = [
    # the last interface= is the one Twisted binds
    (r"tcp:0:interface=127.0.0.1:interface=0.0.0.0", False),
    (r"tcp:0:interface=0.0.0.0:interface=127.0.0.1", True),
    (r"tcp:0:interface=127.0.0.1:interface=127.0.0.2", True),
    (r"tcp:0:interface=localhost:interface=0.0.0.0", False),
    (r"tcp:interface=127.0.0.1:port=0:interface=", False),
    # every interface, spelled several ways
    (r"tcp:0", False),
    (r"tcp:0:interface=", False),
    (r"tcp:0:interface=0.0.0.0", False),
    (r"tcp:0:interface=0", False),
    (r"tcp:0:interface=\:\:", False),
    (r"tcp6:0", False),
    (r"tcp6:0:interface=\:\:", False),
    (r"tcp6:0:interface=\:\:1:interface=\:\:", False),
    # loopback, spelled several ways
    (r"tcp:0:interface=127.0.0.1", True),
    (r"tcp:0:interface=127.1", True),
    (r"tcp:0:interface=localhost", True),
    (r"tcp:0:interface=\:\:1", True),
    (r"tcp6:0:interface=\:\:1", True),
    (r"tcp6:0:interface=\:\::interface=\:\:1", True),
    (r"tcp:0:interface=\:\:ffff\:127.0.0.1", True),
    (r"tcp:0:interface=0\:0\:0\:0\:0\:0\:0\:1", True),
    # a UNIX socket is local; endpoints whose address the string does not tell are not
    (r"unix:/tmp/arp-admin.sock", True),
    (r"stdio:", False),
]

# strings Twisted refuses: so do we, with a clear error
INVALID = [
    r"unix:/tmp/x.sock:interface=0.0.0.0",  # UNIX sockets take no interface
    r"unix:/tmp/interface=0.0.0.0",  # Twisted reads this as a keyword too
    r"TCP:0:interface=127.0.0.1",  # endpoint types are lower case
    r"tcp:0:interface=127.0.0.1:backlog=many",
    r"nosuchkind:0",
    r"systemd:domain=INET:index=7",  # no such inherited descriptor
]


class EndpointJudgementTests(unittest.TestCase):
    """``options.is_loopback`` judges endpoint strings as Twisted binds them."""

    def test_hostile_strings(self):
        """Duplicate interfaces, IPv6 forms, unix:, 0.0.0.0, ::, localhost: each judged as bound."""
        for description, loopback in HOSTILE:
            self.assertEqual(options.is_loopback(description), loopback, description)

    def test_ssl_with_interface(self):
        """ssl: endpoints are judged by the interface they bind, the last one given."""
        paths = make_ca_and_cert(self.mktemp())
        base = f"ssl:0:privateKey={paths['key']}:certKey={paths['cert']}"
        self.assertFalse(options.is_loopback(base))
        self.assertFalse(options.is_loopback(base + ":interface=127.0.0.1:interface=0.0.0.0"))
        self.assertTrue(options.is_loopback(base + ":interface=0.0.0.0:interface=127.0.0.1"))
        self.assertTrue(options.is_loopback(base + r":interface=\:\:1"))

    def test_invalid_strings_are_errors(self):
        """Strings Twisted cannot listen on raise ValueError, which the options turn into usage errors."""
        for description in INVALID:
            self.assertRaises(ValueError, options.is_loopback, description)

    async def test_judgement_matches_a_real_bind(self):
        """For the strings that bind loopback, Twisted's real listen binds the address we read."""
        for description, loopback in HOSTILE:
            if not loopback or not description.startswith(("tcp:", "tcp6:")):
                continue
            expected = options.listen_address(description)
            port = await serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
            self.addCleanup(port.stopListening)
            bound = port.getHost().host
            self.assertTrue(bound.startswith(("127.", "::1", "::ffff:127.")), (description, bound))
            if expected.host not in ("localhost", "127.1", r"0:0:0:0:0:0:0:1"):
                self.assertEqual(bound, expected.host, description)

    def test_arps_refuses_a_reachable_admin_without_token(self):
        """arps' options refuse every admin endpoint reachable from elsewhere unless a token is set."""
        from arp.server.tap import Options

        for description, loopback in HOSTILE:
            args = ["--auth-key", AUTH_KEY, "--admin-endpoint", description]
            if loopback:
                Options().parseOptions(args)
            else:
                with self.assertRaises(usage.UsageError, msg=description) as caught:
                    Options().parseOptions(args)
                self.assertIn("--admin-token", str(caught.exception))
                Options().parseOptions([*args, "--admin-token", "t"])
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--auth-key", AUTH_KEY, "--admin-endpoint", INVALID[0]])
        self.assertIn("--admin-endpoint", str(caught.exception))

    def test_arpc_api_endpoint_is_checked_at_start(self):
        """arpc --api-endpoint: a string Twisted cannot listen on, or no --command-mode, is a usage error."""
        from arp.client.tap import Options

        root = self.mktemp()
        os.makedirs(root)
        base = ["--server-addr", "h", "--auth-key", "k", "--command-mode", "--project-root", root]
        Options().parseOptions([*base, "--api-endpoint", "tcp:0:interface=127.0.0.1"])
        for description in INVALID:
            with self.assertRaises(usage.UsageError, msg=description) as caught:
                Options().parseOptions([*base, "--api-endpoint", description])
            self.assertIn("--api-endpoint", str(caught.exception))
        forward = ["--server-addr", "h", "--auth-key", "k", "--local-port", "1"]
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions([*forward, "--api-endpoint", "tcp:0:interface=127.0.0.1"])
        self.assertIn("--command-mode", str(caught.exception))


class HostileAdminEndpointTests(unittest.TestCase):
    """The attack from the review, on a real arps."""

    timeout = 60

    async def test_duplicate_interface_is_refused(self):
        """``tcp:P:interface=127.0.0.1:interface=0.0.0.0`` without a token: arps does not start."""
        proc = spawn_arps(
            self, control=None, proxy=None, public=None, admin="tcp:0:interface=127.0.0.1:interface=0.0.0.0"
        )
        await proc.ended
        self.assertEqual(proc.exit_code, 1)
        self.assertIn("--admin-token", proc.output)
        self.assertNotIn("listening", proc.output)

    async def test_last_interface_is_the_one_bound(self):
        """``interface=0.0.0.0:interface=127.0.0.1`` is accepted because Twisted binds 127.0.0.1."""
        relay = await start_arps(self, "--admin-endpoint", "tcp:0:interface=0.0.0.0:interface=127.0.0.1")
        match = await relay.proc.wait_for(r"admin listening on (\S+):\d+")
        self.assertEqual(match.group(1), "127.0.0.1")


class AdminCrossSiteTests(unittest.TestCase):
    """Changes through the admin API need a request a foreign page cannot send unasked."""

    timeout = 60

    async def start(self):
        self.relay = await start_arps(self)
        self.arpc = await start_arpc(self, self.relay, local_port=listen_backend(self))
        self.client = HTTPClient(self)
        self.url = f"{self.relay.admin}/admin/api/clients/{self.arpc.token}"

    async def online(self) -> bool:
        response, body = await self.client.request("GET", self.url)
        return response.code == 200 and json.loads(body)["online"]

    async def refused(self, method: str, path: str, headers: dict, body: bytes = b"") -> str:
        response, answer = await self.client.request(method, self.url + path, headers, body)
        self.assertEqual(response.code, 403, answer)
        self.assertTrue(await self.online())
        return json.loads(answer)["error"]

    async def test_cross_site_and_simple_requests_are_refused(self):
        """Form-like POSTs, foreign Origins and cross-site fetches get 403; the client stays."""
        await self.start()
        own = self.relay.admin
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        why = await self.refused("POST", "/disconnect", form, b"x=1")
        self.assertIn("application/json", why)
        await self.refused("POST", "/disconnect", {"Content-Type": "text/plain"}, b"{}")
        await self.refused("POST", "/disconnect", {}, b"")
        why = await self.refused(
            "POST",
            "/disconnect",
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
            b"{}",
        )
        self.assertIn("Origin", why)
        await self.refused("DELETE", "", {"Origin": "null"})
        await self.refused("DELETE", "", {"Origin": own.replace("127.0.0.1", "localhost")})
        why = await self.refused("DELETE", "", {"Sec-Fetch-Site": "cross-site", "Origin": own})
        self.assertIn("Sec-Fetch-Site", why)
        await self.refused("POST", "/disconnect", {"X-ARP-Admin": "1", "Sec-Fetch-Site": "same-site"})
        other_port = {"Origin": "http://127.0.0.1:9", "Sec-Fetch-Site": "same-site"}  # another local page
        await self.refused("DELETE", "", other_port)

    async def test_same_origin_and_scripted_changes_pass(self):
        """The panel's own DELETE (same Origin) and a curl POST with a JSON type or X-ARP-Admin work."""
        await self.start()
        response, _ = await self.client.request(
            "POST", self.url + "/disconnect", {"Content-Type": "application/json; charset=utf-8"}, b"{}"
        )
        self.assertEqual(response.code, 200)
        dropped = await self.arpc.wait_for("the relay dropped this client")
        await self.arpc.wait_for("Public URL", since=dropped.end())
        headers = {"Origin": self.relay.admin, "Sec-Fetch-Site": "same-origin"}
        response, _ = await self.client.request("DELETE", self.url, headers)
        self.assertEqual(response.code, 200)

    async def test_rebinding_host_is_refused_without_token(self):
        """Without --admin-token, a Host that is a DNS name (a rebound page's) gets 403 even for GET."""
        await self.start()
        port = self.relay.ports["admin"]
        for host in (f"rebind.example:{port}", f"127.0.0.1.nip.io:{port}", "evil"):
            response, body = await self.client.request("GET", self.url, {"Host": host})
            self.assertEqual(response.code, 403, host)
            self.assertNotIn(self.arpc.token, body.decode())
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"admin.localhost:{port}", f"[::1]:{port}"):
            response, _ = await self.client.request("GET", self.url, {"Host": host})
            self.assertEqual(response.code, 200, host)
