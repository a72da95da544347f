"""pyre (Zyre in Python) baselines, one process per node (protocol: ``common.py``).

    ip netns exec HOST python bench/worker_pyre.py

pyre finds peers with UDP broadcast beacons on the first non-loopback interface, so it runs only
inside the LAN harness (a namespace's ``eth0``), never on the machine's own interfaces.

Throughput needs flow control: a pyre peer whose ZeroMQ send queue (``SNDHWM`` 3,000) is full
is disconnected, not slowed down. The receiver whispers an ack every ``ack_every`` messages and
the sender keeps at most ``window`` unacknowledged, so pyre runs as fast as it can without
losing its peer (one ack per 1,000 messages costs it ~0.1 %).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq
from common import BODY, run_worker, serve
from pyre import Pyre

EVENT_WAIT_S = 10.0
"""Longest any single pyre event (a peer, a message, an ack) may take to arrive."""

ACK = b"ack"


class PyreWorker:
    """One pyre node."""

    def __init__(self) -> None:
        self.node: Pyre | None = None

    def _node(self) -> Pyre:
        assert self.node is not None, "start first"
        return self.node

    def _recv(self) -> list[bytes]:
        node = self._node()
        if not node.socket().poll(EVENT_WAIT_S * 1000):
            raise TimeoutError(f"no pyre event within {EVENT_WAIT_S} s")
        frames: list[bytes] = node.recv()
        return frames

    def _whisper_from(self) -> tuple[uuid.UUID, bytes]:
        """The next WHISPER (other events are skipped): sender and body."""
        while True:
            frames = self._recv()
            if frames[0] == b"WHISPER":
                return uuid.UUID(bytes=frames[1]), frames[3]

    def start(self, args: dict[str, Any]) -> str:
        """Start the node in ``group``; returns its uuid (hex)."""
        node = Pyre(args["name"])
        node.join(args["group"])
        node.start()
        self.node = node
        return str(node.uuid().hex)

    def wait_peer(self, args: dict[str, Any]) -> float:
        """Wait for peer ``peer`` (uuid hex) to enter; returns when it did."""
        wanted = uuid.UUID(hex=args["peer"])
        deadline = time.monotonic() + args.get("timeout", 30.0)
        while time.monotonic() < deadline:
            frames = self._recv()
            if frames[0] == b"ENTER" and uuid.UUID(bytes=frames[1]) == wanted:
                return time.monotonic()
        raise TimeoutError(f"peer {wanted} did not enter")

    def recv(self, args: dict[str, Any]) -> float:
        """Receive ``count`` whispers, acking every ``ack_every``; returns the time of the last.
        """
        node = self._node()
        count, ack_every = args["count"], args["ack_every"]
        for received in range(1, count + 1):
            sender, _ = self._whisper_from()
            if received % ack_every == 0:
                node.whisper(sender, ACK)
        return time.monotonic()

    def send(self, args: dict[str, Any]) -> float:
        """Whisper ``count`` bodies to ``peer``, at most ``window`` unacknowledged, and wait for
        the last ack; returns the time just before the first."""
        node, peer = self._node(), uuid.UUID(hex=args["peer"])
        count, window, ack_every = args["count"], args["window"], args["ack_every"]
        acked = 0
        started = time.monotonic()
        for sent in range(count):
            while sent - acked >= window:
                _, body = self._whisper_from()
                if body == ACK:
                    acked += ack_every
            node.whisper(peer, BODY)
        # Collect this run's last acks, so none is left over to be miscounted by the next.
        while acked < count - count % ack_every:
            _, body = self._whisper_from()
            if body == ACK:
                acked += ack_every
        return started

    def echo(self, args: dict[str, Any]) -> int:
        """Whisper each of the next ``count`` whispers back to its sender."""
        node, count = self._node(), int(args["count"])
        for _ in range(count):
            sender, body = self._whisper_from()
            node.whisper(sender, body)
        return count

    def rtt(self, args: dict[str, Any]) -> list[float]:
        """Seconds of each of ``count`` sequential whisper round trips to ``peer`` (after
        ``warmup``)."""
        node, peer = self._node(), uuid.UUID(hex=args["peer"])
        samples: list[float] = []
        clock = time.perf_counter
        warmup = args.get("warmup", 0)
        for i in range(warmup + args["count"]):
            started = clock()
            node.whisper(peer, BODY)
            self._whisper_from()
            if i >= warmup:
                samples.append(clock() - started)
        return samples

    def stop(self, args: dict[str, Any]) -> bool:
        """Leave politely (the peer sees EXIT)."""
        self._node().stop()
        self.node = None
        return True


async def main() -> None:
    worker = PyreWorker()
    ops = {name: getattr(worker, name) for name in (
        "start", "wait_peer", "recv", "send", "echo", "rtt", "stop")}
    await serve(ops, {"zmq": zmq.zmq_version()})


if __name__ == "__main__":
    run_worker(main)
