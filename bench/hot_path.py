"""Hot-path probe: how fast one message goes through smartroute, beside raw pyzmq.

    .venv/bin/python bench/hot_path.py [--runs 5] [--quick] [--only local,cross,rr,raw]
                                       [--receiver-gc default|freeze|threshold:N]

Figures (100-byte bytes bodies, medians of ``--runs`` with min-max):

- ``local``: ``send_to`` EQ to a sync handler on the same node, msg/s (and CPU us per message).
- ``cross``: node A (this process) to one subscriber on node B (a child process), EQ, msg/s,
  with a sync and an async handler, after one untimed warm-up flood. The sender yields to its
  loop every ``SENDS_PER_TURN`` sends, as a busy service would; the figure is messages the
  receiver handled per second.
- ``rr``: ``request`` to a sync echo handler on node B, sequential, p50 and p99 in us.
- ``raw``: the same machine's ceiling in the same run: pyzmq PUSH/PULL blocking, msg/s, and an
  asyncio DEALER/ROUTER round trip, p50/p99 in us.

``--receiver-gc`` tunes the garbage collector of node B (the receiver) once it has started:
``freeze`` runs ``gc.freeze()`` (what exists at start-up is never scanned again),
``threshold:N`` sets the generation-0 threshold to N (default 700), to compare the receiver's
CPU per message.

Traffic stays on 127.0.0.1; every child process is stopped by its PID. To compare two trees,
run the probe with ``PYTHONPATH`` pointing at each: the first output line says which
``smartroute`` was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq
import zmq.asyncio

import smartroute
from smartroute import Message, Node, ReceiveMode

BODY = b"x" * 100
CLUSTER = "hot-path"
SENDS_PER_TURN = 100
"""Sends between two yields of the flooding sender: one batch per link per turn."""

CHILD_READY_TIMEOUT_S = 15.0
"""A child imports zmq and starts a node; a loaded box needs seconds."""

FLOOD_TIMEOUT_S = 60.0
"""Longest the receiver waits for one flood to arrive in full."""

SIZES = {  # (full, quick) message counts per run
    "local": (300_000, 50_000),
    "cross": (200_000, 40_000),
    "rr": (3_000, 600),
    "raw_push": (500_000, 100_000),
    "raw_rtt": (3_000, 600),
}
WARMUP_REQUESTS = 200


# --- node B, in a child process ---------------------------------------------------------------

def tune_gc(spec: str) -> None:
    """Apply ``--receiver-gc``: ``default``, ``freeze`` or ``threshold:N``."""
    if spec == "freeze":
        gc.collect()
        gc.freeze()
    elif spec.startswith("threshold:"):
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(int(spec.partition(":")[2]), older, oldest)
    elif spec != "default":
        raise SystemExit(f"--receiver-gc: default, freeze or threshold:N, not {spec!r}")


async def serve_node(receiver_gc: str = "default") -> None:
    """Node B: sinks (sync and async), an echo service and a control subscriber."""
    async with Node(CLUSTER, discovery=[], host="127.0.0.1", name="receiver") as node:
        count = 0
        expected = 0
        reached = asyncio.Event()
        cpu_start = 0.0

        def seen() -> None:
            nonlocal count
            count += 1
            if count == expected:
                reached.set()

        def sink(msg: Message) -> None:
            seen()

        async def async_sink(msg: Message) -> None:
            seen()

        async def control(msg: Message) -> object:
            nonlocal count, expected, cpu_start
            command: dict[str, Any] = msg.body  # type: ignore[assignment]
            if command["op"] == "expect":
                count, expected = 0, command["n"]
                reached.clear()
                cpu_start = time.process_time()
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached.wait(), FLOOD_TIMEOUT_S)
            return {"count": count, "cpu_s": time.process_time() - cpu_start}

        await node.subscribe("bench:sink", sink)
        await node.subscribe("bench:async-sink", async_sink)
        await node.subscribe("bench:echo", lambda msg: msg.body)
        await node.subscribe("bench:control", control)
        tune_gc(receiver_gc)
        print(json.dumps({"endpoint": node.endpoint}), flush=True)
        # Runs until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def serve_raw_pull(n: int) -> None:
    """Raw baseline: a PULL that reports when ``n`` messages have arrived."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"endpoint": f"tcp://127.0.0.1:{port}"}), flush=True)
    for _ in range(int(sys.stdin.readline())):
        for _ in range(n):
            pull.recv()
        print("done", flush=True)
    context.destroy(linger=0)


