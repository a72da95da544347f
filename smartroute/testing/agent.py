"""A node in its own process, driven by JSON lines on stdin, answering on stdout.

Run by ``smartroute.testing.cluster.AgentProcess``; usable by hand too::

    python -m smartroute.testing.agent --cluster demo --seed tcp://127.0.0.1:7001

Each input line is ``{"id": N, "op": NAME, ...}``; each answer is ``{"id": N, "ok": true,
"result": ...}`` or ``{"id": N, "ok": false, "error": CLASS, "message": TEXT}``. The first line
written is ``{"ready": true, "node_id": ..., "endpoint": ..., "pid": ...}``. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import LinkFull, Message, Node, ReceiveMode, Subscription
from ..events import PeerDown, PeerUp, SubscriberDown, SubscriberUp, SubscriberUpdated


class Agent:
    """Holds the node, its subscriptions and what they received."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.subs: dict[int, Subscription] = {}
        self.next_sub = 1
        self.received: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.tallies: dict[str, dict[str, list[Any]]] = {}
        self.traffic: dict[int, asyncio.Task[dict[str, Any]]] = {}
        self.stallers: dict[int, asyncio.Task[list[float]]] = {}

    async def watch_events(self) -> None:
        async for event in self.node.events():
            if isinstance(event, PeerUp | PeerDown):
                record: dict[str, Any] = {"event": type(event).__name__,
                                          "node_id": event.peer.node_id}
                if isinstance(event, PeerDown):
                    record["reason"] = event.reason
            else:
                assert isinstance(event, SubscriberUp | SubscriberUpdated | SubscriberDown)
                record = {"event": type(event).__name__, "name": event.subscriber.name,
                          "node_id": event.subscriber.node_id}
            self.events.append(record)

    def handler(self, behaviour: str | None) -> Any:
        async def on_message(msg: Message) -> Any:
            self.received.append({
                "subscriber": msg.subscriber, "body": msg.body, "id": msg.id,
                "node_id": msg.node_id, "sender": msg.sender, "mode": msg.mode.name,
                "type": msg.type,
            })
            if behaviour == "raise":
                raise RuntimeError(f"handler of {msg.subscriber} refuses {msg.body!r}")
            if behaviour == "silent":
                await asyncio.Event().wait()  # never returns, so never answers
            if behaviour == "echo":
                return {"echo": msg.body, "by": self.node.node_id}
            return None
        return on_message

    async def run(self, op: str, args: dict[str, Any]) -> Any:
        node = self.node
        if op == "subscribe":
            if args.get("reply") == "count":  # a sync handler that only counts (for floods)
                name = args["name"]
                self.counts.setdefault(name, 0)

                def count(msg: Message) -> None:
                    self.counts[name] += 1

                handler: Any = count
            else:
                handler = self.handler(args.get("reply"))
            sub = await node.subscribe(args["name"], handler, args.get("meta"))
            key = self.next_sub
            self.next_sub += 1
            self.subs[key] = sub
            return key
        if op == "unsubscribe":
            await self.subs.pop(args["sub"]).close()
            return True
        if op == "send_to":
            return await node.send_to(args.get("body"), ReceiveMode[args.get("mode", "EQ")],
                                      args.get("target"), sender=args.get("sender"))
        if op == "request":
            return await node.request(args.get("target"), args.get("body"),
                                      mode=ReceiveMode[args.get("mode", "ANY")],
                                      timeout=args.get("timeout", 5.0))
        if op == "counts":
            return self.counts
        if op == "flood":
            # send `count` bodies of `size` bytes, yielding to the loop every `per_turn`;
            # returns how many send_to accepted (it stops at the first LinkFull)
            body = b"x" * args.get("size", 100)
            per_turn = args.get("per_turn", 500)
            mode = ReceiveMode[args.get("mode", "EQ")]
            for i in range(args["count"]):
                try:
                    await node.send_to(body, mode, args.get("target"))
                except LinkFull:
                    return i
                if i % per_turn == per_turn - 1:
                    await asyncio.sleep(0)
            return args["count"]
        if op == "received":
            received, self.received = self.received, []
            return received
        if op == "events":
            events, self.events = self.events, []
            return events
        if op == "peers":
            return [{"node_id": p.node_id, "endpoint": p.endpoint, "state": p.state,
                     "name": p.name} for p in node.peers]
        if op == "lookup":
            return [{"name": s.name, "node_id": s.node_id, "meta": s.meta}
                    for s in node.lookup(args["name"])]
        if op == "subscribers":
            return [{"name": s.name, "node_id": s.node_id, "meta": s.meta}
                    for s in node.subscribers()]
        if op == "wait_for":
            found = await node.wait_for(args["name"], args.get("count", 1),
                                        args.get("timeout", 5.0))
            return len(found)
        if op == "stats":
            return node.stats()
        if op == "subscribe_worker":
            # A handler that does real work (issue 10), counting into ``counts[name]``:
            # kind "sleep_sync" (a sync handler blocking ``work_s`` per message), "busy_async"
            # (an async handler spinning ``work_s`` of CPU, never awaiting), "echo_async" (an
            # async handler answering the body back) or "seq_sync" (a sync handler recording
            # the sequence number in a body's first 8 bytes, for ``sequences``)
            name, kind, work_s = args["name"], args["kind"], float(args.get("work_s", 0.0))
            self.counts.setdefault(name, 0)
            sequences: list[int] = self.__dict__.setdefault("sequences", [])
            counts = self.counts

            def sleep_sync(msg: Message) -> None:
                time.sleep(work_s)
                counts[name] += 1

            async def busy_async(msg: Message) -> None:
                until = time.perf_counter() + work_s
                while time.perf_counter() < until:
                    pass
                counts[name] += 1

            async def echo_async(msg: Message) -> Any:
                counts[name] += 1
                return msg.body

            def seq_sync(msg: Message) -> None:
                assert isinstance(msg.body, bytes)
                sequences.append(int.from_bytes(msg.body[:8], "big"))
                counts[name] += 1

            handlers: dict[str, Any] = {"sleep_sync": sleep_sync, "busy_async": busy_async,
                                        "echo_async": echo_async, "seq_sync": seq_sync}
            sub = await node.subscribe(name, handlers[kind], args.get("meta"))
            key = self.next_sub
            self.next_sub += 1
            self.subs[key] = sub
            return key
        if op == "sequences":
            return self.__dict__.get("sequences", [])
        if op == "send_loop":
            # What a user writes: a plain ``for`` of ``await send_to`` with no yield of its own.
            # Counts what send_to returned and the LinkFull it raised (refused: nothing sent);
            # with ``seq`` each body starts with its index (8 bytes, big-endian) and the refused
            # indices are returned too.
            total, size, target = args["count"], args.get("size", 100), args["target"]
            numbered = bool(args.get("seq", False))
            body = b"x" * size
            filler = body[8:]
            returned: dict[int, int] = {}
            refused: list[int] = []
            started = time.monotonic()
            for i in range(total):
                try:
                    n = await node.send_to(i.to_bytes(8, "big") + filler if numbered else body,
                                           ReceiveMode.EQ, target)
                except LinkFull:
                    refused.append(i)
                    continue
                returned[n] = returned.get(n, 0) + 1
            return {"returned": {str(k): v for k, v in returned.items()},
                    "link_full": len(refused), "refused": refused if numbered else [],
                    "elapsed_s": time.monotonic() - started}
        if op == "request_many":
            # ``asyncio.gather`` of ``count`` requests, body i; counts the answers equal to i
            # and the kinds of the failures
            timeout = args.get("timeout", 30.0)
            started = time.monotonic()
            results = await asyncio.gather(
                *(node.request(args["target"], i, timeout=timeout) for i in range(args["count"])),
                return_exceptions=True)
            failures: dict[str, int] = {}
            right = 0
            for i, result in enumerate(results):
                if isinstance(result, BaseException):
                    failures[type(result).__name__] = failures.get(type(result).__name__, 0) + 1
                elif result == i:
                    right += 1
                else:
                    failures["wrong answer"] = failures.get("wrong answer", 0) + 1
            return {"right": right, "failures": failures,
                    "elapsed_s": time.monotonic() - started}
        if op == "block":
            # Stall this process's event loop (a GC pause, a slow sync call): time.sleep on the
            # loop. With ``send_after`` set to a target, send one message the moment it ends.
            time.sleep(args["seconds"])  # noqa: ASYNC251 - the stall is the point
            if args.get("send_after") is not None:
                return await node.send_to(args.get("body", "after the stall"), ReceiveMode.EQ,
                                          args["send_after"])
            return None
        return await self.run_fault_ops(op, args)

    # --- ops for delivery and liveness tests (tests/test_lan_delivery.py) ----------------------

    async def run_fault_ops(self, op: str, args: dict[str, Any]) -> Any:
        """The ops that tally numbered traffic, send it paced, and stall this node's loop."""
        if op == "subscribe_tally":
            # A sync handler that keeps, per sender node, the numbers (bodies) that arrived.
            tally: dict[str, list[Any]] = self.tallies.setdefault(args["name"], {})

            def keep(msg: Message) -> None:
                body = msg.body  # a number, or [number, padding] (see paced_traffic)
                tally.setdefault(msg.node_id, []).append(body[0] if isinstance(body, list)
                                                         else body)

            sub = await self.node.subscribe(args["name"], keep, args.get("meta"))
            key = self.next_sub
            self.next_sub += 1
            self.subs[key] = sub
            return key
        if op == "tallies":
            return self.tallies
        if op == "traffic":
            # Started in the background: "traffic_result" waits for what it returns.
            key = len(self.traffic) + 1
            self.traffic[key] = asyncio.create_task(paced_traffic(
                self.node, args["targets"], float(args["rate_per_s"]), float(args["for_s"]),
                int(args.get("pad_bytes", 0))))
            return key
        if op == "traffic_result":
            return await self.traffic[args["traffic"]]
        if op == "stall_every":
            key = len(self.stallers) + 1
            self.stallers[key] = asyncio.create_task(stall_every(
                float(args["every_s"]), float(args["min_s"]), float(args["max_s"]),
                float(args["for_s"]), args.get("seed"), float(args.get("long_at_s", 0)),
                float(args.get("long_s", 0))))
            return key
        if op == "stall_result":
            return await self.stallers[args["staller"]]
        if op == "drain":
            await self.node.drain(float(args.get("timeout", 5.0)))
            return True
        if op == "paced_requests":
            # Started in the background, like "traffic": ``rate_per_s`` requests (ANY) to
            # ``target`` for ``for_s``; "traffic_result" returns the failures by kind.
            key = len(self.traffic) + 1
            self.traffic[key] = asyncio.create_task(paced_requests(
                self.node, args["target"], float(args["rate_per_s"]), float(args["for_s"]),
                float(args.get("timeout", 5.0))))
            return key
        raise ValueError(f"unknown op {op!r}")


