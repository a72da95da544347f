"""REGEX targets: smartroute's linear-time matcher against Python's ``re``.

    .venv/bin/python bench/regex_safety.py [--runs 5]

Three questions, one process, no network, well under 30 s:

* realistic: a table of 100,000 names (``user:alice123``, ``room:42``, ``svc:echo-3``) scanned
  with everyday patterns: ``re``, smartroute (the hybrid the Router uses) and smartroute's DFA
  alone; "cold" compiles the pattern afresh before the scan (a new pattern from a peer),
  "warm" reuses it (the DFA cache is built);
* pathological: the classic catastrophic patterns. ``re`` gets names grown until one search
  takes PATHOLOGICAL_STOP_S (it cannot be interrupted, so it never sees the 256-character
  name); smartroute is timed on that name and on the 256-character one;
* smartroute's own worst cases: a DFA whose cache cannot hold its states (every step built
  anew), the worst pattern the ``re`` fast path accepts, and compiling the largest NFA.

Writes bench/results/regex.json: a list of rows with workload, system, metric, value (the
median), unit, runs, min, max.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from smartroute.patterns import FAST_PATH_MAX_NAME, compile_pattern

HERE = Path(__file__).resolve().parent
TABLE_SIZE = 100_000
MAX_NAME = 256
PATHOLOGICAL_STOP_S = 0.2
"""re's names grow until one search takes this long (the next would take 2x or more)."""

REALISTIC = ["^user:", "room:[0-9]+$", "alice", r"^user:(alice|bob)\d+$", "^(?:user|room):.*7$"]
PATHOLOGICAL: list[tuple[str, Callable[[int], str]]] = [
    ("(a+)+$", lambda n: "a" * (n - 1) + "!"),
    ("(a|a)*b", lambda n: "a" * n),
    ("(a*)*b", lambda n: "a" * n),
    (r"^(\w+\s?)*$", lambda n: "a" * (n - 1) + "!"),
    (".*.*.*.*x", lambda n: "a" * n),
]
FIRST_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
               "judy", "mallory", "oscar", "peggy", "trent", "victor", "walter"]

Row = dict[str, object]


def realistic_names(rng: random.Random) -> list[str]:
    names = []
    for _ in range(TABLE_SIZE):
        kind = rng.random()
        if kind < 0.6:
            names.append(f"user:{rng.choice(FIRST_NAMES)}{rng.randrange(1000)}")
        elif kind < 0.9:
            names.append(f"room:{rng.randrange(5000)}")
        else:
            names.append(f"svc:{rng.choice(['echo', 'auth', 'store'])}-{rng.randrange(20)}")
    return names


def row(workload: str, system: str, metric: str, samples: list[float], unit: str) -> Row:
    return {"workload": workload, "system": system, "metric": metric,
            "value": statistics.median(samples), "unit": unit, "runs": len(samples),
            "min": min(samples), "max": max(samples)}


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def search_time(search: Callable[[str], object], name: str, loops: int = 1) -> float:
    """Seconds per ``search(name)``, averaged over ``loops`` calls."""
    started = time.perf_counter()
    for _ in range(loops):
        search(name)
    return (time.perf_counter() - started) / loops


Scan = Callable[[], list[str]]


def scan_with_re(source: str, names: list[str]) -> Scan:
    search = re.compile(source).search
    return lambda: [n for n in names if search(n)]


def scan_with_smartroute(source: str, names: list[str]) -> Scan:
    pattern = compile_pattern(source)  # what Router.pattern does
    return lambda: pattern.select(names)


def scan_with_dfa_only(source: str, names: list[str]) -> Scan:
    pattern = compile_pattern(source, fast_path=False)
    return lambda: pattern.select(names)


SYSTEMS: dict[str, Callable[[str, list[str]], Scan]] = {
    "re": scan_with_re,
    "smartroute": scan_with_smartroute,
    "smartroute (DFA only)": scan_with_dfa_only,
}


