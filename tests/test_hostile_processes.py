"""Hostile input and slow peers, against real node processes on loopback.

- A raw ZeroMQ socket fires 100,000+ random and mutated frames at a node while a legitimate peer
  keeps sending to a subscriber on it: every legitimate message arrives, the node's memory
  stays flat, and its ``stats()`` account for every frame it dropped.
- A slow async handler and a frozen (SIGSTOPped) peer: queues stay bounded, drops are counted,
  the frozen peer is declared dead and rejoins cleanly after SIGCONT.

Memory is the resident set size from ``/proc/PID/status``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from smartroute import wire
from smartroute.config import Limits
from smartroute.errors import RemoteProtocolError
from smartroute.testing import rss_bytes, wait_until
from smartroute.testing.cluster import AgentError, AgentProcess

from .conftest import Spawn

pytestmark = pytest.mark.processes

CLUSTER = "hostile"
MIB = 1024 * 1024


class LegitSender:
    """Sends 0, 1, 2... from ``sender`` to ``target`` on a thread until stopped (or a cap)."""

    def __init__(self, sender: AgentProcess, target: str, *, cap: int = 50_000,
                 max_s: float = 90.0) -> None:
        self.sender, self.target, self.cap, self.max_s = sender, target, cap, max_s
        self.sent = 0
        self.matched: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="legit-sender")
        self.error: BaseException | None = None

    def __enter__(self) -> LegitSender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        try:
            while not self._stop.is_set() and self.sent < self.cap \
                    and time.monotonic() < deadline:
                self.matched.append(self.sender.call("send_to", body=self.sent,
                                                     target=self.target))
                self.sent += 1
        except BaseException as exc:  # reported by stop(), in the test's thread
            self.error = exc

    def stop(self) -> int:
        """Stop sending; returns how many were sent."""
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the legitimate sender is stuck"
        if self.error is not None:
            raise self.error
        return self.sent


def collect_from(node: AgentProcess, origin: str, expected: int,
                 timeout: float = 30.0) -> list[Any]:
    """Bodies ``node``'s subscribers received from ``origin``, once ``expected`` are in."""
    got: list[Any] = []

    def more() -> bool:
        got.extend(d["body"] for d in node.call("received") if d["node_id"] == origin)
        return len(got) >= expected

    wait_until(more, timeout, what=f"{expected} messages from {origin[:8]}")
    return got


def peer_downs(node: AgentProcess) -> list[dict[str, Any]]:
    return [e for e in node.call("events") if e["event"] == "PeerDown"]


# --- the fuzzer -----------------------------------------------------------------------------

def node_decoder() -> wire.Decoder:
    """Decodes exactly as a node with default limits does (see Protocol.__init__)."""
    limits = Limits()
    return wire.Decoder(max_frame_bytes=limits.max_frame_bytes,
                        max_table_entries=limits.max_table_entries, max_peers=limits.max_peers,
                        max_target_names=limits.max_target_names,
                        max_name_length=max(limits.max_name_length, 1024),
                        max_meta_bytes=limits.max_meta_bytes)


def templates(node_id: bytes, endpoint: str) -> list[bytes]:
    """Real batches, built with smartroute.wire, from a node claiming ``node_id``."""
    hello = wire.Hello(wire.PROTOCOL_VERSION, CLUSTER, node_id, 1, endpoint, "fuzz", False,
                       endpoint, "", 2, [(1, "user:mallory", {"k": "v"}), (2, "room:9", {})])
    msg = wire.Msg(1, "user:mallory", 0, ["user:alice", "room:1"], "str", b"\xa2hi", None, None)
    return [
        wire.encode_batch([wire.encode_hello(hello)]),
        wire.encode_batch([wire.encode_delta(wire.Delta(1, 3, 4, "user:eve", {"a": [1, 2]}))]),
        wire.encode_batch([wire.encode_msg(msg), wire.encode_msg(msg._replace(seq=2, mode=4,
                                                                               sub_id=3))]),
        wire.encode_batch([wire.encode_hello(hello), wire.encode_peers([(node_id, endpoint)]),
                           wire.encode_heartbeat(1, 2), wire.SNAPSHOT_REQUEST,
                           wire.encode_snapshot(wire.Snapshot(1, 2, hello.entries)),
                           wire.encode_reply(wire.Reply(5, 0, "str", b"\xa0")), wire.BYE]),
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 7)):
        op = rng.randrange(6)
        pos = rng.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[pos] = rng.randrange(256)
        elif op == 2:
            out[pos:pos] = os.urandom(rng.randrange(1, 9))
        elif op == 3 and out:
            del out[pos:pos + rng.randrange(1, 9)]
        elif op == 4:
            del out[pos:]
        else:
            out[pos:pos] = msgpack.packb([rng.randrange(12), *range(rng.randrange(12))])
    return bytes(out)


