"""Wire records: kinds, encoding, and decoding with limits into validated records.

One ZeroMQ message is one *batch*: a msgpack array of records, each record an array whose first
item is its kind. Records are encoded once (a ``send_to`` to five nodes encodes its record once)
and joined into a batch per link per event-loop turn. Decoding checks every field, so the rest of
the protocol trusts what it gets; anything else raises ``RemoteProtocolError``.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import msgpack

from .errors import RemoteProtocolError

PROTOCOL_VERSION = 3
"""Bumped on any incompatible change of the records below; HELLO refuses other versions."""

NODE_ID_BYTES = 16
"""Node ids are 128 random bits; the first byte is never zero (ZeroMQ reserves such ids)."""

MAX_MAP_ITEMS = 4096
"""Most items of one map in an envelope (meta dicts are the only maps there)."""

MAX_ENDPOINT_LENGTH = 300
"""Longest endpoint accepted from a peer: ``tcp://`` plus a DNS name (253) plus a port."""

META_CACHE_BYTES = 1 << 20
"""Most bytes of encoded meta a decoder remembers to share equal metas (emptied when full)."""

Meta = dict[str, Any]
EMPTY_META: Meta = {}
"""The one empty meta of every decoded record (never changed: metas are shared)."""

Entry = tuple[int, str, Meta]
"""One subscriber of a table: ``(sub_id, name, meta)``."""


class Kind(enum.IntEnum):
    """First item of every record."""

    HELLO = 1
    REFUSE = 2
    PEERS = 3
    DELTA = 4
    SNAPSHOT_REQUEST = 5
    SNAPSHOT = 6
    HEARTBEAT = 7
    BYE = 8
    MSG = 9
    REPLY = 10
    SEQ = 11
    ACK = 12
    LEAVING = 13


class ReplyStatus(enum.IntEnum):
    """Outcome carried by a REPLY record."""

    OK = 0
    ERROR = 1
    NO_SUBSCRIBER = 2


class Hello(NamedTuple):
    """First record on every link: who the sender is, plus its whole table."""

    protocol: int
    cluster: str
    node_id: bytes
    incarnation: int
    endpoint: str
    name: str
    reply: bool
    """True when this HELLO answers one of ours (it is then not answered again)."""
    via: str
    """The endpoint the sender dialled to reach the receiver."""
    echo: str
    """In a reply: the ``via`` of the HELLO it answers, so the dialler can match its dial."""
    version: int
    entries: list[Entry]


class Refuse(NamedTuple):
    """Sent instead of a HELLO reply when the sender cannot join us."""

    reason: str
    echo: str
    """The ``via`` of the refused HELLO, so the refused node can drop that dial."""


class Peers(NamedTuple):
    """The alive peers the sender knows: ``(node_id, endpoint)``."""

    peers: list[tuple[bytes, str]]


class Delta(NamedTuple):
    """One change of the sender's own table; ``name`` is None for a removal."""

    incarnation: int
    version: int
    sub_id: int
    name: str | None
    meta: Meta | None


class SnapshotRequest(NamedTuple):
    """Asks for a SNAPSHOT: the receiver saw a gap in our deltas."""


class Snapshot(NamedTuple):
    """The sender's whole table at ``version``."""

    incarnation: int
    version: int
    entries: list[Entry]


class Heartbeat(NamedTuple):
    """Sent on every link at least every ``heartbeat_interval_s``: the sender's table version as
    a digest, and the last batch number of its stream to the receiver (so a lost tail batch is
    noticed and asked for again)."""

    incarnation: int
    version: int
    stream: int = 0
    """The sender's stream to the receiver (0: none yet)."""
    sent: int = 0
    """The number of the last sequenced batch sent on that stream (0: none)."""
    time_us: int = 0
    """The sender's monotonic clock, in microseconds (echoed back for the round trip)."""
    echo_us: int = 0
    """The ``time_us`` of the receiver's last heartbeat to the sender (0: none yet)."""
    held_us: int = 0
    """How long the sender held that echo before this heartbeat left, in microseconds: the
    receiver's round trip is its clock now - ``echo_us`` - ``held_us``."""


