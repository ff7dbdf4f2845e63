"""The relay's admin endpoint: JSON API, Prometheus metrics, disconnecting a client, its token."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.helpers import AUTH_KEY, HTTPClient, TwistdProcess, listen_backend, start_arpc, start_arps


class AdminTests(unittest.TestCase):
    """Operators see clients and counts, scrape metrics and can drop a client."""

    timeout = 60

    async def test_clients_metrics_and_disconnect(self):
        """Requests show up in the client list and in /metrics; DELETE frees the id."""
        port = listen_backend(self)
        relay = await start_arps(self)
        arpc = await start_arpc(self, relay, local_port=port)
        client = HTTPClient(self)
        for i in range(7):
            response, _ = await client.request("GET", f"{relay.public}/echo/{i}?token={arpc.token}")
            self.assertEqual(response.code, 200)
        await client.request("GET", f"{relay.public}/?token=unknown")
        response, body = await client.request("GET", f"{relay.admin}/admin/api/clients")
        data = json.loads(body)
        (record,) = data["clients"]
        self.assertEqual(record["clientId"], arpc.token)
        self.assertTrue(record["online"])
        self.assertEqual(record["mode"], "http")
        self.assertEqual(record["requests"], 7)
        self.assertGreater(record["bytesOut"], 0)
        self.assertEqual(data["totals"]["clients_online"], 1)
        self.assertEqual(data["totals"]["statuses"], {"200": 7, "404": 1})

        response, body = await client.request("GET", f"{relay.admin}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
        }
        self.assertEqual(samples[("arp_requests_total", (("status", "200"),))], 7)
        self.assertEqual(samples[("arp_requests_total", (("status", "404"),))], 1)
        self.assertEqual(samples[("arp_clients", (("state", "online"),))], 1)
        pool_requests = sum(samples[("arp_pool_requests_total", (("outcome", o),))] for o in ("hit", "miss"))
        self.assertEqual(pool_requests, 7)
        self.assertGreater(samples[("arp_bytes_total", (("direction", "out"),))], 0)

        response, body = await client.request("GET", f"{relay.admin}/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"ARP relay", body)

        response, body = await client.request("DELETE", f"{relay.admin}/admin/api/clients/{arpc.token}")
        self.assertEqual(response.code, 200)
        await arpc.wait_for(r"the relay dropped this client")
        response, body = await client.request("GET", f"{relay.admin}/admin/api/clients/nobody")
        self.assertEqual(response.code, 404)

    async def test_admin_token(self):
        """With --admin-token, requests without it get 401; with it (header or query) they pass."""
        relay = await start_arps(self, "--admin-token", "sesame")
        client = HTTPClient(self)
        response, body = await client.request("GET", f"{relay.admin}/admin/api/stats")
        self.assertEqual(response.code, 401)
        self.assertIn("admin token", json.loads(body)["error"])
        response, _ = await client.request(
            "GET", f"{relay.admin}/admin/api/stats", {"Authorization": "Bearer sesame"}
        )
        self.assertEqual(response.code, 200)
        response, _ = await client.request("GET", f"{relay.admin}/metrics?token=sesame")
        self.assertEqual(response.code, 200)

    async def test_public_admin_needs_token(self):
        """An admin endpoint open to other hosts without a token is a usage error."""
        proc = TwistdProcess(
            "arps", ["arps", "--auth-key", AUTH_KEY, "--data-dir", self.mktemp(), "--admin-endpoint", "tcp:0"]
        ).start()
        self.addCleanup(proc.stop)
        await proc.ended
        self.assertNotEqual(proc.exit_code, 0)
        self.assertIn("--admin-token", proc.output)
