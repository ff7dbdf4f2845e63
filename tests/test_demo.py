"""The README's first command: ``arp-demo --check`` runs ARP end to end on localhost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

from tests.helpers import free_port


class DemoTests(unittest.TestCase):
    """``arp-demo --check`` starts arps, arpc and a web app, and proves a page and a WebSocket go through."""

    def test_check(self):
        """The installed ``arp-demo`` script exits 0 after fetching the page and echoing over a WebSocket."""
        script = shutil.which("arp-demo") or shutil.which("arp-demo", path=os.path.dirname(sys.executable))
        self.assertIsNotNone(script, "arp-demo is not installed (pip install -e .)")
        ports = [free_port() for _ in range(5)]
        args = ["--check"]
        for name, port in zip(("app", "public", "control", "proxy", "admin"), ports, strict=True):
            args += [f"--{name}-port", str(port)]
        env = dict(os.environ)
        env.pop("ARP_AUTH_KEY", None)
        env["TMPDIR"] = tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        result = subprocess.run([script, *args], capture_output=True, text=True, timeout=120, env=env)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertRegex(output, r"ARP demo is up\. Open: http://127\.0\.0\.1:\d+/\?token=")
        self.assertIn("arp-demo: page OK", output)
        self.assertIn("arp-demo: WebSocket echo OK", output)
        self.assertEqual(os.listdir(tmp), [], "arp-demo left its work directory behind")