class Seq(NamedTuple):
    """First record of a sequenced batch: batch ``seq`` of the sender's ``stream`` to the
    receiver. The receiver takes batches of a stream in order, once, and acknowledges them."""

    stream: int
    seq: int
    incarnation: int
    """The receiver's incarnation the stream is for: a batch that reaches another process
    (a successor bound the same endpoint) is misdirected, dropped unacknowledged."""


class Ack(NamedTuple):
    """The receiver holds every batch of ``stream`` up to ``seq``; with ``resend``, it saw a
    gap and asks for every batch after ``seq`` again."""

    stream: int
    seq: int
    resend: bool


class Bye(NamedTuple):
    """The sender is closing: forget it now."""


class Leaving(NamedTuple):
    """The sender drains (it closes soon): choose its subscribers for ANY (and so for a
    request) only when nobody else has one; it still handles what reaches it."""


_MSG_FIELDS = ("seq", "sender", "mode", "target", "type", "body", "sub_id", "request_id")


class Msg:
    """One ``send_to`` (or request) for the receiver's local subscribers. (A plain class, not
    a NamedTuple as the other records, nor a dataclass: one is decoded per message, and the
    compiled build makes and reads this one natively, ~2x faster to decode. Treat it as
    read-only; it has what the other records have of a NamedTuple: ``_fields``, ``_asdict``,
    ``_replace``.)"""

    __slots__ = ("body", "mode", "request_id", "sender", "seq", "sub_id", "target", "type")
    _fields: ClassVar[tuple[str, ...]] = _MSG_FIELDS

    def __init__(self, seq: int, sender: str | None, mode: int, target: str | list[str] | None,
                 type: str, body: bytes, sub_id: int | None,
                 request_id: int | None) -> None:
        self.seq = seq
        self.sender = sender
        self.mode = mode
        self.target = target
        self.type = type
        self.body = body
        self.sub_id = sub_id
        """For ANY: the subscriber the sender chose."""
        self.request_id = request_id
        """Set for a request: the REPLY carries it back."""

    def fields(self) -> tuple[int, str | None, int, str | list[str] | None, str, bytes,
                              int | None, int | None]:
        """The eight fields, in wire order."""
        return (self.seq, self.sender, self.mode, self.target, self.type, self.body,
                self.sub_id, self.request_id)

    def _asdict(self) -> dict[str, Any]:
        """The fields by name, in wire order."""
        return dict(zip(_MSG_FIELDS, self.fields(), strict=True))

    def _replace(self, **changes: Any) -> Msg:
        """A copy with some fields changed."""
        fields = self._asdict()
        fields.update(changes)
        return Msg(**fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is Msg and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.fields()[:3])

    def __repr__(self) -> str:
        return "Msg(" + ", ".join(f"{name}={value!r}" for name, value in zip(
            _MSG_FIELDS, self.fields(), strict=True)) + ")"


class Reply(NamedTuple):
    """The answer to a request: a body for OK, an error text otherwise."""

    request_id: int
    status: int
    type: str
    body: bytes


Record = (Hello | Refuse | Peers | Delta | SnapshotRequest | Snapshot | Heartbeat | Bye | Msg
          | Reply | Seq | Ack | Leaving)


# --- encoding -----------------------------------------------------------------------------------

_local = threading.local()


def new_packer() -> Callable[[object], bytes]:
    """A reusable msgpack ``pack`` of our own: ``msgpack.packb`` builds a new ``Packer`` at
    every call, which costs more than packing a small record (measured: 480 ns against 200 ns
    for a 100-byte body). Not safe to share between threads."""
    pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack
    return pack


def packer() -> Callable[[object], bytes]:
    """This thread's reusable ``pack`` (see ``new_packer``)."""
    try:
        pack: Callable[[object], bytes] = _local.pack
    except AttributeError:
        pack = _local.pack = new_packer()
    return pack


def _pack(items: list[Any]) -> bytes:
    return packer()(items)


def encode_hello(h: Hello) -> bytes:
    """Encode a HELLO record."""
    return _pack([Kind.HELLO, *h[:10], [list(e) for e in h.entries]])


def encode_refuse(refuse: Refuse) -> bytes:
    """Encode a REFUSE record."""
    return _pack([Kind.REFUSE, *refuse])


def encode_peers(peers: list[tuple[bytes, str]]) -> bytes:
    """Encode a PEERS record."""
    return _pack([Kind.PEERS, [list(p) for p in peers]])


