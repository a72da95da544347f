"""The Node.js peer (examples/node_peer, written from docs/PROTOCOL.md alone) in a mesh of
Python nodes: a second implementation of the wire protocol, as a real process on loopback.

The peer prints one JSON object per line (its events) and reads commands on stdin; every test
stops it by its PID. Python nodes run with the default timings: those the peer implements.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from smartroute import Message, Node, PeerDown, PeerUp, ReceiveMode, SubscriberDown, message, wire
from smartroute.testing import async_wait_until
from tests.conftest import Spawn

pytestmark = pytest.mark.processes

PEER_DIR = Path(__file__).resolve().parent.parent / "examples" / "node_peer"
VECTORS = Path(__file__).resolve().parent / "protocol_vectors.json"
CLUSTER = "chat"
SECRET = "a cluster secret for the node peer test"

JOIN_TIMEOUT_S = 10.0
"""Node start (~0.3 s) plus a handshake and a table exchange (~10 ms), with room for a
loaded CI machine."""
DEATH_DEADLINE_S = 3.0
"""A SIGKILLed peer: its connections close at once, a redial is refused, dead within a tick
or two of unreachable_after_s (0.25 s); ping_timeout_s (1 s) bounds it otherwise."""
ALIVE_WATCH_S = 3.0
"""How long a running peer is watched for staying 'alive': four times suspect_after_s."""
QUIET_WINDOW_S = 2.0
"""How long something is watched for *not* happening (a join with a wrong secret, a second
refusal): a handshake takes ~10 ms here and an unanswered HELLO is sent again every
hello_retry_s (1 s), so this covers two retries."""


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (the Node.js peer needs Node.js 20)"
    for package in ("zeromq", "@msgpack/msgpack"):
        if not (PEER_DIR / "node_modules" / package / "package.json").exists():
            return (f"{package} is not installed in examples/node_peer "
                    "(run `make node-peer` or `npm ci` there)")
    return None


@pytest.fixture(autouse=True)
def _needs_node() -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)


class NodePeer:
    """The peer process: its stdout events collected by a thread, commands on stdin."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(PEER_DIR / "peer.js"), *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.ready: dict[str, Any] = {}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind
                    and all(e.get(k) == v for k, v in match.items())]

    async def wait(self, kind: str, count: int = 1, timeout: float = JOIN_TIMEOUT_S,
                   **match: Any) -> list[dict[str, Any]]:
        await async_wait_until(lambda: len(self.of(kind, **match)) >= count, timeout,
                               what=f"{count} {kind} {match} from the node peer "
                               f"(stderr: {''.join(self.stderr[-5:])!r})")
        return self.of(kind, **match)

    def command(self, **cmd: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()

    async def stats(self) -> dict[str, Any]:
        marker = f"stats-{time.monotonic_ns()}"
        self.command(cmd="stats", id=marker)
        return (await self.wait("stats", id=marker))[0]

    async def start(self) -> NodePeer:
        self.ready = (await self.wait("ready"))[0]
        return self

    def kill(self) -> None:
        """SIGKILL by PID (no BYE), and reap it."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def node_peer() -> Iterator[Callable[..., NodePeer]]:
    """Start node peers; every one is SIGKILLed by its PID at the end."""
    started: list[NodePeer] = []

    def start(*args: str) -> NodePeer:
        peer = NodePeer(*args)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.kill()


@contextlib.asynccontextmanager
async def python_nodes(count: int, secret: str | None = None,
                       advertise: str | None = None) -> AsyncIterator[list[Node]]:
    """A mesh of Python nodes on 127.0.0.1, each seeded to the first (``seed(nodes[0])``)."""
    nodes: list[Node] = []
    try:
        first = Node(CLUSTER, secret=secret, discovery=[], host="127.0.0.1", advertise=advertise)
        await first.start()
        nodes.append(first)
        for _ in range(count - 1):
            node = Node(CLUSTER, secret=secret, discovery=[seed(first)], host="127.0.0.1",
                        advertise=advertise)
            await node.start()
            nodes.append(node)
        for node in nodes:
            await async_wait_until(lambda n=node: len(n.peers) == count - 1, JOIN_TIMEOUT_S,
                                   what="the Python mesh")
        yield nodes
    finally:
        for node in nodes:
            await node.close()


def seed(node: Node) -> str:
    """The node's concrete endpoint (a node advertising a wildcard has ``tcp://*:PORT``)."""
    return f"tcp://127.0.0.1:{node.port}"


class Inbox:
    """A Python subscriber that records what it gets; answers requests with {'py': body}."""

    def __init__(self) -> None:
        self.got: list[Message] = []

    def __call__(self, msg: Message) -> dict[str, Any]:
        self.got.append(msg)
        return {"py": msg.body}


def remote_names(node: Node, node_id: str) -> list[str]:
    return sorted(s.name for s in node.subscribers() if s.node_id == node_id)


def test_the_peer_codec_matches_every_golden_vector() -> None:
    vectors = json.loads(VECTORS.read_text())
    expected = (len(vectors["records"]) + len(vectors["batches"]) + len(vectors["bodies"])
                + len(vectors["routing_ids"]) + len(vectors["curve"]["cluster_keys"])
                + len(vectors["curve"]["node_ids"]))
    run = subprocess.run(["node", str(PEER_DIR / "check_vectors.js"), str(VECTORS)],
                         capture_output=True, text=True, timeout=60, check=False)
    result = json.loads(run.stdout)
    assert result == {"checked": expected, "failures": []}, run.stderr
    assert run.returncode == 0


async def test_peer_joins_through_one_seed_and_exchanges_messages(
        node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(2) as (a, b):
        sink_a, sink_b, svc = Inbox(), Inbox(), Inbox()
        await a.subscribe("py:all", sink_a)
        await b.subscribe("py:sink", sink_b)
        await b.subscribe("svc:py", svc)
        # Seeded to A only: it learns B from A's PEERS.
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--subscribe", 'node:inbox={"lang": "js"}').start()
        pid = peer.ready["node_id"]

        # The peer and its subscriber, with its meta, in both Python tables.
        for node in (a, b):
            await node.wait_for("node:inbox", timeout=JOIN_TIMEOUT_S)
            [sub] = [s for s in node.subscribers() if s.name == "node:inbox"]
            assert (sub.node_id, sub.meta, sub.local) == (pid, {"lang": "js"}, False)
            other = b if node is a else a
            assert {p.node_id for p in node.peers} == {pid, other.node_id}
        # And the Python subscribers in the peer's table.
        await peer.wait("subscriber_up", node_id=b.node_id, name="py:sink")
        await peer.wait("subscriber_up", node_id=b.node_id, name="svc:py")
        await peer.wait("subscriber_up", node_id=a.node_id, name="py:all")

        # N EQ messages -> exactly N, in order.
        sends = 200
        for i in range(sends):
            assert await a.send_to(i, ReceiveMode.EQ, "node:inbox", sender="user:a") == 1
        got = await peer.wait("message", sends, subscriber="node:inbox", mode="EQ")
        await peer.stats()  # one more round trip: nothing extra arrives behind them
        got = peer.of("message", subscriber="node:inbox", mode="EQ")
        assert [m["body"] for m in got] == list(range(sends))
        assert {(m["type"], m["sender"], m["from"]) for m in got} == {("int", "user:a", a.node_id)}
        assert [m["id"] for m in got[:2]] == [f"{a.node_id}-1", f"{a.node_id}-2"]

        # One batch per message (a loop turn between sends): more batches than A's window
        # (send_window_batches = 64) holds unacknowledged, so they only all go if the peer
        # acknowledges; without ACKs send_to raises LinkFull after send_timeout_s.
        turns = 3 * 64
        for i in range(turns):
            assert await a.send_to(f"turn {i}", ReceiveMode.EQ, "node:inbox") == 1
            await asyncio.sleep(0.002)
        await peer.wait("message", sends + turns, subscriber="node:inbox", mode="EQ")
        assert [m["body"] for m in peer.of("message", mode="EQ")[sends:]] == [
            f"turn {i}" for i in range(turns)]
        assert a.stats()["link_full"] == 0

        # ALL from B: every subscriber once, Python's and the peer's.
        assert await b.send_to({"hello": "all"}, ReceiveMode.ALL) == 4
        [m] = await peer.wait("message", mode="ALL")
        assert (m["body"], m["type"], m["target"]) == ({"hello": "all"}, "dict", None)
        await async_wait_until(lambda: len(sink_a.got) == 1 and len(sink_b.got) == 1
                               and len(svc.got) == 1, 5.0, what="ALL on the Python side")

        # A request answered by the peer's subscriber.
        assert await a.request("node:inbox", "ping", timeout=5.0) == {
            "echo": "ping", "subscriber": "node:inbox"}
        assert len(peer.of("message", request=True)) == 1

        # The peer sends to a Python subscriber it knows from B's table.
        peer_sends = 150
        peer.command(cmd="send", id="s1", mode="EQ", target="py:sink", body="from node",
                     sender="node:inbox", count=peer_sends, numbered=True)
        [sent] = await peer.wait("sent", id="s1")
        assert sent["matched"] == peer_sends
        await async_wait_until(lambda: len(sink_b.got) == 1 + peer_sends, 5.0,
                               what="the peer's messages at B")
        from_peer = sink_b.got[1:]
        assert [m.body for m in from_peer] == [{"n": i, "body": "from node"}
                                              for i in range(peer_sends)]
        assert {(m.node_id, m.sender, m.type) for m in from_peer} == {(pid, "node:inbox", "dict")}
        assert [m.id for m in from_peer[:2]] == [f"{pid}-1", f"{pid}-2"]

        # The peer's request to a Python service, and NO_SUBSCRIBER for a name nobody has.
        peer.command(cmd="request", id="r1", target="svc:py", body="q")
        [reply] = await peer.wait("reply", id="r1")
        assert (reply["status"], reply["type"], reply["body"], reply["from"]) == (
            "OK", "dict", {"py": "q"}, b.node_id)
        peer.command(cmd="request", id="r2", target="svc:nobody", body="q")
        [reply] = await peer.wait("reply", id="r2")
        assert reply["status"] == "NO_SUBSCRIBER"

        # Everything acknowledged both ways, nothing lost, nothing malformed on either side.
        async def all_acked() -> bool:
            return not any((await peer.stats())["unacknowledged"].values())
        await async_wait_until(all_acked, 5.0, what="the peer's batches acknowledged")
        stats = await peer.stats()
        assert {k: stats[k] for k in ("malformed_frames", "malformed_records",
                                      "unknown_sender_records", "malformed_bodies")} == {
            "malformed_frames": 0, "malformed_records": 0, "unknown_sender_records": 0,
            "malformed_bodies": 0}
        for node in (a, b):
            s = node.stats()
            assert (s["malformed_frames"], s["malformed_records"], s["lost_messages"],
                    s["impostor_frames"]) == (0, 0, 0, 0)


async def test_heartbeats_keep_the_peer_alive_and_sigkill_makes_it_dead(
        node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(2) as (a, b):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--subscribe", "node:one", "--subscribe", "node:two").start()
        pid = peer.ready["node_id"]
        for node in (a, b):
            await async_wait_until(lambda n=node: remote_names(n, pid) == ["node:one", "node:two"],
                                   JOIN_TIMEOUT_S, what="the peer's subscribers")
        events = {node.node_id: node.events() for node in (a, b)}
        seen: dict[str, list[object]] = {a.node_id: [], b.node_id: []}

        async def collect(node_id: str) -> None:
            async for event in events[node_id]:
                seen[node_id].append(event)
        tasks = [asyncio.create_task(collect(n)) for n in events]
        try:
            # Once both links are up (a link that has not connected yet makes the peer
            # suspect), the idle peer's HEARTBEATs keep it alive: never suspect, never dead.
            for node in (a, b):
                await async_wait_until(
                    lambda n=node: {p.node_id: p.state for p in n.peers}.get(pid) == "alive",
                    JOIN_TIMEOUT_S, what="the peer alive")
            deadline = time.monotonic() + ALIVE_WATCH_S
            samples = 0
            while time.monotonic() < deadline:
                for node in (a, b):
                    states = {p.node_id: p.state for p in node.peers}
                    assert states.get(pid) == "alive", (node.node_id, states)
                samples += 1
                await asyncio.sleep(0.05)
            assert samples > 20
            assert not any(isinstance(e, PeerDown) for events_ in seen.values() for e in events_)
            rtt = next(p.rtt_s for p in a.peers if p.node_id == pid)
            assert rtt is not None and 0 < rtt < 0.5  # the peer echoes heartbeat clocks

            killed_at = time.monotonic()
            peer.kill()
            for node in (a, b):
                await async_wait_until(
                    lambda n=node: any(isinstance(e, PeerDown) and e.peer.node_id == pid
                                       for e in seen[n.node_id]),
                    DEATH_DEADLINE_S, what="PeerDown for the killed peer")
                await async_wait_until(
                    lambda n=node: sorted(e.subscriber.name for e in seen[n.node_id]
                                          if isinstance(e, SubscriberDown)
                                          and e.subscriber.node_id == pid)
                    == ["node:one", "node:two"], DEATH_DEADLINE_S, what="SubscriberDown")
                [down] = [e for e in seen[node.node_id] if isinstance(e, PeerDown)]
                assert down.reason == "timeout"
                assert remote_names(node, pid) == []
                assert pid not in {p.node_id for p in node.peers}
            assert time.monotonic() - killed_at < DEATH_DEADLINE_S
        finally:
            for task in tasks:
                task.cancel()


async def test_tables_replicate_both_ways_after_the_join(
        node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a)).start()
        pid = peer.ready["node_id"]
        await async_wait_until(lambda: pid in {p.node_id for p in a.peers}, JOIN_TIMEOUT_S,
                               what="the peer joined")
        # Python subscribes and unsubscribes: DELTAs reach the peer.
        sub = await a.subscribe("py:late", Inbox(), meta={"k": 1})
        [up] = await peer.wait("subscriber_up", name="py:late")
        assert (up["node_id"], up["meta"]) == (a.node_id, {"k": 1})
        await sub.close()
        await peer.wait("subscriber_down", name="py:late")
        # The peer subscribes: its DELTA reaches Python.
        peer.command(cmd="subscribe", id="n1", name="node:late", meta={"v": [1, 2]})
        await a.wait_for("node:late", timeout=5.0)
        [s] = a.lookup("node:late")
        assert (s.node_id, s.meta) == (pid, {"v": [1, 2]})
        assert await a.send_to("late", ReceiveMode.EQ, "node:late") == 1
        [m] = await peer.wait("message", subscriber="node:late")
        assert m["body"] == "late"


async def test_a_closing_peer_says_bye(node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--subscribe", "node:x").start()
        pid = peer.ready["node_id"]
        await a.wait_for("node:x", timeout=JOIN_TIMEOUT_S)
        events = a.events()
        peer.command(cmd="close")
        async with asyncio.timeout(DEATH_DEADLINE_S):
            async for event in events:
                if isinstance(event, PeerDown):
                    assert (event.peer.node_id, event.reason) == (pid, "bye")
                    break
        assert a.lookup("node:x") == []
        assert peer.process.wait(timeout=5) == 0


async def test_a_python_node_that_closes_is_forgotten_by_the_peer(
        node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(2) as (a, b):
        await b.subscribe("py:b", Inbox())
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a)).start()
        await peer.wait("subscriber_up", name="py:b")
        await b.close()
        [down] = await peer.wait("peer_down", node_id=b.node_id, timeout=DEATH_DEADLINE_S)
        assert down["reason"] == "bye"
        assert len(peer.of("subscriber_down", name="py:b")) == 1


async def test_with_a_secret_the_peer_joins_over_curve_and_a_wrong_secret_does_not(
        node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(1, secret=SECRET) as (a,):
        sink = Inbox()
        await a.subscribe("py:sink", sink)
        peer = await node_peer("--cluster", CLUSTER, "--secret", SECRET, "--seed", seed(a),
                               "--subscribe", "node:inbox").start()
        assert peer.ready["curve"] is True
        await a.wait_for("node:inbox", timeout=JOIN_TIMEOUT_S)
        assert await a.request("node:inbox", "ping", timeout=5.0) == {
            "echo": "ping", "subscriber": "node:inbox"}
        await peer.wait("subscriber_up", name="py:sink")
        peer.command(cmd="send", id="s", target="py:sink", body="secret hi", count=3)
        await async_wait_until(lambda: len(sink.got) == 3, 5.0, what="CURVE messages")
        assert [m.body for m in sink.got] == ["secret hi"] * 3
        # The node id is derived from the peer's CURVE key: Python's impostor check passes.
        assert a.stats()["impostor_frames"] == 0

        outsider = await node_peer("--cluster", CLUSTER, "--secret", "not the secret",
                                   "--seed", seed(a), "--subscribe", "node:outsider").start()
        oid = outsider.ready["node_id"]
        deadline = time.monotonic() + QUIET_WINDOW_S
        while time.monotonic() < deadline:
            assert oid not in {p.node_id for p in a.peers}
            assert a.lookup("node:outsider") == []
            await asyncio.sleep(0.05)
        assert outsider.of("peer_up") == []


async def test_the_peer_declares_a_sigkilled_python_node_dead(
        node_peer: Callable[..., NodePeer], spawn: Spawn) -> None:
    agent = spawn(cluster=CLUSTER)
    agent.call("subscribe", name="py:doomed")
    peer = await node_peer("--cluster", CLUSTER, "--seed", agent.endpoint).start()
    [up] = await peer.wait("subscriber_up", name="py:doomed")
    killed_at = time.monotonic()
    agent.kill()
    [down] = await peer.wait("peer_down", node_id=up["node_id"], timeout=DEATH_DEADLINE_S)
    assert down["reason"] == "timeout"
    assert time.monotonic() - killed_at < DEATH_DEADLINE_S
    assert len(peer.of("subscriber_down", name="py:doomed")) == 1


async def test_a_stopped_peer_is_declared_dead_then_resumes_its_stream_exactly_once(
        node_peer: Callable[..., NodePeer]) -> None:
    """SIGSTOP freezes the peer (libzmq's threads too): A's pings go unanswered, A declares
    it dead and keeps its stream (section 10.6). After SIGCONT the two say HELLO again, the
    stream resumes, and what A sent meanwhile arrives once, in order, nothing lost."""
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--subscribe", "node:a").start()
        pid = peer.ready["node_id"]
        await a.wait_for("node:a", timeout=JOIN_TIMEOUT_S)
        # A's own link to the peer must be up before the freeze: a link that never connected
        # is given connect_timeout_s (5 s), not unreachable_after_s. HEARTBEATs from A have
        # come over it.
        async def heard_from_a() -> bool:
            return int((await peer.stats())["received"].get("HEARTBEAT", 0)) >= 2
        await async_wait_until(heard_from_a, JOIN_TIMEOUT_S, what="A's heartbeats at the peer")
        events = a.events()
        seen: list[object] = []

        async def collect() -> None:
            async for event in events:
                seen.append(event)
        task = asyncio.create_task(collect())
        try:
            os.kill(peer.process.pid, signal.SIGSTOP)
            during = 5
            for i in range(during):
                assert await a.send_to(f"during {i}", ReceiveMode.EQ, "node:a") == 1
            await async_wait_until(lambda: any(isinstance(e, PeerDown) for e in seen),
                                   DEATH_DEADLINE_S, what="the stopped peer declared dead")
            os.kill(peer.process.pid, signal.SIGCONT)
            await async_wait_until(lambda: any(isinstance(e, PeerUp) for e in seen),
                                   JOIN_TIMEOUT_S, what="the peer back")
            await a.wait_for("node:a", timeout=JOIN_TIMEOUT_S)
            assert await a.send_to("after", ReceiveMode.EQ, "node:a") == 1
            await peer.wait("message", during + 1, subscriber="node:a")
            await peer.stats()
            assert [m["body"] for m in peer.of("message")] == [
                f"during {i}" for i in range(during)] + ["after"]
            [down] = [e for e in seen if isinstance(e, PeerDown)]
            assert (down.peer.node_id, down.reason) == (pid, "timeout")
            assert a.stats()["lost_messages"] == 0
        finally:
            task.cancel()


async def test_a_lost_delta_is_repaired_from_the_heartbeat_digest_both_ways(
        node_peer: Callable[..., NodePeer]) -> None:
    """Section 9.4: a HEARTBEAT carries the table version; a replica behind it asks for a
    SNAPSHOT. The peer's test hooks lose DELTAs on purpose: a subscription it makes without
    sending the DELTA, and every DELTA it receives dropped."""
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--test-drop-deltas").start()
        pid = peer.ready["node_id"]
        await async_wait_until(lambda: pid in {p.node_id for p in a.peers}, JOIN_TIMEOUT_S,
                               what="the peer joined")
        peer.command(cmd="subscribe", id="q", name="node:quiet", silent=True)
        await a.wait_for("node:quiet", timeout=5.0)  # from the peer's SNAPSHOT
        await a.subscribe("py:late", Inbox())
        await peer.wait("subscriber_up", name="py:late", timeout=5.0)  # from A's SNAPSHOT
        stats = await peer.stats()
        assert stats["received"]["DELTA"] == 1  # A's DELTA came, and was "lost"
        assert stats["snapshot_requests_received"] >= 1
        assert stats["snapshots_received"] >= 1
        assert [s.node_id for s in a.lookup("node:quiet")] == [pid]


async def test_other_clusters_are_refused_both_ways(node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(1) as (a,):
        outsider = await node_peer("--cluster", "other", "--seed", seed(a)).start()
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a)).start()
        other = Node("other", discovery=[peer.ready["endpoint"]], host="127.0.0.1")
        await other.start()
        try:
            await async_wait_until(lambda: a.stats()["refused_peers"] == 1, 5.0,
                                   what="A refused the outsider peer")
            await async_wait_until(lambda: other.stats()["refused_peers"] == 1, 5.0,
                                   what="the peer refused the other cluster's node")

            async def refused(p: NodePeer) -> int:
                return int((await p.stats())["refused_peers"])
            await async_wait_until(lambda: refused(outsider), 5.0, what="REFUSE at the peer")
            # Remembered for refusal_memory_s (10 s): no second dial, no second refusal.
            await asyncio.sleep(QUIET_WINDOW_S)
            assert (await refused(outsider), await refused(peer)) == (1, 1)
            assert (a.stats()["refused_peers"], other.stats()["refused_peers"]) == (1, 1)
            assert outsider.of("peer_up") == [] and other.peers == []
            assert {p.node_id for p in a.peers} == {peer.ready["node_id"]}
        finally:
            await other.close()


@message("NodePeerSpeak")
@dataclass
class Speak:
    user: str
    text: str


async def test_every_mode_python_plans_is_what_the_peer_delivers(
        node_peer: Callable[..., NodePeer]) -> None:
    """Section 12.2 on the peer's side: for each mode and target, the subscribers the peer
    delivers to are exactly those Python counted for it (REGEX is left out: none)."""
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a), "--subscribe",
                               "node:a", "--subscribe", "node:a", "--subscribe", "node:b").start()
        await a.wait_for("node:a", count=2, timeout=JOIN_TIMEOUT_S)
        await a.wait_for("node:b", timeout=JOIN_TIMEOUT_S)
        cases: list[tuple[ReceiveMode, str | list[str] | None, list[str]]] = [
            (ReceiveMode.EQ, "node:a", ["node:a", "node:a"]),
            (ReceiveMode.EQ, ["node:b", "node:a", "node:b"], ["node:b", "node:a", "node:a"]),
            (ReceiveMode.NOT_EQ, "node:a", ["node:b"]),
            (ReceiveMode.NOT_EQ, [], ["node:a", "node:a", "node:b"]),
            (ReceiveMode.ALL, None, ["node:a", "node:a", "node:b"]),
            (ReceiveMode.ANY, ["node:x", "node:b"], ["node:b"]),
            (ReceiveMode.ANY, "node:a", ["node:a"]),
        ]
        delivered = 0
        for i, (mode, target, expected) in enumerate(cases):
            assert await a.send_to(f"case {i}", mode, target) == len(expected), (mode, target)
            delivered += len(expected)
            got = await peer.wait("message", delivered, timeout=5.0)
            assert [m["subscriber"] for m in got[delivered - len(expected):]] == expected
            assert {m["body"] for m in got[delivered - len(expected):]} == {f"case {i}"}
        # ANY alternates between the two node:a subscribers (the sub_id Python chose).
        for i in range(4):
            await a.send_to(f"any {i}", ReceiveMode.ANY, "node:a")
        got = (await peer.wait("message", delivered + 4, timeout=5.0))[delivered:]
        assert sorted(collections.Counter(m["sub_id"] for m in got).values()) == [2, 2]
        # REGEX: Python plans it, the peer (no linear-time matcher) delivers to nobody.
        assert await a.send_to("regex", ReceiveMode.REGEX, "^node:") == 3
        async def regex_arrived() -> bool:
            return int((await peer.stats())["undeliverable_messages"]) == 1
        await async_wait_until(regex_arrived, 5.0, what="the REGEX MSG at the peer")
        stats = await peer.stats()
        assert (stats["received_messages"], stats["undeliverable_messages"]) == (len(cases) + 5, 1)
        assert len(peer.of("message")) == delivered + 4


