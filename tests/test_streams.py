"""streams.py: numbered batches, acknowledgements and resends, with no network and no clock.

The property: whatever a broken connection does to batches in flight (drop some, deliver some
twice, deliver a resend before the rest of the original burst), the receiver takes each batch
exactly once and in order, as long as the sender resends what is not acknowledged when asked.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartroute import wire
from smartroute.streams import Inflow, Outbox, Verdict, newer

WINDOW = 8


def outbox(window_batches: int = WINDOW, window_bytes: int = 1 << 20) -> Outbox:
    return Outbox(stream=7, incarnation=1, window_batches=window_batches,
                  window_bytes=window_bytes)


def body_of(batch: bytes) -> int:
    """The body these tests number in their one-record batches (a HEARTBEAT's third field)."""
    body: int = msgpack.unpackb(batch)[1][2]
    return body


def seq_of(batch: bytes) -> tuple[int, int]:
    head = msgpack.unpackb(batch)[0]
    assert head[0] == wire.Kind.SEQ
    return head[1], head[2]


def test_batches_are_numbered_from_one_and_kept_until_acknowledged() -> None:
    out = outbox()
    batches = [out.number([wire.encode_heartbeat(1, i)]) for i in range(3)]
    assert [seq_of(b) for b in batches] == [(7, 1), (7, 2), (7, 3)]
    assert out.last_sent == 3 and len(out.unacked) == 3
    out.acked(2)
    assert [sent.seq for sent in out.unacked] == [3]
    assert out.resend() == [batches[2]]
    assert out.unacked_bytes == len(batches[2])


def test_messages_are_counted_per_batch_for_the_loss_count() -> None:
    out = outbox()
    record = wire.encode_msg(wire.Msg(1, None, 0, "x", "str", b"\xa1x", None, None))
    reply = wire.encode_reply(wire.Reply(1, 0, "str", b"\xc0"))
    out.number([record, wire.encode_heartbeat(1, 1), record, reply])
    assert out.unacked_messages() == 3


def test_the_window_is_spent_by_count_or_bytes_but_an_empty_one_has_room() -> None:
    out = outbox(window_batches=2, window_bytes=1000)
    assert not out.full
    big = out.number([b"\x91\x01" + b"x" * 2000])  # bigger than the window: still goes
    assert out.full
    out.acked(1)
    assert not out.full and big
    out.number([wire.BYE])
    out.number([wire.BYE])
    assert out.full


def test_a_receiver_takes_the_next_batch_only() -> None:
    inflow = Inflow(1)
    assert inflow.judge(7, 1) is Verdict.TAKE
    assert inflow.judge(7, 1) is Verdict.DUPLICATE
    assert inflow.judge(7, 3) is Verdict.GAP
    assert inflow.judge(7, 2) is Verdict.TAKE
    assert inflow.ack() == wire.Ack(7, 2, False)
    assert inflow.judge(9, 1) is Verdict.TAKE  # a new stream of the sender: from its start
    assert inflow.ack(resend=True) == wire.Ack(9, 1, True)
    # A late batch of the older stream (a lingering link, a resend) is stale: dropped, and
    # not even its start switches back to it (before, a late first batch did, and every batch
    # of the current stream was a gap from then on).
    assert inflow.judge(7, 3) is Verdict.STALE
    assert inflow.judge(7, 1) is Verdict.STALE and inflow.stream == 9
    assert inflow.judge(9, 2) is Verdict.TAKE
    # A new stream whose start was lost waits for it (the heartbeat names the stream).
    assert inflow.judge(11, 4) is Verdict.GAP and inflow.stream == 9


def test_a_heartbeat_tells_a_lost_tail() -> None:
    inflow = Inflow(1)
    assert not inflow.behind(0, 0)
    inflow.judge(7, 1)
    assert not inflow.behind(7, 1)
    assert inflow.behind(7, 2)
    assert inflow.behind(8, 1) and inflow.stream == 8 and inflow.taken == 0
    # A heartbeat of an older stream (one that rode in a resent batch) is not followed.
    assert not inflow.behind(7, 5) and inflow.stream == 8


@pytest.mark.parametrize(("stream", "than", "expected"), [
    (8, 7, True), (7, 8, False), (7, 7, False),
    (1, 0xFFFFFFFF, True),  # counting up wraps past 2^32 - 1 (skipping 0)
    (0xFFFFFFFF, 1, False),
    (0x80000006, 7, True), (0x80000007, 7, False),  # half the circle away: no longer newer
])
def test_stream_ids_count_up_and_wrap(stream: int, than: int, expected: bool) -> None:
    assert newer(stream, than) is expected


def test_resend_requests_are_rate_limited() -> None:
    inflow = Inflow(1)
    assert inflow.may_ask_resend(10.0)
    assert not inflow.may_ask_resend(10.05)
    assert inflow.may_ask_resend(10.2)


@settings(max_examples=300, deadline=None)
@given(batches=st.integers(1, 40),
       faults=st.lists(st.sampled_from(["drop", "dup", "deliver"]), min_size=1, max_size=200),
       ack_every=st.integers(1, 5))
def test_exactly_once_in_order_whatever_the_connection_does(
        batches: int, faults: list[str], ack_every: int) -> None:
    out = outbox(window_batches=WINDOW)
    inflow = Inflow(1)
    taken: list[int] = []
    wire_: list[bytes] = []  # batches in flight, in order
    to_send = list(range(batches))
    # The faults, then a connection that works again (as after a reconnect).
    fault = itertools.chain(faults, itertools.repeat("deliver"))
    for _ in range(20_000):  # bounded: the property says it converges well before
        while to_send and not out.full:
            body = to_send.pop(0)
            wire_.append(out.number([msgpack.packb([wire.Kind.HEARTBEAT, 1, body, 0, 0])]))
        if not wire_:
            if not out.unacked:
                break
            # Nothing in flight yet something unacknowledged: the heartbeat tells the tail.
            if inflow.behind(out.stream, out.last_sent):
                ack = inflow.ack(resend=True)
                out.acked(ack.seq)
                wire_.extend(out.resend())
            continue
        batch = wire_.pop(0)
        what = next(fault)
        if what == "drop":
            continue
        if what == "dup":
            wire_.insert(0, batch)
        stream, seq = seq_of(batch)
        verdict = inflow.judge(stream, seq)
        if verdict is Verdict.TAKE:
            taken.append(body_of(batch))
            if seq % ack_every == 0:
                out.acked(inflow.ack().seq)
        elif verdict is Verdict.GAP:
            ack = inflow.ack(resend=True)
            out.acked(ack.seq)
            wire_ = out.resend()  # go back: what was in flight after the gap is dropped anyway
    assert taken == list(range(batches))
    out.acked(inflow.ack().seq)
    assert not out.unacked and out.unacked_bytes == 0


@settings(max_examples=300, deadline=None)
@given(bodies=st.integers(1, 30),
       faults=st.lists(st.sampled_from(["drop", "dup", "deliver", "late", "replace", "lose_ack"]),
                       min_size=1, max_size=200),
       data=st.data())
def test_replaced_streams_and_late_batches_take_nothing_twice_and_lose_nothing_silently(
        bodies: int, faults: list[str], data: st.DataObject) -> None:
    """The sender replaces its stream now and then (its peer was declared dead and the stream
    expired: what it held is counted lost), and batches of any earlier stream arrive late.
    The receiver takes no body twice, in order, and every body is taken or counted lost; it
    never asks again for what it acknowledged (no stream restart is ever needed)."""
    ids = itertools.count(0xFFFFFFFD)  # wraps past 2^32 - 1 within a run

    def new_outbox() -> Outbox:
        stream = 0
        while not stream:
            stream = next(ids) & 0xFFFFFFFF
        return Outbox(stream, 1, WINDOW, 1 << 20)

    out, inflow = new_outbox(), Inflow(1)
    taken: list[int] = []
    lost: set[int] = set()
    history: list[bytes] = []  # every batch ever sent, for late copies
    wire_: list[bytes] = []
    to_send = list(range(bodies))
    fault = itertools.chain(faults, itertools.repeat("deliver"))
    ack_lost = False  # with the receiver's connection: it acknowledges again once it is back

    def answer(ack: wire.Ack) -> None:
        if ack.stream != out.stream:
            return  # an ACK for another stream is ignored
        if ack.resend and out.unacked:
            assert ack.seq + 1 >= out.unacked[0].seq, "asked again for acknowledged batches"
        out.acked(ack.seq)
        if ack.resend:
            wire_[:] = out.resend()

    for _ in range(20_000):  # bounded: converges well before
        while to_send and not out.full:
            batch = out.number([msgpack.packb([wire.Kind.HEARTBEAT, 1, to_send.pop(0), 0, 0])])
            wire_.append(batch)
            history.append(batch)
        what = next(fault)
        if what == "replace":
            lost.update(body_of(sent.batch) for sent in out.unacked)
            out = new_outbox()  # what was in flight stays in flight: late batches now
            continue
        if what == "late" and history:
            batch = history[data.draw(st.integers(0, len(history) - 1))]
        elif not wire_:
            if not out.unacked and not to_send:
                break
            if ack_lost:  # its connection is back up
                ack_lost = False
                inflow.ack_again()
                answer(inflow.ack())
            elif inflow.behind(out.stream, out.last_sent):  # the heartbeat tells the tail
                answer(inflow.ack(resend=True))
            continue
        else:
            batch = wire_.pop(0)
            if what == "drop":
                continue
            if what == "dup":
                wire_.insert(0, batch)
        stream, seq = seq_of(batch)
        verdict = inflow.judge(stream, seq)
        if verdict is Verdict.TAKE:
            taken.append(body_of(batch))
            if what == "lose_ack":
                ack_lost = True
            else:
                answer(inflow.ack())
        elif verdict is Verdict.DUPLICATE:
            answer(inflow.ack())
        elif verdict is Verdict.GAP:
            # A stream it does not follow is asked from its start; its own, after the gap.
            answer(wire.Ack(stream, 0, True) if stream != inflow.stream
                   else inflow.ack(resend=True))
    else:
        raise AssertionError("did not converge")
    assert len(taken) == len(set(taken)), "a body taken twice"
    assert taken == sorted(taken), "out of order"
    assert set(taken) | lost == set(range(bodies)), "a body neither taken nor counted lost"
