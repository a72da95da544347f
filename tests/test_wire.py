"""wire.py: every record round-trips; anything else is a RemoteProtocolError, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartroute import wire
from smartroute.config import Limits
from smartroute.errors import RemoteProtocolError

A = b"\x01" * 16
B = b"\xab" * 16
INC = 2**64 - 1  # incarnations are microseconds: the whole uint64 range must travel

DECODER = wire.Decoder(max_frame_bytes=Limits().max_frame_bytes,
                       max_table_entries=Limits().max_table_entries, max_peers=Limits().max_peers,
                       max_target_names=Limits().max_target_names, max_name_length=1024,
                       max_meta_bytes=Limits().max_meta_bytes)
SMALL = wire.Decoder(max_frame_bytes=4096, max_table_entries=4, max_peers=2, max_target_names=3,
                     max_name_length=8, max_meta_bytes=64)

HELLO = wire.Hello(wire.PROTOCOL_VERSION, "chat", A, INC, "tcp://10.0.0.1:7001", "web-1", True,
                   "tcp://10.0.0.2:7001", "tcp://10.0.0.1:7001", 3,
                   [(1, "user:alice", {"nick": "Alice"}), (3, "room:7", {})])
REFUSE = wire.Refuse("cluster 'x' is not ours ('chat')", "tcp://10.0.0.2:7001")
PEERS = wire.Peers([(A, "tcp://10.0.0.1:7001"), (B, "tcp://10.0.0.3:7001")])
DELTA_ADD = wire.Delta(INC, 7, 4, "user:bob", {"age": 3, "tags": ["x"]})
DELTA_REMOVE = wire.Delta(1, 8, 4, None, None)
SNAPSHOT = wire.Snapshot(5, 9, [(2, "a", {}), (5, "b", {"k": b"\x00"})])
HEARTBEAT = wire.Heartbeat(5, 9)
HEARTBEAT_SENT = wire.Heartbeat(5, 9, 7, 2**40, 2**50, 12345, 678)
SEQ = wire.Seq(0xFFFFFFFF, 1, INC)
ACK = wire.Ack(3, 0, True)
MSG_EQ = wire.Msg(1, "user:bob", 0, ["user:alice", "room:7"], "Speak", b"\x92\xa1a\xa1b",
                  None, None)
MSG_ANY = wire.Msg(2**63, None, 4, "svc:echo", "str", b"\xa4ping", 17, 99)
MSG_ALL = wire.Msg(3, None, 2, None, "NoneType", b"\xc0", None, None)
REPLY = wire.Reply(99, wire.ReplyStatus.ERROR, "ValueError", b"boom")

# (record as decoded, its encoding)
ROUND_TRIPS: list[tuple[wire.Record, bytes]] = [
    (HELLO, wire.encode_hello(HELLO)),
    (HELLO._replace(entries=[], reply=False, echo=""), wire.encode_hello(
        HELLO._replace(entries=[], reply=False, echo=""))),
    (REFUSE, wire.encode_refuse(REFUSE)),
    (PEERS, wire.encode_peers(PEERS.peers)),
    (wire.Peers([]), wire.encode_peers([])),
    (DELTA_ADD, wire.encode_delta(DELTA_ADD)),
    (DELTA_REMOVE, wire.encode_delta(DELTA_REMOVE)),
    (wire.SnapshotRequest(), wire.SNAPSHOT_REQUEST),
    (SNAPSHOT, wire.encode_snapshot(SNAPSHOT)),
    (HEARTBEAT, wire.encode_heartbeat(5, 9)),
    (HEARTBEAT_SENT, wire.encode_heartbeat(*HEARTBEAT_SENT)),
    (SEQ, wire.encode_seq(*SEQ)),
    (ACK, wire.encode_ack(*ACK)),
    (wire.Ack(1, 2**40, False), wire.encode_ack(1, 2**40, False)),
    (wire.Bye(), wire.BYE),
    (wire.Leaving(), wire.LEAVING),
    (MSG_EQ, wire.encode_msg(MSG_EQ)),
    (MSG_ANY, wire.encode_msg(MSG_ANY)),
    (MSG_ALL, wire.encode_msg(MSG_ALL)),
    (REPLY, wire.encode_reply(REPLY)),
]


def decode_all(payload: bytes, decoder: wire.Decoder = DECODER) -> list[wire.Record]:
    return [decoder.record(raw) for raw in decoder.batch(payload)]


def test_seq_numbers_start_at_one_and_acks_carry_a_bool() -> None:
    reject([int(wire.Kind.SEQ), 1, 0, INC])
    reject([int(wire.Kind.SEQ), 1, 1])  # protocol version 2's SEQ: no receiver incarnation
    reject([int(wire.Kind.SEQ), 1, 1, -1])
    reject([int(wire.Kind.SEQ), 1, 1, True])
    reject([int(wire.Kind.ACK), 1, 2, 1])  # resend is a bool, not an int


def test_kind_of_reads_every_record_we_encode() -> None:
    for record, encoded in ROUND_TRIPS:
        assert wire.kind_of(encoded) == msgpack.unpackb(encoded)[0], record


def raw_of(encoded: bytes) -> list[Any]:
    """The raw array of one encoded record, to tamper with."""
    raw: list[Any] = msgpack.unpackb(encoded)
    return raw


def reject(raw: Any, decoder: wire.Decoder = DECODER) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_all(wire.encode_batch([msgpack.packb(raw)]), decoder)


# --- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "encoded"), ROUND_TRIPS,
                         ids=[f"{type(r).__name__}{i}" for i, (r, _) in enumerate(ROUND_TRIPS)])
def test_every_record_kind_round_trips(record: wire.Record, encoded: bytes) -> None:
    decoded = DECODER.record(DECODER.batch(wire.encode_batch([encoded]))[0])
    assert type(decoded) is type(record)
    assert decoded == record


def test_every_kind_has_a_round_trip_case() -> None:
    kinds = {raw_of(encoded)[0] for _, encoded in ROUND_TRIPS}
    assert kinds == {int(k) for k in wire.Kind}


def test_a_batch_keeps_its_records_in_order() -> None:
    records = [encoded for _, encoded in ROUND_TRIPS]
    assert decode_all(wire.encode_batch(records)) == [record for record, _ in ROUND_TRIPS]


@given(sizes=st.lists(st.integers(0, 300), max_size=60), max_bytes=st.integers(1, 2000))
def test_encode_batches_splits_by_size_and_keeps_order(sizes: list[int], max_bytes: int) -> None:
    records = [wire.encode_msg(wire.Msg(i, None, 0, "n", "bytes", b"x" * size, None, None))
               for i, size in enumerate(sizes)]
    batches = wire.encode_batches(records, max_bytes)
    assert [r for batch in batches for r in decode_all(batch)] == [
        wire.Msg(i, None, 0, "n", "bytes", b"x" * size, None, None)
        for i, size in enumerate(sizes)]
    for batch in batches:
        parts = msgpack.unpackb(batch)
        # Within the bound, or a single record that is bigger on its own.
        assert len(parts) == 1 or sum(len(msgpack.packb(p)) for p in parts) <= max_bytes
    if sum(map(len, records)) <= max_bytes:
        assert len(batches) == 1


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536, 70000])
def test_encode_batch_is_a_msgpack_array_of_any_length(n: int) -> None:
    records = [wire.encode_heartbeat(1, i) for i in range(n)]
    batch = wire.encode_batch(records)
    # The hand-made header must be exactly what msgpack would write for that array.
    assert batch == msgpack.packb([[int(wire.Kind.HEARTBEAT), 1, i, 0, 0, 0, 0, 0]
                                   for i in range(n)])
    decoded = decode_all(batch)
    assert len(decoded) == n
    assert decoded == [wire.Heartbeat(1, i) for i in range(n)]


# --- rejections ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "encoded"), ROUND_TRIPS,
                         ids=[f"{type(r).__name__}{i}" for i, (r, _) in enumerate(ROUND_TRIPS)])
def test_wrong_arity_is_rejected(record: wire.Record, encoded: bytes) -> None:
    raw = raw_of(encoded)
    reject([*raw, 0])
    if len(raw) > 1:
        reject(raw[:-1])


FIELD_CASES = [(type(r).__name__, encoded, i)
               for r, encoded in ROUND_TRIPS for i in range(1, len(raw_of(encoded)))]
WRONG_TYPES: list[Any] = [1.5, [[]], {"x": 1}]
TYPE_CASES = [(kind, encoded, i, bad) for kind, encoded, i in FIELD_CASES for bad in WRONG_TYPES
              if not (isinstance(bad, dict) and isinstance(raw_of(encoded)[i], dict))]
NUMBER_CASES = [(kind, encoded, i, bad) for kind, encoded, i in FIELD_CASES
                for bad in (True, -1, "1", None)
                if type(raw_of(encoded)[i]) is int
                and not (kind == "Hello" and i == 1 and bad == -1)  # any protocol number decodes
                and not (kind == "Msg" and i in (7, 8) and bad is None)]  # optional ids


@pytest.mark.parametrize(
    ("kind", "encoded", "field", "bad"), TYPE_CASES + NUMBER_CASES,
    ids=[f"{k}-field{i}-{type(b).__name__}" for k, _, i, b in TYPE_CASES]
    + [f"{k}-field{i}-{b!r}" for k, _, i, b in NUMBER_CASES])
def test_a_field_of_the_wrong_type_is_rejected(kind: str, encoded: bytes, field: int,
                                               bad: Any) -> None:
    """Wrong types everywhere; numbers must be unsigned ints, not bools, negatives or text."""
    raw = raw_of(encoded)
    raw[field] = bad
    reject(raw)


@pytest.mark.parametrize("kind", [0, 14, -1, 255, "1", None, 1.0, True, [1], b"\x01"])
def test_unknown_kinds_are_rejected(kind: Any) -> None:
    reject([kind])
    reject([kind, 1, 2])


@pytest.mark.parametrize("raw", [[], 1, "HELLO", None, {"k": 1}, b"\x01"])
def test_a_record_that_is_not_a_non_empty_array_is_rejected(raw: Any) -> None:
    reject(raw)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x91", b"\x01", b"\xa3abc",
                                     b"\x81\xa1k\x01", msgpack.packb([[7, 1, 2]]) + b"\x00"])
def test_a_frame_that_is_not_one_batch_is_rejected(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        DECODER.batch(payload)


@pytest.mark.parametrize("node_id", [b"\x00" + b"\x01" * 15, b"\x01" * 15, b"\x01" * 17, b"",
                                     "01" * 16])
def test_bad_node_ids_are_rejected_in_hello_and_peers(node_id: Any) -> None:
    # Built by hand, not with the encoders: they are typed, and compiled (mypyc) they refuse
    # a str node id before any record exists.
    reject([int(wire.Kind.HELLO), *HELLO._replace(node_id=node_id)[:10], []])
    reject([int(wire.Kind.PEERS), [[A, "tcp://x:1"], [node_id, "tcp://y:1"]]])


def test_a_node_id_with_a_zero_byte_after_the_first_is_fine() -> None:
    node_id = b"\x01" + b"\x00" * 15
    assert decode_all(wire.encode_batch([wire.encode_peers([(node_id, "tcp://e:1")])])) == [
        wire.Peers([(node_id, "tcp://e:1")])]


def test_removal_delta_carries_no_meta_and_names_are_not_empty() -> None:
    reject([int(wire.Kind.DELTA), 1, 2, 3, None, {}])
    reject([int(wire.Kind.DELTA), 1, 2, 3, "", {}])
    reject(raw_of(wire.encode_snapshot(wire.Snapshot(1, 1, [(1, "", {})]))))


def test_out_of_range_mode_and_status_are_rejected() -> None:
    reject(raw_of(wire.encode_msg(MSG_EQ._replace(mode=5))))
    reject(raw_of(wire.encode_reply(REPLY._replace(status=3))))


def accept(raw: Any, decoder: wire.Decoder = DECODER) -> wire.Record:
    [record] = decode_all(wire.encode_batch([msgpack.packb(raw)]), decoder)
    return record


SMALL_HELLO = HELLO._replace(cluster="c", endpoint="tcp://e:1", name="n", via="v", echo="",
                             entries=[])


@pytest.mark.parametrize(("make", "limit"), [
    (lambda n: wire.encode_snapshot(wire.Snapshot(1, 1, [(i, "n", {}) for i in range(n)])), 4),
    (lambda n: wire.encode_hello(SMALL_HELLO._replace(entries=[(i, "n", {}) for i in range(n)])),
     4),
    (lambda n: wire.encode_peers([(bytes([i + 1]) * 16, "tcp://e:1") for i in range(n)]), 2),
    (lambda n: wire.encode_msg(MSG_ALL._replace(mode=0, target=["t"] * n)), 3),
], ids=["snapshot-entries", "hello-entries", "peers", "msg-targets"])
def test_over_limit_arrays_are_rejected(make: Any, limit: int) -> None:
    accept(raw_of(make(limit)), SMALL)
    reject(raw_of(make(limit + 1)), SMALL)


def test_an_array_over_the_unpacker_limit_fails_the_whole_frame() -> None:
    with pytest.raises(RemoteProtocolError):
        SMALL.batch(wire.encode_batch([wire.BYE] * 17))
    assert len(SMALL.batch(wire.encode_batch([wire.BYE] * 16))) == 16


@pytest.mark.parametrize("make", [
    lambda s: wire.encode_delta(wire.Delta(1, 1, 1, s, {})),
    lambda s: wire.encode_snapshot(wire.Snapshot(1, 1, [(1, s, {})])),
    lambda s: wire.encode_hello(SMALL_HELLO._replace(entries=[(1, s, {})])),
    lambda s: wire.encode_hello(SMALL_HELLO._replace(cluster=s)),
    lambda s: wire.encode_hello(SMALL_HELLO._replace(name=s)),
    lambda s: wire.encode_hello(SMALL_HELLO._replace(via=s)),
    lambda s: wire.encode_hello(SMALL_HELLO._replace(echo=s)),
    lambda s: wire.encode_refuse(wire.Refuse("no", s)),
    lambda s: wire.encode_msg(MSG_ALL._replace(sender=s)),
    lambda s: wire.encode_msg(MSG_ALL._replace(type=s)),
    lambda s: wire.encode_reply(REPLY._replace(type=s)),
], ids=["delta-name", "snapshot-name", "hello-entry-name", "hello-cluster",
        "hello-name", "hello-via", "hello-echo", "refuse-echo", "msg-sender",
        "msg-type", "reply-type"])
def test_over_limit_strings_are_rejected(make: Any) -> None:
    accept(raw_of(make("x" * 8)), SMALL)  # SMALL names are at most 8 characters
    reject(raw_of(make("x" * 9)), SMALL)


@pytest.mark.parametrize("endpoint", [
    "", "e", "tcp://", "tcp://host", "tcp://host:", "tcp://host:0", "tcp://host:65536",
    "tcp://:7001", "ipc:///tmp/sock", "inproc://x", "tcp://h:1x",
    "tcp://" + "h" * wire.MAX_ENDPOINT_LENGTH + ":7001",
])
def test_peers_are_only_dialled_at_tcp_endpoints(endpoint: str) -> None:
    reject(raw_of(wire.encode_hello(SMALL_HELLO._replace(endpoint=endpoint))))
    reject(raw_of(wire.encode_peers([(A, endpoint)])))


@pytest.mark.parametrize("endpoint", ["tcp://10.0.0.1:7001", "tcp://*:7001", "tcp://[::1]:1",
                                      "tcp://node-7.lan:65535"])
def test_tcp_endpoints_are_accepted(endpoint: str) -> None:
    accept(raw_of(wire.encode_hello(SMALL_HELLO._replace(endpoint=endpoint))))
    accept(raw_of(wire.encode_peers([(A, endpoint)])))


def test_peer_meta_over_the_limit_is_rejected() -> None:
    accept(raw_of(wire.encode_delta(wire.Delta(1, 1, 1, "n", {"k": "v" * 50}))), SMALL)
    reject(raw_of(wire.encode_delta(wire.Delta(1, 1, 1, "n", {"k": "v" * 70}))), SMALL)
    reject(raw_of(wire.encode_snapshot(wire.Snapshot(1, 1, [(1, "n", {"k": "v" * 70})]))), SMALL)


def test_a_refusal_reason_is_at_most_1024_characters() -> None:
    accept(raw_of(wire.encode_refuse(wire.Refuse("r" * 1024, ""))))
    reject(raw_of(wire.encode_refuse(wire.Refuse("r" * 1025, ""))))


@pytest.mark.parametrize("make", [lambda s: s, lambda s: ["a", s]], ids=["name", "list"])
def test_over_limit_target_names_are_rejected(make: Any) -> None:
    accept(raw_of(wire.encode_msg(MSG_ALL._replace(mode=0, target=make("x" * 8)))), SMALL)
    reject(raw_of(wire.encode_msg(MSG_ALL._replace(mode=0, target=make("x" * 9)))), SMALL)
    reject(raw_of(wire.encode_msg(MSG_ALL._replace(mode=0, target=make("")))), SMALL)


def test_a_frame_over_max_frame_bytes_is_rejected_before_decoding() -> None:
    record = wire.encode_msg(MSG_ALL._replace(body=b"x" * 4096))
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        SMALL.batch(wire.encode_batch([record]))


def test_extension_types_are_rejected() -> None:
    payload = msgpack.packb([[int(wire.Kind.BYE), msgpack.ExtType(1, b"abc")]])
    with pytest.raises(RemoteProtocolError):
        decode_all(payload)
    reject([int(wire.Kind.HEARTBEAT), msgpack.ExtType(1, b""), 1])


# --- fuzzing ------------------------------------------------------------------------------------

def decode_or_reject(payload: bytes, decoder: wire.Decoder) -> None:
    """Decoding garbage either yields validated records or raises RemoteProtocolError only."""
    try:
        raws = decoder.batch(payload)
    except RemoteProtocolError:
        return
    for raw in raws:
        try:
            record = decoder.record(raw)
        except RemoteProtocolError:
            continue
        assert type(record) in (wire.Hello, wire.Refuse, wire.Peers, wire.Delta,
                                wire.SnapshotRequest, wire.Snapshot, wire.Heartbeat, wire.Bye,
                                wire.Seq, wire.Ack, wire.Leaving,
                                wire.Msg, wire.Reply)


FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_remote_protocol_error(payload: bytes) -> None:
    decode_or_reject(payload, DECODER)
    decode_or_reject(payload, SMALL)


@FUZZ
@given(st.binary(max_size=64).map(lambda b: b"\x91" + b))
def test_random_single_records_only_raise_remote_protocol_error(payload: bytes) -> None:
    decode_or_reject(payload, DECODER)


VALID_BATCH = wire.encode_batch([encoded for _, encoded in ROUND_TRIPS])


@st.composite
def mutated_batches(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_BATCH)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_batches())
def test_mutated_valid_batches_only_raise_remote_protocol_error(payload: bytes) -> None:
    decode_or_reject(payload, DECODER)
    decode_or_reject(payload, SMALL)


def test_equal_metas_decode_to_one_shared_object_within_a_byte_budget() -> None:
    decoder = wire.Decoder(max_frame_bytes=1 << 20, max_table_entries=100, max_peers=10,
                           max_target_names=10, max_name_length=256, max_meta_bytes=4096)

    def decoded(sub_id: int, meta: dict[str, Any]) -> wire.Delta:
        raw = msgpack.unpackb(wire.encode_delta(wire.Delta(1, sub_id, sub_id, "user:x", meta)))
        record = decoder.record(raw)
        assert type(record) is wire.Delta and record.meta == meta
        return record

    first, second = decoded(1, {"gateway": "gw-1"}), decoded(2, {"gateway": "gw-1"})
    assert first.meta is second.meta
    assert decoded(3, {"gateway": "gw-2"}).meta is not first.meta
    assert decoded(4, {}).meta is decoded(5, {}).meta is wire.EMPTY_META
    snapshot = decoder.record(msgpack.unpackb(wire.encode_snapshot(wire.Snapshot(1, 2, [
        (1, "a", {"gateway": "gw-1"}), (2, "b", {})]))))
    assert type(snapshot) is wire.Snapshot
    assert snapshot.entries[0][2] is first.meta and snapshot.entries[1][2] is wire.EMPTY_META
    # Distinct metas do not pile up: past the budget the cache starts again.
    blob = "x" * 4000
    for i in range(wire.META_CACHE_BYTES // 4000 + 2):
        decoded(10 + i, {"blob": blob, "i": i})
    assert decoder._metas_bytes <= wire.META_CACHE_BYTES
    assert decoded(1, {"gateway": "gw-1"}).meta is not first.meta  # forgotten, equal still