async def test_bodies_and_errors_travel_both_ways(node_peer: Callable[..., NodePeer]) -> None:
    async with python_nodes(1) as (a,):
        sink = Inbox()
        await a.subscribe("py:sink", sink)

        def bad(msg: Message) -> None:
            raise ValueError("bad input")
        await a.subscribe("py:bad", bad)
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a), "--subscribe",
                               "node:one", "--subscribe", "node:one").start()
        await a.wait_for("node:one", count=2, timeout=JOIN_TIMEOUT_S)
        await peer.wait("subscriber_up", name="py:bad")

        # A registered record to the peer: extension type 1, shown with its type name.
        await a.send_to(Speak("bob", "hi"), ReceiveMode.EQ, "node:one", sender="user:bob")
        got = await peer.wait("message", 2)
        assert {(m["type"], json.dumps(m["body"])) for m in got} == {
            ("NodePeerSpeak", json.dumps({"$type": "NodePeerSpeak", "user": "bob", "text": "hi"}))}
        # Bytes, floats, nil and a big integer keep their types.
        value = {"b": b"\x00\x01", "f": 1.5, "n": None, "i": 2**62 + 1, "l": [1, "x"]}
        await a.send_to(value, ReceiveMode.EQ, "node:one")
        got = (await peer.wait("message", 4))[2:]
        assert got[0]["body"] == {"b": {"$bin": "0001"}, "f": 1.5, "n": None,
                                  "i": str(2**62 + 1), "l": [1, "x"]}

        # From the peer: a registered record rebuilt as the class, an unknown one as a dict.
        peer.command(cmd="send", id="r", target="py:sink", body={"$type": "NodePeerSpeak",
                                                                 "user": "al", "text": "yo"})
        peer.command(cmd="send", id="u", target="py:sink", body={"$type": "Unknown", "x": 1})
        await async_wait_until(lambda: len(sink.got) == 2, 5.0, what="records at Python")
        assert [(m.body, m.type) for m in sink.got] == [
            (Speak("al", "yo"), "NodePeerSpeak"), ({"x": 1}, "Unknown")]

        # A Python handler that raises: ERROR with the class name and "<Class>: <message>".
        peer.command(cmd="request", id="e", target="py:bad", body=1)
        [reply] = await peer.wait("reply", id="e")
        assert (reply["status"], reply["type"], reply["body"]) == (
            "ERROR", "ValueError", "ValueError: bad input")
        # An EQ request to the peer's two subscribers: two REPLYs, Python takes the first.
        assert await a.request("node:one", "x", mode=ReceiveMode.EQ, timeout=5.0) == {
            "echo": "x", "subscriber": "node:one"}


