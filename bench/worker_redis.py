"""Redis pub/sub baselines, one process per client (protocol: ``common.py``).

    python bench/worker_redis.py --port PORT

redis-py's blocking client with the hiredis parser when it is installed (the fastest way
Python talks to Redis). A publisher pipelines ``PER_TURN`` PUBLISH commands per round trip,
as smartroute batches the sends of one event-loop turn; without a pipeline each PUBLISH would
wait for its answer and Redis would look much slower than it is.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import redis
from common import BODY, PER_TURN, run_worker, serve

HOST = "127.0.0.1"

MESSAGE_WAIT_S = 10.0
"""Longest a reply may take before the round trip counts as lost."""


def connect(port: int) -> redis.Redis:
    """A client without a socket timeout: a subscriber may wait between runs for longer than
    redis-py's default 5 s, and a timeout would kill it mid-suite."""
    return redis.Redis(host=HOST, port=port, socket_timeout=None)


class RedisWorker:
    """One client connection, and one pub/sub connection once subscribed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = connect(port)
        self.pubsub: Any = None

    def _subscribe(self, channel: str) -> Any:
        pubsub = self.client.pubsub()
        pubsub.subscribe(channel)
        # The confirmation is the first message on the connection: once it is read, the
        # subscription is live on the server.
        confirmation = pubsub.get_message(timeout=MESSAGE_WAIT_S)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise RuntimeError(f"no subscribe confirmation for {channel!r}: {confirmation!r}")
        return pubsub

    def subscribe(self, args: dict[str, Any]) -> bool:
        """Subscribe to ``channel`` (answers once the server confirmed it)."""
        self.pubsub = self._subscribe(args["channel"])
        return True

    def recv(self, args: dict[str, Any]) -> float:
        """Receive ``count`` messages; returns the time the last one arrived."""
        received, count = 0, args["count"]
        for message in self.pubsub.listen():
            if message["type"] == "message":
                received += 1
                if received == count:
                    break
        return time.monotonic()

    def publish(self, args: dict[str, Any]) -> float:
        """Publish ``count`` bodies on ``channel``; returns the time just before the first.
        Fails if any reached fewer than ``receivers`` subscribers."""
        channel, count, receivers = args["channel"], args["count"], args.get("receivers", 1)
        pipe = self.client.pipeline(transaction=False)
        reached: list[int] = []
        started = time.monotonic()
        for i in range(count):
            pipe.publish(channel, BODY)
            if i % PER_TURN == PER_TURN - 1 or i == count - 1:
                reached += pipe.execute()
        if min(reached) < receivers:
            raise RuntimeError(f"a message reached {min(reached)} of {receivers} subscribers")
        return started

    def echo_server(self, args: dict[str, Any]) -> bool:
        """Publish every message of ``request`` back on ``reply``, on a thread of its own."""
        pubsub = self._subscribe(args["request"])
        client = connect(self.port)

        def echo() -> None:
            for message in pubsub.listen():
                if message["type"] == "message":
                    client.publish(args["reply"], message["data"])

        threading.Thread(target=echo, daemon=True, name="echo").start()
        return True

    def rtt(self, args: dict[str, Any]) -> list[float]:
        """Seconds of each of ``count`` sequential round trips: PUBLISH on ``request``, wait
        for the echo on ``reply`` (after ``warmup``)."""
        pubsub = self._subscribe(args["reply"])
        client, request = self.client, args["request"]
        samples: list[float] = []
        clock = time.perf_counter
        warmup = args.get("warmup", 0)
        for i in range(warmup + args["count"]):
            started = clock()
            client.publish(request, BODY)
            while True:
                message = pubsub.get_message(timeout=MESSAGE_WAIT_S)
                if message is None:
                    raise TimeoutError(f"no echo within {MESSAGE_WAIT_S} s")
                if message["type"] == "message":
                    break
            if i >= warmup:
                samples.append(clock() - started)
        pubsub.close()
        return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    worker = RedisWorker(args.port)
    ops = {name: getattr(worker, name) for name in (
        "subscribe", "recv", "publish", "echo_server", "rtt")}
    await serve(ops, {"redis_py": redis.__version__})


if __name__ == "__main__":
    run_worker(main)
