"""The subscription table: our own subscribers with a version, and every peer's replica.

Our table changes only through ``add_local``/``update_local``/``remove_local``; each change
bumps ``version`` and yields one DELTA record for every peer (an update is an addition of a
sub id the peer holds, with the same name and the new meta). A peer's replica changes only
through its HELLO, SNAPSHOT and DELTA records: a delta that is not exactly the next version is
a gap (ask for a snapshot) or a duplicate (ignore). ``purge`` forgets a dead or replaced node.
Every change is reported as ``SubscriberUp``/``SubscriberUpdated``/``SubscriberDown`` events.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator

from .events import Subscriber, SubscriberDown, SubscriberUp, SubscriberUpdated
from .wire import Delta, Entry, Meta

TableEvent = SubscriberUp | SubscriberDown | SubscriberUpdated


class DeltaOutcome(enum.Enum):
    """What applying a peer's delta did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    GAP = "gap"
    """Not the next version (or another incarnation): the caller asks for a snapshot."""


@dataclasses.dataclass(slots=True)
class Replica:
    """What we know of one peer's table."""

    node_id: bytes
    hex: str
    incarnation: int
    version: int
    entries: dict[int, tuple[str, Meta]]
    snapshot_requested_at: float | None = None


class Table:
    """Our subscribers and the replicas of our peers' subscribers, indexed by name."""

    def __init__(self, node_id: bytes, incarnation: int) -> None:
        self.node_id = node_id
        self.hex = node_id.hex()
        self.incarnation = incarnation
        self.version = 0
        self._next_sub_id = 1
        self.local: dict[int, tuple[str, Meta]] = {}
        """Our subscribers: sub_id -> (name, meta), in subscription order."""
        self.local_by_name: dict[str, list[int]] = {}
        self.replicas: dict[bytes, Replica] = {}
        self.remote_by_name: dict[str, dict[bytes, dict[int, Meta]]] = {}
        """name -> node -> sub_id -> meta, for every remote subscriber."""
        self.changes = 0
        """Grows at every subscriber added or removed, ours or a peer's: what was computed
        from the table at one value still holds while it is unchanged (a meta update does
        not count: plans do not depend on meta)."""

    # --- our own table ----------------------------------------------------------------------

    def add_local(self, name: str, meta: Meta) -> tuple[int, Delta, TableEvent]:
        """Add one of our subscribers; returns its id, the delta for peers and the event."""
        sub_id = self._next_sub_id
        self._next_sub_id += 1
        self.version += 1
        self.changes += 1
        self.local[sub_id] = (name, meta)
        self.local_by_name.setdefault(name, []).append(sub_id)
        delta = Delta(self.incarnation, self.version, sub_id, name, meta)
        return sub_id, delta, SubscriberUp(Subscriber(name, self.hex, meta, local=True))

    def remove_local(self, sub_id: int) -> tuple[Delta, TableEvent] | None:
        """Remove one of our subscribers; None if it was already gone."""
        entry = self.local.pop(sub_id, None)
        if entry is None:
            return None
        name, meta = entry
        ids = self.local_by_name[name]
        ids.remove(sub_id)
        if not ids:
            del self.local_by_name[name]
        self.version += 1
        self.changes += 1
        delta = Delta(self.incarnation, self.version, sub_id, None, None)
        return delta, SubscriberDown(Subscriber(name, self.hex, meta, local=True))

    def update_local(self, sub_id: int, meta: Meta) -> tuple[Delta, TableEvent] | None:
        """Replace the meta of one of our subscribers; None (no change, no delta) if it is
        gone or already has that meta."""
        entry = self.local.get(sub_id)
        if entry is None or entry[1] == meta:
            return None
        name, old = entry
        self.local[sub_id] = (name, meta)
        self.version += 1
        delta = Delta(self.incarnation, self.version, sub_id, name, meta)
        return delta, SubscriberUpdated(Subscriber(name, self.hex, meta, local=True), old)

    def snapshot(self) -> list[Entry]:
        """Our whole table, for a HELLO or SNAPSHOT record."""
        return [(sub_id, name, meta) for sub_id, (name, meta) in self.local.items()]

    # --- replicas of peers ------------------------------------------------------------------

    def replace(self, node_id: bytes, incarnation: int, version: int,
                entries: Iterable[Entry]) -> list[TableEvent]:
        """Set a peer's replica from a HELLO or SNAPSHOT; stale snapshots change nothing."""
        replica = self.replicas.get(node_id)
        if replica is None:
            replica = Replica(node_id, node_id.hex(), incarnation, version, {})
            self.replicas[node_id] = replica
        elif replica.incarnation == incarnation and version < replica.version:
            return []
        elif replica.incarnation != incarnation:
            purged = self.purge(node_id)
            return purged + self.replace(node_id, incarnation, version, entries)
        new = {sub_id: (name, meta) for sub_id, name, meta in entries}
        events: list[TableEvent] = []
        updates: list[tuple[int, Meta]] = []
        for sub_id, (name, meta) in list(replica.entries.items()):
            now = new.get(sub_id)
            if now is None or now[0] != name:
                events.append(self._remove_remote(replica, sub_id))
            elif now[1] != meta:
                updates.append((sub_id, now[1]))
        for sub_id, meta in updates:
            events.append(self._update_remote(replica, sub_id, meta))
        for sub_id, (name, meta) in new.items():
            if sub_id not in replica.entries:
                events.append(self._add_remote(replica, sub_id, name, meta))
        replica.version = version
        replica.snapshot_requested_at = None
        return events

    def apply_delta(self, node_id: bytes, delta: Delta) -> tuple[DeltaOutcome, list[TableEvent]]:
        """Apply a peer's delta if it is the next one."""
        replica = self.replicas.get(node_id)
        if replica is None or delta.incarnation != replica.incarnation:
            return DeltaOutcome.GAP, []
        if delta.version <= replica.version:
            return DeltaOutcome.DUPLICATE, []
        if delta.version != replica.version + 1:
            return DeltaOutcome.GAP, []
        replica.version = delta.version
        if delta.name is None:
            if delta.sub_id not in replica.entries:
                return DeltaOutcome.APPLIED, []
            return DeltaOutcome.APPLIED, [self._remove_remote(replica, delta.sub_id)]
        meta = delta.meta or {}
        held = replica.entries.get(delta.sub_id)
        if held is not None and held[0] == delta.name:  # an update of its meta
            if held[1] == meta:
                return DeltaOutcome.APPLIED, []
            return DeltaOutcome.APPLIED, [self._update_remote(replica, delta.sub_id, meta)]
        events: list[TableEvent] = []
        if held is not None:  # the same sub id under another name: not ours to send, but valid
            events.append(self._remove_remote(replica, delta.sub_id))
        events.append(self._add_remote(replica, delta.sub_id, delta.name, meta))
        return DeltaOutcome.APPLIED, events

    def purge(self, node_id: bytes) -> list[TableEvent]:
        """Forget everything of a dead or replaced peer."""
        replica = self.replicas.get(node_id)
        if replica is None:
            return []
        events = [self._remove_remote(replica, sub_id) for sub_id in list(replica.entries)]
        del self.replicas[node_id]
        return events

    def _add_remote(self, replica: Replica, sub_id: int, name: str, meta: Meta) -> TableEvent:
        replica.entries[sub_id] = (name, meta)
        self.changes += 1
        self.remote_by_name.setdefault(name, {}).setdefault(replica.node_id, {})[sub_id] = meta
        return SubscriberUp(Subscriber(name, replica.hex, meta))

    def _update_remote(self, replica: Replica, sub_id: int, meta: Meta) -> TableEvent:
        """Replace the meta of a held subscriber, in place (its place in ``lookup`` stays);
        ``changes`` does not grow: plans do not depend on meta."""
        name, old = replica.entries[sub_id]
        replica.entries[sub_id] = (name, meta)
        self.remote_by_name[name][replica.node_id][sub_id] = meta
        return SubscriberUpdated(Subscriber(name, replica.hex, meta), old)

    def _remove_remote(self, replica: Replica, sub_id: int) -> TableEvent:
        name, meta = replica.entries.pop(sub_id)
        self.changes += 1
        by_node = self.remote_by_name[name]
        subs = by_node[replica.node_id]
        del subs[sub_id]
        if not subs:
            del by_node[replica.node_id]
            if not by_node:
                del self.remote_by_name[name]
        return SubscriberDown(Subscriber(name, replica.hex, meta))

    # --- questions ----------------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        """Every name with at least one subscriber, local or remote (each once)."""
        yield from self.local_by_name
        for name in self.remote_by_name:
            if name not in self.local_by_name:
                yield name

    def lookup(self, name: str) -> list[Subscriber]:
        """Every subscriber of ``name``: ours first, then by node."""
        found = [
            Subscriber(name, self.hex, self.local[sub_id][1], local=True)
            for sub_id in self.local_by_name.get(name, ())
        ]
        for node_id, subs in self.remote_by_name.get(name, {}).items():
            node_hex = self.replicas[node_id].hex
            found.extend(Subscriber(name, node_hex, meta) for meta in subs.values())
        return found

    def count(self, name: str) -> int:
        """How many subscribers of ``name`` are known, local and remote."""
        total = len(self.local_by_name.get(name, ()))
        for subs in self.remote_by_name.get(name, {}).values():
            total += len(subs)
        return total

    def all(self) -> list[Subscriber]:
        """Every known subscriber."""
        found: list[Subscriber] = []
        for name in self.names():
            found.extend(self.lookup(name))
        return found

    def size(self) -> int:
        """Number of known subscribers, local and remote."""
        return len(self.local) + sum(len(r.entries) for r in self.replicas.values())
