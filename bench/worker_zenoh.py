"""Eclipse Zenoh baselines, one peer per process (protocol: ``common.py``).

    python bench/worker_zenoh.py --port PORT [--connect tcp/127.0.0.1:PORT]

A Zenoh session in peer mode on loopback only (the network rule): it listens on
``tcp/127.0.0.1:PORT``, connects to the endpoints it is given, and neither multicast scouting
(UDP 224.0.0.224:7446 on every interface) nor gossip runs, so it finds no one by itself and
sends nothing to the machine's interfaces (``workloads_baselines.zenoh`` checks what it bound).

Bodies are msgpack, as smartroute's are: the publisher packs the 100-byte body for each put, the
subscriber's callback unpacks each sample and counts (Zenoh runs Python callbacks on its own
threads); the querier packs the request and unpacks the reply, the queryable unpacks the query
and packs its reply.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import msgpack
import zenoh
from common import BODY, run_worker, serve

MATCH_WAIT_S = 10.0
"""Longest a publisher or querier may wait for the other peer's subscriber or queryable."""

SETTLE_WINDOW_S = 0.5
"""``collect``: the count must not move for this long before it is final (a DROP run that lost
messages never reaches its target)."""

POLL_S = 0.01
"""How often a wait looks again."""


def config(port: int, connect: list[str]) -> zenoh.Config:
    """Peer mode, one listener on 127.0.0.1, no scouting: every setting that could reach an
    interface is set here rather than left to a default."""
    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps("peer"))
    conf.insert_json5("listen/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    conf.insert_json5("connect/endpoints", json.dumps(connect))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    return conf


class ZenohWorker:
    """One session; its subscriber counts into ``received`` and stamps the armed count."""

    def __init__(self, session: zenoh.Session) -> None:
        self.session = session
        self.lock = threading.Lock()
        self.received = 0
        self.target = 0
        self.t_last = 0.0
        self.finished = threading.Event()
        self.declared: list[Any] = []  # kept alive: an undeclared entity stops at once
        self.publishers: dict[tuple[str, str], zenoh.Publisher] = {}
        self.queriers: dict[tuple[str, str], zenoh.Querier] = {}

    def _count(self, sample: zenoh.Sample) -> None:
        msgpack.unpackb(sample.payload.to_bytes())
        with self.lock:
            self.received += 1
            if self.received == self.target:
                self.t_last = time.monotonic()
                self.finished.set()

    def subscribe(self, args: dict[str, Any]) -> bool:
        """Declare a counting subscriber on ``key``."""
        self.declared.append(self.session.declare_subscriber(args["key"], self._count))
        return True

    def queryable(self, args: dict[str, Any]) -> bool:
        """Declare a queryable on ``key`` that replies with the query's body."""
        key = args["key"]

        def echo(query: zenoh.Query) -> None:
            assert query.payload is not None
            body = msgpack.unpackb(query.payload.to_bytes())
            query.reply(key, msgpack.packb(body))

        self.declared.append(self.session.declare_queryable(key, echo))
        return True

    def arm(self, args: dict[str, Any]) -> bool:
        """Reset the count; ``done`` and ``collect`` wait for ``count`` more."""
        with self.lock:
            self.received = 0
            self.target = args["count"]
            self.t_last = 0.0
            self.finished.clear()
        return True

    def done(self, args: dict[str, Any]) -> dict[str, Any]:
        """When the armed count arrived; an error saying how many did after ``timeout``."""
        if not self.finished.wait(args.get("timeout", 30.0)):
            raise TimeoutError(f"{self.received} of {self.target} messages arrived")
        return {"t_last": self.t_last, "received": self.received}

    def collect(self, args: dict[str, Any]) -> dict[str, Any]:
        """How many arrived: once the armed count did, or once the count has not moved for
        ``SETTLE_WINDOW_S`` (or ``timeout`` passed). A loss is the figure here."""
        deadline = time.monotonic() + args.get("timeout", 30.0)
        last, still_since = -1, time.monotonic()
        while not self.finished.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if self.received != last:
                last, still_since = self.received, now
            elif now - still_since >= SETTLE_WINDOW_S:
                break
            time.sleep(POLL_S)
        return {"received": self.received, "t_last": self.t_last,
                "complete": self.finished.is_set()}

    def _publisher(self, key: str, congestion: str) -> zenoh.Publisher:
        publisher = self.publishers.get((key, congestion))
        if publisher is None:
            publisher = self.session.declare_publisher(
                key, congestion_control=getattr(zenoh.CongestionControl, congestion))
            self.publishers[key, congestion] = publisher
        return publisher

    def wait_subscriber(self, args: dict[str, Any]) -> bool:
        """Declare the publishers of ``key`` (BLOCK and DROP) and wait until they see the
        other peer's subscriber."""
        publishers = [self._publisher(args["key"], cc) for cc in ("BLOCK", "DROP")]
        _wait(lambda: all(p.matching_status for p in publishers), "a matching subscriber")
        return True

    def flood(self, args: dict[str, Any]) -> dict[str, float]:
        """``count`` puts on ``key`` with congestion control ``congestion`` (BLOCK: a full
        queue waits; DROP, the default: a full queue drops), a plain loop."""
        put = self._publisher(args["key"], args["congestion"]).put
        pack = msgpack.packb
        started = time.monotonic()
        for _ in range(args["count"]):
            put(pack(BODY))
        return {"t_start": started, "t_end": time.monotonic()}

    def _querier(self, key: str, consolidation: str) -> zenoh.Querier:
        querier = self.queriers.get((key, consolidation))
        if querier is None:
            options: dict[str, Any] = {}
            if consolidation != "default":
                options["consolidation"] = getattr(zenoh.ConsolidationMode, consolidation)
            querier = self.session.declare_querier(key, **options)
            self.queriers[key, consolidation] = querier
        return querier

    def wait_queryable(self, args: dict[str, Any]) -> bool:
        """Wait until a query on ``key`` is answered by the other peer's queryable: a
        querier's ``matching_status`` can be true while its first query still finds no route
        and ends at once without a reply (seen here under load)."""
        querier = self._querier(args["key"], args.get("consolidation", "default"))

        def answered() -> bool:
            replies = list(querier.get(payload=msgpack.packb(BODY)))
            return any(reply.ok is not None for reply in replies)

        _wait(lambda: querier.matching_status and answered(), "a queryable that answers")
        return True

    def rtt(self, args: dict[str, Any]) -> list[float]:
        """Seconds of each of ``count`` sequential ``querier.get`` until its reply is here
        (after ``warmup``); the query's end (its final message) is awaited untimed, so the
        queries never overlap."""
        querier = self._querier(args["key"], args.get("consolidation", "default"))
        samples: list[float] = []
        clock = time.perf_counter
        warmup = args.get("warmup", 0)
        for i in range(warmup + args["count"]):
            started = clock()
            replies = querier.get(payload=msgpack.packb(BODY))
            try:
                reply = replies.recv()
            except zenoh.ZError as exc:
                raise RuntimeError(f"query {i} ended without a reply after "
                                   f"{clock() - started:.6f} s: {exc}") from None
            if reply.ok is None:
                raise RuntimeError(f"query {i} answered with an error: {reply.err}")
            msgpack.unpackb(reply.ok.payload.to_bytes())
            ended = clock()
            for _ in replies:  # until the query is closed
                pass
            if i >= warmup:
                samples.append(ended - started)
        return samples


def _wait(ready: Any, what: str) -> None:
    deadline = time.monotonic() + MATCH_WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {MATCH_WAIT_S} s")
        time.sleep(POLL_S)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connect", action="append", default=[])
    args = parser.parse_args()
    zenoh.init_log_from_env_or("warn")  # Zenoh's own warnings and errors go to the log
    with zenoh.open(config(args.port, args.connect)) as session:
        worker = ZenohWorker(session)
        ops = {name: getattr(worker, name) for name in (
            "subscribe", "queryable", "arm", "done", "collect", "wait_subscriber", "flood",
            "wait_queryable", "rtt")}
        await serve(ops, {"zid": str(session.zid()),
                          "endpoint": f"tcp/127.0.0.1:{args.port}"})


if __name__ == "__main__":
    run_worker(main)