def fuzz_frames(rng: random.Random, count: int, bases: list[bytes]) -> Iterator[list[bytes]]:
    """``count`` hostile ZeroMQ messages (each a list of frames)."""
    for _ in range(count):
        choice = rng.random()
        if choice < 0.45:
            yield [mutate(rng, rng.choice(bases))]
        elif choice < 0.65:
            yield [os.urandom(rng.randrange(0, 300))]
        elif choice < 0.75:
            base = rng.choice(bases)
            yield [base[:rng.randrange(len(base))]]
        elif choice < 0.85:
            yield [msgpack.packb([[rng.randrange(12), *[rng.choice(
                [None, -1, 2**64 - 1, "x" * rng.randrange(300), b"\x01" * 16, [], {}, 1.5])
                for _ in range(rng.randrange(12))]]])]
        elif choice < 0.90:
            yield [rng.choice(bases)]  # well formed, from a stranger
        elif choice < 0.97:
            yield [os.urandom(8) for _ in range(rng.choice([2, 3, 5]))]  # wrong frame count
        else:
            yield [os.urandom(rng.randrange(4096, 64 * 1024))]  # large garbage


class Expected:
    """What the node must count for the frames we sent it (as a stranger)."""

    def __init__(self) -> None:
        self.decoder = node_decoder()
        self.messages = 0
        self.bad_frames = 0
        """Messages of the wrong shape, or whose frame is not a batch."""
        self.records = 0
        """Records inside well-formed batches: each is dropped one way or another."""

    def add(self, frames: list[bytes]) -> None:
        self.messages += 1
        if len(frames) != 1:
            self.bad_frames += 1
            return
        try:
            self.records += len(self.decoder.batch(frames[0]))
        except RemoteProtocolError:
            self.bad_frames += 1


def dialable_endpoints(decoder: wire.Decoder, payload: bytes) -> set[str]:
    """Every endpoint a node could dial because of ``payload`` (HELLO and PEERS records)."""
    found: set[str] = set()
    try:
        raws = decoder.batch(payload)
    except RemoteProtocolError:
        return found
    for raw in raws:
        try:
            record = decoder.record(raw)
        except RemoteProtocolError:
            continue
        if type(record) is wire.Hello:
            found.add(record.endpoint)
        elif type(record) is wire.Peers:
            found.update(endpoint for _, endpoint in record.peers)
    return found


def send_all(sock: zmq.Socket[bytes], messages: Iterator[list[bytes]],
             on_sent: Callable[[list[bytes]], None]) -> None:
    for frames in messages:
        if not frames:
            continue
        sock.send_multipart(frames)  # blocks at the high-water mark: paced by the node
        on_sent(frames)


RECORD_DROPS = ("malformed_frames", "malformed_records", "unknown_sender_records",
                "refused_peers")
"""Where a node counts what it drops: whole frames first, then single records."""


def stat_sum(stats: dict[str, int], *names: str) -> int:
    return sum(stats.get(name, 0) for name in names)


FUZZ_MESSAGES = 300_000
"""Hostile messages of the anonymous phase (the issue asks for at least 100,000; these take
~10 s here)."""

FUZZ_CHUNK = 25_000
"""RSS is sampled after each chunk, once the node has read all of it."""

WARMUP_CHUNKS = 2
"""Chunks before the first RSS sample that counts: ZeroMQ's queues, Python's allocator pools
and the rate-limited log memory fill up during these."""

RSS_GROWTH_LIMIT = 16 * MIB
"""How much the RSS floor (the least of three samples) may rise from just after the warm-up to
the end. Measured: samples wander within ~12 MiB above a flat floor (freed buffers are not
returned to the OS at once), so a floor is compared, not single samples. The 250,000 measured
messages would leak 24 MB at 100 bytes each."""


