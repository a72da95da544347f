"""Handing what arrives to user code: subscriptions and their handler queues and workers, the
``events()`` streams, ``wait_for`` waiters, and the budget that keeps slow handlers from
starving the loop."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from .checked import Checked
from .config import DISPATCH_BACKLOG_EVENTS, DISPATCH_BUDGET_S, HANDLER_HOLD_S, Limits
from .errors import NodeClosed, RemoteProtocolError, WaitTimeout
from .events import Event, PeerDown, PeerUp, SubscriberUp
from .logs import QuietLog
from .messages import Message, decode_body
from .modes import ReceiveMode, Target
from .protocol import Deliver, ProtocolEvent, ReplyArrived
from .requests import Replier, Requests, reply_now

_log = logging.getLogger("smartroute.node")

_C = TypeVar("_C")

Handler = Callable[[Message], Any]
"""A subscriber's handler: ``def f(msg)`` or ``async def f(msg)``; its return value answers a
request."""

_MODES = tuple(ReceiveMode)
"""Modes by wire value (the decoder checked the range): faster than ``ReceiveMode(n)``."""


class Owner(NamedTuple):
    """What a subscription asks of the node it belongs to."""

    unsubscribe: Callable[[Subscription], None]
    """It closed: take it out of the table."""
    update_meta: Callable[[Subscription, object], dict[str, Any]]
    """Check the meta (``UsageError`` once closed), replicate it, return it as stored."""


class Subscription:
    """A local subscriber; ``await sub.close()`` unsubscribes it everywhere."""

    def __init__(self, dispatcher: Dispatcher, sub_id: int, name: str, meta: dict[str, Any],
                 handler: Handler, concurrency: int, owner: Owner) -> None:
        self.sub_id = sub_id
        self.name = name
        self.meta = meta
        self.handler = handler
        self.is_async = _is_async_callable(handler)
        self._dispatcher = dispatcher
        self._owner = owner
        self._queue: collections.deque[Message] = collections.deque()
        self._queue_size = dispatcher.limits.handler_queue_size
        self._awaiting = 0
        """Awaitables a sync handler returned that still run (bounded like the queue)."""
        self._ready = asyncio.Event()
        self._holding = False
        """This queue is half full: the node's inbox waits for it (see ``_offer``)."""
        self._stuck = False
        """Held the inbox for ``HANDLER_HOLD_S`` without taking a message: not waited for
        again until its queue is down to a quarter."""
        self._progress_at = time.monotonic()
        """When its worker last took a message."""
        self._workers: list[asyncio.Task[None]] = []
        if self.is_async:
            self._workers = [
                asyncio.create_task(self._work(), name=f"smartroute-sub-{name}")
                for _ in range(concurrency)
            ]
        self.closed = False

    @property
    def queued(self) -> int:
        """Messages waiting for the async handler."""
        return len(self._queue)

    async def close(self) -> None:
        """Unsubscribe; messages already queued for the handler are dropped."""
        if self.closed:
            return
        self.closed = True
        self._owner.unsubscribe(self)
        if self._holding:
            self._holding = False
            self._dispatcher.hold(self, False)
        # A handler may close its own subscription: its worker must not wait for itself.
        current = asyncio.current_task()
        others = [worker for worker in self._workers if worker is not current]
        for worker in others:
            worker.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        while self._queue:
            msg = self._queue.popleft()
            if msg._replier is not None:  # a waiting requester learns at once, not at timeout
                reply_now(msg, NodeClosed("the subscriber closed"), error=True)

    async def update_meta(self, meta: Checked[dict[str, Any]]) -> None:
        """Replace this subscriber's meta, checked as at ``subscribe``: every node's table
        (``lookup``, ``subscribers``) shows the new one and reports ``SubscriberUpdated``,
        this node's at once. The same meta again changes nothing. Raises ``UsageError`` once
        closed (``NodeClosed`` once the node is)."""
        self.meta = self._owner.update_meta(self, meta)

    def _offer(self, msg: Message, remote: bool = False) -> bool:
        queue = self._queue
        # While this queue holds the inbox, what the node had already read from peers (one
        # frame at most: thousands of small messages) still comes in: room for it, up to
        # twice the size, rather than dropping it. Local sends get no such room.
        if len(queue) >= (2 * self._queue_size if self._holding and remote
                          else self._queue_size):
            return False
        queue.append(msg)
        self._ready.set()
        if len(queue) >= self._queue_size // 2 and not self._holding and not self._stuck:
            # Half full: the node reads no more from the network until the worker catches
            # up (what waits stays in ZeroMQ, unacknowledged, and senders' windows hold it
            # back), so a burst from peers waits instead of overflowing the queue.
            self._holding = True
            self._dispatcher.hold(self, True)
        return True

    def _awaitable_done(self, task: asyncio.Future[None]) -> None:
        self._awaiting -= 1

    async def _work(self) -> None:
        queue, ready, handler = self._queue, self._ready, self.handler
        finish = self._dispatcher.finish
        clock = time.monotonic
        deadline = clock() + DISPATCH_BUDGET_S
        while not self.closed:
            if not queue:
                ready.clear()
                await ready.wait()
                deadline = clock() + DISPATCH_BUDGET_S
                continue
            msg = queue.popleft()
            self._progress_at = clock()
            if len(queue) <= self._queue_size // 4:
                self._stuck = False
                if self._holding:
                    self._holding = False
                    self._dispatcher.hold(self, False)
            await finish(self, msg, handler(msg))
            if clock() > deadline:
                # A handler that never really awaits would hold the loop for its whole queue.
                await asyncio.sleep(0)
                deadline = clock() + DISPATCH_BUDGET_S

    def __repr__(self) -> str:
        return f"Subscription(name={self.name!r}, closed={self.closed})"


