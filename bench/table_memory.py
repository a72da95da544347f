"""Table memory (issue 12): what 100,000 remote subscribers cost a node that only observes.

    python bench/table_memory.py [--runs N] [--count N] [--meta gateway|none|both]

Two real nodes, each a ``worker_smartroute.py`` process on loopback: the owner subscribes
``count`` names ``user:0``, ``user:1``... (sync handlers), each with the meta the chat gateway
gives a user (``{"gateway": <its name>}``), or none; the observer only watches. The observer's
RSS (VmRSS from /proc) is read before, and again once its table holds them all; the growth,
per subscriber and in total, is the cost of the table. Fresh processes each run.

``bench/run.py`` runs it as the ``memory`` family (rows in REPORT.md); run alone, it prints the
figures (what bench/PROFILE.md's table-memory steps compare).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Bench, Scale, row
from workloads_mesh import MB, node_pair

from smartroute.testing import rss_bytes, wait_until

TABLE_SUBSCRIBERS = 100_000
"""Subscribers in the table (the issues state their goals for 100,000)."""

TABLE_WAIT_S = 180.0
"""Longest a run waits for the table to replicate (~10 s here)."""

GATEWAY_META = {"gateway": "gateway-1"}
"""The meta ``examples/chat_gateway/server.py`` gives each ``user:`` subscriber: its gateway's
name (one per gateway, so every subscriber of a node has an equal one)."""

WORKLOADS = {
    "none": "memory, 100,000 subscribers",
    "gateway": "memory, 100,000 subscribers with a gateway meta",
}


def measure(bench: Bench, meta: dict[str, Any] | None, count: int = TABLE_SUBSCRIBERS
            ) -> dict[str, float]:
    """One run with fresh processes: the observer's RSS growth and total (bytes), the owner's
    RSS, and the replication time (s)."""
    owner, observer = node_pair(bench)
    with owner, observer:
        observer.call("subscribe", name="mem:probe", handler="ignore")
        owner.call("wait_for", name="mem:probe")
        before = rss_bytes(observer.pid)
        spent = owner.call("subscribe_many", prefix="user:", count=count, meta=meta,
                           answer_within_s=TABLE_WAIT_S)
        wait_until(lambda: observer.call("table_size") > count, TABLE_WAIT_S, interval=0.05,
                   what=f"{count:,} subscribers replicated")
        seconds = time.monotonic() - spent["t_start"]
        after = rss_bytes(observer.pid)
        return {"growth": after - before, "total": after, "owner": rss_bytes(owner.pid),
                "seconds": seconds}


def memory(bench: Bench, variants: tuple[str, ...] = ("none", "gateway"),
           runs: int | None = None, count: int = TABLE_SUBSCRIBERS) -> None:
    """The ``memory`` family of bench/run.py: per variant, the observer's RSS growth (total and
    per subscriber), its RSS, the owner's RSS and the replication time."""
    runs = runs or (1 if bench.scale.quick else 3)
    for variant in variants:
        meta = GATEWAY_META if variant == "gateway" else None
        results = [measure(bench, meta, count) for _ in range(runs)]
        workload = WORKLOADS[variant]
        if count != TABLE_SUBSCRIBERS:
            workload = workload.replace("100,000", f"{count:,}")
        bench.add(
            row(workload, "smartroute", "observer RSS growth",
                [r["growth"] / MB for r in results], "MB"),
            row(workload, "smartroute", "observer RSS growth per subscriber",
                [r["growth"] / count for r in results], "bytes"),
            row(workload, "smartroute", "observer RSS", [r["total"] / MB for r in results],
                "MB"),
            row(workload, "smartroute", "subscribing node RSS",
                [r["owner"] / MB for r in results], "MB"),
            row(workload, "smartroute", "replication time", [r["seconds"] for r in results],
                "s"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=TABLE_SUBSCRIBERS)
    parser.add_argument("--meta", choices=["gateway", "none", "both"], default="both")
    args = parser.parse_args(argv)
    variants = ("none", "gateway") if args.meta == "both" else (args.meta,)
    with tempfile.TemporaryDirectory(prefix="smartroute-table-memory-") as logs:
        bench = Bench(Scale(quick=False), Path(logs))
        try:
            memory(bench, variants, runs=args.runs, count=args.count)
        finally:
            bench.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
