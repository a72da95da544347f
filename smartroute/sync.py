"""A blocking facade over ``smartroute.Node`` for code that has no event loop.

Each ``smartroute.sync.Node`` runs an asyncio ``Node`` on a private event-loop thread. Called
from any other thread, its methods block until that loop has done the work. Handlers run on
the loop thread (keep them short, or hand the work to threads of your own), and a call made
there must never wait for the loop, which is busy running the handler. So, from a handler of
the same node:

- these work, at once: ``send_to`` (it does not wait for room: a link that is full right now
  raises ``LinkFull`` at once, having sent nothing, as ``send_nowait`` does), ``send_nowait``,
  ``subscribe``, ``Subscription.update_meta``, ``Subscription.close`` of a plain (not async)
  handler, ``lookup``, ``subscribers``, ``peers``, ``stats``, ``events()`` (to hand to another
  thread) and every property;
- these raise ``UsageError``, because each would wait on the thread that must do the work:
  ``request`` (return a value from the handler instead), ``wait_for`` (use ``lookup``),
  ``start``, ``close``, ``Subscription.close`` of an async handler (its tasks run on that
  thread), and iterating an ``events()`` stream.

From other threads nothing waits forever: a call in flight when the node closes raises
``NodeClosed``, and so does every call after ``close()`` (``close()`` itself is idempotent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .config import Limits, Timings
from .errors import NodeClosed, UsageError
from .events import Event, PeerInfo, Subscriber
from .modes import ReceiveMode, Target
from .node import EventStream as AsyncEventStream
from .node import Handler
from .node import Node as AsyncNode
from .node import Subscription as AsyncSubscription

if TYPE_CHECKING:  # the metrics extra is optional: only its types are named here
    from prometheus_client.registry import CollectorRegistry

    from .metrics import NodeCollector
    from .protocol import Protocol

_T = TypeVar("_T")

__all__ = ["EventStream", "Node", "Subscription"]


def discard_unstarted(coro: Coroutine[Any, Any, Any]) -> None:
    """Close ``coro`` if it never ran, so Python does not warn that it was never awaited. A
    coroutine of the compiled build (README, "Building") is not a Python coroutine: it has no
    state to ask and gives no such warning, so it is left alone."""
    if (inspect.iscoroutine(coro)
            and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED):
        coro.close()


class Subscription:
    """A local subscriber of a blocking node; ``close()`` unsubscribes it."""

    def __init__(self, node: Node, sub: AsyncSubscription) -> None:
        self.node = node
        self._sub = sub
        self.name = sub.name
        self.handler = sub.handler

    @property
    def meta(self) -> dict[str, Any]:
        """Its meta, as last set by ``subscribe`` or ``update_meta``."""
        return self._sub.meta

    @property
    def closed(self) -> bool:
        """True once closed (by ``close()`` or because the node closed)."""
        return self._sub.closed

    @property
    def queued(self) -> int:
        """Messages waiting for the async handler."""
        return self._sub.queued

    def update_meta(self, meta: dict[str, Any]) -> None:
        """Replace its meta on every node (``SubscriberUpdated``); works in a handler too."""
        coro = self._sub.update_meta(meta)
        # update_meta() awaits nothing: from a handler it runs to its end right here.
        self.node._inline(coro) if self.node._on_loop() else self.node._run(coro)

    def close(self) -> None:
        """Unsubscribe everywhere; from a handler of the same node only for a plain handler."""
        node = self.node
        if self._sub.closed:
            return  # also once the node closed: it closed every subscription
        if not node._on_loop():
            node._run(self._sub.close())
        elif self._sub.is_async:
            node._refuse_on_loop("closing a subscription with an async handler",
                                 "stop that handler's tasks",
                                 "close it from another thread")
        else:
            node._inline(self._sub.close())  # no worker task to wait for: it never suspends

    def __repr__(self) -> str:
        return f"Subscription(name={self.name!r}, closed={self.closed})"


class EventStream:
    """``for event in node.events()``: blocks for the next event; ends when the node closes.

    Iterate it on a thread other than the node's own. ``close()`` it, leave its ``with`` block
    or drop it to stop receiving; the node then forgets it.
    """

    def __init__(self, node: Node, stream: AsyncEventStream | None) -> None:
        self._node = node
        self._stream = stream
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """Events dropped because this stream fell behind (``Limits.event_queue_size``)."""
        stream = self._stream
        return stream.dropped if stream is not None else self._dropped

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        stream = self._stream
        if stream is None:
            raise StopIteration
        node = self._node
        node._refuse_on_loop("iterating events()", "deliver the events",
                             "iterate it on another thread")
        try:
            event = node._run(stream.__anext__())
        except (StopAsyncIteration, NodeClosed):
            self.close()
            raise StopIteration from None
        return event

    def close(self) -> None:
        """Stop receiving events; idempotent, from any thread."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._dropped = stream.dropped
        node = self._node
        if node._on_loop():
            node._inline(stream.aclose())
            return
        with contextlib.suppress(NodeClosed):  # then the node forgot every stream already
            node._run(stream.aclose())

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # Garbage collection may run on any thread, the loop's included, and at any point:
        # hand the release to the loop and never wait for it.
        stream = getattr(self, "_stream", None)
        self._stream = None
        if stream is not None:
            node = self._node
            node._soon(lambda: node._inline(stream.aclose()))


