"""A page of another origin frames the command-mode console to trick a click (clickjacking)."""

from __future__ import annotations

from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from arp.client.command.service import CONSOLE_DIR, ConsoleFiles


class ConsoleFramingTests(unittest.SynchronousTestCase):
    """The console's pages tell browsers that only its own origin may frame them."""

    def test_console_pages_forbid_foreign_frames(self):
        """``/`` (index.html) carries ``frame-ancestors 'self'`` and ``X-Frame-Options``, so a
        hostile page on another port or host cannot frame the Allow and Revoke buttons."""
        files = ConsoleFiles(str(CONSOLE_DIR))
        files.indexNames = ["index.html"]
        request = DummyRequest([b""])
        resource = files.getChild(b"", request)
        resource.render(request)
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [b"frame-ancestors 'self'"])
        self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"SAMEORIGIN"])
