"""smartroute's own workloads on loopback: local dispatch, cross-node throughput, fan-out,
request/reply and subscription propagation (failure detection is in ``workloads_delivery``, the
memory of a big table in ``table_memory``).

Every node is a ``worker_smartroute.py`` process. Each measured run follows one unmeasured
warm-up.
"""

from __future__ import annotations

import contextlib
import time

from common import PER_TURN, Bench, Worker, WorkerError, latency_rows, rate, row

NODE = "worker_smartroute.py"

FAN_OUT_NODES = 4
"""Receiving nodes of the fan-out workload (one subscriber each; the sender has none)."""

RTT_WARMUP = 100
"""Round trips before each measured run: connections, caches and the allocator settle."""

SLOWEST_RATE = 2_000
"""Messages per second below which a flood counts as lost rather than slow (the slowest
figure seen here, on a machine loaded by others, was ~9,000)."""

MIN_WAIT_S = 10.0
"""Shortest wait for a flood's last message."""

MAX_DISCARDED = 2
"""Runs of one figure that may lose messages before the figure counts as failed."""

SETTLE_WINDOW_S = 0.2
"""After a lost run: the receivers' counts must stay the same this long."""

SETTLE_LIMIT_S = 10.0
"""After a lost run: longest wait for the receivers' counts to stop moving."""

MB = 1e6


def node_pair(bench: Bench, *, prefix_b: list[str] | None = None,
              prefix_a: list[str] | None = None, host_a: str = "127.0.0.1",
              host_b: str = "127.0.0.1") -> tuple[Worker, Worker]:
    """Two nodes in two processes, A seeded with B's endpoint."""
    b = bench.worker(NODE, "--host", host_b, prefix=prefix_b or [])
    a = bench.worker(NODE, "--host", host_a, "--seed", b.ready["endpoint"],
                     prefix=prefix_a or [])
    return a, b


def flood_rate(sender: Worker, receivers: list[Worker], count: int, target: str | None,
               mode: str = "EQ", per_turn: int = PER_TURN) -> float:
    """Messages per second from the sender's first ``send_to`` until every receiver has all
    ``count`` (the sender yields every ``per_turn`` sends, 0: never); ``WorkerError`` if some
    never arrived."""
    for receiver in receivers:
        receiver.call("arm", count=count)
    sent = sender.call("flood", target=target, mode=mode, count=count, per_turn=per_turn)
    timeout = max(MIN_WAIT_S, count / SLOWEST_RATE)
    ends = [receiver.call("done", timeout=timeout, answer_within_s=timeout + MIN_WAIT_S)
            ["t_last"] for receiver in receivers]
    return rate(count, sent["t_start"], max(ends))


