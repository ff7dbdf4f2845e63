"""Several relays on one Redis: registration rate, Redis operations per registration and per
request, and keep-alive req/s of an arps with ``--redis`` against one without.

    python3 bench/cluster.py                 # 1,000 clients over 3 relays, a few minutes
    python3 bench/cluster.py --smoke         # 30 clients, seconds (tests/test_cluster.py runs it)

Relays listen on 127.0.0.1, .2 and .3 with the same ports and share a redis-server of their own
(no persistence).  The clients are real :class:`arp.client.link.RelayLink` objects in one process
(``bench/clients.py``), client *i* on relay *i mod 3*.  Redis operations are read from the
server's ``INFO commandstats`` (which also counts the commands a Lua script runs); the relays run
with ``--redis-timeout 600`` so that their heartbeat (SET, SADD, SMEMBERS, MGET every 100 s) does
not fall in the measured windows, and any command seen there is the load's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run  # noqa: E402  (bench/run.py: processes, backend, wrk)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def free_port_on(hosts: tuple[str, ...]) -> int:
    import socket

    for _ in range(50):
        first = socket.socket()
        first.bind((hosts[0], 0))
        port = first.getsockname()[1]
        ok = True
        for host in hosts[1:]:
            other = socket.socket()
            try:
                other.bind((host, port))
            except OSError:
                ok = False
            other.close()
        first.close()
        if ok:
            return port
    raise RuntimeError("no common free port")


def commandstats(port: int) -> dict[str, int]:
    """Calls per Redis command so far."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True, timeout=10
    ).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name[len("cmdstat_") :]] = int(fields["calls"])
    return calls


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = set(before) | set(after)
    return {
        n: after.get(n, 0) - before.get(n, 0) for n in sorted(names) if after.get(n, 0) != before.get(n, 0)
    }


def non_heartbeat(d: dict[str, int]) -> int:
    """Commands in ``d`` other than our own INFO."""
    return sum(v for k, v in d.items() if k != "info")


