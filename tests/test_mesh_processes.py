"""The core mesh promises, proven with real node processes on loopback.

Three nodes: A; B seeded only with A; C seeded only with B. Nothing else tells them about each
other, so every test here also relies on peer exchange.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import signal
import struct
import termios
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from smartroute import wire
from smartroute.testing import FAST_TIMINGS, wait_until
from smartroute.testing.cluster import AgentError, AgentProcess

from .conftest import Spawn

pytestmark = pytest.mark.processes

CLUSTER = "test-mesh"


@dataclass
class Mesh:
    a: AgentProcess
    b: AgentProcess
    c: AgentProcess

    @property
    def nodes(self) -> list[AgentProcess]:
        return [self.a, self.b, self.c]


def start_mesh(spawn: Spawn, timings: dict[str, float] | None = FAST_TIMINGS) -> Mesh:
    a = spawn(cluster=CLUSTER, timings=timings)
    b = spawn(cluster=CLUSTER, seeds=[a.endpoint], timings=timings)
    c = spawn(cluster=CLUSTER, seeds=[b.endpoint], timings=timings)
    mesh = Mesh(a, b, c)
    for node in mesh.nodes:
        wait_until(lambda node=node: len(node.call("peers")) == 2, what=f"{node} sees 2 peers")
    return mesh


def subscribe_all(mesh: Mesh, layout: dict[str, list[str]]) -> None:
    """Subscribe names on nodes ("a", "b", "c") and wait until every node knows every one."""
    counts: collections.Counter[str] = collections.Counter()
    for key, names in layout.items():
        for name in names:
            getattr(mesh, key).call("subscribe", name=name)
            counts[name] += 1
    for node in mesh.nodes:
        for name, count in counts.items():
            node.call("wait_for", name=name, count=count)


def deliveries(node: AgentProcess, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Collect what ``node`` received until ``expected`` deliveries are in (and no more come)."""
    got: list[dict[str, Any]] = []
    wait_until(lambda: got.extend(node.call("received")) or len(got) >= expected,
               timeout, what=f"{expected} deliveries on {node}")
    return got


def settle(mesh: Mesh, expected: int) -> dict[str, list[tuple[str, Any]]]:
    """Collect every node's deliveries until ``expected`` arrived, then watch a little longer
    so that an extra (duplicate or misrouted) delivery would be seen too."""
    got: dict[str, list[tuple[str, Any]]] = {"a": [], "b": [], "c": []}

    def collect() -> int:
        for key, batch in got.items():
            batch.extend((d["subscriber"], d["body"]) for d in getattr(mesh, key).call("received"))
        return sum(len(batch) for batch in got.values())

    wait_until(lambda: collect() >= expected, what=f"{expected} deliveries")
    # One hop on loopback takes ~1 ms: anything extra would show within this window.
    time.sleep(0.3)
    collect()
    return got


LAYOUT = {
    "a": ["user:alice", "room:1"],
    "b": ["user:bob", "room:1", "user:alice"],  # alice on a second device
    "c": ["user:carol"],
}


def test_chained_seeds_form_a_full_mesh(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    ids = {n.node_id for n in mesh.nodes}
    for node in mesh.nodes:
        peers = node.call("peers")
        assert {p["node_id"] for p in peers} == ids - {node.node_id}
        assert all(p["state"] == "alive" for p in peers)


@pytest.mark.parametrize(
    ("mode", "target", "expected"),
    [
        ("EQ", "user:alice", {"a": ["user:alice"], "b": ["user:alice"]}),
        ("EQ", ["user:bob", "user:carol"], {"b": ["user:bob"], "c": ["user:carol"]}),
        ("NOT_EQ", "user:bob", {"a": ["room:1", "user:alice"],
                                "b": ["room:1", "user:alice"], "c": ["user:carol"]}),
        ("NOT_EQ", ["user:alice", "room:1"], {"b": ["user:bob"], "c": ["user:carol"]}),
        ("ALL", None, {"a": ["room:1", "user:alice"],
                       "b": ["room:1", "user:alice", "user:bob"], "c": ["user:carol"]}),
        ("REGEX", "^room:", {"a": ["room:1"], "b": ["room:1"]}),
        ("REGEX", ["bob$", "^user:c"], {"b": ["user:bob"], "c": ["user:carol"]}),
        ("EQ", "user:nobody", {}),
    ],
)
def test_every_mode_reaches_exactly_its_subscribers_once(
    spawn: Spawn, mode: str, target: Any, expected: dict[str, list[str]]
) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, LAYOUT)
    count = mesh.c.call("send_to", body={"n": 1}, mode=mode, target=target)
    assert count == sum(len(names) for names in expected.values())
    got = settle(mesh, count)
    for key in ("a", "b", "c"):
        assert sorted(sub for sub, _ in got[key]) == sorted(expected.get(key, [])), key
        assert all(body == {"n": 1} for _, body in got[key])


