"""REGEX targets: smartroute's linear-time matcher against Python's ``re`` and Google's RE2.

    .venv/bin/python bench/regex_safety.py [--runs 5]

Four questions, one process, no network, well under 60 s (RE2 is the ``google-re2`` binding,
from the ``bench`` extra; without it its rows are left out and the script says so):

* realistic: a table of 100,000 names (``user:alice123``, ``room:42``, ``svc:echo-3``) scanned
  with everyday patterns: ``re``, smartroute (the hybrid the Router uses) and smartroute's DFA
  alone; "cold" compiles the pattern afresh before the scan (a new pattern from a peer),
  "warm" reuses it (the DFA cache is built);
* pathological: the classic catastrophic patterns. ``re`` gets names grown until one search
  takes PATHOLOGICAL_STOP_S (it cannot be interrupted, so it never sees the 256-character
  name); smartroute is timed on that name and on the 256-character one;
* smartroute's own worst cases: a DFA whose cache cannot hold its states (every step built
  anew), the worst pattern the ``re`` fast path accepts, and compiling the largest NFA;
* the REGEX hot path: ``Router.plan(REGEX, pattern)`` over a peer's table of 100,000 names,
  with smartroute's patterns and with RE2 put in their place (issue 12: should RE2 be the
  engine?), alternating in the same run; and where the two engines' answers differ
  (``SEMANTICS``, written to bench/results/regex_semantics.json).

Every RE2 figure uses its fastest public call per name: an ``re2.Set`` of the one pattern
(``Match`` builds no match object: ~3x faster than ``re2.compile(...).search``, also measured).

Writes bench/results/regex.json: a list of rows with workload, system, metric, value (the
median), unit, runs, min, max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from smartroute import routing
from smartroute.errors import UsageError
from smartroute.modes import ReceiveMode
from smartroute.patterns import FAST_PATH_MAX_NAME, compile_pattern
from smartroute.registry import Table

try:
    import re2
except ImportError:  # the bench extra is missing: no RE2 rows
    re2 = None

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


RE2 = "RE2 (google-re2)"
RE2_SEARCH = "RE2 (google-re2), compile().search"


class Re2Pattern:
    """A REGEX target on RE2, shaped like ``smartroute.patterns.Pattern`` (``search``,
    ``select``) so a ``Router`` can use it: what making RE2 the engine would look like."""

    def __init__(self, source: str, budget: object = None) -> None:
        assert re2 is not None
        options = re2.Options()
        options.never_capture = True  # only "does it match": no submatches to track
        options.log_errors = False  # a bad pattern from a peer must not write to stderr
        try:
            self._set = re2.Set.SearchSet(options)
            self._set.Add(source)
            self._set.Compile()
        except re2.error as exc:
            raise UsageError(f"bad REGEX pattern {source!r}: {exc}") from None
        self.source = source
        self.engine = "re2"

    def search(self, name: str) -> bool:
        return self._set.Match(name) is not None

    def select(self, names: Iterable[str]) -> list[str]:
        match = self._set.Match
        return [name for name in names if match(name)]


def scan_with_re2(source: str, names: list[str]) -> Scan:
    pattern = Re2Pattern(source)
    return lambda: pattern.select(names)


def scan_with_re2_search(source: str, names: list[str]) -> Scan:
    assert re2 is not None
    options = re2.Options()
    options.never_capture = True
    search = re2.compile(source, options).search
    return lambda: [n for n in names if search(n)]


SYSTEMS: dict[str, Callable[[str, list[str]], Scan]] = {
    "re": scan_with_re,
    "smartroute": scan_with_smartroute,
    "smartroute (DFA only)": scan_with_dfa_only,
    **({RE2: scan_with_re2, RE2_SEARCH: scan_with_re2_search} if re2 is not None else {}),
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
        warm_ms = {one["system"]: one["value"] for one in rows
                   if one["workload"] == workload and one["metric"] == "warm_scan_ms"}
        print(f"{workload:50} warm ms ({engine}): " + ", ".join(
            f"{system} {value:.1f}" for system, value in warm_ms.items()))
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
            if re2 is not None:
                if length == n:
                    assert Re2Pattern(source).search(name) == ours.search(name)
                samples = [search_time(Re2Pattern(source).search, name) * 1000
                           for _ in range(runs)]
                rows.append(row(f"pathological {source} on {length} chars", RE2,
                                "search_ms", samples, "ms"))
        print(f"{source:14} re {spent:6.2f} s on {n} chars; " + "; ".join(
            f"{one['system']} {one['value']:.3f} ms on {one['workload'].split(' on ')[1]}"
            for one in rows if one["workload"].startswith(f"pathological {source} on ")
            and one["system"] != "re"))
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
    if re2 is not None:
        on_re2 = Re2Pattern(source)
        assert [on_re2.search(name) for name in names] == [thrash.search(name) for name in names]
        samples = [search_time(on_re2.search, name) * 1000 for name in names]
        rows.append(row(f"DFA without cache hits: {source} on random a/b names of {MAX_NAME}",
                        RE2, "search_ms", samples, "ms"))
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
        if re2 is not None:
            samples = [search_time(Re2Pattern(source).search, name, 50) * 1e6
                       for _ in range(runs)]
            rows.append(row(f"fast path worst: {source} on {length} chars ({engine})", RE2,
                            "search_us", samples, "us"))
    # The largest NFA accepted, compiled and walked once.
    source = "x{1020}"
    samples = [timed(lambda: compile_pattern("x{1020}").search("x" * MAX_NAME)) * 1000
               for _ in range(runs)]
    rows.append(row(f"compile and first search: {source}", "smartroute", "ms", samples, "ms"))
    # RE2 refuses it (its repeat limit is 1000): its own largest, for the compile cost.
    if re2 is not None:
        source = "x{1000}"
        samples = [timed(lambda: Re2Pattern("x{1000}").search("x" * MAX_NAME)) * 1000
                   for _ in range(runs)]
        rows.append(row(f"compile and first search: {source}", RE2, "ms", samples, "ms"))
        samples = [timed(lambda: compile_pattern("x{1000}").search("x" * MAX_NAME)) * 1000
                   for _ in range(runs)]
        rows.append(row(f"compile and first search: {source}", "smartroute", "ms", samples,
                        "ms"))
    for r in rows:
        print(f"{r['workload']:70} {r['system']:10} {r['value']:9.3f} {r['unit']} "
              f"(max {r['max']:.3f})")
    return rows


PEER = b"\x0b" * 16
"""The node id of the peer whose table the hot path routes over."""

THRASH = "[ab]*a[ab]{200}$"
"""2**200 DFA states: smartroute's DFA cache never hits, every step is built (its slowest)."""