def load(url: str, seconds: int, conns: int) -> dict:
    if shutil.which("wrk"):
        return run.run_wrk(url, 1, conns, seconds)
    return run.python_load(url, conns, seconds, close=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5, help="each keep-alive round")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (alternating)")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="30 clients, 1 s rounds")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.seconds, args.rounds = 30, 1, 1
    if not shutil.which("redis-server"):
        raise SystemExit("bench/cluster.py needs redis-server (apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="arp-cluster-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    procs = run.Processes(workdir)
    results: dict = {"clients": args.clients, "relays": len(HOSTS), "machine": run.machine()}
    try:
        backend = run.Backend(procs, workdir, 1 << 20)
        backend.start()
        redis_port = free_port_on(("127.0.0.1",))
        redis = procs.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--maxclients",
                "10000",
            ],
        )
        redis.wait_for("Ready to accept connections", 15)
        url = f"redis://127.0.0.1:{redis_port}/0"
        key = "bench-" + os.urandom(12).hex()
        relay_key = "bench-relays-" + os.urandom(12).hex()  # the relay group's own key
        nofile = max(run.NOFILE_WANT, args.clients * 8 + 1000)
        ports = {name: free_port_on(HOSTS) for name in ("control", "proxy", "public")}
        relays = []
        for host in HOSTS:
            argv = [
                *run.TWISTD,
                "arps",
                "--auth-key",
                key,
                "--data-dir",
                tempfile.mkdtemp(dir=workdir),
                "--admin-endpoint",
                "none",
                "--redis",
                url,
                "--relay-key",
                relay_key,
                "--redis-timeout",
                "600",  # no heartbeat during the measurements: every Redis command seen is the load's
                "--pool-size",
                "5",
            ]
            for name in ("control", "proxy", "public"):
                argv += [f"--{name}-endpoint", f"tcp:{ports[name]}:interface={host}"]  # as users give it
            relay = procs.start(f"arps-{host}", argv, nofile=nofile)
            relay.wait_for("sharing state in Redis", 30)
            relays.append(relay)
        # a new Redis looks like one that lost its data: the relays settle first (at most 30 s),
        # then registrations cost what they cost, one round trip each
        for relay in relays:
            if "settling for" in relay.output():
                relay.wait_for("settle window over", 60)

        # 1. registrations
        before = commandstats(redis_port)
        t0 = time.monotonic()
        loader = procs.start(
            "clients",
            [*run.clients_argv(ports, backend.port, key, args.clients), "--hosts", ",".join(HOSTS)],
            nofile=nofile,
        )
        ids = loader.wait_for(r"IDS (.*)", 30, also=tuple(relays)).group(1).split()
        loader.wait_for(r"READY (\d+) (\d+)", 60 + args.clients * 0.2, also=tuple(relays))
        elapsed = time.monotonic() - t0
        after = commandstats(redis_port)
        d = delta(before, after)
        results["registration"] = {
            "seconds": round(elapsed, 2),
            "per_second": round(args.clients / elapsed, 1),
            "redis_commands": d,
            "redis_commands_per_registration": round(non_heartbeat(d) / args.clients, 2),  # incl. in scripts
            "redis_round_trips_per_registration": round(d.get("eval", 0) / args.clients, 2),
        }
        run.note(f"registered {args.clients} clients over 3 relays in {elapsed:.1f}s; Redis {d}")

        # 2. Redis operations on the request path: a client of relay 1 reached through relays 1 and 2
        ops = {}
        for label, host in (("local", HOSTS[0]), ("relayed", HOSTS[1])):
            before = commandstats(redis_port)
            r = load(f"http://{host}:{ports['public']}/1k?token={ids[0]}", args.seconds, args.conns)
            d = delta(before, commandstats(redis_port))
            ops[label] = {
                "requests": r["requests"],
                "rps": r["rps"],
                "ok": r["ok"],
                "redis_commands": d,
                "redis_ops_per_request": round(non_heartbeat(d) / max(1, r["requests"]), 6),
            }
            run.note(f"requests ({label}): {r['requests']} at {r['rps']} req/s; Redis {d}")
        results["request_path"] = ops
        procs.stop(loader)

        # 3. keep-alive req/s, --redis against without, alternating rounds
        plain, plain_ports = run.start_arps(procs, workdir, key, nofile=nofile)
        run.start_arpc(procs, workdir, key, plain_ports, backend.port, "plain-" + os.urandom(12).hex())
        token_plain = "plain-bench-" + os.urandom(12).hex()
        run.start_arpc(procs, workdir, key, plain_ports, backend.port, token_plain)
        token_redis = "redis-bench-" + os.urandom(12).hex()
        cluster_ports = {"control": ports["control"], "proxy": ports["proxy"]}
        run.start_arpc(procs, workdir, key, cluster_ports, backend.port, token_redis)
        time.sleep(1.0)
        a, b = [], []
        for _ in range(args.rounds):
            b.append(
                load(
                    f"http://127.0.0.1:{plain_ports['public']}/1k?token={token_plain}",
                    args.seconds,
                    args.conns,
                )
            )
            a.append(
                load(f"http://127.0.0.1:{ports['public']}/1k?token={token_redis}", args.seconds, args.conns)
            )
        ratio = statistics.median(x["rps"] for x in a) / statistics.median(x["rps"] for x in b)
        results["keep_alive"] = {
            "with_redis_rps": [x["rps"] for x in a],
            "without_redis_rps": [x["rps"] for x in b],
            "ratio_of_medians": round(ratio, 3),
            "ok": all(x["ok"] for x in a + b),
        }
        run.note(
            f"keep-alive req/s with --redis {[x['rps'] for x in a]} without {[x['rps'] for x in b]}: "
            f"{ratio:.3f}x"
        )
        results["ok"] = results["keep_alive"]["ok"] and all(
            v["ok"] and v["redis_ops_per_request"] == 0 for v in ops.values()
        )
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "cluster-smoke.json" if args.smoke else "cluster.json"
    (out / name).write_text(json.dumps(results, indent=2) + "\n")
    print("RESULT " + json.dumps({k: v for k, v in results.items() if k != "machine"}))
    sys.exit(0 if results.get("ok") else 1)


if __name__ == "__main__":
    main()
