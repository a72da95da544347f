"""bench/report.py turns result rows into the markdown report, with ratios and goals; run.py's
merge keeps other families' rows when only some ran. No benchmark runs here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = load("report")


def row(workload: str, system: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"workload": workload, "system": system, "metric": metric, "value": value,
            "unit": unit, "runs": 5, "min": value * 0.9, "max": value * 1.1}


ROWS = [
    row("cross-node throughput", "smartroute", "throughput", 330_000, "msg/s"),
    row("cross-node throughput", "Redis pub/sub", "throughput", 110_000, "msg/s"),
    row("cross-node throughput", "pyzmq PUSH/PULL, blocking", "throughput", 660_000, "msg/s"),
    row("request/reply round trip", "pyzmq DEALER/ROUTER, asyncio", "p50", 170, "us"),
    row("request/reply round trip", "smartroute", "p50", 255, "us"),
    row("failure detection", "smartroute", "SIGKILL to dead everywhere", 1.2, "s"),
    row("chat gateway fan-out", "smartroute gateway", "throughput", 5000, "msg/s"),
]
DATA = {"mode": "full", "machine": {"cpu": "Test CPU 9000", "cores": 2, "python": "3.11.7",
                                    "load_average_at_start": 0.1},
        "skipped": [{"family": "lan", "what": "pyre baselines", "reason": "needs root"}],
        "rows": ROWS}


def table_line(markdown: str, *cells: str) -> str:
    """The one table line holding all ``cells``."""
    lines = [line for line in markdown.splitlines()
             if line.startswith("|") and all(cell in line for cell in cells)]
    assert len(lines) == 1, (cells, lines)
    return lines[0]


def test_each_baseline_row_shows_smartroute_divided_by_it() -> None:
    markdown = report.render(DATA, chart=False)
    assert table_line(markdown, "| Redis pub/sub |", "throughput").endswith("| 3.00x |")
    assert table_line(markdown, "pyzmq PUSH/PULL, blocking").endswith("| 0.50x |")
    assert table_line(markdown, "pyzmq DEALER/ROUTER, asyncio", "p50").endswith("| 1.50x |")
    line = table_line(markdown, "| smartroute | throughput | 330,000 msg/s")
    assert "| 297,000 - 363,000 | 5 | reference |" in line


def test_goals_say_met_not_met_or_not_measured() -> None:
    markdown = report.render(DATA, chart=False)
    assert table_line(markdown, "Cross-node throughput vs Redis pub/sub", ">= 3x").endswith(
        "| 3.00x | met |")
    assert table_line(markdown, "vs raw blocking pyzmq").endswith("| 0.50x | **not met** |")
    assert table_line(markdown, "p50 vs raw asyncio DEALER/ROUTER |").endswith(
        "| 1.50x | **not met** |")
    assert table_line(markdown, "p50 vs raw asyncio DEALER/ROUTER (issue 12)", "<= 1.1x").endswith(
        "| 1.50x | **not met** |")
    assert table_line(markdown, "Fan-out ALL to 4 nodes vs Redis").endswith(
        "| — | not measured |")
    assert table_line(markdown, "SIGKILL detection").endswith("| 1.200 s | met |")
    assert table_line(markdown, "Local dispatch", ">= 1,000,000").endswith(
        "| — | not measured |")


def test_report_shows_machine_skips_unknown_rows_and_links() -> None:
    markdown = report.render(DATA, chart=False)
    assert "| CPU | Test CPU 9000 |" in markdown
    assert "| pyre baselines | needs root |" in markdown
    # Rows of a workload the report does not know (the chat gateway's) still get a table.
    assert "### chat gateway fan-out" in markdown
    assert table_line(markdown, "smartroute gateway", "5,000 msg/s")
    assert "[PROFILE.md](PROFILE.md)" in markdown
    assert "[DISCOVERY.md](DISCOVERY.md)" in markdown
    assert "Provisional" not in markdown
    assert "No chart" in markdown


def test_a_quick_run_on_a_loaded_machine_is_flagged_provisional() -> None:
    data = {**DATA, "mode": "quick",
            "machine": {**DATA["machine"], "load_average_at_start": 3.5}}
    markdown = report.render(data, chart=False)
    assert "**Provisional figures:**" in markdown
    assert "**quick** run" in markdown
    assert "load average 3.5 at the start, on 2 cores" in markdown


def test_merge_replaces_only_the_families_that_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # run.py imports its sibling modules
    before = set(sys.modules)
    try:
        run = load("run")
    finally:
        for name in set(sys.modules) - before:  # bench's generic names must not linger
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == BENCH:
                del sys.modules[name]
    redis_old = row("cross-node throughput", "Redis pub/sub", "throughput", 1, "msg/s")
    local = row("local dispatch", "smartroute", "throughput", 2, "msg/s")
    previous = {
        "mode": "full",
        "families": {
            "redis": {"mode": "full", "keys": [["cross-node throughput", "Redis pub/sub",
                                                "throughput"]]},
            "local": {"mode": "full", "keys": [["local dispatch", "smartroute",
                                                "throughput"]]}},
        "skipped": [{"family": "redis", "what": "x", "reason": "old"},
                    {"family": "lan", "what": "y", "reason": "kept"}],
        "rows": [redis_old, local]}
    redis_new = {**redis_old, "value": 3}
    current = {"mode": "quick", "families": {"redis": {"mode": "quick", "keys": []}},
               "skipped": [], "rows": [redis_new]}
    merged = run.merge(previous, current)
    assert merged["rows"] == [local, redis_new]
    assert merged["skipped"] == [{"family": "lan", "what": "y", "reason": "kept"}]
    assert set(merged["families"]) == {"redis", "local"}
    assert merged["mode"] == "mixed"


def test_zenoh_goals_use_the_runs_made_side_by_side_and_a_lossy_figure_is_not_one() -> None:
    zenoh = "cross-node throughput, next to Zenoh"
    rtt = "request/reply round trip, next to Zenoh"
    rows = [*ROWS,
            row(zenoh, "smartroute", "throughput", 300_000, "msg/s"),
            row(zenoh, "Zenoh put, congestion BLOCK", "throughput", 600_000, "msg/s"),
            row(zenoh, "Zenoh put, congestion DROP (default)", "delivered of 200,000", 155_839,
                "messages"),
            row(rtt, "smartroute", "p50", 200, "us"),
            row(rtt, "Zenoh querier.get", "p50", 250, "us")]
    markdown = report.render({**DATA, "rows": rows}, chart=False)
    # The side-by-side smartroute row (300k), not section 2's (330k): 300k / 600k.
    assert table_line(markdown, "vs Zenoh put, congestion BLOCK", ">= 1.0x").endswith(
        "| 0.50x | **not met** |")
    assert table_line(markdown, "p50 vs Zenoh querier.get", "<= 1.0x").endswith(
        "| 0.80x | met |")
    line = table_line(markdown, "Zenoh put, congestion DROP (default)", "delivered")
    assert "| 155,839 messages |" in line
    assert line.endswith("|  |")  # a count, not a figure smartroute is divided by
    assert "## Next to Eclipse Zenoh (issue 12)" in markdown


def test_a_pattern_with_a_bar_does_not_break_its_table_row() -> None:
    rows = [row(f"pathological (a|a)*b on {n} chars", system, "search_ms", value, "ms")
            for n in (21, 256)
            for system, value in (("smartroute", 0.024), ("RE2 (google-re2)", 0.0015))]
    markdown = report.render({**DATA, "rows": rows}, chart=False)
    line = table_line(markdown, "RE2 (google-re2)", "256 chars")
    assert line.startswith("| pathological (a\\|a)*b on 256 chars | RE2 (google-re2) |")
    assert line.count(" | ") == 6  # seven cells, none split by the pattern's bar
    assert "| 0.0015 ms |" in line and line.endswith("| 16.00x |")