async def test_nodes_advertising_a_wildcard_are_joined_at_the_address_dialled(
        node_peer: Callable[..., NodePeer]) -> None:
    """A node bound to all interfaces advertises tcp://*:PORT (here: advertise="*" on
    loopback). The peer cannot see a connection's address (zeromq.js has no Peer-Address), so
    it resolves the wildcard from its own dial or from PEERS (section 18), and joins both."""
    async with python_nodes(2, advertise="*") as (a, b):
        assert a.endpoint.startswith("tcp://*:")
        await b.subscribe("py:b", Inbox())
        peer = await node_peer("--cluster", CLUSTER, "--seed", seed(a),
                               "--subscribe", "node:w").start()
        ups = await peer.wait("peer_up", 2)
        assert {(u["node_id"], u["endpoint"]) for u in ups} == {
            (a.node_id, seed(a)), (b.node_id, seed(b))}
        await peer.wait("subscriber_up", name="py:b")
        for node in (a, b):
            await node.wait_for("node:w", timeout=JOIN_TIMEOUT_S)
        assert await b.send_to("wild", ReceiveMode.EQ, "node:w") == 1
        [m] = await peer.wait("message")
        assert (m["body"], m["from"]) == ("wild", b.node_id)


def _rec(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


_NID = b"\x05" * 16
_EP = "tcp://127.0.0.1:9"  # nobody listens: a REFUSE link dialled there is refused locally


def _hello(**changes: Any) -> bytes:
    fields = {"protocol": wire.PROTOCOL_VERSION, "cluster": "other", "node_id": _NID,
              "incarnation": 1, "endpoint": _EP, "name": "", "reply": False, "via": "", "echo": "",
              "version": 0, "entries": []}
    fields.update(changes)
    return _rec(1, *fields.values())


_BODY = msgpack.packb("x")
HOSTILE_RECORDS: dict[str, bytes] = {
    "heartbeat": _rec(7, 1, 0, 0, 0, 1, 0, 0),
    "heartbeat arity 5": _rec(7, 1, 0, 0, 0),
    "heartbeat bool": _rec(7, True, 0, 0, 0, 1, 0, 0),
    "heartbeat negative": _rec(7, -1, 0, 0, 0, 1, 0, 0),
    "heartbeat uint64 max": _rec(7, 2**64 - 1, 0, 0, 0, 1, 0, 0),
    "kind bool": _rec(True),
    "kind 99": _rec(99),
    "bye arity 2": _rec(8, 1),
    "leaving arity 2": _rec(13, 0),
    "snapshot request arity 2": _rec(5, 1),
    "delta": _rec(4, 1, 1, 1, "n", {}),
    "delta removal with meta": _rec(4, 1, 1, 1, None, {}),
    "delta addition without meta": _rec(4, 1, 1, 1, "n", None),
    "delta empty name": _rec(4, 1, 1, 1, "", {}),
    "delta name 1024 emoji": _rec(4, 1, 1, 1, "\U0001F600" * 1024, {}),
    "delta name 1025 emoji": _rec(4, 1, 1, 1, "\U0001F600" * 1025, {}),
    "delta meta bin key": _rec(4, 1, 1, 1, "n", {b"k": 2}),
    "delta meta 4096 bytes": _rec(4, 1, 1, 1, "n", {"k": "x" * 4090}),
    "delta meta 4097 bytes": _rec(4, 1, 1, 1, "n", {"k": "x" * 4091}),
    "delta meta a list": _rec(4, 1, 1, 1, "n", [1]),
    "msg": _rec(9, 1, None, 0, "t", "str", _BODY, None, None),
    "msg body str": _rec(9, 1, None, 0, "t", "str", "x", None, None),
    "msg mode 5": _rec(9, 1, None, 5, "t", "str", _BODY, None, None),
    "msg empty target": _rec(9, 1, None, 0, "", "str", _BODY, None, None),
    "msg empty target list": _rec(9, 1, None, 0, [], "str", _BODY, None, None),
    "msg target list with empty": _rec(9, 1, None, 0, ["a", ""], "str", _BODY, None, None),
    "msg 10000 targets": _rec(9, 1, None, 0, ["a"] * 10000, "str", _BODY, None, None),
    "msg 10001 targets": _rec(9, 1, None, 0, ["a"] * 10001, "str", _BODY, None, None),
    "msg sender bin": _rec(9, 1, b"s", 0, "t", "str", _BODY, None, None),
    "msg request id bool": _rec(9, 1, None, 0, "t", "str", _BODY, None, True),
    "msg sub id negative": _rec(9, 1, None, 4, "t", "str", _BODY, -1, None),
    "reply no subscriber": _rec(10, 1, 2, "", b""),
    "reply status 3": _rec(10, 1, 3, "", b""),
    "reply body str": _rec(10, 1, 0, "", ""),
    "ack stream 2^32": _rec(12, 2**32, 0, False),
    "ack resend 0": _rec(12, 1, 0, 0),
    "seq not first": _rec(11, 1, 1, 1),
    "peers": _rec(3, [[_NID, _EP]]),
    "peers 513": _rec(3, [[_NID, _EP]] * 513),
    "peers node id 0": _rec(3, [[b"\x00" * 16, _EP]]),
    "peers pair of 1": _rec(3, [[_NID]]),
    "snapshot": _rec(6, 1, 1, [[1, "n", {}]]),
    "snapshot entries a map": _rec(6, 1, 1, {}),
    "refuse": _rec(2, "r", _EP),
    "refuse reason 1025": _rec(2, "r" * 1025, ""),
    "hello other cluster": _hello(),
    "hello node id 0": _hello(node_id=b"\x00" * 16),
    "hello node id 15 bytes": _hello(node_id=b"\x05" * 15),
    "hello udp endpoint": _hello(endpoint="udp://127.0.0.1:9"),
    "hello port 0": _hello(endpoint="tcp://127.0.0.1:0"),
    "hello port 70000": _hello(endpoint="tcp://127.0.0.1:70000"),
    "hello port +9": _hello(endpoint="tcp://127.0.0.1:+9"),
    "hello port arabic digit": _hello(endpoint="tcp://127.0.0.1:\u0669"),
    "hello no host": _hello(endpoint="tcp://:9"),
    "hello endpoint 301": _hello(endpoint="tcp://" + "h" * 292 + ":9"),
    "hello reply int": _hello(reply=1),
    "hello protocol bool": _hello(protocol=True),
    "hello cluster 1025": _hello(cluster="c" * 1025),
    "hello entry meta nil": _hello(entries=[[1, "n", None]]),
    "hello entry 4 items": _hello(entries=[[1, "n", {}, 1]]),
}
HOSTILE_FRAMES: dict[str, bytes | Callable[[int], bytes]] = {
    "not an array": msgpack.packb(5),
    "trailing byte": msgpack.packb([]) + b"\x00",
    "an extension": b"\x91\xd4\x05\x00",
    "an int map key": b"\x91\x81\x01\x02",
    "truncated": b"\x92\x91",
    # A callable gets the receiver's incarnation (a SEQ names it, section 4.11).
    "seq stream 0": lambda inc: msgpack.packb([[11, 0, 1, inc], [8]]),
    "seq number 0": lambda inc: msgpack.packb([[11, 5, 0, inc], [8]]),
    "seq arity 2": msgpack.packb([[11, 5], [8]]),
    "seq of version 2": msgpack.packb([[11, 5, 1], [8]]),
    "seq incarnation -1": msgpack.packb([[11, 5, 1, -1], [8]]),
    "seq from a stranger": lambda inc: msgpack.packb([[11, 5, 1, inc], [8], [8]]),
    "seq for another incarnation": lambda inc: msgpack.packb([[11, 5, 1, inc + 1], [8], [8]]),
}
COUNTERS = ("malformed_frames", "malformed_records", "unknown_sender_records", "refused_peers",
            "misdirected_batches")


async def test_hostile_input_is_counted_the_same_by_the_peer_and_a_python_node(
        node_peer: Callable[..., NodePeer]) -> None:
    """The same frames, from one stranger, to both: each one is counted alike (sections 3, 4
    and 6). This is how stream 0 in a SEQ and the SEQ in a stranger's count were found."""
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER).start()
        context = zmq.asyncio.Context()
        links = []
        try:
            for endpoint in (a.endpoint, peer.ready["endpoint"]):
                link = context.socket(zmq.DEALER)
                link.setsockopt(zmq.ROUTING_ID, _NID + b"\x00\x00\x00\x01")
                link.setsockopt(zmq.LINGER, 0)
                link.connect(endpoint)
                links.append(link)

            async def counts() -> tuple[tuple[int, ...], tuple[int, ...]]:
                mine = await peer.stats()
                return (tuple(a.stats()[k] for k in COUNTERS), tuple(mine[k] for k in COUNTERS))
            cases: list[tuple[str, bytes | Callable[[int], bytes]]] = [
                (n, b"\x91" + r) for n, r in HOSTILE_RECORDS.items()]
            cases += list(HOSTILE_FRAMES.items())
            before = await counts()
            differ = {}
            incarnations = (a.incarnation, int(peer.ready["incarnation"]))
            for name, frame in cases:
                for link, inc in zip(links, incarnations, strict=True):
                    await link.send(frame(inc) if callable(frame) else frame)

                async def both_counted(prev: Any = before) -> Any:
                    now = await counts()
                    return now if now[0] != prev[0] and now[1] != prev[1] else None
                after = await async_wait_until(both_counted, 5.0, what=f"{name} counted")
                python = tuple(x - y for x, y in zip(after[0], before[0], strict=True))
                node = tuple(x - y for x, y in zip(after[1], before[1], strict=True))
                if python != node:
                    differ[name] = (python, node)
                before = after
            assert differ == {}
        finally:
            for link in links:
                link.close()
            context.term()