HOT_PATH_PATTERNS: list[str | list[str]] = [
    *REALISTIC, ["^room:1", "^svc:"],
    "(a+)+$", "(a|a)*b", ".*.*.*.*x", THRASH]
"""REGEX targets routed on the hot path: the everyday ones, a list (any of its patterns), then
adversarial ones (catastrophic for ``re``; the slowest for smartroute's DFA)."""

ADVERSARIAL_NAMES = 100
"""Names in the adversarial table: random a/b names of ``MAX_NAME`` characters, on which
``THRASH`` is the slowest pattern smartroute knows (1.5 ms a name and more here)."""


@contextlib.contextmanager
def engine(system: str) -> Iterator[None]:
    """``routing.compile_pattern`` as it is (smartroute) or replaced by RE2 for the block."""
    real = routing.compile_pattern
    if system == RE2:
        routing.compile_pattern = Re2Pattern  # type: ignore[assignment]
    try:
        yield
    finally:
        routing.compile_pattern = real


def hot_path(runs: int, rng: random.Random) -> list[Row]:
    """``Router.plan(REGEX, target)`` over a peer's 100,000 subscribers: cold (a new Router:
    the pattern compiled on the way) and warm (the compiled pattern cached), the two engines
    alternating run by run; the plans must be equal. Then ``THRASH`` over a peer's table of
    ``ADVERSARIAL_NAMES`` long a/b names (the attacker picks the names and the pattern)."""
    rows: list[Row] = []
    table = _peer_table(realistic_names(rng))
    for target in HOT_PATH_PATTERNS:
        rows += _plans(runs, table, target,
                       f"Router.plan(REGEX) over {TABLE_SIZE:,} names: {target}")
    names = ["".join(rng.choice("ab") for _ in range(MAX_NAME))
             for _ in range(ADVERSARIAL_NAMES)]
    rows += _plans(runs, _peer_table(names), THRASH,
                   f"Router.plan(REGEX) over {ADVERSARIAL_NAMES} a/b names of {MAX_NAME} "
                   f"chars: {THRASH}")
    return rows


def _peer_table(names: list[str]) -> Table:
    table = Table(b"\x01" * 16, incarnation=1)
    table.replace(PEER, 1, len(names), [(i + 1, name, {}) for i, name in enumerate(names)])
    return table


