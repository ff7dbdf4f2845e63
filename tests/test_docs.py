"""The README stays true: it renders cleanly and documents every command-line flag."""

from __future__ import annotations

import os
import re

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.rst")) as f:
        return f.read()


class ReadmeTests(unittest.TestCase):
    """README.rst is valid reStructuredText and lists every option of arps and arpc."""

    def test_renders_without_warnings(self):
        """docutils renders the README with no warning or error."""
        from docutils.core import publish_string

        publish_string(readme(), writer_name="null", settings_overrides={"halt_level": 2, "report_level": 2})

    def test_every_flag_documented(self):
        """Each long option of both plugins appears in the README."""
        from arp.client.tap import Options as ClientOptions
        from arp.server.tap import Options as ServerOptions

        text = readme()
        for options in (ServerOptions, ClientOptions):
            names = [p[0] for p in options.optParameters] + [f[0] for f in getattr(options, "optFlags", [])]
            names += [
                m.replace("_", "-")
                for m in re.findall(
                    r"def opt_(\w+)",
                    open(
                        os.path.join(
                            ROOT, "arp", "client" if options is ClientOptions else "server", "tap.py"
                        )
                    ).read(),
                )
            ]
            for name in names:
                self.assertIn(f"``--{name}``", text, f"--{name} is not documented in README.rst")
