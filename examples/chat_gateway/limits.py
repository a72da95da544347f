"""What keeps one gateway up whatever its clients do, for every transport (tcp.py, ws.py).

- ``Client``: one connection. Its requests wait in the hub's queue; at ``MAX_PENDING_LINES``
  not yet handled we stop reading it (backpressure: it waits in its own TCP window). What it
  has not read yet may reach ``max_output_bytes`` beyond the kernel's buffer; past that it is
  slow and dropped, so it never holds back the gateway or anyone else.
- ``Hub``: every client's requests, handled in arrival order by one task that yields every
  ``SLICE_S`` (a reconnect storm must not hold the loop while the mesh's timers wait); bad
  input gets an error reply, never a disconnect; idle clients are pinged, then dropped.

A transport subclasses ``Client``: it frames bytes into requests (``take``) and requests'
answers into bytes (``put``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
from collections.abc import Coroutine
from typing import Any

from smartroute import SmartRouteError, Subscription

log = logging.getLogger("chat_gateway")

MAX_LINE_BYTES = 16 * 1024
"""Longest request a client may send; a longer one is answered ``line_too_long``."""

NAME_PATTERN = re.compile(r"[\w.-]{1,32}")
"""User and room names: letters, digits, ``_``, ``.``, ``-``; 1..32 characters."""

MAX_LISTED_MEMBERS = 100
"""A ``joined`` answer names at most this many members (``count`` tells how many there are;
``who`` lists them all)."""

MAX_ROOMS_PER_CONNECTION = 64
"""Each room costs a subscriber replicated to every gateway: bound what one client can add."""

IDLE_TIMEOUT_S = 60.0
"""A client silent this long is dropped; it is pinged after half of it (any request counts)."""

MAX_IDLE_CHECK_S = 1.0
"""The idle sweep runs at least this often (more often for short timeouts)."""

MAX_OUTPUT_BYTES = 1024 * 1024
"""Unsent bytes one connection may hold (beyond what the kernel took) before it is dropped."""

TOO_LONG = b""
"""Stands for an over-long request in the queue (empty ones are never queued), so its error
reply comes in order."""

MAX_PENDING_LINES = 32
"""Requests read from one client and not yet handled before we stop reading from it."""

SLICE_S = 0.005
"""The gateway's own work (requests, table events) yields to the event loop this often, as
the node's inbox does: the mesh's timers and I/O must keep running under load."""

SHUTDOWN_FLUSH_S = 1.0
"""On shutdown, clients get this long to receive their ``bye``."""


class ChatError(Exception):
    """A request the gateway refuses: answered with ``{"type": "error", "code": ...}``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


