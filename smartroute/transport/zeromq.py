"""The ZeroMQ mesh: one ROUTER inbox per node, one DEALER per link we dialled.

The core decides what to send; this module only moves batches. Receiving drains the ROUTER
without awaiting between messages (one await per burst, not per message), and sending is a
non-blocking ``send`` on a DEALER: a link whose queue is full drops the batch and counts it,
it never blocks the loop. ``ZMQ_SNDHWM`` bounds each link and ``ZMQ_RCVHWM`` each incoming
connection, so a receiver that falls behind pushes back to its senders instead of growing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import zmq

from ..logs import QuietLog

_log = logging.getLogger("smartroute.transport")

RECEIVE_BUDGET_S = 0.005
"""Longest the inbox handles messages before it lets other tasks run: the timers that send our
heartbeats must not wait behind a flood, or busy nodes get declared dead (measured: one
2048-batch burst of 500-message batches held the loop for ~8 s)."""

RECONNECT_IVL_MS = 100
"""ZeroMQ's reconnect interval for a link whose peer is gone (its default, stated)."""

RECONNECT_IVL_MAX_MS = 1000
"""Reconnects back off up to this; a peer that is really gone is dropped by membership."""

Received = Callable[[bytes, zmq.Frame], None]
"""Called with the routing id and the payload frame of each message; it handles the message
completely (the node runs the core and carries out its output)."""


class Inbox:
    """The node's ROUTER: every peer's batches arrive here."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], *, max_frame_bytes: int,
                 receive_queue: int) -> None:
        sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # A peer whose TCP connection broke reconnects with the same routing id; without
        # handover the ROUTER would refuse the new connection while the stale one lingers.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        sock.setsockopt(zmq.RCVHWM, receive_queue)
        self._sock = sock
        self.dropped = 0
        self.errors = 0

    def bind(self, host: str, port: int) -> str:
        """Bind and return the bound endpoint, with the real port when ``port`` was 0."""
        bind_host = "*" if host in ("0.0.0.0", "*", "") else host
        if ":" in bind_host and not bind_host.startswith("["):
            self._sock.setsockopt(zmq.IPV6, 1)
            bind_host = f"[{bind_host}]"
        self._sock.bind(f"tcp://{bind_host}:{port}")
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(last, bytes)
        return last.decode()

    async def run(self, received: Received) -> None:
        """Hand every message to ``received``, yielding to other tasks every few milliseconds."""
        sock = self._sock
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        # ZMQ_FD only says "events may have changed" (edge-triggered): after each wake-up,
        # ZMQ_EVENTS is the truth, and it must be checked again before sleeping.
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        loop.add_reader(fd, readable.set)
        clock = time.monotonic
        try:
            while True:
                deadline = clock() + RECEIVE_BUDGET_S
                while _events(sock) & zmq.POLLIN:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    if len(frames) != 2:
                        self.dropped += 1
                        continue
                    self._guard(received, frames[0].bytes, frames[1])
                    if clock() > deadline:
                        break
                else:
                    readable.clear()
                    if not _events(sock) & zmq.POLLIN:
                        await readable.wait()
                    continue
                await asyncio.sleep(0)  # budget spent, more is waiting: let timers run first
        finally:
            loop.remove_reader(fd)

    def _guard(self, call: Callable[..., None], *args: object) -> None:
        # Nothing one message does may stop the inbox: the node would go deaf for good.
        try:
            call(*args)
        except Exception:
            self.errors += 1
            _log.exception("internal error while handling received data (node keeps running)")

    def close(self) -> None:
        """Close the socket (pending input is dropped)."""
        self._sock.close(linger=0)


def _events(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.getsockopt(zmq.EVENTS))


class Links:
    """Our DEALERs, one per link id; sends never block."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], *, send_queue: int,
                 close_linger_s: float) -> None:
        self._context = context
        self._send_queue = send_queue
        self._linger_ms = int(close_linger_s * 1000)
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        self._quiet = QuietLog(_log)
        self.dropped_batches = 0

    def dial(self, link: int, endpoint: str, routing_id: bytes) -> None:
        """Open a DEALER to ``endpoint``; batches queue until the connection is up. A link that
        cannot be opened (bad endpoint, no socket left) is logged and its batches dropped."""
        try:
            sock: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            self._quiet.warning("socket", "cannot open a link to %s: %s", endpoint, exc)
            return
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.setsockopt(zmq.SNDHWM, self._send_queue)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._quiet.warning(f"dial:{endpoint}", "cannot dial %s: %s", endpoint, exc)
            return
        self._socks[link] = sock

    def send(self, link: int, batch: bytes) -> bool:
        """Queue one batch on a link; False (and counted) if the link is full or gone."""
        sock = self._socks.get(link)
        if sock is None:
            return False
        try:
            sock.send(batch, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped_batches += 1
            self._quiet.warning(f"full:{link}", "link %d to %s is full: batch dropped", link,
                                sock.getsockopt(zmq.LAST_ENDPOINT))
            return False
        return True

    def hang_up(self, link: int) -> None:
        """Close a link, giving queued batches (a BYE) ``close_linger_s`` to leave."""
        sock = self._socks.pop(link, None)
        if sock is not None:
            sock.close(linger=self._linger_ms)

    def close(self) -> None:
        """Close every link."""
        for link in list(self._socks):
            self.hang_up(link)
