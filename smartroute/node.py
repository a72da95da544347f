"""The asyncio ``Node``: runs the sans-I/O core on ZeroMQ sockets, timers and user handlers.

Everything the mesh decides is decided in ``protocol.Protocol``; this module feeds it inputs
(received batches, discovery hints, ticks, API calls) and carries out what it returns: dial,
send, hang up, deliver, resolve a request. Records queued during one event-loop turn leave in
one batch per link at the end of the turn.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import ipaddress
import itertools
import logging
import os
import random
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from . import wire
from .config import DISPATCH_BACKLOG_EVENTS, HANDLER_HOLD_S, Limits, Timings
from .discovery import (
    CombinedDiscovery,
    Discovery,
    LocalNode,
    MdnsDiscovery,
    StaticDiscovery,
    parse_endpoint,
)
from .discovery.dns import DnsDiscovery, advertise_from_environment, is_dns, parse_dns
from .errors import (
    LinkFull,
    NodeClosed,
    NoSubscriber,
    PeerLost,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    UsageError,
    WaitTimeout,
)
from .events import Event, PeerDown, PeerInfo, PeerUp, Subscriber, SubscriberUp
from .logs import QuietLog
from .messages import Message, decode_body, encode_body, surely_encodes, type_name_of
from .modes import ReceiveMode
from .protocol import WILDCARD_HOSTS, CoreEvent, Deliver, Protocol, ReplyArrived
from .routing import Plan, Target
from .transport import Inbox, Links
from .transport.curve import Authenticator, Curve, check_secret

if TYPE_CHECKING:  # the metrics extra is optional: only its types are named here
    from prometheus_client.registry import CollectorRegistry

    from .metrics import NodeCollector

_log = logging.getLogger("smartroute.node")

Handler = Callable[[Message], Any]
"""A subscriber's handler: ``def f(msg)`` or ``async def f(msg)``; its return value answers a
request."""

_MODES = tuple(ReceiveMode)
"""Modes by wire value (the decoder checked the range): faster than ``ReceiveMode(n)``."""
_EQ = ReceiveMode.EQ

MAX_CLUSTER_LENGTH = 128
"""Longest cluster name, in characters."""

SOCKETS_PER_PEER = 6
"""ZeroMQ sockets a node may need per ``max_peers``: two links, each a DEALER and a monitor."""

ENVELOPE_BYTES = 64 * 1024
"""Room a body leaves in a frame for its envelope (target, sender, type); a bigger envelope (a
huge target list) is still caught when the batch is sent."""

ROOM_POLL_S = 0.002
"""While ``send_to`` waits for room on a full link, it looks again this often."""

DRAIN_POLL_S = 0.01
"""While ``drain`` waits for answers and acknowledgements, it looks again this often."""

DISPATCH_BUDGET_S = 0.005
"""Longest the node hands received messages to sync handlers (and an async handler's worker
runs without a pause) before it lets the loop run the rest: timers, the inbox and sends must
not wait behind one frame of 2,000 messages to a 1 ms handler (2 s)."""


def _new_node_id() -> bytes:
    # ZeroMQ reserves routing ids that start with a zero byte.
    while True:
        node_id = os.urandom(wire.NODE_ID_BYTES)
        if node_id[0]:
            return node_id


class Subscription:
    """A local subscriber; ``await sub.close()`` unsubscribes it everywhere."""

    def __init__(self, node: Node, sub_id: int, name: str, meta: dict[str, Any],
                 handler: Handler, concurrency: int) -> None:
        self.node = node
        self.sub_id = sub_id
        self.name = name
        self.meta = meta
        self.handler = handler
        self.is_async = _is_async_callable(handler)
        self._queue: collections.deque[Message] = collections.deque()
        self._queue_size = node.limits.handler_queue_size
        self._awaiting = 0
        """Awaitables a sync handler returned that still run (bounded like the queue)."""
        self._ready = asyncio.Event()
        self._holding = False
        """This queue is half full: the node's inbox waits for it (see ``_offer``)."""
        self._stuck = False
        """Held the inbox for ``HANDLER_HOLD_S`` without taking a message: not waited for
        again until its queue is down to a quarter."""
        self.progress_at = time.monotonic()
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
        self.node._unsubscribe(self)
        if self._holding:
            self._holding = False
            self.node._hold(self, False)
        # A handler may close its own subscription: its worker must not wait for itself.
        current = asyncio.current_task()
        others = [worker for worker in self._workers if worker is not current]
        for worker in others:
            worker.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        while self._queue:
            msg = self._queue.popleft()
            if msg._replier is not None:  # a waiting requester learns at once, not at timeout
                self.node._reply_now(msg, NodeClosed("the subscriber closed"), error=True)

    async def update_meta(self, meta: dict[str, Any]) -> None:
        """Replace this subscriber's meta, checked as at ``subscribe``: every node's table
        (``lookup``, ``subscribers``) shows the new one and reports ``SubscriberUpdated``,
        this node's at once. The same meta again changes nothing. Raises ``UsageError`` once
        closed (``NodeClosed`` once the node is)."""
        node = self.node
        core = node._core()
        if self.closed:
            raise UsageError(f"subscription {self.name!r} is closed")
        meta = node._check_meta(meta)
        core.update_meta(self.sub_id, meta, node._now())
        self.meta = meta
        node._pump()

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
            self.node._hold(self, True)
        return True

    def _awaitable_done(self, task: asyncio.Future[None]) -> None:
        self._awaiting -= 1

    async def _work(self) -> None:
        queue, ready, handler, finish = self._queue, self._ready, self.handler, self.node._finish
        clock = time.monotonic
        deadline = clock() + DISPATCH_BUDGET_S
        while not self.closed:
            if not queue:
                ready.clear()
                await ready.wait()
                deadline = clock() + DISPATCH_BUDGET_S
                continue
            msg = queue.popleft()
            self.progress_at = clock()
            if len(queue) <= self._queue_size // 4:
                self._stuck = False
                if self._holding:
                    self._holding = False
                    self.node._hold(self, False)
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


