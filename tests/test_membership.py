"""membership.py: the peer transition table at the top of the module, with a fake clock."""

from __future__ import annotations

import pytest

from smartroute.events import PeerInfo
from smartroute.membership import HelloVerdict, Membership, Peer, PeerState

A = b"\x0a" * 16
B = b"\x0b" * 16
SUSPECT_AFTER_S = 0.5  # exact binary fractions: boundaries are tested to the tick
DEAD_AFTER_S = 1.0
T0 = 100.0


@pytest.fixture
def members() -> Membership:
    return Membership(suspect_after_s=SUSPECT_AFTER_S, dead_after_s=DEAD_AFTER_S)


def add(members: Membership, node_id: bytes = A, incarnation: int = 5,
        endpoint: str = "tcp://10.0.0.1:7001", now: float = T0) -> Peer:
    return members.add(node_id, incarnation, endpoint, "web-1", link=3, now=now)


def test_hello_from_an_unknown_node_is_new_and_the_peer_starts_alive(members: Membership) -> None:
    assert members.judge_hello(A, 5) is HelloVerdict.NEW
    peer = add(members)
    assert members.peers == {A: peer}
    assert peer.state is PeerState.ALIVE
    assert (peer.last_heard, peer.link) == (T0, 3)
    assert peer.info() == PeerInfo(A.hex(), "tcp://10.0.0.1:7001", "web-1", "alive", 5)


def test_hello_verdicts_by_incarnation(members: Membership) -> None:
    add(members, incarnation=5)
    assert members.judge_hello(A, 5) is HelloVerdict.KNOWN
    assert members.judge_hello(A, 6) is HelloVerdict.NEW
    assert members.judge_hello(A, 4) is HelloVerdict.STALE
    assert members.judge_hello(B, 1) is HelloVerdict.NEW


def test_a_newer_incarnation_replaces_the_old_peer(members: Membership) -> None:
    old = add(members, incarnation=5)
    assert members.replaced_by(A, 6, "tcp://10.0.0.1:7001") == [old]
    assert members.replaced_by(A, 6, "tcp://10.0.0.9:7001") == [old]  # restarted elsewhere
    assert members.replaced_by(A, 5, "tcp://10.0.0.1:7001") == []
    assert members.replaced_by(A, 4, "tcp://10.0.0.1:7001") == []


def test_another_node_on_a_known_endpoint_replaces_the_old_one(members: Membership) -> None:
    old = add(members, A, endpoint="tcp://10.0.0.1:7001")
    add(members, B, endpoint="tcp://10.0.0.2:7001")
    new = b"\x0c" * 16
    assert members.replaced_by(new, 1, "tcp://10.0.0.1:7001") == [old]
    assert members.replaced_by(new, 1, "tcp://10.0.0.3:7001") == []


def test_replacement_then_add_leaves_only_the_new_incarnation(members: Membership) -> None:
    add(members, incarnation=5)
    for old in members.replaced_by(A, 6, "tcp://10.0.0.1:7001"):
        assert members.remove(old.node_id) is old
    new = add(members, incarnation=6, now=T0 + 1)
    assert members.peers == {A: new}
    assert members.judge_hello(A, 5) is HelloVerdict.STALE


def test_silence_makes_a_peer_suspect_at_suspect_after_s(members: Membership) -> None:
    peer = add(members)
    assert members.expire(T0 + SUSPECT_AFTER_S - 0.001) == []
    assert peer.state is PeerState.ALIVE
    assert members.expire(T0 + SUSPECT_AFTER_S) == []
    assert peer.state is PeerState.SUSPECT
    assert peer.info().state == "suspect"
    assert members.peers == {A: peer}  # suspect peers are kept (and still routed to)


