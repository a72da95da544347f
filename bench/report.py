"""Turn bench/results/latest.json into bench/REPORT.md and bench/results/chart.png.

    python bench/report.py        # redraw from the last results, without measuring

``bench/run.py`` calls ``write`` after every run. Standard library only, except the chart
(matplotlib, from the ``bench`` extra; without it the report says so and has no chart).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LATEST = RESULTS / "latest.json"
REPORT = HERE / "REPORT.md"
CHART = RESULTS / "chart.png"

REFERENCE = "smartroute"
"""The system every ratio is taken from."""

LOADED_MACHINE = 0.5
"""Load average per core above which the report warns that other work shared the machine."""

Row = dict[str, Any]


@dataclass(frozen=True)
class Section:
    """One table of the report: the rows of some workloads, and what they measure."""

    title: str
    workloads: tuple[str, ...]
    """Workload names; one ending in ``*`` is a prefix."""
    about: str
    """What is measured and how each system is set up, so the comparison can be judged."""

    def holds(self, workload: str) -> bool:
        return any(workload.startswith(name[:-1]) if name.endswith("*") else workload == name
                   for name in self.workloads)


SECTIONS = (
    Section("1. Local dispatch", ("local dispatch",),
            "`send_to` EQ from a coroutine to a sync handler on the same node, one process; the "
            "loop yields every 500 sends. Messages per second."),
    Section("2. Cross-node throughput", ("cross-node throughput",),
            "One sender process to one receiver process on loopback, 100-byte bodies, timed from "
            "the sender's first send to the receiver's last receipt (one clock: CLOCK_MONOTONIC)."
            " smartroute: node A `send_to` EQ to one subscriber on node B, yielding every 500 "
            "sends; the handler only counts (sync, or async through the subscriber's queue). "
            "Tight loop without yields: the same sync handler, the sender a plain `for` of `await"
            " send_to` that never yields itself (the node gives the loop a turn each time a 256 "
            "KiB batch is full). pyzmq blocking: PUSH `send` / PULL `recv`, one call per message."
            " pyzmq asyncio: the PULL awaits readiness once, then drains with non-blocking `recv`"
            " (what smartroute's inbox does); the PUSH awaits only when ZeroMQ's pipe is full. "
            "Redis: publisher -> redis-server -> subscriber, three processes, redis-py with "
            "hiredis, PUBLISH pipelined 500 per round trip (the same batch as smartroute's turn),"
            " the subscriber reading with `listen()`. Zenoh: in its own section below."),
    Section("3. Fan-out", ("fan-out to 4 nodes",),
            "ALL from one sender to one subscriber on each of 4 other nodes (five processes); "
            "throughput counts each message once, deliveries four times, until the slowest "
            "receiver has all. Redis: one publisher, four subscriber processes on one channel."),
    Section("4. Request/reply round trip", ("request/reply round trip",),
            "Sequential round trips with a 100-byte body between two processes, p50 and p99 of "
            "each run of 10,000 (1,000 with --quick; after 100 unmeasured). smartroute: "
            "`node.request` to a sync handler on the other node that returns the body. pyzmq: "
            "asyncio DEALER `send`/`recv` to an asyncio ROUTER that echoes. Redis: PUBLISH on a "
            "request channel, an echo process publishes it back on a reply channel the client "
            "is subscribed to. Zenoh: in its own section below."),
    Section("Next to Eclipse Zenoh (issue 12)",
            ("cross-node throughput, next to Zenoh", "request/reply round trip, next to Zenoh"),
            "Two Zenoh peers (eclipse-zenoh), one process each, peer mode: one listens on "
            "tcp/127.0.0.1, the other connects to it, multicast scouting and gossip off, so "
            "nothing reaches the machine's interfaces (what each process bound is checked with "
            "`ss`: loopback only, or the family fails). Bodies are msgpack, as smartroute's: "
            "a plain loop of `publisher.put` of the packed 100-byte body; the subscriber's "
            "callback unpacks and counts. BLOCK waits when Zenoh's queue is full; DROP (Zenoh's "
            "default) drops instead, so each run's delivered count is shown, and a figure with a"
            " run that lost messages is listed below, never given as a throughput. Round trip: "
            "`querier.get` with a packed body to a queryable on the other peer that unpacks it "
            "and replies with it packed, timed until the reply is unpacked (the query's end is "
            "then awaited, untimed); default consolidation (a reply is held until the query "
            "ends) and NONE. smartroute's runs (the sync counting handler, yielding every 500; "
            "`node.request` to an echo handler) alternate with Zenoh's, run by run, on two "
            "nodes started with the Zenoh peers, so both face the same load."),
    Section("Next to pyre, on the LAN harness",
            ("cross-node throughput, LAN harness", "request/reply round trip, LAN harness"),
            "pyre finds peers with UDP broadcast beacons, so it runs only on the LAN harness: "
            "two network namespaces on one bridge (veth pairs), one process per host; "
            "smartroute is measured on the same two hosts for the ratio. pyre's WHISPER goes "
            "through its node thread, and a peer whose send queue (3,000) fills is dropped, "
            "so its sender keeps at most 2,000 whispers unacknowledged (the receiver acks "
            "every 1,000). Round trip: whisper, and the peer whispers it back. pyre's beacons are "
            "UDP broadcasts to the subnet's broadcast address from the first non-loopback "
            "interface (eth0 in a namespace): across the bridge they work, and two pyre nodes "
            "see each other within milliseconds."),
    Section("5. Subscription propagation", ("subscription propagation",),
            "From just before `subscribe` on node A until `wait_for` on node B returns (B "
            "would route to it), two processes on loopback; p50 and p99 of each run."),
    Section("6. Failure detection", ("failure detection",),
            "Three nodes with default timings, one process each; one is SIGKILLed (or "
            "SIGSTOPped: frozen, its connections open) and each of the two others stamps the "
            "`PeerDown` its node reports (`events()`), so no polling is in the figure. Each "
            "peer: one value per survivor and run; dead everywhere: the later of the two per "
            "run. A killed process is dead when its port refuses the redial; a frozen one "
            "when libzmq's ZMTP pings go unanswered (ping_timeout_s 1.0) and the connection "
            "is not back within unreachable_after_s 0.25."),
    Section("8. Delivery across stalls and resets",
            ("sender loop stall*", "TCP connection reset under load"),
            "Messages the receiver's subscriber got against what the sender's `send_to` "
            "accepted, two processes on loopback with default timings. Loop stall: 20,250 "
            "sends (yielding every 500, so 250 records are still queued), then `time.sleep` "
            "on the sender's loop for 2 s or 5 s, then 20,000 more. Reset: a flood of 200,000 "
            "during which the sender's TCP connection to the receiver is aborted 8 times, from "
            "0.1 s in, 0.05 s apart (`ss -K`: both ends see a reset). Retransmitted batches: "
            "the sender's `retransmitted_batches`; lost_messages: what the sender itself "
            "counted as lost; peer downs: `PeerDown` events on both sides. Goal: nothing lost, "
            "nothing twice."),
    Section("7. Discovery", ("discovery *",),
            "mDNS on the LAN harness, measured by `bench/lan_convergence.py` (16 hosts in "
            "[DISCOVERY.md](DISCOVERY.md)). Cold: N nodes started at once, seconds from the "
            "last one up until every node routes to every other. Warm: one node joins N-1, "
            "seconds from its `start()` returning. `from_*spawn_s` includes starting Python."),
    Section("REGEX targets: smartroute's engine and RE2 (issue 12)",
            ("Router.plan(REGEX)*", "pathological *", "DFA without cache hits*",
             "fast path worst*", "compile and first search*"),
            "From `bench/regex_safety.py` (one process; every row, the scans of 100,000 names "
            "included, in `results/regex.json`; where the engines' answers differ in "
            "`results/regex_semantics.json`). Hot path: `Router.plan(REGEX, target)` over a "
            "peer's table of 100,000 names (`user:alice123`, `room:42`, `svc:echo-3`), cold (a "
            "new Router, the pattern compiled on the way) and warm (cached), with smartroute's "
            "`patterns.py` and with RE2 (google-re2) put in its place, alternating run by run; "
            "the plans must be equal; everyday targets, then adversarial ones, then the "
            "slowest pattern for smartroute's DFA over 100 random a/b names of 256 characters "
            "(a peer choosing both names and pattern). RE2 uses its fastest public call per "
            "name, an `re2.Set` "
            "of the one pattern (no match object built). Pathological: the classic "
            "catastrophic patterns, compiled afresh and searched once (`re` takes longer than "
            "0.2 s on the shortest name shown). Worst cases: smartroute's DFA cache never "
            "hitting, the worst pattern its `re` fast path accepts, compiling the largest "
            "pattern (RE2 refuses counted repeats over 1000). Why patterns.py stays: "
            "[PROFILE.md](PROFILE.md)."),
    Section("Memory", ("memory, 100,000 subscribers*",),
            "Node A subscribes 100,000 names `user:<n>` (sync handlers), without meta or each "
            "with the chat gateway's `{\"gateway\": <name>}`; node B only observes "
            "(`bench/table_memory.py`). B's RSS after its table holds them all, minus before "
            "(in total and per subscriber); B's and A's RSS; replication time from A's first "
            "`subscribe` until B's table is complete. Fresh processes each run."),
)


@dataclass(frozen=True)
class Goal:
    """A target of issue 5: the figure it is judged on, and the bar."""

    text: str
    target: str
    measure: Callable[[Sequence[Row]], float | None]
    met: Callable[[float], bool]
    unit: str


def find(rows: Sequence[Row], workload: str, system: str, metric: str) -> Row | None:
    """The row of one figure, if measured."""
    return next((one for one in rows if (one["workload"], one["system"], one["metric"])
                 == (workload, system, metric)), None)


def ratio(rows: Sequence[Row], workload: str, metric: str, baseline: str) -> float | None:
    """smartroute's value divided by ``baseline``'s, for the same workload and metric."""
    ours = find(rows, workload, REFERENCE, metric)
    theirs = find(rows, workload, baseline, metric)
    if ours is None or theirs is None or not theirs["value"]:
        return None
    return float(ours["value"]) / float(theirs["value"])


def _value(workload: str, system: str, metric: str) -> Callable[[Sequence[Row]], float | None]:
    def measure(rows: Sequence[Row]) -> float | None:
        found = find(rows, workload, system, metric)
        return None if found is None else float(found["value"])
    return measure


def _ratio(workload: str, metric: str, baseline: str) -> Callable[[Sequence[Row]], float | None]:
    return lambda rows: ratio(rows, workload, metric, baseline)


def _scaled(measure: Callable[[Sequence[Row]], float | None],
            factor: float) -> Callable[[Sequence[Row]], float | None]:
    def scaled(rows: Sequence[Row]) -> float | None:
        value = measure(rows)
        return None if value is None else value * factor
    return scaled


def _worst(workload: str, metric: str) -> Callable[[Sequence[Row]], float | None]:
    def measure(rows: Sequence[Row]) -> float | None:
        found = find(rows, workload, REFERENCE, metric)
        return None if found is None else float(found["max"])
    return measure


def _variant(workload: str, system: str, metric: str) -> Callable[[Sequence[Row]],
                                                                   float | None]:
    """A variant of smartroute's figure divided by smartroute's own, same workload."""
    def measure(rows: Sequence[Row]) -> float | None:
        ours, variant = find(rows, workload, REFERENCE, metric), find(rows, workload, system,
                                                                      metric)
        if ours is None or variant is None or not ours["value"]:
            return None
        return float(variant["value"]) / float(ours["value"])
    return measure


def _slowest_warm_join(rows: Sequence[Row]) -> float | None:
    warm = [float(one["value"]) for one in rows
            if one["workload"].startswith("discovery warm start") and one["metric"] == "from_up_s"]
    return max(warm) * 1000 if warm else None


GOALS = (
    Goal("Cross-node throughput vs Redis pub/sub", ">= 3x",
         _ratio("cross-node throughput", "throughput", "Redis pub/sub"), lambda x: x >= 3, "x"),
    Goal("Cross-node throughput vs raw blocking pyzmq PUSH/PULL", ">= 0.6x",
         _ratio("cross-node throughput", "throughput", "pyzmq PUSH/PULL, blocking"),
         lambda x: x >= 0.6, "x"),
    Goal("Request/reply p50 vs raw asyncio DEALER/ROUTER", "<= 1.3x",
         _ratio("request/reply round trip", "p50", "pyzmq DEALER/ROUTER, asyncio"),
         lambda x: x <= 1.3, "x"),
    Goal("Request/reply p99 vs raw asyncio DEALER/ROUTER", "<= 2x",
         _ratio("request/reply round trip", "p99", "pyzmq DEALER/ROUTER, asyncio"),
         lambda x: x <= 2, "x"),
    Goal("Request/reply p50 vs raw asyncio DEALER/ROUTER (issue 12)", "<= 1.1x",
         _ratio("request/reply round trip", "p50", "pyzmq DEALER/ROUTER, asyncio"),
         lambda x: x <= 1.1, "x"),
    Goal("Request/reply p99 vs raw asyncio DEALER/ROUTER (issue 12)", "<= 1.5x",
         _ratio("request/reply round trip", "p99", "pyzmq DEALER/ROUTER, asyncio"),
         lambda x: x <= 1.5, "x"),
    Goal("Fan-out ALL to 4 nodes vs Redis pub/sub (issue 12)", ">= 3x",
         _ratio("fan-out to 4 nodes", "throughput", "Redis pub/sub"), lambda x: x >= 3, "x"),
    Goal("Cross-node throughput vs Zenoh put, congestion BLOCK (issue 12)", ">= 1.0x",
         _ratio("cross-node throughput, next to Zenoh", "throughput",
                "Zenoh put, congestion BLOCK"), lambda x: x >= 1.0, "x"),
    Goal("Request/reply p50 vs Zenoh querier.get (issue 12)", "<= 1.0x",
         _ratio("request/reply round trip, next to Zenoh", "p50", "Zenoh querier.get"),
         lambda x: x <= 1.0, "x"),
    Goal("Local dispatch", ">= 1,000,000 msg/s",
         _value("local dispatch", REFERENCE, "throughput"), lambda x: x >= 1e6, "msg/s"),
    Goal("SIGKILL detection (default timings)", "< 1.5 s",
         _value("failure detection", REFERENCE, "SIGKILL to dead everywhere"),
         lambda x: x < 1.5, "s"),
    Goal("Killed (SIGKILL) node reported down by every peer (issue 10)", "< 100 ms",
         _scaled(_value("failure detection", REFERENCE, "SIGKILL to dead everywhere"), 1000),
         lambda x: x < 100, "ms"),
    Goal("Frozen (SIGSTOP) node reported down by every peer", "< 2 s",
         _value("failure detection", REFERENCE, "SIGSTOP to dead everywhere"),
         lambda x: x < 2, "s"),
    Goal("Tight loop without yields vs the loop that yields every 500", ">= 0.95x",
         _variant("cross-node throughput", "smartroute, tight loop without yields",
                  "throughput"), lambda x: x >= 0.95, "x"),
    Goal("Messages lost across a 2 s sender loop stall (worst run)", "0",
         _worst("sender loop stall, 2 s", "messages lost"), lambda x: x == 0, "messages"),
    Goal("Messages lost across a 5 s sender loop stall (worst run)", "0",
         _worst("sender loop stall, 5 s", "messages lost"), lambda x: x == 0, "messages"),
    Goal("Messages lost across TCP resets under load (worst run)", "0",
         _worst("TCP connection reset under load", "messages lost"), lambda x: x == 0,
         "messages"),
    Goal("Warm join (slowest cluster size measured)", "< 300 ms", _slowest_warm_join,
         lambda x: x < 300, "ms"),
    Goal("Memory of 100,000 subscribers in the table (observer's RSS growth)", "< 100 MB",
         _value("memory, 100,000 subscribers", REFERENCE, "observer RSS growth"),
         lambda x: x < 100, "MB"),
    Goal("Memory of 100,000 subscribers with a gateway meta (observer's RSS growth, issue 12)",
         "< 30 MB", _value("memory, 100,000 subscribers with a gateway meta", REFERENCE,
                           "observer RSS growth"), lambda x: x < 30, "MB"),
)


# --- formatting ---------------------------------------------------------------------------------


def number(value: float, unit: str) -> str:
    """A figure with its unit, at a precision that suits the unit."""
    if unit == "msg/s":
        return f"{value:,.0f} msg/s"
    if unit == "us":
        return f"{value:,.0f} µs" if value >= 100 else f"{value:.1f} µs"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.3g} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "messages" and value >= 1000:
        return f"{value:,.0f} messages"
    return f"{value:.4g} {unit}"


def _bare(value: float, unit: str) -> str:
    return number(value, unit).rsplit(" ", 1)[0] if unit in ("msg/s", "us", "s", "MB") else (
        number(value, unit))


def _cell(text: str) -> str:
    """``text`` safe in a markdown table cell (a REGEX pattern may hold ``|``)."""
    return text.replace("|", "\\|")


def table(rows: Sequence[Row]) -> list[str]:
    """A markdown table of ``rows``, with each row's ratio to smartroute's same figure."""
    several = len({one["workload"] for one in rows}) > 1
    head = ["workload"] if several else []
    lines = ["| " + " | ".join([*head, "system", "metric", "median", "min - max", "runs",
                                "smartroute ÷ this"]) + " |",
             "|" + "---|" * (len(head) + 6)]
    for one in rows:
        if one["system"] == REFERENCE:
            shown = "reference"
        elif one["system"].startswith(REFERENCE):  # a variant of ours, not a baseline
            shown = ""
        else:
            value = ratio(rows, one["workload"], one["metric"], one["system"])
            shown = "" if value is None else number(value, "x")
        cells = [_cell(one["workload"])] if several else []
        cells += [_cell(one["system"]), one["metric"], number(one["value"], one["unit"]),
                  f"{_bare(one['min'], one['unit'])} - {_bare(one['max'], one['unit'])}",
                  str(one["runs"]), shown]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goals(rows: Sequence[Row]) -> list[str]:
    """The goals table: each target, where we stand, met or not."""
    lines = ["| goal | target | measured | status |", "|---|---|---|---|"]
    for goal in GOALS:
        value = goal.measure(rows)
        if value is None:
            lines.append(f"| {goal.text} | {goal.target} | — | not measured |")
        else:
            status = "met" if goal.met(value) else "**not met**"
            lines.append(f"| {goal.text} | {goal.target} | {number(value, goal.unit)} | "
                         f"{status} |")
    return lines


def machine(info: dict[str, Any]) -> list[str]:
    """The machine and software versions, as a two-column table."""
    names = {"date": "date", "cpu": "CPU", "cores": "cores", "memory": "memory", "os": "OS",
             "python": "Python", "smartroute": "smartroute", "commit": "commit",
             "pyzmq": "pyzmq", "libzmq": "libzmq", "msgpack": "msgpack",
             "zeroconf": "zeroconf", "redis_server": "redis-server", "redis": "redis-py",
             "hiredis": "hiredis", "eclipse-zenoh": "eclipse-zenoh",
             "zeromq-pyre": "zeromq-pyre", "google-re2": "google-re2",
             "load_average_at_start": "load average (1 min) at start",
             "load_average_at_end": "load average (1 min) at end",
             "load_averages_at_start": "load averages (1 / 5 / 15 min) at start",
             "load_averages_at_end": "load averages (1 / 5 / 15 min) at end"}
    lines = ["| | |", "|---|---|"]
    lines += [f"| {label} | {info[key]} |" for key, label in names.items() if key in info]
    return lines


def render(data: dict[str, Any], *, chart: bool = True) -> str:
    """The whole REPORT.md for one latest.json."""
    rows: list[Row] = data.get("rows", [])
    info: dict[str, Any] = data.get("machine", {})
    lines = ["# smartroute benchmarks", "",
             "smartroute side by side with raw pyzmq, Redis pub/sub, Eclipse Zenoh and pyre, "
             "measured in one "
             "run on one machine. Written by `bench/run.py` (`make bench`, or `make "
             "bench-quick`) from `bench/results/latest.json`: do not edit by hand. "
             "Medians of the runs, min - max across runs; 100-byte bodies everywhere. The "
             "last column divides smartroute's figure by the row's: above 1 smartroute "
             "delivers more per second, or takes longer per round trip.", ""]
    warnings = []
    if data.get("mode") != "full":
        warnings.append(f"this is a **{data.get('mode')}** run (fewer messages and runs)")
    cores = info.get("cores") or 1
    # Only the load before the run tells of other work: at the end the 1-minute average
    # mostly counts the benchmark's own processes.
    load = info.get("load_average_at_start", 0)
    if load > LOADED_MACHINE * cores:
        warnings.append(f"the machine was shared with other work (load average {load} at "
                        f"the start, on {cores} cores: throughputs are lower and latencies "
                        "more spread than on an idle machine)")
    if warnings:
        lines += [f"**Provisional figures:** {'; '.join(warnings)}.", ""]
    lines += ["## Goals", "", *goals(rows), "",
              "Goals are targets to move toward (issue 5); no test asserts them.", ""]
    if chart:
        lines += ["![throughput and round trips](results/chart.png)", ""]
    else:
        lines += ["(No chart: matplotlib is missing; `pip install -e '.[bench]'`.)", ""]
    shown: set[int] = set()
    for section in SECTIONS:
        picked = ordered([one for one in rows if section.holds(one["workload"])])
        shown |= {id(one) for one in picked}
        lines += [f"## {section.title}", "", section.about, ""]
        lines += [*table(picked), ""] if picked else ["Not measured in this run.", ""]
    others: dict[str, list[Row]] = {}
    for one in rows:
        if id(one) not in shown:
            others.setdefault(one["workload"], []).append(one)
    if others:
        lines += ["## Other figures", "",
                  "Rows from other scripts (the chat gateway's come from "
                  "`bench/chat_gateway.py`).", ""]
        for workload, picked in others.items():
            lines += [f"### {_cell(workload)}", "", *table(picked), ""]
    lines += ["## Profile and fixes", "",
              "Where the cross-node path spends its time and what was done about it, with "
              "figures before and after: [PROFILE.md](PROFILE.md) (probe: "
              "`bench/hot_path.py`). Discovery in more detail: [DISCOVERY.md](DISCOVERY.md). Two "
              "commits side by side, alternating rounds in one run: `bench/before_after.py "
              "--old CHECKOUT` (last run: `results/before_after.json`).",
              ""]
    skipped = data.get("skipped", [])
    if skipped:
        lines += ["## Not measured, and runs discarded", "",
                  "A flood run that loses messages is not a result: it is discarded and run "
                  "again (at most twice), and listed here. A Zenoh DROP run that loses "
                  "messages is not run again: losing them is what DROP does, so it is listed "
                  "here and counted in its delivered row.", "", "| what | why |", "|---|---|"]
        lines += [f"| {skip['what']} | {skip['reason']} |" for skip in skipped]
        lines.append("")
    lines += ["## The machine", "", *machine(info), ""]
    families = data.get("families", {})
    if families:
        lines += ["## Time per family", "",
                  f"Whole run: {data.get('seconds', '?')} s (`make bench` must stay under 10 "
                  "minutes on 2 cores, `make bench-quick` under 2).", "",
                  "| family | mode | seconds | date |", "|---|---|---|---|"]
        lines += [f"| {name} | {family['mode']} | {family['seconds']} | {family['date']} |"
                  for name, family in families.items()]
        lines.append("")
    lines += ["## Reproduce", "",
              "`make bench` (about 10 minutes) or `make bench-quick` (about 2) from a fresh "
              "checkout: they create the virtualenv, install the `bench` extra (redis-py, "
              "hiredis, eclipse-zenoh, zeromq-pyre, google-re2, matplotlib) and, as root, "
              "redis-server from the "
              "distribution. One family: `.venv/bin/python bench/run.py --only redis`. The "
              "LAN harness (pyre, discovery) needs root; without it those rows are skipped "
              "with the reason above. Redis runs on 127.0.0.1 on a free port, without "
              "persistence, and without the pub/sub output-buffer limit (a subscriber behind "
              "a pipelined publisher would otherwise be disconnected mid-run).", ""]
    return "\n".join(lines)


SHORT = {"local dispatch": "local", "cross-node throughput": "cross-node",
         "cross-node throughput, LAN harness": "LAN", "fan-out to 4 nodes": "fan-out x4",
         "request/reply round trip": "loopback", "request/reply round trip, LAN harness": "LAN",
         "cross-node throughput, next to Zenoh": "vs Zenoh",
         "request/reply round trip, next to Zenoh": "vs Zenoh"}
"""Workload names as the chart's labels say them."""