def serve_raw_router() -> None:
    """Raw baseline: an asyncio ROUTER echoing every message."""
    async def run() -> None:
        context = zmq.asyncio.Context()
        router = context.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        print(json.dumps({"endpoint": f"tcp://127.0.0.1:{port}"}), flush=True)

        async def echo() -> None:
            while True:
                await router.send_multipart(await router.recv_multipart())

        task = asyncio.create_task(echo())
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        task.cancel()
        context.destroy(linger=0)
    asyncio.run(run())


# --- the measuring side -----------------------------------------------------------------------

@contextlib.contextmanager
def child(role: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``bench/hot_path.py --serve role``; yields it and its endpoint; stops it by PID."""
    process = subprocess.Popen([sys.executable, __file__, "--serve", role, *args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = _readline(process, CHILD_READY_TIMEOUT_S)
        yield process, json.loads(line)["endpoint"]
    finally:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"child {process.pid} said nothing for {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"child {process.pid} exited with {process.wait()}")
    return line


async def local_dispatch(n: int) -> tuple[float, float]:
    """msg/s of ``send_to`` EQ to a sync handler on the same node; and CPU us per message."""
    async with Node(CLUSTER, discovery=[], host="127.0.0.1") as node:
        count = 0

        def on(msg: Message) -> None:
            nonlocal count
            count += 1

        await node.subscribe("bench:local", on)
        send_to, eq = node.send_to, ReceiveMode.EQ
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(n):
            await send_to(BODY, eq, "bench:local")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        if count != n:
            raise RuntimeError(f"local: {count} of {n} delivered")
    return n / elapsed, cpu / n * 1e6


async def cross_node(endpoint: str, n: int, runs: int) -> dict[str, list[float]]:
    """msg/s from this node to one subscriber on the child's node; and request round trips."""
    results: dict[str, list[float]] = {}
    async with Node(CLUSTER, discovery=[endpoint], host="127.0.0.1") as node:
        for name in ("bench:sink", "bench:async-sink", "bench:echo", "bench:control"):
            await node.wait_for(name, timeout=10.0)

        async def flood(key: str, target: str, count: int) -> tuple[float, float, float]:
            """(seconds, our CPU seconds, the receiver's CPU seconds) for ``count`` messages."""
            await node.request("bench:control", {"op": "expect", "n": count})
            send_to, eq = node.send_to, ReceiveMode.EQ
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(count):
                await send_to(BODY, eq, target)
                if i % SENDS_PER_TURN == SENDS_PER_TURN - 1:
                    await asyncio.sleep(0)
            got: dict[str, Any] = await node.request(  # type: ignore[assignment]
                "bench:control", {"op": "wait"}, timeout=FLOOD_TIMEOUT_S + 5)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            if got["count"] != count:
                raise RuntimeError(f"{key}: {got['count']} of {count} arrived "
                                   f"(dropped: {node.stats()['dropped']})")
            return elapsed, cpu, got["cpu_s"]

        targets = (("cross_sync", "bench:sink"), ("cross_async", "bench:async-sink"))
        for key, target in targets:  # warm-up, not counted: both processes' first flood
            await flood(key, target, n // 4)  # also grows their allocators
        for _ in range(runs):
            for key, target in targets:
                elapsed, cpu, rx_cpu = await flood(key, target, n)
                results.setdefault(key, []).append(n / elapsed)
                # CPU per message on each side: steadier than msg/s on a shared machine.
                results.setdefault(f"{key}_tx_cpu_us", []).append(cpu / n * 1e6)
                results.setdefault(f"{key}_rx_cpu_us", []).append(rx_cpu / n * 1e6)
    return results


async def round_trips(endpoint: str, n: int, runs: int) -> dict[str, list[float]]:
    """p50/p99 in us of sequential ``request`` to a sync echo handler on the child's node."""
    results: dict[str, list[float]] = {"rr_p50_us": [], "rr_p99_us": [], "rr_tx_cpu_us": []}
    async with Node(CLUSTER, discovery=[endpoint], host="127.0.0.1") as node:
        await node.wait_for("bench:echo", timeout=10.0)
        for _ in range(WARMUP_REQUESTS):
            await node.request("bench:echo", BODY)
        for _ in range(runs):
            samples = []
            clock = time.perf_counter
            cpu_start = time.process_time()
            for _ in range(n):
                start = clock()
                await node.request("bench:echo", BODY)
                samples.append(clock() - start)
            results["rr_tx_cpu_us"].append((time.process_time() - cpu_start) / n * 1e6)
            results["rr_p50_us"].append(_quantile(samples, 0.50) * 1e6)
            results["rr_p99_us"].append(_quantile(samples, 0.99) * 1e6)
    return results


def raw_push(n: int, runs: int) -> list[float]:
    """msg/s of blocking pyzmq PUSH to a PULL in a child process."""
    rates = []
    with child("raw-pull", str(n)) as (process, endpoint):
        assert process.stdin is not None
        process.stdin.write(f"{runs}\n")
        process.stdin.flush()
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.connect(endpoint)
        try:
            for _ in range(runs):
                start = time.perf_counter()
                for _ in range(n):
                    push.send(BODY)
                _readline(process, FLOOD_TIMEOUT_S)
                rates.append(n / (time.perf_counter() - start))
        finally:
            context.destroy(linger=0)
    return rates


async def raw_round_trips(endpoint: str, n: int, runs: int) -> dict[str, list[float]]:
    """p50/p99 in us of an asyncio DEALER -> ROUTER echo round trip."""
    results: dict[str, list[float]] = {"raw_rtt_p50_us": [], "raw_rtt_p99_us": [],
                                       "raw_rtt_tx_cpu_us": []}
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        for _ in range(WARMUP_REQUESTS):
            await dealer.send(BODY)
            await dealer.recv()
        for _ in range(runs):
            samples = []
            clock = time.perf_counter
            cpu_start = time.process_time()
            for _ in range(n):
                start = clock()
                await dealer.send(BODY)
                await dealer.recv()
                samples.append(clock() - start)
            results["raw_rtt_tx_cpu_us"].append((time.process_time() - cpu_start) / n * 1e6)
            results["raw_rtt_p50_us"].append(_quantile(samples, 0.50) * 1e6)
            results["raw_rtt_p99_us"].append(_quantile(samples, 0.99) * 1e6)
    finally:
        context.destroy(linger=0)
    return results


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(only: set[str], runs: int, quick: bool,
            receiver_gc: str = "default") -> dict[str, list[float]]:
    """Every figure asked for, ``runs`` samples each."""
    size = {key: sizes[1 if quick else 0] for key, sizes in SIZES.items()}
    figures: dict[str, list[float]] = {}
    run: Callable[..., Any] = asyncio.run
    if "local" in only:
        samples = [run(local_dispatch(size["local"])) for _ in range(runs)]
        figures["local"] = [rate for rate, _ in samples]
        figures["local_cpu_us"] = [cpu for _, cpu in samples]
    if only & {"cross", "rr"}:
        with child("node", receiver_gc) as (_, endpoint):
            if "cross" in only:
                figures.update(run(cross_node(endpoint, size["cross"], runs)))
            if "rr" in only:
                figures.update(run(round_trips(endpoint, size["rr"], runs)))
    if "raw" in only:
        figures["raw_push"] = raw_push(size["raw_push"], runs)
        with child("raw-router") as (_, endpoint):
            figures.update(run(raw_round_trips(endpoint, size["raw_rtt"], runs)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller runs (~10x fewer messages)")
    parser.add_argument("--only", default="local,cross,rr,raw",
                        help="comma-separated: local, cross, rr, raw")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--receiver-gc", default="default",
                        help="node B's garbage collector: default, freeze or threshold:N")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve == "node":
        asyncio.run(serve_node(rest[0] if rest else "default"))
        return
    if args.serve == "raw-pull":
        serve_raw_pull(int(rest[0]))
        return
    if args.serve == "raw-router":
        serve_raw_router()
        return
    figures = measure(set(args.only.split(",")), args.runs, args.quick, args.receiver_gc)
    source = os.path.dirname(os.path.dirname(os.path.abspath(smartroute.__file__)))
    if args.json:
        print(json.dumps({"smartroute": source, "figures": figures}))
        return
    print(f"smartroute from {source}")
    for key, values in figures.items():
        unit, form = ("us", ",.2f") if key.endswith("cpu_us") else (
            ("us", ",.0f") if key.endswith("_us") else ("msg/s", ",.0f"))
        print(f"{key:24} {statistics.median(values):>12{form}} {unit:6} "
              f"(min {min(values):{form}}, max {max(values):{form}}, runs {len(values)})")


if __name__ == "__main__":
    main()
