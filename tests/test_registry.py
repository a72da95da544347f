"""registry.py: our versioned table, the replicas of peers' tables, and replication by deltas."""

from __future__ import annotations

import collections
import copy
import itertools
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from smartroute.events import Subscriber, SubscriberDown, SubscriberUp, SubscriberUpdated
from smartroute.registry import DeltaOutcome, Replica, Table, TableEvent
from smartroute.wire import Delta, Snapshot

ME = b"\x01" * 16
PEER = b"\x02" * 16
OTHER = b"\x03" * 16


def up(name: str, node: bytes, meta: dict[str, Any] | None = None,
       local: bool = False) -> SubscriberUp:
    return SubscriberUp(Subscriber(name, node.hex(), meta or {}, local))


def down(name: str, node: bytes, meta: dict[str, Any] | None = None,
         local: bool = False) -> SubscriberDown:
    return SubscriberDown(Subscriber(name, node.hex(), meta or {}, local))


def updated(name: str, node: bytes, meta: dict[str, Any], old: dict[str, Any],
            local: bool = False) -> SubscriberUpdated:
    return SubscriberUpdated(Subscriber(name, node.hex(), meta, local), old)


@pytest.fixture
def table() -> Table:
    return Table(ME, incarnation=5)


# --- our own table ------------------------------------------------------------------------------

def test_each_local_change_bumps_the_version_and_yields_a_delta(table: Table) -> None:
    sub1, delta1, event1 = table.add_local("user:alice", {"nick": "A"})
    sub2, delta2, _ = table.add_local("user:alice", {})
    assert (sub1, sub2) == (1, 2)
    assert delta1 == Delta(5, 1, sub1, "user:alice", {"nick": "A"})
    assert delta2 == Delta(5, 2, sub2, "user:alice", {})
    assert event1 == up("user:alice", ME, {"nick": "A"}, local=True)

    removed = table.remove_local(sub1)
    assert removed == (Delta(5, 3, sub1, None, None), down("user:alice", ME, {"nick": "A"}, True))
    assert table.version == 3
    assert table.snapshot() == [(sub2, "user:alice", {})]


def test_removing_a_gone_subscriber_changes_nothing(table: Table) -> None:
    sub, _, _ = table.add_local("x", {})
    assert table.remove_local(sub) is not None
    assert table.remove_local(sub) is None
    assert table.remove_local(99) is None
    assert table.version == 2
    assert table.lookup("x") == []
    assert list(table.names()) == []


def test_a_meta_update_bumps_the_version_and_yields_an_addition_of_the_same_sub_id(
        table: Table) -> None:
    sub, _, _ = table.add_local("user:alice", {"status": "online"})
    other, _, _ = table.add_local("room:1", {})
    changes = table.changes
    assert table.update_local(sub, {"status": "away"}) == (
        Delta(5, 3, sub, "user:alice", {"status": "away"}),
        updated("user:alice", ME, {"status": "away"}, {"status": "online"}, local=True))
    assert table.version == 3
    assert table.snapshot() == [(sub, "user:alice", {"status": "away"}), (other, "room:1", {})]
    assert table.lookup("user:alice") == [
        Subscriber("user:alice", ME.hex(), {"status": "away"}, local=True)]
    assert table.changes == changes  # nothing planned depends on meta


def test_an_update_to_the_same_meta_or_of_a_gone_subscriber_changes_nothing(
        table: Table) -> None:
    sub, _, _ = table.add_local("x", {"k": 1})
    assert table.update_local(sub, {"k": 1}) is None
    table.remove_local(sub)
    assert table.update_local(sub, {"k": 2}) is None
    assert table.update_local(99, {"k": 2}) is None
    assert table.version == 2
    assert table.lookup("x") == []


def test_sub_ids_are_never_reused(table: Table) -> None:
    first, _, _ = table.add_local("x", {})
    table.remove_local(first)
    second, _, _ = table.add_local("x", {})
    assert second != first


def test_snapshot_lists_our_subscribers_in_subscription_order(table: Table) -> None:
    ids = [table.add_local(name, {"i": i})[0] for i, name in enumerate(["b", "a", "b"])]
    assert table.snapshot() == [(ids[0], "b", {"i": 0}), (ids[1], "a", {"i": 1}),
                                (ids[2], "b", {"i": 2})]