def ordered(rows: Sequence[Row]) -> list[Row]:
    """Rows grouped by workload (in order of first appearance), smartroute's first."""
    first = {workload: i for i, workload in reversed(list(enumerate(
        one["workload"] for one in rows)))}
    return sorted(rows, key=lambda one: (first[one["workload"]],
                                         not one["system"].startswith(REFERENCE)))


def draw(data: dict[str, Any], path: Path) -> bool:
    """Draw throughput, p50 and p99 as horizontal bars in a PNG; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415
    except ImportError:
        return False
    rows = ordered(data.get("rows", []))
    panels = [
        ("Throughput, 100-byte messages (messages per second)",
         [one for one in rows if one["workload"] in SHORT and one["metric"] == "throughput"]),
        ("Request/reply round trip, p50 (microseconds)",
         [one for one in rows if one["workload"] in SHORT and one["metric"] == "p50"]),
        ("Request/reply round trip, p99 (microseconds)",
         [one for one in rows if one["workload"] in SHORT and one["metric"] == "p99"]),
    ]
    panels = [(title, picked) for title, picked in panels if picked]
    if not panels:
        return False
    heights = [len(picked) for _, picked in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(10, 1.2 * len(panels) + 0.3 * sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, picked) in zip(axes[:, 0], panels, strict=True):
        names = [f"{SHORT[one['workload']]}: {one['system']}" for one in picked]
        values = [one["value"] for one in picked]
        ax.barh(names, values,
                xerr=[[one["value"] - one["min"] for one in picked],
                      [one["max"] - one["value"] for one in picked]],
                color=["#1f6fb4" if one["system"].startswith(REFERENCE) else "#a0a0a0"
                       for one in picked], error_kw={"elinewidth": 1, "capsize": 2})
        for y, one in enumerate(picked):
            ax.text(one["max"], y, f"  {one['value']:,.0f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, max(one["max"] for one in picked) * 1.18)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.tick_params(labelsize=8)
    fig.suptitle("smartroute (blue) and baselines (grey): median, whiskers min-max",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(data: dict[str, Any], report: Path = REPORT, chart: Path = CHART) -> list[Path]:
    """Write the chart (when matplotlib is there) and the report; returns what was written."""
    drawn = draw(data, chart)
    report.write_text(render(data, chart=drawn))
    return [chart, report] if drawn else [report]


def main() -> int:
    if not LATEST.exists():
        print(f"no {LATEST}: run bench/run.py first", file=sys.stderr)
        return 1
    for path in write(json.loads(LATEST.read_text())):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