def encode_delta(d: Delta) -> bytes:
    """Encode a DELTA record."""
    return _pack([Kind.DELTA, *d])


SNAPSHOT_REQUEST = _pack([Kind.SNAPSHOT_REQUEST])
BYE = _pack([Kind.BYE])
LEAVING = _pack([Kind.LEAVING])


def encode_snapshot(s: Snapshot) -> bytes:
    """Encode a SNAPSHOT record."""
    return _pack([Kind.SNAPSHOT, s.incarnation, s.version, [list(e) for e in s.entries]])


def encode_heartbeat(incarnation: int, version: int, stream: int = 0, sent: int = 0,
                     time_us: int = 0, echo_us: int = 0, held_us: int = 0) -> bytes:
    """Encode a HEARTBEAT record."""
    return _pack([Kind.HEARTBEAT, incarnation, version, stream, sent, time_us, echo_us, held_us])


MAX_STREAM = 0xFFFFFFFF
"""Stream ids are uint32 (0: none)."""

# SEQ and ACK in fixed-width msgpack (uint32 stream, uint64 numbers): one struct call each
# instead of a Packer call, on every sequenced batch (measured: part of the request/reply
# round trip). Any msgpack decoder reads them.
_SEQ_RECORD = struct.Struct(">BBBIBQBQ")
_ACK_RECORD = struct.Struct(">BBBIBQB")


def encode_seq(stream: int, seq: int, incarnation: int) -> bytes:
    """Encode the SEQ record that opens a sequenced batch of ``stream`` to the receiver's
    ``incarnation``."""
    return _SEQ_RECORD.pack(0x94, Kind.SEQ, 0xCE, stream, 0xCF, seq, 0xCF, incarnation)


def encode_ack(stream: int, seq: int, resend: bool) -> bytes:
    """Encode an ACK record."""
    return _ACK_RECORD.pack(0x94, Kind.ACK, 0xCE, stream, 0xCF, seq, 0xC3 if resend else 0xC2)


def seq_of(raw: Any) -> tuple[int, int, int] | None:
    """``(stream, seq, incarnation)`` of a raw SEQ record, None if it is not a valid one (the
    decoder's checks, inline: this runs for every sequenced batch)."""
    if (type(raw) is list and len(raw) == 4 and type(stream := raw[1]) is int
            and type(seq := raw[2]) is int and type(incarnation := raw[3]) is int
            and 0 <= stream <= MAX_STREAM and 0 < seq <= _UINT64_MAX
            and 0 <= incarnation <= _UINT64_MAX):
        return stream, seq, incarnation
    return None


CONTROL_KINDS = frozenset({Kind.HELLO, Kind.REFUSE, Kind.BYE})
"""Records that never travel in a sequenced batch: they say who the sender is, or that it
goes, and must be read even when the receiver does not know (or no longer takes) its stream."""


def kind_of(record: bytes) -> int:
    """The kind of a record we encoded: each is a msgpack array of fewer than 16 items (a
    one-byte header) whose first item is its kind, a small int."""
    return record[1]


_MSG = int(Kind.MSG)


def encode_msg(m: Msg) -> bytes:
    """Encode a MSG record (the body is already encoded)."""
    return encode_msg_fields(packer(), m.seq, m.sender, m.mode, m.target, m.type, m.body,
                             m.sub_id, m.request_id)


def encode_msg_fields(pack: Callable[[object], bytes], seq: int, sender: str | None, mode: int,
                      target: str | list[str] | None, type_name: str, body: bytes,
                      sub_id: int | None, request_id: int | None) -> bytes:
    """``encode_msg`` of a ``Msg`` with these fields, with ``pack`` (a ``new_packer``), and
    without building the ``Msg``: every ``send_to`` encodes one (measured: ``send_to`` 490
    against 870 ns with the ``Msg`` built first, compiled; bench/PROFILE.md)."""
    return pack([_MSG, seq, sender, mode, target, type_name, body, sub_id, request_id])


def encode_reply(r: Reply) -> bytes:
    """Encode a REPLY record."""
    return _pack([Kind.REPLY, *r])


_ARRAY16 = struct.Struct(">BH")
_ARRAY32 = struct.Struct(">BI")