def _is_async_callable(handler: Handler) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _plain_class(cls: type[_C]) -> type[_C]:
    """Keep ``cls`` a plain Python class in the compiled build (mypyc compiles any class with
    another decorator as an ordinary one, its methods still compiled): an ``EventStream`` must
    be weakly referenced (``Dispatcher.streams``), which a native class cannot be."""
    return cls


@_plain_class
class EventStream:
    """``async for event in node.events()``; ends when the node closes. Bounded: when the
    consumer falls behind by ``Limits.event_queue_size`` events, the oldest are dropped and
    counted in ``dropped``."""

    def __init__(self, dispatcher: Dispatcher, size: int) -> None:
        self._dispatcher = dispatcher
        self._events: collections.deque[Event] = collections.deque(maxlen=size)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
            self._dispatcher.event_dropped()
        self._events.append(event)
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._close()
        self._dispatcher.streams.discard(self)


class Dispatcher:
    """Everything user code receives from one node: messages to its subscriptions (sync
    handlers inline, async ones through their queues), events to its streams and waiters,
    replies to its requests; within ``DISPATCH_BUDGET_S`` per loop turn."""

    def __init__(self, node_id: str, limits: Limits, requests: Requests,
                 stats: collections.Counter[str], *, count: Callable[[str], int],
                 pace: Callable[[], None]) -> None:
        self.node_id = node_id
        self.limits = limits
        self._requests = requests
        self._stats = stats
        self._count = count
        """How many subscribers of a name the table knows (for ``wait_for``)."""
        self._pace = pace
        """Called when ``holds_inbox`` may have changed."""
        self._quiet = QuietLog(_log)
        self.subs: dict[int, Subscription] = {}
        # Weak: an iterator its consumer left (break, return, an exception) goes with it.
        self.streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self.backlog: collections.deque[ProtocolEvent] = collections.deque()
        """What the protocol handed over and handlers have not had yet (budget spent)."""
        self._holding: set[Subscription] = set()
        """Async handlers whose queue is half full: the inbox reads nothing meanwhile."""
        self._handler_tasks: set[asyncio.Future[None]] = set()
        self._closed = False
        # The counters of every message are plain attributes: a Counter item costs twice more.
        self.received = 0
        self.delivered = 0

    @property
    def holds_inbox(self) -> bool:
        """The inbox should read nothing now: an async handler's queue is half full, or sync
        handlers have more than ``DISPATCH_BACKLOG_EVENTS`` messages waiting (what waits
        stays in ZeroMQ, unacknowledged: senders' windows hold it back)."""
        return bool(self._holding) or len(self.backlog) > DISPATCH_BACKLOG_EVENTS

    # --- subscriptions, streams, waiters --------------------------------------------------------

    def subscription(self, sub_id: int, name: str, meta: dict[str, Any], handler: Handler,
                     concurrency: int, owner: Owner) -> Subscription:
        sub = Subscription(self, sub_id, name, meta, handler, concurrency, owner)
        self.subs[sub_id] = sub
        return sub

    def stream(self) -> EventStream:
        stream = EventStream(self, self.limits.event_queue_size)
        if self._closed:
            stream._close()
        else:
            self.streams.add(stream)
        return stream

    async def wait_for(self, name: str, count: int, timeout: float) -> None:
        """Until the table knows ``count`` subscribers of ``name``; ``WaitTimeout`` after
        ``timeout`` seconds."""
        if self._count(name) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (name, count, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WaitTimeout(
                f"{self._count(name)} of {count} subscriber(s) of {name!r} known after "
                f"{timeout} s") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # --- what the protocol hands over -----------------------------------------------------------

    def dispatch(self, events: list[ProtocolEvent]) -> bool:
        """Hand ``events`` (after any backlog) to user code until the budget is spent; True
        when some are left for the next loop turn."""
        backlog = self.backlog
        if backlog:  # handlers were behind: the oldest first
            backlog.extend(events)
            events = list(backlog)
            backlog.clear()
        clock = time.monotonic
        deadline = clock() + DISPATCH_BUDGET_S
        done = 0
        try:
            for event in events:
                done += 1
                kind = type(event)
                if kind is Deliver:
                    self._on_deliver(event)  # type: ignore[arg-type]
                elif kind is ReplyArrived:
                    self._requests.on_reply(event)  # type: ignore[arg-type]
                else:
                    self._publish(event)  # type: ignore[arg-type]
                # The clock every 8 events: ~0.1 us a message less, and at worst 8 slow
                # handlers past the budget.
                if not done & 7 and clock() > deadline:
                    break
        finally:
            if done < len(events):
                backlog.extend(events[done:])
        return bool(backlog)

    def _publish(self, event: Event) -> None:
        for stream in self.streams:
            stream._push(event)
        kind = type(event)
        if self._waiters and kind is SubscriberUp:
            name = event.subscriber.name  # type: ignore[union-attr]
            for waiter_name, count, future in self._waiters:
                if waiter_name == name and not future.done() and self._count(name) >= count:
                    future.set_result(None)
        if kind is PeerUp:
            self._stats["peer_ups"] += 1
        elif kind is PeerDown:
            self._stats["peer_downs"] += 1
            self._requests.peer_gone(event)  # type: ignore[arg-type]

    def _on_deliver(self, event: Deliver) -> None:
        msg = event.msg
        self.received += 1
        try:
            body = decode_body(msg.body)
        except RemoteProtocolError as exc:
            self._stats["malformed_bodies"] += 1
            self._quiet.warning(f"body:{event.origin}", "%s: dropped a message from %s: %s",
                                self.node_id[:8], event.origin[:8], exc)
            if msg.request_id is not None:
                self._requests.answer(event.origin, msg.request_id, exc, error=True)
            return
        mode = _MODES[msg.mode]
        request_id = msg.request_id
        subs = self.subs
        origin = event.origin
        nobody = True
        for sub_id in event.sub_ids:
            sub = subs.get(sub_id)
            if sub is None:  # it closed since the protocol planned the delivery
                continue
            nobody = False
            replier = (self._requests.remote_replier(origin, request_id)
                       if request_id is not None else None)
            self.deliver(sub, Message(msg.seq, body, msg.type, mode, msg.target, msg.sender,
                                      origin, sub.name, replier), True)
        if nobody:
            self._stats["dropped"] += 1
            if request_id is not None:
                self._requests.answer_nobody(origin, request_id)

    def deliver_local(self, sub_ids: list[int], seq: int, body: object, type_name: str,
                      mode: ReceiveMode, target: Target, sender: str | None,
                      replier: Replier | None) -> None:
        """A send of this node reaches its own subscribers ``sub_ids``."""
        subs = self.subs
        node_id = self.node_id
        for sub_id in sub_ids:
            sub = subs.get(sub_id)
            if sub is not None:
                self.deliver(sub, Message(seq, body, type_name, mode, target, sender, node_id,
                                          sub.name, replier))

    def deliver(self, sub: Subscription, msg: Message, remote: bool = False) -> None:
        if sub.is_async:
            if sub._offer(msg, remote):
                self.delivered += 1
            else:
                self._queue_full(sub, msg)
            return
        try:
            result = sub.handler(msg)
        except Exception as exc:
            self.delivered += 1
            self._handler_failed(sub, msg, exc)
            return
        if result is not None and inspect.isawaitable(result):
            # A plain function that returns an awaitable queues work on the loop: bounded
            # like an async handler's queue, or a flood would grow tasks without limit.
            if sub._awaiting >= self.limits.handler_queue_size:
                _drop_awaitable(result)
                self._queue_full(sub, msg)
                return
            sub._awaiting += 1
            task = asyncio.ensure_future(self.finish(sub, msg, result))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_task_done)
            task.add_done_callback(sub._awaitable_done)
        elif msg._replier is not None:
            reply_now(msg, result, error=False)
        self.delivered += 1

    def _queue_full(self, sub: Subscription, msg: Message) -> None:
        self._stats["queue_full"] += 1
        self._stats["dropped"] += 1
        self._quiet.warning(f"full:{sub.name}",
                            "%s: handler queue of %r is full (%d): message dropped",
                            self.node_id[:8], sub.name, self.limits.handler_queue_size)
        if msg._replier is not None:
            reply_now(msg, RuntimeError("subscriber queue full"), error=True)

    def event_dropped(self) -> None:
        self._stats["events_dropped"] += 1
        self._quiet.warning("events-full", "%s: an events() iterator is %d events behind: the "
                            "oldest are dropped", self.node_id[:8], self.limits.event_queue_size)

    def _handler_task_done(self, task: asyncio.Future[None]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("smartroute internal task failed", exc_info=task.exception())

    async def finish(self, sub: Subscription, msg: Message, result: Awaitable[Any]) -> None:
        """Await what a handler returned, and answer the request with it."""
        try:
            value = await result
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The subscription closes: its requester learns now, as one whose request
                # still waited in the queue does (not at its timeout), and ``handling`` goes
                # down (``drain`` waits for it). When the node closes, its requests raise
                # NodeClosed and its peers see it leave.
                if msg._replier is not None and not self._closed:
                    reply_now(msg, NodeClosed("the subscriber closed"), error=True)
                raise
            self._handler_failed(sub, msg, exc)  # the handler's own CancelledError
            return
        except Exception as exc:
            self._handler_failed(sub, msg, exc)
            return
        if msg._replier is not None:
            reply_now(msg, value, error=False)

    def _handler_failed(self, sub: Subscription, msg: Message, exc: BaseException) -> None:
        self._stats["handler_errors"] += 1
        self._quiet.warning(f"handler:{sub.name}:{type(exc).__name__}",
                            "%s: handler of %r raised %s: %s", self.node_id[:8], sub.name,
                            type(exc).__name__, exc)
        if msg._replier is not None:
            reply_now(msg, exc, error=True)

    # --- pacing the inbox -----------------------------------------------------------------------

    def hold(self, sub: Subscription, holding: bool) -> None:
        """An async handler's queue is half full (or caught up again)."""
        if holding:
            sub._progress_at = time.monotonic()  # the hold's clock starts now
            self._holding.add(sub)
        else:
            self._holding.discard(sub)
        self._pace()

    def release_stuck(self) -> None:
        """Stop waiting for async handlers that took nothing for ``HANDLER_HOLD_S``."""
        if not self._holding:
            return
        now = time.monotonic()
        for sub in [sub for sub in self._holding if now - sub._progress_at >= HANDLER_HOLD_S]:
            sub._holding = False
            sub._stuck = True
            self._holding.discard(sub)
            self._quiet.warning(f"stuck:{sub.name}", "%s: the handler of %r took no message "
                                "for %.1f s with %d waiting: no longer waited for (what "
                                "overflows its queue is dropped)", self.node_id[:8], sub.name,
                                now - sub._progress_at, sub.queued)
        self._pace()

    # --- closing --------------------------------------------------------------------------------

    async def close(self) -> None:
        """The node closes: what was not handed out is counted dropped, every subscription
        closes, every waiter and stream ends."""
        self._closed = True
        undelivered = sum(1 for event in self.backlog if type(event) is Deliver)
        if undelivered:
            self._stats["dropped"] += undelivered  # taken, never handed out: the node closed
        self.backlog.clear()
        for sub in list(self.subs.values()):
            await sub.close()
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(NodeClosed("the node closed"))
        for stream in list(self.streams):
            stream._close()
        for pending in list(self._handler_tasks):
            pending.cancel()


def _drop_awaitable(result: Awaitable[Any]) -> None:
    """Never run ``result``: close a coroutine (no "never awaited" warning), cancel a future."""
    if inspect.iscoroutine(result):
        result.close()
    elif isinstance(result, asyncio.Future):
        result.cancel()
