"""docs/PROTOCOL.md and tests/protocol_vectors.json: the golden vectors hold against wire.py both
ways (fields -> exactly these bytes; these bytes -> exactly these fields), every record kind has
one, and the numbers in the spec's tables are the code's."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from smartroute import wire
from smartroute.config import RESEND_INTERVAL_S, Limits, Timings
from smartroute.messages import decode_body, encode_body, message
from smartroute.modes import ReceiveMode
from smartroute.protocol import Deliver, Protocol
from smartroute.registry import DeltaOutcome, Table
from smartroute.streams import Outbox
from smartroute.transport import curve

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).with_name("protocol_vectors.json")).read_text(encoding="utf-8"))

LIMITS = Limits()
# What a node decodes with (protocol.py: names on the wire may be up to 1024 characters).
DECODER = wire.Decoder(
    max_frame_bytes=LIMITS.max_frame_bytes, max_table_entries=LIMITS.max_table_entries,
    max_peers=LIMITS.max_peers, max_target_names=LIMITS.max_target_names,
    max_name_length=max(LIMITS.max_name_length, 1024), max_meta_bytes=LIMITS.max_meta_bytes)

RECORD_TYPES: dict[str, type[Any]] = {
    "HELLO": wire.Hello, "REFUSE": wire.Refuse, "PEERS": wire.Peers, "DELTA": wire.Delta,
    "SNAPSHOT_REQUEST": wire.SnapshotRequest, "SNAPSHOT": wire.Snapshot,
    "HEARTBEAT": wire.Heartbeat, "BYE": wire.Bye, "LEAVING": wire.Leaving, "MSG": wire.Msg,
    "REPLY": wire.Reply,
    "SEQ": wire.Seq, "ACK": wire.Ack,
}


@message("Speak")
@dataclasses.dataclass
class Speak:
    user: str
    text: str


def from_json(value: Any) -> Any:
    """Undo the JSON conventions of the vectors file ($bin, $int)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if set(value) == {"$int"}:
            return int(value["$int"])
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def build(kind: str, fields: dict[str, Any]) -> wire.Record:
    """The record a vector describes, as wire.py's decoder returns it."""
    values = {name: from_json(value) for name, value in fields.items()}
    for name in ("entries", "peers"):
        if name in values:
            values[name] = [tuple(item) for item in values[name]]
    record: wire.Record = RECORD_TYPES[kind](**values)
    return record


def encode(record: wire.Record) -> bytes:
    """Encode with the encoder wire.py offers for the record's kind."""
    encoders: dict[type[Any], Any] = {
        wire.Hello: wire.encode_hello, wire.Refuse: wire.encode_refuse,
        wire.Peers: lambda r: wire.encode_peers(r.peers), wire.Delta: wire.encode_delta,
        wire.SnapshotRequest: lambda r: wire.SNAPSHOT_REQUEST,
        wire.Snapshot: wire.encode_snapshot, wire.Heartbeat: lambda r: wire.encode_heartbeat(*r),
        wire.Bye: lambda r: wire.BYE, wire.Leaving: lambda r: wire.LEAVING,
        wire.Msg: wire.encode_msg, wire.Reply: wire.encode_reply,
        wire.Seq: lambda r: wire.encode_seq(*r), wire.Ack: lambda r: wire.encode_ack(*r),
    }
    encoded: bytes = encoders[type(record)](record)
    return encoded


def decode_batch(payload: bytes) -> list[wire.Record]:
    return [DECODER.record(raw) for raw in DECODER.batch(payload)]


def test_the_vectors_are_for_this_protocol_version() -> None:
    assert VECTORS["protocol_version"] == wire.PROTOCOL_VERSION
    assert f"`PROTOCOL_VERSION` = {wire.PROTOCOL_VERSION}" in SPEC


# --- records --------------------------------------------------------------------------------

RECORDS = VECTORS["records"]


