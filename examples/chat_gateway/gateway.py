"""The gateway's commands: the JSON requests clients send (README.md, *The protocol*), mapped
onto the chat of mesh.py, and presence told to the clients of this gateway."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from smartroute import Node, SmartRouteError

from .limits import (
    MAX_LISTED_MEMBERS,
    MAX_ROOMS_PER_CONNECTION,
    NAME_PATTERN,
    SLICE_S,
    ChatError,
    Client,
    Hub,
    encode_line,
)
from .mesh import Chat, Say, Speak, Whisper

Command = Callable[[Client, dict[str, Any]], Awaitable[dict[str, Any] | None]]

OPEN_COMMANDS = frozenset({"register", "who", "ping", "pong", "stats"})
"""What a client may send before ``register``."""

STATUSES = frozenset({"available", "away", "typing"})
"""What a ``status`` request may set (a new connection is "available")."""


def push_of(body: Speak | Whisper | Say) -> dict[str, Any]:
    """The line a client receives for a chat message."""
    if isinstance(body, Speak):
        return {"type": "speak", "from": body.user, "text": body.text}
    if isinstance(body, Whisper):
        return {"type": "whisper", "from": body.user, "text": body.text}
    return {"type": "say", "room": body.room, "from": body.user, "text": body.text}


class Gateway(Hub):
    """Serves chat clients of any transport on one node: requests in, chat and presence out."""

    def __init__(self, node: Node, name: str, **limits: Any) -> None:
        super().__init__(**limits)
        self.node = node
        self.name = name
        self.chat = Chat(node, name)
        self.listeners: set[Client] = set()
        """Registered connections that want presence events."""
        self.room_listeners: dict[str, set[Client]] = {}
        """Local connections in each room that want join/leave events."""
        self._last_body: object = None
        self._last_line = b""
        self.commands: dict[str, Command] = {
            "register": self.register, "speak": self.speak, "whisper": self.whisper,
            "join": self.join, "leave": self.leave, "say": self.say, "who": self.who,
            "status": self.status, "ping": self.ping, "pong": self.pong, "stats": self.report,
        }
        self.spawn(self.tell_presence())

    def forget(self, conn: Client) -> None:
        super().forget(conn)
        self.listeners.discard(conn)
        for room in conn.rooms:
            self._stop_listening(room, conn)

    async def release(self, conn: Client) -> None:
        """Unsubscribe everything this connection held (its user and rooms leave the table)."""
        subs = [sub for sub in (conn.user_sub, *conn.rooms.values()) if sub is not None]
        conn.user_sub = None
        conn.rooms.clear()
        for sub in subs:
            with contextlib.suppress(SmartRouteError):  # the node may be closing already
                await sub.close()

    def deliver(self, conn: Client) -> Callable[[Speak | Whisper | Say], None]:
        """What the mesh hands this connection, written to it."""
        return lambda body: conn.write(self.line_of(body))

    def line_of(self, body: Speak | Whisper | Say) -> bytes:
        """The encoded push for ``body``, encoded once per message however many local
        connections receive it (the node hands every local subscriber the same object)."""
        if body is not self._last_body:
            self._last_line = encode_line(push_of(body))
            self._last_body = body
        return self._last_line

    async def answer(self, conn: Client, request: dict[str, Any]) -> dict[str, Any] | None:
        kind = request.get("type")
        command = self.commands.get(kind) if isinstance(kind, str) else None
        if command is None:
            raise ChatError("unknown_type", f"unknown type {kind!r}; see the README")
        if conn.user is None and kind not in OPEN_COMMANDS:
            raise ChatError("not_registered", "send register first")
        return await command(conn, request)

    # --- the commands ---------------------------------------------------------------------------

    async def register(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        if conn.user is not None:
            raise ChatError("already_registered", f"this connection is {conn.user!r}")
        name = _name(request, "name")
        events = request.get("events", True)
        if not isinstance(events, bool):
            raise ChatError("bad_field", "events is true or false")
        # A name may be online on several connections (a user's devices): all of them get
        # that user's whispers. There is no password: a real service authenticates here.
        conn.user_sub = await self.chat.register(name, self.deliver(conn))
        conn.user, conn.wants_events = name, events
        if events:
            self.listeners.add(conn)
        return {"type": "registered", "name": name, "gateway": self.name}

    async def speak(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        await self.chat.speak(conn.user, _text(request))
        online = self.chat.members.get(Chat.EVERYONE) or collections.Counter[str]()
        return {"type": "ok", "for": "speak",
                "connections": sum(online.values()) - online[conn.user]}

    async def whisper(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        to = _name(request, "to")
        count = await self.chat.whisper(conn.user, to, _text(request))
        if count == 0:
            raise ChatError("no_such_user", f"{to!r} is not online")
        return {"type": "ok", "for": "whisper", "connections": count}

    async def join(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        user = conn.user
        assert user is not None
        room = _name(request, "room")
        if room not in conn.rooms:
            if len(conn.rooms) >= MAX_ROOMS_PER_CONNECTION:
                raise ChatError("too_many_rooms", f"at most {MAX_ROOMS_PER_CONNECTION} rooms")
            conn.rooms[room] = await self.chat.join(room, user, self.deliver(conn))
            if conn.wants_events:
                self.room_listeners.setdefault(room, set()).add(conn)
        # Members as this connection's join/leave events will tell them (the table may be a
        # few events ahead): every later event is then news to the list. At most
        # MAX_LISTED_MEMBERS: listing all would make filling a big room quadratic.
        others = self.chat.members.get(room) or collections.Counter[str]()
        listed = {user, *itertools.islice(others, MAX_LISTED_MEMBERS - 1)}
        count = len(others) + (user not in others)
        return {"type": "joined", "room": room, "members": sorted(listed), "count": count}

    async def leave(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        room = _name(request, "room")
        sub = conn.rooms.pop(room, None)
        if sub is None:
            raise ChatError("not_in_room", f"you are not in {room!r}")
        self._stop_listening(room, conn)
        await sub.close()
        return {"type": "left", "room": room}

    async def say(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        assert conn.user is not None
        room = _name(request, "room")
        if room not in conn.rooms:
            raise ChatError("not_in_room", f"join {room!r} first")
        count = await self.chat.say(room, conn.user, _text(request))
        return {"type": "ok", "for": "say", "connections": count}

    async def status(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        status = request.get("status")
        if status is None:
            raise ChatError("missing_field", "status is required")
        if not isinstance(status, str) or status not in STATUSES:
            raise ChatError("bad_field", f"status is one of {', '.join(sorted(STATUSES))}")
        assert conn.user_sub is not None
        await self.chat.set_status(conn.user_sub, status)
        return {"type": "ok", "for": "status"}

    async def who(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        return {"type": "who", **self.chat.who()}

    async def ping(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    async def pong(self, conn: Client, request: dict[str, Any]) -> None:
        return None  # the answer to our idle ping: hearing it was the point

    async def report(self, conn: Client, request: dict[str, Any]) -> dict[str, Any]:
        """Counters of this gateway (connections, drops, errors) and of its node."""
        node_stats = self.node.stats()
        counters = {
            "connections": len(self.connections),
            "registered": sum(1 for c in self.connections if c.user is not None),
            "peers": len(self.node.peers),
            "table_subscribers": node_stats["subscribers"],
            "mesh_dropped": node_stats["dropped"],
            "mesh_handshake_failures": node_stats["handshake_failures"],
            "loop_stall_max_ms": node_stats["loop_stall_max_ms"],
            **dict.fromkeys(("slow_disconnects", "idle_disconnects", "bad_requests"), 0),
            **self.stats,
        }
        return {"type": "stats", "gateway": self.name, "counters": counters}

    def _stop_listening(self, room: str, conn: Client) -> None:
        listeners = self.room_listeners.get(room)
        if listeners is not None:
            listeners.discard(conn)
            if not listeners:
                del self.room_listeners[room]

    # --- presence, from the replicated table ----------------------------------------------------

    async def tell_presence(self) -> None:
        """Tell this gateway's clients who came and went, on any gateway."""
        slice_end = self.now() + SLICE_S
        async for change in self.chat.presence():
            if change.status is not None:
                line = encode_line({"type": "status", "user": change.user,
                                    "status": change.status})
                _tell(self.listeners, change.user, line)
            elif change.room is None:
                self.stats["presence_events"] += 1
                line = encode_line({"type": "presence", "user": change.user,
                                    "status": "online" if change.online else "offline"})
                _tell(self.listeners, change.user, line)
            else:
                line = encode_line({"type": "room", "room": change.room, "user": change.user,
                                    "event": "joined" if change.online else "left"})
                _tell(self.room_listeners.get(change.room, ()), change.user, line)
            if self.now() >= slice_end:  # a snapshot of a big peer is thousands of events
                await asyncio.sleep(0)
                slice_end = self.now() + SLICE_S


def _tell(connections: Iterable[Client], user: str, line: bytes) -> None:
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
