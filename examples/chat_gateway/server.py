"""A clustered TCP chat gateway: each gateway joins the smartroute mesh by itself, and users
connected to different gateways chat as if they were on one server.

    python examples/chat_gateway/server.py --port 7070     # start as many as you like on the LAN

Clients speak newline-delimited JSON (README.md next to this file has the protocol and an
``nc`` session). How the chat becomes a cluster, which is the part to copy:

- a registered connection subscribes ``user:<name>`` (meta: its gateway). A whisper is ``EQ``
  ``user:<name>``: it reaches every connection of that user, on every gateway.
- each room a connection joins is one more subscriber ``room:<room>`` (meta: the user); a
  ``say`` is ``EQ`` ``room:<room>``.
- a ``speak`` is ``NOT_EQ`` ``user:<speaker>``: every subscriber but the speaker's. That
  includes the room subscribers, which ignore it, so each connection gets it exactly once,
  through its ``user:`` subscriber.
- ``who`` reads the replicated table (``node.subscribers()`` with meta): no message is sent.
- presence and room join/leave come from ``node.events()``: every gateway watches the table and
  tells its own clients. A killed gateway's subscribers are purged everywhere once the mesh
  declares it dead (a killed one in well under a second, a frozen or cut-off one in under 2 s),
  so its users go offline on every other gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from smartroute import (
    EventStream,
    Message,
    Node,
    ReceiveMode,
    SmartRouteError,
    SubscriberDown,
    SubscriberUp,
    Subscription,
    Timings,
    message,
)

log = logging.getLogger("chat_gateway")

DEFAULT_PORT = 7070
"""TCP port clients connect to."""

DEFAULT_CLUSTER = "chat"

MAX_LINE_BYTES = 16 * 1024
"""Longest request line a client may send; a longer one is discarded up to its newline."""

NAME_PATTERN = re.compile(r"[\w.-]{1,32}")
"""User and room names: letters, digits, ``_``, ``.``, ``-``; 1..32 characters."""

MAX_LISTED_MEMBERS = 100
"""A ``joined`` answer names at most this many members (``count`` tells how many there are;
``who`` lists them all)."""

MAX_ROOMS_PER_CONNECTION = 64
"""Each room costs a subscriber replicated to every gateway: bound what one client can add."""

IDLE_TIMEOUT_S = 60.0
"""A client silent this long is dropped; it is pinged after half of it (any line counts)."""

MAX_IDLE_CHECK_S = 1.0
"""The idle sweep runs at least this often (more often for short timeouts)."""

MAX_OUTPUT_BYTES = 1024 * 1024
"""Unsent bytes one connection may hold (beyond what the kernel took): past this it is slow
and dropped, so a client that stops reading never holds back the gateway or anyone else."""

TOO_LONG = b""
"""Stands for an over-long line in a connection's queue (blank lines are never queued), so
its error reply comes in order."""

MAX_PENDING_LINES = 32
"""Lines read from one client and not yet handled before we stop reading from it."""

SLICE_S = 0.005
"""The gateway's own work (requests, table events) yields to the event loop this often, as
the node's inbox does: the mesh's timers and I/O must keep running under load."""

ACCEPT_BACKLOG = 1024
"""Pending TCP connections the kernel queues for us (a reconnect storm after a restart)."""

ACCEPTS_PER_TURN = 64
"""Connections accepted per event-loop turn (asyncio accepts up to its ``backlog`` per turn):
in a storm, accepting 1,024 at once took up to ~1 s of one turn here, while the mesh's
heartbeats waited."""

LOOP_PROBE_S = 0.1
"""How often the gateway checks that its event loop is not stalled."""

SHUTDOWN_FLUSH_S = 1.0
"""On shutdown, clients get this long to receive their ``bye``."""


# --- what travels between gateways (registered wire types) ------------------------------------

@message("chat.Speak")
@dataclasses.dataclass(frozen=True, slots=True)
class Speak:
    """To everyone but ``user``."""

    user: str
    text: str


@message("chat.Whisper")
@dataclasses.dataclass(frozen=True, slots=True)
class Whisper:
    """To every connection of one user."""

    user: str
    to: str
    text: str


@message("chat.Say")
@dataclasses.dataclass(frozen=True, slots=True)
class Say:
    """To every connection in one room."""

    room: str
    user: str
    text: str


def encode_line(obj: dict[str, Any]) -> bytes:
    """One protocol line: compact JSON, UTF-8, newline."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def push_of(body: Speak | Whisper | Say) -> dict[str, Any]:
    """The line a client receives for a chat message."""
    if isinstance(body, Speak):
        return {"type": "speak", "from": body.user, "text": body.text}
    if isinstance(body, Whisper):
        return {"type": "whisper", "from": body.user, "text": body.text}
    return {"type": "say", "room": body.room, "from": body.user, "text": body.text}