# --- replicas -----------------------------------------------------------------------------------

def test_replace_creates_a_replica_and_reports_its_subscribers(table: Table) -> None:
    events = table.replace(PEER, 9, 4, [(1, "a", {"k": 1}), (2, "b", {})])
    assert events == [up("a", PEER, {"k": 1}), up("b", PEER)]
    assert table.replicas[PEER].version == 4
    assert table.lookup("a") == [Subscriber("a", PEER.hex(), {"k": 1})]


def test_replace_reports_only_the_differences(table: Table) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {}), (2, "b", {}), (3, "c", {"v": 1}), (5, "e", {})])
    events = table.replace(PEER, 9, 7, [(1, "a", {}), (3, "c", {"v": 2}), (4, "d", {}),
                                        (5, "e2", {})])
    # A changed meta is an update; a sub id under another name left and came back.
    assert events == [down("b", PEER), down("e", PEER), updated("c", PEER, {"v": 2}, {"v": 1}),
                      up("d", PEER), up("e2", PEER)]
    assert sorted(s.name for s in table.all()) == ["a", "c", "d", "e2"]
    assert table.lookup("c") == [Subscriber("c", PEER.hex(), {"v": 2})]
    assert table.replicas[PEER].version == 7


def test_a_stale_snapshot_changes_nothing(table: Table) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {})])
    assert table.replace(PEER, 9, 3, [(2, "old", {})]) == []
    assert table.replicas[PEER].version == 4
    assert [s.name for s in table.all()] == ["a"]


def test_a_snapshot_of_another_incarnation_replaces_everything(table: Table) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {})])
    events = table.replace(PEER, 10, 1, [(1, "a", {})])
    assert events == [down("a", PEER), up("a", PEER)]
    assert table.replicas[PEER].incarnation == 10
    assert table.replicas[PEER].version == 1


def test_replace_clears_the_pending_snapshot_request(table: Table) -> None:
    table.replace(PEER, 9, 4, [])
    table.replicas[PEER].snapshot_requested_at = 12.5
    table.replace(PEER, 9, 5, [])
    assert table.replicas[PEER].snapshot_requested_at is None


def test_apply_delta_applies_the_next_version_only(table: Table) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {})])
    assert table.apply_delta(PEER, Delta(9, 5, 2, "b", {"m": 1})) == (
        DeltaOutcome.APPLIED, [up("b", PEER, {"m": 1})])
    assert table.apply_delta(PEER, Delta(9, 6, 1, None, None)) == (
        DeltaOutcome.APPLIED, [down("a", PEER)])
    assert [s.name for s in table.all()] == ["b"]
    assert table.replicas[PEER].version == 6


@pytest.mark.parametrize("version", [3, 4])
def test_an_old_delta_is_a_duplicate_and_changes_nothing(table: Table, version: int) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {})])
    assert table.apply_delta(PEER, Delta(9, version, 1, None, None)) == (
        DeltaOutcome.DUPLICATE, [])
    assert table.count("a") == 1
    assert table.replicas[PEER].version == 4


def test_a_delta_after_a_gap_changes_nothing(table: Table) -> None:
    table.replace(PEER, 9, 4, [(1, "a", {})])
    assert table.apply_delta(PEER, Delta(9, 6, 2, "b", {})) == (DeltaOutcome.GAP, [])
    assert table.count("b") == 0
    assert table.replicas[PEER].version == 4


def test_a_delta_of_an_unknown_node_or_incarnation_is_a_gap(table: Table) -> None:
    assert table.apply_delta(PEER, Delta(9, 1, 1, "a", {})) == (DeltaOutcome.GAP, [])
    assert PEER not in table.replicas
    table.replace(PEER, 9, 4, [])
    for incarnation in (8, 10):
        assert table.apply_delta(PEER, Delta(incarnation, 5, 1, "a", {})) == (
            DeltaOutcome.GAP, [])
    assert table.count("a") == 0


