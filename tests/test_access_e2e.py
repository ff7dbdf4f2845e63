"""Access tokens end to end: real arps + ``arpc --command-mode`` processes on loopback."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from twisted.trial import unittest

from arp.client.command.access import cookie_name
from arp.server.origins import cookie_name as routing_cookie
from tests.command_helpers import Api, Workspace, start_command_arpc
from tests.helpers import raw_exchange, start_arps, status_of


def _headers(raw: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


class OwnerTokenTests(unittest.TestCase):
    """The owner's Public URL carries the routing id and the access token, and stays the same."""

    timeout = 90

    async def test_url_survives_restarts_and_rotation(self):
        """Every start prints the same URL (and a QR code of it); the relay's id alone reaches
        arpc but grants nothing; ``--rotate-owner-token`` prints a new one and the old one is
        refused as revoked; ``--no-qr`` leaves the QR code out."""
        ws = Workspace(self)
        relay = await start_arps(self)
        first = await start_command_arpc(self, relay, ws)
        query = parse_qs(urlsplit(first.url).query)
        self.assertEqual(set(query), {"token", "access"})
        self.assertRegex(first.access, r"^arpa_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")
        await first.wait_for("Scan to open the console on a phone")
        await first.wait_for("▀")
        anonymous = Api(self, relay, first.token)
        code, answer = await anonymous.get("/api/health")
        self.assertEqual((code, answer["reason"]), (401, "missing"))
        self.assertIn("access", answer["error"])
        code, _ = await Api(self, relay, first.token, first.access).get("/api/health")
        self.assertEqual(code, 200)
        await first.stop()

        second = await start_command_arpc(self, relay, ws, "--no-qr")
        self.assertEqual(second.url, first.url)
        code, _ = await Api(self, relay, second.token, first.access).get("/api/sessions")
        self.assertEqual(code, 200)
        self.assertNotIn("Scan to open", second.output)
        await second.stop()

        third = await start_command_arpc(self, relay, ws, "--rotate-owner-token")
        self.assertEqual(third.token, first.token)  # the same address
        self.assertNotEqual(third.access, first.access)  # a new key
        code, answer = await Api(self, relay, third.token, first.access).get("/api/sessions")
        self.assertEqual((code, answer["reason"]), (401, "revoked"))
        code, me = await Api(self, relay, third.token, third.access).get("/api/me")
        self.assertEqual(
            (code, me["owner"], me["allows"]), (200, True, ["view", "prompt", "approve", "admin"])
        )

    async def test_printed_url_through_the_relay_sets_both_cookies(self):
        """Opening the printed URL (the client's own port): the relay trades ``?token=`` for its
        per-client routing cookie and keeps ``?access=``; arpc trades that for its own HttpOnly
        cookie and lands on ``/``. With both cookies the API answers; with the routing cookie alone
        it is a 401."""
        ws = Workspace(self)
        relay = await start_arps(self)
        arpc = await start_command_arpc(self, relay, ws)
        port = int(arpc.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])  # its own port
        path = arpc.url.split(str(port), 1)[1]

        async def get(target: str, cookies: str = "", accept: str = "text/html") -> bytes:
            extra = f"Cookie: {cookies}\r\n" if cookies else ""
            return await raw_exchange(
                port,
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n{extra}"
                "Connection: close\r\n\r\n".encode(),
            )

        first = await get(path)
        self.assertEqual(status_of(first), 302)
        headers = _headers(first)
        self.assertEqual(headers["location"], [f"/?access={arpc.access}"])
        routing = headers["set-cookie"][0].split(";")[0]
        self.assertEqual(routing, f"{routing_cookie(arpc.token).decode()}={arpc.token}")
        second = await get(headers["location"][0], routing)
        self.assertEqual(status_of(second), 302)
        headers = _headers(second)
        self.assertEqual(headers["location"], ["/"])
        access = headers["set-cookie"][0]
        self.assertTrue(access.startswith(f"{cookie_name(arpc.token)}={arpc.access}; Path=/"), access)
        self.assertIn("HttpOnly", access)
        self.assertIn("SameSite=Strict", access)
        both = f"{routing}; {access.split(';')[0]}"
        api = await get("/api/me", both, "application/json\r\nX-ARP-Console: 1")  # the console's own call
        self.assertEqual(status_of(api), 200)
        self.assertTrue(json.loads(api.split(b"\r\n\r\n", 1)[1])["owner"])
        alone = await get("/api/me", routing, "application/json\r\nX-ARP-Console: 1")
        self.assertEqual(status_of(alone), 401)
        page = await get("/", routing)  # the console's files are public; its data is not
        self.assertEqual(status_of(page), 200)
