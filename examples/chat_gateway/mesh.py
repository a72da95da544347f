"""The chat over smartroute: the part to copy (README.md walks through it)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from smartroute import Message, Node, ReceiveMode, Subscription, message
from smartroute.events import Subscriber, SubscriberDown, SubscriberUp, SubscriberUpdated


@message("chat.Speak")
@dataclasses.dataclass(frozen=True, slots=True)
class Speak:
    user: str
    text: str


@message("chat.Whisper")
@dataclasses.dataclass(frozen=True, slots=True)
class Whisper:
    user: str
    to: str
    text: str


@message("chat.Say")
@dataclasses.dataclass(frozen=True, slots=True)
class Say:
    room: str
    user: str
    text: str


Deliver = Callable[[Speak | Whisper | Say], None]


class Presence(NamedTuple):
    """``user`` came online (``online``) or went offline; with a ``room``: joined or left it;
    with a ``status``: a connection of ``user`` set it ("away", "typing", "available")."""
    user: str
    online: bool
    room: str | None = None
    status: str | None = None


class Chat:
    """The chat on one gateway's node: subscribe, send, ``who``, and presence."""

    EVERYONE = ""  # where members counts the user: subscribers (no room is named "")

    def __init__(self, node: Node, gateway: str) -> None:
        self.node, self.gateway = node, gateway
        self.members: dict[str, collections.Counter[str]] = {}  # room -> user -> subscribers

    async def register(self, user: str, deliver: Deliver) -> Subscription:
        """This connection gets the speaks of others, and whispers to ``user``."""
        return await self.node.subscribe(f"user:{user}", lambda msg: _take(msg, deliver, False),
                                         meta={"gateway": self.gateway})

    async def join(self, room: str, user: str, deliver: Deliver) -> Subscription:
        """This connection gets what is said in ``room`` (and every speak: dropped here)."""
        return await self.node.subscribe(f"room:{room}", lambda msg: _take(msg, deliver, True),
                                         meta={"user": user, "gateway": self.gateway})

    async def set_status(self, sub: Subscription, status: str) -> None:
        """Every gateway's table shows it, and tells it as ``SubscriberUpdated``."""
        await sub.update_meta({"gateway": self.gateway, "status": status})

    async def speak(self, user: str, text: str) -> None:
        await self.node.send_to(Speak(user, text), ReceiveMode.NOT_EQ, f"user:{user}")

    async def whisper(self, user: str, to: str, text: str) -> int:
        return await self.node.send_to(Whisper(user, to, text), ReceiveMode.EQ, f"user:{to}")

    async def say(self, room: str, user: str, text: str) -> int:
        return await self.node.send_to(Say(room, user, text), ReceiveMode.EQ, f"room:{room}")

    def who(self) -> dict[str, Any]:
        """Users (connections, gateways: the table's meta) and rooms (members), cluster-wide."""
        users: dict[str, dict[str, Any]] = {}
        for sub in self.node.subscribers():
            if sub.name.startswith("user:"):
                user = users.setdefault(sub.name[5:], {"connections": 0, "gateways": []})
                user["connections"] += 1
                user["gateways"] = sorted({*user["gateways"], str(sub.meta.get("gateway"))})
                if sub.meta.get("status", "available") != "available":
                    user["status"] = sub.meta["status"]  # one of its connections' status
        return {"users": dict(sorted(users.items())),
                "rooms": {room: sorted(counts) for room, counts in sorted(self.members.items())
                          if room != self.EVERYONE}}

    async def presence(self) -> AsyncIterator[Presence]:
        """Who comes and goes, in the chat or a room, on any gateway, and their status."""
        while True:
            stream = self.node.events()
            for change in self._recount():  # the table as the stream starts: nothing missed
                yield change
            async for event in stream:
                if stream.dropped:  # we fell behind (a huge snapshot): count the table again
                    await stream.aclose()
                    break
                if isinstance(event, SubscriberUpdated):
                    if (sub := event.subscriber).name.startswith("user:"):
                        status = str(sub.meta.get("status", "available"))
                        yield Presence(sub.name[5:], True, status=status)
                elif isinstance(event, SubscriberUp | SubscriberDown):
                    up, where = isinstance(event, SubscriberUp), _where(event.subscriber)
                    if where is not None and _bump(self.members, *where, up):
                        yield Presence(where[1], up, where[0] or None)
            else:
                return  # the node closed

    def _recount(self) -> list[Presence]:
        """Count the table anew; what changed since the last counts."""
        members: dict[str, collections.Counter[str]] = {}
        for room, user in filter(None, map(_where, self.node.subscribers())):
            members.setdefault(room, collections.Counter())[user] += 1
        old, self.members = self.members, members
        return [Presence(user, user in members.get(room, ()), room or None)
                for room in members.keys() | old.keys()
                for user in members.get(room, {}).keys() ^ old.get(room, {}).keys()]


def _take(msg: Message, deliver: Deliver, room: bool) -> None:  # sync: runs as msg arrives
    if isinstance(msg.body, Speak | Whisper | Say) and isinstance(msg.body, Say) == room:
        deliver(msg.body)


def _where(sub: Subscriber) -> tuple[str, str] | None:  # its room and user in Chat.members
    kind, _, key = sub.name.partition(":")
    if kind == "user":
        return Chat.EVERYONE, key
    return (key, str(sub.meta.get("user"))) if kind == "room" else None


def _bump(members: dict[str, collections.Counter[str]], room: str, user: str, up: bool) -> bool:
    """One subscriber of ``user`` in ``room`` more or less; True if the user came or went."""
    counts = members.setdefault(room, collections.Counter())
    counts[user] += 1 if up else -1
    if counts[user] > 0:
        return up and counts[user] == 1
    went = counts.pop(user) == 0
    if not counts:
        del members[room]
    return went