def test_a_delta_for_a_known_sub_id_and_name_updates_its_meta_in_place(table: Table) -> None:
    table.replace(PEER, 9, 2, [(1, "a", {"v": 1}), (2, "a", {"v": 9})])
    changes = table.changes
    outcome, events = table.apply_delta(PEER, Delta(9, 3, 1, "a", {"v": 2}))
    assert (outcome, events) == (DeltaOutcome.APPLIED, [updated("a", PEER, {"v": 2}, {"v": 1})])
    # In place: it keeps its place among the subscribers of the name.
    assert table.lookup("a") == [Subscriber("a", PEER.hex(), {"v": 2}),
                                 Subscriber("a", PEER.hex(), {"v": 9})]
    assert table.changes == changes
    assert table.apply_delta(PEER, Delta(9, 4, 1, "a", {"v": 2})) == (DeltaOutcome.APPLIED, [])
    assert table.replicas[PEER].version == 4


def test_an_update_loses_to_a_later_removal_and_an_older_one_is_a_duplicate(
        table: Table) -> None:
    table.replace(PEER, 9, 1, [(1, "a", {"v": 1})])
    assert table.apply_delta(PEER, Delta(9, 2, 1, "a", {"v": 2}))[0] is DeltaOutcome.APPLIED
    assert table.apply_delta(PEER, Delta(9, 3, 1, None, None)) == (
        DeltaOutcome.APPLIED, [down("a", PEER, {"v": 2})])
    assert table.apply_delta(PEER, Delta(9, 2, 1, "a", {"v": 2})) == (
        DeltaOutcome.DUPLICATE, [])
    assert table.lookup("a") == []


def test_a_delta_for_a_known_sub_id_under_another_name_replaces_it(table: Table) -> None:
    table.replace(PEER, 9, 1, [(1, "a", {"v": 1})])
    outcome, events = table.apply_delta(PEER, Delta(9, 2, 1, "b", {"v": 2}))
    assert (outcome, events) == (DeltaOutcome.APPLIED, [down("a", PEER, {"v": 1}),
                                                        up("b", PEER, {"v": 2})])
    assert table.lookup("a") == []
    assert table.lookup("b") == [Subscriber("b", PEER.hex(), {"v": 2})]


def test_removing_an_unknown_sub_id_still_advances_the_version(table: Table) -> None:
    table.replace(PEER, 9, 1, [])
    assert table.apply_delta(PEER, Delta(9, 2, 7, None, None)) == (DeltaOutcome.APPLIED, [])
    assert table.replicas[PEER].version == 2


def test_purge_forgets_a_node_and_reports_its_subscribers_gone(table: Table) -> None:
    table.add_local("a", {})
    table.replace(PEER, 9, 2, [(1, "a", {}), (2, "b", {})])
    table.replace(OTHER, 3, 1, [(1, "a", {})])
    assert table.purge(PEER) == [down("a", PEER), down("b", PEER)]
    assert PEER not in table.replicas
    assert table.count("a") == 2
    assert table.lookup("b") == []
    assert "b" not in table.remote_by_name
    assert table.purge(PEER) == []
    assert table.apply_delta(PEER, Delta(9, 3, 3, "c", {}))[0] is DeltaOutcome.GAP


def test_lookup_count_all_and_size(table: Table) -> None:
    table.replace(PEER, 9, 3, [(1, "room", {"p": 1}), (2, "room", {"p": 2}), (3, "solo", {})])
    table.add_local("room", {"me": True})
    table.replace(OTHER, 3, 1, [(5, "room", {"o": 1})])
    assert table.lookup("room") == [
        Subscriber("room", ME.hex(), {"me": True}, local=True),
        Subscriber("room", PEER.hex(), {"p": 1}),
        Subscriber("room", PEER.hex(), {"p": 2}),
        Subscriber("room", OTHER.hex(), {"o": 1}),
    ]
    assert table.count("room") == 4
    assert table.count("solo") == 1
    assert table.count("nobody") == 0
    assert table.lookup("nobody") == []
    assert sorted(table.names()) == ["room", "solo"]
    assert len(table.all()) == table.size() == 5
    assert {s.name for s in table.all()} == {"room", "solo"}


# --- replication over a lossy channel (stateful) ------------------------------------------------

NAMES = ["a", "b", "c"]
ORIGINS = 2


class Digest(NamedTuple):
    """A heartbeat: the origin's table version at the time it was sent."""

    version: int