def test_a_node_under_a_fuzz_flood_serves_its_subscribers_with_flat_memory(
        spawn: Spawn) -> None:
    a = spawn(cluster=CLUSTER, log_level="WARNING")
    b = spawn(cluster=CLUSTER, seeds=[a.endpoint], log_level="WARNING")
    a.call("subscribe", name="sink")
    b.call("wait_for", name="sink")
    rng = random.Random(6)
    sink_ctx = zmq.Context()
    ctx = zmq.Context()
    try:
        # Where a decodable HELLO or PEERS of the identified phase may send the node: a socket
        # of ours, so no dial ever leaves loopback or reaches someone else's node.
        sink = sink_ctx.socket(zmq.ROUTER)
        sink.setsockopt(zmq.LINGER, 0)
        sink_port = sink.bind_to_random_port("tcp://127.0.0.1")
        sink_endpoint = f"tcp://127.0.0.1:{sink_port}"
        stranger = bytes([0x5A]) + os.urandom(15)
        bases = templates(stranger, sink_endpoint)

        anonymous = ctx.socket(zmq.DEALER)  # the node sees a 5-byte ROUTER-made id: a nobody
        anonymous.setsockopt(zmq.LINGER, 0)
        anonymous.setsockopt(zmq.SNDTIMEO, 20_000)  # a stuck node fails the test, not hangs it
        anonymous.connect(a.endpoint)
        before = a.call("stats")
        expected = Expected()
        rss: list[tuple[int, int]] = []
        started = time.monotonic()

        def wait_handled() -> dict[str, int]:
            def handled() -> dict[str, int] | None:
                stats = a.call("stats")
                frames = RECORD_DROPS[:1]
                if (stat_sum(stats, *frames) - stat_sum(before, *frames) >= expected.bad_frames
                        and stat_sum(stats, *RECORD_DROPS[1:])
                        - stat_sum(before, *RECORD_DROPS[1:]) >= expected.records):
                    return stats
                return None
            return wait_until(handled, 30, what="the node has read every hostile frame")

        legit_got: list[Any] = []

        def drain() -> None:  # the agent keeps what it received until asked: not the node's
            legit_got.extend(d["body"] for d in a.call("received") if d["node_id"] == b.node_id)

        with LegitSender(b, "sink") as legit:
            for _ in range(FUZZ_MESSAGES // FUZZ_CHUNK):
                send_all(anonymous, fuzz_frames(rng, FUZZ_CHUNK, bases), expected.add)
                wait_handled()
                drain()
                rss.append(rss_bytes(a.pid))
            fuzz_s = time.monotonic() - started
            after = wait_handled()

            # Phase 2: a socket that claims a 16-byte node id, so its HELLOs go deeper (they may
            # make it a peer), plus frames over max_frame_bytes that ZeroMQ itself refuses.
            identified = ctx.socket(zmq.DEALER)
            identified.setsockopt(zmq.LINGER, 0)
            identified.setsockopt(zmq.SNDTIMEO, 20_000)
            identified.setsockopt(zmq.ROUTING_ID, stranger + b"\0\0\0\1")
            identified.connect(a.endpoint)
            decoder = node_decoder()
            skipped = sent_identified = 0
            for frames in fuzz_frames(rng, 10_000, bases):
                if not frames or any(dialable_endpoints(decoder, f) - {sink_endpoint}
                                     for f in frames):
                    skipped += 1  # it could make the node dial off loopback
                    continue
                identified.send_multipart(frames)
                sent_identified += 1
            oversized = b"\x91" * (Limits().max_frame_bytes + 1)
            for _ in range(2):
                anonymous.send(oversized)
            sent = legit.stop()

        # Every legitimate message arrived, once, in order.
        assert sent > 100, f"only {sent} legitimate messages in {fuzz_s:.1f} s"
        assert legit.matched == [1] * sent
        drain()
        legit_got += collect_from(a, b.node_id, sent - len(legit_got))
        assert legit_got == list(range(sent))
        downs = peer_downs(a)
        assert [d for d in downs if d["node_id"] == b.node_id] == []
        assert peer_downs(b) == []
        assert [p["node_id"] for p in b.call("peers")] == [a.node_id]
        assert b.node_id in {p["node_id"] for p in a.call("peers")}

        # Every hostile frame of phase 1 is accounted for: dropped and counted.
        def delta(*names: str) -> int:
            return stat_sum(after, *names) - stat_sum(before, *names)

        assert expected.messages == FUZZ_MESSAGES
        assert delta("malformed_frames") == expected.bad_frames
        assert delta("malformed_records", "unknown_sender_records", "refused_peers") \
            == expected.records
        assert delta("internal_errors") == 0

        # Memory: flat after the warm-up.
        measured = rss[WARMUP_CHUNKS:]
        growth = min(measured[-3:]) - min(measured[:3])
        assert growth < RSS_GROWTH_LIMIT, \
            f"RSS floor grew {growth / MIB:.1f} MiB: {[round(r / MIB, 1) for r in rss]}"
        assert sent_identified > 5000 and skipped < 5000
        final = a.call("stats")
        assert final["internal_errors"] == 0
        print(f"fuzz: {FUZZ_MESSAGES} messages in {fuzz_s:.1f} s, {sent} legit delivered, "
              f"RSS samples (MiB) {[round(r / MIB, 1) for r in rss]}, "
              f"{sent_identified} identified sent ({skipped} skipped, {len(downs)} stranger "
              f"PeerDowns), stats {final}")
    finally:
        ctx.destroy(linger=0)
        sink_ctx.destroy(linger=0)


# --- slow consumers and a frozen peer -------------------------------------------------------

def rss_floor(pid: int, samples: int = 3, interval_s: float = 0.05) -> int:
    """The least of a few RSS samples (single samples wander with allocator noise)."""
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid))
        time.sleep(interval_s)  # spacing between samples, not a wait for anything
    return min(values)


