"""Sequenced streams: what a node sends a peer is numbered, kept until acknowledged, and taken
by the peer in order and once.

Every batch that carries anything but control records (HELLO, REFUSE, BYE: who we are, that
we go) opens with a SEQ record: ``(stream, seq)``. A sender has one stream per peer (its
``Outbox``), numbered from 1; it keeps every batch until the peer's ACK covers it, and never
has more than a window of them out: ``send_to`` waits for room, then raises ``LinkFull``. A
receiver (its ``Inflow`` per peer) takes batch ``seq`` only after ``seq - 1``: a copy it has
already taken is dropped, a batch after a gap is dropped and the gap asked for again (an ACK
with ``resend``), at most every ``RESEND_INTERVAL_S``. The sender's heartbeat says the number
of its last batch, so a lost tail is noticed too.

Streams are ordered: each new stream a sender starts for a receiver has an id after the last
(counting up modulo 2^32, see ``newer``), so a receiver never goes back to a stream it left. A
late batch or heartbeat of an older stream (from a link that lingered, or copied into a resent
batch) is stale: dropped, never taken and never followed.

So a connection that breaks (a TCP reset, a cut, libzmq closing a link whose pings went
unanswered) loses nothing: libzmq reconnects, the sender resends what is not acknowledged,
the receiver drops the copies. A peer declared dead keeps its outbox for
``redial_dead_for_s``: if the same incarnation comes back, the stream resumes where it
stopped; otherwise what it holds is counted lost. Pure: no I/O, no clock.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import NamedTuple

import msgpack

from . import wire
from .config import RESEND_INTERVAL_S

_MESSAGE_KINDS = frozenset({int(wire.Kind.MSG), int(wire.Kind.REPLY)})
_RIDER_KINDS = frozenset({wire.Kind.HEARTBEAT, wire.Kind.ACK})


class Sent(NamedTuple):
    """A batch sent and not yet acknowledged."""

    seq: int
    batch: bytes


@dataclasses.dataclass(slots=True)
class Outbox:
    """Our stream to one peer (one incarnation of it)."""

    stream: int
    incarnation: int
    """The peer's incarnation this stream is for: a restarted peer gets a new stream."""
    window_batches: int
    window_bytes: int
    next_seq: int = 1
    unacked: collections.deque[Sent] = dataclasses.field(default_factory=collections.deque)
    unacked_bytes: int = 0
    dead_at: float | None = None
    """When its peer was declared dead (the outbox waits for it to come back)."""

    def number(self, records: list[bytes]) -> bytes:
        """The next sequenced batch of ``records``, kept until acknowledged."""
        seq = self.next_seq
        self.next_seq = seq + 1
        batch = wire.encode_batch([wire.encode_seq(self.stream, seq, self.incarnation), *records])
        self.unacked.append(Sent(seq, batch))
        self.unacked_bytes += len(batch)
        return batch

    def acked(self, seq: int) -> None:
        """The peer holds every batch up to ``seq``."""
        unacked = self.unacked
        while unacked and unacked[0].seq <= seq:
            self.unacked_bytes -= len(unacked.popleft().batch)

    @property
    def full(self) -> bool:
        """No room for another batch: the window is spent (an empty one always has room)."""
        return bool(self.unacked) and (len(self.unacked) >= self.window_batches
                                       or self.unacked_bytes >= self.window_bytes)

    @property
    def last_sent(self) -> int:
        """Number of the last batch sent (0: none)."""
        return self.next_seq - 1

    def unacked_messages(self) -> int:
        """Messages (MSG and REPLY records) in batches not acknowledged: lost if the peer
        never comes back. Counted from the bytes, only then: a loss is rare, a batch is not."""
        return sum(1 for sent in self.unacked for record in msgpack.unpackb(sent.batch)
                   if record[0] in _MESSAGE_KINDS)

    def resend(self) -> list[bytes]:
        """Every batch not acknowledged, in order, to send again."""
        return [sent.batch for sent in self.unacked]

    def renumbered(self, stream: int) -> Outbox:
        """A new stream ``stream`` holding what this one holds unacknowledged, numbered from 1:
        for a receiver that lost its place in this one (it asks for batches it had
        acknowledged, which we no longer hold), so that it takes the rest from a start."""
        fresh = Outbox(stream, self.incarnation, self.window_batches, self.window_bytes)
        for sent in self.unacked:
            # Without the old SEQ, nor the heartbeats and ACKs that rode along: they spoke of
            # the links as they were then.
            records = [record for record in _records(sent.batch)[1:]
                       if wire.kind_of(record) not in _RIDER_KINDS]
            if records:
                fresh.number(records)
        return fresh


