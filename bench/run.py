"""The benchmark suite: smartroute side by side with raw pyzmq, Redis pub/sub, Zenoh and pyre.

    python bench/run.py [--quick] [--only NAME ...]

``make bench`` (< 10 min on 2 cores) and ``make bench-quick`` (< 2 min) install what it needs
and run it. Writes bench/results/latest.json (one row per figure), then bench/REPORT.md and
bench/results/chart.png from it. With ``--only``, the named families replace their rows in
the existing latest.json and the others are kept. Everything it starts it stops by PID, also
when a family fails (the others still run; the exit code is then 1).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import report
import table_memory
import workloads_baselines
import workloads_delivery
import workloads_discovery
import workloads_mesh
from common import RESULTS, Bench, Row, Scale

ROOT = Path(__file__).resolve().parent.parent
LATEST = RESULTS / "latest.json"
GATEWAY_SCRIPT = Path(__file__).resolve().parent / "chat_gateway.py"
GATEWAY_RESULTS = RESULTS / "chat_gateway.json"

GATEWAY_TIMEOUT_S = {True: 60.0, False: 180.0}
"""Longest bench/chat_gateway.py may run, quick and full: its share of the suite's budget."""

REGEX_SCRIPT = Path(__file__).resolve().parent / "regex_safety.py"
REGEX_RESULTS = RESULTS / "regex.json"

REGEX_TIMEOUT_S = 120.0
"""Longest bench/regex_safety.py may run (~25 s alone here)."""

ROW_KEYS = ("workload", "system", "metric", "value", "unit", "runs", "min", "max")


def chat_gateway(bench: Bench) -> None:
    """The chat gateway's rows, from bench/chat_gateway.py (another part of issue 5's work)
    when it exists: run with --quick in quick mode, rows read from chat_gateway.json."""
    script_rows(bench, "chat gateway", GATEWAY_SCRIPT, GATEWAY_RESULTS,
                ["--quick"] if bench.scale.quick else [], GATEWAY_TIMEOUT_S[bench.scale.quick])


def regex_engines(bench: Bench) -> None:
    """REGEX targets on smartroute's engine and on RE2 (issue 12), from bench/regex_safety.py:
    the hot path (``Router.plan``), the pathological patterns and the worst cases go in the
    report; every row, the scans included, stays in regex.json."""
    script_rows(bench, "REGEX engines", REGEX_SCRIPT, REGEX_RESULTS,
                ["--runs", str(bench.scale.runs)], REGEX_TIMEOUT_S,
                keep=lambda one: not one["workload"].startswith("scan "))


def script_rows(bench: Bench, what: str, script: Path, results: Path, args: list[str],
                timeout: float, keep: Callable[[Row], bool] = lambda one: True) -> None:
    """Run ``script`` (a benchmark of its own) with ``args`` and add the rows it wrote to
    ``results`` that ``keep`` picks; a script missing, failing or too slow is a skip."""
    if not script.exists():
        bench.skip(what, f"bench/{script.name} is not on this branch yet")
        return
    argv = [sys.executable, str(script), *args]
    started = time.time()
    log_path = bench.log_dir / f"{script.stem}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            bench.skip(what, f"bench/{script.name} ran longer than {timeout:.0f} s "
                       f"and was stopped (log {log_path})")
            return
    if code != 0:
        bench.skip(what, f"bench/{script.name} exited with code {code}: {_tail(log_path)}")
        return
    if not results.exists() or results.stat().st_mtime < started:
        bench.skip(what, f"bench/{script.name} did not write bench/results/{results.name}")
        return
    rows = json.loads(results.read_text())
    if not isinstance(rows, list):
        bench.skip(what, f"{results.name} is not a list of rows")
        return
    bad = [one for one in rows if not isinstance(one, dict) or set(ROW_KEYS) - set(one)]
    if bad:
        bench.skip(what, f"{results.name} has rows without {ROW_KEYS}: {bad[:1]}")
        return
    bench.add(*({key: one[key] for key in ROW_KEYS} for one in rows if keep(one)))


def _tail(path: Path, lines: int = 3) -> str:
    return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


FAMILIES: dict[str, Callable[[Bench], None]] = {
    "local": workloads_mesh.local_dispatch,
    "cross": workloads_mesh.cross_node,
    "fanout": workloads_mesh.fan_out,
    "rtt": workloads_mesh.request_reply,
    "propagation": workloads_mesh.propagation,
    "failure": workloads_delivery.failure_detection,
    "stall": workloads_delivery.stall,
    "reset": workloads_delivery.reset,
    "memory": table_memory.memory,
    "pyzmq": workloads_baselines.pyzmq,
    "redis": workloads_baselines.redis_baselines,
    "zenoh": workloads_baselines.zenoh,
    "lan": workloads_baselines.lan_baselines,
    "discovery": workloads_discovery.discovery,
    "gateway": chat_gateway,
    "regex": regex_engines,
}
"""Every family of figures, in the order they run (``--only`` takes these names)."""


