"""Discovery convergence on a simulated LAN: how long until every node routes to every other.

    sudo .venv/bin/python bench/lan_convergence.py [--hosts 2 8 16] [--runs 3]

Needs root (network namespaces). For each size N: a cold start (N nodes started at once,
one per host) and a warm join (one node into a running cluster of N-1). "Converged" means
every node knows every node's subscriber, i.e. routes to it. Writes
bench/results/discovery.json and bench/DISCOVERY.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from smartroute.testing import wait_until
from smartroute.testing.cluster import AgentProcess
from smartroute.testing.lan import Host, Lan, lan_available

HERE = Path(__file__).resolve().parent
CONVERGE_TIMEOUT_S = 60.0


def start(host: Host, log_dir: Path) -> AgentProcess:
    return AgentProcess(cluster="bench", prefix=host.prefix, host=host.address, mdns=True,
                        interfaces=[host.address], log_level="WARNING",
                        log_path=log_dir / f"{host.namespace}.log")


def converged(nodes: list[AgentProcess]) -> bool:
    return all(len(node.call("subscribers")) == len(nodes) for node in nodes)


def cold(n: int, log_dir: Path) -> dict[str, float]:
    """N nodes at once: seconds from the last node being up (and from the first spawn)."""
    with Lan(n) as lan:
        nodes: list[AgentProcess | None] = [None] * n
        ready_at = [0.0] * n

        def run(i: int) -> None:
            nodes[i] = start(lan.hosts[i], log_dir)
            ready_at[i] = time.monotonic()

        spawned = time.monotonic()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = [node for node in nodes if node is not None]
        assert len(started) == n, "a node did not start"
        for i, node in enumerate(started):
            node.call("subscribe", name=f"user:{i}")
        wait_until(lambda: converged(started), CONVERGE_TIMEOUT_S, interval=0.005,
                   what="cold convergence")
        done = time.monotonic()
        for node in started:
            node.kill()
        return {"from_last_up_s": done - max(ready_at), "from_first_spawn_s": done - spawned}


def warm(n: int, log_dir: Path) -> dict[str, float]:
    """One node into a running cluster of N-1: seconds from its spawn (and from it being up)."""
    with Lan(n) as lan:
        nodes = [start(host, log_dir) for host in lan.hosts[:-1]]
        for i, node in enumerate(nodes):
            node.call("subscribe", name=f"user:{i}")
        wait_until(lambda: converged(nodes), CONVERGE_TIMEOUT_S, what="running cluster")
        spawned = time.monotonic()
        late = start(lan.hosts[-1], log_dir)
        up = time.monotonic()
        late.call("subscribe", name="user:late")
        nodes.append(late)
        wait_until(lambda: converged(nodes), CONVERGE_TIMEOUT_S, interval=0.005,
                   what="warm convergence")
        done = time.monotonic()
        for node in nodes:
            node.kill()
        return {"from_up_s": done - up, "from_spawn_s": done - spawned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = lan_available()
    if reason is not None:
        print(f"skipped: {reason}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for n in args.hosts:
            for kind, measure in (("cold", cold), ("warm", warm)):
                samples = [measure(n, Path(logs)) for _ in range(args.runs)]
                for metric in samples[0]:
                    values = [s[metric] for s in samples]
                    rows.append({"workload": f"discovery {kind} start, {n} hosts",
                                 "system": "smartroute", "metric": metric,
                                 "value": statistics.median(values), "unit": "s",
                                 "runs": len(values), "min": min(values), "max": max(values)})
                    print(rows[-1], flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "discovery.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Discovery convergence on a simulated LAN",
        "",
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; hosts are network namespaces on one bridge; "
        "one node per host, mDNS on the host's LAN interface only, default timings.",
        "Converged = every node routes to every node's subscriber. Medians of "
        f"{args.runs} runs (min-max). Produced by `bench/lan_convergence.py`.",
        "",
        "`from_last_up_s` (cold) and `from_up_s` (warm) start when the last node's `start()` "
        "has returned; `from_first_spawn_s` / `from_spawn_s` include starting the Python "
        "processes, which dominates on this 2-core machine (~0.15 s each, 16 at once ~1.6 s).",
        "Before registration skipped mDNS probing (the instance name is a random 128-bit id), "
        "a cold start of 2 hosts took 1.12 s and a warm join 0.99 s from `start()`.",
        "",
        "| workload | metric | median | min | max |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['workload']} | {r['metric']} | {r['value']:.3f} s | {r['min']:.3f} | "
              f"{r['max']:.3f} |" for r in rows]
    (HERE / "DISCOVERY.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
