"""smartroute/dispatch.py: Dispatcher, Subscription and EventStream on a real event loop, fed by
hand with what the protocol would hand over (no sockets: the room's only links to its node are
a real ``Requests``, a counter of the table and a pace callback)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import pytest

from smartroute.config import DISPATCH_BACKLOG_EVENTS, DISPATCH_BUDGET_S, HANDLER_HOLD_S, Limits
from smartroute.dispatch import Dispatcher, Handler, Owner, Subscription
from smartroute.errors import NodeClosed, RemoteError, WaitTimeout
from smartroute.events import PeerDown, PeerInfo, PeerUp, Subscriber, SubscriberUp
from smartroute.messages import Message, encode_body
from smartroute.modes import ReceiveMode
from smartroute.protocol import Deliver, ProtocolEvent
from smartroute.testing import async_wait_until
from smartroute.wire import Msg, ReplyStatus

from .test_requests import ME, PEER_B, Outbox

SLOW_HANDLER_S = 0.001
"""What a slow sync handler spends per message: 8 of them (the budget is checked every 8)
are past ``DISPATCH_BUDGET_S``."""

assert 8 * SLOW_HANDLER_S > DISPATCH_BUDGET_S


class Room:
    """A dispatcher and what its node would give it."""

    def __init__(self, **limits: Any) -> None:
        self.outbox = Outbox()
        self.requests = self.outbox.requests()
        self.stats: collections.Counter[str] = collections.Counter()
        self.table: collections.Counter[str] = collections.Counter()
        """Subscribers by name, as the table would count them (for ``wait_for``)."""
        self.paces: list[bool] = []
        """``holds_inbox`` at each pace call."""
        self.dispatcher = Dispatcher(ME, Limits(**limits), self.requests, self.stats,
                                     count=self.table.__getitem__, pace=self._pace)
        self._ids = iter(range(1, 1000))

    def _pace(self) -> None:
        self.paces.append(self.dispatcher.holds_inbox)

    def _unsubscribe(self, sub: Subscription) -> None:
        self.dispatcher.subs.pop(sub.sub_id, None)

    def _update_meta(self, sub: Subscription, meta: object) -> dict[str, Any]:
        raise AssertionError("not used here")

    def subscribe(self, name: str, handler: Handler, concurrency: int = 1) -> Subscription:
        owner = Owner(self._unsubscribe, self._update_meta)
        return self.dispatcher.subscription(next(self._ids), name, {}, handler, concurrency,
                                            owner)


def deliver(sub: Subscription, body: object, seq: int = 1, request_id: int | None = None,
            raw: bytes | None = None) -> Deliver:
    """What the protocol hands over for a message from ``PEER_B`` to ``sub``."""
    data = encode_body(body) if raw is None else raw
    return Deliver([sub.sub_id], PEER_B, Msg(seq, None, int(ReceiveMode.EQ), sub.name,
                                              type(body).__name__, data, None, request_id))


def peer(node_id: str = PEER_B) -> PeerInfo:
    return PeerInfo(node_id, "tcp://127.0.0.1:7001", "b", "alive", 1)


# --- the budget -----------------------------------------------------------------------------


async def test_slow_sync_handlers_are_spread_over_loop_turns_in_order() -> None:
    room = Room()
    got: list[object] = []

    def slow(msg: Message) -> None:
        time.sleep(SLOW_HANDLER_S)  # the handler's own work, not a wait for anything
        got.append(msg.body)

    sub = room.subscribe("slow", slow)
    first: list[ProtocolEvent] = [deliver(sub, i, seq=i) for i in range(40)]
    assert room.dispatcher.dispatch(first) is True  # budget spent: some wait
    done = len(got)
    assert done == 8 and len(room.dispatcher.backlog) == 32
    assert got == list(range(8))
    # The next turn takes the backlog first, then what arrived since.
    later: list[ProtocolEvent] = [deliver(sub, i, seq=i) for i in range(40, 50)]
    turns = 2
    behind = room.dispatcher.dispatch(later)
    while behind:
        turns += 1
        assert turns < 20
        behind = room.dispatcher.dispatch([])
    assert got == list(range(50))
    assert turns == 7  # 8 a turn: 50 messages in 7 turns
    assert room.dispatcher.received == room.dispatcher.delivered == 50


async def test_a_backlog_over_dispatch_backlog_events_holds_the_inbox() -> None:
    room = Room()
    slow_for = [8]

    def handler(msg: Message) -> None:
        if slow_for[0]:
            slow_for[0] -= 1
            time.sleep(SLOW_HANDLER_S)

    sub = room.subscribe("many", handler)
    events: list[ProtocolEvent] = [deliver(sub, i, seq=i)
                                   for i in range(DISPATCH_BACKLOG_EVENTS + 9)]
    assert room.dispatcher.dispatch(events) is True
    assert len(room.dispatcher.backlog) == DISPATCH_BACKLOG_EVENTS + 1
    assert room.dispatcher.holds_inbox
    while room.dispatcher.dispatch([]):
        pass
    assert not room.dispatcher.holds_inbox
    assert room.dispatcher.delivered == DISPATCH_BACKLOG_EVENTS + 9


# --- async handlers: pacing the inbox -------------------------------------------------------


async def test_a_half_full_async_queue_holds_the_inbox_until_it_is_down_to_a_quarter() -> None:
    room = Room(handler_queue_size=8)
    gate = asyncio.Event()
    got: list[object] = []

    async def handler(msg: Message) -> None:
        await gate.wait()
        got.append(msg.body)

    sub = room.subscribe("async", handler)
    room.dispatcher.dispatch([deliver(sub, i, seq=i) for i in range(3)])
    assert not room.dispatcher.holds_inbox and room.paces == []
    room.dispatcher.dispatch([deliver(sub, 3, seq=3)])  # 4 of 8: half full
    assert room.dispatcher.holds_inbox and room.paces == [True]
    gate.set()
    await async_wait_until(lambda: len(got) == 4, timeout=2.0, what="the handler catches up")
    assert not room.dispatcher.holds_inbox and room.paces == [True, False]
    assert got == [0, 1, 2, 3]


async def test_a_stuck_handler_is_no_longer_waited_for_after_handler_hold_s(
        caplog: pytest.LogCaptureFixture) -> None:
    room = Room(handler_queue_size=8)
    never = asyncio.Event()

    async def stuck(msg: Message) -> None:
        await never.wait()

    sub = room.subscribe("stuck", stuck)
    held_at = time.monotonic()
    room.dispatcher.dispatch([deliver(sub, i, seq=i) for i in range(4)])
    assert room.dispatcher.holds_inbox
    room.dispatcher.release_stuck()  # too early: still waited for
    assert room.dispatcher.holds_inbox

    def released() -> bool:
        room.dispatcher.release_stuck()  # what the driver's timer does every tick
        return not room.dispatcher.holds_inbox

    with caplog.at_level(logging.WARNING, logger="smartroute.node"):
        await async_wait_until(released, timeout=HANDLER_HOLD_S + 2.0, interval=0.02,
                               what="the stuck handler released")
    assert time.monotonic() - held_at >= HANDLER_HOLD_S
    assert room.paces[0] is True and room.paces[-1] is False
    assert "the handler of 'stuck' took no message" in caplog.text
    # Not waited for again: its queue fills to its size (no room beyond, even for remote
    # messages: it no longer holds the inbox) and the rest is dropped.
    queued = sub.queued
    room.dispatcher.dispatch([deliver(sub, i, seq=i) for i in range(4, 20)])
    assert not room.dispatcher.holds_inbox
    assert sub.queued == 8 and room.stats["queue_full"] == 16 - (8 - queued)
    await sub.close()


async def test_a_full_queue_drops_counts_and_answers_the_requester_at_once() -> None:
    room = Room(handler_queue_size=4)
    never = asyncio.Event()

    async def stuck(msg: Message) -> None:
        await never.wait()

    sub = room.subscribe("full", stuck)
    # Remote messages while the queue holds the inbox get room up to twice its size (what
    # was already read from the network): 8 accepted, 2 dropped.
    room.dispatcher.dispatch([deliver(sub, i, seq=i, request_id=100 + i) for i in range(10)])
    assert room.dispatcher.delivered == 8 and sub.queued == 8
    assert room.stats["queue_full"] == room.stats["dropped"] == 2
    assert room.outbox.replies == [
        (PEER_B, 108, ReplyStatus.ERROR, "RuntimeError", b"RuntimeError: subscriber queue full"),
        (PEER_B, 109, ReplyStatus.ERROR, "RuntimeError", b"RuntimeError: subscriber queue full"),
    ]
    assert room.requests.handling == 8  # the dropped two are answered, the rest wait
    # A local request gets no such room: the queue is over its size, it is refused at once.
    loop = asyncio.get_running_loop()
    request_id, pending = room.requests.open(loop, 5.0)
    pending.remaining = 1
    room.dispatcher.deliver_local([sub.sub_id], 1, "x", "str", ReceiveMode.EQ, "full", None,
                                  room.requests.local_replier(request_id))
    with pytest.raises(RemoteError, match="subscriber queue full") as caught:
        pending.future.result()
    assert caught.value.error_type == "RuntimeError"
    assert room.stats["queue_full"] == 3
    # Closing the subscription answers what waited in its queue (NodeClosed), at once.
    await sub.close()
    assert room.requests.handling == 0
    assert [r[1:4] for r in room.outbox.replies[2:]] == [
        (100 + i, ReplyStatus.ERROR, "NodeClosed") for i in range(8)]
    # The worker may have taken the first one before closing: it is cancelled, not answered
    # twice.
    assert len(room.outbox.replies) == 10


async def test_a_request_in_an_async_handler_is_answered_when_its_subscription_closes(
        ) -> None:
    """Before: the worker was cancelled without a word; the requester waited for its
    timeout, and ``handling`` stayed up, so a later ``drain`` always waited its whole
    timeout."""
    room = Room()
    never = asyncio.Event()
    taken = asyncio.Event()

    async def stuck(msg: Message) -> None:
        taken.set()
        await never.wait()

    sub = room.subscribe("busy", stuck)
    room.dispatcher.dispatch([deliver(sub, "q", 1, request_id=5)])
    await asyncio.wait_for(taken.wait(), 1.0)
    assert sub.queued == 0 and room.requests.handling == 1
    await sub.close()
    assert room.outbox.replies == [
        (PEER_B, 5, ReplyStatus.ERROR, "NodeClosed", b"NodeClosed: the subscriber closed")]
    assert room.requests.handling == 0


# --- what else a delivery can meet ----------------------------------------------------------


async def test_a_sync_handler_result_answers_and_its_exception_is_an_error_reply() -> None:
    room = Room()

    def upper(msg: Message) -> str:
        if msg.body == "boom":
            raise ValueError("no")
        return str(msg.body).upper()

    sub = room.subscribe("upper", upper)
    room.dispatcher.dispatch([deliver(sub, "hi", 1, request_id=1),
                              deliver(sub, "boom", 2, request_id=2)])
    assert room.outbox.replies == [
        (PEER_B, 1, ReplyStatus.OK, "str", encode_body("HI")),
        (PEER_B, 2, ReplyStatus.ERROR, "ValueError", b"ValueError: no"),
    ]
    assert room.stats["handler_errors"] == 1 and room.dispatcher.delivered == 2


async def test_a_malformed_body_is_counted_and_answered_and_a_gone_subscriber_is_nobody(
        ) -> None:
    room = Room()
    got: list[object] = []
    sub = room.subscribe("x", got.append)
    room.dispatcher.dispatch([deliver(sub, "", 1, request_id=1, raw=b"\xc1")])
    assert room.stats["malformed_bodies"] == 1 and got == []
    assert room.outbox.replies[0][2:4] == (ReplyStatus.ERROR, "RemoteProtocolError")
    await sub.close()
    room.dispatcher.dispatch([deliver(sub, "late", 2, request_id=2)])
    assert room.outbox.replies[1] == (PEER_B, 2, ReplyStatus.NO_SUBSCRIBER, "", b"")
    assert room.stats["dropped"] == 1 and room.requests.handling == 0


# --- events() and wait_for ------------------------------------------------------------------


async def test_events_keep_the_newest_and_count_what_they_dropped() -> None:
    room = Room(event_queue_size=3)
    stream = room.dispatcher.stream()
    ups = [PeerUp(peer(f"{i:02x}" * 16)) for i in range(5)]
    room.dispatcher.dispatch(list(ups))
    assert stream.dropped == 2 and room.stats["events_dropped"] == 2
    assert room.stats["peer_ups"] == 5
    assert [await anext(stream) for _ in range(3)] == ups[2:]
    await stream.aclose()
    room.dispatcher.dispatch([PeerDown(peer(), "bye")])  # no longer its business
    assert stream.dropped == 2 and room.stats["peer_downs"] == 1
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_wait_for_resolves_when_the_table_has_enough_and_times_out_otherwise() -> None:
    room = Room()
    waiting = asyncio.ensure_future(room.dispatcher.wait_for("svc", 2, 5.0))
    other = asyncio.ensure_future(room.dispatcher.wait_for("other", 1, 5.0))
    await asyncio.sleep(0)
    room.table["svc"] = 1
    room.dispatcher.dispatch([SubscriberUp(Subscriber("svc", PEER_B, {}))])
    await asyncio.sleep(0)
    assert not waiting.done()
    room.table["svc"] = 2
    room.dispatcher.dispatch([SubscriberUp(Subscriber("svc", PEER_B, {}))])
    await asyncio.wait_for(waiting, 1.0)
    assert not other.done()
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    await room.dispatcher.wait_for("svc", 2, 0.0)  # known already: returns at once
    with pytest.raises(WaitTimeout, match=r"^2 of 3 subscriber\(s\) of 'svc' known after "
                                          r"0.05 s$"):
        await room.dispatcher.wait_for("svc", 3, 0.05)
    assert room.dispatcher._waiters == []  # nothing left behind, cancelled or timed out


# --- close ----------------------------------------------------------------------------------


async def test_close_counts_what_it_never_handed_out_and_ends_streams_and_waiters() -> None:
    room = Room()
    got: list[object] = []

    def slow(msg: Message) -> None:
        time.sleep(SLOW_HANDLER_S)
        got.append(msg.body)

    sub = room.subscribe("slow", slow)
    stream = room.dispatcher.stream()
    ended: list[object] = []

    async def read() -> None:
        async for event in stream:
            ended.append(event)

    reader = asyncio.ensure_future(read())
    waiter = asyncio.ensure_future(room.dispatcher.wait_for("never", 1, 10.0))
    await asyncio.sleep(0)
    events: list[ProtocolEvent] = [deliver(sub, i, seq=i) for i in range(20)]
    events.append(PeerUp(peer()))  # in the backlog too: not a message, not counted
    assert room.dispatcher.dispatch(events)
    left = len(room.dispatcher.backlog)
    assert left == 13
    await room.dispatcher.close()
    assert room.stats["dropped"] == left - 1
    assert len(got) + room.stats["dropped"] == 20  # accepted = delivered + counted losses
    assert room.dispatcher.backlog == collections.deque() and sub.closed
    await asyncio.wait_for(reader, 1.0)  # the stream ended
    assert ended == []
    with pytest.raises(NodeClosed):
        await asyncio.wait_for(waiter, 1.0)
    late = room.dispatcher.stream()
    with pytest.raises(StopAsyncIteration):
        await anext(late)