HANDLER_QUEUE = Limits().handler_queue_size


def test_a_stuck_async_handler_holds_a_bounded_queue_and_drops_the_rest(spawn: Spawn) -> None:
    """A handler that never returns: 1 message in it, ``handler_queue_size`` queued, every
    other one dropped and counted; a request past the bound gets a RemoteError at once; the
    node's memory does not grow with what it drops."""
    a = spawn(cluster=CLUSTER, log_level="WARNING")
    b = spawn(cluster=CLUSTER, seeds=[a.endpoint], log_level="WARNING")
    a.call("subscribe", name="stuck", reply="silent")
    b.call("wait_for", name="stuck")
    flood = 3 * HANDLER_QUEUE
    assert b.call("flood", target="stuck", count=flood, per_turn=100, answer_within_s=60) == flood
    wait_until(lambda: a.call("stats")["received"] == flood, 30, what="the flood arrives")
    stats = a.call("stats")
    assert stats["delivered"] == HANDLER_QUEUE + 1  # one in the handler, the rest queued
    assert stats["queue_full"] == flood - HANDLER_QUEUE - 1
    assert stats["dropped"] >= stats["queue_full"]
    with pytest.raises(AgentError) as full:
        b.call("request", target="stuck", body="anyone?", mode="EQ", timeout=5.0)
    assert full.value.kind == "RemoteError" and "queue full" in str(full.value)

    floor = rss_floor(a.pid)
    for _ in range(3):  # nine times the queue more, all dropped: no growth
        b.call("flood", target="stuck", count=flood, per_turn=100, answer_within_s=60)
    wait_until(lambda: a.call("stats")["received"] == 4 * flood + 1, 30,
               what="the second flood arrives")
    growth = rss_floor(a.pid) - floor
    assert growth < 8 * MIB, f"RSS grew {growth / MIB:.1f} MiB while dropping"
    assert a.call("stats")["delivered"] == HANDLER_QUEUE + 1
    assert peer_downs(a) == [] and peer_downs(b) == []


FROZEN_TIMINGS = {"ping_timeout_s": 1.0, "unreachable_after_s": 0.5}
"""The defaults, stated: a frozen peer stops answering libzmq's pings, its connection is closed
after ``ping_timeout_s`` and it is dead ``unreachable_after_s`` later."""

FREEZE_FLOOD_S = 6.0
"""How long the sender floods its frozen peer: past the dead timeout by enough to see that
nothing accumulates once the peer is dead."""


