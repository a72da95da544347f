"""A smartroute node for the benchmarks, in a process of its own (protocol: ``common.py``).

    python bench/worker_smartroute.py --host 127.0.0.1 [--port P] [--seed tcp://...] \
        [--timing NAME=SECONDS]

Discovery is the seeds only (no mDNS): the workloads measure the mesh, not the discovery, which
has its own workload. Handlers are as cheap as a handler can be (a counter), so the figures
are the library's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from common import BODY, PER_TURN, run_worker, serve

from smartroute import Message, Node, PeerDown, ReceiveMode, Subscription

LOCAL_NAME = "bench:local"
"""Subscriber of the local dispatch workload."""


class BenchNode:
    """The node, its subscriptions, and the counter the counting handlers share."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.subs: list[Subscription] = []
        self.received = 0
        self.target = 0
        self.finished = asyncio.Event()
        self.t_last = 0.0
        self.waits: dict[str, asyncio.Task[float]] = {}
        self.watcher: asyncio.Task[None] | None = None
        self.down_events: list[dict[str, Any]] = []

    # Handlers: the counting ones stamp the moment the armed count is reached.

    def count(self, msg: Message) -> None:
        self.received += 1
        if self.received == self.target:
            self.t_last = time.monotonic()
            self.finished.set()

    async def count_async(self, msg: Message) -> None:
        self.count(msg)

    @staticmethod
    def echo(msg: Message) -> object:
        return msg.body

    @staticmethod
    def ignore(msg: Message) -> None:
        return None

    # Ops.

    async def subscribe(self, args: dict[str, Any]) -> float:
        """Subscribe ``name`` with handler ``handler``; returns the time just before the call."""
        handler = {"count": self.count, "count_async": self.count_async, "echo": self.echo,
                   "ignore": self.ignore}[args["handler"]]
        started = time.monotonic()
        self.subs.append(await self.node.subscribe(args["name"], handler))
        return started

    async def subscribe_many(self, args: dict[str, Any]) -> dict[str, float]:
        """Subscribe ``count`` names ``prefix0``, ``prefix1``... (each with ``meta``, if
        given); returns when it started and ended."""
        started = time.monotonic()
        meta = args.get("meta")
        for i in range(args["count"]):
            self.subs.append(await self.node.subscribe(f"{args['prefix']}{i}", self.ignore,
                                                       meta=meta))
            if i % PER_TURN == PER_TURN - 1:
                await asyncio.sleep(0)
        return {"t_start": started, "t_end": time.monotonic()}

    def arm(self, args: dict[str, Any]) -> bool:
        """Reset the counter; ``done`` answers once ``count`` more messages arrived."""
        self.received = 0
        self.target = args["count"]
        self.finished.clear()
        return True

    async def done(self, args: dict[str, Any]) -> dict[str, Any]:
        """When the armed count arrived (or how many did, after ``timeout``)."""
        try:
            await asyncio.wait_for(self.finished.wait(), args.get("timeout", 30.0))
        except TimeoutError:
            stats = self.node.stats()
            telling = {key: stats.get(key, 0) for key in (
                "dropped", "queue_full", "dropped_batches", "peer_downs", "unknown_sender_records")}
            raise TimeoutError(f"{self.received} of {self.target} messages arrived "
                               f"({telling})") from None
        return {"t_last": self.t_last, "received": self.received}

    async def flood(self, args: dict[str, Any]) -> dict[str, float]:
        """Send ``count`` bodies to ``target`` in ``mode`` as fast as the node takes them,
        yielding to the loop every ``per_turn`` sends (0: never, a plain loop of ``send_to``)."""
        node, mode, target = self.node, ReceiveMode[args.get("mode", "EQ")], args.get("target")
        per_turn = args.get("per_turn", PER_TURN)
        started = time.monotonic()
        if per_turn:
            for i in range(args["count"]):
                await node.send_to(BODY, mode, target)
                if i % per_turn == per_turn - 1:
                    await asyncio.sleep(0)
        else:
            for _ in range(args["count"]):
                await node.send_to(BODY, mode, target)
        return {"t_start": started, "t_end": time.monotonic()}

    async def stall_flood(self, args: dict[str, Any]) -> dict[str, float]:
        """``before`` sends (yielding every ``PER_TURN``), then the loop blocked in
        ``time.sleep(stall_s)`` (a GC pause, a slow sync call: records of the last turn are
        still queued), then ``after`` sends."""
        node, target = self.node, args["target"]
        started = time.monotonic()
        for part in ("before", "after"):
            for i in range(args[part]):
                await node.send_to(BODY, ReceiveMode.EQ, target)
                if i % PER_TURN == PER_TURN - 1:
                    await asyncio.sleep(0)
            if part == "before":
                time.sleep(args["stall_s"])  # noqa: ASYNC251 - the stall is the point
        return {"t_start": started, "t_end": time.monotonic()}

    async def collect(self, args: dict[str, Any]) -> dict[str, Any]:
        """How many messages arrived since ``arm``, once the armed count did or ``timeout``
        passed (``done`` without the error: a loss is the figure here)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), args.get("timeout", 30.0))
        return {"received": self.received, "t_last": self.t_last}

    async def watch(self, args: dict[str, Any]) -> bool:
        """Start recording every ``PeerDown`` with the moment it came (see ``downs``)."""
        if self.watcher is None:
            async def record() -> None:
                async for event in self.node.events():
                    if isinstance(event, PeerDown):
                        self.down_events.append({"t": time.monotonic(),
                                                 "node_id": event.peer.node_id,
                                                 "reason": event.reason})

            self.watcher = asyncio.create_task(record())
            await asyncio.sleep(0)  # the stream is open when this returns
        return True

    def downs(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The ``PeerDown`` events seen since ``watch``: time, node id, reason."""
        return self.down_events

    async def local_dispatch(self, args: dict[str, Any]) -> float:
        """Seconds to ``send_to`` ``count`` bodies to a sync subscriber on this very node."""
        count, node = args["count"], self.node
        sub = await node.subscribe(LOCAL_NAME, self.count)
        self.arm({"count": count})
        mode = ReceiveMode.EQ
        started = time.monotonic()
        for i in range(count):
            await node.send_to(BODY, mode, LOCAL_NAME)
            if i % PER_TURN == PER_TURN - 1:
                await asyncio.sleep(0)
        elapsed = time.monotonic() - started
        await sub.close()
        if self.received != count:
            raise RuntimeError(f"{self.received} of {count} local deliveries")
        return elapsed

    async def arm_wait(self, args: dict[str, Any]) -> bool:
        """Start waiting for subscriber ``name``; ``waited`` says when it became known."""
        name = args["name"]

        async def wait() -> float:
            await self.node.wait_for(name, 1, args.get("timeout", 10.0))
            return time.monotonic()

        self.waits[name] = asyncio.create_task(wait())
        await asyncio.sleep(0)  # the task has registered its waiter when this returns
        return True

    async def waited(self, args: dict[str, Any]) -> float:
        """The time subscriber ``name`` (see ``arm_wait``) became known here."""
        return await self.waits.pop(args["name"])

    async def rtt(self, args: dict[str, Any]) -> list[float]:
        """Seconds of each of ``count`` sequential requests to ``target`` (after ``warmup``)."""
        node, target, timeout = self.node, args["target"], args.get("timeout", 5.0)
        samples: list[float] = []
        clock = time.perf_counter
        for i in range(args.get("warmup", 0) + args["count"]):
            started = clock()
            await node.request(target, BODY, timeout=timeout)
            if i >= args.get("warmup", 0):
                samples.append(clock() - started)
        return samples

    async def wait_for(self, args: dict[str, Any]) -> int:
        """Wait until ``count`` subscribers of ``name`` are known."""
        return len(await self.node.wait_for(args["name"], args.get("count", 1),
                                            args.get("timeout", 10.0)))

    def table_size(self, args: dict[str, Any]) -> int:
        """Subscribers in this node's table (its own and every peer's)."""
        return self.node.stats()["subscribers"]

    def stats(self, args: dict[str, Any]) -> dict[str, int]:
        """The node's counters."""
        return self.node.stats()

    def peers(self, args: dict[str, Any]) -> list[str]:
        """Node ids of the live peers."""
        return [peer.node_id for peer in self.node.peers]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--timing", action="append", default=[], metavar="NAME=SECONDS")
    args = parser.parse_args()
    # Joins, leaves and deaths are INFO: the worker's log then explains a failed run.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timings = {key: float(value) for key, value in (t.split("=", 1) for t in args.timing)}
    async with Node(args.cluster, discovery=args.seed, host=args.host, port=args.port,
                    **timings) as node:
        bench = BenchNode(node)
        ops = {name: getattr(bench, name) for name in (
            "subscribe", "subscribe_many", "arm", "done", "flood", "local_dispatch", "arm_wait",
            "waited", "rtt", "wait_for", "table_size", "stats", "peers", "stall_flood", "collect",
            "watch", "downs")}
        await serve(ops, {"node_id": node.node_id, "endpoint": node.endpoint})


if __name__ == "__main__":
    run_worker(main)
