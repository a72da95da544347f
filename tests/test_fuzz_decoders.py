"""Every decoder of network input, fuzzed with hypothesis.

The decoders are ``wire.Decoder`` (batches and records), ``messages.decode_body`` (bodies, with
their record extensions and depth limit) and the mDNS TXT reading in ``discovery/mdns.py``.
The properties, for each:

- valid input round-trips exactly;
- anything else (random bytes, random msgpack structures, mutated valid input) yields either a
  valid result or the one documented error (``RemoteProtocolError``; ``None`` for TXT), never
  another exception;
- whatever is accepted satisfies the limits the rest of the code trusts.

``tests/test_wire.py`` and ``tests/test_messages.py`` hold the hand-written cases; this file
holds the generated ones. "Never a hang" is held by the pytest timeout and by the deadline
the last test puts on frames built to be as expensive as the limits allow.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceInfo

from smartroute import message, wire
from smartroute.config import Limits
from smartroute.discovery import LocalNode, MdnsDiscovery
from smartroute.discovery.mdns import MAX_TXT_VALUE_LENGTH, SERVICE_TYPE, _text_properties
from smartroute.errors import RemoteProtocolError
from smartroute.messages import EXT_RECORD, MAX_BODY_DEPTH, decode_body, encode_body

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Small limits, so that generated values reach them (and one past them) often.
NAME_MAX = 12
ENTRIES_MAX = 5
PEERS_MAX = 3
TARGETS_MAX = 4
META_MAX = 48
DECODER = wire.Decoder(max_frame_bytes=64 * 1024, max_table_entries=ENTRIES_MAX,
                       max_peers=PEERS_MAX, max_target_names=TARGETS_MAX,
                       max_name_length=NAME_MAX, max_meta_bytes=META_MAX)
RECORD_TYPES = (wire.Hello, wire.Refuse, wire.Peers, wire.Delta, wire.SnapshotRequest,
                wire.Snapshot, wire.Heartbeat, wire.Bye, wire.Msg, wire.Reply, wire.Seq, wire.Ack,
                wire.Leaving)
UINT64 = 2**64 - 1


# --- strategies: valid records --------------------------------------------------------------

uints = st.one_of(st.integers(0, 300), st.integers(0, UINT64), st.just(UINT64))
streams = st.one_of(st.integers(0, 300), st.integers(0, wire.MAX_STREAM))
short_text = st.text(max_size=NAME_MAX)
names = st.text(min_size=1, max_size=NAME_MAX)
node_ids = st.binary(min_size=16, max_size=16).filter(lambda b: b[0] != 0)
hosts = st.one_of(st.ip_addresses(v=4).map(str), st.just("*"),
                  st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True))
endpoints = st.builds(lambda h, p: f"tcp://{h}:{p}", hosts, st.integers(1, 65535))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), UINT64),
                    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
plain_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)
metas = st.dictionaries(st.text(max_size=6), plain_values, max_size=3).filter(
    lambda m: not m or len(msgpack.packb(m)) <= META_MAX)
entries = st.lists(st.tuples(uints, names, metas), max_size=ENTRIES_MAX)
targets = st.one_of(st.none(), names, st.lists(names, max_size=TARGETS_MAX))

records: st.SearchStrategy[tuple[wire.Record, bytes]] = st.one_of(
    st.builds(wire.Hello, st.integers(-(2**63), UINT64), short_text, node_ids, uints, endpoints,
              short_text, st.booleans(), short_text, short_text, uints, entries)
    .map(lambda r: (r, wire.encode_hello(r))),
    st.builds(wire.Refuse, st.text(max_size=1024), short_text)
    .map(lambda r: (r, wire.encode_refuse(r))),
    st.lists(st.tuples(node_ids, endpoints), max_size=PEERS_MAX)
    .map(lambda p: (wire.Peers(p), wire.encode_peers(p))),
    st.one_of(st.builds(wire.Delta, uints, uints, uints, names, metas),
              st.builds(wire.Delta, uints, uints, uints, st.none(), st.none()))
    .map(lambda r: (r, wire.encode_delta(r))),
    st.just((wire.SnapshotRequest(), wire.SNAPSHOT_REQUEST)),
    st.builds(wire.Snapshot, uints, uints, entries).map(lambda r: (r, wire.encode_snapshot(r))),
    st.builds(wire.Heartbeat, uints, uints, uints, uints, uints, uints, uints)
    .map(lambda r: (r, wire.encode_heartbeat(*r))),
    st.builds(wire.Seq, streams, uints.filter(bool), uints).map(lambda r: (r, wire.encode_seq(*r))),
    st.builds(wire.Ack, streams, uints, st.booleans()).map(lambda r: (r, wire.encode_ack(*r))),
    st.just((wire.Bye(), wire.BYE)),
    st.just((wire.Leaving(), wire.LEAVING)),
    st.builds(wire.Msg, uints, st.none() | short_text, st.integers(0, 4), targets, short_text,
              st.binary(max_size=64), st.none() | uints, st.none() | uints)
    .map(lambda r: (r, wire.encode_msg(r))),
    st.builds(wire.Reply, uints, st.sampled_from([int(s) for s in wire.ReplyStatus]),
              short_text, st.binary(max_size=64))
    .map(lambda r: (r, wire.encode_reply(r))),
)


def assert_trustworthy(record: wire.Record) -> None:
    """What the rest of the core relies on, for any record the decoder accepted."""
    assert type(record) in RECORD_TYPES

    def name_ok(value: object) -> bool:
        return type(value) is str and 0 < len(value) <= NAME_MAX

    def uint_ok(value: object) -> bool:
        return type(value) is int and 0 <= value <= UINT64

    def endpoint_ok(value: object) -> bool:
        if type(value) is not str or not value.startswith("tcp://"):
            return False
        host, _, port = value[len("tcp://"):].rpartition(":")
        return bool(host) and port.isdigit() and 0 < int(port) < 65536

    def entries_ok(items: object) -> bool:
        return type(items) is list and len(items) <= ENTRIES_MAX and all(
            uint_ok(s) and name_ok(n) and type(m) is dict and len(msgpack.packb(m)) <= META_MAX
            for s, n, m in items)

    if type(record) is wire.Hello:
        assert type(record.protocol) is int and type(record.reply) is bool
        assert len(record.node_id) == 16 and record.node_id[0] != 0
        assert endpoint_ok(record.endpoint) and entries_ok(record.entries)
        assert uint_ok(record.incarnation) and uint_ok(record.version)
        assert all(type(s) is str and len(s) <= NAME_MAX
                   for s in (record.cluster, record.name, record.via, record.echo))
    elif type(record) is wire.Peers:
        assert len(record.peers) <= PEERS_MAX
        assert all(len(n) == 16 and n[0] != 0 and endpoint_ok(e) for n, e in record.peers)
    elif type(record) is wire.Delta:
        assert uint_ok(record.incarnation) and uint_ok(record.version) and uint_ok(record.sub_id)
        assert (record.name, record.meta) == (None, None) or (
            name_ok(record.name) and entries_ok([(0, record.name, record.meta)]))
    elif type(record) is wire.Snapshot:
        assert entries_ok(record.entries)
    elif type(record) is wire.Msg:
        assert uint_ok(record.seq) and 0 <= record.mode <= 4 and type(record.body) is bytes
        target = record.target
        assert target is None or name_ok(target) or (
            type(target) is list and len(target) <= TARGETS_MAX and all(map(name_ok, target)))
        assert record.sub_id is None or uint_ok(record.sub_id)
        assert record.request_id is None or uint_ok(record.request_id)
    elif type(record) is wire.Reply:
        assert record.status in {int(s) for s in wire.ReplyStatus}
        assert type(record.body) is bytes and uint_ok(record.request_id)


def decode_or_reject(payload: bytes) -> list[wire.Record] | None:
    """The records of ``payload``, each validated; None when the frame itself is rejected.
    Any exception other than ``RemoteProtocolError`` fails the test."""
    try:
        raws = DECODER.batch(payload)
    except RemoteProtocolError:
        return None
    accepted = []
    for raw in raws:
        try:
            record = DECODER.record(raw)
        except RemoteProtocolError:
            continue
        assert_trustworthy(record)
        accepted.append(record)
    return accepted


# --- wire: round trips and hostile structures --------------------------------------------------

@FUZZ
@given(st.lists(records, min_size=1, max_size=6))
def test_any_valid_batch_round_trips(batch: list[tuple[wire.Record, bytes]]) -> None:
    decoded = decode_or_reject(wire.encode_batch([encoded for _, encoded in batch]))
    assert decoded == [record for record, _ in batch]
    for record in decoded:
        assert type(record) in RECORD_TYPES


# Any msgpack value the unpacker can produce, including the shapes decoders must refuse.
any_values = st.recursive(
    st.one_of(scalars, st.text(max_size=NAME_MAX + 2), node_ids, endpoints,
              st.integers(-(2**63), -1), st.just(UINT64)),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)),
                                            inner, max_size=4)),
    max_leaves=20)


@FUZZ
@given(records, st.data())
def test_a_record_with_any_field_replaced_is_valid_or_rejected(
        case: tuple[wire.Record, bytes], data: st.DataObject) -> None:
    raw = msgpack.unpackb(case[1])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw)), any_values), min_size=1,
                               max_size=3))
    for index, value in edits:
        if index == len(raw):
            raw.append(value)
        else:
            raw[index] = value
    decode_or_reject(msgpack.packb([raw]))


@FUZZ
@given(st.lists(any_values, max_size=4), st.integers(0, 11))
def test_any_msgpack_structure_with_a_kind_is_valid_or_rejected(
        fields: list[Any], kind: int) -> None:
    decode_or_reject(msgpack.packb([[kind, *fields]]))


@FUZZ
@given(any_values)
def test_any_msgpack_value_as_a_frame_is_valid_or_rejected(value: Any) -> None:
    decode_or_reject(msgpack.packb(value))


A = b"\x01" * 16
SAMPLES: list[tuple[wire.Record, bytes]] = [
    (r, enc(r)) for r, enc in [  # type: ignore[misc]
        (wire.Hello(1, "chat", A, 5, "tcp://10.0.0.1:7001", "web", False, "tcp://e:1", "",
                    3, [(1, "user:a", {"n": "A"}), (2, "x" * NAME_MAX, {})]), wire.encode_hello),
        (wire.Refuse("no", "tcp://e:1"), wire.encode_refuse),
        (wire.Peers([(A, "tcp://e:1"), (b"\x02" * 16, "tcp://*:2")]),
         lambda r: wire.encode_peers(r.peers)),
        (wire.Delta(1, 2, 3, "user:a", {"k": [1, "v"]}), wire.encode_delta),
        (wire.Delta(1, 2, 3, None, None), wire.encode_delta),
        (wire.Snapshot(1, 2, [(1, "a", {}), (2, "b", {"k": b"v"})]), wire.encode_snapshot),
        (wire.Heartbeat(1, 2, 3, 4, 5, 6, 7), lambda r: wire.encode_heartbeat(*r)),
        (wire.Seq(1, 2, 3), lambda r: wire.encode_seq(*r)),
        (wire.Ack(1, 2, True), lambda r: wire.encode_ack(*r)),
        (wire.Msg(1, "me", 0, ["a", "b"], "str", b"\xa1x", None, None), wire.encode_msg),
        (wire.Msg(1, None, 4, "a", "str", b"\xc0", 7, 9), wire.encode_msg),
        (wire.Reply(9, 0, "str", b"\xc0"), wire.encode_reply),
    ]
]
BOUNDARY_VALUES: list[Any] = [
    -1, -(2**63), 0, 4, 5, 11, UINT64, True, False, None, 1.5, float("nan"), "", "x" * NAME_MAX,
    "x" * (NAME_MAX + 1), "r" * 1025, b"", b"\x00" * 16, b"\x01" * 15, b"\x01" * 16,
    b"\x01" * 17, [], [[]], [1, 2, 3], {}, {"k": "v" * META_MAX}, {b"k": 1}, "tcp://h:0",
    "tcp://h:65536", "tcp://h:1", "tcp://:1", "ipc:///x", "tcp://h:1x",
    [[1, "n", {}]] * (ENTRIES_MAX + 1), ["t"] * (TARGETS_MAX + 1),
]


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside a raw record (list items and map values, at any depth)."""
    found = [path] if path else []
    if type(value) is list:
        for i, item in enumerate(value):
            found += paths(item, (*path, i))
    elif type(value) is dict:
        for key, item in value.items():
            found += paths(item, (*path, key))
    return found