class Node:
    """The blocking twin of ``smartroute.Node``: same options, same methods, no ``await``."""

    def __init__(self, cluster: str = "smartroute", **options: Any) -> None:
        self._node = AsyncNode(cluster, **options)
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        """Guards ``_stopped`` and ``_pending``: no call is handed to a loop that stopped."""
        self._stopped = False
        self._pending: dict[concurrent.futures.Future[Any], Coroutine[Any, Any, Any]] = {}
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"smartroute-{self._node.node_id[:8]}")
        self._thread.start()

    # running things on the loop

    def _on_loop(self) -> bool:
        # Not by ident: a thread started after the loop's ended may get the same one.
        return threading.current_thread() is self._thread

    def _refuse_on_loop(self, call: str, must: str, instead: str) -> None:
        """``UsageError`` when called on the loop thread, where waiting would deadlock."""
        if self._on_loop():
            raise UsageError(f"{call} from a handler of the same sync node would wait on the "
                             f"thread that must {must}: {instead}")

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for its result; never on the loop thread."""
        if self._on_loop():  # the callers check first, with a message that says what to do
            coro.close()
            raise UsageError("smartroute.sync: a blocking call on the node's own thread")
        with self._lock:
            if self._stopped:
                coro.close()
                raise NodeClosed("this sync node is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending[future] = coro
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (KeyboardInterrupt): the loop stops the work too
            raise
        finally:
            with self._lock:
                self._pending.pop(future, None)

    def _call(self, function: Callable[[], _T]) -> _T:
        """``function()`` on the loop thread: inline there, else on the loop while we wait."""
        if self._on_loop():
            return function()
        return self._run(_as_coroutine(function))

    def _inline(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run, on the loop thread, a coroutine that never suspends (it awaits nothing that
        is not done yet) to its end, right here."""
        try:
            coro.send(None)
        except StopIteration as done:
            result: _T = done.value
            return result
        coro.close()
        raise RuntimeError("smartroute.sync: a coroutine run inline on the node's thread "
                           "suspended (a smartroute bug)")

    def _soon(self, function: Callable[[], object]) -> None:
        """Run ``function`` on the loop later, without waiting; nothing if the loop is gone."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: all was released
            self._loop.call_soon_threadsafe(function)

    # lifecycle

    def start(self) -> None:
        """Bind and start discovery; returns when the node is reachable."""
        self._refuse_on_loop("start()", "start it", "start nodes from another thread")
        self._run(self._node.start())

    def drain(self, timeout: float = 5.0) -> None:
        """See ``smartroute.Node.drain``; then the node and its thread stop, as ``close``."""
        self.close(drain_s=timeout)

    def close(self, *, drain_s: float | None = None) -> None:
        """Say BYE, stop the node and its thread (after ``drain`` for ``drain_s`` seconds
        when given). Idempotent; never from a handler."""
        self._refuse_on_loop("close()", "stop", "close it from another thread (for "
                             "instance, set a threading.Event that thread waits on)")
        with self._closing:  # a second close() waits for the first, then returns
            if self._stopped:
                return
            try:
                self._run(self._node.close() if drain_s is None
                          else self._node.drain(drain_s))
            finally:
                with self._lock:
                    self._stopped = True
                    pending = list(self._pending.items())
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()
                # Calls whose work was handed to the loop too late to run would wait forever.
                for future, coro in pending:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):  # done
                        future.set_exception(NodeClosed("the node closed"))
                    discard_unstarted(coro)

    def __enter__(self) -> Node:
        try:
            self.start()
        except BaseException:
            self.close()  # `with` calls no __exit__ when __enter__ raises: stop the thread here
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # the API, as on smartroute.Node

    @property
    def running(self) -> bool:
        """True between ``start`` and ``close``."""
        return self._node.running

    @property
    def cluster(self) -> str:
        """The cluster name."""
        return self._node.cluster

    @property
    def name(self) -> str:
        """This node's display name (``host:pid`` unless given)."""
        return self._node.name

    @property
    def node_id(self) -> str:
        """This node's id, as hex."""
        return self._node.node_id

    @property
    def incarnation(self) -> int:
        """Microseconds since the epoch at construction: grows across restarts."""
        return self._node.incarnation

    @property
    def endpoint(self) -> str:
        """The ``tcp://ip:port`` peers dial; set by ``start``."""
        return self._node.endpoint

    @property
    def host(self) -> str:
        """The address the inbox binds."""
        return self._node.host

    @property
    def port(self) -> int:
        """The inbox's port: the one asked for, or the one bound once started."""
        return self._node.port

    @property
    def advertise(self) -> str | None:
        """The host or endpoint peers are told to dial, if given."""
        return self._node.advertise

    @property
    def interfaces(self) -> list[str] | None:
        """The mDNS interfaces, if given."""
        return self._node.interfaces

    @property
    def timings(self) -> Timings:
        """The node's timings."""
        return self._node.timings

    @property
    def limits(self) -> Limits:
        """The node's limits."""
        return self._node.limits

    @property
    def protocol(self) -> Protocol | None:
        """The sans-I/O protocol the node drives, for looking inside; it lives on the node's
        thread: read it from a handler, not from another thread."""
        return self._node.protocol

    @property
    def peers(self) -> list[PeerInfo]:
        """Peers alive or suspect."""
        return self._call(lambda: self._node.peers)

    def subscribe(self, name: str, handler: Handler, meta: dict[str, Any] | None = None,
                  *, concurrency: int = 1) -> Subscription:
        """Receive messages sent to ``name``; ``handler`` runs on the node's thread."""
        coro = self._node.subscribe(name, handler, meta, concurrency=concurrency)
        # subscribe() awaits nothing: from a handler it runs to its end right here.
        sub = self._inline(coro) if self._on_loop() else self._run(coro)
        return Subscription(self, sub)

    def send_to(self, body: object, mode: ReceiveMode = ReceiveMode.EQ, target: Target = None,
                *, sender: str | None = None) -> int:
        """See ``smartroute.Node.send_to``; from a handler, it is ``send_nowait``."""
        if self._on_loop():
            # Waiting for room would hold the loop that makes the room.
            return self._node.send_nowait(body, mode, target, sender=sender)
        return self._run(self._node.send_to(body, mode, target, sender=sender))

    def send_nowait(self, body: object, mode: ReceiveMode = ReceiveMode.EQ,
                    target: Target = None, *, sender: str | None = None) -> int:
        """See ``smartroute.Node.send_nowait``: ``LinkFull`` at once instead of waiting."""
        return self._call(lambda: self._node.send_nowait(body, mode, target, sender=sender))

    def request(self, target: Target, body: object, *, mode: ReceiveMode = ReceiveMode.ANY,
                timeout: float = 5.0) -> object:
        """See ``smartroute.Node.request``; never from a handler of this node."""
        self._refuse_on_loop("request()", "deliver the reply",
                             "return a value from the handler instead, or call request() "
                             "from another thread")
        return self._run(self._node.request(target, body, mode=mode, timeout=timeout))

    def lookup(self, name: str) -> list[Subscriber]:
        """See ``smartroute.Node.lookup``."""
        return self._call(lambda: self._node.lookup(name))

    def subscribers(self) -> list[Subscriber]:
        """See ``smartroute.Node.subscribers``."""
        return self._call(self._node.subscribers)

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Subscriber]:
        """See ``smartroute.Node.wait_for``; never from a handler of this node."""
        self._refuse_on_loop("wait_for()", "receive the subscribers it waits for",
                             "check lookup() instead, or call wait_for() from another thread")
        return self._run(self._node.wait_for(name, count, timeout))

    def events(self) -> EventStream:
        """A blocking iterator of ``PeerUp``, ``PeerDown``, ``SubscriberUp``,
        ``SubscriberUpdated``, ``SubscriberDown`` from now on; it ends when the node closes."""
        try:
            stream = self._call(self._node.events)
        except NodeClosed:
            stream = None  # like the async node's: a closed node's stream is already over
        return EventStream(self, stream)

    def stats(self) -> dict[str, int]:
        """See ``smartroute.Node.stats``."""
        return self._call(self._node.stats)

    @property
    def losses(self) -> dict[str, int]:
        """See ``smartroute.Node.losses``."""
        return self._call(lambda: self._node.losses)

    def metrics(self, registry: CollectorRegistry | None = None) -> NodeCollector:
        """See ``smartroute.Node.metrics``; scrapes read the counters on the node's thread."""
        return self._node.metrics(registry)

    def __repr__(self) -> str:
        return f"smartroute.sync.Node(node_id={self.node_id[:8]!r}, running={self.running})"


async def _as_coroutine(function: Callable[[], _T]) -> _T:
    return function()