def encode_line(obj: dict[str, Any]) -> bytes:
    """One protocol line: compact JSON, UTF-8, newline."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class Client(asyncio.Protocol):
    """One connection of any transport: backpressure, the output limit, idleness."""

    __slots__ = ("closing", "hub", "last_heard", "paused", "pinged", "queued", "rooms",
                 "transport", "user", "user_sub", "wants_events")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.queued = 0
        """Requests of ours in the hub's queue."""
        self.paused = False
        self.closing = False
        """No more writes: closed, closing, or dropped as slow."""
        self.last_heard = hub.now()
        self.pinged = False
        # What the gateway knows of this connection's chat (gateway.py).
        self.user: str | None = None
        self.wants_events = True
        self.user_sub: Subscription | None = None
        self.rooms: dict[str, Subscription] = {}

    # the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hub.adopt(self)

    def heard(self) -> None:
        """The client sent something: it is not idle."""
        self.last_heard = self.hub.now()
        self.pinged = False

    def take(self, request: bytes) -> None:
        """Queue one request (``TOO_LONG`` for an over-long one) for the hub."""
        self.hub.enqueue(self, request)
        if self.queued >= MAX_PENDING_LINES and not self.paused and self.transport:
            # Backpressure: a client that sends faster than we handle waits in its own TCP
            # window, not in our memory.
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.hub.forget(self)
        self.hub.enqueue(self, None)  # release, after its requests already queued

    def put(self, line: bytes) -> None:
        """Write one encoded line to the transport, framed as the transport frames it."""
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the client may receive lines (a WebSocket: after its handshake)."""
        return True

    # the hub's side

    def dequeued(self) -> None:
        """One of our requests left the hub's queue: read again once it is half empty."""
        self.queued -= 1
        if self.paused and self.queued < MAX_PENDING_LINES // 2 and not self.closing:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def send(self, obj: dict[str, Any]) -> None:
        """Queue one line for the client."""
        self.write(encode_line(obj))

    def write(self, line: bytes) -> None:
        """Queue an encoded line; a connection over ``max_output_bytes`` is slow and dropped."""
        transport = self.transport
        if self.closing or transport is None or not self.ready():
            return
        self.put(line)
        if transport.get_write_buffer_size() > self.hub.max_output_bytes:
            self.hub.stats["slow_disconnects"] += 1
            log.warning("dropping slow client %s (%s): over %d unsent bytes",
                        self.user or "(unregistered)", transport.get_extra_info("peername"),
                        self.hub.max_output_bytes)
            self.closing = True
            transport.abort()

    def close(self) -> None:
        """Close after what is queued; at once if the client is not reading."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


class Hub:
    """Every client of one gateway: their requests in order, in slices; idle clients."""

    def __init__(self, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_output_bytes: int = MAX_OUTPUT_BYTES) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_output_bytes = max_output_bytes
        self.loop = asyncio.get_running_loop()
        self.connections: set[Client] = set()
        self.stats: collections.Counter[str] = collections.Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_gone = asyncio.Event()
        """Set when the last connection closed (for shutdown)."""
        self.queue: collections.deque[tuple[Client, bytes | None]] = collections.deque()
        """Requests of every connection, in arrival order (None: release that connection)."""
        self.queue_ready = asyncio.Event()
        self.spawn(self.dispatch())
        self.spawn(self.sweep_idle())

    # what the gateway defines

    async def answer(self, conn: Client, request: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to one well-formed request; ``ChatError`` refuses it."""
        raise NotImplementedError

    async def release(self, conn: Client) -> None:
        """The connection closed and its requests were handled: free what it held."""

    def forget(self, conn: Client) -> None:
        """The connection closed (its requests may still be queued)."""
        self.connections.discard(conn)
        if not self.connections:
            self.all_gone.set()

    # the rest

    def now(self) -> float:
        return self.loop.time()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task the hub holds (and cancels at close)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    def adopt(self, conn: Client) -> None:
        self.connections.add(conn)
        self.all_gone.clear()
        self.stats["connections_accepted"] += 1

    def enqueue(self, conn: Client, line: bytes | None) -> None:
        conn.queued += 1
        self.queue.append((conn, line))
        self.queue_ready.set()

    async def dispatch(self) -> None:
        """Handle every connection's requests in arrival order, in one task that yields every
        ``SLICE_S``: thousands of clients ready at once (a reconnect storm) must not hold the
        loop for seconds, or the mesh's heartbeats stall."""
        queue = self.queue
        slice_end = self.now() + SLICE_S
        while True:
            if not queue:
                self.queue_ready.clear()
                await self.queue_ready.wait()
                slice_end = self.now() + SLICE_S
            conn, line = queue.popleft()
            conn.dequeued()
            if line is None:  # queued behind the connection's requests: runs after them
                await self.release(conn)
            elif not conn.closing:
                await self.handle(conn, line)
            if self.now() >= slice_end:
                await asyncio.sleep(0)
                slice_end = self.now() + SLICE_S

    async def handle(self, conn: Client, line: bytes) -> None:
        """Answer one request; a bad one gets an error reply, never a disconnect."""
        self.stats["requests"] += 1
        request: Any = None
        try:
            if not line:  # TOO_LONG
                raise ChatError("line_too_long", f"a line is at most {MAX_LINE_BYTES} bytes")
            try:
                request = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise ChatError("bad_json", "a line is one JSON object") from None
            if not isinstance(request, dict):
                raise ChatError("bad_request", "a line is one JSON object")
            reply = await self.answer(conn, request)
        except ChatError as exc:
            self.stats["bad_requests"] += 1
            reply = {"type": "error", "code": exc.code, "message": str(exc)}
            if isinstance(request, dict) and isinstance(request.get("type"), str):
                reply["for"] = request["type"]
        except SmartRouteError as exc:  # e.g. the node is closing
            reply = {"type": "error", "code": "unavailable", "message": str(exc)}
        except Exception:
            # A bug must cost one request, not the task that serves every connection.
            self.stats["internal_errors"] += 1
            log.exception("internal error handling %r", line[:200])
            reply = {"type": "error", "code": "internal", "message": "internal error"}
        if reply is not None:
            if isinstance(request, dict) and isinstance(request.get("id"), str | int):
                reply["id"] = request["id"]
            conn.send(reply)

    async def sweep_idle(self) -> None:
        """Ping clients silent for half the timeout; drop those silent for all of it."""
        timeout = self.idle_timeout_s
        while True:
            await asyncio.sleep(min(MAX_IDLE_CHECK_S, timeout / 4))
            now = self.now()
            for conn in list(self.connections):
                silent = now - conn.last_heard
                if silent >= timeout:
                    self.stats["idle_disconnects"] += 1
                    conn.send({"type": "bye", "reason": "idle"})
                    conn.close()
                elif silent >= timeout / 2 and not conn.pinged:
                    conn.pinged = True
                    conn.send({"type": "ping"})

    async def close(self) -> None:
        """Say bye to every client, then stop the hub's tasks."""
        for conn in list(self.connections):
            conn.send({"type": "bye", "reason": "shutdown"})
            conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_gone.wait(), SHUTDOWN_FLUSH_S)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