def realistic(runs: int, rng: random.Random) -> list[Row]:
    names = realistic_names(rng)
    rows: list[Row] = []
    for source in REALISTIC:
        workload = f"scan {TABLE_SIZE:,} names: {source}"
        expected = [n for n in names if re.search(source, n)]
        for system, make in SYSTEMS.items():
            cold, warm = [], []
            for _ in range(runs):
                re.purge()
                started = time.perf_counter()
                scan = make(source, names)  # compiles afresh
                got = scan()
                cold.append((time.perf_counter() - started) * 1000)
                assert got == expected, (system, source)
                warm.append(timed(scan) * 1000)
            rows.append(row(workload, system, "cold_scan_ms", cold, "ms"))
            rows.append(row(workload, system, "warm_scan_ms", warm, "ms"))
        engine = compile_pattern(source).engine
        print(f"{workload:50} warm: re {rows[-5]['value']:6.1f} ms, smartroute ({engine}) "
              f"{rows[-3]['value']:6.1f} ms, DFA only {rows[-1]['value']:6.1f} ms; cold: "
              f"{rows[-6]['value']:.1f} / {rows[-4]['value']:.1f} / {rows[-2]['value']:.1f} ms")
    return rows


def pathological(runs: int) -> list[Row]:
    rows: list[Row] = []
    for source, make_name in PATHOLOGICAL:
        compiled = re.compile(source)
        n, spent = 8, 0.0
        while True:
            spent = search_time(compiled.search, make_name(n))
            if spent >= PATHOLOGICAL_STOP_S or n >= MAX_NAME:
                break
            n = n + 1 if spent > 0.01 else min(MAX_NAME, max(n + 1, int(n * 1.25)))
        rows.append(row(f"pathological {source} on {n} chars", "re", "search_ms",
                        [spent * 1000], "ms"))
        ours = compile_pattern(source)
        assert ours.engine == "dfa"
        for length in (n, MAX_NAME):
            name = make_name(length)
            if length == n:
                assert ours.search(name) == (compiled.search(name) is not None)
            # cold: compiled afresh, the DFA cache is built during the search
            samples = [search_time(compile_pattern(source).search, name) * 1000
                       for _ in range(runs)]
            rows.append(row(f"pathological {source} on {length} chars", "smartroute",
                            "search_ms", samples, "ms"))
        print(f"{source:14} re {spent:6.2f} s on {n} chars; smartroute "
              f"{rows[-2]['value']:.3f} ms on {n}, {rows[-1]['value']:.3f} ms on {MAX_NAME}")
    return rows


def worst_cases(runs: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    # 2**200 DFA states: the cache never hits, every step is built (the slowest walk).
    source = "[ab]*a[ab]{200}$"
    names = ["".join(rng.choice("ab") for _ in range(MAX_NAME)) for _ in range(runs * 4)]
    thrash = compile_pattern(source)
    samples = [search_time(thrash.search, name) * 1000 for name in names]
    rows.append(row(f"DFA without cache hits: {source} on random a/b names of {MAX_NAME}",
                    "smartroute", "search_ms", samples, "ms"))
    # The fast path's worst: a repeat given back one character at a time from every start.
    source = r"a*\B\Bx"
    fast = compile_pattern(source)
    assert fast.engine == "re"
    for length in (FAST_PATH_MAX_NAME, MAX_NAME):
        name = "a" * length
        samples = [search_time(fast.search, name, 50) * 1e6 for _ in range(runs)]
        engine = "re" if length <= FAST_PATH_MAX_NAME else "dfa"
        rows.append(row(f"fast path worst: {source} on {length} chars ({engine})", "smartroute",
                        "search_us", samples, "us"))
        samples = [search_time(re.compile(source).search, name, 50) * 1e6 for _ in range(runs)]
        rows.append(row(f"fast path worst: {source} on {length} chars ({engine})", "re",
                        "search_us", samples, "us"))
    # The largest NFA accepted, compiled and walked once.
    source = "x{1020}"
    samples = [timed(lambda: compile_pattern("x{1020}").search("x" * MAX_NAME)) * 1000
               for _ in range(runs)]
    rows.append(row(f"compile and first search: {source}", "smartroute", "ms", samples, "ms"))
    for r in rows:
        print(f"{r['workload']:70} {r['system']:10} {r['value']:9.3f} {r['unit']} "
              f"(max {r['max']:.3f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    started = time.perf_counter()
    rows = realistic(args.runs, rng) + pathological(args.runs) + worst_cases(args.runs, rng)
    out = HERE / "results" / "regex.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out} ({len(rows)} rows) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