def replaced(raw: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(raw) if type(raw) is list else dict(raw)
    copy[path[0]] = replaced(raw[path[0]], path[1:], new)
    return copy


def test_every_position_replaced_by_every_boundary_value_is_valid_or_rejected() -> None:
    """Exhaustive: each position of each record kind, each boundary value (~3,000 frames)."""
    tried = 0
    for _, encoded in SAMPLES:
        raw = msgpack.unpackb(encoded)
        for path in paths(raw):
            for value in BOUNDARY_VALUES:
                decode_or_reject(msgpack.packb([replaced(raw, path, value)]))
                tried += 1
    assert tried > 3000


def test_the_samples_are_valid() -> None:
    assert decode_or_reject(wire.encode_batch([e for _, e in SAMPLES])) == [r for r, _ in SAMPLES]


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, set, inserted, deleted or cut off."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "length" and data:
            # msgpack length prefixes: a huge str/bin/array/map length in 32 bits.
            data[pos:pos + 1] = bytes([draw(st.sampled_from([0xC6, 0xDB, 0xDD, 0xDF]))]) + \
                draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


valid_batches = st.lists(records, min_size=1, max_size=4).map(
    lambda batch: wire.encode_batch([encoded for _, encoded in batch]))


@FUZZ
@given(mutated(valid_batches))
def test_mutated_valid_batches_are_valid_or_rejected(payload: bytes) -> None:
    decode_or_reject(payload)


# --- message bodies ---------------------------------------------------------------------------

@message("test_fuzz_decoders.Point")
@dataclasses.dataclass
class Point:
    x: int
    label: str


@message("test_fuzz_decoders.Box")
@dataclasses.dataclass
class Box:
    items: list[Any]
    extra: Any = None


@message("test_fuzz_decoders.Wrap")
@dataclasses.dataclass
class Wrap:
    inner: Any


body_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), UINT64),
                         st.floats(allow_nan=False), st.text(max_size=10),
                         st.binary(max_size=10))
