"""Two smartroute trees side by side, in one run, alternating: the suite's own workloads with
the worker processes importing one tree, then the other, round after round.

    .venv/bin/python bench/before_after.py --old /work/wt-old [--rounds 5] [--only cross,rtt]

``--old`` is a checkout of the earlier commit (``git worktree add /work/wt-old COMMIT``); the
new tree is the one this file is in. Only the workers import the tree measured (through
``PYTHONPATH``; each checks ``smartroute.__file__``): the measuring code is this tree's for both.
Each round runs every figure once per tree, the first tree alternating, so a machine shared
with other work slows both alike. Writes bench/results/before_after.json and prints a table of
medians over the rounds (min - max across rounds) with after / before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import workloads_delivery
import workloads_mesh
from common import RESULTS, Bench, Row, Scale
from workloads_mesh import HANDLERS, node_pair, round_trips, throughput

HERE = Path(__file__).resolve().parent
NEW = HERE.parent
OUT = RESULTS / "before_after.json"

ARRIVAL_WAIT_S = 5.0
"""Stall and reset runs: wait this long for the last message (the suite waits 20 s): code that
loses messages would otherwise cost 20 s a run."""


@dataclass(frozen=True)
class Rounds(Scale):
    """Full-size runs, ``per_figure`` of them per family call (one round)."""

    per_figure: int = 1

    @property
    def runs(self) -> int:
        return self.per_figure


def cross(bench: Bench, old: bool) -> None:
    """Cross-node throughput, sync and async handler yielding every 500; the new tree also
    with a plain loop that never yields (the old one has no window: it would queue it all)."""
    a, b = node_pair(bench)
    with a, b:
        throughput(bench, "cross-node throughput", a, b,
                   handlers=HANDLERS[:2] if old else HANDLERS)


def rtt(bench: Bench, old: bool) -> None:
    a, b = node_pair(bench)
    with a, b:
        round_trips(bench, "request/reply round trip", a, b, system="smartroute")


FIGURES: dict[str, Callable[[Bench, bool], None]] = {
    "local": lambda bench, old: workloads_mesh.local_dispatch(bench),
    "cross": cross,
    "rtt": rtt,
    "failure": lambda bench, old: workloads_delivery.failure_detection(bench),
    "stall": lambda bench, old: workloads_delivery.stall(bench),
    "reset": lambda bench, old: workloads_delivery.reset(bench),
}


def which_smartroute(pythonpath: str | None) -> str:
    """Where a worker started with this ``PYTHONPATH`` imports smartroute from."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", "import smartroute; print(smartroute.__file__)"],
                          env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


def commit(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=10, check=False).stdout.strip()


def aggregate(rows: list[Row]) -> dict[str, Any]:
    return {"value": statistics.median(one["value"] for one in rows),
            "min": min(one["min"] for one in rows), "max": max(one["max"] for one in rows),
            "rounds": len(rows), "unit": rows[0]["unit"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, type=Path, help="checkout of the earlier code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(FIGURES), help=", ".join(FIGURES))
    args = parser.parse_args()
    workloads_delivery.ARRIVAL_WAIT_S = ARRIVAL_WAIT_S
    trees = {"before": args.old.resolve(), "after": NEW}
    labels = {name: f"{name} ({commit(tree)})" for name, tree in trees.items()}
    paths = {"before": str(trees["before"]), "after": None}
    sources = {name: which_smartroute(path) for name, path in paths.items()}
    for name, source in sources.items():
        if not source.startswith(str(trees[name])):
            raise SystemExit(f"{name}: workers would import {source}, not {trees[name]}")
    print(f"smartroute: {sources}", flush=True)
    picked = [name for name in args.only.split(",") if name]
    found: dict[str, dict[tuple[str, str, str], list[Row]]] = {"before": {}, "after": {}}
    skipped: list[str] = []
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smartroute-before-after-") as logs:
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for family in picked:
                for name in order:
                    with contextlib.ExitStack() as stack:
                        if paths[name]:
                            os.environ["PYTHONPATH"] = str(paths[name])
                        else:
                            os.environ.pop("PYTHONPATH", None)
                        stack.callback(os.environ.pop, "PYTHONPATH", None)
                        bench = Bench(Rounds(quick=False), Path(logs))
                        print(f"== round {round_ + 1}, {family}, {name}", flush=True)
                        try:
                            FIGURES[family](bench, name == "before")
                        except Exception as exc:  # one failure is a finding, not the end
                            skipped.append(f"round {round_ + 1} {family} {name}: "
                                           f"{type(exc).__name__}: {exc}".splitlines()[0])
                            print(f"  FAILED: {skipped[-1]}", flush=True)
                        finally:
                            bench.close_all()
                        skipped += [f"round {round_ + 1} {family} {name}: {s['what']}: "
                                    f"{s['reason']}" for s in bench.skipped]
                        for one in bench.rows:
                            key = (one["workload"], one["system"], one["metric"])
                            found[name].setdefault(key, []).append(one)
    keys = list(dict.fromkeys([*found["before"], *found["after"]]))
    table = []
    for key in keys:
        entry: dict[str, Any] = {"workload": key[0], "system": key[1], "metric": key[2]}
        for name in ("before", "after"):
            if key in found[name]:
                entry[name] = aggregate(found[name][key])
        if "before" in entry and "after" in entry and entry["before"]["value"]:
            entry["after_over_before"] = entry["after"]["value"] / entry["before"]["value"]
        table.append(entry)
    result = {"labels": labels, "smartroute": sources, "rounds": args.rounds,
              "load_average_at_start": round(load_start, 2),
              "load_average_at_end": round(os.getloadavg()[0], 2),
              "seconds": round(time.monotonic() - started, 1), "figures": table,
              "skipped": skipped}
    RESULTS.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{labels['before']} vs {labels['after']}, {args.rounds} rounds, load "
          f"{result['load_average_at_start']} -> {result['load_average_at_end']}")
    for entry in table:
        cells = []
        for name in ("before", "after"):
            one = entry.get(name)
            cells.append("—" if one is None else
                         f"{one['value']:,.4g} ({one['min']:,.4g}-{one['max']:,.4g}) {one['unit']}")
        ratio = entry.get("after_over_before")
        print(f"{entry['workload']} | {entry['system']} | {entry['metric']} | {cells[0]} | "
              f"{cells[1]} | {'' if ratio is None else f'{ratio:.2f}x'}")
    for line in skipped:
        print(f"skipped: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
