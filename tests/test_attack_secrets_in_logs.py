"""Secrets in URLs reach no log.

A twisted.web ``Site`` writes a combined access-log line for every request to the process's
log, target and ``Referer`` included.  arpc's command-mode site logged every share link opened
(``/?access=arpa_...``, tokens given to other people and devices), every ``?access=`` API call
and every ``Referer`` holding one; arps's admin site logged ``?token=<admin token>``.  Those logs
are arpc's daily files, twistd's log file or the journal: readable by more people than the
tokens are meant for.  Now the access log keeps the line and drops the values.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from arp.logs import redact_query
from arp.server.admin import admin_site
from arp.server.public import PublicConfig, PublicFactory
from arp.server.registry import Registry, RelayConfig
from tests.helpers import HTTPClient
from tests.test_attack_cookie_riding import Site

ADMIN_TOKEN = "admin-secret-0123456789abcdef0123456789"


class LogCapture:
    """Every log event's text while a test runs."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        self.lines.append(formatEvent(event) or "")

    def access_lines(self, path: str) -> list[str]:
        """The access-log lines of requests for ``path``."""
        return [line for line in self.lines if f" {path}" in line and "HTTP/1.1" in line]


class SecretsInLogsTests(unittest.TestCase):
    """The access logs of arpc's site and of the relay's admin site."""

    timeout = 30

    async def test_arpc_access_log_holds_no_access_token(self):
        """A share link opened (``/?access=``), an API call with ``?access=`` and one whose
        ``Referer`` holds a token: each is logged, none with the token."""
        logs = LogCapture(self)
        site = Site(self, [])
        shared = site.store.create({"name": "phone", "scopes": ["view"]})[1]
        http = HTTPClient(self)
        base = f"http://{site.host}"
        await http.request("GET", f"{base}/?token=client1&access={shared}", {"Accept": "text/html"})
        response, _ = await http.request("GET", f"{base}/api/me?access={shared}", {})
        self.assertEqual(response.code, 200)
        await http.request("GET", f"{base}/api/me", {"Referer": f"{base}/?x=1&access={shared}"})
        text = "\n".join(logs.lines)
        self.assertEqual(len(logs.access_lines("/api/me")), 2, text[-2000:])
        self.assertNotIn(shared, text)
        self.assertNotIn(shared.split("_")[2], text)  # not even the secret part
        self.assertIn("access=[redacted]", text)

    async def test_admin_access_log_holds_no_admin_token(self):
        """``?token=<admin token>`` on the admin API is answered and logged without the token."""
        logs = LogCapture(self)
        clock = Clock()
        registry = Registry(RelayConfig(), "auth-key-0123456789abcdef0123", clock)
        public = PublicFactory(registry, PublicConfig(), clock)
        port = reactor.listenTCP(0, admin_site(registry, public, ADMIN_TOKEN), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/admin/api/stats?token={ADMIN_TOKEN}"
        response, _ = await HTTPClient(self).request("GET", url, {"Referer": url})
        self.assertEqual(response.code, 200)
        text = "\n".join(logs.lines)
        self.assertEqual(len(logs.access_lines("/admin/api/stats")), 1, text[-2000:])
        self.assertNotIn(ADMIN_TOKEN, text)

    def test_redaction_keeps_the_rest(self):
        """Only the values go; other parameters, the path and a fragment stay."""
        self.assertEqual(
            redact_query(b"/a/b?x=1&token=T&access=arpa_1_2;y=2#frag"),
            b"/a/b?x=1&token=[redacted]&access=[redacted];y=2#frag",
        )
        self.assertEqual(redact_query(b"/mytoken=1"), b"/mytoken=1")
        self.assertEqual(redact_query(b"/?xtoken=1"), b"/?xtoken=1")