bodies = st.recursive(
    st.one_of(body_scalars, st.builds(Point, st.integers(-5, 5), st.text(max_size=5))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=5), st.binary(max_size=5)), inner,
                        max_size=4),
        st.builds(Box, st.lists(inner, max_size=3), inner)),
    max_leaves=16)


def strict(value: object) -> str:
    """A representation that tells 1 from 1.0 from True, and lists from tuples."""
    return repr(value)


def same_float(a: object, b: object) -> bool:
    return isinstance(a, float) and isinstance(b, float) and (
        a == b and math.copysign(1, a) == math.copysign(1, b))


@FUZZ
@given(bodies)
def test_any_sendable_body_round_trips_exactly(body: object) -> None:
    decoded = decode_body(encode_body(body))
    assert decoded == body or same_float(decoded, body)
    assert strict(decoded) == strict(body)


def nested_lists(depth: int) -> object:
    body: object = "leaf"
    for _ in range(depth):
        body = [body]
    return body


def nested_boxes(depth: int) -> object:
    body: object = "leaf"
    for _ in range(depth):
        body = Wrap(body)
    return body


@pytest.mark.parametrize("nest", [nested_lists, nested_boxes], ids=["lists", "records"])
def test_the_depth_limit_is_the_same_for_sender_and_receiver(nest: Any) -> None:
    deepest = nest(MAX_BODY_DEPTH)
    assert decode_body(encode_body(deepest)) == deepest
    with pytest.raises(TypeError, match="deeper"):
        encode_body(nest(MAX_BODY_DEPTH + 1))