@pytest.mark.parametrize("vector", RECORDS, ids=[v["name"] for v in RECORDS])
def test_fields_encode_to_exactly_the_vector_bytes(vector: dict[str, Any]) -> None:
    record = build(vector["kind"], vector["fields"])
    assert encode(record).hex() == vector["hex"]


@pytest.mark.parametrize("vector", RECORDS, ids=[v["name"] for v in RECORDS])
def test_vector_bytes_decode_to_exactly_the_fields(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    raw = msgpack.unpackb(payload)
    assert raw[0] == wire.Kind[vector["kind"]]
    (decoded,) = decode_batch(wire.encode_batch([payload]))
    assert type(decoded) is RECORD_TYPES[vector["kind"]]
    assert decoded == build(vector["kind"], vector["fields"])
    # Field by field, names included: what the spec's tables list, in that order.
    assert list(decoded._asdict()) == list(vector["fields"])
    assert {k: from_json(v) for k, v in vector["fields"].items()} == {
        k: [list(i) for i in v] if k in ("entries", "peers") else v
        for k, v in decoded._asdict().items()}


def test_every_record_kind_has_a_vector() -> None:
    assert {v["kind"] for v in RECORDS} == {kind.name for kind in wire.Kind}
    assert set(RECORD_TYPES) == {kind.name for kind in wire.Kind}


# --- batches --------------------------------------------------------------------------------

BATCHES = VECTORS["batches"]


@pytest.mark.parametrize("vector", BATCHES, ids=[v["name"] for v in BATCHES])
def test_batch_vectors_both_ways(vector: dict[str, Any]) -> None:
    records = [build(r["kind"], r["fields"]) for r in vector["records"]]
    payload = bytes.fromhex(vector["hex"])
    assert decode_batch(payload) == records
    assert [type(r) for r in decode_batch(payload)] == [type(r) for r in records]
    assert wire.encode_batch([encode(r) for r in records]) == payload


def test_a_sequenced_batch_is_what_an_outbox_frames() -> None:
    vector = next(v for v in BATCHES if v["name"] == "sequenced-msgs")
    seq, *rest = [build(r["kind"], r["fields"]) for r in vector["records"]]
    assert type(seq) is wire.Seq and seq.seq == 1
    outbox = Outbox(seq.stream, seq.incarnation, LIMITS.send_window_batches,
                    LIMITS.send_window_bytes)
    assert outbox.number([encode(r) for r in rest]).hex() == vector["hex"]


def test_control_records_never_open_a_sequenced_batch() -> None:
    for vector in BATCHES:
        kinds = [r["kind"] for r in vector["records"]]
        if kinds and kinds[0] == "SEQ":
            assert not {"HELLO", "REFUSE", "BYE"} & set(kinds), vector["name"]
    assert {wire.Kind(k).name for k in wire.CONTROL_KINDS} == {"HELLO", "REFUSE", "BYE"}


# --- message bodies ---------------------------------------------------------------------------

BODIES = VECTORS["bodies"]


def body_value(value: Any) -> Any:
    if isinstance(value, dict) and "$record" in value:
        assert value["$record"] == "Speak"
        return Speak(**from_json(value["fields"]))
    return from_json(value)


@pytest.mark.parametrize("vector", BODIES, ids=[v["name"] for v in BODIES])
def test_body_vectors_both_ways(vector: dict[str, Any]) -> None:
    value = body_value(vector["value"])
    assert encode_body(value).hex() == vector["hex"]
    decoded = decode_body(bytes.fromhex(vector["hex"]))
    assert decoded == value and type(decoded) is type(value)


def test_a_registered_body_is_extension_1_of_name_and_fields() -> None:
    vector = next(v for v in BODIES if v["name"] == "registered")
    ext = msgpack.unpackb(bytes.fromhex(vector["hex"]))
    assert isinstance(ext, msgpack.ExtType) and ext.code == 1
    assert msgpack.unpackb(ext.data) == ["Speak", {"user": "bob", "text": "hi"}]


# --- keys and ids -----------------------------------------------------------------------------

@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_cluster_keys_come_from_scrypt_of_secret_and_cluster() -> None:
    for vector in VECTORS["curve"]["cluster_keys"]:
        keys = curve.Curve.from_secret(vector["secret"], vector["cluster"])
        assert keys.server_secret.decode() == vector["server_secret_z85"]
        assert keys.server_public.decode() == vector["server_public_z85"]
        assert zmq.curve_public(vector["server_secret_z85"].encode()).decode() == (
            vector["server_public_z85"])


def test_node_id_is_blake2b_of_the_public_key() -> None:
    for vector in VECTORS["curve"]["node_ids"]:
        raw = bytes.fromhex(vector["public_hex"])
        assert zmq.utils.z85.encode(raw).decode() == vector["public_z85"]
        assert curve.node_id_of(raw).hex() == vector["node_id"]
        assert curve.node_id_of(vector["public_z85"].encode()).hex() == vector["node_id"]


def test_routing_ids_are_node_id_and_big_endian_link_number() -> None:
    for vector in VECTORS["routing_ids"]:
        node_id = bytes.fromhex(vector["node_id"])
        routing_id = node_id + vector["link"].to_bytes(4, "big")
        assert routing_id.hex() == vector["routing_id"]
        assert node_id[0] != 0 and len(node_id) == wire.NODE_ID_BYTES


# --- the spec's tables are the code's ---------------------------------------------------------

def table_rows(heading: str) -> dict[str, int]:
    """``| number | `NAME` | ...`` rows of the first table under ``heading`` in PROTOCOL.md."""
    start = SPEC.index(heading)
    rows: dict[str, int] = {}
    for line in SPEC[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        match = re.match(r"\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|", line)
        if match:
            rows[match.group(2)] = int(match.group(1))
    return rows


def test_kind_table_matches_wire_kind() -> None:
    assert table_rows("### Record kinds") == {kind.name: int(kind) for kind in wire.Kind}


def test_kind_table_lists_the_fields_of_each_record() -> None:
    """The kinds table's field column is each record's fields, in order (a Node.js peer
    written from the spec found HEARTBEAT's row stale after time_us/echo_us/held_us came)."""
    start = SPEC.index("### Record kinds")
    fields: dict[str, list[str]] = {}
    for line in SPEC[start:].splitlines()[1:]:
        if fields and not line.startswith("|"):
            break
        match = re.match(r"\|\s*\d+\s*\|\s*`([A-Z_]+)`\s*\|([^|]*)\|", line)
        if match:
            cell = match.group(2).strip()
            names = [] if cell == "(none)" else cell.split(",")
            fields[match.group(1)] = [name.strip() for name in names]
    assert fields == {name: list(cls._fields) for name, cls in RECORD_TYPES.items()}


def test_the_batch_table_shows_the_vector_bytes() -> None:
    """Section 5's abbreviated bytes are the vectors' (`…` skips bytes, "text" is its UTF-8);
    they showed SEQ and ACK in their old short form until a Node.js peer's author read them."""
    start = SPEC.index("Whole-batch vectors")
    rows: dict[str, str] = {}
    for line in SPEC[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        match = re.match(r"\| `([a-z-]+)` \| `([^`]*)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    assert set(rows) == {v["name"] for v in BATCHES}
    for vector in BATCHES:
        pieces = [re.sub(r'"([^"]*)"', lambda q: q.group(1).encode().hex(), piece).replace(" ", "")
                  for piece in rows[vector["name"]].split("…")]
        assert re.fullmatch(".*".join(map(re.escape, pieces)), vector["hex"]), vector["name"]


def test_mode_table_matches_receive_mode() -> None:
    assert table_rows("### Receive modes") == {mode.name: int(mode) for mode in ReceiveMode}


def test_reply_status_table_matches_wire() -> None:
    assert table_rows("### Reply statuses") == {s.name: int(s) for s in wire.ReplyStatus}


def defaults_in_spec_section_16() -> dict[str, float]:
    """``| `name` | default |`` rows of the limits and timings tables."""
    section = SPEC[SPEC.index("## 16. Limits and timings"):SPEC.index("## 17. Versioning")]
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^\|\s*`(\w+)`\s*\|\s*([0-9.]+)\s*\|", section, re.M)}


def test_limit_and_timing_defaults_in_the_spec_are_config_defaults() -> None:
    listed = defaults_in_spec_section_16()
    for settings in (Limits(), Timings()):
        for field in dataclasses.fields(settings):
            if field.name in listed:
                assert listed.pop(field.name) == getattr(settings, field.name), field.name
    assert listed == {"RESEND_INTERVAL_S": RESEND_INTERVAL_S}
    # Every timing is listed, and every limit a peer can see.
    assert {f.name for f in dataclasses.fields(Timings)} <= set(defaults_in_spec_section_16())


# --- the vectors are what two reference cores send each other ---------------------------------

def batch_hex(name: str) -> str:
    return str(next(v["hex"] for v in BATCHES if v["name"] == name))


def record_hex(name: str) -> str:
    return str(next(v["hex"] for v in RECORDS if v["name"] == name))


def cores() -> tuple[Protocol, Protocol]:
    """A (bound to all interfaces, two subscribers) and B, with the vectors' ids."""
    hello = build("HELLO", RECORDS[0]["fields"])
    reply = build("HELLO", RECORDS[1]["fields"])
    assert type(hello) is wire.Hello and type(reply) is wire.Hello
    a = Protocol(cluster="chat", node_id=hello.node_id, incarnation=hello.incarnation,
                 endpoint=hello.endpoint, name=hello.name, timings=Timings(), limits=LIMITS)
    b = Protocol(cluster="chat", node_id=reply.node_id, incarnation=reply.incarnation,
                 endpoint=reply.endpoint, name=reply.name, timings=Timings(), limits=LIMITS)
    for sub_id, name, meta in hello.entries:
        assert a.subscribe(name, meta, NOW) == sub_id
    a.data_to_send()
    return a, b


NOW = 100.0


def test_a_handshake_sends_exactly_the_hello_vectors() -> None:
    a, b = cores()
    a.hint("tcp://10.0.0.2:7002", NOW)
    out = a.data_to_send()
    (dial,) = out.dials
    assert dial.routing_id.hex() == VECTORS["routing_ids"][0]["routing_id"]
    assert [batch.hex() for batch in out.sends[dial.link]] == [batch_hex("unsequenced-hello")]

    # B sees A's connection come from 10.0.0.1: the wildcard resolves to it, B dials back.
    b.receive(dial.routing_id, out.sends[dial.link][0], NOW, lambda: "10.0.0.1")
    back = b.data_to_send()
    (dial_back,) = back.dials
    assert dial_back.endpoint == "tcp://10.0.0.1:7001"
    assert [batch.hex() for batch in back.sends[dial_back.link]] == ["91" + record_hex(
        "hello-reply")]
    assert [type(e).__name__ for e in b.events_received()] == [
        "PeerUp", "SubscriberUp", "SubscriberUp"]

    # The reply's echo names A's dial: A's link to B is that dial; a reply is not answered.
    a.receive(dial_back.routing_id, back.sends[dial_back.link][0], NOW)
    assert a.membership.peers[b.node_id].link == dial.link
    assert a.data_to_send().sends == {}


def test_the_delta_vectors_after_the_hello_add_remove_and_update_subscribers() -> None:
    hello = build("HELLO", RECORDS[0]["fields"])
    assert type(hello) is wire.Hello
    table = Table(b"\x01" * 16, 1)
    table.replace(hello.node_id, hello.incarnation, hello.version, hello.entries)
    events = []
    for name in ("delta-add", "delta-remove", "delta-update"):
        (delta,) = decode_batch(bytes.fromhex("91" + record_hex(name)))
        assert type(delta) is wire.Delta
        outcome, applied = table.apply_delta(hello.node_id, delta)
        assert outcome is DeltaOutcome.APPLIED
        events.extend((type(e).__name__, e.subscriber.name, e.subscriber.meta) for e in applied)
    assert events == [("SubscriberUp", "user:bob", {"nick": "Bob", "devices": 2}),
                      ("SubscriberDown", "user:alice", {"nick": "Alice"}),
                      ("SubscriberUpdated", "user:bob", {"nick": "Bob", "devices": 3})]
    assert table.snapshot() == []  # ours: the replica is the peer's
    assert table.replicas[hello.node_id].entries == {
        2: ("room:7", {}), 3: ("user:bob", {"nick": "Bob", "devices": 3})}


def test_a_sequenced_batch_is_taken_acknowledged_and_a_gap_asked_again() -> None:
    a, b = cores()
    a.hint("tcp://10.0.0.2:7002", NOW)
    out = a.data_to_send()
    routing_id = out.dials[0].routing_id
    b.receive(routing_id, out.sends[1][0], NOW, lambda: "10.0.0.1")
    b.subscribe("user:alice", {}, NOW)
    b.data_to_send()
    b.events_received()

    b.receive(routing_id, bytes.fromhex(batch_hex("sequenced-msgs")), NOW)
    delivered = b.events_received()
    assert [d.msg for d in delivered if isinstance(d, Deliver)] == [
        build(r["kind"], r["fields"]) for r in BATCHES[1]["records"][1:]]
    # The ACK leaves with the next timer tick, unsequenced.
    b.tick(NOW + 0.05)
    (ack_batch,) = b.data_to_send().sends[1]
    ack = decode_batch(ack_batch)
    assert [r for r in ack if type(r) is wire.Ack] == [wire.Ack(0x2B7E1516, 1, False)]

    # Batches 2-4 taken (and acknowledged), then 6 after a gap: the ack-resend vector.
    outbox = Outbox(0x2B7E1516, b.incarnation, 64, 1 << 23, next_seq=2)
    for _ in range(3):
        b.receive(routing_id, outbox.number([wire.encode_heartbeat(a.incarnation, 2)]), NOW)
    b.tick(NOW + 0.1)
    b.data_to_send()
    outbox.next_seq = 6
    b.receive(routing_id, outbox.number([wire.encode_heartbeat(a.incarnation, 2)]), NOW + 0.2)
    assert [batch.hex() for batch in b.data_to_send().sends[1]] == [batch_hex("ack-resend")]
    assert b.counters.gap_batches == 1


def test_a_sequenced_batch_from_a_stranger_counts_every_record_the_seq_included() -> None:
    """Section 6 step 4: dropped unacknowledged, and its records counted, the SEQ too (the
    spec said "its records"; a Node.js peer written from it counted those after the SEQ)."""
    _, b = cores()
    routing_id = bytes.fromhex(VECTORS["routing_ids"][0]["routing_id"])  # A: not B's peer
    b.receive(routing_id, bytes.fromhex(batch_hex("sequenced-msgs")), NOW)
    assert (b.counters.unknown_sender_records, b.counters.malformed_records) == (3, 0)
    assert b.events_received() == []
    assert b.data_to_send().sends == {}  # no ACK


def test_a_seq_is_refused_for_seq_0_or_a_stream_over_32_bits_not_for_stream_0() -> None:
    """Section 4.11: the receiver's checks (the spec's "never 0" for the stream is the sender's
    rule; a Node.js peer written from it had refused stream 0)."""
    assert wire.seq_of([11, 0, 1, 7]) == (0, 1, 7)
    assert wire.seq_of([11, 2**32 - 1, 2**64 - 1, 2**64 - 1]) == (
        2**32 - 1, 2**64 - 1, 2**64 - 1)
    assert wire.seq_of([11, 0, 1, 0]) == (0, 1, 0)
    assert wire.seq_of([11, 5, 0, 7]) is None
    assert wire.seq_of([11, 2**32, 1, 7]) is None
    assert wire.seq_of([11, 5, 1, 2**64]) is None
    assert wire.seq_of([11, 5, 1]) is None  # version 2's SEQ, without the incarnation


def test_a_duplicate_is_acknowledged_again_even_when_all_was_acknowledged() -> None:
    """Section 10.3: a duplicate makes an ACK due (its sender may have missed ours, lost with
    a broken connection). The reference sent none when it had acknowledged everything it
    took: found by a Node.js peer, which did; the sender then kept the batch (and a drain
    waited for it) until a later batch's ACK covered it."""
    a, b = cores()
    a.hint("tcp://10.0.0.2:7002", NOW)
    out = a.data_to_send()
    routing_id = out.dials[0].routing_id
    b.receive(routing_id, out.sends[1][0], NOW, lambda: "10.0.0.1")
    b.data_to_send()
    batch = Outbox(0x2B7E1516, b.incarnation, 64, 1 << 23).number(
        [wire.encode_heartbeat(a.incarnation, 2)])
    for i in range(2):  # batch 1, then the same batch again
        b.receive(routing_id, batch, NOW + i)
        b.tick(NOW + i + 0.05)
        sent = b.data_to_send().sends[1]
        acks = [r for x in sent for r in decode_batch(x) if type(r) is wire.Ack]
        assert acks == [wire.Ack(0x2B7E1516, 1, False)], i
    assert b.counters.duplicate_batches == 1


def test_an_ack_with_resend_makes_the_sender_go_back() -> None:
    a, b = cores()
    a.hint("tcp://10.0.0.2:7002", NOW)
    out = a.data_to_send()
    b.receive(out.dials[0].routing_id, out.sends[1][0], NOW, lambda: "10.0.0.1")
    back = b.data_to_send()
    a.receive(back.dials[0].routing_id, back.sends[1][0], NOW)
    a.data_to_send()
    sent = []
    for i in range(5):
        a.subscribe(f"user:{i}", {}, NOW)  # one DELTA: one sequenced batch per turn
        (batch,) = a.data_to_send().sends[1]
        sent.append(batch)
    stream = a.outboxes[b.node_id].stream
    assert [decode_batch(x)[0] for x in sent] == [
        wire.Seq(stream, n, b.incarnation) for n in range(1, 6)]
    a.receive(back.dials[0].routing_id, wire.encode_batch([wire.encode_ack(stream, 4, True)]),
              NOW)
    assert a.data_to_send().sends[1] == [sent[4]]  # batch 5 again, the same bytes


def test_a_sequenced_batch_for_another_incarnation_is_dropped_unacknowledged() -> None:
    """Section 10.3: a batch whose SEQ names another incarnation of the receiver (sent to a
    process that had its endpoint before it) is misdirected: not taken, not acknowledged, no
    resend asked, counted. Its sender counts its messages lost; taking them counted them
    twice."""
    a, b = cores()
    b = Protocol(cluster="chat", node_id=b.node_id, incarnation=b.incarnation + 1,
                 endpoint=b.endpoint, name=b.name, timings=Timings(), limits=LIMITS)
    a.hint("tcp://10.0.0.2:7002", NOW)
    out = a.data_to_send()
    routing_id = out.dials[0].routing_id
    b.receive(routing_id, out.sends[1][0], NOW, lambda: "10.0.0.1")  # A is b's peer
    b.subscribe("user:alice", {}, NOW)
    b.data_to_send()
    b.events_received()

    b.receive(routing_id, bytes.fromhex(batch_hex("sequenced-msgs")), NOW)
    assert [e for e in b.events_received() if isinstance(e, Deliver)] == []
    assert b.counters.misdirected_batches == 1
    assert (b.counters.gap_batches, b.counters.malformed_records) == (0, 0)
    b.tick(NOW + RESEND_INTERVAL_S + 0.05)
    acks = [r for x in b.data_to_send().sends.get(1, []) for r in decode_batch(x)
            if type(r) is wire.Ack]
    assert acks == []