class Verdict(enum.Enum):
    """What a receiver does with a sequenced batch."""

    TAKE = "take"
    DUPLICATE = "duplicate"
    GAP = "gap"
    STALE = "stale"
    """A batch of a stream older than the one the receiver takes: dropped, nothing asked."""


def newer(stream: int, than: int) -> bool:
    """Whether 32-bit stream id ``stream`` comes after ``than`` (RFC 1982 serial-number
    arithmetic: ids count up and wrap, and a sender is never 2^31 streams ahead)."""
    return 0 < (stream - than) & 0xFFFFFFFF < 0x80000000


@dataclasses.dataclass(slots=True)
class Inflow:
    """A peer's stream to us (one incarnation of it): how far we took it."""

    incarnation: int
    """The sender's incarnation: a restarted sender counts its streams from elsewhere."""
    stream: int = 0
    taken: int = 0
    acked: int = 0
    """The last ``taken`` we acknowledged."""
    resend_asked_at: float = float("-inf")

    def judge(self, stream: int, seq: int) -> Verdict:
        """Take batch ``seq`` of ``stream`` if it is the next one."""
        if stream != self.stream:
            if self.stream and not newer(stream, self.stream):
                # A stream its sender replaced: following it would take old batches again and
                # see every batch of the current stream as a gap, for ever.
                return Verdict.STALE
            if seq != 1 and self.stream:
                # A new stream whose start was lost: only a start switches streams (or a
                # heartbeat naming the new one, ``behind``); the first stream we hear of is
                # taken from wherever it is (asked from 1).
                return Verdict.GAP
            # The sender started a new stream (its outbox for us is new): from its start.
            self.stream, self.taken, self.acked = stream, 0, 0
        if seq == self.taken + 1:
            self.taken = seq
            return Verdict.TAKE
        if seq <= self.taken:
            # A resend: our ACK may have been lost with a broken connection. ACK again (even
            # if we had acknowledged all), or its sender keeps the batch until a later one.
            self.acked = min(self.acked, seq - 1)
            return Verdict.DUPLICATE
        return Verdict.GAP

    def behind(self, stream: int, sent: int) -> bool:
        """A heartbeat says batch ``sent`` of ``stream`` left: True if we miss some. A
        heartbeat of an older stream says nothing of the current one."""
        if stream == 0 or sent == 0:
            return False
        if stream != self.stream:
            if self.stream and not newer(stream, self.stream):
                return False
            self.stream, self.taken, self.acked = stream, 0, 0
        return sent > self.taken

    def ack_again(self) -> None:
        """Our last ACK may have been lost (its connection broke): make one due."""
        self.acked = min(self.acked, self.taken - 1)

    def may_ask_resend(self, now: float) -> bool:
        """Ask for a gap again only every ``RESEND_INTERVAL_S``."""
        if now - self.resend_asked_at < RESEND_INTERVAL_S:
            return False
        self.resend_asked_at = now
        return True

    def ack(self, *, resend: bool = False) -> wire.Ack:
        """The ACK to send now (and remember as sent)."""
        self.acked = self.taken
        return wire.Ack(self.stream, self.taken, resend)


def _records(batch: bytes) -> list[bytes]:
    """The encoded records of a batch we framed, byte for byte (a SEQ stays fixed-width)."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(batch)
    count = unpacker.read_array_header()
    records, start = [], unpacker.tell()
    for _ in range(count):
        unpacker.skip()
        end = unpacker.tell()
        records.append(batch[start:end])
        start = end
    return records