async def paced_requests(node: Node, target: str, rate_per_s: float, for_s: float,
                         timeout: float) -> dict[str, Any]:
    """One ``request`` (ANY) every ``1 / rate_per_s`` for ``for_s``, each in its own task (so
    a slow answer does not hold the next): how many were answered, and the failures by kind
    with when each happened (seconds from the start)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    failures: dict[str, list[float]] = {}
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        try:
            await node.request(target, i, timeout=timeout)
            answered += 1
        except Exception as exc:  # every failure is the result: counted by kind
            failures.setdefault(type(exc).__name__, []).append(round(loop.time() - started, 3))

    tasks = []
    for i in range(int(rate_per_s * for_s)):
        await asyncio.sleep(max(0.0, started + i / rate_per_s - loop.time()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return {"sent": len(tasks), "answered": answered, "failures": failures}


TRAFFIC_MAX_BURST_S = 0.05
"""Paced traffic that fell behind (a ``LinkFull`` wait, a stall) catches up at most this much of
its schedule at once; the rest of the missed schedule is skipped, not sent in one burst."""

TRAFFIC_PACE_S = 0.002
"""Paced traffic yields to the loop this long between rounds (so sends batch per loop turn)."""


async def paced_traffic(node: Node, targets: list[str], rate_per_s: float, for_s: float,
                        pad_bytes: int = 0) -> dict[str, Any]:
    """Send each target the numbers 0, 1, 2... (EQ), ``rate_per_s`` per target, for ``for_s``;
    with ``pad_bytes`` each body is ``[number, that many bytes]`` instead of the number.

    Returns per target: ``attempted``, ``accepted`` (send_to returned >= 1), and the numbers
    refused with ``LinkFull`` (``link_full``), matched nobody (``no_route``) or raised anything
    else (``errors``, by class). A number is used once, whatever became of it.
    """
    loop = asyncio.get_running_loop()
    result: dict[str, dict[str, Any]] = {
        target: {"attempted": 0, "accepted": 0, "link_full": [], "no_route": [], "errors": {}}
        for target in targets}
    started = loop.time()
    rounds = 0
    max_burst = max(1, int(rate_per_s * TRAFFIC_MAX_BURST_S))
    padding = b"x" * pad_bytes
    while (elapsed := loop.time() - started) < for_s:  # bounded by time
        due = int(elapsed * rate_per_s) + 1
        rounds = max(rounds, due - max_burst)
        burst_end = min(due, rounds + max_burst)
        while rounds < burst_end:
            for target in targets:
                record = result[target]
                number = record["attempted"]
                record["attempted"] += 1
                body: Any = [number, padding] if padding else number
                try:
                    matched = await node.send_to(body, ReceiveMode.EQ, target)
                except LinkFull:
                    record["link_full"].append(number)
                except Exception as exc:  # counted and reported, the traffic goes on
                    errors = record["errors"]
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                else:
                    if matched:
                        record["accepted"] += 1
                    else:
                        record["no_route"].append(number)
            rounds += 1
        await asyncio.sleep(TRAFFIC_PACE_S)
    return result


async def stall_every(every_s: float, min_s: float, max_s: float, for_s: float,
                      seed: int | None, long_at_s: float = 0, long_s: float = 0) -> list[float]:
    """For ``for_s``, every ``every_s`` block the loop thread (``time.sleep``) for a random
    ``min_s``..``max_s``; the first stall due ``long_at_s`` or later lasts ``long_s`` instead
    (when ``long_s`` > 0). Returns the stalls' measured lengths."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    deadline = started_at + for_s
    stalls: list[float] = []
    long_due = long_s > 0
    while loop.time() + every_s < deadline:  # bounded by time
        await asyncio.sleep(every_s)
        seconds = rng.uniform(min_s, max_s)
        if long_due and loop.time() - started_at >= long_at_s:
            seconds, long_due = long_s, False
        started = time.monotonic()
        time.sleep(seconds)  # noqa: ASYNC251 (the point: a blocked loop)
        stalls.append(time.monotonic() - started)
    return stalls