class ChatError(Exception):
    """A request the gateway refuses: answered with ``{"type": "error", "code": ...}``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


# --- one client connection ---------------------------------------------------------------------

class Connection(asyncio.Protocol):
    """One TCP client: splits lines, queues them for the gateway, writes what it pushes."""

    __slots__ = ("buffer", "closing", "discarding", "gateway", "last_heard", "paused", "pinged",
                 "queued", "rooms", "transport", "user", "user_sub", "wants_events")

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.discarding = False
        """True while skipping the rest of an over-long line."""
        self.queued = 0
        """Lines of ours in the gateway's queue."""
        self.paused = False
        self.closing = False
        """No more writes: closed, closing, or dropped as slow."""
        self.user: str | None = None
        self.wants_events = True
        self.user_sub: Subscription | None = None
        self.rooms: dict[str, Subscription] = {}
        self.last_heard = gateway.now()
        self.pinged = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.gateway.adopt(self)

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.gateway.now()
        self.pinged = False
        buffer = self.buffer
        buffer += data
        if b"\n" in data:
            *lines, rest = buffer.split(b"\n")
            self.buffer = buffer = rest
            for line in lines:
                if self.discarding:  # the tail of an over-long line
                    self.discarding = False
                elif len(line) > MAX_LINE_BYTES:
                    self.gateway.enqueue(self, TOO_LONG)
                elif line.strip():
                    self.gateway.enqueue(self, bytes(line))
        if len(buffer) > MAX_LINE_BYTES:
            buffer.clear()
            if not self.discarding:
                self.discarding = True
                self.gateway.enqueue(self, TOO_LONG)
        if self.queued >= MAX_PENDING_LINES and not self.paused and self.transport:
            # Backpressure: a client that sends faster than we handle waits in its own TCP
            # window, not in our memory.
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.gateway.forget(self)
        self.gateway.enqueue(self, None)  # release, after its lines already queued

    # the gateway's side

    def dequeued(self) -> None:
        """One of our lines left the gateway's queue: read again once it is half empty."""
        self.queued -= 1
        if self.paused and self.queued < MAX_PENDING_LINES // 2 and not self.closing:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def release(self) -> None:
        """Unsubscribe everything this connection held (its users and rooms leave the table)."""
        subs = [sub for sub in (self.user_sub, *self.rooms.values()) if sub is not None]
        self.user_sub = None
        self.rooms.clear()
        for sub in subs:
            with contextlib.suppress(SmartRouteError):  # the node may be closing already
                await sub.close()

    def send(self, obj: dict[str, Any]) -> None:
        """Queue one line for the client."""
        self.write(encode_line(obj))

    def write(self, line: bytes) -> None:
        """Queue encoded bytes; a connection over ``max_output_bytes`` is slow and dropped."""
        transport = self.transport
        if self.closing or transport is None:
            return
        transport.write(line)
        if transport.get_write_buffer_size() > self.gateway.max_output_bytes:
            self.gateway.stats["slow_disconnects"] += 1
            log.warning("dropping slow client %s (%s): over %d unsent bytes",
                        self.user or "(unregistered)", transport.get_extra_info("peername"),
                        self.gateway.max_output_bytes)
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

    # what the mesh delivers (sync handlers: they run inline, as the message arrives)

    def on_user_message(self, msg: Message) -> None:
        body = msg.body
        if isinstance(body, Speak | Whisper):
            self.write(self.gateway.line_of(body))

    def on_room_message(self, msg: Message) -> None:
        body = msg.body
        # A speak (NOT_EQ) reaches room subscribers too: it was delivered through user: already.
        if isinstance(body, Say):
            self.write(self.gateway.line_of(body))


# --- the gateway ------------------------------------------------------------------------------

Command = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any] | None]]

OPEN_COMMANDS = frozenset({"register", "who", "ping", "pong", "stats"})
"""What a client may send before ``register``."""


