"""The README's first command: ``pip install . && arp-demo --check`` runs ARP end to end on localhost,
also where another program holds one of the ports the demo used to take."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

from twisted.trial import unittest

from tests.helpers import free_port
from tests.test_docs import ROOT, readme


def quick_start_command() -> str:
    """The README quick start's first command, from the README's own text."""
    text = readme()
    section = text[text.index("Quick start\n===") :]
    return re.search(r"::\n\n    (.+)\n", section).group(1)


def demo_script() -> str | None:
    """The installed ``arp-demo`` beside the interpreter under test first (CPython and PyPy may
    both have one)."""
    return shutil.which("arp-demo", path=os.path.dirname(sys.executable)) or shutil.which("arp-demo")


def hold(port: int) -> socket.socket | None:
    """A listening socket on 127.0.0.1:``port`` (None if another program holds it already)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen(1)
    return sock


class DemoTests(unittest.TestCase):
    """``arp-demo --check`` starts arps, arpc and a web app, and proves a page and a WebSocket go through."""

    def run_demo(
        self, argv: list[str], timeout: float = 120, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ, **(extra_env or {}))
        env.pop("ARP_AUTH_KEY", None)
        env["TMPDIR"] = tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        self.assertEqual(os.listdir(tmp), [], "arp-demo left its work directory behind")
        return result

    def assert_demo_ran(self, result: subprocess.CompletedProcess) -> None:
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertRegex(output, r"ARP demo is up\. Open: http://127\.0\.0\.1:\d+/\?token=")
        self.assertIn("arp-demo: page OK", output)
        self.assertIn("arp-demo: WebSocket echo OK", output)

    def test_readme_quick_start_with_17004_held(self):
        """The quick start exactly as the README gives it (``pip install . && arp-demo --check``), while
        another socket holds 127.0.0.1:17004 (the demo relay's admin port before it chose free
        ports): ``pip install .`` installs the package (here into a directory of its own, with the
        dependencies the test environment has) and that ``arp-demo`` passes its check, printing
        the free ports it used."""
        command = quick_start_command()
        self.assertEqual(command, "pip install . && arp-demo --check")
        install, demo = (part.split() for part in command.split(" && "))
        held = hold(17004)  # None: another program holds it already, which is the point too
        if held is not None:
            self.addCleanup(held.close)
        target = os.path.abspath(self.mktemp())
        source = os.path.join(target + "-src")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                *(".git", "_trial_temp*", "node_modules", "build", "*.egg-info", ".venv*"),
                *("bench", "docs", "tests"),
            ),
        )  # a copy, so that pip's build directories never land in the working tree
        pip = [sys.executable, "-m", "pip", *install[1:], "--no-deps", "--quiet", "--target", target]
        built = subprocess.run(pip, cwd=source, capture_output=True, text=True, timeout=300)
        self.assertEqual(built.returncode, 0, built.stdout + built.stderr)
        script = os.path.join(target, "bin", demo[0])
        self.assertTrue(os.path.exists(script), os.listdir(target))
        path = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
        result = self.run_demo([sys.executable, script, *demo[1:]], extra_env={"PYTHONPATH": path})
        self.assert_demo_ran(result)
        ports = re.search(
            r"arp-demo: ports on 127\.0\.0\.1: public (\d+), control (\d+), proxy (\d+), "
            r"admin (\d+), demo app (\d+), client ports (\d+)-(\d+)",
            result.stdout,
        )
        self.assertIsNotNone(ports, result.stdout)
        self.assertNotIn("17004", ports.groups())

    def test_fixed_ports(self):
        """``--public-port``, ``--admin-port``, ``--app-port`` and ``--client-ports`` are the ports used
        (the URL is on the client port)."""
        script = demo_script()
        self.assertIsNotNone(script, "arp-demo is not installed (pip install -e .)")
        names = ("app", "public", "control", "proxy", "admin", "client")
        ports = dict(zip(names, (free_port() for _ in names)))
        while len(set(ports.values())) < len(names):  # two draws may be the same port
            ports = dict(zip(names, (free_port() for _ in names)))
        args = ["--check"]
        for name in names[:-1]:
            args += [f"--{name}-port", str(ports[name])]
        args += ["--client-ports", f"{ports['client']}-{ports['client']}"]
        result = self.run_demo([script, *args])
        self.assert_demo_ran(result)
        self.assertIn(f"Open: http://127.0.0.1:{ports['client']}/?token=", result.stdout)
        self.assertIn(
            f"public {ports['public']}, control {ports['control']}, proxy {ports['proxy']}, "
            f"admin {ports['admin']}, demo app {ports['app']}",
            result.stdout,
        )

    def test_busy_port_in_words(self):
        """A port given with ``--admin-port`` that another program holds: arp-demo exits 1 saying
        which port, whose it is and which option moves it, with arps's last lines."""
        script = demo_script()
        port = free_port()
        held = hold(port)
        self.assertIsNotNone(held)
        self.addCleanup(held.close)
        result = self.run_demo([script, "--check", "--admin-port", str(port)], timeout=60)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(
            f"arp-demo: arps exited early (status 1): port {port} (the relay's admin port) is already "
            "in use by another program; choose another with --admin-port, or leave --admin-port out "
            "for a free one",
            result.stderr,
        )
        self.assertIn("last lines of arps:", result.stderr)
        self.assertIn("Address already in use", result.stderr)

        held_app = hold(free_port())
        self.addCleanup(held_app.close)
        app_port = held_app.getsockname()[1]
        result = self.run_demo([script, "--check", "--app-port", str(app_port)], timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"port {app_port} (the demo app's port) is already in use", result.stderr)

    def test_version(self):
        """``arp-demo --version`` shows ARP's version and exits 0."""
        from importlib import metadata

        result = subprocess.run([demo_script(), "--version"], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), f"arp-demo (ARP) {metadata.version('arp-relay')}")
