"""Reliability report: run the fault, fuzz and flow-control suites and a soak; print the figures.

    python3 tools/reliability.py                      # full soak (100k requests)
    python3 tools/reliability.py --soak-requests 5000 # quicker

Prints a reStructuredText table (the README's "Reliability" section is this
output) and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = {
    "faults": ["tests.test_faults", "tests.test_relay", "tests.test_netfault", "tests.test_shutdown"],
    "bad input": ["tests.test_fuzz", "tests.test_http", "tests.test_public_unit"],
    "flow control": ["tests.test_flow"],
}


def run_trial(modules: list[str]) -> tuple[int, int, float]:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="arp-rel-") as cwd:
        result = subprocess.run(
            [sys.executable, "-m", "twisted.trial", *modules], cwd=cwd,
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=1800,
        )  # fmt: skip
    out = result.stdout + result.stderr
    summary = re.findall(r"^(?:PASSED|FAILED) \((.*)\)$", out, re.M)
    counts = dict(re.findall(r"(\w+)=(\d+)", summary[-1])) if summary else {}
    passed = int(counts.get("successes", 0))
    failed = sum(int(counts.get(k, 0)) for k in ("failures", "errors", "unexpectedSuccesses"))
    if not summary:
        failed += 1
    return passed, failed, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak-requests", type=int, default=100000)
    parser.add_argument("--soak-clients", type=int, default=4)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from tests.test_fuzz import EXAMPLES

    rows = []
    bad = 0
    for name, modules in SUITES.items():
        passed, failed, seconds = run_trial(modules)
        bad += failed
        rows.append((name, f"{passed} passed, {failed} failed ({seconds:.0f} s)"))
    rows.append(("fuzz inputs per run", f"{sum(EXAMPLES.values())} (+ hypothesis parser/framer cases)"))
    out_dir = tempfile.TemporaryDirectory(prefix="arp-soak-result-")
    out = os.path.join(out_dir.name, "soak.json")
    soak = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "soak.py"), "--requests", str(args.soak_requests),
         "--clients", str(args.soak_clients), "--json", out],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if soak.returncode != 0 and not os.path.exists(out):
        print(soak.stdout + soak.stderr)
        return 1
    with open(out) as f:
        result = json.load(f)
    out_dir.cleanup()
    bad += result["failed"] + int(result["fd_leak"])
    rows.append(
        (
            "soak requests (failed)",
            f"{result['requests']} ({result['failed']}) at {result['req_per_s']} req/s",
        )
    )
    rows.append(
        ("arps RSS growth per 100k requests", f"{result['arps_rss_growth_kb_per_100k'] / 1024:.1f} MB")
    )
    rows.append(
        ("arpc RSS growth per 100k requests", f"{result['arpc_rss_growth_kb_per_100k'] / 1024:.1f} MB")
    )
    rows.append(
        (
            "arps open fds before / after",
            f"{result['before']['arps']['fds']} / {result['after']['arps']['fds']}",
        )
    )
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    line = "=" * width + " " + "=" * value_width
    print(line)
    for label, value in rows:
        print(label.ljust(width), value)
    print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