class Gateway:
    """Serves chat clients on one node: commands in, mesh messages and table events out."""

    def __init__(self, node: Node, name: str, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_output_bytes: int = MAX_OUTPUT_BYTES) -> None:
        self.node = node
        self.name = name
        self.idle_timeout_s = idle_timeout_s
        self.max_output_bytes = max_output_bytes
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.listeners: set[Connection] = set()
        """Registered connections that want presence events."""
        self.room_listeners: dict[str, set[Connection]] = {}
        """Local connections in each room that want join/leave events."""
        self.user_counts: collections.Counter[str] = collections.Counter()
        """Subscribers of ``user:<name>`` in the table (connections of that user, cluster-wide)."""
        self.room_members: dict[str, collections.Counter[str]] = {}
        """Per room, subscribers of ``room:<room>`` per user, cluster-wide."""
        self.stats: collections.Counter[str] = collections.Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_gone = asyncio.Event()
        """Set when the last connection closed (for shutdown)."""
        self._last_body: object = None
        self._last_line = b""
        self.commands: dict[str, Command] = {
            "register": self.register, "speak": self.speak, "whisper": self.whisper,
            "join": self.join, "leave": self.leave, "say": self.say, "who": self.who,
            "ping": self.ping, "pong": self.pong, "stats": self.report,
        }
        self.queue: collections.deque[tuple[Connection, bytes | None]] = collections.deque()
        """Lines of every connection, in arrival order (None: release that connection)."""
        self.queue_ready = asyncio.Event()
        self._stream = self._watch()
        self.spawn(self.dispatch())
        self.spawn(self.follow_table())
        self.spawn(self.watch_loop())
        self.spawn(self.sweep_idle())

    def now(self) -> float:
        return self.loop.time()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task the gateway holds (and cancels at close)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    def adopt(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.all_gone.clear()
        self.stats["connections_accepted"] += 1

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.all_gone.set()
        self.listeners.discard(conn)
        for room in conn.rooms:
            self._stop_listening(room, conn)

    def line_of(self, body: Speak | Whisper | Say) -> bytes:
        """The encoded push for ``body``, encoded once per message however many local
        connections receive it (the node hands every local subscriber the same object)."""
        if body is not self._last_body:
            self._last_line = encode_line(push_of(body))
            self._last_body = body
        return self._last_line

    # --- requests -------------------------------------------------------------------------------

    def enqueue(self, conn: Connection, line: bytes | None) -> None:
        conn.queued += 1
        self.queue.append((conn, line))
        self.queue_ready.set()

    async def dispatch(self) -> None:
        """Handle every connection's lines in arrival order, in one task that yields every
        ``SLICE_S``: thousands of clients ready at once (a reconnect storm) must not hold the
        loop for seconds, or the mesh heartbeats stall and the peers declare us dead."""
        queue = self.queue
        slice_end = self.now() + SLICE_S
        while True:
            if not queue:
                self.queue_ready.clear()
                await self.queue_ready.wait()
                slice_end = self.now() + SLICE_S
            conn, line = queue.popleft()
            conn.dequeued()
            if line is None:  # queued behind the connection's lines: runs after them
                await conn.release()
            elif not conn.closing:
                await self.handle(conn, line)
            if self.now() >= slice_end:
                await asyncio.sleep(0)
                slice_end = self.now() + SLICE_S

    async def handle(self, conn: Connection, line: bytes) -> None:
        """Answer one request line; a bad one gets an error reply, never a disconnect."""
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
            kind = request.get("type")
            command = self.commands.get(kind) if isinstance(kind, str) else None
            if command is None:
                raise ChatError("unknown_type", f"unknown type {kind!r}; see the README")
            if conn.user is None and kind not in OPEN_COMMANDS:
                raise ChatError("not_registered", "send register first")
            reply = await command(conn, request)
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

    async def register(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        if conn.user is not None:
            raise ChatError("already_registered", f"this connection is {conn.user!r}")
        name = _name(request, "name")
        events = request.get("events", True)
        if not isinstance(events, bool):
            raise ChatError("bad_field", "events is true or false")
        # A name may be online on several connections (a user's devices): all of them get
        # that user's whispers. There is no password: a real service authenticates here.
        sub = await self.node.subscribe(f"user:{name}", conn.on_user_message,
                                        meta={"gateway": self.name})
        conn.user, conn.user_sub, conn.wants_events = name, sub, events
        if events:
            self.listeners.add(conn)
        return {"type": "registered", "name": name, "gateway": self.name}

    async def speak(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        user = conn.user
        assert user is not None
        await self.node.send_to(Speak(user, _text(request)), ReceiveMode.NOT_EQ, f"user:{user}")
        recipients = sum(self.user_counts.values()) - self.user_counts[user]
        return {"type": "ok", "for": "speak", "connections": recipients}

    async def whisper(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        to = _name(request, "to")
        count = await self.node.send_to(Whisper(conn.user, to, _text(request)),
                                        ReceiveMode.EQ, f"user:{to}")
        if count == 0:
            raise ChatError("no_such_user", f"{to!r} is not online")
        return {"type": "ok", "for": "whisper", "connections": count}

    async def join(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        room = _name(request, "room")
        if room not in conn.rooms:
            if len(conn.rooms) >= MAX_ROOMS_PER_CONNECTION:
                raise ChatError("too_many_rooms", f"at most {MAX_ROOMS_PER_CONNECTION} rooms")
            sub = await self.node.subscribe(f"room:{room}", conn.on_room_message,
                                            meta={"user": conn.user, "gateway": self.name})
            conn.rooms[room] = sub
            if conn.wants_events:
                self.room_listeners.setdefault(room, set()).add(conn)
        # Members as this connection's join/leave events will tell them (the table may be a
        # few events ahead): every later event is then news to the list. At most
        # MAX_LISTED_MEMBERS: listing all would make filling a big room quadratic.
        others = self.room_members.get(room) or collections.Counter[str]()
        listed = {conn.user, *itertools.islice(others, MAX_LISTED_MEMBERS - 1)}
        count = len(others) + (conn.user not in others)
        return {"type": "joined", "room": room, "members": sorted(listed), "count": count}

    async def leave(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        room = _name(request, "room")
        sub = conn.rooms.pop(room, None)
        if sub is None:
            raise ChatError("not_in_room", f"you are not in {room!r}")
        self._stop_listening(room, conn)
        await sub.close()
        return {"type": "left", "room": room}

    async def say(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        room = _name(request, "room")
        if room not in conn.rooms:
            raise ChatError("not_in_room", f"join {room!r} first")
        count = await self.node.send_to(Say(room, conn.user, _text(request)),
                                        ReceiveMode.EQ, f"room:{room}")
        return {"type": "ok", "for": "say", "connections": count}

    async def who(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        """Online users (connections and gateways) and rooms (members), cluster-wide, read
        from the replicated table and its meta."""
        users: dict[str, dict[str, Any]] = {}
        rooms: dict[str, set[str]] = {}
        for sub in self.node.subscribers():
            kind, _, key = sub.name.partition(":")
            if kind == "user":
                entry = users.setdefault(key, {"connections": 0, "gateways": set()})
                entry["connections"] += 1
                gateway = sub.meta.get("gateway")
                if isinstance(gateway, str):
                    entry["gateways"].add(gateway)
            elif kind == "room" and isinstance(sub.meta.get("user"), str):
                rooms.setdefault(key, set()).add(sub.meta["user"])
        for entry in users.values():
            entry["gateways"] = sorted(entry["gateways"])
        return {"type": "who", "users": dict(sorted(users.items())),
                "rooms": {room: sorted(members) for room, members in sorted(rooms.items())}}

    async def ping(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    async def pong(self, conn: Connection, request: dict[str, Any]) -> None:
        return None  # the answer to our idle ping: hearing it was the point

    async def report(self, conn: Connection, request: dict[str, Any]) -> dict[str, Any]:
        """Counters of this gateway (connections, drops, errors) and of its node."""
        node_stats = self.node.stats()
        counters = {
            "connections": len(self.connections),
            "registered": sum(1 for c in self.connections if c.user is not None),
            "peers": len(self.node.peers),
            "table_subscribers": node_stats["subscribers"],
            "mesh_dropped": node_stats["dropped"],
            "mesh_handshake_failures": node_stats["handshake_failures"],
            **dict.fromkeys(("slow_disconnects", "idle_disconnects", "bad_requests"), 0),
            **self.stats,
        }
        return {"type": "stats", "gateway": self.name, "counters": counters}

    def _stop_listening(self, room: str, conn: Connection) -> None:
        listeners = self.room_listeners.get(room)
        if listeners is not None:
            listeners.discard(conn)
            if not listeners:
                del self.room_listeners[room]

    # --- presence and room events, from the replicated table ------------------------------------

    def _watch(self) -> EventStream:
        """A fresh event stream, with our counts rebuilt from the table at the same instant
        (no await in between, so no event is both in the table and still in the stream)."""
        stream = self.node.events()
        self._recount()
        return stream

    async def follow_table(self) -> None:
        stream = self._stream
        slice_end = self.now() + SLICE_S
        while True:
            if self.now() >= slice_end:  # a snapshot of a big peer is thousands of events
                await asyncio.sleep(0)
                slice_end = self.now() + SLICE_S
            try:
                event = await anext(stream)
            except StopAsyncIteration:
                return
            if stream.dropped:
                # We fell behind (a big snapshot arrived): the table is the truth; start over.
                old, stream = stream, self._watch()
                self._stream = stream
                await old.aclose()
                continue
            if isinstance(event, SubscriberUp | SubscriberDown):
                self._apply(event.subscriber.name, event.subscriber.meta,
                            1 if isinstance(event, SubscriberUp) else -1)

    def _apply(self, name: str, meta: dict[str, Any], delta: int) -> None:
        kind, _, key = name.partition(":")
        if kind == "user":
            if _bump(self.user_counts, key, delta):
                self._presence(key, online=delta > 0)
        elif kind == "room":
            user = meta.get("user")
            members = self.room_members.setdefault(key, collections.Counter())
            if isinstance(user, str) and _bump(members, user, delta):
                self._room_event(key, user, joined=delta > 0)
            if not self.room_members.get(key):
                self.room_members.pop(key, None)

    def _recount(self) -> None:
        """Rebuild the counts from the table and announce whatever changed."""
        users: collections.Counter[str] = collections.Counter()
        rooms: dict[str, collections.Counter[str]] = {}
        for sub in self.node.subscribers():
            kind, _, key = sub.name.partition(":")
            if kind == "user":
                users[key] += 1
            elif kind == "room" and isinstance(sub.meta.get("user"), str):
                rooms.setdefault(key, collections.Counter())[sub.meta["user"]] += 1
        for user in users.keys() - self.user_counts.keys():
            self._presence(user, online=True)
        for user in self.user_counts.keys() - users.keys():
            self._presence(user, online=False)
        for room in rooms.keys() | self.room_members.keys():
            before = self.room_members.get(room, collections.Counter()).keys()
            after = rooms.get(room, collections.Counter()).keys()
            for user in after - before:
                self._room_event(room, user, joined=True)
            for user in before - after:
                self._room_event(room, user, joined=False)
        self.user_counts, self.room_members = users, rooms

    def _presence(self, user: str, *, online: bool) -> None:
        self.stats["presence_events"] += 1
        line = encode_line({"type": "presence", "user": user,
                            "status": "online" if online else "offline"})
        _tell(self.listeners, user, line)

    def _room_event(self, room: str, user: str, *, joined: bool) -> None:
        line = encode_line({"type": "room", "room": room, "user": user,
                            "event": "joined" if joined else "left"})
        _tell(self.room_listeners.get(room, ()), user, line)

    # --- idle clients and shutdown --------------------------------------------------------------

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

    async def watch_loop(self) -> None:
        """Record the longest event-loop stall (``stats``: ``loop_stall_max_ms``): peers see a
        stalled gateway as suspect, and as dead only past the mesh's ``dead_after_s`` (20 s)."""
        while True:
            before = self.now()
            await asyncio.sleep(LOOP_PROBE_S)
            stall_ms = int((self.now() - before - LOOP_PROBE_S) * 1000)
            self.stats["loop_stall_max_ms"] = max(self.stats["loop_stall_max_ms"], stall_ms)

    async def close(self) -> None:
        """Say bye to every client, then stop the gateway's tasks."""
        for conn in list(self.connections):
            conn.send({"type": "bye", "reason": "shutdown"})
            conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_gone.wait(), SHUTDOWN_FLUSH_S)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)



def _bump(counter: collections.Counter[str], key: str, delta: int) -> bool:
    """Add ``delta`` to ``counter[key]``; True when the key appeared or disappeared."""
    value = counter[key] + delta
    if value <= 0:
        counter.pop(key, None)
        return value == 0
    counter[key] = value
    return value == delta  # went from 0 to 1


def _tell(connections: Iterable[Connection], user: str, line: bytes) -> None:
    """Push ``line`` to ``connections``, except those of ``user`` (news about yourself)."""
    for conn in list(connections):
        if conn.user != user:
            conn.write(line)


def _name(request: dict[str, Any], field: str) -> str:
    value = request.get(field)
    if value is None:
        raise ChatError("missing_field", f"{field} is required")
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ChatError("bad_field", f"{field} is 1..32 letters, digits, '_', '.' or '-'")
    return value


def _text(request: dict[str, Any]) -> str:
    value = request.get("text")
    if value is None:
        raise ChatError("missing_field", "text is required")
    if not isinstance(value, str) or not value:
        raise ChatError("bad_field", "text is a non-empty string")
    return value


# --- running it --------------------------------------------------------------------------------

def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit (one per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0",
                        help="address clients and the mesh bind to (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port for clients (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER,
                        help=f"gateways of one cluster form one chat (default {DEFAULT_CLUSTER!r})")
    parser.add_argument("--secret", default=None,
                        help="cluster secret (default: $SMARTROUTE_SECRET; none: unencrypted)")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="mDNS only on the interface with this address (repeatable)")
    parser.add_argument("--seed", action="append", default=[], metavar="tcp://HOST:PORT",
                        help="a gateway's mesh endpoint to dial, besides mDNS, or a DNS name "
                             "of them all: dns:NAME:PORT, dns-srv:NAME (repeatable)")
    parser.add_argument("--mesh-port", type=int, default=0, metavar="PORT",
                        help="port of the mesh node (default: any free one; give one when "
                             "peers find it by DNS name)")
    parser.add_argument("--no-mdns", action="store_true", help="discover by --seed only")
    parser.add_argument("--name", default=None, help="gateway name shown to users")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="S",
                        help=f"drop clients silent this long (default {IDLE_TIMEOUT_S:g} s)")
    parser.add_argument("--max-output-bytes", type=int, default=MAX_OUTPUT_BYTES, metavar="N",
                        help=f"drop clients with more unsent bytes (default {MAX_OUTPUT_BYTES})")
    parser.add_argument("--dead-after", type=float, default=None, metavar="S",
                        help="a peer gateway whose event loop is silent this long while its "
                             "connection is alive is stuck: dead (default: the mesh's 20 s)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve the mesh node's Prometheus metrics on 127.0.0.1:PORT/metrics "
                             "(0: any free port; needs smartroute[metrics])")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.idle_timeout <= 0 or args.max_output_bytes <= 0:
        parser.error("--idle-timeout and --max-output-bytes must be positive")
    # Suspected at half of it, which must stay above the heartbeat interval.
    least = 2 * Timings().heartbeat_interval_s
    if args.dead_after is not None and args.dead_after <= least:
        parser.error(f"--dead-after must be over {least} s")
    return args


async def serve_clients(gateway: Gateway, host: str,
                        port: int) -> tuple[asyncio.Server, tuple[str, int]]:
    """Listen for clients with a deep kernel queue but few accepts per loop turn."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(gateway), sock=sock, backlog=ACCEPTS_PER_TURN)
        # create_server listened with ACCEPTS_PER_TURN, which asyncio also uses as the
        # accepts per turn; listening again only deepens the kernel's queue.
        sock.listen(ACCEPT_BACKLOG)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    return server, (bound_host, bound_port)


DRAIN_TIMEOUT_S = 5.0
"""On SIGTERM the gateway's node drains at most this long (then BYE)."""


async def run(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, then say bye to clients, drain and BYE to the mesh."""
    discovery: list[str] = ([] if args.no_mdns else ["mdns"]) + args.seed
    secret = args.secret or os.environ.get("SMARTROUTE_SECRET")
    # Only when given: a node without a secret says in its log that links are unencrypted.
    options: dict[str, Any] = {"secret": secret} if secret else {}
    if args.dead_after is not None:
        options.update(dead_after_s=args.dead_after, suspect_after_s=args.dead_after / 2)
    node = Node(args.cluster, discovery=discovery, host=args.host, port=args.mesh_port,
                interfaces=args.interface or None, name=args.name, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        gateway = Gateway(node, args.name or node.name, idle_timeout_s=args.idle_timeout,
                          max_output_bytes=args.max_output_bytes)
        server, (host, port) = await serve_clients(gateway, args.host, args.port)
        print(f"chat gateway {gateway.name} listening on {host}:{port} (cluster "
              f"{args.cluster!r}, mesh node {node.node_id[:8]} at {node.endpoint})", flush=True)
        metrics = None
        if args.metrics_port is not None:
            from smartroute.metrics import serve_http  # noqa: PLC0415 (an optional extra)
            node.metrics()
            metrics, url = serve_http(args.metrics_port)
            print(f"metrics at {url}", flush=True)
        await stop.wait()
        server.close()
        await gateway.close()
        # The mesh side of a rolling restart: peers stop choosing this gateway, then BYE.
        await node.drain(DRAIN_TIMEOUT_S)
        if metrics is not None:
            await asyncio.to_thread(metrics.shutdown)
    print("closed", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_open_files_limit()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