def machine_info() -> dict[str, Any]:
    """What the report says about the machine and the software measured."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                        if line.startswith("model name")), cpu)
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
            memory = f"{kib / 2**20:.0f} GiB"
    import zmq  # noqa: PLC0415 - only for its versions

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "libzmq": zmq.zmq_version(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "load_averages_at_start": _load_averages(),
    }
    for package in ("smartroute", "pyzmq", "msgpack", "zeroconf", "redis", "hiredis",
                    "eclipse-zenoh", "zeromq-pyre", "google-re2", "matplotlib"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    binary = shutil.which("redis-server")
    if binary is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            banner = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                    timeout=10, check=False).stdout
            info["redis_server"] = next((word.split("=", 1)[1] for word in banner.split()
                                         if word.startswith("v=")), banner.strip())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True, timeout=10,
                                        check=False).stdout.strip()
    return info


def _load_averages() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them: other work on the
    machine (the 15-minute one tells of it even at the end of a run)."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _key(one: Row) -> tuple[str, str, str]:
    return one["workload"], one["system"], one["metric"]


def merge(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (a run of some families) on top of ``previous``: the families run now replace
    their rows and skips; the others' are kept, with their own mode and date."""
    ran = set(current["families"])
    dropped = {tuple(key) for name, family in previous.get("families", {}).items()
               if name in ran for key in family.get("keys", [])}
    dropped |= {_key(one) for one in current["rows"]}
    merged = dict(current)
    merged["families"] = {**{name: family for name, family in previous.get("families", {}).items()
                             if name not in ran}, **current["families"]}
    merged["rows"] = [one for one in previous.get("rows", []) if _key(one) not in dropped]
    merged["rows"] += current["rows"]
    merged["skipped"] = [skip for skip in previous.get("skipped", [])
                         if skip.get("family") not in ran] + current["skipped"]
    merged["mode"] = "mixed" if {f["mode"] for f in merged["families"].values()} != {
        current["mode"]} else current["mode"]
    return merged


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through every `finally`, so workers and namespaces are cleaned up.
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer messages and runs (3 instead of 5): about 2 minutes")
    parser.add_argument("--only", nargs="+", choices=list(FAMILIES), metavar="NAME",
                        help=f"run only these families: {', '.join(FAMILIES)}")
    parser.add_argument("--no-report", action="store_true",
                        help="write latest.json only, not REPORT.md and the chart")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    selected = args.only or list(FAMILIES)
    scale = Scale(quick=args.quick)
    mode = "quick" if args.quick else "full"
    RESULTS.mkdir(exist_ok=True)
    machine = machine_info()
    failed = []
    suite_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smartroute-bench-") as logs:
        bench = Bench(scale, Path(logs))
        families: dict[str, Any] = {}
        skipped: list[dict[str, str]] = []
        for name in selected:
            print(f"== {name} ({mode})", flush=True)
            first_row, first_skip = len(bench.rows), len(bench.skipped)
            started = time.monotonic()
            try:
                FAMILIES[name](bench)
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                bench.skip(name, f"failed: {type(exc).__name__}: {exc}".splitlines()[0])
            finally:
                bench.close_all()
            seconds = time.monotonic() - started
            print(f"   {name} took {seconds:.1f} s", flush=True)
            families[name] = {"mode": mode, "seconds": round(seconds, 1),
                              "date": machine["date"],
                              "keys": [list(_key(one)) for one in bench.rows[first_row:]]}
            skipped += [{"family": name, **skip} for skip in bench.skipped[first_skip:]]
        if failed:
            # Worker logs vanish with the temporary directory: keep them for the post-mortem.
            kept = RESULTS / "logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(logs, kept)
            print(f"worker logs kept in {kept}", flush=True)
    machine.update(bench.machine)
    machine["load_average_at_end"] = round(os.getloadavg()[0], 2)
    machine["load_averages_at_end"] = _load_averages()
    current: dict[str, Any] = {
        "mode": mode, "machine": machine, "families": families, "skipped": skipped,
        "rows": bench.rows, "seconds": round(time.monotonic() - suite_started, 1)}
    if args.only and LATEST.exists():
        current = merge(json.loads(LATEST.read_text()), current)
    LATEST.write_text(json.dumps(current, indent=1) + "\n")
    print(f"wrote {LATEST.relative_to(ROOT)} ({len(current['rows'])} rows) in "
          f"{time.monotonic() - suite_started:.0f} s", flush=True)
    if not args.no_report:
        for path in report.write(current):
            print(f"wrote {path.relative_to(ROOT)}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
