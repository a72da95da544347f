"""protocol.py: several Protocol instances wired together in memory, with a fake clock."""

from __future__ import annotations

import collections

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartroute import wire
from smartroute.config import REFUSALS_PER_S, Limits, Timings
from smartroute.endpoints import resolve_endpoint
from smartroute.errors import UsageError
from smartroute.events import PeerUp, Subscriber, SubscriberDown, SubscriberUp, SubscriberUpdated
from smartroute.membership import PeerState
from smartroute.messages import decode_body, encode_body
from smartroute.modes import ReceiveMode
from smartroute.protocol import Deliver, Protocol, ReplyArrived
from smartroute.streams import Outbox
from smartroute.testing.memnet import Host, MemNet, msg, send

TIMINGS = Timings()
DEAD_AFTER_S = TIMINGS.dead_after_s
TICK_S = TIMINGS.tick_interval_s
SUSPECT_AFTER_S = TIMINGS.suspect_after_s
UNREACHABLE_AFTER_S = TIMINGS.unreachable_after_s


@pytest.fixture
def net() -> MemNet:
    return MemNet(timings=TIMINGS)


# --- joining --------------------------------------------------------------------------------------

def test_one_hint_is_enough_for_a_handshake(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    a.protocol.hint(b.endpoint, net.now)
    net.flush()
    assert a.peers() == {b.node_id}
    assert b.peers() == {a.node_id}
    [up] = a.of(PeerUp)
    assert (up.peer.node_id, up.peer.endpoint, up.peer.name, up.peer.state) == (
        b.hex, b.endpoint, "b", "alive")
    assert b.ups() == [a.hex]
    # One link each way, nothing left dangling.
    assert len(a.protocol.links) == len(b.protocol.links) == 1
    assert len(net.records(wire.Hello)) == 2


def test_hints_from_both_sides_at_once_make_one_link_each_way(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    a.protocol.hint(b.endpoint, net.now)
    b.protocol.hint(a.endpoint, net.now)
    net.flush()
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}
    assert len(a.protocol.links) == len(b.protocol.links) == 1
    assert a.ups() == [b.hex] and b.ups() == [a.hex]


def test_a_hint_for_a_known_peer_or_ourselves_dials_nothing(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    a.protocol.hint(b.endpoint, net.now)
    a.protocol.hint(a.endpoint, net.now)
    assert a.protocol.data_to_send().dials == []


def test_peer_exchange_joins_the_whole_mesh(net: MemNet) -> None:
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    b.protocol.hint(a.endpoint, net.now)
    net.flush()
    c.protocol.hint(b.endpoint, net.now)  # c only knows b; b only knew a
    net.flush()
    assert a.peers() == {b.node_id, c.node_id}
    assert b.peers() == {a.node_id, c.node_id}
    assert c.peers() == {a.node_id, b.node_id}
    for host in (a, b, c):
        assert len(host.protocol.links) == 2, f"{host.name} leaks links"


def test_six_nodes_hinted_with_one_seed_at_once_form_a_full_mesh(net: MemNet) -> None:
    seed = net.add("seed")
    others = [net.add(f"n{i}") for i in range(5)]
    for host in others:
        host.protocol.hint(seed.endpoint, net.now)
    net.flush()
    everyone = {h.node_id for h in [seed, *others]}
    for host in [seed, *others]:
        assert host.peers() == everyone - {host.node_id}, host.name
        assert len(host.protocol.links) == 5
        assert len(host.ups()) == 5


# --- the replicated table -------------------------------------------------------------------------

def test_a_subscription_is_replicated_to_every_peer(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    sub = a.protocol.subscribe("user:alice", {"nick": "Alice"}, net.now)
    net.flush()
    for host in (b, c):
        assert host.protocol.table.lookup("user:alice") == [
            Subscriber("user:alice", a.hex, {"nick": "Alice"})]
        assert SubscriberUp(Subscriber("user:alice", a.hex, {"nick": "Alice"})) in host.events
    assert a.protocol.table.lookup("user:alice") == [
        Subscriber("user:alice", a.hex, {"nick": "Alice"}, local=True)]

    a.protocol.unsubscribe(sub, net.now)
    net.flush()
    for host in (a, b, c):
        assert host.protocol.table.lookup("user:alice") == []
    assert SubscriberDown(Subscriber("user:alice", a.hex, {"nick": "Alice"})) in b.events


def test_a_meta_update_reaches_every_peer_as_one_delta_and_an_update_event(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    sub = a.protocol.subscribe("user:alice", {"status": "online"}, net.now)
    net.flush()
    sent = len(net.records(wire.Delta, src=a))
    a.protocol.update_meta(sub, {"status": "away"}, net.now)
    net.flush()
    assert net.records(wire.Delta, src=a)[sent:] == [
        wire.Delta(a.protocol.incarnation, 2, sub, "user:alice", {"status": "away"})] * 2
    for host in (b, c):
        assert host.protocol.table.lookup("user:alice") == [
            Subscriber("user:alice", a.hex, {"status": "away"})]
        assert host.of(SubscriberUpdated) == [SubscriberUpdated(
            Subscriber("user:alice", a.hex, {"status": "away"}), {"status": "online"})]
        assert host.of(SubscriberDown) == []
    assert a.of(SubscriberUpdated) == [SubscriberUpdated(
        Subscriber("user:alice", a.hex, {"status": "away"}, local=True), {"status": "online"})]
    a.protocol.update_meta(sub, {"status": "away"}, net.now)  # the same meta: nothing to say
    net.flush()
    assert len(net.records(wire.Delta, src=a)) == sent + 2
    d = net.add("d")
    d.protocol.hint(a.endpoint, net.now)
    net.flush()
    assert d.protocol.table.lookup("user:alice") == [
        Subscriber("user:alice", a.hex, {"status": "away"})]


def test_a_meta_update_whose_delta_never_left_is_repaired_by_the_digest(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    sub = a.protocol.subscribe("user:alice", {"status": "online"}, net.now)
    net.flush()
    a.protocol.table.update_local(sub, {"status": "away"})  # no delta sent: only the digest tells
    net.run(TIMINGS.digest_interval_s + TIMINGS.heartbeat_interval_s)
    assert len(net.records(wire.Snapshot, src=a)) == 1
    assert b.protocol.table.lookup("user:alice") == [
        Subscriber("user:alice", a.hex, {"status": "away"})]
    assert b.of(SubscriberUpdated) == [SubscriberUpdated(
        Subscriber("user:alice", a.hex, {"status": "away"}), {"status": "online"})]
    assert b.of(SubscriberDown) == []


def test_subscriptions_made_before_and_during_the_handshake_arrive(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    a.protocol.subscribe("early", {}, net.now)
    b.protocol.subscribe("b-early", {}, net.now)
    a.protocol.hint(b.endpoint, net.now)
    a.protocol.subscribe("during", {}, net.now)  # queued behind the HELLO on the pending dial
    net.flush()
    assert b.names_seen("early") == b.names_seen("during") == [a.hex]
    assert a.names_seen("b-early") == [b.hex]
    assert b.protocol.counters.snapshot_requests == 0


def test_a_dropped_delta_is_resent_when_the_heartbeat_shows_the_gap(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    net.drop_next(a, b, carrying=wire.Delta)
    a.protocol.subscribe("room:7", {}, net.now)
    net.flush()
    assert [(t.src, t.dst, type(r)) for t in net.log if t.dropped for r in t.records] == [
        ("a", "b", wire.Seq), ("a", "b", wire.Delta)]
    assert c.names_seen("room:7") == [a.hex]
    assert b.names_seen("room:7") == []
    net.run(TIMINGS.heartbeat_interval_s + 2 * TICK_S)
    assert b.names_seen("room:7") == [a.hex]
    # The heartbeat said which batch a sent last: b asked for it again, no snapshot needed.
    assert b.protocol.counters.resend_requests == 1
    assert b.protocol.counters.snapshot_requests == c.protocol.counters.snapshot_requests == 0


def test_a_batch_after_a_lost_one_gets_the_lost_one_resent_at_once(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    net.drop_next(a, b)
    a.protocol.subscribe("x", {}, net.now)
    net.flush()
    a.protocol.subscribe("y", {}, net.now)  # batch 2 of a's stream over 0 taken: a gap
    net.flush()
    assert b.names_seen("x") == b.names_seen("y") == [a.hex]
    # The stream repaired it (no snapshot needed): the gap was asked for and resent.
    assert b.protocol.counters.gap_batches == 1 and b.protocol.counters.resend_requests == 1
    assert a.protocol.counters.retransmitted_batches >= 1
    assert net.records(wire.SnapshotRequest, src=b) == []


def test_a_lost_snapshot_request_is_asked_again(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    net.drop_next(b, a, carrying=wire.SnapshotRequest)
    # A change whose delta never left (the stream has no gap): only the digest can tell.
    a.protocol.table.add_local("room:7", {})
    net.flush()
    net.run(TIMINGS.digest_interval_s + TIMINGS.snapshot_retry_s + TIMINGS.heartbeat_interval_s)
    assert b.names_seen("room:7") == [a.hex]
    assert len(net.records(wire.SnapshotRequest, src=b)) == 2
    assert len(net.records(wire.Snapshot, src=a)) == 1


# --- messages -------------------------------------------------------------------------------------

def test_a_remote_node_gets_one_record_per_send_and_fans_out_locally(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    room = [b.protocol.subscribe("room:7", {}, net.now) for _ in range(3)]
    b.protocol.subscribe("room:8", {}, net.now)
    c.protocol.subscribe("room:8", {}, net.now)
    mine = a.protocol.subscribe("room:7", {}, net.now)
    net.flush()

    plan = send(a.protocol, ReceiveMode.EQ, "room:7", "hello")
    net.flush()
    assert plan.matches == 4
    assert plan.local == [mine]
    assert plan.remote == {b.node_id: None}
    assert len(net.records(wire.Msg, src=a, dst=b)) == 1
    assert net.records(wire.Msg, dst=c) == []
    [deliver] = b.delivered()
    assert deliver.sub_ids == room
    assert deliver.origin == a.hex
    assert decode_body(deliver.msg.body) == "hello"
    assert c.delivered() == []


@pytest.mark.parametrize(("mode", "target", "b_count", "c_count"), [
    (ReceiveMode.NOT_EQ, "room:7", 1, 1),
    (ReceiveMode.ALL, None, 3, 1),
    (ReceiveMode.REGEX, ["^room:", "7$"], 3, 1),
    (ReceiveMode.EQ, ["room:7", "room:8"], 3, 1),
])
def test_every_mode_reaches_exactly_the_matching_remote_subscribers(
        net: MemNet, mode: ReceiveMode, target: str | list[str] | None, b_count: int,
        c_count: int) -> None:
    a, b, c = net.mesh("a", "b", "c")
    for name in ("room:7", "room:7", "room:8"):
        b.protocol.subscribe(name, {}, net.now)
    c.protocol.subscribe("room:8", {}, net.now)
    net.flush()
    plan = send(a.protocol, mode, target)
    net.flush()
    assert plan.matches == b_count + c_count
    assert [len(d.sub_ids) for d in b.delivered()] == [b_count]
    assert [len(d.sub_ids) for d in c.delivered()] == [c_count]
    assert len(net.records(wire.Msg, src=a)) == 2


def test_any_reaches_one_subscriber_per_send_balanced_over_nodes(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    on_b = [b.protocol.subscribe("svc:echo", {}, net.now) for _ in range(2)]
    on_c = c.protocol.subscribe("svc:echo", {}, net.now)
    net.flush()
    for seq in range(6):
        plan = send(a.protocol, ReceiveMode.ANY, "svc:echo", seq=seq)
        assert plan.matches == 1
        net.flush()
    got_b = [d.sub_ids for d in b.delivered()]
    got_c = [d.sub_ids for d in c.delivered()]
    assert sorted(got_b) == [[on_b[0]], [on_b[0]], [on_b[1]], [on_b[1]]]
    assert got_c == [[on_c], [on_c]]


def test_any_falls_back_when_the_chosen_subscriber_left_in_flight(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    first = b.protocol.subscribe("svc", {}, net.now)
    second = b.protocol.subscribe("svc", {}, net.now)
    net.flush()
    plan = send(a.protocol, ReceiveMode.ANY, "svc")
    assert plan.remote == {b.node_id: first}
    b.protocol.unsubscribe(first, net.now)  # a has not heard yet
    net.flush()
    assert [d.sub_ids for d in b.delivered()] == [[second]]


def test_a_request_gets_its_reply(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    echo = b.protocol.subscribe("svc:echo", {}, net.now)
    net.flush()
    send(a.protocol, ReceiveMode.ANY, "svc:echo", "ping", request_id=41)
    net.flush()
    [deliver] = b.delivered()
    assert (deliver.sub_ids, deliver.msg.request_id) == ([echo], 41)
    reply = wire.Reply(41, wire.ReplyStatus.OK, "str", encode_body("pong"))
    assert b.protocol.reply(deliver.origin, *reply, net.now)
    net.flush()
    assert a.of(ReplyArrived) == [ReplyArrived(b.hex, reply)]


def test_a_request_nobody_takes_any_more_is_answered_no_subscriber(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    sub = b.protocol.subscribe("svc:echo", {}, net.now)
    net.flush()
    b.protocol.unsubscribe(sub, net.now)  # a still believes b has it
    send(a.protocol, ReceiveMode.EQ, "svc:echo", request_id=7)
    net.flush()
    assert b.delivered() == []
    [arrived] = a.of(ReplyArrived)
    assert (arrived.origin, arrived.reply.request_id, arrived.reply.status) == (
        b.hex, 7, wire.ReplyStatus.NO_SUBSCRIBER)
    assert b.protocol.counters.undeliverable_messages == 1


def test_a_reply_to_a_gone_node_is_reported_undeliverable(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    a.protocol.close(net.now)
    net.flush()
    assert not b.protocol.reply(a.hex, 1, wire.ReplyStatus.OK, "str", b"\xa0", net.now)


def test_a_dial_nobody_answers_is_given_up_after_connect_timeout_s(net: MemNet) -> None:
    a = net.add("a")
    a.protocol.hint("tcp://nobody:7000", net.now)
    net.flush()
    assert len(a.protocol.links) == 1
    net.run(TIMINGS.connect_timeout_s - TICK_S)
    assert len(a.protocol.links) == 1
    net.run(2 * TICK_S)
    assert a.protocol.links == {}
    a.protocol.hint("tcp://nobody:7000", net.now)  # a later hint may try again
    assert len(a.protocol.data_to_send().dials) == 1


def test_an_unanswered_hello_is_sent_again_after_hello_retry_s(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    net.drop_next(a, b, carrying=wire.Hello)
    a.protocol.hint(b.endpoint, net.now)
    net.run(TIMINGS.hello_retry_s + TICK_S)
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}


def test_a_node_that_reaches_itself_stops_dialling_that_address(net: MemNet) -> None:
    a = net.add("a")
    net.by_endpoint["tcp://10.0.0.1:7000"] = a  # another address of a's own inbox
    a.protocol.hint("tcp://10.0.0.1:7000", net.now)
    net.flush()
    assert a.peers() == set()
    assert a.protocol.links == {}
    a.protocol.hint("tcp://10.0.0.1:7000", net.now)
    assert a.protocol.data_to_send().dials == []


@pytest.mark.parametrize(("endpoint", "address", "resolved"), [
    ("tcp://*:7001", "10.0.0.5", "tcp://10.0.0.5:7001"),
    ("tcp://0.0.0.0:7001", "10.0.0.5", "tcp://10.0.0.5:7001"),
    ("tcp://[::]:7001", "fe80::1", "tcp://[fe80::1]:7001"),
    ("tcp://10.0.0.9:7001", "10.0.0.5", "tcp://10.0.0.9:7001"),
    ("tcp://*:7001", None, "tcp://*:7001"),
])
def test_a_wildcard_endpoint_is_resolved_to_the_address_the_peer_was_seen_from(
        endpoint: str, address: str | None, resolved: str) -> None:
    assert resolve_endpoint(endpoint, address) == resolved


def test_a_peer_advertising_a_wildcard_is_dialled_back_at_its_address(net: MemNet) -> None:
    a, b = net.add("a", endpoint="tcp://*:7001"), net.add("b")
    a.protocol.hint(b.endpoint, net.now)
    out = a.protocol.data_to_send()
    [[batch]] = out.sends.values()
    b.protocol.receive(out.dials[0].routing_id, batch, net.now, lambda: "10.0.0.1")
    assert [p.endpoint for p in b.protocol.membership.peers.values()] == ["tcp://10.0.0.1:7001"]
    assert [d.endpoint for d in b.protocol.data_to_send().dials] == ["tcp://10.0.0.1:7001"]


# --- refusing -------------------------------------------------------------------------------------

def test_a_node_of_another_cluster_is_refused(net: MemNet) -> None:
    a, b = net.add("a", cluster="blue"), net.add("b", cluster="green")
    a.protocol.hint(b.endpoint, net.now)
    net.flush()
    [refuse] = net.records(wire.Refuse, src=b, dst=a)
    assert "cluster" in refuse.reason and refuse.echo == b.endpoint
    assert a.peers() == b.peers() == set()
    assert a.protocol.links == {} and b.protocol.links == {}
    assert a.protocol.counters.refused_peers == b.protocol.counters.refused_peers == 1
    assert a.events == b.events == []
    # The refusal is remembered: no dial storm.
    a.protocol.hint(b.endpoint, net.now + 1)
    assert a.protocol.data_to_send().dials == []


def test_a_node_of_another_protocol_version_is_refused(net: MemNet,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = net.add("a"), net.add("b")
    monkeypatch.setattr(wire, "PROTOCOL_VERSION", wire.PROTOCOL_VERSION + 1)
    a.protocol.hint(b.endpoint, net.now)  # a's HELLO says another version
    monkeypatch.undo()
    net.flush()
    [refuse] = net.records(wire.Refuse, src=b, dst=a)
    assert "protocol version" in refuse.reason
    assert a.peers() == b.peers() == set()
    assert a.protocol.links == {} and b.protocol.links == {}


def test_nodes_of_two_clusters_hinted_at_each_other_settle_without_peers(net: MemNet) -> None:
    a, b = net.add("a", cluster="blue"), net.add("b", cluster="green")
    a.protocol.hint(b.endpoint, net.now)
    b.protocol.hint(a.endpoint, net.now)
    net.flush()
    net.run(1.0)
    assert a.peers() == b.peers() == set()
    assert a.protocol.links == {} and b.protocol.links == {}
    assert len(net.log) <= 4


# --- liveness -------------------------------------------------------------------------------------

def test_a_killed_node_is_dead_as_soon_as_its_port_refuses_the_redial(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    c.protocol.subscribe("room:7", {}, net.now)
    net.flush()
    net.run(1.0)  # a live mesh for a while
    net.crash(c)  # memnet: its connections close, and the redial is refused
    net.run(2 * TICK_S)  # the transport reports it after one tick, the next one decides
    assert a.downs() == b.downs() == [(c.hex, "timeout")]
    for host in (a, b):
        assert host.peers() == {a.node_id, b.node_id} - {host.node_id}
        assert host.names_seen("room:7") == []
        assert SubscriberDown(Subscriber("room:7", c.hex, {})) in host.events
    assert a.peers() == {b.node_id}  # the living stay connected


def test_a_busy_loop_is_not_dead_only_stuck_for_dead_after_s_is(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    net.run(1.0)
    net.stall(b)  # its loop blocks; its connections stay up (libzmq answers pings)
    net.run(DEAD_AFTER_S - TICK_S - 1.0)
    assert a.downs() == []
    assert a.protocol.membership.peers[b.node_id].state is PeerState.SUSPECT
    a.protocol.subscribe("late", {}, net.now)  # waits in b's inbox meanwhile
    net.unstall(b)
    net.run(2 * TICK_S)
    assert a.downs() == [] and b.downs() == []
    assert b.names_seen("late") == [a.hex]
    assert a.protocol.membership.peers[b.node_id].state is PeerState.ALIVE
    net.stall(b)
    net.run(DEAD_AFTER_S + 2 * TICK_S)  # stuck for good
    assert a.downs() == [(b.hex, "timeout")]


def test_an_unreachable_peer_is_dead_after_unreachable_after_s(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    net.run(1.0)
    net.cut(a, b)
    net.cut(b, a)
    link = a.protocol.membership.peers[b.node_id].link
    a.protocol.link_changed(link, "down", net.now)  # libzmq: pings unanswered, connection closed
    net.run(UNREACHABLE_AFTER_S - 2 * TICK_S)
    assert a.downs() == []
    assert a.protocol.membership.peers[b.node_id].state is PeerState.SUSPECT
    net.run(2 * TICK_S)
    assert a.downs() == [(b.hex, "timeout")]


def test_a_connection_back_in_time_keeps_the_peer_and_resends_what_was_lost(
        net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    link = a.protocol.membership.peers[b.node_id].link
    net.cut(a, b)  # a TCP reset: what was in the connection is gone
    for i in range(3):
        send(a.protocol, ReceiveMode.EQ, "sink", i, seq=i + 1)
    net.flush()
    a.protocol.link_changed(link, "down", net.now)
    net.run(UNREACHABLE_AFTER_S / 2)
    net.heal(a, b)
    a.protocol.link_changed(link, "up", net.now)  # reconnected: a resends what b never acked
    net.flush()
    assert [decode_body(d.msg.body) for d in b.delivered()] == [0, 1, 2]
    net.run(1.0)
    assert a.downs() == b.downs() == []
    assert a.protocol.counters.retransmitted_batches >= 1
    assert a.protocol.counters.lost_messages == 0
    assert a.protocol.outboxes[b.node_id].unacked == collections.deque()


def test_heartbeats_echo_each_other_clocks_into_a_round_trip(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    assert a.protocol.membership.peers[b.node_id].rtt_s is None
    net.run(3 * TIMINGS.heartbeat_interval_s)
    # memnet delivers at once: the round trip is 0 whatever each side held the echo for.
    for host, other in ((a, b), (b, a)):
        rtt = host.protocol.membership.peers[other.node_id].info().rtt_s
        assert rtt is not None and abs(rtt) < 1e-5


def test_a_healthy_idle_mesh_has_no_false_deaths(net: MemNet) -> None:
    hosts = net.mesh("a", "b", "c", "d")
    net.run(60.0)
    for host in hosts:
        assert host.downs() == []
        assert len(host.peers()) == 3
        assert all(p.state is PeerState.ALIVE for p in host.protocol.membership.peers.values())
    assert net.records(wire.Heartbeat), "an idle mesh must carry heartbeats"


def test_a_link_the_transport_could_not_open_drops_its_peer_until_a_later_dial(
        net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    net.run(0.5)
    link = a.protocol.membership.peers[b.node_id].link
    a.protocol.dial_failed(link, net.now)  # e.g. no socket or file descriptor left
    net.flush()
    assert a.downs() == [(b.hex, "timeout")]
    assert link not in a.protocol.links
    # Nothing is kept that cannot be reached; the re-dial of a dead peer brings it back.
    net.run(TIMINGS.connect_timeout_s + 1.0)
    assert a.peers() == {b.node_id}


def test_a_stall_of_our_own_loop_is_not_held_against_peers(net: MemNet) -> None:
    """After a blocked loop the timer may run before the inbox is read: the peers' frames
    are waiting there, so their silence is ours and nobody is declared dead."""
    a, b = net.mesh("a", "b")
    net.run(1.0)
    assert a.protocol.stats()["loop_stall_max_ms"] <= 1  # ticks on time (float rounding aside)
    net.now += 5 * DEAD_AFTER_S  # a's loop was blocked: nothing ran, nothing was read
    a.protocol.tick(net.now)  # the timer first, before the waiting heartbeats are handled
    # Measured: the ticks' lateness, the longest so far (stats()["loop_stall_max_ms"]).
    stall_ms = (5 * DEAD_AFTER_S - TICK_S) * 1000
    assert stall_ms - 1 <= a.protocol.stats()["loop_stall_max_ms"] <= stall_ms
    net.flush()
    assert a.downs() == [] and a.peers() == {b.node_id}
    net.run(1.0)
    assert a.downs() == b.downs() == []
    # Silence after the stall still counts.
    net.crash(b)
    net.run(DEAD_AFTER_S + 2 * TICK_S)
    assert a.downs() == [(b.hex, "timeout")]


def test_a_node_declared_dead_that_still_talks_to_us_is_reconnected(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("x", {}, net.now)
    net.flush()
    net.cut(b, a)  # b hears a, a no longer hears b
    net.run(DEAD_AFTER_S + TICK_S)
    assert a.downs() == [(b.hex, "timeout")]
    assert b.downs() == []
    net.heal(b, a)
    net.run(TIMINGS.heartbeat_interval_s + TICK_S)  # b's next heartbeat reaches a
    assert a.peers() == {b.node_id}
    assert a.names_seen("x") == [b.hex]
    assert a.ups() == [b.hex, b.hex]


def test_nodes_that_timed_each_other_out_reconnect_on_the_next_hint(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("x", {}, net.now)
    net.flush()
    b.up = False  # b is paused (a laptop lid, a stopped VM): no ticks, nothing received
    net.run(DEAD_AFTER_S + TICK_S)
    b.up = True
    net.run(TICK_S)  # b's first tick after the pause: a has been silent too long
    assert a.downs() == [(b.hex, "timeout")] and b.downs() == [(a.hex, "timeout")]
    b.protocol.hint(a.endpoint, net.now)  # static discovery hints its seeds again
    net.flush()
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}
    assert a.names_seen("x") == [b.hex]


def test_a_new_stream_whose_start_was_lost_is_asked_from_its_start(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    send(a.protocol, ReceiveMode.EQ, "sink", "old")
    net.flush()
    # a's stream to b starts anew (its outbox expired while b was away); its first batch is
    # lost, and b still follows the old stream.
    del a.protocol.outboxes[b.node_id]
    net.drop_next(a, b)
    send(a.protocol, ReceiveMode.EQ, "sink", 1)
    net.flush()
    send(a.protocol, ReceiveMode.EQ, "sink", 2)
    net.flush()
    assert [decode_body(d.msg.body) for d in b.delivered()] == ["old", 1, 2]
    assert b.protocol.counters.gap_batches >= 1 and a.protocol.counters.retransmitted_batches >= 1


def test_a_partition_longer_than_redial_dead_for_s_still_heals(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("x", {}, net.now)
    net.flush()
    net.cut(a, b)
    net.cut(b, a)
    for host, other in ((a, b), (b, a)):  # libzmq: pings unanswered, the links close
        host.protocol.link_changed(host.protocol.membership.peers[other.node_id].link, "down",
                                net.now)
    net.run(UNREACHABLE_AFTER_S + 2 * TICK_S)
    assert a.downs() == [(b.hex, "timeout")] and b.downs() == [(a.hex, "timeout")]
    net.run(TIMINGS.redial_dead_for_s + 5 * TIMINGS.redial_backoff_max_s)  # a long split
    dials = len(net.records(wire.Hello, src=a))
    net.run(TIMINGS.redial_backoff_max_s)
    # Still dialled, backing off: about one dial per redial_backoff_max_s (HELLO retries
    # within it), not one per connect_timeout_s.
    hellos = len(net.records(wire.Hello, src=a)) - dials
    per_dial = TIMINGS.connect_timeout_s / TIMINGS.hello_retry_s
    assert 1 <= hellos <= 2 * per_dial
    net.heal(a, b)
    net.heal(b, a)
    net.run(TIMINGS.redial_backoff_max_s + TIMINGS.connect_timeout_s)
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}
    assert a.names_seen("x") == [b.hex]


def _split_past_redial_dead_for_s(net: MemNet, a: Host, b: Host) -> None:
    """Cut a and b apart until each has declared the other dead and dropped its stream to
    it, then heal: they meet again, each with a new stream to the other."""
    net.cut(a, b)
    net.cut(b, a)
    for host, other in ((a, b), (b, a)):  # libzmq: pings unanswered, the links close
        host.protocol.link_changed(host.protocol.membership.peers[other.node_id].link, "down",
                                   net.now)
    net.run(UNREACHABLE_AFTER_S + TIMINGS.redial_dead_for_s + 2 * TICK_S)
    assert b.node_id not in a.protocol.outboxes and a.node_id not in b.protocol.outboxes
    net.heal(a, b)
    net.heal(b, a)
    net.run(TIMINGS.redial_backoff_max_s + TIMINGS.connect_timeout_s)
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}


def test_a_late_batch_of_a_stream_its_sender_replaced_is_dropped(net: MemNet) -> None:
    """After a split longer than redial_dead_for_s, a's stream to b is a new one. A copy of
    the old stream's first batch arriving late (a link that lingered) used to switch b back
    to the old stream: its message delivered a second time, and from then on every batch of
    a's current stream a gap to b (the LAN harness's gap and resend livelock after its 90 s
    split). Now it is stale: dropped and counted, and the current stream goes on."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    send(a.protocol, ReceiveMode.EQ, "sink", "before", seq=1)
    net.run(1.0)
    old = a.protocol.outboxes[b.node_id]
    _split_past_redial_dead_for_s(net, a, b)
    send(a.protocol, ReceiveMode.EQ, "sink", "after", seq=2)
    net.run(1.0)
    assert a.protocol.outboxes[b.node_id].stream != old.stream
    late = Outbox(old.stream, old.incarnation, 64, 1 << 20).number(
        [wire.encode_msg(msg("sink", "before", seq=1))])
    b.protocol.receive(a.node_id, late, net.now)
    for i in range(3):
        send(a.protocol, ReceiveMode.EQ, "sink", i, seq=3 + i)
        net.run(0.5)
    assert [decode_body(d.msg.body) for d in b.delivered()] == ["before", "after", 0, 1, 2]
    assert b.protocol.counters.stale_batches == 1
    assert (b.protocol.counters.gap_batches, a.protocol.counters.restarted_streams) == (0, 0)


def test_a_resend_request_carried_again_in_a_resent_batch_sends_nothing_twice(
        net: MemNet) -> None:
    """b asked a to resend (an ACK with resend) inside one of its own sequenced batches; that
    batch was lost and b resent it later, by when b had taken and acknowledged more of a's
    stream. Before, a took the old request for a receiver that had lost its place and
    renumbered what it held into a new stream: b got a's last message twice. Now a stale
    request is ignored (and resend requests travel alone, never sequenced)."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    for i in range(3):
        send(a.protocol, ReceiveMode.EQ, "sink", i, seq=1 + i)
        net.run(0.5)  # taken and acknowledged one by one
    net.cut(b, a)  # b's ACK of the next one is lost
    send(a.protocol, ReceiveMode.EQ, "sink", 3, seq=4)
    net.run(0.5)
    net.heal(b, a)
    stream = a.protocol.outboxes[b.node_id].stream
    assert [sent.seq for sent in a.protocol.outboxes[b.node_id].unacked] == [4]
    stale = b.protocol.outboxes[a.node_id].number([wire.encode_ack(stream, 1, True)])
    a.protocol.receive(b.node_id, stale, net.now)  # b's resent batch, taken by a
    net.run(1.0)
    assert [decode_body(d.msg.body) for d in b.delivered()] == [0, 1, 2, 3]
    assert a.protocol.counters.restarted_streams == 0


def test_an_ack_lost_with_its_connection_is_sent_again_when_the_connection_is_back(
        net: MemNet) -> None:
    """b took a's last message, but its ACK was lost with b's connection to a (a reset of
    that one TCP connection; a's to b is fine, so a resends nothing). Before, a kept the batch
    until more traffic came: drain() waited, and had b died meanwhile the message would have
    been counted lost though delivered. Now b acknowledges again once that connection is up."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    send(a.protocol, ReceiveMode.EQ, "sink", 0, seq=1)
    net.run(0.5)
    net.cut(b, a)
    send(a.protocol, ReceiveMode.EQ, "sink", 1, seq=2)
    net.run(0.5)  # taken; its ACK lost
    net.heal(b, a)
    net.run(1.0)
    assert len(a.protocol.outboxes[b.node_id].unacked) == 1
    link = b.protocol.membership.peers[a.node_id].link
    b.protocol.link_changed(link, "down", net.now)
    b.protocol.link_changed(link, "up", net.now)
    net.run(0.5)
    assert not a.protocol.outboxes[b.node_id].unacked
    assert [decode_body(d.msg.body) for d in b.delivered()] == [0, 1]
    assert b.protocol.counters.duplicate_batches == 0  # nothing was sent again


@pytest.mark.parametrize("gone", ["bye", "timeout"])
def test_a_message_queued_in_the_turn_its_peer_goes_is_kept_with_its_stream(
        net: MemNet, gone: str) -> None:
    """send_to queued a message for b; in the same loop turn, before anything left, b was
    forgotten (its BYE arrived, or it was declared dead). Before, the record went out
    unsequenced on the link being hung up: neither delivered nor counted lost, silently.
    Now it joins b's stream: counted lost with the rest of it (BYE), or kept for b to
    resume (declared dead) and delivered once it does."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    assert send(a.protocol, ReceiveMode.EQ, "sink", "late").matches == 1
    peer = a.protocol.membership.peers[b.node_id]
    if gone == "bye":
        net.crash(b)  # it said BYE and went: nothing reaches it any more
        a.protocol.receive(b.node_id + b"\0\0\0\1", wire.encode_batch([wire.BYE]), net.now)
        net.flush()
        assert a.protocol.counters.lost_messages == 1
    else:
        a.protocol._forget(peer, "timeout", net.now)  # declared dead in this very turn
        net.flush()
        assert a.protocol.counters.lost_messages == 0
        a.protocol.hint(b.endpoint, net.now)  # it comes back, the same process
        net.run(1.0)
        assert [decode_body(d.msg.body) for d in b.delivered()] == ["late"]
    # No MSG ever travelled unsequenced (taken without de-duplication, lost uncounted).
    assert all(type(t.records[0]) is wire.Seq for t in net.log
               if t.src == "a" and any(type(r) is wire.Msg for r in t.records))


def test_two_nodes_split_by_a_healed_partition_rejoin_the_full_mesh(net: MemNet) -> None:
    seed, a, b = net.mesh("seed", "a", "b")
    net.cut(a, b)
    net.cut(b, a)
    net.run(DEAD_AFTER_S + TICK_S)
    assert a.downs() == [(b.hex, "timeout")] and b.downs() == [(a.hex, "timeout")]
    net.heal(a, b)
    net.heal(b, a)
    for _ in range(10):  # static discovery keeps hinting the seed; it is known, so nothing
        a.protocol.hint(seed.endpoint, net.now)
        b.protocol.hint(seed.endpoint, net.now)
        net.run(1.0)
    assert a.peers() == {seed.node_id, b.node_id}
    assert b.peers() == {seed.node_id, a.node_id}


def test_bye_removes_the_node_at_once(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    a.protocol.subscribe("user:alice", {}, net.now)
    net.flush()
    a.protocol.close(net.now)
    net.flush()
    for host in (b, c):
        assert host.downs() == [(a.hex, "bye")]
        assert host.peers() == {b.node_id, c.node_id} - {host.node_id}
        assert host.names_seen("user:alice") == []
    assert a.protocol.links == {}
    assert len(net.records(wire.Bye, src=a)) == 2
    net.run(DEAD_AFTER_S * 2)
    assert b.downs() == [(a.hex, "bye")]  # no second PeerDown for it


def test_a_restart_on_the_same_endpoint_replaces_the_old_node_at_once(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    a.protocol.subscribe("user:alice", {}, net.now)
    net.flush()
    net.crash(a)
    a2 = net.add("a2", endpoint=a.endpoint)  # new process: new node id and incarnation
    a2.protocol.hint(b.endpoint, net.now)
    net.flush()
    assert b.downs() == [(a.hex, "replaced")]
    assert b.ups() == [a.hex, a2.hex]
    assert b.peers() == {a2.node_id}
    assert b.names_seen("user:alice") == []
    assert a2.peers() == {b.node_id}
    assert len(b.protocol.links) == 1


def test_a_new_incarnation_of_a_node_replaces_the_old_one_at_once(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    a.protocol.subscribe("old", {}, net.now)
    net.flush()
    net.crash(a)
    a2 = net.add("a2", endpoint=a.endpoint, node_id=a.node_id,
                 incarnation=a.protocol.incarnation + 1)
    a2.protocol.subscribe("new", {}, net.now)
    a2.protocol.hint(b.endpoint, net.now)
    net.flush()
    assert b.downs() == [(a.hex, "replaced")]
    [_, up] = b.of(PeerUp)
    assert up.peer.incarnation == a2.protocol.incarnation
    assert b.names_seen("old") == []
    assert b.names_seen("new") == [a.hex]



@pytest.mark.parametrize("same_node_id", [False, True], ids=["new-node-id", "same-node-id"])
def test_a_successor_on_the_endpoint_does_not_take_what_was_sent_to_its_predecessor(
        net: MemNet, same_node_id: bool) -> None:
    """Sent to b, flushed to the process that bound b's endpoint after b died (a DEALER
    reconnects and hands the new process what it held): b2 knows a already, so protocol
    version 2 took it (a first stream is taken from wherever it starts) while a counted it
    lost when b2 replaced b: counted twice. Now b2 drops it (misdirected) and a's count is
    the only one."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("user:x", {}, net.now)
    net.flush()
    net.stall(b)  # what a sends b now waits in the connection (libzmq's queue)
    sent = 0
    for i in range(5):
        sent += len(send(a.protocol, ReceiveMode.EQ, "user:x", f"m{i}", seq=i + 1).remote)
        net.flush()
    assert sent == 5 and b.held
    held, b.held = b.held, []
    net.crash(b)  # SIGKILL: nothing of it answers, acknowledges or says BYE
    b2 = net.add("b2", endpoint=b.endpoint,
                 node_id=b.node_id if same_node_id else None,
                 incarnation=b.protocol.incarnation + 100)
    b2.protocol.subscribe("user:x", {}, net.now)
    b2.protocol.hint(a.endpoint, net.now)  # it met a through discovery
    net.flush()
    assert b2.peers() == {a.node_id}
    assert a.peers() == {b2.node_id}
    assert a.protocol.counters.lost_messages == 5  # b's, counted when b2 replaced it
    for routing_id, batch in held:  # the reconnected connection hands b2 what it held for b
        b2.protocol.receive(routing_id, batch, net.now)
    net.flush()
    net.run(1.0)
    assert b2.delivered() == [] and b.delivered() == []
    assert b2.protocol.counters.misdirected_batches == len(held)
    assert a.protocol.counters.lost_messages == 5
    assert len(b2.delivered()) + a.protocol.counters.lost_messages == sent
    assert b2.protocol.counters.gap_batches == b2.protocol.counters.duplicate_batches == 0
    # b2's own stream from a works: a message now reaches it, once.
    assert send(a.protocol, ReceiveMode.EQ, "user:x", "after", seq=6).remote
    net.flush()
    assert [decode_body(d.msg.body) for d in b2.delivered()] == ["after"]


# --- bad input ------------------------------------------------------------------------------------

GARBAGE = [b"", b"\xc1", b"\x01", b"\x91\xc1", msgpack.packb({"not": "a batch"}),
           wire.encode_batch([b"\x93\x07\x01"])]  # truncated record inside a batch header


def _state(host: Host) -> tuple[object, ...]:
    protocol = host.protocol
    return (host.peers(), protocol.table.size(), protocol.table.version, dict(protocol.links))


def test_garbage_frames_only_increment_counters(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("x", {}, net.now)
    net.flush()
    before = _state(b)
    routing_id = a.node_id + b"\x00\x00\x00\x01"
    for payload in GARBAGE:
        b.protocol.receive(routing_id, payload, net.now)
    counters = b.protocol.counters
    assert counters.malformed_frames == len(GARBAGE)
    assert _state(b) == before
    assert not b.protocol.has_output()
    assert b.protocol.events_received() == []


def test_garbage_records_in_a_valid_batch_are_counted_and_skipped(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    sub = b.protocol.subscribe("x", {}, net.now)
    net.flush()
    routing_id = a.node_id + b"\x00\x00\x00\x01"
    bad = [msgpack.packb([99]), msgpack.packb("x"), msgpack.packb([int(wire.Kind.DELTA), 1])]
    good = wire.encode_msg(msg("x"))
    b.protocol.receive(routing_id, wire.encode_batch([*bad, good]), net.now)
    assert b.protocol.counters.malformed_records == 3
    assert [d.sub_ids for d in b.protocol.events_received() if type(d) is Deliver] == [[sub]]


def test_records_from_a_stranger_are_counted_and_ignored(net: MemNet) -> None:
    _, b = net.mesh("a", "b")
    before = _state(b)
    stranger = b"\x77" * 16 + b"\x00\x00\x00\x01"
    b.protocol.receive(stranger, wire.encode_batch([
        wire.encode_msg(msg("x")), wire.encode_delta(wire.Delta(1, 1, 1, "x", {})),
        wire.SNAPSHOT_REQUEST, wire.encode_heartbeat(1, 5), wire.BYE]), net.now)
    assert b.protocol.counters.unknown_sender_records == 5
    assert _state(b) == before
    assert not b.protocol.has_output()


def test_a_hello_claiming_another_node_id_is_dropped(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    hello = wire.Hello(wire.PROTOCOL_VERSION, "test", b"\x55" * 16, 1, "tcp://evil:1", "evil",
                       False, b.endpoint, "", 0, [])
    b.protocol.receive(a.node_id + b"\x00\x00\x00\x01",
                       wire.encode_batch([wire.encode_hello(hello)]), net.now)
    assert b.peers() == set()
    assert b.protocol.counters.malformed_records == 1
    assert not b.protocol.has_output()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=256), known=st.booleans())
def test_random_payloads_never_raise_nor_change_the_mesh(payload: bytes, known: bool) -> None:
    net = MemNet()
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("x", {}, net.now)
    net.flush()
    before = _state(b)
    frames = b.protocol.counters.frames_received
    sender = a.node_id if known else b"\x77" * 16
    b.protocol.receive(sender + b"\x00\x00\x00\x01", payload, net.now)
    assert b.protocol.counters.frames_received == frames + 1
    assert _state(b) == before
    assert not [e for e in b.protocol.events_received() if type(e) is not Deliver]


def test_a_frame_over_the_size_limit_is_counted_and_dropped() -> None:
    net = MemNet(limits=Limits(max_frame_bytes=1024))
    a, b = net.mesh("a", "b")
    b.protocol.receive(a.node_id + b"\x00\x00\x00\x01",
                    wire.encode_batch([wire.encode_msg(msg("x", "y" * 2000))]), net.now)
    assert b.protocol.counters.malformed_frames == 1


# --- found in review: abuse and churn --------------------------------------------------------

def _hello_from(node_id: bytes, *, cluster: str = "test", endpoint: str = "tcp://x:1",
                via: str = "") -> bytes:
    return wire.encode_hello(wire.Hello(wire.PROTOCOL_VERSION, cluster, node_id, 1, endpoint,
                                        "evil", False, via, "", 0, []))


def test_a_seed_alias_dialled_while_the_peer_dials_us_settles_on_one_link(net: MemNet) -> None:
    a, b = net.add("a"), net.add("b")
    net.by_endpoint["tcp://alias-of-b:7000"] = b  # a DNS name or service address of b
    a.protocol.hint("tcp://alias-of-b:7000", net.now)
    b.protocol.hint(a.endpoint, net.now)  # both dial at once
    net.flush()
    assert a.peers() == {b.node_id} and b.peers() == {a.node_id}
    hellos = len(net.records(wire.Hello))
    for _ in range(10):  # static discovery hints the seed every second
        a.protocol.hint("tcp://alias-of-b:7000", net.now)
        net.run(1.0)
    assert len(net.records(wire.Hello)) == hellos  # no re-dial churn
    assert len(a.protocol.links) == 1


def test_a_flood_of_refused_hellos_dials_back_only_a_few(net: MemNet) -> None:
    a = net.add("a")
    stranger = b"\x42" * 16
    flood = [_hello_from(stranger, cluster="other", endpoint=f"tcp://h{i}:1") for i in range(1100)]
    a.protocol.receive(stranger + b"\0\0\0\1", wire.encode_batch(flood), net.now)
    dials = a.protocol.data_to_send().dials
    assert len(dials) == REFUSALS_PER_S
    assert a.protocol.counters.refused_peers == 1100
    assert a.protocol.links == {}  # every refusal link is hung up at once


def test_a_forged_hello_with_our_id_does_not_make_us_shun_a_peer(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    a.protocol.receive(a.node_id + b"\0\0\0\x09", wire.encode_batch(
        [_hello_from(a.node_id, via=b.endpoint)]), net.now)
    net.crash(b)
    net.run(DEAD_AFTER_S + TICK_S)
    b2 = net.add("b2", endpoint=b.endpoint)  # a new node where b was
    a.protocol.hint(b2.endpoint, net.now)
    net.run(TIMINGS.hello_retry_s + TICK_S)  # a keeps dialling that address: it is not ours
    assert a.peers() == {b2.node_id}


def test_deltas_cannot_grow_a_replica_past_max_table_entries() -> None:
    net = MemNet(limits=Limits(max_table_entries=3))
    a, b = net.mesh("a", "b")
    for i in range(10):
        a.protocol.subscribe(f"n{i}", {}, net.now)
    net.flush()
    assert len(b.protocol.table.replicas[a.node_id].entries) == 3
    assert b.protocol.counters.malformed_records >= 7


def test_a_burst_of_snapshot_requests_gets_one_snapshot(net: MemNet) -> None:
    a, b = net.mesh("a", "b")
    for i in range(50):
        b.protocol.subscribe(f"n{i}", {}, net.now)
    net.flush()
    b.protocol.receive(a.node_id + b"\0\0\0\1", wire.encode_batch([wire.SNAPSHOT_REQUEST] * 1000),
                    net.now)
    sent = [r for batches in b.protocol.data_to_send().sends.values() for batch in batches
            for r in msgpack.unpackb(batch)]
    assert sum(1 for r in sent if r[0] == wire.Kind.SNAPSHOT) == 1


@pytest.mark.parametrize("node_id", [b"\x00" + b"\x01" * 15, b"\x01" * 15, b"\x01" * 17])
def test_a_node_id_peers_would_refuse_is_refused_at_once(node_id: bytes) -> None:
    with pytest.raises(UsageError, match="node id"):
        Protocol(cluster="test", node_id=node_id, incarnation=1, endpoint="tcp://a:1", name="a",
                 timings=Timings(), limits=Limits())


def test_a_receiver_that_lost_its_place_in_a_stream_gets_the_rest_on_a_new_one(
        net: MemNet) -> None:
    """b took and acknowledged a's first batches, then lost its state of a's stream (dropped,
    as when more than 4 * max_peers senders come and go while a is cut off); what a still
    holds is a gap to it at every resend. Before: a gap and resend loop for ever; now a
    renumbers what it holds into a new stream, which b takes from its start: each message
    once."""
    a, b = net.mesh("a", "b")
    b.protocol.subscribe("sink", {}, net.now)
    net.flush()
    for i in range(3):
        send(a.protocol, ReceiveMode.EQ, "sink", i, seq=i + 1)
        net.flush()
    net.run(1.0)  # taken and acknowledged
    del b.protocol.inflows[a.node_id]  # its place lost
    for i in range(3, 5):
        send(a.protocol, ReceiveMode.EQ, "sink", i, seq=i + 1)
        net.flush()
    net.run(2.0)
    bodies = [decode_body(d.msg.body) for d in b.delivered()]
    assert bodies == [0, 1, 2, 3, 4]
    assert a.protocol.counters.restarted_streams == 1
    assert a.protocol.counters.lost_messages == 0
