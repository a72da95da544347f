"""Raw pyzmq baselines, one process per end (protocol: ``common.py``).

    python bench/worker_zmq.py

PUSH/PULL blocking: plain ``send`` / ``recv``, one message per call, ZeroMQ's own pipelining.
PUSH/PULL asyncio: ``zmq.asyncio`` sockets; the receiver awaits readiness once and then drains
everything queued with non-blocking ``recv`` (what smartroute's inbox does), the sender sends
without blocking and awaits only when the pipe is full, yielding every ``PER_TURN`` sends as
smartroute's flood does. DEALER/ROUTER asyncio: the plain awaited ``send`` / ``recv`` a user
writes; the ROUTER echoes every message back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq
import zmq.asyncio
from common import BODY, PER_TURN, run_worker, serve

LOOPBACK = "tcp://127.0.0.1"


class ZmqWorker:
    """Sockets of one end of a baseline."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.async_context = zmq.asyncio.Context()
        self.sync_socket: zmq.Socket[bytes] | None = None
        self.async_socket: zmq.asyncio.Socket | None = None
        self.echo_task: asyncio.Task[None] | None = None

    def _shadow(self) -> tuple[zmq.asyncio.Socket, zmq.Socket[bytes]]:
        # Non-blocking calls on the plain socket skip the Future each asyncio call creates.
        assert self.async_socket is not None
        return self.async_socket, zmq.Socket.shadow(self.async_socket.underlying)

    def pull_bind(self, args: dict[str, Any]) -> str:
        """Bind a PULL (``asyncio`` or blocking) on loopback; returns its endpoint."""
        if args.get("asyncio"):
            self.async_socket = self.async_context.socket(zmq.PULL)
            port = self.async_socket.bind_to_random_port(LOOPBACK)
        else:
            self.sync_socket = self.context.socket(zmq.PULL)
            port = self.sync_socket.bind_to_random_port(LOOPBACK)
        return f"{LOOPBACK}:{port}"

    def push_connect(self, args: dict[str, Any]) -> bool:
        """Connect a PUSH (``asyncio`` or blocking) to ``endpoint``."""
        if args.get("asyncio"):
            self.async_socket = self.async_context.socket(zmq.PUSH)
            self.async_socket.connect(args["endpoint"])
        else:
            self.sync_socket = self.context.socket(zmq.PUSH)
            self.sync_socket.connect(args["endpoint"])
        return True

    def pull(self, args: dict[str, Any]) -> float:
        """Receive ``count`` messages; returns the time the last one arrived."""
        sock = self.sync_socket
        assert sock is not None
        for _ in range(args["count"]):
            sock.recv()
        return time.monotonic()

    def push(self, args: dict[str, Any]) -> float:
        """Send ``count`` bodies; returns the time just before the first."""
        sock = self.sync_socket
        assert sock is not None
        started = time.monotonic()
        for _ in range(args["count"]):
            sock.send(BODY)
        return started

    async def pull_async(self, args: dict[str, Any]) -> float:
        """``pull`` on asyncio, one await per burst."""
        sock, shadow = self._shadow()
        count, received = args["count"], 0
        while received < count:
            await sock.poll()  # readable (POLLIN is the default)
            while received < count:
                try:
                    shadow.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                received += 1
        return time.monotonic()

    async def push_async(self, args: dict[str, Any]) -> float:
        """``push`` on asyncio: awaits only when ZeroMQ's pipe is full."""
        sock, shadow = self._shadow()
        started = time.monotonic()
        for i in range(args["count"]):
            try:
                shadow.send(BODY, zmq.NOBLOCK)
            except zmq.Again:
                await sock.send(BODY)
            if i % PER_TURN == PER_TURN - 1:
                await asyncio.sleep(0)
        return started

    async def router_echo(self, args: dict[str, Any]) -> str:
        """Bind an asyncio ROUTER that sends every message back; returns its endpoint."""
        sock = self.async_context.socket(zmq.ROUTER)
        port = sock.bind_to_random_port(LOOPBACK)

        async def echo() -> None:
            while True:
                await sock.send_multipart(await sock.recv_multipart())

        self.echo_task = asyncio.create_task(echo())
        return f"{LOOPBACK}:{port}"

    async def dealer_rtt(self, args: dict[str, Any]) -> list[float]:
        """Seconds of each of ``count`` sequential round trips to ``endpoint`` (after
        ``warmup``)."""
        sock = self.async_context.socket(zmq.DEALER)
        sock.connect(args["endpoint"])
        samples: list[float] = []
        clock = time.perf_counter
        warmup = args.get("warmup", 0)
        for i in range(warmup + args["count"]):
            started = clock()
            await sock.send(BODY)
            await sock.recv()
            if i >= warmup:
                samples.append(clock() - started)
        sock.close(linger=0)
        return samples


async def main() -> None:
    worker = ZmqWorker()
    ops = {name: getattr(worker, name) for name in (
        "pull_bind", "push_connect", "pull", "push", "pull_async", "push_async", "router_echo",
        "dealer_rtt")}
    await serve(ops, {"libzmq": zmq.zmq_version(), "pyzmq": zmq.pyzmq_version()})


if __name__ == "__main__":
    run_worker(main)