def test_any_delivers_to_exactly_one_and_balances(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, LAYOUT)
    for i in range(10):
        assert mesh.c.call("send_to", body=i, mode="ANY", target="user:alice") == 1
    got = settle(mesh, 10)
    bodies = sorted(body for key in got for _, body in got[key])
    assert bodies == list(range(10))  # each exactly once
    assert len(got["a"]) == len(got["b"]) == 5  # round-robin over the two devices
    assert got["c"] == []


def test_remote_node_gets_one_frame_per_send_and_fans_out(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, {"b": ["room:9", "room:9", "room:9"]})
    before = mesh.b.call("stats")["received"]
    assert mesh.c.call("send_to", body="hello", target="room:9") == 3
    got = deliveries(mesh.b, 3)
    assert [d["subscriber"] for d in got] == ["room:9"] * 3
    assert len({d["id"] for d in got}) == 1  # one message, three deliveries
    assert mesh.b.call("stats")["received"] - before == 1  # one frame crossed the wire
    assert mesh.c.call("stats")["sent_remote_frames"] == 1


def test_sender_name_and_origin_travel_with_the_message(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, {"a": ["user:alice"]})
    mesh.c.call("send_to", body="hi", target="user:alice", sender="user:carol")
    [got] = deliveries(mesh.a, 1)
    assert got["sender"] == "user:carol"
    assert got["node_id"] == mesh.c.node_id
    assert got["mode"] == "EQ"
    assert got["id"].startswith(mesh.c.node_id)