def test_anything_heard_turns_a_suspect_alive_again(members: Membership) -> None:
    peer = add(members)
    members.expire(T0 + 0.75)
    assert peer.state is PeerState.SUSPECT
    members.heard(peer, T0 + 0.8)
    assert peer.state is PeerState.ALIVE
    assert peer.last_heard == T0 + 0.8
    # The silence is counted from the last time heard.
    assert members.expire(T0 + 0.8 + DEAD_AFTER_S - 0.001) == []
    assert peer.state is PeerState.SUSPECT


def test_silence_removes_a_peer_at_dead_after_s(members: Membership) -> None:
    peer = add(members)
    assert members.expire(T0 + DEAD_AFTER_S - 0.001) == []
    assert peer.state is PeerState.SUSPECT
    assert members.expire(T0 + DEAD_AFTER_S) == [peer]
    assert members.peers == {}
    assert members.expire(T0 + 10 * DEAD_AFTER_S) == []


def test_an_alive_peer_silent_past_dead_after_s_dies_without_being_suspect_first(
        members: Membership) -> None:
    peer = add(members)
    assert members.expire(T0 + 5.0) == [peer]


def test_expire_judges_each_peer_by_its_own_silence(members: Membership) -> None:
    quiet = add(members, A, endpoint="tcp://a:1")
    chatty = add(members, B, endpoint="tcp://b:1")
    members.heard(chatty, T0 + 0.9)
    assert members.expire(T0 + DEAD_AFTER_S) == [quiet]
    assert chatty.state is PeerState.ALIVE
    assert members.peers == {B: chatty}


def test_bye_removes_a_peer_in_any_state(members: Membership) -> None:
    peer = add(members)
    members.expire(T0 + SUSPECT_AFTER_S)
    assert members.remove(A) is peer
    assert members.remove(A) is None
    assert members.judge_hello(A, 5) is HelloVerdict.NEW


def test_by_endpoint(members: Membership) -> None:
    peer = add(members, endpoint="tcp://10.0.0.1:7001")
    assert members.by_endpoint("tcp://10.0.0.1:7001") is peer
    assert members.by_endpoint("tcp://10.0.0.1:7002") is None


def test_forgive_moves_silence_forward_by_a_stall_but_never_past_now(
        members: Membership) -> None:
    quiet = members.add(b"q" * 16, 1, "tcp://q:1", "", 1, now=10.0)
    fresh = members.add(b"f" * 16, 1, "tcp://f:1", "", 2, now=14.5)
    members.forgive(4.0, now=15.0)
    assert quiet.last_heard == 14.0  # its 4 s of silence were our stall
    assert fresh.last_heard == 15.0  # capped at now, never in the future
    assert members.expire(15.0 + members.dead_after_s - 1.1) == []


def test_a_peer_whose_connection_closed_is_dead_at_suspect_after_s_unless_heard(
        members: Membership) -> None:
    gone = members.add(b"g" * 16, 1, "tcp://g:1", "", 1, now=10.0)
    alive = members.add(b"a" * 16, 1, "tcp://a:1", "", 2, now=10.0)
    members.lost(gone, now=10.1)
    members.lost(alive, now=10.1)
    assert gone.state is PeerState.SUSPECT
    members.heard(alive, now=10.3)  # it still talks on its own connection to us
    assert members.expire(10.0 + SUSPECT_AFTER_S - 0.01) == []
    assert members.expire(10.0 + SUSPECT_AFTER_S) == [gone]
    assert members.expire(10.3 + SUSPECT_AFTER_S + 0.01) == []  # heard after the loss
    assert alive.state is PeerState.SUSPECT and alive.node_id in members.peers


def test_forgive_drops_a_loss_the_peer_has_spoken_since(members: Membership) -> None:
    peer = members.add(b"p" * 16, 1, "tcp://p:1", "", 1, now=10.0)
    members.lost(peer, now=10.1)
    members.heard(peer, now=10.2)
    members.forgive(5.0, now=14.0)  # would cap both at now: equal, "silent since the loss"
    assert peer.lost_at is None
    assert members.expire(14.0 + SUSPECT_AFTER_S) == []