class Replication(RuleBasedStateMachine):
    """Origins change; their deltas, snapshots and digests reach a replica through a channel
    that drops, duplicates and reorders. The replica asks a snapshot on GAP or when a digest
    says it is behind, as the protocol does."""

    table_class: type[Table] = Table

    def __init__(self) -> None:
        super().__init__()
        self.origins = [Table(bytes([0x10 + i]) * 16, incarnation=7 + i) for i in range(ORIGINS)]
        self.replica = self.table_class(b"\xee" * 16, incarnation=1)
        self.history: list[dict[int, dict[int, tuple[str, dict[str, Any]]]]] = [
            {0: {}} for _ in self.origins]
        self.channel: list[tuple[int, Delta | Snapshot | Digest]] = []
        self.wants_snapshot = [False] * ORIGINS
        self.highest_version = [-1] * ORIGINS
        self.mirror: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.metas = itertools.count()

    # The origin side.

    @initialize()
    def hellos(self) -> None:
        for i, origin in enumerate(self.origins):
            self.channel.append((i, self._snapshot_of(origin)))

    @rule(i=st.integers(0, ORIGINS - 1), name=st.sampled_from(NAMES))
    def subscribe(self, i: int, name: str) -> None:
        _, delta, _ = self.origins[i].add_local(name, {"m": next(self.metas)})
        self._sent(i, delta)

    @rule(i=st.integers(0, ORIGINS - 1), data=st.data())
    def unsubscribe(self, i: int, data: st.DataObject) -> None:
        origin = self.origins[i]
        if not origin.local:
            return
        removed = origin.remove_local(data.draw(st.sampled_from(sorted(origin.local))))
        assert removed is not None
        self._sent(i, removed[0])

    @rule(i=st.integers(0, ORIGINS - 1), data=st.data())
    def update_meta(self, i: int, data: st.DataObject) -> None:
        origin = self.origins[i]
        if not origin.local:
            return
        changed = origin.update_local(data.draw(st.sampled_from(sorted(origin.local))),
                                      {"m": next(self.metas)})
        assert changed is not None
        self._sent(i, changed[0])

    @rule(i=st.integers(0, ORIGINS - 1))
    def digest(self, i: int) -> None:
        self.channel.append((i, Digest(self.origins[i].version)))

    @rule(i=st.integers(0, ORIGINS - 1), lost=st.booleans())
    def answer_snapshot_request(self, i: int, lost: bool) -> None:
        if self.wants_snapshot[i]:
            self.wants_snapshot[i] = False
            if not lost:
                self.channel.append((i, self._snapshot_of(self.origins[i])))

    # The channel.

    @precondition(lambda self: self.channel)
    @rule(k=st.integers(0, 50))
    def deliver(self, k: int) -> None:
        i, item = self.channel.pop(k % len(self.channel))  # any item: reordering
        self._receive(i, item)

    @precondition(lambda self: self.channel)
    @rule()
    def deliver_oldest(self) -> None:
        self._receive(*self.channel.pop(0))

    @precondition(lambda self: self.channel)
    @rule(k=st.integers(0, 50))
    def drop(self, k: int) -> None:
        self.channel.pop(k % len(self.channel))

    @precondition(lambda self: self.channel)
    @rule(k=st.integers(0, 50))
    def duplicate(self, k: int) -> None:
        self.channel.append(self.channel[k % len(self.channel)])

    # Checks.

    @invariant()
    def replica_is_the_origin_as_it_was_at_the_replica_version(self) -> None:
        for i, origin in enumerate(self.origins):
            replica = self.replica.replicas.get(origin.node_id)
            if replica is None:
                continue
            assert replica.incarnation == origin.incarnation
            assert replica.entries == self.history[i][replica.version]
            assert replica.version >= self.highest_version[i], "the replica went back in time"
            self.highest_version[i] = replica.version

    @invariant()
    def lookups_and_events_agree_with_the_replicas(self) -> None:
        expected: collections.Counter[tuple[str, str, int]] = collections.Counter(
            (r.hex, name, meta["m"]) for r in self.replica.replicas.values()
            for name, meta in r.entries.values())
        looked_up = collections.Counter(
            (s.node_id, s.name, s.meta["m"]) for name in NAMES for s in self.replica.lookup(name))
        assert looked_up == expected
        assert self.mirror == expected, "SubscriberUp/Updated/Down events disagree with the table"
        assert self.replica.size() == sum(expected.values())
        for name in NAMES:
            assert self.replica.count(name) == len(self.replica.lookup(name))

    @invariant()
    def a_digest_repair_makes_the_replica_equal_to_the_origin(self) -> None:
        repaired = copy.deepcopy(self.replica)
        for origin in self.origins:
            replica = repaired.replicas.get(origin.node_id)
            if replica is None or replica.version < origin.version:  # the digest says behind
                repaired.replace(origin.node_id, origin.incarnation, origin.version,
                                 origin.snapshot())
        for origin in self.origins:
            assert repaired.replicas[origin.node_id].entries == origin.local
            for name in NAMES:
                seen = sorted(s.meta["m"] for s in repaired.lookup(name)
                              if s.node_id == origin.hex)
                own = sorted(meta["m"] for n, meta in origin.local.values() if n == name)
                assert seen == own

    # Helpers.

    def _snapshot_of(self, origin: Table) -> Snapshot:
        return Snapshot(origin.incarnation, origin.version, origin.snapshot())

    def _sent(self, i: int, delta: Delta) -> None:
        self.history[i][delta.version] = dict(self.origins[i].local)
        self.channel.append((i, delta))

    def _receive(self, i: int, item: Delta | Snapshot | Digest) -> None:
        node_id = self.origins[i].node_id
        events: list[TableEvent] = []
        if isinstance(item, Delta):
            outcome, events = self.replica.apply_delta(node_id, item)
            if outcome is DeltaOutcome.GAP:
                self.wants_snapshot[i] = True
        elif isinstance(item, Snapshot):
            events = self.replica.replace(node_id, item.incarnation, item.version, item.entries)
        else:
            replica = self.replica.replicas.get(node_id)
            if replica is None or replica.version < item.version:
                self.wants_snapshot[i] = True
        for event in events:
            key = (event.subscriber.node_id, event.subscriber.name, event.subscriber.meta["m"])
            if isinstance(event, SubscriberUpdated):
                self._mirror((key[0], key[1], event.old_meta["m"]), -1)
                self._mirror(key, +1)
            else:
                self._mirror(key, 1 if isinstance(event, SubscriberUp) else -1)

    def _mirror(self, key: tuple[str, str, int], change: int) -> None:
        self.mirror[key] += change
        assert self.mirror[key] >= 0, f"a subscriber gone (or updated) before it came: {key}"
        if self.mirror[key] == 0:
            del self.mirror[key]