def crafted_records(depth: int) -> bytes:
    """Record extensions nested ``depth`` deep, built by hand (a sender that skips checks)."""
    payload = msgpack.packb(["test_fuzz_decoders.Wrap", {"inner": "leaf"}])
    for _ in range(depth - 1):
        inner = msgpack.ExtType(EXT_RECORD, payload)
        payload = msgpack.packb(["test_fuzz_decoders.Wrap", {"inner": inner}])
    data: bytes = msgpack.packb(msgpack.ExtType(EXT_RECORD, payload))
    return data


def test_records_nested_past_the_limit_are_refused_by_the_receiver() -> None:
    assert decode_body(crafted_records(MAX_BODY_DEPTH)) == nested_boxes(MAX_BODY_DEPTH)
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        decode_body(crafted_records(MAX_BODY_DEPTH + 1))


# Record extensions with anything inside: good and bad names, fields of any shape, other codes.
ext_payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda name, fields: msgpack.packb([name, fields]),
              st.one_of(st.sampled_from(["test_fuzz_decoders.Point", "test_fuzz_decoders.Box",
                                         "unknown.Type"]), any_values),
              st.one_of(st.dictionaries(st.one_of(st.sampled_from(["x", "label", "items",
                                                                   "extra", "zzz"]),
                                                  st.binary(max_size=3)),
                                        any_values, max_size=4), any_values)),
)
BODY_TYPES = (type(None), bool, int, float, str, bytes, list, dict, Point, Box, Wrap,
              msgpack.Timestamp)


