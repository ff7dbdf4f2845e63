"""The benchmark's smoke run: it must keep working, whatever the figures are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"
HARD_TIMEOUT = 240


def run_script(script: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run a benchmark script as a user would; its result and the tail of its output."""
    env = dict(os.environ)
    env.pop("ARP_AUTH_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=HARD_TIMEOUT, env=env
    )
    return proc, proc.stdout[-4000:] + proc.stderr[-4000:]


class SmokeTests(unittest.TestCase):
    """``bench/run.py --smoke`` runs end to end and reports sane figures."""

    def test_smoke_run(self) -> None:
        """Every target present (at least direct and arp), every response checked, floors and scale."""
        out = Path(self.mktemp())
        out.mkdir(parents=True)
        proc, log = run_script(RUN, "--smoke", "--out", str(out))
        self.assertEqual(proc.returncode, 0, log)
        result_file = out / "smoke.json"
        self.assertTrue(result_file.exists(), log)
        self.assertTrue((out / "smoke.md").exists(), log)
        results = json.loads(result_file.read_text())

        targets = results["targets"]
        self.assertIn("direct", targets, log)
        self.assertIn("arp", targets, log)
        expected = {"direct", "splice", "splice-pypy", "arp", "arp-pypy", "ssh"} - set(results["skipped"])
        self.assertEqual(set(targets), expected, log)
        for name, target in targets.items():
            for test in ("keepalive", "single", "newconn"):
                figures = target[test]
                self.assertGreater(figures["requests"], 0, f"{name} {test}")
                self.assertGreater(figures["rps"], 0, f"{name} {test}")
                self.assertGreater(figures["p50_us"], 0, f"{name} {test}")
                self.assertGreaterEqual(figures["p99_us"], figures["p50_us"], f"{name} {test}")
                self.assertEqual(figures["bad_status"], 0, f"{name} {test}")
                self.assertEqual(figures["bad_size"], 0, f"{name} {test}")
                self.assertEqual(figures["socket_errors"], 0, f"{name} {test}")
            bulk = target["bulk"]
            self.assertEqual(bulk["failures"], [], name)
            self.assertGreater(bulk["download_mbps"], 0, name)
            self.assertGreater(bulk["upload_mbps"], 0, name)
            self.assertTrue(target["ok"], name)
            if name != "direct":
                self.assertIn("added_p50_us", target)
                for when in ("idle", "after"):
                    for side in ("server", "client"):
                        self.assertGreater(target[when][side]["rss_mb"], 0, f"{name} {when} {side}")

        floor = results["floor"]
        self.assertLess(floor["python_mb"], floor["twistd_mb"], floor)
        # arps is a twistd process: it cannot hold less than an empty one (else the floor is mismeasured)
        self.assertLess(floor["twistd_mb"], targets["arp"]["idle"]["server"]["rss_mb"], floor)

        scale = results["scale"]
        self.assertTrue(scale["clients"], log)
        for s in scale["clients"]:
            self.assertTrue(s["ok"], s)
            self.assertGreater(s["arps_rss_mb"], 0)
        ws = scale["websockets"]
        self.assertTrue(ws["ok"], ws)
        self.assertEqual(ws["opened"], ws["websockets"])
        self.assertEqual(ws["echo_ok"], ws["websockets"])
        self.assertTrue(results["ok"], log)


class ABTests(unittest.TestCase):
    """``bench/ab.py`` compares a git revision with the working tree, round by round."""

    def test_one_round_against_head(self) -> None:
        """One short round of HEAD against the working tree: both relay every request, medians printed."""
        proc, log = run_script(RUN.with_name("ab.py"), "HEAD", "--rounds", "1", "--seconds", "1")
        self.assertEqual(proc.returncode, 0, log)
        self.assertRegex(proc.stdout, r"round 1 +HEAD: +[\d,]+ req/s +arps +[\d.]+ us", log)
        self.assertRegex(proc.stdout, r"round 1 +worktree: +[\d,]+ req/s", log)
        self.assertIn("new/old: req/s", proc.stdout, log)
        self.assertNotIn("FAILED", proc.stdout, log)


class ClusterSmokeTests(unittest.TestCase):
    """``bench/cluster.py --smoke``: three relays on one Redis, 30 clients."""

    def test_cluster_smoke_run(self) -> None:
        """It runs end to end; registrations take one Redis round trip each and requests none."""
        from tests.cluster_helpers import need_redis

        need_redis()
        out = Path(self.mktemp())
        out.mkdir(parents=True)
        proc, log = run_script(RUN.parent / "cluster.py", "--smoke", "--out", str(out))
        self.assertEqual(proc.returncode, 0, log)
        results = json.loads((out / "cluster-smoke.json").read_text())
        self.assertEqual(results["registration"]["redis_round_trips_per_registration"], 1.0, log)
        for path in ("local", "relayed"):
            figures = results["request_path"][path]
            self.assertGreater(figures["requests"], 0, log)
            self.assertEqual(figures["redis_ops_per_request"], 0, log)
        self.assertTrue(results["keep_alive"]["ok"], log)