def encode_batch(records: list[bytes]) -> bytes:
    """Join encoded records into one batch (a msgpack array) without re-encoding them."""
    n = len(records)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 0x10000:
        header = _ARRAY16.pack(0xDC, n)
    else:
        header = _ARRAY32.pack(0xDD, n)
    return header + b"".join(records)


def chunk_records(records: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """``records`` in runs of at most ``max_bytes`` (one bigger record makes a run of its own),
    in order."""
    if sum(map(len, records)) <= max_bytes:
        return [records]
    chunks: list[list[bytes]] = []
    start = size = 0
    for i, record in enumerate(records):
        if size and size + len(record) > max_bytes:
            chunks.append(records[start:i])
            start, size = i, 0
        size += len(record)
    chunks.append(records[start:])
    return chunks


def encode_batches(records: list[bytes], max_bytes: int) -> list[bytes]:
    """``encode_batch`` in pieces of at most ``max_bytes`` of records, in order."""
    return [encode_batch(chunk) for chunk in chunk_records(records, max_bytes)]


# --- decoding -----------------------------------------------------------------------------------

class Decoder:
    """Decodes batches from the network under fixed limits into validated records."""

    def __init__(self, *, max_frame_bytes: int, max_table_entries: int, max_peers: int,
                 max_target_names: int, max_name_length: int, max_meta_bytes: int) -> None:
        self._unpack_options: dict[str, Any] = {
            "max_str_len": max_frame_bytes,
            "max_bin_len": max_frame_bytes,
            "max_array_len": max(max_table_entries, max_target_names, max_peers, 16),
            "max_map_len": MAX_MAP_ITEMS,
            "max_ext_len": 0,
            "strict_map_key": True,
        }
        self.max_frame_bytes = max_frame_bytes
        self.max_table_entries = max_table_entries
        self.max_peers = max_peers
        self.max_target_names = max_target_names
        self.max_name_length = max_name_length
        self.max_meta_bytes = max_meta_bytes
        self._metas: dict[bytes, Meta] = {}
        """Metas decoded before, by their encoding: an equal one decodes to the same object
        (a gateway gives all its users one meta; 100,000 copies were 18 MB of a table)."""
        self._metas_bytes = 0

    def batch(self, payload: bytes | memoryview) -> list[Any]:
        """Split a batch into raw records; raises ``RemoteProtocolError`` if it is not one."""
        if len(payload) > self.max_frame_bytes:
            raise RemoteProtocolError(f"frame of {len(payload)} bytes is over the limit")
        try:
            items = msgpack.unpackb(payload, **self._unpack_options)
        except Exception as exc:
            # msgpack raises ValueError, FormatError, StackError, ExtraData, TypeError (unhashable
            # key) and more on garbage: they are all one thing to us.
            raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}") from exc
        if type(items) is not list:
            raise RemoteProtocolError("frame is not a batch of records")
        return items

    def record(self, raw: Any) -> Record:
        """Validate one raw record; raises ``RemoteProtocolError`` for anything off."""
        if type(raw) is not list or not raw:
            raise RemoteProtocolError("record is not a non-empty array")
        kind = raw[0]
        decode = _DECODERS.get(kind) if type(kind) is int else None
        if decode is None:
            raise RemoteProtocolError(f"unknown record kind {kind!r}")
        try:
            return decode(self, raw)
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"malformed {Kind(kind).name}: {exc}") from exc

    def msg(self, raw: list[Any]) -> Msg:
        """``record`` for a raw record whose kind is MSG: the hot one, without the lookup."""
        try:
            return self._msg(raw)
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"malformed MSG: {exc}") from exc

    # Each decoder checks arity and types; `_check` raises ValueError, turned into ours above.

    def _hello(self, raw: list[Any]) -> Hello:
        _arity(raw, 12)
        _, proto, cluster, node_id, inc, endpoint, name, reply, via, echo, version, entries = raw
        _check(type(proto) is int, "protocol")
        _check(type(cluster) is str and len(cluster) <= self.max_name_length, "cluster")
        _check(_is_node_id(node_id), "node id")
        _check(_is_uint(inc), "incarnation")
        _check(self._is_endpoint(endpoint), "endpoint")
        _check(type(name) is str and len(name) <= self.max_name_length, "name")
        _check(type(reply) is bool, "reply")
        _check(type(via) is str and len(via) <= self.max_name_length, "via")
        _check(type(echo) is str and len(echo) <= self.max_name_length, "echo")
        _check(_is_uint(version), "version")
        return Hello(proto, cluster, node_id, inc, endpoint, name, reply, via, echo, version,
                     self._entries(entries))

    def _refuse(self, raw: list[Any]) -> Refuse:
        _arity(raw, 3)
        _check(type(raw[1]) is str and len(raw[1]) <= 1024, "reason")
        _check(type(raw[2]) is str and len(raw[2]) <= self.max_name_length, "echo")
        return Refuse(raw[1], raw[2])

    def _peers(self, raw: list[Any]) -> Peers:
        _arity(raw, 2)
        items = raw[1]
        _check(type(items) is list and len(items) <= self.max_peers, "peers")
        peers: list[tuple[bytes, str]] = []
        for item in items:
            _check(type(item) is list and len(item) == 2, "peer")
            node_id, endpoint = item
            _check(_is_node_id(node_id), "peer node id")
            _check(self._is_endpoint(endpoint), "endpoint")
            peers.append((node_id, endpoint))
        return Peers(peers)

    def _delta(self, raw: list[Any]) -> Delta:
        _arity(raw, 6)
        _, inc, version, sub_id, name, meta = raw
        _check(_is_uint(inc) and _is_uint(version) and _is_uint(sub_id), "delta numbers")
        if name is None:
            _check(meta is None, "removal meta")
        else:
            _check(self._is_name(name), "name")
            meta = self._meta(meta)
        return Delta(inc, version, sub_id, name, meta)

    def _snapshot_request(self, raw: list[Any]) -> SnapshotRequest:
        _arity(raw, 1)
        return SnapshotRequest()

    def _snapshot(self, raw: list[Any]) -> Snapshot:
        _arity(raw, 4)
        _check(_is_uint(raw[1]) and _is_uint(raw[2]), "snapshot numbers")
        return Snapshot(raw[1], raw[2], self._entries(raw[3]))

    def _heartbeat(self, raw: list[Any]) -> Heartbeat:
        _arity(raw, 8)
        _check(all(_is_uint(value) for value in raw[1:]), "heartbeat numbers")
        return Heartbeat(*raw[1:])

    def _seq(self, raw: list[Any]) -> Seq:
        _arity(raw, 4)
        numbers = seq_of(raw)
        _check(numbers is not None, "stream, batch number or incarnation")
        assert numbers is not None
        return Seq(*numbers)

    def _ack(self, raw: list[Any]) -> Ack:
        _arity(raw, 4)
        _check(type(raw[1]) is int and 0 <= raw[1] <= MAX_STREAM and _is_uint(raw[2])
               and type(raw[3]) is bool, "ack")
        return Ack(raw[1], raw[2], raw[3])

    def _bye(self, raw: list[Any]) -> Bye:
        _arity(raw, 1)
        return Bye()

    def _leaving(self, raw: list[Any]) -> Leaving:
        _arity(raw, 1)
        return Leaving()

    def _msg(self, raw: list[Any]) -> Msg:
        if len(raw) != 9:
            _arity(raw, 9)
        _, seq, sender, mode, target, type_, body, sub_id, request_id = raw
        # The hot record: every check in one expression (a call per field cost ~10% of a
        # node's receive path); ``_msg_problem`` names the field when it fails.
        longest = self.max_name_length
        if (type(seq) is int and 0 <= seq <= _UINT64_MAX
                and (sender is None or (type(sender) is str and len(sender) <= longest))
                and type(mode) is int and 0 <= mode <= 4
                and ((type(target) is str and 0 < len(target) <= longest) or target is None
                     or (type(target) is list and len(target) <= self.max_target_names
                         and all(self._is_name(t) for t in target)))
                and type(type_) is str and len(type_) <= longest
                and type(body) is bytes
                and (sub_id is None or _is_uint(sub_id))
                and (request_id is None or _is_uint(request_id))):
            return Msg(seq, sender, mode, target, type_, body, sub_id, request_id)
        self._msg_problem(raw)
        raise ValueError("bad MSG")  # not reached: _msg_problem raises

    def _msg_problem(self, raw: list[Any]) -> None:
        """Raise ``ValueError`` naming the first bad field of a MSG record."""
        _, seq, sender, mode, target, type_, body, sub_id, request_id = raw
        _check(_is_uint(seq), "seq")
        _check(sender is None or (type(sender) is str and len(sender) <= self.max_name_length),
               "sender")
        _check(type(mode) is int and 0 <= mode <= 4, "mode")
        if type(target) is list:
            _check(len(target) <= self.max_target_names
                   and all(self._is_name(t) for t in target), "target")
        else:
            _check(target is None or self._is_name(target), "target")
        _check(type(type_) is str and len(type_) <= self.max_name_length, "type")
        _check(type(body) is bytes, "body")
        _check(sub_id is None or _is_uint(sub_id), "sub id")
        _check(request_id is None or _is_uint(request_id), "request id")

    def _reply(self, raw: list[Any]) -> Reply:
        _arity(raw, 5)
        _, request_id, status, type_, body = raw
        _check(_is_uint(request_id), "request id")
        _check(type(status) is int and status in _REPLY_STATUSES, "status")
        _check(type(type_) is str and len(type_) <= self.max_name_length, "type")
        _check(type(body) is bytes, "body")
        return Reply(request_id, status, type_, body)

    def _entries(self, entries: Any) -> list[Entry]:
        _check(type(entries) is list and len(entries) <= self.max_table_entries, "entries")
        out: list[Entry] = []
        for entry in entries:
            _check(type(entry) is list and len(entry) == 3, "entry")
            sub_id, name, meta = entry
            _check(_is_uint(sub_id) and self._is_name(name), "entry")
            out.append((sub_id, name, self._meta(meta)))
        return out

    def _is_name(self, name: Any) -> bool:
        return type(name) is str and 0 < len(name) <= self.max_name_length

    def _meta(self, meta: Any) -> Meta:
        """A valid meta, as the object of an equal one decoded before if any (metas are
        shared: nobody changes one in place). Every empty meta is ``EMPTY_META``."""
        _check(type(meta) is dict, "meta")
        if not meta:
            return EMPTY_META
        packed: bytes = msgpack.packb(meta)
        # Meta is replicated to every node: hold peers to the limit our own API enforces.
        _check(len(packed) <= self.max_meta_bytes, "meta")
        shared = self._metas.get(packed)
        if shared is not None:
            return shared
        if self._metas_bytes + len(packed) > META_CACHE_BYTES:
            self._metas.clear()
            self._metas_bytes = 0
        fresh: Meta = meta
        self._metas[packed] = fresh
        self._metas_bytes += len(packed)
        return fresh

    def _is_endpoint(self, endpoint: Any) -> bool:
        # Only TCP endpoints are dialled: an ipc:// or inproc:// one from a peer is refused.
        if type(endpoint) is not str or len(endpoint) > MAX_ENDPOINT_LENGTH:
            return False
        if not endpoint.startswith("tcp://"):
            return False
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        return bool(sep and host and port.isascii() and port.isdigit()
                    and 0 < int(port) < 65536)