def _plans(runs: int, table: Table, target: str | list[str], workload: str) -> list[Row]:
    """Cold and warm ``Router.plan`` rows of each engine for one target over ``table``."""
    systems = ["smartroute", *([RE2] if re2 is not None else [])]
    rows: list[Row] = []
    cold: dict[str, list[float]] = {system: [] for system in systems}
    warm: dict[str, list[float]] = {system: [] for system in systems}
    plans: dict[str, Any] = {}
    for _ in range(runs):
        for system in systems:
            with engine(system):
                router = routing.Router(table, regex_cache_size=64, max_pattern_length=512)
                started = time.perf_counter()
                plans[system] = router.plan(ReceiveMode.REGEX, target)
                cold[system].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                router.plan(ReceiveMode.REGEX, target)
                warm[system].append((time.perf_counter() - started) * 1000)
    assert all(plan == plans["smartroute"] for plan in plans.values()), target
    for system in systems:
        rows.append(row(workload, system, "cold_plan_ms", cold[system], "ms"))
        rows.append(row(workload, system, "warm_plan_ms", warm[system], "ms"))
    print(f"{workload:60} warm ms: " + ", ".join(
        f"{system} {statistics.median(warm[system]):.1f}" for system in systems)
        + f" ({plans['smartroute'].matches:,} matches)")
    return rows


SEMANTICS: list[tuple[str, str, str]] = [
    ("a$", "a\n", "'$' before a final newline"),
    (r"\d", "\u0663", r"\d on a non-ASCII digit (ARABIC-INDIC THREE)"),
    (r"\w", "\u00e9", r"\w on a non-ASCII letter (e acute)"),
    ("caf\u00e9\\b", "caf\u00e9s", r"\b after a non-ASCII letter"),
    (r"\s", "\u00a0", r"\s on NO-BREAK SPACE"),
    (r"a\Z", "a", r"\Z (end of name)"),
    (r"a\z", "a", r"\z (RE2's end of text)"),
    ("(?i)alice", "ALICE", "inline flag (?i)"),
    (r"(a)\1", "aa", "backreference"),
    ("a(?=b)", "ab", "lookahead"),
    ("(?<=a)b", "ab", "lookbehind"),
    ("(?>a)", "a", "atomic group"),
    ("a++", "a", "possessive repeat"),
    (r"\pL", "a", r"\pL (Unicode class)"),
    ("[[:alpha:]]", "a", "[[:alpha:]]"),
    ("(?<n>a)", "a", "(?<name>...)"),
    ("x{1001}", "x" * 1001, "a counted repeat over 1000"),
    ("^user:", "user:alice", "an everyday pattern"),
]
"""(pattern, name, what it probes): where smartroute's answer (``re.search``'s, or refused)
and RE2's may differ."""


def _verdict(search: Callable[[str, str], object], source: str, name: str) -> str:
    try:
        return "match" if search(source, name) else "no match"
    except (UsageError, re.error) as exc:
        return f"refused ({str(exc).split(': ', 1)[-1][:60]})"
    except Exception as exc:  # re2.error and the like
        return f"refused ({exc})"[:70]


def semantics() -> list[dict[str, str]]:
    """For each of ``SEMANTICS``: what ``re``, smartroute and RE2 say."""
    found = []
    warnings.simplefilter("ignore", FutureWarning)  # re on "[[:alpha:]]": a possible set
    for source, name, what in SEMANTICS:
        found.append({
            "probe": what, "pattern": source, "name": name,
            "re": _verdict(re.search, source, name),
            "smartroute": _verdict(lambda s, n: compile_pattern(s).search(n), source, name),
            "re2": (_verdict(lambda s, n: Re2Pattern(s).search(n), source, name)
                    if re2 is not None else "not installed")})
    for one in found:
        print(f"{one['probe']:48} re: {one['re']:12} smartroute: {one['smartroute'][:30]:30} "
              f"RE2: {one['re2'][:40]}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    started = time.perf_counter()
    if re2 is None:
        print("google-re2 is not installed (pip install -e '.[bench]'): no RE2 rows")
    rows = realistic(args.runs, rng) + pathological(args.runs) + worst_cases(args.runs, rng)
    rows += hot_path(args.runs, rng)
    out = HERE / "results" / "regex.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "results" / "regex_semantics.json").write_text(
        json.dumps(semantics(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({len(rows)} rows) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
