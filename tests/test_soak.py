"""A short soak in CI: mixed traffic through one arps and two arpc, zero failures, no fd leak."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SoakTests(unittest.TestCase):
    """The soak script (tools/soak.py) at a small size, so it never rots."""

    timeout = 300

    async def test_short_soak(self):
        """3,000 mixed requests (keep-alive, uploads, chunked, new connections): none fail."""
        out = os.path.abspath("soak.json")
        output, errors, code = await utils.getProcessOutputAndValue(
            sys.executable,
            [
                os.path.join(ROOT, "tools", "soak.py"),
                "--requests",
                "3000",
                "--clients",
                "2",
                "--concurrency",
                "16",
                "--max-seconds",
                "120",
                "--json",
                out,
            ],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, (output + errors).decode()[-3000:])
        with open(out) as f:
            result = json.load(f)
        self.assertEqual(result["requests"], 3000)
        self.assertEqual(result["failed"], 0, result["errors"])
        self.assertFalse(result["fd_leak"], result)