def decode_body_or_reject(data: bytes) -> None:
    """A body decodes to plain values and registered classes only, or is refused with our one
    error type; any other exception fails the test."""
    try:
        body = decode_body(data)
    except RemoteProtocolError:
        return
    stack = [body]
    while stack:
        value = stack.pop()
        assert type(value) in BODY_TYPES, type(value)
        if type(value) is list:
            stack.extend(value)
        elif type(value) is dict:
            assert all(type(k) in (str, bytes) for k in value)
            stack.extend(value.values())
        elif dataclasses.is_dataclass(value):
            stack.extend(getattr(value, f.name) for f in dataclasses.fields(value))


hostile_bodies = st.recursive(
    st.one_of(scalars, st.builds(msgpack.ExtType, st.sampled_from([EXT_RECORD, 0, 2, 127]),
                                 ext_payloads)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.builds(lambda x: msgpack.ExtType(EXT_RECORD, msgpack.packb(
            ["test_fuzz_decoders.Box", {"items": [x], "extra": x}])), inner)),
    max_leaves=12)


@FUZZ
@given(hostile_bodies)
def test_any_hostile_body_decodes_or_raises_remote_protocol_error(value: Any) -> None:
    decode_body_or_reject(msgpack.packb(value))


@pytest.mark.parametrize("data", [
    b"\xd4\xff\x00",                    # a msgpack timestamp (extension -1) of a wrong length
    b"\xd4\xfe\x00", b"\xd4\x80\x00",  # other reserved (negative) extension codes
    b"\x91\xc7\x00\xff",                # an empty timestamp inside a list
])
def test_reserved_extensions_are_remote_protocol_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(data)


def test_a_well_formed_msgpack_timestamp_arrives_as_msgpack_timestamp() -> None:
    # msgpack decodes extension -1 itself, without our hook: documented, and harmless (the
    # receiver cannot send it on: encode_body refuses it as any other unregistered type).
    decoded = decode_body(b"\xd6\xff\x00\x00\x00\x01")
    assert decoded == msgpack.Timestamp(1, 0)
    with pytest.raises(TypeError):
        encode_body(decoded)


@FUZZ
@given(mutated(bodies.map(encode_body)))
def test_mutated_bodies_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    decode_body_or_reject(data)


# --- mDNS TXT records -------------------------------------------------------------------------

ME = LocalNode("chat", "ab" * 16, 7001, "me")
OURS = {b"c": b"chat", b"v": str(wire.PROTOCOL_VERSION).encode(), b"p": b"7002"}


def txt_bytes(properties: dict[bytes, bytes]) -> bytes:
    return b"".join(bytes([len(k) + 1 + len(v)]) + k + b"=" + v for k, v in properties.items())


# Raw TXT rdata: length-prefixed strings, garbage, lengths that point past the end, huge values.
raw_txt = st.one_of(
    st.binary(max_size=600),
    st.lists(st.binary(max_size=255).map(lambda s: bytes([len(s)]) + s), max_size=12)
    .map(b"".join),
    st.builds(lambda junk, cut: (txt_bytes(OURS) + junk)[:cut], st.binary(max_size=300),
              st.integers(0, 400)),
)
ports = st.one_of(st.none(), st.integers(-5, 70000), st.sampled_from([0, 65535, 65536]))
v4_addresses = st.lists(st.binary(min_size=4, max_size=4), max_size=4)