class EventStream:
    """``async for event in node.events()``; ends when the node closes. Bounded: when the
    consumer falls behind by ``Limits.event_queue_size`` events, the oldest are dropped and
    counted in ``dropped``."""

    def __init__(self, node: Node, size: int) -> None:
        self._node = node
        self._events: collections.deque[Event] = collections.deque(maxlen=size)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
            self._node._event_dropped()
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
        self._node._streams.discard(self)


class _Request:
    __slots__ = ("future", "nodes", "remaining")

    def __init__(self, future: asyncio.Future[object], remaining: int) -> None:
        self.future = future
        self.remaining = remaining
        """Nodes (and local subscribers) that may still answer."""
        self.nodes: set[bytes] = set()
        """The remote nodes it went to that may still answer."""


class Node:
    """One participant of a smartroute cluster (see the package docs for the whole API)."""

    def __init__(
        self,
        cluster: str = "smartroute",
        *,
        secret: str | None = None,
        discovery: str | Sequence[str] | Discovery = "mdns",
        host: str = "0.0.0.0",
        port: int = 0,
        advertise: str | None = None,
        interfaces: Sequence[str] | None = None,
        name: str | None = None,
        limits: Limits | None = None,
        **timings: float,
    ) -> None:
        if not isinstance(cluster, str) or not 0 < len(cluster) <= MAX_CLUSTER_LENGTH:
            raise UsageError(f"cluster is a name of 1..{MAX_CLUSTER_LENGTH} characters")
        self._curve = (Curve.from_secret(check_secret(secret), cluster)
                       if secret is not None else None)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise UsageError(f"port must be 0..65535, not {port!r}")
        self.cluster = cluster
        self.timings = Timings.from_kwargs(dict(timings))
        self.limits = limits if limits is not None else Limits()
        self.host = host
        self.port = port
        if advertise is None:  # Kubernetes and compose: $SMARTROUTE_ADVERTISE, $POD_IP
            advertise = advertise_from_environment(host, os.environ)
        if advertise is not None:
            if not isinstance(advertise, str) or not advertise:
                raise UsageError("advertise is a host or a 'tcp://host:port' endpoint")
            if advertise.startswith("tcp://"):
                parse_endpoint(advertise)
            elif "/" in advertise:
                raise UsageError(f"advertise is a host or a 'tcp://host:port', not {advertise!r}")
        self.advertise = advertise
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.name = name if name is not None else f"{socket.gethostname()}:{os.getpid()}"
        self._discovery = self._make_discovery(discovery)
        # With a secret the id is bound to this node's CURVE key (see transport.curve).
        self._node_id = self._curve.node_id if self._curve is not None else _new_node_id()
        self.node_id = self._node_id.hex()
        """This node's id, as hex; new for every ``Node``."""
        self.incarnation = time.time_ns() // 1000
        """Microseconds since the epoch at construction: grows across restarts."""
        self.endpoint = ""
        """The ``tcp://ip:port`` peers dial; set by ``start``."""
        self._protocol: Protocol | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._authenticator: Authenticator | None = None
        self._inbox: Inbox | None = None
        self._links: Links | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: dict[int, Subscription] = {}
        self._requests: dict[int, _Request] = {}
        # Random start: a reply meant for an earlier process on the same endpoint cannot
        # resolve one of our requests.
        self._request_ids = itertools.count(random.getrandbits(62))
        self._handler_tasks: set[asyncio.Future[None]] = set()
        self._seq = itertools.count(1)
        # Weak: an iterator its consumer left (break, return, an exception) goes with it.
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._dispatching: collections.deque[CoreEvent] = collections.deque()
        """What the core handed over and handlers have not had yet (see ``_pump``)."""
        self._holding: set[Subscription] = set()
        """Async handlers whose queue is half full: the inbox reads nothing meanwhile."""
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self._pump_scheduled = False
        self._batch_full = False
        """The last ``_send`` filled a batch for a peer: let it leave before queueing more."""
        self._handling = 0
        """Requests from peers delivered here and not answered yet (``drain`` waits for them)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._quiet = QuietLog(_log)
        self._stats: collections.Counter[str] = collections.Counter()
        # The counters of every message are plain attributes: a Counter item costs twice more.
        self._sent = 0
        self._sent_remote_frames = 0
        self._received_count = 0
        self._delivered = 0

    def _make_discovery(self, discovery: str | Sequence[str] | Discovery) -> Discovery:
        if isinstance(discovery, str):
            if discovery == "mdns" or is_dns(discovery):
                return self._make_discovery([discovery])
            raise UsageError(f"discovery is 'mdns', a list of seed endpoints (which may include "
                             f"'mdns' and 'dns:NAME:PORT') or a Discovery, not {discovery!r}")
        if isinstance(discovery, Discovery):
            return discovery
        if isinstance(discovery, Sequence):
            names = [parse_dns(spec) for spec in discovery if is_dns(spec)]
            seeds = [seed for seed in discovery if seed != "mdns" and not is_dns(seed)]
            parts: list[Discovery] = []
            if "mdns" in discovery:
                parts.append(MdnsDiscovery(interfaces=self.interfaces))
            if names:
                parts.append(DnsDiscovery(names, interval_s=self.timings.dns_interval_s))
            if seeds or not parts:
                parts.append(StaticDiscovery(seeds, retry_s=self.timings.seed_retry_s))
            return parts[0] if len(parts) == 1 else CombinedDiscovery(parts)
        raise TypeError(f"discovery is 'mdns', a list of seed endpoints or a Discovery, "
                        f"not {type(discovery).__name__}")

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the inbox, start timers and discovery; returns when the node is reachable."""
        if self._protocol is not None:
            raise UsageError("this node was already started; make a new Node to restart")
        self._loop = asyncio.get_running_loop()
        self._context = zmq.Context()
        # The core opens at most 2 * max_peers links (peers, plus dials not yet answered), each
        # a DEALER and the two sockets of its connection monitor; plus the inbox and its
        # monitor, the authenticator and some slack.
        self._context.set(zmq.MAX_SOCKETS, SOCKETS_PER_PEER * self.limits.max_peers + 64)
        if self._curve is not None:
            # ZAP must answer before the first peer connects.
            self._authenticator = Authenticator(self._context)
            self._authenticator.start()
        self._inbox = Inbox(self._context, max_frame_bytes=self.limits.max_frame_bytes,
                            receive_queue=self.limits.receive_queue_messages,
                            curve=self._curve)
        try:
            bound = self._inbox.bind(self.host, self.port)
        except zmq.ZMQError as exc:
            await self._stop()
            raise OSError(f"cannot bind {self.host}:{self.port}: {exc}") from exc
        try:
            await self._start_bound(bound)
        except BaseException:
            await self._stop()
            raise

    async def _start_bound(self, bound: str) -> None:
        assert self._inbox is not None and self._context is not None
        bound_host, bound_port = parse_endpoint(bound)
        self.port = bound_port
        wire_endpoint, self.endpoint = self._endpoints(bound_host, bound_port)
        self._links = Links(self._context, send_queue=self.limits.send_queue_messages,
                            close_linger_s=self.timings.close_linger_s, curve=self._curve,
                            max_frame_bytes=self.limits.max_frame_bytes,
                            ping_interval_s=self.timings.ping_interval_s,
                            ping_timeout_s=self.timings.ping_timeout_s)
        self._protocol = Protocol(
            cluster=self.cluster, node_id=self._node_id, incarnation=self.incarnation,
            endpoint=wire_endpoint, name=self.name, timings=self.timings, limits=self.limits,
        )
        self._protocol.hint_self(self.endpoint)
        # The first tick: from now on a blocked loop is measured, even before the timer ran.
        self._protocol.tick(self._now())
        self._tasks = [
            asyncio.create_task(self._inbox.run(self._received), name="smartroute-rx"),
            asyncio.create_task(self._tick(), name="smartroute-timers"),
        ]
        for task in self._tasks:
            task.add_done_callback(_task_ended)
        _log.info("%s: node %r of cluster %r listening at %s", self.node_id[:8], self.name,
                  self.cluster, self.endpoint)
        if self._curve is None:
            _log.info("%s: no secret: links are neither encrypted nor authenticated",
                      self.node_id[:8])
        else:
            _log.info("%s: links are CURVE-encrypted; only nodes with the cluster secret can "
                      "join", self.node_id[:8])
        await self._discovery.start(self._hint, LocalNode(
            self.cluster, self.node_id, self.port, self.name, self._announced(bound_host)))

    def _announced(self, bound_host: str) -> tuple[str, ...]:
        """The addresses discovery should announce (empty: those of its interfaces)."""
        if self.advertise is not None:
            host = parse_endpoint(self.advertise)[0] if self.advertise.startswith("tcp://") \
                else self.advertise
            return (host,)
        if bound_host not in WILDCARD_HOSTS:
            return (bound_host,)
        return ()

    def _endpoints(self, bound_host: str, port: int) -> tuple[str, str]:
        """(what HELLO advertises, what ``node.endpoint`` shows)."""
        if self.advertise is not None:  # validated in __init__
            if self.advertise.startswith("tcp://"):
                return self.advertise, self.advertise
            host = f"[{self.advertise}]" if ":" in self.advertise else self.advertise
            return f"tcp://{host}:{port}", f"tcp://{host}:{port}"
        if bound_host in WILDCARD_HOSTS:
            # Peers replace the wildcard with the address they see us from.
            return f"tcp://*:{port}", f"tcp://{_best_local_address()}:{port}"
        host = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"tcp://{host}:{port}", f"tcp://{host}:{port}"

    async def drain(self, timeout: float = 5.0) -> None:
        """Leave the cluster gracefully, then close: peers stop choosing this node's
        subscribers for ``ANY`` (and so for ``request``) at once, the requests it is handling
        are answered and everything it sent is acknowledged (for at most ``timeout`` seconds),
        then it says BYE. Messages still reach its subscribers meanwhile. Idempotent."""
        if not isinstance(timeout, int | float) or timeout < 0:
            raise UsageError("timeout must be a number of seconds >= 0")
        core = self._protocol
        if core is None or self._closed:
            return
        core.leave(self._now())
        self._pump()
        deadline = self._now() + timeout
        while True:  # polled: settling is a state of the core, not an event
            settled = core.settled() and self._handling == 0
            if settled or self._now() >= deadline:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        if not settled:
            _log.warning("%s: drain timed out after %s s: %d request(s) unanswered, closing",
                         self.node_id[:8], timeout, self._handling)
        await self.close()

    async def close(self) -> None:
        """Say BYE to every peer, stop everything and release the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        if protocol is None:
            return
        await self._discovery.close()
        protocol.close(self._now())
        self._pump()
        await self._stop()
        _log.info("%s: node closed", self.node_id[:8])

    async def _stop(self) -> None:
        """Release everything ``start`` took, whatever state it got to."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        undelivered = sum(1 for event in self._dispatching if type(event) is Deliver)
        if undelivered:
            self._stats["dropped"] += undelivered  # taken, never handed out: the node closed
        self._dispatching.clear()
        for sub in list(self._subs.values()):
            await sub.close()
        for request in self._requests.values():
            if not request.future.done():
                request.future.set_exception(NodeClosed("the node closed"))
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(NodeClosed("the node closed"))
        for stream in list(self._streams):
            stream._close()
        for pending in list(self._handler_tasks):
            pending.cancel()
        if self._inbox is not None:
            self._inbox.close()
        if self._links is not None:
            self._links.close()
        if self._context is not None:
            # Waits up to close_linger_s for the BYEs to leave: not on the loop thread.
            linger_ms = int(self.timings.close_linger_s * 1000)
            await asyncio.get_running_loop().run_in_executor(None, self._close_context,
                                                             linger_ms)

    def _close_context(self, linger_ms: int) -> None:
        assert self._context is not None
        if self._authenticator is not None:
            self._authenticator.stop()  # joins its thread; its socket must close before destroy
        self._context.destroy(linger_ms)

    @property
    def running(self) -> bool:
        """True between ``start`` and ``close``."""
        return self._protocol is not None and not self._closed

    def _core(self) -> Protocol:
        if self._protocol is None or self._closed:
            raise NodeClosed("the node is not running (start it, or make a new one)")
        return self._protocol

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- the public API -------------------------------------------------------------------------

    async def subscribe(self, name: str, handler: Handler, meta: dict[str, Any] | None = None,
                        *, concurrency: int = 1) -> Subscription:
        """Receive messages sent to ``name``; the name and ``meta`` replicate to every peer.

        A sync handler runs inline as messages arrive; an async one runs in ``concurrency``
        worker tasks fed by a bounded queue (in arrival order when ``concurrency`` is 1).
        """
        core = self._core()
        self._check_name(name, "subscriber name")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        meta = self._check_meta(meta)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError("concurrency must be a positive integer")
        sub_id = core.subscribe(name, meta, self._now())
        sub = Subscription(self, sub_id, name, meta, handler, concurrency)
        self._subs[sub_id] = sub
        self._pump()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subs.pop(sub.sub_id, None)
        if self._protocol is not None and not self._closed:
            self._protocol.unsubscribe(sub.sub_id, self._now())
            self._pump()

    async def send_to(self, body: object, mode: ReceiveMode = ReceiveMode.EQ,
                      target: Target = None, *, sender: str | None = None) -> int:
        """Send ``body`` to the subscribers ``mode`` and ``target`` select, one hop each.

        Returns how many subscribers matched in this node's view of the table; 0 means nobody
        was online for it. Remote nodes get one frame each and fan out locally. What it
        accepted is delivered, or the loss is counted (``stats()["lost_messages"]``). When the
        window of a peer it reaches is spent (the peer is slow or frozen), waits up to
        ``send_timeout_s`` for room, then raises ``LinkFull`` having sent nothing. In a loop
        that never awaits anything else, it gives the event loop a turn whenever a batch is
        full, so heartbeats, acknowledgements and the inbox keep running.
        """
        core = self._protocol
        if core is None or self._closed:
            core = self._core()  # raises
        if not (type(target) is str and mode is _EQ
                and 0 < len(target) <= self.limits.max_name_length):  # else: check it all
            mode, target = self._check_target(mode, target)
        if sender is not None:
            self._check_name(sender, "sender")
        plan = await self._room_for(core, mode, target) if core.full_peers else None
        plan = self._send(core, body, mode, target, sender, None, plan)
        if self._batch_full:
            self._batch_full = False
            self._pump()
            await asyncio.sleep(0)  # the loop's turn: what a tight loop would starve
        return plan.matches

    def send_nowait(self, body: object, mode: ReceiveMode = ReceiveMode.EQ,
                    target: Target = None, *, sender: str | None = None) -> int:
        """``send_to`` that never waits, for code that cannot await (a sync handler); call it on
        the node's loop. When the window of a peer it reaches is spent right now, raises
        ``LinkFull`` at once, having sent nothing."""
        core = self._core()
        mode, target = self._check_target(mode, target)
        if sender is not None:
            self._check_name(sender, "sender")
        plan = None
        if core.full_peers:
            plan = core.router.plan(mode, target)
            full = core.full_peer(plan)
            if full is not None:
                self._link_full(full.hex, full.endpoint, 0.0)
        plan = self._send(core, body, mode, target, sender, None, plan)
        if self._batch_full:
            self._batch_full = False
            self._pump()
        return plan.matches

    async def _room_for(self, core: Protocol, mode: ReceiveMode, target: Target) -> Plan:
        """Wait until no peer this send reaches has a spent window and return that plan (send
        it as it is: planning again would move ANY's round robin on); ``LinkFull`` after
        ``send_timeout_s`` (then nothing is sent: the caller decides to retry or drop)."""
        deadline = self._now() + self.timings.send_timeout_s
        while True:
            plan = core.router.plan(mode, target)
            full = core.full_peer(plan)
            if full is None:
                return plan
            if self._now() >= deadline:
                self._link_full(full.hex, full.endpoint, self.timings.send_timeout_s)
            await asyncio.sleep(ROOM_POLL_S)

    def _link_full(self, node_id: str, endpoint: str, waited_s: float) -> None:
        self._stats["link_full"] += 1
        raise LinkFull(f"the link to {node_id[:8]} ({endpoint}) has been full for {waited_s} s "
                       f"(its window of unacknowledged batches is spent: the peer is slow or "
                       f"frozen): nothing was sent", node_id=node_id)

    def _send(self, core: Protocol, body: object, mode: ReceiveMode, target: Target,
              sender: str | None, request_id: int | None, plan: Plan | None = None) -> Plan:
        """Plan, queue for peers and deliver locally; sets ``_batch_full`` when a batch for a
        peer is full (the caller lets it leave)."""
        if plan is None:
            plan = core.router.plan(mode, target)
        seq = next(self._seq)
        type_name = type_name_of(body)
        if plan.remote:
            payload = encode_body(body)
            if len(payload) > self.limits.max_frame_bytes - ENVELOPE_BYTES:
                raise UsageError(f"a body of {len(payload)} bytes cannot reach a peer: frames "
                                 f"are at most Limits.max_frame_bytes = "
                                 f"{self.limits.max_frame_bytes} bytes with the envelope")
            if core.send(plan, wire.new_msg((seq, sender, mode, target, type_name, payload, None,
                                             request_id))):
                self._batch_full = True
            self._sent_remote_frames += len(plan.remote)
            if not self._pump_scheduled:
                self._schedule_pump()
        elif not surely_encodes(body):
            # Not encoded when no peer needs the bytes, but still checked: what cannot travel
            # is refused even when the subscribers are all local today.
            encode_body(body)
        self._sent += 1
        if plan.local:
            replier = self._local_replier(request_id) if request_id is not None else None
            subs = self._subs
            node_id = self.node_id
            for sub_id in plan.local:
                sub = subs.get(sub_id)
                if sub is not None:
                    self._deliver(sub, Message(seq, body, type_name, mode, target, sender,
                                               node_id, sub.name, replier))
        return plan

    async def request(self, target: Target, body: object, *, mode: ReceiveMode = ReceiveMode.ANY,
                      timeout: float = 5.0) -> object:
        """Send ``body`` and wait for the first reply (the handler's return value).

        Raises ``NoSubscriber`` when nobody matches, ``RequestTimeout`` when no reply comes
        within ``timeout`` seconds, ``PeerLost`` as soon as every node it went to has left or
        been declared dead, ``RemoteError`` when the handler raised, ``LinkFull`` as
        ``send_to`` does.
        """
        core = self._core()
        mode, target = self._check_target(mode, target)
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise UsageError("timeout must be a positive number of seconds")
        plan = await self._room_for(core, mode, target) if core.full_peers else None
        request_id = next(self._request_ids)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        request = _Request(future, 0)
        self._requests[request_id] = request
        try:
            plan = self._send(core, body, mode, target, None, request_id, plan)
            if plan.matches == 0:
                raise NoSubscriber(f"no subscriber for {target!r} ({mode.name})")
            # Each remote node answers, or says it has nobody left, or goes (PeerDown): then
            # we stop waiting early.
            request.remaining = len(plan.remote) + (1 if plan.local else 0)
            request.nodes = set(plan.remote)
            if self._batch_full:
                self._batch_full = False
                self._pump()
            try:
                async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                    return await future
            except TimeoutError:
                raise RequestTimeout(
                    f"no reply from {target!r} within {timeout} s") from None
        finally:
            self._requests.pop(request_id, None)

    def _peer_gone(self, event: PeerDown) -> None:
        """Requests waiting on a node that left or died: one fewer may answer."""
        gone = event.peer.node_id
        node = bytes.fromhex(gone)
        for request in self._requests.values():
            if node in request.nodes and not request.future.done():
                request.nodes.discard(node)
                request.remaining -= 1
                if request.remaining <= 0:
                    request.future.set_exception(PeerLost(
                        f"node {gone[:8]} ({event.peer.endpoint}) is gone ({event.reason}) "
                        f"before it answered", node_id=gone))

    def lookup(self, name: str) -> list[Subscriber]:
        """Every known subscriber of ``name`` (ours and remote), from the replicated table."""
        return self._core().table.lookup(name)

    def subscribers(self) -> list[Subscriber]:
        """Every known subscriber in the cluster."""
        return self._core().table.all()

    async def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Subscriber]:
        """Wait until at least ``count`` subscribers of ``name`` are known; returns them.

        Raises ``WaitTimeout`` (a ``TimeoutError``) if that does not happen within ``timeout``.
        """
        core = self._core()
        self._check_name(name, "name")
        if core.table.count(name) >= count:
            return core.table.lookup(name)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (name, count, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WaitTimeout(
                f"{core.table.count(name)} of {count} subscriber(s) of {name!r} known after "
                f"{timeout} s") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return core.table.lookup(name)

    @property
    def peers(self) -> list[PeerInfo]:
        """Peers we have a HELLO from and have not declared dead."""
        if self._protocol is None:
            return []
        return [peer.info() for peer in self._protocol.membership.peers.values()]

    def events(self) -> EventStream:
        """An async iterator of ``PeerUp``, ``PeerDown``, ``SubscriberUp``, ``SubscriberDown``
        from now on; it ends when the node closes."""
        stream = EventStream(self, self.limits.event_queue_size)
        if self._closed:
            stream._close()
        else:
            self._streams.add(stream)
        return stream

    @property
    def losses(self) -> dict[str, int]:
        """Messages (and replies) lost per peer node id (hex): sent, never acknowledged, and
        the peer gone for good; their sum is ``stats()["lost_messages"]``."""
        return dict(self._protocol.losses) if self._protocol is not None else {}

    def stats(self) -> dict[str, int]:
        """Counters since start (messages sent, received, delivered, dropped, malformed...)."""
        stats = dict.fromkeys(
            ("sent", "sent_remote_frames", "received", "delivered", "dropped",
             "handler_errors", "queue_full", "link_full", "events_dropped"), 0)
        stats.update(self._stats)
        stats["sent"] += self._sent
        stats["sent_remote_frames"] += self._sent_remote_frames
        stats["received"] += self._received_count
        stats["delivered"] += self._delivered
        if self._protocol is not None:
            counters = self._protocol.counters
            stats.update({name: getattr(counters, name) for name in counters.__slots__})
            stats["dropped"] += counters.undeliverable_messages
            stats["peers"] = len(self._protocol.membership.peers)
            stats["subscribers"] = self._protocol.table.size()
        if self._inbox is not None:
            # Messages that were not [routing id, batch], and handling that failed inside.
            stats["malformed_frames"] = stats.get("malformed_frames", 0) + self._inbox.dropped
            stats["internal_errors"] = stats.get("internal_errors", 0) + self._inbox.errors
            stats["impostor_frames"] = self._inbox.impostors
            stats["handshake_failures"] = self._inbox.handshake_failures
        if self._links is not None:
            stats["dropped_batches"] = self._links.dropped_batches
            stats["handshake_failures"] = (stats.get("handshake_failures", 0)
                                           + self._links.handshake_failures)
            stats["dropped"] += self._links.dropped_batches
        return stats

    def metrics(self, registry: CollectorRegistry | None = None) -> NodeCollector:
        """Register a Prometheus collector of ``stats()`` and ``losses`` on ``registry``
        (default: prometheus_client's) and return it (``registry.unregister()`` takes it);
        ``UsageError`` without the ``smartroute[metrics]`` extra. Names: smartroute.metrics."""
        # Imported only when asked for: prometheus-client is an optional extra.
        from .metrics import NodeCollector  # noqa: PLC0415
        return NodeCollector(self.stats, lambda: self.losses, lambda: self._loop,
                             self._rtts).register(registry)

    def _rtts(self) -> dict[str, float]:
        return {peer.node_id: peer.rtt_s for peer in self.peers if peer.rtt_s is not None}

    # --- argument checks ------------------------------------------------------------------------

    def _check_name(self, name: object, what: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a str, not {type(name).__name__}")
        if not name:
            raise UsageError(f"{what} must not be empty")
        if len(name) > self.limits.max_name_length:
            raise UsageError(f"{what} is longer than {self.limits.max_name_length} characters")

    def _check_meta(self, meta: object) -> dict[str, Any]:
        if meta is None:
            return {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
            raise TypeError("meta must be a dict with str keys")
        try:
            size = len(msgpack.packb(meta))
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"meta must hold plain msgpack values: {exc}") from exc
        if size > self.limits.max_meta_bytes:
            raise UsageError(f"meta encodes to {size} bytes, over {self.limits.max_meta_bytes}")
        return dict(meta)

    def _check_target(self, mode: object, target: object) -> tuple[ReceiveMode, Target]:
        if (type(target) is str and type(mode) is ReceiveMode and mode is not ReceiveMode.REGEX
                and 0 < len(target) <= self.limits.max_name_length):
            return mode, target  # the common case: one valid name
        if not isinstance(mode, ReceiveMode):
            if isinstance(mode, int) and not isinstance(mode, bool):
                try:
                    mode = ReceiveMode(mode)
                except ValueError:
                    raise UsageError(f"unknown receive mode {mode!r}") from None
            elif isinstance(mode, str) and mode.upper() in ReceiveMode.__members__:
                mode = ReceiveMode[mode.upper()]
            else:
                raise UsageError(f"unknown receive mode {mode!r}; use ReceiveMode.EQ, NOT_EQ, "
                                 "ALL, REGEX or ANY")
        assert isinstance(mode, ReceiveMode)
        if mode is ReceiveMode.ALL:
            return mode, None
        if target is None:
            raise UsageError(f"{mode.name} needs a target")
        if isinstance(target, str):
            names = [target]
        elif isinstance(target, list | tuple):
            names = list(target)
            if len(names) > self.limits.max_target_names:
                raise UsageError(f"more than {self.limits.max_target_names} names in target")
            if not names and mode is not ReceiveMode.NOT_EQ:
                raise UsageError(f"{mode.name} needs at least one name in target")
        else:
            raise TypeError(f"target must be a str or a list of str, not {type(target).__name__}")
        if mode is ReceiveMode.REGEX:
            for pattern in names:
                if not isinstance(pattern, str):
                    raise TypeError(f"a REGEX pattern is a str, not {type(pattern).__name__}")
                self._core().router.pattern(pattern)  # checks length and syntax
        else:
            for item in names:
                self._check_name(item, "target")
        return mode, target if isinstance(target, str) else names

    # --- carrying out what the core decided -----------------------------------------------------

    def _hint(self, endpoint: str) -> None:
        if self._protocol is not None and not self._closed:
            self._protocol.hint(endpoint, self._now())
            self._pump()

    async def _tick(self) -> None:
        interval = self.timings.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            core = self._protocol
            assert core is not None
            try:
                if self._links is not None:
                    self._links.flush()
                # Connections first: what they did while this loop was blocked (a handshake
                # done, a connection back) must count before the core judges anyone.
                self._check_connections()
                core.tick(self._now())
                self._pump()
                if self._holding:
                    self._release_stuck()
            except Exception:
                # A timer must never stop: heartbeats and death detection live here.
                self._stats["internal_errors"] += 1
                _log.exception("%s: internal error in the timers (node keeps running)",
                               self.node_id[:8])

    def _check_connections(self) -> None:
        if self._inbox is not None:
            self._inbox.check_handshakes()
        if self._links is not None and self._protocol is not None:
            changes = self._links.check()
            if changes:
                now = self._now()
                for link, what in changes:
                    self._protocol.link_changed(link, what, now)
                self._pump()

    def _received(self, routing_id: bytes, frame: zmq.Frame) -> None:
        core = self._protocol
        assert core is not None
        core.receive(routing_id, frame.buffer, self._now(), lambda: _peer_address(frame))
        self._pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Carry out the core's output: dials, one batch per link, hang-ups, then events; what
        the handlers of those events sent (replies first of all) leaves in the same turn."""
        self._pump_scheduled = False
        core = self._protocol
        links = self._links
        if core is None or links is None:
            return
        self._transmit(core, links)
        events = core.events_received()
        pending = self._dispatching
        if pending:  # handlers were behind (see below): the oldest first
            pending.extend(events)
            events = list(pending)
            pending.clear()
        elif not events:
            return
        self._pump_scheduled = True  # what the handlers send leaves below, not in another turn
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
                    self._on_reply(event)  # type: ignore[arg-type]
                else:
                    self._publish(event)  # type: ignore[arg-type]
                # The clock every 8 events: ~0.1 us a message less, and at worst 8 slow
                # handlers past the budget.
                if not done & 7 and clock() > deadline:
                    break
        finally:
            self._pump_scheduled = False
            if done < len(events):
                pending.extend(events[done:])
        if pending:
            # Budget spent (slow sync handlers): the rest after the timers and sends.
            self._schedule_pump()
        self._pace_inbox()
        if core.has_output():
            self._transmit(core, links)

    def _hold(self, sub: Subscription, holding: bool) -> None:
        """An async handler's queue is half full (or caught up again)."""
        if holding:
            sub.progress_at = time.monotonic()  # the hold's clock starts now
            self._holding.add(sub)
        else:
            self._holding.discard(sub)
        self._pace_inbox()

    def _release_stuck(self) -> None:
        """Stop waiting for async handlers that took nothing for ``HANDLER_HOLD_S``."""
        now = time.monotonic()
        for sub in [sub for sub in self._holding if now - sub.progress_at >= HANDLER_HOLD_S]:
            sub._holding = False
            sub._stuck = True
            self._holding.discard(sub)
            self._quiet.warning(f"stuck:{sub.name}", "%s: the handler of %r took no message "
                                "for %.1f s with %d waiting: no longer waited for (what "
                                "overflows its queue is dropped)", self.node_id[:8], sub.name,
                                now - sub.progress_at, sub.queued)
        self._pace_inbox()

    def _pace_inbox(self) -> None:
        """The inbox reads while handlers keep up: it waits while a sync handler has more
        than ``DISPATCH_BACKLOG_EVENTS`` messages waiting, or an async handler's queue is
        half full (what waits stays in ZeroMQ, unacknowledged: senders' windows hold it)."""
        inbox = self._inbox
        if inbox is None:
            return
        hold = bool(self._holding) or len(self._dispatching) > DISPATCH_BACKLOG_EVENTS
        if hold and not inbox.paused:
            inbox.paused = True
        elif not hold and inbox.paused:
            inbox.resume()

    def _transmit(self, core: Protocol, links: Links) -> None:
        out = core.data_to_send()
        for dial in out.dials:
            if not links.dial(dial.link, dial.endpoint, dial.routing_id):
                core.dial_failed(dial.link, self._now())
                self._schedule_pump()  # the hang-up and any PeerDown go out next
        for link, batches in out.sends.items():
            for batch in batches:
                links.send(link, batch)
        for link in out.hangups:
            links.hang_up(link)

    def _publish(self, event: Event) -> None:
        for stream in self._streams:
            stream._push(event)
        if self._waiters and type(event) is SubscriberUp:
            name = event.subscriber.name
            table = self._core().table
            for waiter_name, count, future in self._waiters:
                if waiter_name == name and not future.done() and table.count(name) >= count:
                    future.set_result(None)
        if type(event) is PeerUp:
            self._stats["peer_ups"] += 1
        elif type(event) is PeerDown:
            self._stats["peer_downs"] += 1
            if self._requests:
                self._peer_gone(event)

    def _on_deliver(self, event: Deliver) -> None:
        msg = event.msg
        self._received_count += 1
        try:
            body = decode_body(msg.body)
        except RemoteProtocolError as exc:
            self._stats["malformed_bodies"] += 1
            self._quiet.warning(f"body:{event.origin}", "%s: dropped a message from %s: %s",
                                self.node_id[:8], event.origin[:8], exc)
            if msg.request_id is not None:
                self._send_reply(event.origin, msg.request_id, exc, error=True)
            return
        mode = _MODES[msg.mode]
        request_id = msg.request_id
        subs = self._subs
        origin = event.origin
        nobody = True
        for sub_id in event.sub_ids:
            sub = subs.get(sub_id)
            if sub is None:  # it closed since the core planned the delivery
                continue
            nobody = False
            replier = (self._remote_replier(origin, request_id)
                       if request_id is not None else None)
            self._deliver(sub, Message(msg.seq, body, msg.type, mode, msg.target, msg.sender,
                                       origin, sub.name, replier), True)
        if nobody:
            self._stats["dropped"] += 1
            if request_id is not None:
                self._send_reply(origin, request_id, None, error=False, nobody=True)

    def _deliver(self, sub: Subscription, msg: Message, remote: bool = False) -> None:
        if sub.is_async:
            if sub._offer(msg, remote):
                self._delivered += 1
            else:
                self._queue_full(sub, msg)
            return
        try:
            result = sub.handler(msg)
        except Exception as exc:
            self._delivered += 1
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
            task = asyncio.ensure_future(self._finish(sub, msg, result))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_task_done)
            task.add_done_callback(sub._awaitable_done)
        elif msg._replier is not None:
            self._reply_now(msg, result, error=False)
        self._delivered += 1

    def _queue_full(self, sub: Subscription, msg: Message) -> None:
        self._stats["queue_full"] += 1
        self._stats["dropped"] += 1
        self._quiet.warning(f"full:{sub.name}",
                            "%s: handler queue of %r is full (%d): message dropped",
                            self.node_id[:8], sub.name, self.limits.handler_queue_size)
        if msg._replier is not None:
            self._reply_now(msg, RuntimeError("subscriber queue full"), error=True)

    def _event_dropped(self) -> None:
        self._stats["events_dropped"] += 1
        self._quiet.warning("events-full", "%s: an events() iterator is %d events behind: the "
                            "oldest are dropped", self.node_id[:8], self.limits.event_queue_size)

    def _handler_task_done(self, task: asyncio.Future[None]) -> None:
        self._handler_tasks.discard(task)
        _discard_result(task)

    async def _finish(self, sub: Subscription, msg: Message, result: Awaitable[Any]) -> None:
        try:
            value = await result
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled (the subscription or node closes)
            self._handler_failed(sub, msg, exc)  # the handler's own CancelledError
            return
        except Exception as exc:
            self._handler_failed(sub, msg, exc)
            return
        if msg._replier is not None:
            self._reply_now(msg, value, error=False)

    def _handler_failed(self, sub: Subscription, msg: Message, exc: BaseException) -> None:
        self._stats["handler_errors"] += 1
        self._quiet.warning(f"handler:{sub.name}:{type(exc).__name__}",
                            "%s: handler of %r raised %s: %s", self.node_id[:8], sub.name,
                            type(exc).__name__, exc)
        if msg._replier is not None:
            self._reply_now(msg, exc, error=True)

    def _reply_now(self, msg: Message, value: object, *, error: bool) -> None:
        replier = msg._replier
        msg._replier = None
        assert replier is not None
        replier(_ErrorReply(value) if error else value)

    def _local_replier(self, request_id: int) -> Callable[[object], None]:
        def reply(value: object) -> None:
            request = self._requests.get(request_id)
            if request is None or request.future.done():
                return
            if isinstance(value, _ErrorReply):
                exc = value.error
                request.future.set_exception(RemoteError(
                    _describe(exc), node_id=self.node_id, error_type=_error_type(exc)))
            else:
                request.future.set_result(value)
        return reply

    def _remote_replier(self, origin: str, request_id: int) -> Callable[[object], None]:
        self._handling += 1

        def reply(value: object) -> None:
            self._handling -= 1  # called once: _reply_now drops the replier
            if isinstance(value, _ErrorReply):
                self._send_reply(origin, request_id, value.error, error=True)
            else:
                self._send_reply(origin, request_id, value, error=False)
        return reply

    def _send_reply(self, origin: str, request_id: int, value: object, *, error: bool,
                    nobody: bool = False) -> None:
        core = self._protocol
        if core is None or self._closed:
            return
        if nobody:
            reply = wire.Reply(request_id, wire.ReplyStatus.NO_SUBSCRIBER, "", b"")
        elif error:
            reply = wire.Reply(request_id, wire.ReplyStatus.ERROR, _error_type(value),
                               _describe(value).encode())
        else:
            try:
                reply = wire.Reply(request_id, wire.ReplyStatus.OK, type_name_of(value),
                                   encode_body(value))
            except TypeError as exc:
                reply = wire.Reply(request_id, wire.ReplyStatus.ERROR, "TypeError",
                                   f"reply cannot be encoded: {exc}".encode())
        if core.reply(origin, reply, self._now()):
            self._schedule_pump()

    def _on_reply(self, event: ReplyArrived) -> None:
        reply = event.reply
        request = self._requests.get(reply.request_id)
        if request is None or request.future.done():
            return
        if reply.status == wire.ReplyStatus.OK:
            try:
                request.future.set_result(decode_body(reply.body))
            except RemoteProtocolError as exc:
                request.future.set_exception(RemoteError(
                    f"undecodable reply: {exc}", node_id=event.origin))
        elif reply.status == wire.ReplyStatus.ERROR:
            request.future.set_exception(RemoteError(
                reply.body.decode(errors="replace"), node_id=event.origin,
                error_type=reply.type))
        else:
            request.remaining -= 1
            request.nodes.discard(bytes.fromhex(event.origin))
            if request.remaining <= 0:
                request.future.set_exception(NoSubscriber(
                    "the subscriber left before the request reached it"))


class _ErrorReply:
    __slots__ = ("error",)

    def __init__(self, error: object) -> None:
        self.error = error


def _error_type(exc: object) -> str:
    return type(exc).__name__


def _describe(exc: object) -> str:
    return f"{type(exc).__name__}: {exc}"


def _task_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("smartroute task %s died: the node no longer works", task.get_name(),
                   exc_info=task.exception())


def _drop_awaitable(result: Awaitable[Any]) -> None:
    """Never run ``result``: close a coroutine (no "never awaited" warning), cancel a future."""
    if inspect.iscoroutine(result):
        result.close()
    elif isinstance(result, asyncio.Future):
        result.cancel()


def _discard_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("smartroute internal task failed", exc_info=task.exception())


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None


def _best_local_address() -> str:
    """A non-loopback address of this host for display, or 127.0.0.1; sends no packet."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() on UDP only selects a route; nothing is sent (TEST-NET-1, RFC 5737).
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    return address if not ipaddress.ip_address(address).is_unspecified else "127.0.0.1"
