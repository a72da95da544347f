"""membership.py: the peer transition table at the top of the module, with a fake clock."""

from __future__ import annotations

import pytest

from smartroute.events import PeerInfo
from smartroute.membership import HelloVerdict, Membership, Peer, PeerState

A = b"\x0a" * 16
B = b"\x0b" * 16
SUSPECT_AFTER_S = 0.5  # exact binary fractions: boundaries are tested to the tick
DEAD_AFTER_S = 1.0
UNREACHABLE_AFTER_S = 0.25
CONNECT_TIMEOUT_S = 2.0
T0 = 100.0


@pytest.fixture
def members() -> Membership:
    return Membership(suspect_after_s=SUSPECT_AFTER_S, dead_after_s=DEAD_AFTER_S,
                      unreachable_after_s=UNREACHABLE_AFTER_S,
                      connect_timeout_s=CONNECT_TIMEOUT_S)


def add(members: Membership, node_id: bytes = A, incarnation: int = 5,
        endpoint: str = "tcp://10.0.0.1:7001", now: float = T0,
        connected: bool = True) -> Peer:
    return members.add(node_id, incarnation, endpoint, "web-1", link=3, now=now,
                       connected=connected)


def expired(members: Membership, now: float) -> list[Peer]:
    """The peers ``expire`` declares dead at ``now``."""
    return [peer for peer, _ in members.expire(now)]


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
    assert expired(members, T0 + SUSPECT_AFTER_S - 0.001) == []
    assert peer.state is PeerState.ALIVE
    assert expired(members, T0 + SUSPECT_AFTER_S) == []
    assert peer.state is PeerState.SUSPECT
    assert peer.info().state == "suspect"
    assert members.peers == {A: peer}  # suspect peers are kept (and still routed to)


def test_anything_heard_turns_a_suspect_alive_again(members: Membership) -> None:
    peer = add(members)
    expired(members, T0 + 0.75)
    assert peer.state is PeerState.SUSPECT
    members.heard(peer, T0 + 0.8)
    assert peer.state is PeerState.ALIVE
    assert peer.last_heard == T0 + 0.8
    # The silence is counted from the last time heard.
    assert expired(members, T0 + 0.8 + DEAD_AFTER_S - 0.001) == []
    assert peer.state is PeerState.SUSPECT


def test_silence_removes_a_peer_at_dead_after_s(members: Membership) -> None:
    peer = add(members)
    assert expired(members, T0 + DEAD_AFTER_S - 0.001) == []
    assert peer.state is PeerState.SUSPECT
    assert expired(members, T0 + DEAD_AFTER_S) == [peer]
    assert members.peers == {}
    assert expired(members, T0 + 10 * DEAD_AFTER_S) == []


def test_an_alive_peer_silent_past_dead_after_s_dies_without_being_suspect_first(
        members: Membership) -> None:
    peer = add(members)
    assert expired(members, T0 + 5.0) == [peer]


def test_expire_judges_each_peer_by_its_own_silence(members: Membership) -> None:
    quiet = add(members, A, endpoint="tcp://a:1")
    chatty = add(members, B, endpoint="tcp://b:1")
    members.heard(chatty, T0 + 0.9)
    assert expired(members, T0 + DEAD_AFTER_S) == [quiet]
    assert chatty.state is PeerState.ALIVE
    assert members.peers == {B: chatty}


def test_bye_removes_a_peer_in_any_state(members: Membership) -> None:
    peer = add(members)
    expired(members, T0 + SUSPECT_AFTER_S)
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
    assert expired(members, 15.0 + members.dead_after_s - 1.1) == []


def test_a_busy_peer_whose_connection_is_up_is_only_suspect_until_dead_after_s(
        members: Membership) -> None:
    peer = add(members)
    assert expired(members, T0 + SUSPECT_AFTER_S) == []
    assert peer.state is PeerState.SUSPECT
    assert expired(members, T0 + DEAD_AFTER_S - 0.125) == []
    [(dead, why)] = members.expire(T0 + DEAD_AFTER_S)
    assert dead is peer and "stuck" in why


def test_a_connection_down_for_unreachable_after_s_is_dead_unless_back(
        members: Membership) -> None:
    gone = add(members, A, endpoint="tcp://a:1")
    back = add(members, B, endpoint="tcp://b:1")
    members.link_down(gone, T0 + 0.125)
    members.link_down(back, T0 + 0.125)
    assert gone.state is back.state is PeerState.SUSPECT
    members.heard(back, T0 + 0.25)  # its loop talks, but our connection to it is down
    assert back.state is PeerState.SUSPECT
    members.link_up(back, T0 + 0.25)
    assert back.state is PeerState.ALIVE
    assert expired(members, T0 + 0.125 + UNREACHABLE_AFTER_S - 0.0625) == []
    [(dead, why)] = members.expire(T0 + 0.125 + UNREACHABLE_AFTER_S)
    assert dead is gone and "unreachable" in why
    assert members.peers == {B: back}


def test_a_refused_redial_is_dead_at_once_but_only_while_down(members: Membership) -> None:
    peer = add(members)
    members.link_refused(peer)  # a dial that failed while the connection was up: ignored
    assert expired(members, T0 + 0.0625) == []
    members.link_down(peer, T0 + 0.0625)
    members.link_refused(peer)
    [(dead, why)] = members.expire(T0 + 0.125)
    assert dead is peer and "refused" in why


def test_a_link_never_connected_gets_connect_timeout_s(members: Membership) -> None:
    peer = add(members, connected=False)
    members.link_refused(peer)  # from before the peer listened (its port was being reused)
    members.heard(peer, T0 + CONNECT_TIMEOUT_S - 0.5)
    assert expired(members, T0 + CONNECT_TIMEOUT_S - 0.0625) == []
    assert expired(members, T0 + CONNECT_TIMEOUT_S) == [peer]


def test_forgive_moves_downtime_forward_too(members: Membership) -> None:
    peer = add(members)
    members.link_down(peer, T0)
    members.forgive(4.0, now=T0 + 4.1)  # our own stall: nothing could be seen meanwhile
    assert peer.down_since == T0 + 4.0
    assert expired(members, T0 + 4.0 + UNREACHABLE_AFTER_S - 0.0625) == []
