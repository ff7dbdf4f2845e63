"""A phone watching a session while the relay, then arpc, is killed and restarted (issue #19).

The page is never reloaded: it shows that it is reconnecting (with the relay's reason), and
resumes by itself with ``since=``, so that what happened while it was away appears exactly once.
"""

from __future__ import annotations

import json
import re
import urllib.request

from twisted.internet import defer, reactor, threads

from tests import browser
from tests.command_helpers import Workspace, start_command_arpc
from tests.helpers import free_ports, start_arps, wait_until
from tests.test_approvals_browser import Client
from tests.test_console_browser import PHONE, _ShortTemp, run_in_browser


def blocking(coroutine_function, *args):
    """Run an async test step in the reactor from the browser thread, and wait for it."""
    return threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(coroutine_function(*args)))


def conn_state(page) -> str:
    return page.locator("#conn").get_attribute("data-state") or ""


class RestartBrowserTests(browser.BrowserTestCase):
    timeout = 150

    async def _setup(self) -> None:
        self.ws = Workspace(_ShortTemp(self))
        self.data = self.mktemp()
        self.ports = free_ports("control", "proxy", "public")
        self.relay = await start_arps(self, data_dir=self.data, ports=self.ports)
        self.arpc = await self._arpc()

    async def _arpc(self):
        local_api = ("--api-endpoint", "tcp:0:interface=127.0.0.1")
        return await start_command_arpc(self, self.relay, self.ws, "--permission-mode", "default", *local_api)

    async def _kill_relay(self) -> None:
        await self.relay.proc.kill()

    async def _restart_relay(self) -> None:
        seen = self.arpc.output.count("Registered")
        self.relay = await start_arps(self, data_dir=self.data, ports=self.ports)
        await wait_until(lambda: self.arpc.output.count("Registered") > seen, timeout=15)

    def _answer_at_the_desk(self, session_id: str, approval_id: str) -> int:
        """Allow from the machine itself (arpc's local API) while the relay is down."""
        port = int(self.arpc.output.split("api listening on 127.0.0.1:")[1].split()[0])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/sessions/{session_id}/approvals/{approval_id}",
            data=json.dumps({"decision": "allow"}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.arpc.access}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status

    def _watch_asking(self, page, client: Client, project: str) -> tuple[dict, dict]:
        """In the browser thread: start a session whose agent asks, open its page, wait until the
        card shows and the stream is live; (session, approval)."""
        page.goto(self.arpc.url)
        page.wait_for_selector("text=Projects")
        new = {"executor": "Claude", "prompt": "ASK_BASH tidy up", "projectPath": project}
        code, session = client.call("POST", "/api/sessions", new)
        assert code == 201, session
        [approval] = client.pending(session["id"])
        page.goto(self.arpc.url.split("?")[0] + f"?token={client.token}#/session/{session['id']}")
        page.locator(".approval-card[data-status=pending]").wait_for()
        page.locator("#conn[data-state=live]").wait_for()
        return session, approval

    async def test_relay_killed_and_restarted_under_a_watching_phone(self):
        """A phone watches a session waiting for an approval; arps is killed; the page says it is
        reconnecting; the approval is answered at the desk meanwhile; arps restarts; the page is
        live again without a reload and shows the agent's output after the approval exactly once."""
        await self._setup()
        client = Client(self.relay.public, self.arpc.token, self.arpc.access)
        project = str(self.ws.project)

        def drive(page):
            session, approval = self._watch_asking(page, client, project)
            seen = {"reload": 0}
            page.on("load", lambda _: seen.__setitem__("reload", seen["reload"] + 1))

            # while it is down, the console's "why?" calls get what a relay that does not know the
            # id yet answers (one that lost its data dir, or another relay of a cluster): the
            # relay's 404, which says nothing about the session and must not stop the stream
            asks = re.compile(r".*/api/sessions/[0-9a-f]+\?since=.*")
            unknown = {"error": "unknown token: no client is registered with it", "from": "relay"}
            page.route(
                asks,
                lambda route: route.fulfill(
                    status=404,
                    headers={"X-ARP-From": "relay", "Content-Type": "application/json"},
                    body=json.dumps(unknown),
                ),
            )
            blocking(self._kill_relay)
            page.wait_for_function("document.getElementById('conn').dataset.state !== 'live'")
            page.wait_for_function("/unknown token/.test(document.getElementById('conn').textContent)")
            seen["away"] = page.locator("#conn").inner_text()
            seen["state"] = conn_state(page)
            seen["desk"] = self._answer_at_the_desk(session["id"], approval["id"])
            page.unroute(asks)
            blocking(self._restart_relay)
            page.locator(".msg.assistant .md", has_text="allowed").wait_for(timeout=20000)
            page.locator("#status [data-status=completed]").wait_for()
            seen["allowed"] = page.locator(".msg.assistant .md", has_text="allowed").count()
            seen["card"] = page.locator(".approval-card").first.get_attribute("data-status")
            seqs = page.locator("#events [data-seq]")
            seen["seqs"] = seqs.evaluate_all("els => els.map(e => +e.dataset.seq)")
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertIn("retrying", seen["away"])
        self.assertEqual(seen["state"], "reconnecting")
        self.assertEqual(seen["desk"], 200)
        self.assertEqual(seen["allowed"], 1)
        self.assertEqual(seen["card"], "allowed")
        self.assertEqual(seen["seqs"], sorted(set(seen["seqs"])))  # no event twice
        self.assertEqual(seen["reload"], 0)

    async def test_arpc_killed_and_restarted_under_a_watching_phone(self):
        """arpc is killed under a phone watching a running session: the relay answers for it
        ("reconnecting"), the page says so and keeps trying; arpc restarts: the page comes back by
        itself and shows how the session ended (interrupted: its agent died with arpc), once."""
        await self._setup()
        client = Client(self.relay.public, self.arpc.token, self.arpc.access)
        project = str(self.ws.project)

        async def restart_arpc() -> None:
            await self.arpc.kill()
            self.arpc_again = await self._arpc()

        def drive(page):
            self._watch_asking(page, client, project)
            blocking(self.arpc.kill)
            page.wait_for_function("document.getElementById('conn').dataset.state !== 'live'")
            page.wait_for_function("/offline|reconnecting/.test(document.getElementById('conn').textContent)")
            seen = {"away": page.locator("#conn").inner_text()}
            blocking(restart_arpc)
            page.locator('#events .note.end[data-status="interrupted"]').wait_for(timeout=20000)
            seen["ends"] = page.locator("#events .note.end").count()
            seen["card"] = page.locator(".approval-card").first.get_attribute("data-status")
            return seen

        seen = await run_in_browser(drive, viewport=PHONE)
        self.assertRegex(seen["away"], "offline|reconnecting")
        self.assertEqual(seen["ends"], 1)
        self.assertNotEqual(seen["card"], "pending")
