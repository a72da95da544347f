"""Events a node reports through ``Node.events()``, and the items of its replicated table."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber as the replicated table knows it."""

    name: str
    node_id: str
    """Hex id of the node the subscriber lives on."""
    meta: dict[str, Any]
    local: bool = False
    """True when it lives on the node that answered."""


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer as this node sees it; ``state`` is ``"alive"`` or ``"suspect"``."""

    node_id: str
    endpoint: str
    name: str
    state: str
    incarnation: int
    rtt_s: float | None = None
    """Round trip to it and back through both event loops, smoothed (None: not measured yet)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PeerUp:
    """A peer joined (or restarted with a new incarnation)."""

    peer: PeerInfo


@dataclasses.dataclass(frozen=True, slots=True)
class PeerDown:
    """A peer left: ``reason`` is ``"bye"`` (it closed), ``"timeout"`` (declared dead: its
    redial was refused, it was unreachable for ``unreachable_after_s``, or its loop was silent
    for ``dead_after_s``), ``"replaced"`` (a new incarnation or a new node on its endpoint) or
    ``"refused"`` (it refused us: another cluster or protocol version)."""

    peer: PeerInfo
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriberUp:
    """A subscriber appeared in the table, local or remote."""

    subscriber: Subscriber


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriberDown:
    """A subscriber left the table (unsubscribed, or its node is gone)."""

    subscriber: Subscriber


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriberUpdated:
    """A subscriber's meta was replaced (``Subscription.update_meta``), local or remote: the
    same subscriber (name, node) with its new meta; ``old_meta`` is the one it replaced."""

    subscriber: Subscriber
    old_meta: dict[str, Any]


Event = PeerUp | PeerDown | SubscriberUp | SubscriberDown | SubscriberUpdated
