"""What a remote subscriber costs a table (issue 12): measured with tracemalloc, in-process, on
the records a peer's deltas decode to (bench/table_memory.py measures the RSS of real nodes)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from smartroute import wire
from smartroute.config import Limits
from smartroute.events import Subscriber
from smartroute.modes import ReceiveMode
from smartroute.registry import Table
from smartroute.routing import Router

PEER = b"\x02" * 16
OTHER = b"\x03" * 16
SUBSCRIBERS = 20_000
MAX_BYTES_PER_SUBSCRIBER = 300
"""Measured 244 (a dict slot by sub id, one by name, a (node, sub id, meta) tuple, the name and
the sub id); it was 926 before issue 12."""


def kept_per_subscriber(meta: dict[str, Any]) -> float:
    limits = Limits()
    decoder = wire.Decoder(max_frame_bytes=limits.max_frame_bytes,
                           max_table_entries=limits.max_table_entries, max_peers=16,
                           max_target_names=16, max_name_length=256, max_meta_bytes=4096)
    batches = wire.encode_batches([
        wire.encode_delta(wire.Delta(1, v, v, f"user:{v - 1}", meta))
        for v in range(1, SUBSCRIBERS + 1)], 262144)
    table = Table(b"\x01" * 16, 1)
    table.replace(PEER, 1, 0, [])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for batch in batches:
            for raw in decoder.batch(batch):
                record = decoder.record(raw)
                assert type(record) is wire.Delta
                table.apply_delta(PEER, record)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert table.size() == SUBSCRIBERS
    return kept / SUBSCRIBERS


def test_a_remote_subscriber_with_a_gateway_meta_costs_under_300_bytes() -> None:
    assert kept_per_subscriber({"gateway": "gateway-1"}) < MAX_BYTES_PER_SUBSCRIBER


def test_a_remote_subscriber_without_meta_costs_under_300_bytes() -> None:
    assert kept_per_subscriber({}) < MAX_BYTES_PER_SUBSCRIBER


def test_a_name_going_from_one_remote_subscriber_to_many_and_back_reads_the_same() -> None:
    table = Table(b"\x01" * 16, 1)
    router = Router(table, regex_cache_size=16, max_pattern_length=64)
    table.replace(PEER, 1, 1, [(1, "room", {"p": 1})])
    table.replace(OTHER, 1, 0, [])
    expected = [Subscriber("room", PEER.hex(), {"p": 1})]
    assert table.lookup("room") == expected and table.count("room") == 1
    steps: list[tuple[bytes, wire.Delta, list[Subscriber]]] = [
        (PEER, wire.Delta(1, 2, 2, "room", {"p": 2}), [
            Subscriber("room", PEER.hex(), {"p": 1}), Subscriber("room", PEER.hex(), {"p": 2})]),
        (OTHER, wire.Delta(1, 1, 7, "room", {"o": 7}), [
            Subscriber("room", PEER.hex(), {"p": 1}), Subscriber("room", PEER.hex(), {"p": 2}),
            Subscriber("room", OTHER.hex(), {"o": 7})]),
        (PEER, wire.Delta(1, 3, 1, None, None), [
            Subscriber("room", PEER.hex(), {"p": 2}), Subscriber("room", OTHER.hex(), {"o": 7})]),
        (OTHER, wire.Delta(1, 2, 7, "room", {"o": 8}), [
            Subscriber("room", PEER.hex(), {"p": 2}), Subscriber("room", OTHER.hex(), {"o": 8})]),
        (PEER, wire.Delta(1, 4, 2, None, None), [Subscriber("room", OTHER.hex(), {"o": 8})]),
        (OTHER, wire.Delta(1, 3, 7, "room", {"o": 9}), [Subscriber("room", OTHER.hex(), {"o": 9})]),
        (OTHER, wire.Delta(1, 4, 7, None, None), []),
    ]
    for node, delta, expected in steps:
        table.apply_delta(node, delta)
        assert table.lookup("room") == expected, delta
        assert table.count("room") == len(expected)
        plan = router.plan(ReceiveMode.EQ, "room")
        assert plan.matches == len(expected)
        assert set(plan.remote) == {bytes.fromhex(s.node_id) for s in expected}
        on_other = [("room", s.meta) for s in expected if s.node_id == OTHER.hex()]
        assert dict(table.replicas[OTHER].entries) == dict(zip([7], on_other, strict=False))
    assert "room" not in table.remote_by_name