REPLICATION_SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])
TestReplication = Replication.TestCase
TestReplication.settings = REPLICATION_SETTINGS


class GapAsApplied(Table):
    """A broken table that applies any newer delta, as if a GAP were APPLIED."""

    def apply_delta(self, node_id: bytes, delta: Delta) -> tuple[DeltaOutcome, list[TableEvent]]:
        replica = self.replicas.get(node_id)
        if replica is not None and delta.version > replica.version + 1:
            replica.version = delta.version - 1
        return super().apply_delta(node_id, delta)


class DuplicateAsApplied(Table):
    """A broken table that re-applies old deltas."""

    def apply_delta(self, node_id: bytes, delta: Delta) -> tuple[DeltaOutcome, list[TableEvent]]:
        replica = self.replicas.get(node_id)
        if replica is not None and delta.incarnation == replica.incarnation:
            replica.version = delta.version - 1
        return super().apply_delta(node_id, delta)


class UpdateAsAddition(Table):
    """A broken table that takes an update for a new subscriber (the old meta stays too)."""

    def _update_remote(self, replica: Replica, sub_id: int, meta: dict[str, Any]) -> TableEvent:
        name, _ = replica.entries[sub_id]
        return self._add_remote(replica, sub_id + 1_000_000, name, meta)


class UpdateWithoutEvent(Table):
    """A broken table that updates its meta but reports nothing."""

    def _update_remote(self, replica: Replica, sub_id: int, meta: dict[str, Any]) -> TableEvent:
        event = super()._update_remote(replica, sub_id, meta)
        return SubscriberUpdated(event.subscriber, event.subscriber.meta)


@pytest.mark.parametrize("broken", [GapAsApplied, DuplicateAsApplied, UpdateAsAddition,
                                    UpdateWithoutEvent])
def test_the_replication_machine_catches_a_broken_table(broken: type[Table]) -> None:
    machine = type(f"Broken{broken.__name__}", (Replication,), {"table_class": broken})
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=settings(
            REPLICATION_SETTINGS, max_examples=300, database=None,
            phases=[Phase.generate], print_blob=False))