def test_request_reply_across_nodes(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    mesh.a.call("subscribe", name="svc:echo", reply="echo")
    mesh.b.call("subscribe", name="svc:silent", reply="silent")
    mesh.b.call("subscribe", name="svc:broken", reply="raise")
    for name in ("svc:echo", "svc:silent", "svc:broken"):
        mesh.c.call("wait_for", name=name)

    assert mesh.c.call("request", target="svc:echo", body="ping") == {
        "echo": "ping", "by": mesh.a.node_id}
    with pytest.raises(AgentError) as nobody:
        mesh.c.call("request", target="svc:nobody", body="ping")
    assert nobody.value.kind == "NoSubscriber"
    started = time.monotonic()
    with pytest.raises(AgentError) as silence:
        mesh.c.call("request", target="svc:silent", body="ping", timeout=0.5)
    assert silence.value.kind == "RequestTimeout"
    assert 0.45 <= time.monotonic() - started < 3.0
    with pytest.raises(AgentError) as broken:
        mesh.c.call("request", target="svc:broken", body="ping")
    assert broken.value.kind == "RemoteError"
    assert "refuses 'ping'" in str(broken.value)


def test_unsubscribe_propagates(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    sub = mesh.a.call("subscribe", name="user:dave")
    mesh.c.call("wait_for", name="user:dave")
    mesh.a.call("unsubscribe", sub=sub)
    for node in (mesh.b, mesh.c):
        wait_until(lambda node=node: node.call("lookup", name="user:dave") == [],
                   what="unsubscribe seen")
    assert mesh.c.call("send_to", body="x", target="user:dave") == 0
    assert {"event": "SubscriberDown", "name": "user:dave", "node_id": mesh.a.node_id} in \
        mesh.c.call("events")


def test_late_joiner_learns_the_whole_table(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, LAYOUT)
    d = spawn(cluster=CLUSTER, seeds=[mesh.c.endpoint], timings=FAST_TIMINGS)
    wait_until(lambda: len(d.call("peers")) == 3, what="D meets everyone")
    wait_until(lambda: len(d.call("subscribers")) == 6, what="D learns the table")
    expected = sorted((name, getattr(mesh, key).node_id)
                      for key, names in LAYOUT.items() for name in names)
    assert sorted((s["name"], s["node_id"]) for s in d.call("subscribers")) == expected
    assert d.call("send_to", body="hi all", mode="ALL") == 6


def test_sigkill_is_purged_everywhere_within_the_dead_timeout(spawn: Spawn) -> None:
    """With default timings (dead after 1.5 s), a killed node is gone in under 2 s."""
    mesh = start_mesh(spawn, timings=None)
    subscribe_all(mesh, {"b": ["user:bob"]})
    mesh.b.kill()
    killed = time.monotonic()
    for node in (mesh.a, mesh.c):
        wait_until(lambda node=node: not node.call("lookup", name="user:bob")
                   and len(node.call("peers")) == 1, timeout=5.0, interval=0.02,
                   what="B purged")
    elapsed = time.monotonic() - killed
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    for node in (mesh.a, mesh.c):
        downs = [e for e in node.call("events") if e["event"] == "PeerDown"]
        assert downs == [{"event": "PeerDown", "node_id": mesh.b.node_id, "reason": "timeout"}]
    assert mesh.c.call("send_to", body="x", target="user:bob") == 0


def test_a_killed_node_is_dead_once_its_connections_close_not_after_dead_after_s(
        spawn: Spawn) -> None:
    """A SIGKILLed process's sockets are closed by the kernel at once; the peers see their
    links' connections close and, hearing nothing more, declare it dead at suspect_after_s
    (0.75 s) - long before this test's dead_after_s of 10 s."""
    mesh = start_mesh(spawn, timings={"suspect_after_s": 0.75, "dead_after_s": 10.0})
    subscribe_all(mesh, {"b": ["user:bob"]})
    mesh.b.kill()
    killed = time.monotonic()
    for node in (mesh.a, mesh.c):
        wait_until(lambda node=node: len(node.call("peers")) == 1, timeout=8.0, interval=0.02,
                   what="B declared dead")
    assert time.monotonic() - killed < 5.0  # the timeout alone would take 10 s
    for node in (mesh.a, mesh.c):
        downs = [e for e in node.call("events") if e["event"] == "PeerDown"]
        assert downs == [{"event": "PeerDown", "node_id": mesh.b.node_id, "reason": "timeout"}]
        assert not node.call("lookup", name="user:bob")


def test_graceful_close_is_seen_at_once(spawn: Spawn) -> None:
    mesh = start_mesh(spawn, timings=None)  # default timings: a timeout would take 1.5 s
    closed = time.monotonic()
    mesh.b.close()
    for node in (mesh.a, mesh.c):
        wait_until(lambda node=node: len(node.call("peers")) == 1, what="BYE seen")
    assert time.monotonic() - closed < 1.0
    downs = [e for e in mesh.a.call("events") if e["event"] == "PeerDown"]
    assert downs == [{"event": "PeerDown", "node_id": mesh.b.node_id, "reason": "bye"}]


def test_restart_on_the_same_port_rejoins_cleanly(spawn: Spawn) -> None:
    mesh = start_mesh(spawn, timings=None)
    subscribe_all(mesh, {"b": ["user:bob"]})
    port = int(mesh.b.endpoint.rsplit(":", 1)[1])
    mesh.b.kill()
    # The others see the old one dead within ~0.1 s (its port refuses their redial), or the
    # new one replaces it if it is quicker: either way the old one goes once, the new one in.
    b2 = spawn(cluster=CLUSTER, seeds=[mesh.a.endpoint], port=port)
    assert b2.endpoint == mesh.b.endpoint and b2.node_id != mesh.b.node_id
    for node in (mesh.a, mesh.c):
        wait_until(lambda node=node: [p["node_id"] for p in node.call("peers")
                                      if p["endpoint"] == b2.endpoint] == [b2.node_id],
                   what="restarted node replaces the old one")
        assert not node.call("lookup", name="user:bob")  # old subscribers purged
    b2.call("subscribe", name="user:bob")
    mesh.c.call("wait_for", name="user:bob")
    assert mesh.c.call("send_to", body="welcome back", target="user:bob") == 1
    assert [d["body"] for d in deliveries(b2, 1)] == ["welcome back"]
    downs = [e for e in mesh.a.call("events") if e["event"] == "PeerDown"]
    assert [(e["node_id"], e["reason"] in ("timeout", "replaced")) for e in downs] == [
        (mesh.b.node_id, True)]



def _unread_requests(agent: AgentProcess) -> int:
    """Bytes written to ``agent``'s stdin that it has not read yet."""
    assert agent.process.stdin is not None
    unread: int = struct.unpack("i", fcntl.ioctl(agent.process.stdin.fileno(), termios.FIONREAD,
                                                 b"\0" * 4))[0]
    return unread


def send_loop_as_it_dies(a: AgentProcess, victim: AgentProcess, count: int) -> dict[str, Any]:
    """``a``'s plain send loop to user:x, asked while ``a`` is stopped (SIGSTOP), then
    ``victim`` SIGKILLed, then ``a`` resumed: ``a`` reads the request before it can learn of
    the death (its redial is refused ~10-20 ms after it sees the connection close)."""
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(a.call("send_loop", count=count, target="user:x", seq=True))
        except BaseException as exc:  # raised below, in the test's thread
            results.append(exc)
    os.kill(a.pid, signal.SIGSTOP)
    caller = threading.Thread(target=call, daemon=True, name="send-loop")
    try:
        caller.start()
        wait_until(lambda: _unread_requests(a) > 0, what="the request waits in a's stdin")
        victim.kill()  # SIGKILL by PID, reaped: it delivers nothing from here on
    finally:
        os.kill(a.pid, signal.SIGCONT)
    caller.join(timeout=60)
    assert not caller.is_alive() and len(results) == 1, "the send loop did not answer"
    if isinstance(results[0], BaseException):
        raise results[0]
    result: dict[str, Any] = results[0]
    return result


SUCCESSIONS = 8
"""Rounds of the successor test: each one a race that protocol version 2 lost now and then."""


def test_a_successor_on_the_port_takes_nothing_that_was_sent_to_the_killed_node(
        spawn: Spawn) -> None:
    """B is SIGKILLed; A, not knowing yet, sends to B's subscriber in a plain loop: a new
    stream, whose batches wait in A's link to B's port. A hangs that link up when it finds B
    dead (libzmq goes on trying to deliver what it holds for close_linger_s) and counts those
    messages lost when B stays dead for redial_dead_for_s. B2 binds B's port, seeded with A,
    and meets A; A's old link reconnects to the port and hands B2 B's batches. Protocol
    version 2 took them when B2 had met A first (a first stream, from its start): delivered
    on B2 and counted lost by A. Now B2 drops them (misdirected_batches): every accepted
    message is delivered once on the node it was sent to, or counted lost, never both.

    Whether B2 has met A before the old link reconnects (both within ~20 ms of B2's bind) is
    a race: A's redial of B's endpoint, pending for connect_timeout_s (5 s here), brings A's
    HELLO as fast as the old link brings B's batches. Version 2 failed here in about 1 run in
    3 (``SUCCESSIONS`` rounds each); the memnet test
    (test_a_successor_on_the_endpoint_does_not_take_what_was_sent_to_its_predecessor) fails
    on it every time. A's linger is 10 s (0.5 s by default) so that the old link still holds
    B's batches when B2, a Python process taking ~0.5 s to start, is up."""
    a = spawn(cluster=CLUSTER, timings={"close_linger_s": 10.0, "redial_dead_for_s": 2.0,
                                        "connect_timeout_s": 5.0})
    victim = spawn(cluster=CLUSTER, seeds=[a.endpoint])
    victim.call("subscribe_worker", name="user:x", kind="seq_sync")
    assert a.call("wait_for", name="user:x") == 1
    port = int(victim.endpoint.rsplit(":", 1)[1])
    accepted = lost = 0
    for round_ in range(SUCCESSIONS):
        before = send_loop_as_it_dies(a, victim, 200)
        assert set(before["returned"]) <= {"0", "1"}, before
        to_victim = before["returned"].get("1", 0)  # planned for it: A had not noticed yet
        assert to_victim > 0, f"round {round_}: A found it dead before a send: {before}"
        accepted += to_victim
        lost += to_victim
        successor = spawn(cluster=CLUSTER, seeds=[a.endpoint], port=port)
        assert successor.endpoint == victim.endpoint
        successor.call("subscribe_worker", name="user:x", kind="seq_sync")
        wait_until(lambda s=successor: [x["node_id"] for x in a.call("lookup", name="user:x")]
                   == [s.node_id], timeout=10.0, what=f"round {round_}: A sees the successor")
        wait_until(lambda s=successor: a.node_id in {p["node_id"] for p in s.call("peers")},
                   timeout=10.0, what=f"round {round_}: the successor knows A")
        # The old link reconnects to the port and hands the successor the victim's batches.
        wait_until(lambda s=successor: s.call("stats")["misdirected_batches"] > 0,
                   timeout=10.0, what=f"round {round_}: the successor gets the old batches")
        wait_until(lambda n=lost: a.call("stats")["lost_messages"] == n, timeout=10.0,
                   what=f"round {round_}: A counts what it sent the killed node lost")
        assert successor.call("sequences") == [], f"round {round_}: took the victim's"
        victim = successor
    after = a.call("send_loop", count=100, target="user:x", seq=True)
    to_last = after["returned"].get("1", 0)
    assert after["returned"] == {"1": to_last} and to_last == 100 - after["link_full"]
    accepted += to_last
    expected = sorted(set(range(100)) - set(after["refused"]))
    wait_until(lambda: len(victim.call("sequences")) >= len(expected), timeout=10.0,
               what=f"{len(expected)} deliveries on the last successor")
    time.sleep(0.5)  # an observation window: a late copy or a late loss would show now
    # The last one got its own, each once, and nothing else; A counted the rest lost, once.
    assert sorted(victim.call("sequences")) == expected
    assert a.call("stats")["lost_messages"] == lost
    assert accepted == len(expected) + lost

def test_idle_mesh_has_no_false_deaths(spawn: Spawn) -> None:
    mesh = start_mesh(spawn, timings=None)
    # An observation window, not a wait for something: 4 s is 16 heartbeat intervals and
    # more than twice the dead timeout.
    time.sleep(4.0)
    for node in mesh.nodes:
        assert [e for e in node.call("events") if e["event"] == "PeerDown"] == []
        assert all(p["state"] == "alive" for p in node.call("peers"))


def _garbage(rng: random.Random) -> list[bytes]:
    valid = wire.encode_batch([
        wire.encode_msg(wire.Msg(1, None, 0, "user:alice", "str", b"\xa2hi", None, None)),
        wire.encode_heartbeat(1, 1),
    ])
    choice = rng.randrange(6)
    if choice == 0:
        return [os.urandom(rng.randrange(0, 200))]
    if choice == 1:
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return [bytes(data)]
    if choice == 2:
        return [msgpack.packb([[rng.randrange(20), *range(rng.randrange(12))]])]
    if choice == 3:
        return [msgpack.packb([[9] * 9, "x", {"a": [1] * 50}])]
    if choice == 4:
        return [b"", b"extra", b"frames"]
    return [valid[: rng.randrange(len(valid))]]


def test_garbage_frames_leave_the_node_serving(spawn: Spawn) -> None:
    mesh = start_mesh(spawn)
    subscribe_all(mesh, {"a": ["user:alice"]})
    rng = random.Random(1234)
    ctx = zmq.Context()
    try:
        attacker = ctx.socket(zmq.DEALER)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.setsockopt(zmq.SNDHWM, 0)
        attacker.connect(mesh.a.endpoint)
        for _ in range(5000):
            attacker.send_multipart(_garbage(rng))
        # A spoofed HELLO claiming to be B, on a link that is not B's.
        attacker.send(wire.encode_batch([wire.encode_hello(wire.Hello(
            wire.PROTOCOL_VERSION, CLUSTER, bytes.fromhex(mesh.b.node_id), 1,
            "tcp://127.0.0.1:1", "evil", False, "", "", 0, []))]))
        wait_until(lambda: mesh.a.call("stats")["frames_received"] >= 4000,
                   what="garbage arrives")
    finally:
        ctx.destroy(linger=0)
    stats = mesh.a.call("stats")
    assert stats["malformed_frames"] + stats["malformed_records"] \
        + stats["unknown_sender_records"] > 0
    # Still serving: peers intact, delivery works both ways.
    assert len(mesh.a.call("peers")) == 2
    assert mesh.c.call("send_to", body="still there?", target="user:alice") == 1
    assert [d["body"] for d in deliveries(mesh.a, 1)] == ["still there?"]
    mesh.c.call("subscribe", name="user:carol")
    mesh.a.call("wait_for", name="user:carol")


def test_a_flooded_node_is_not_declared_dead_and_loses_nothing(spawn: Spawn) -> None:
    """300,000 messages as fast as one core sends them, default timings: the receiver is busy
    for longer than the dead timeout, keeps heartbeating, and every message arrives."""
    a = spawn(cluster=CLUSTER)
    b = spawn(cluster=CLUSTER, seeds=[a.endpoint])
    a.call("subscribe", name="sink", reply="count")
    b.call("wait_for", name="sink")
    assert b.call("flood", target="sink", count=300_000, per_turn=500,
                  answer_within_s=60) == 300_000
    wait_until(lambda: a.call("counts")["sink"] == 300_000, timeout=60,
               what="every message delivered")
    for node in (a, b):
        assert [e for e in node.call("events") if e["event"] == "PeerDown"] == []
        assert node.call("stats")["dropped"] == 0
