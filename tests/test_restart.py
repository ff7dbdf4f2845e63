"""Relay restarts and owner stops, with real arps and arpc processes (issue #19).

After a restart (SIGKILL included) the relay answers the ids it served with 503 "reconnecting"
(never 404 "unknown token"), on the shared port and on each client's own port, until arpc is
back, which it is within seconds; an arpc its owner stopped is "stopped by its owner", not
reconnecting.  A new auth key, a new identity or an unreadable data dir are refused in words.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from twisted.trial import unittest

from tests.helpers import (
    AUTH_KEY,
    HTTPClient,
    free_port,
    free_ports,
    listen_backend,
    raw_exchange,
    spawn_arps,
    start_arpc,
    start_arps,
    status_of,
    wait_until,
)

JSON = {"Accept": "application/json"}


def _head(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")


class RelayRestartTests(unittest.TestCase):
    timeout = 120

    def _ports(self) -> dict[str, int]:
        return free_ports("control", "proxy", "public")

    async def _get(self, client: HTTPClient, url: str) -> tuple[int, dict, object]:
        """GET ``url``: the status, the body (parsed if JSON) and the headers."""
        response, body = await client.request("GET", url, JSON)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"raw": body}
        return response.code, parsed, response.headers

    async def test_sigkill_then_reconnecting_then_back(self):
        """arps killed with SIGKILL comes back knowing the id: 503 "reconnecting" with Retry-After
        and the relay's mark (JSON for API clients, a page that reloads itself for a browser),
        on the shared port and on the client's own port; arpc is registered again seconds after
        the relay listens again, and requests go through."""
        data, ports = self.mktemp(), self._ports()
        relay = await start_arps(self, data_dir=data, ports=ports)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        client = HTTPClient(self, persistent=False)
        code, _, _ = await self._get(client, f"{relay.public}/echo?token={arpc.token}")
        self.assertEqual(code, 200)
        own = urlsplit(arpc.url).port
        self.assertNotEqual(own, ports["public"])
        await relay.proc.kill()

        # back, but with its control port elsewhere: arpc cannot return, so the id stays away
        away = await start_arps(self, data_dir=data, ports={**ports, "control": free_port()})
        await away.proc.wait_for(r"kept 1 client ids from before the restart")
        code, body, headers = await self._get(client, f"{away.public}/echo?token={arpc.token}")
        self.assertEqual(code, 503, body)
        self.assertEqual(body["from"], "relay")
        self.assertEqual(body["reason"], "reconnecting")
        self.assertIn("reconnecting", body["error"])
        self.assertEqual(headers.getRawHeaders("x-arp-from"), ["relay"])
        self.assertEqual(headers.getRawHeaders("retry-after"), ["5"])
        # a browser's page load on the client's own port (same port as before): a small page
        page = await raw_exchange(
            own,
            f"GET /?token={arpc.token} HTTP/1.1\r\nHost: 127.0.0.1:{own}\r\nAccept: text/html\r\n"
            "Sec-Fetch-Mode: navigate\r\nConnection: close\r\n\r\n".encode(),
        )
        self.assertEqual(status_of(page), 503, page[:300])
        self.assertIn("Content-Type: text/html; charset=utf-8", _head(page))
        self.assertIn("X-ARP-From: relay", _head(page))
        self.assertIn(b'<meta http-equiv="refresh" content="5">', page)
        self.assertIn(b"reconnecting", page)
        # an id the relay never served is still unknown, and says who answered
        code, body, headers = await self._get(client, f"{away.public}/?token=nobody-here")
        self.assertEqual((code, body["from"]), (404, "relay"))
        self.assertEqual(headers.getRawHeaders("x-arp-from"), ["relay"])

        await away.proc.stop()
        seen = arpc.output.count("Registered")
        back = await start_arps(self, data_dir=data, ports=ports)
        # the fast retries after a lost registration: back within about a second (bounded wait)
        await wait_until(lambda: arpc.output.count("Registered") > seen, timeout=10)
        code, _, _ = await self._get(client, f"{back.public}/echo?token={arpc.token}")
        self.assertEqual(code, 200)

    async def test_stopped_by_its_owner(self):
        """arpc stopped on purpose: "stopped by its owner at <time>", not "reconnecting", also after
        the relay restarts; the id stays reserved for it and it comes back as before."""
        data, ports = self.mktemp(), self._ports()
        relay = await start_arps(self, data_dir=data, ports=ports)
        arpc_data = self.mktemp()
        backend = listen_backend(self)
        arpc = await start_arpc(self, relay, local_port=backend, data_dir=arpc_data)
        await arpc.stop()
        await relay.proc.wait_for(r"stopped by its owner; keeping its registration")
        client = HTTPClient(self, persistent=False)
        for attempt in ("before", "after a relay restart"):
            code, body, headers = await self._get(client, f"{relay.public}/?token={arpc.token}")
            self.assertEqual(code, 503, (attempt, body))
            when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
            self.assertRegex(body["error"], rf"^client stopped by its owner at {when}")
            self.assertNotIn("reconnecting", body["error"])
            self.assertEqual((body["reason"], body["from"]), ("stopped", "relay"))
            self.assertEqual(headers.getRawHeaders("x-arp-from"), ["relay"])
            if attempt == "before":
                await relay.proc.stop()
                relay = await start_arps(self, data_dir=data, ports=ports)
        again = await start_arpc(self, relay, local_port=backend, data_dir=arpc_data)
        self.assertEqual(again.token, arpc.token)
        code, _, _ = await self._get(client, f"{relay.public}/echo?token={again.token}")
        self.assertEqual(code, 200)

    async def test_another_identity_or_auth_key_after_a_restart(self):
        """After a restart the id is still pinned to its identity: another arpc (another identity
        key) claiming it is refused and served nothing; a relay restarted with another auth key
        forgets the id (its owner could not register with the key it has)."""
        data, ports = self.mktemp(), self._ports()
        relay = await start_arps(self, data_dir=data, ports=ports)
        arpc = await start_arpc(self, relay, local_port=listen_backend(self))
        await arpc.kill()  # gone without a word: "reconnecting"
        await relay.proc.kill()
        relay = await start_arps(self, data_dir=data, ports=ports)
        await relay.proc.wait_for(r"kept 1 client ids")
        imposter = await start_arpc(
            self, relay, "--client-id", arpc.token, local_port=listen_backend(self), wait=False
        )
        await imposter.wait_for(r"is held by another arpc instance")
        client = HTTPClient(self, persistent=False)
        code, body, _ = await self._get(client, f"{relay.public}/?token={arpc.token}")
        self.assertEqual((code, body["reason"]), (503, "reconnecting"))
        self.assertNotIn("Registered", imposter.output)
        await imposter.stop()
        await relay.proc.stop()

        other = await start_arps(self, data_dir=data, ports=ports, auth_key="another-key-0123456789")
        await other.proc.wait_for(r"forgot 1 client ids registered with an auth key this relay no longer has")
        code, body, _ = await self._get(client, f"{other.public}/?token={arpc.token}")
        self.assertEqual((code, body["from"]), (404, "relay"))

    async def test_unreadable_data_dir(self):
        """A log that cannot be read stops arps at start with the path and what to do."""
        data = self.mktemp()
        os.makedirs(os.path.join(data, "known-clients.jsonl"))  # a directory where the log goes
        proc = spawn_arps(self, data_dir=data, auth_key=AUTH_KEY)
        await proc.ended
        self.assertNotEqual(proc.exit_code, 0)
        self.assertIn("known-clients.jsonl", proc.output)
        self.assertIn("give another --data-dir", proc.output)
        self.assertNotIn("Traceback", proc.output)