# Outside the class body: a compiled (mypyc) class body cannot name its own methods.
_DECODERS: dict[int, Callable[[Decoder, list[Any]], Record]] = {
    Kind.HELLO: Decoder._hello,
    Kind.REFUSE: Decoder._refuse,
    Kind.PEERS: Decoder._peers,
    Kind.DELTA: Decoder._delta,
    Kind.SNAPSHOT_REQUEST: Decoder._snapshot_request,
    Kind.SNAPSHOT: Decoder._snapshot,
    Kind.HEARTBEAT: Decoder._heartbeat,
    Kind.BYE: Decoder._bye,
    Kind.MSG: Decoder._msg,
    Kind.REPLY: Decoder._reply,
    Kind.SEQ: Decoder._seq,
    Kind.ACK: Decoder._ack,
    Kind.LEAVING: Decoder._leaving,
}


_REPLY_STATUSES = frozenset(int(s) for s in ReplyStatus)
_UINT64_MAX = 2**64 - 1


def _arity(raw: list[Any], n: int) -> None:
    if len(raw) != n:
        raise ValueError(f"{len(raw) - 1} fields instead of {n - 1}")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"bad {what}")


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _UINT64_MAX


def _is_node_id(value: Any) -> bool:
    return type(value) is bytes and len(value) == NODE_ID_BYTES and value[0] != 0