FROZEN_LINK_BOUND = 16 * MIB
"""Most the sender may grow by while its peer is frozen. The peer's window holds at most
``send_window_batches`` (64) unacknowledged batches (here one ~250-byte message each), then
``send_to`` waits and raises ``LinkFull``; once the peer is dead nothing is queued for it."""


def test_a_frozen_peer_costs_bounded_memory_is_declared_dead_and_rejoins(
        spawn: Spawn) -> None:
    a = spawn(cluster=CLUSTER, log_level="WARNING", timings=FROZEN_TIMINGS)
    b = spawn(cluster=CLUSTER, seeds=[a.endpoint], log_level="WARNING", timings=FROZEN_TIMINGS)
    a.call("subscribe", name="back", reply="count")
    b.call("subscribe", name="sink", reply="count")
    a.call("wait_for", name="sink")
    b.call("wait_for", name="back")
    baseline = rss_floor(a.pid)
    os.kill(b.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        samples: list[tuple[float, int]] = []
        dead_at: float | None = None
        while time.monotonic() - frozen_at < FREEZE_FLOOD_S:
            # One batch per message (per_turn=1): the link to the frozen peer fills up in
            # batches, the bound ZeroMQ's SNDHWM puts on it; then send_to raises LinkFull.
            a.call("flood", target="sink", count=2000, per_turn=1, size=200,
                   answer_within_s=30)
            samples.append((time.monotonic() - frozen_at, rss_bytes(a.pid)))
            if dead_at is None and not a.call("lookup", name="sink"):
                dead_at = time.monotonic() - frozen_at
        stats = a.call("stats")
        downs = peer_downs(a)
    finally:
        os.kill(b.pid, signal.SIGCONT)
    assert downs == [{"event": "PeerDown", "node_id": b.node_id, "reason": "timeout"}]
    dead_after_s = FROZEN_TIMINGS["ping_timeout_s"] + FROZEN_TIMINGS["unreachable_after_s"]
    # The first unanswered ping leaves up to one ping interval (0.25 s) after the SIGSTOP; the
    # poll above sees the death only between floods (one may wait send_timeout_s, 1 s).
    assert dead_at is not None and dead_after_s - 0.5 <= dead_at < dead_after_s + 1.5, \
        f"declared dead after {dead_at} s"
    assert stats["peers"] == 0 and stats["link_full"] >= 1
    peak = max(rss for _, rss in samples)
    after_death = [rss for t, rss in samples if t > dead_at + 0.5]
    assert len(after_death) >= 3
    print(f"frozen peer: dead after {dead_at:.2f} s, baseline {baseline / MIB:.1f} MiB, "
          f"peak {peak / MIB:.1f} MiB, link_full {stats['link_full']}, "
          f"samples {[(round(t, 1), round(r / MIB, 1)) for t, r in samples]}")
    assert peak - baseline < FROZEN_LINK_BOUND, f"peak {(peak - baseline) / MIB:.1f} MiB"
    assert max(after_death) - min(after_death) < 8 * MIB  # nothing accumulates once dead

    # Woken up, it rejoins: alive on both sides, tables restored, messages both ways.
    woken = time.monotonic()
    wait_until(lambda: [p["state"] for p in a.call("peers")] == ["alive"]
               and [p["state"] for p in b.call("peers")] == ["alive"], 15,
               what="the woken peer is alive again on both sides")
    a.call("wait_for", name="sink")
    b.call("wait_for", name="back")
    print(f"frozen peer: alive again with its table {time.monotonic() - woken:.2f} s after "
          "SIGCONT")
    b.call("subscribe", name="b-inbox")  # new subscribers replicate both ways too
    a.call("subscribe", name="a-inbox")
    a.call("wait_for", name="b-inbox")
    b.call("wait_for", name="a-inbox")
    assert a.call("send_to", body="welcome back", target="b-inbox") == 1
    assert b.call("send_to", body="thanks", target="a-inbox") == 1
    assert collect_from(b, a.node_id, 1) == ["welcome back"]
    assert collect_from(a, b.node_id, 1) == ["thanks"]
    events = a.call("events")
    assert [e["event"] for e in events if e["event"].startswith("Peer")] == ["PeerUp"]