def service(text: bytes, port: int | None, addresses: list[bytes]) -> ServiceInfo:
    return ServiceInfo(SERVICE_TYPE, f"spoof.{SERVICE_TYPE}", port=port, properties=text,
                       addresses=addresses)


@FUZZ
@given(raw_txt)
def test_any_txt_rdata_reads_as_short_text_or_none(text: bytes) -> None:
    txt = _text_properties(service(text, 1, []).properties)
    if txt is not None:
        assert all(type(k) is str and type(v) is str for k, v in txt.items())
        assert all(len(v.encode()) <= MAX_TXT_VALUE_LENGTH for v in txt.values())


@FUZZ
@given(raw_txt, ports, v4_addresses)
def test_only_well_formed_services_of_our_cluster_become_endpoints(
        text: bytes, port: int | None, addresses: list[bytes]) -> None:
    assume(port is None or 0 <= port <= 65535)  # ServiceInfo itself refuses other ports
    info = service(text, port, addresses)
    found = MdnsDiscovery(interfaces=["127.0.0.1"])._endpoints(info, ME)  # type: ignore[arg-type]
    if found is None:
        return
    txt = _text_properties(info.properties)
    assert txt is not None and txt["c"] == ME.cluster
    assert txt["v"] == str(wire.PROTOCOL_VERSION)
    assert found and port is not None and 0 < port < 65536
    for endpoint in found:
        host, _, got_port = endpoint.removeprefix("tcp://").rpartition(":")
        ip = ipaddress.IPv4Address(host)
        assert int(got_port) == port
        assert not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)
        assert ip.packed in addresses


def test_a_well_formed_service_of_our_cluster_is_an_endpoint() -> None:
    # The positive case the property above relies on (it must not pass only by refusing all).
    info = service(txt_bytes(OURS), 7002, [bytes([127, 0, 0, 9]), bytes([224, 0, 0, 251])])
    assert MdnsDiscovery()._endpoints(info, ME) == ["tcp://127.0.0.9:7002"]  # type: ignore[arg-type]
    assert info.parsed_addresses(IPVersion.V4Only)[0] == "127.0.0.9"


# --- bounded cost ------------------------------------------------------------------------------

HANG_BUDGET_S = 30.0
"""Decoding the most expensive frames the default limits let in: measured 2-4.5 s here for a
1M-record frame on a loaded 2-core machine (linear, ~70 ns per byte). A decoder that loops or
goes quadratic on them takes far longer than this."""


def default_decoder() -> wire.Decoder:
    limits = Limits()
    return wire.Decoder(max_frame_bytes=limits.max_frame_bytes,
                        max_table_entries=limits.max_table_entries, max_peers=limits.max_peers,
                        max_target_names=limits.max_target_names, max_name_length=1024,
                        max_meta_bytes=limits.max_meta_bytes)


@pytest.mark.parametrize("record", [b"\x91\x07", wire.encode_heartbeat(UINT64, UINT64)],
                         ids=["malformed", "valid"])
def test_a_frame_of_a_million_records_decodes_in_bounded_time(record: bytes) -> None:
    decoder = default_decoder()
    limits = Limits()
    # As many records as the biggest accepted frame holds (the header takes 5 bytes).
    count = min(limits.max_table_entries, (limits.max_frame_bytes - 5) // len(record))
    payload = wire.encode_batch([record] * count)
    started = time.monotonic()
    decoded = rejected = 0
    for raw in decoder.batch(payload):
        try:
            decoder.record(raw)
            decoded += 1
        except RemoteProtocolError:
            rejected += 1
    elapsed = time.monotonic() - started
    assert decoded + rejected == count
    assert elapsed < HANG_BUDGET_S


@pytest.mark.parametrize("payload", [b"\x91" * 1_000_000 + b"\xc0", b"\x81\xa1k" * 1_000_000
                                     + b"\xc0", b"\xdd\xff\xff\xff\xff"],
                         ids=["nested-arrays", "nested-maps", "huge-array-header"])
def test_deep_or_lying_frames_and_bodies_are_refused_at_once(payload: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(RemoteProtocolError):
        default_decoder().batch(payload)
    with pytest.raises(RemoteProtocolError):
        decode_body(payload)
    assert time.monotonic() - started < HANG_BUDGET_S