def settle(receivers: list[Worker]) -> None:
    """Return once no receiver's count of received messages moves any more (bounded), so the
    stragglers of a failed run cannot count toward the next."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    last: list[int] = []
    while time.monotonic() < deadline:
        counts = [receiver.call("stats")["received"] for receiver in receivers]
        if counts == last:
            return
        last = counts
        time.sleep(SETTLE_WINDOW_S)  # observation window: nothing else should arrive


def floods(bench: Bench, what: str, sender: Worker, receivers: list[Worker], count: int,
           target: str | None, mode: str = "EQ", per_turn: int = PER_TURN) -> list[float]:
    """One warm-up, then ``bench.scale.runs`` flood rates (see ``kept_rate``)."""
    kept_rate(bench, what, sender, receivers, count // 10, target, mode, per_turn)
    return [kept_rate(bench, what, sender, receivers, count, target, mode, per_turn)
            for _ in range(bench.scale.runs)]


def kept_rate(bench: Bench, what: str, sender: Worker, receivers: list[Worker], count: int,
              target: str | None, mode: str = "EQ", per_turn: int = PER_TURN) -> float:
    """One flood rate. A run that loses messages (at most once, no acknowledgements: a peer
    wrongly declared dead loses what was in flight) is recorded as discarded and replaced, at
    most ``MAX_DISCARDED`` times in a row."""
    discarded = 0
    while True:
        try:
            return flood_rate(sender, receivers, count, target, mode, per_turn)
        except WorkerError as exc:
            discarded += 1
            bench.skip(f"{what}: run discarded", str(exc).splitlines()[0])
            if discarded > MAX_DISCARDED:
                raise
            settle(receivers)


def rtt_count(bench: Bench) -> int:
    """Round trips per run, for every system. Enough that a run's p99 is not one slow phase
    of the box: a few milliseconds of 20-40 slow round trips in a row, seen in every system,
    moved the p99 of 4,000 from ~260 to ~540 us in some runs and not others."""
    return bench.scale.count(10_000, 1000)


HANDLERS = (("smartroute", "sink", "count", PER_TURN),
            ("smartroute, async handler", "sink:async", "count_async", PER_TURN),
            ("smartroute, tight loop without yields", "sink", "count", 0))
"""System name, subscriber name, handler and sends between the sender's yields (0: a plain
loop of ``await send_to`` that never yields itself) of each cross-node throughput figure."""

Handlers = tuple[tuple[str, str, str, int], ...]


def throughput(bench: Bench, workload: str, a: Worker, b: Worker, *,
               handlers: Handlers = HANDLERS,
               counts: tuple[int, int] = (200_000, 40_000)) -> None:
    """Cross-node throughput A -> one subscriber on B, for each of ``handlers``; ``counts``
    messages per run (full, quick)."""
    count = bench.scale.count(*counts)
    subscribed = set()
    for system, name, handler, per_turn in handlers:
        if name not in subscribed:
            b.call("subscribe", name=name, handler=handler)
            a.call("wait_for", name=name)
            subscribed.add(name)
        kept_rate(bench, f"{workload}, {system}", a, [b], count // 10, name, per_turn=per_turn)
    # Run by run, each handler in turn: a ratio between two of them (the tight loop against
    # the yielding one) compares runs made under the same load, not minutes apart.
    values: dict[str, list[float]] = {system: [] for system, *_ in handlers}
    for _ in range(bench.scale.runs):
        for system, name, _, per_turn in handlers:
            values[system].append(kept_rate(bench, f"{workload}, {system}", a, [b], count,
                                            name, per_turn=per_turn))
    for system, *_ in handlers:
        bench.add(row(workload, system, "throughput", values[system], "msg/s"))


def round_trips(bench: Bench, workload: str, a: Worker, b: Worker, *, system: str) -> None:
    """Request/reply from A to an echo subscriber on B: p50 and p99."""
    b.call("subscribe", name="svc:echo", handler="echo")
    a.call("wait_for", name="svc:echo")
    runs = [a.call("rtt", target="svc:echo", count=rtt_count(bench), warmup=RTT_WARMUP)
            for _ in range(bench.scale.runs)]
    bench.add(*latency_rows(workload, system, runs))


def local_dispatch(bench: Bench) -> None:
    """1. ``send_to`` EQ to a sync handler on the same node."""
    count = bench.scale.count(300_000, 100_000)
    with bench.worker(NODE) as node:
        node.call("local_dispatch", count=count // 10)
        values = [count / node.call("local_dispatch", count=count)
                  for _ in range(bench.scale.runs)]
    bench.add(row("local dispatch", "smartroute", "throughput", values, "msg/s"))


def cross_node(bench: Bench) -> None:
    """2. Node A to one subscriber on node B, two processes, EQ; sync and async handler."""
    a, b = node_pair(bench)
    with a, b:
        throughput(bench, "cross-node throughput", a, b)


def fan_out(bench: Bench) -> None:
    """3. ALL to one subscriber on each of 4 nodes (five processes)."""
    count = bench.scale.count(50_000, 10_000)
    with contextlib.ExitStack() as stack:
        receivers = [stack.enter_context(bench.worker(NODE)) for _ in range(FAN_OUT_NODES)]
        seeds = [arg for r in receivers for arg in ("--seed", r.ready["endpoint"])]
        sender = stack.enter_context(bench.worker(NODE, *seeds))
        for receiver in receivers:
            receiver.call("subscribe", name="fan", handler="count")
        sender.call("wait_for", name="fan", count=FAN_OUT_NODES)
        values = floods(bench, "fan-out to 4 nodes", sender, receivers, count, None, "ALL")
    bench.add(row("fan-out to 4 nodes", "smartroute", "throughput", values, "msg/s"),
              row("fan-out to 4 nodes", "smartroute", "deliveries",
                  [v * FAN_OUT_NODES for v in values], "msg/s"))


def request_reply(bench: Bench) -> None:
    """4. Request/reply round trip, p50 and p99."""
    a, b = node_pair(bench)
    with a, b:
        round_trips(bench, "request/reply round trip", a, b, system="smartroute")


def propagation(bench: Bench) -> None:
    """5. From ``subscribe`` on A until B routes to it, p50/p99."""
    per_run = 200 if not bench.scale.quick else 100
    a, b = node_pair(bench)
    with a, b:
        b.call("subscribe", name="warm", handler="ignore")
        a.call("wait_for", name="warm")
        runs: list[list[float]] = []
        for run in range(bench.scale.runs):
            samples = []
            for i in range(per_run):
                name = f"prop:{run}:{i}"
                b.call("arm_wait", name=name)
                started = a.call("subscribe", name=name, handler="ignore")
                samples.append(b.call("waited", name=name) - started)
            runs.append(samples)
    bench.add(*latency_rows("subscription propagation", "smartroute", runs))