def _seq(stream: int, n: int, incarnation: int) -> bytes:
    return (b"\x94\x0b\xce" + stream.to_bytes(4, "big") + b"\xcf" + n.to_bytes(8, "big")
            + b"\xcf" + incarnation.to_bytes(8, "big"))


def _batch(*records: bytes) -> bytes:
    return bytes([0x90 | len(records)]) + b"".join(records)


ACK_QUIET_S = 0.15
"""After each step's ACK, how long no second ACK may come: three ticks (tick_interval_s
0.05 s, the most an ACK waits) and more than RESEND_INTERVAL_S (0.1 s)."""


async def test_streams_are_judged_and_acknowledged_alike_by_the_peer_and_a_python_node(
        node_peer: Callable[..., NodePeer]) -> None:
    """Section 10.3-10.5 from the sender's seat: a raw ZeroMQ sender says HELLO, then sends
    sequenced batches (in order, a duplicate, a gap, another stream, a lost tail named by a
    HEARTBEAT, late batches of the old stream, its start among them) to a Python node and to
    the peer, and reads the ACKs each sends back. Both answer each step with exactly the ACK
    the spec gives, or none (this found the reference not acknowledging a duplicate again)."""
    s, t = 0x1000, 0x2000
    heartbeat = _rec(7, 1, 0, 0, 0, 1, 0, 0)

    def steps_for(inc: int) -> list[tuple[str, bytes, tuple[int, int, bool] | None]]:
        """The steps to a receiver of incarnation ``inc``."""
        return [
            # (what, batch, the one ACK due: (stream, seq, resend), or None: no ACK)
            ("take 1", _batch(_seq(s, 1, inc), heartbeat), (s, 1, False)),
            ("duplicate 1", _batch(_seq(s, 1, inc), heartbeat), (s, 1, False)),
            ("gap: 3", _batch(_seq(s, 3, inc), heartbeat), (s, 1, True)),
            ("take 2", _batch(_seq(s, 2, inc), heartbeat), (s, 2, False)),
            ("take 3", _batch(_seq(s, 3, inc), heartbeat), (s, 3, False)),
            ("another stream at 5", _batch(_seq(t, 5, inc), heartbeat), (t, 0, True)),
            ("another stream from 1", _batch(_seq(t, 1, inc), heartbeat), (t, 1, False)),
            ("a heartbeat: 4 were sent", _batch(_rec(7, 1, 0, t, 4, 1, 0, 0)), (t, 1, True)),
            # Stale (10.3): dropped, nothing asked; not even its start switches back to it.
            ("a late batch of the old stream", _batch(_seq(s, 4, inc), heartbeat), None),
            ("a late start of the old stream", _batch(_seq(s, 1, inc), heartbeat), None),
            ("the current stream goes on", _batch(_seq(t, 2, inc), heartbeat), (t, 2, False)),
            # Misdirected (10.3): for another incarnation, even the next batch is not taken.
            ("the next batch, for another incarnation", _batch(_seq(t, 3, inc + 1), heartbeat),
             None),
            ("the next batch, for ours", _batch(_seq(t, 3, inc), heartbeat), (t, 3, False)),
        ]
    node_id = b"\x06" * 16
    async with python_nodes(1) as (a,):
        peer = await node_peer("--cluster", CLUSTER).start()
        context = zmq.asyncio.Context()
        try:
            for endpoint, stats, inc in ((a.endpoint, None, a.incarnation),
                                         (peer.ready["endpoint"], peer,
                                          int(peer.ready["incarnation"]))):
                inbox = context.socket(zmq.ROUTER)
                inbox.setsockopt(zmq.LINGER, 0)
                port = inbox.bind_to_random_port("tcp://127.0.0.1")
                link = context.socket(zmq.DEALER)
                link.setsockopt(zmq.LINGER, 0)
                link.setsockopt(zmq.ROUTING_ID, node_id + b"\x00\x00\x00\x01")
                link.connect(endpoint)

                async def acks(within: float, inbox: Any = inbox) -> list[tuple[int, int, bool]]:
                    """The ACKs that arrive within ``within`` s (stops at the first)."""
                    try:
                        while True:
                            _, frame = await asyncio.wait_for(inbox.recv_multipart(), within)
                            found = [tuple(r[1:]) for r in msgpack.unpackb(frame) if r[0] == 12]
                            if found:
                                return found
                    except TimeoutError:
                        return []
                await link.send(_batch(_rec(1, wire.PROTOCOL_VERSION, CLUSTER, node_id, 1,
                                            f"tcp://127.0.0.1:{port}",
                                            "raw", False, endpoint, "", 0, [])))
                await async_wait_until(
                    lambda e=endpoint: (node_id.hex() in {p.node_id for p in a.peers})
                    if e == a.endpoint else peer.of("peer_up", node_id=node_id.hex()),
                    JOIN_TIMEOUT_S, what="the raw sender is a peer")
                for what, batch, due in steps_for(inc):
                    await link.send(batch)
                    if due is not None:
                        assert await acks(5.0) == [due], (endpoint, what)
                    assert await acks(ACK_QUIET_S) == [], (endpoint, what, "an ACK not due")
                counted = (a.stats() if stats is None else await peer.stats())
                assert (counted["duplicate_batches"], counted["gap_batches"],
                        counted["stale_batches"], counted["misdirected_batches"]) == (
                            1, 2, 2, 1), endpoint
                link.close()
                inbox.close()
        finally:
            context.term()