async def serve(args: argparse.Namespace) -> None:
    timings: dict[str, Any] = {k: float(v) for k, v in (t.split("=", 1) for t in args.timing)}
    discovery = ["mdns", *args.seed] if args.mdns else args.seed
    # The secret comes from the environment only: never on a command line.
    node = Node(args.cluster, secret=os.environ.get("SMARTROUTE_SECRET") or None,
                discovery=discovery, host=args.host, port=args.port, name=args.name,
                interfaces=args.interface or None, **timings)
    await node.start()
    agent = Agent(node)
    watcher = asyncio.create_task(agent.watch_events())
    await answer_requests(agent.run, {"node_id": node.node_id, "endpoint": node.endpoint})
    await node.close()
    watcher.cancel()
    write(closed=True)


async def answer_requests(run: Callable[[str, dict[str, Any]], Awaitable[Any]],
                          ready: dict[str, Any]) -> None:
    """Write ``ready`` (and our pid) as the first line, then answer each request line from
    stdin with ``await run(op, request)`` until stdin closes or a ``close`` op arrives. Each
    request runs as its own task, so a slow one (a ``request``) does not block the others; an
    exception is answered, never fatal; requests still running at the end are cancelled."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    write(ready=True, pid=os.getpid(), **ready)
    pending: set[asyncio.Task[None]] = set()

    async def answer(request: dict[str, Any]) -> None:
        try:
            result = await run(request["op"], request)
            write(id=request.get("id"), ok=True, result=result)
        except Exception as exc:
            write(id=request.get("id"), ok=False, error=type(exc).__name__, message=str(exc))

    while True:
        line = await reader.readline()
        if not line:
            break
        request = json.loads(line)
        if request.get("op") == "close":
            break
        task = asyncio.create_task(answer(request))
        pending.add(task)
        task.add_done_callback(pending.discard)
    for task in list(pending):
        task.cancel()


def write(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, default=repr) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="smartroute")
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--mdns", action="store_true", help="discover peers over mDNS too")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="mDNS only on the interface with this address (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default=None)
    parser.add_argument("--timing", action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
