"""Compare two revisions of ARP on the keep-alive benchmark, in alternating rounds.

    python3 bench/ab.py OLD [NEW] [--rounds 3] [--seconds 5] [--python PYTHON] [--warmup 1]

``OLD`` and ``NEW`` are git revisions (``NEW`` defaults to the working tree).
Each round runs arps and arpc of one revision, then of the other, against the
same backend (nginx, as in ``bench/run.py``): ``wrk -t2 -c50`` keep-alive with
every response checked, the CPU each of arps and arpc spent per request, and
``wrk -t1 -c1`` for the latency of one connection.  Alternating rounds and
taking medians is what makes a 5 % difference visible on a noisy machine,
where two full runs minutes apart differ by 10 %.  ``--python`` runs arps and
arpc on another interpreter (e.g. a PyPy venv's ``bin/python``, with ARP's
dependencies installed in it); give PyPy's JIT ``--warmup 10`` seconds of load
before measuring.  This is how the
optimisations in the README's "Performance" section were measured.  Loopback
only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: processes, backend, wrk)

WORKTREE = "worktree"


def source_tree(rev: str, workdir: Path) -> Path:
    """A directory holding ARP at ``rev`` (the repository itself for the working tree)."""
    if rev == WORKTREE:
        return REPO
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True, check=True, timeout=60
    ).stdout
    dest = workdir / ("src-" + rev.replace("/", "_"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.9.17+ / 3.10.12+ / 3.11.4+
            tar.extractall(dest, filter="data")
        else:  # our own `git archive`: only plain files and directories of the repository
            tar.extractall(dest)
    return dest


def one_round(
    procs: bench.Processes, workdir: Path, backend: bench.Backend, root: Path, seconds: int, warmup: int = 1
) -> dict:
    """Start arps and arpc from ``root``, load them, stop them; their figures."""
    env = {"PYTHONPATH": str(root)}  # ahead of any installed copy of arp
    key = "ab-" + os.urandom(12).hex()
    client_id = "ab" + os.urandom(15).hex()
    arps, ports = bench.start_arps(procs, workdir, key, env=env)
    arpc = bench.start_arpc(procs, workdir, key, ports, backend.port, client_id, env=env)
    try:
        time.sleep(1.0)  # the pool fills
        url = f"http://127.0.0.1:{ports['public']}/1k?token={client_id}"
        bench.run_wrk(url, 2, 50, warmup)  # warm up (PyPy: let the JIT compile the hot path)

        def cpu_s() -> dict[str, float]:
            return {name: bench.proc_stat(child.pid)[1] for name, child in (("arps", arps), ("arpc", arpc))}

        before = cpu_s()
        load = bench.run_wrk(url, 2, 50, seconds)
        after = cpu_s()
        single = bench.run_wrk(url, 1, 1, seconds)
    finally:
        procs.stop(arpc)
        procs.stop(arps)
    cpu = {name: (after[name] - before[name]) * 1e6 / max(load["requests"], 1) for name in before}
    return {
        "rps": load["rps"],
        "arps_us": round(cpu["arps"], 1),
        "arpc_us": round(cpu["arpc"], 1),
        "p50_us": single["p50_us"],
        "ok": load["ok"] and single["ok"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="git revision to compare against (e.g. HEAD~3, a tag)")
    parser.add_argument("new", nargs="?", default=WORKTREE, help="git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running both (3)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each wrk run (5)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for arps and arpc (this one)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load first (1; PyPy: 10)")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup <= 120:
        raise SystemExit("--warmup must be 1 to 120 seconds")
    if not shutil.which(args.python):
        raise SystemExit(f"--python {args.python}: no such interpreter")
    bench.TWISTD[0] = args.python
    if not shutil.which("wrk"):
        raise SystemExit("bench/ab.py needs wrk (Debian package wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="arp-ab-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    procs = bench.Processes(workdir)
    results: dict[str, list[dict]] = {args.old: [], args.new: []}
    try:
        roots = {rev: source_tree(rev, workdir) for rev in results}
        backend = bench.Backend(procs, workdir, 1024 * 1024)
        backend.start()
        for n in range(args.rounds):
            order = list(results) if n % 2 == 0 else list(reversed(results))  # neither always goes first
            for rev in order:
                r = one_round(procs, workdir, backend, roots[rev], args.seconds, args.warmup)
                results[rev].append(r)
                bench.note(
                    f"round {n + 1} {rev:>12}: {r['rps']:9,.0f} req/s  arps {r['arps_us']:5.1f} us  "
                    f"arpc {r['arpc_us']:5.1f} us per request  one connection p50 {r['p50_us']} us"
                    + ("" if r["ok"] else "  FAILED RESPONSES")
                )
        backend.stop()
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    bench.note(f"\nmedians ({args.python}, {args.warmup} s warm-up):")
    med = {rev: {k: statistics.median(r[k] for r in rs) for k in ("rps", "arps_us", "arpc_us", "p50_us")}
           for rev, rs in results.items()}  # fmt: skip
    for rev, m in med.items():
        bench.note(
            f"  {rev:>12}: {m['rps']:9,.0f} req/s  arps {m['arps_us']:5.1f} us  arpc {m['arpc_us']:5.1f} us"
            f"  p50 {m['p50_us']:.0f} us"
        )
    old, new = med[args.old], med[args.new]
    bench.note(
        f"  new/old: req/s {new['rps'] / old['rps']:.2f}x, arps CPU {new['arps_us'] / old['arps_us']:.2f}x, "
        f"arpc CPU {new['arpc_us'] / old['arpc_us']:.2f}x"
    )
    return 0 if all(r["ok"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
