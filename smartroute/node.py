"""The asyncio ``Node``: drives the sans-I/O protocol with ZeroMQ sockets, timers and user code.

Everything the mesh decides is decided in ``protocol.Protocol``; the node feeds it inputs
(received batches, discovery hints, ticks, API calls) and carries out what it returns through
its rooms: ``transport.driver`` moves batches, ``dispatch`` hands messages and events to user
code, ``requests`` matches replies to requests. Records queued during one event-loop turn
leave in one batch per link at the end of the turn.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .checked import Checked
from .config import DRAIN_POLL_S, ROOM_POLL_S, SUBSCRIBES_PER_TURN, Limits, Timings
from .discovery import Discovery, LocalNode, make_discovery
from .discovery.dns import advertise_from_environment
from .dispatch import Dispatcher, EventStream, Handler, Owner, Subscription
from .endpoints import announced_hosts, check_advertise, node_endpoints, parse_endpoint
from .errors import LinkFull, NodeClosed, NoSubscriber, RequestTimeout, UsageError
from .events import PeerInfo, Subscriber
from .messages import check_meta, encode_body, surely_encodes, type_name_of
from .modes import ReceiveMode, Target, check_name, check_target
from .protocol import Plan, Protocol, ReplyStatus, new_node_id
from .requests import Requests
from .transport.curve import Curve, check_secret
from .transport.driver import Driver, Hands

if TYPE_CHECKING:  # the metrics extra is optional: only its types are named here
    from prometheus_client.registry import CollectorRegistry

    from .metrics import NodeCollector

__all__ = ["EventStream", "Handler", "Node", "Subscription"]

_log = logging.getLogger("smartroute.node")

_EQ = ReceiveMode.EQ
_ANY = ReceiveMode.ANY

MAX_CLUSTER_LENGTH = 128
"""Longest cluster name, in characters."""


class Node:
    """One participant of a smartroute cluster (see the package docs for the whole API).

    The arguments its methods check themselves are typed ``Checked[T]`` (see checked.py):
    ``T`` for type checkers, and no check of mypyc's before ours in the compiled build, so a
    misuse gets the documented error on either build.
    """

    def __init__(
        self,
        cluster: Checked[str] = "smartroute",
        *,
        secret: Checked[str | None] = None,
        discovery: Checked[str | Sequence[str] | Discovery] = "mdns",
        host: str = "0.0.0.0",
        port: Checked[int] = 0,
        advertise: Checked[str | None] = None,
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
        self.advertise = check_advertise(advertise) if advertise is not None else None
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.name = name if name is not None else f"{socket.gethostname()}:{os.getpid()}"
        self._discovery = make_discovery(discovery, self.interfaces, self.timings)
        # With a secret the id is bound to this node's CURVE key (see transport.curve).
        self._node_id = self._curve.node_id if self._curve is not None else new_node_id()
        self.node_id = self._node_id.hex()
        """This node's id, as hex; new for every ``Node``."""
        self.incarnation = time.time_ns() // 1000
        """Microseconds since the epoch at construction: grows across restarts."""
        self.endpoint = ""
        """The ``tcp://ip:port`` peers dial; set by ``start``."""
        self.protocol: Protocol | None = None
        """The sans-I/O protocol this node drives: the mesh's every decision (None until
        ``start``). For looking inside; calling its inputs yourself bypasses the node."""
        self._stats: collections.Counter[str] = collections.Counter()
        """Counters of the node's own rooms (the protocol and the transport keep theirs)."""
        self._driver = Driver(self.limits, self.timings, self._curve, self._stats,
                              self.node_id[:8])
        """The sockets, the timers and the pump."""
        self._requests = Requests(self.node_id, self._send_reply, self._driver.schedule_pump)
        """Requests we wait on, and the repliers of those we handle."""
        self._dispatcher = dispatcher = Dispatcher(
            self.node_id, self.limits, self._requests, self._stats, count=self._count,
            pace=self._driver.pace_inbox)
        """Subscriptions and their handlers, event streams and waiters."""
        self._driver.hand_to(Hands(dispatcher.dispatch, lambda: bool(dispatcher.backlog),
                                   lambda: dispatcher.holds_inbox, dispatcher.release_stuck))
        self._owner = Owner(self._unsubscribe, self._update_meta)
        """What our subscriptions ask of us."""
        self._seq = itertools.count(1)
        """Sequence numbers of our messages (``Message.id``)."""
        self._table_changes = 0
        """Subscribes so far (``subscribe`` gives the loop a turn every
        ``SUBSCRIBES_PER_TURN``)."""
        self._batch_full = False
        """The last send filled a batch for a peer: let it leave before queueing more."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # The counters of every send are plain attributes: a Counter item costs twice more.
        self._sent = 0
        self._sent_remote_frames = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the inbox, start timers and discovery; returns when the node is reachable."""
        if self.protocol is not None or self._loop is not None:
            raise UsageError("this node was already started; make a new Node to restart")
        self._loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise

    async def _start(self) -> None:
        bound_host, bound_port = parse_endpoint(self._driver.open(self.host, self.port))
        self.port = bound_port
        advertised, self.endpoint = node_endpoints(self.advertise, bound_host, bound_port)
        self.protocol = protocol = Protocol(
            cluster=self.cluster, node_id=self._node_id, incarnation=self.incarnation,
            endpoint=advertised, name=self.name, timings=self.timings, limits=self.limits,
        )
        protocol.hint_self(self.endpoint)
        self._driver.start(protocol)
        _log.info("%s: node %r of cluster %r listening at %s", self.node_id[:8], self.name,
                  self.cluster, self.endpoint)
        if self._curve is None:
            _log.info("%s: no secret: links are neither encrypted nor authenticated",
                      self.node_id[:8])
        else:
            _log.info("%s: links are CURVE-encrypted; only nodes with the cluster secret can "
                      "join", self.node_id[:8])
        await self._discovery.start(self._hint, LocalNode(
            self.cluster, self.node_id, self.port, self.name,
            announced_hosts(self.advertise, bound_host)))

    async def drain(self, timeout: Checked[float] = 5.0) -> None:
        """Leave the cluster gracefully, then close: peers stop choosing this node's
        subscribers for ``ANY`` (and so for ``request``) at once, the requests it is handling
        are answered and everything it sent is acknowledged (for at most ``timeout`` seconds),
        then it says BYE. Messages still reach its subscribers meanwhile. Idempotent."""
        if not isinstance(timeout, int | float) or timeout < 0:
            raise UsageError("timeout must be a number of seconds >= 0")
        protocol = self.protocol
        if protocol is None or self._closed:
            return
        protocol.leave(self._now())
        self._driver.pump()
        deadline = self._now() + timeout
        while True:  # polled: settling is a state of the protocol, not an event
            settled = protocol.settled() and self._requests.handling == 0
            if settled or self._now() >= deadline:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        if not settled:
            _log.warning("%s: drain timed out after %s s: %d request(s) unanswered, closing",
                         self.node_id[:8], timeout, self._requests.handling)
        await self.close()

    async def close(self) -> None:
        """Say BYE to every peer, stop everything and release the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        protocol = self.protocol
        if protocol is None:
            return
        await self._discovery.close()
        protocol.close(self._now())
        self._driver.pump()
        await self._stop()
        _log.info("%s: node closed", self.node_id[:8])

    async def _stop(self) -> None:
        """Release everything ``start`` took, whatever state it got to."""
        self._closed = True
        await self._driver.stop()
        await self._dispatcher.close()
        self._requests.fail_all(NodeClosed("the node closed"))
        await self._driver.close()

    @property
    def running(self) -> bool:
        """True between ``start`` and ``close``."""
        return self.protocol is not None and not self._closed

    def _running(self) -> Protocol:
        """The protocol of a running node; ``NodeClosed`` otherwise."""
        if self.protocol is None or self._closed:
            raise NodeClosed("the node is not running (start it, or make a new one)")
        return self.protocol

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- the public API -------------------------------------------------------------------------

    async def subscribe(self, name: Checked[str], handler: Checked[Handler],
                        meta: Checked[dict[str, Any] | None] = None,
                        *, concurrency: Checked[int] = 1) -> Subscription:
        """Receive messages sent to ``name``; the name and ``meta`` replicate to every peer.

        A sync handler runs inline as messages arrive; an async one runs in ``concurrency``
        worker tasks fed by a bounded queue (in arrival order when ``concurrency`` is 1).
        """
        protocol = self._running()
        name = check_name(name, "subscriber name", self.limits.max_name_length)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        checked_meta = check_meta(meta, self.limits.max_meta_bytes)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError("concurrency must be a positive integer")
        sub_id = protocol.subscribe(name, checked_meta, self._now())
        sub = self._dispatcher.subscription(sub_id, name, checked_meta, handler, concurrency,
                                            self._owner)
        # The delta leaves with the others of this loop turn: a loop of subscribes makes a few
        # big batches, not one tiny batch each (100,000 of those overflowed the link and set
        # off a storm of resends). A loop that never awaits anything else gets a turn now and
        # then, as send_to gives it.
        self._driver.schedule_pump()
        self._table_changes += 1
        if self._table_changes % SUBSCRIBES_PER_TURN == 0:
            self._driver.pump()
            await asyncio.sleep(0)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._dispatcher.subs.pop(sub.sub_id, None)
        if self.protocol is not None and not self._closed:
            self.protocol.unsubscribe(sub.sub_id, self._now())
            self._driver.schedule_pump()  # with the other deltas of this turn

    def _update_meta(self, sub: Subscription, meta: object) -> dict[str, Any]:
        protocol = self._running()
        if sub.closed:
            raise UsageError(f"subscription {sub.name!r} is closed")
        checked = check_meta(meta, self.limits.max_meta_bytes)
        protocol.update_meta(sub.sub_id, checked, self._now())
        self._driver.schedule_pump()  # with the other deltas of this turn
        return checked

    async def send_to(self, body: object, mode: Checked[ReceiveMode] = ReceiveMode.EQ,
                      target: Checked[Target] = None, *,
                      sender: Checked[str | None] = None) -> int:
        """Send ``body`` to the subscribers ``mode`` and ``target`` select, one hop each.

        Returns how many subscribers matched in this node's view of the table; 0 means nobody
        was online for it. Remote nodes get one frame each and fan out locally. What it
        accepted is delivered, or the loss is counted (``stats()["lost_messages"]``). When the
        window of a peer it reaches is spent (the peer is slow or frozen), waits up to
        ``send_timeout_s`` for room, then raises ``LinkFull`` having sent nothing. In a loop
        that never awaits anything else, it gives the event loop a turn whenever a batch is
        full, so heartbeats, acknowledgements and the inbox keep running.
        """
        protocol = self.protocol
        if protocol is None or self._closed:
            protocol = self._running()  # raises
        checked_mode, checked_target = self._check_target(mode, target)
        sender_name = (check_name(sender, "sender", self.limits.max_name_length)
                       if sender is not None else None)
        plan = (await self._room_for(protocol, checked_mode, checked_target)
                if protocol.full_peers else None)
        plan = self._send(protocol, body, checked_mode, checked_target, sender_name, None, plan)
        if self._batch_full:
            self._batch_full = False
            self._driver.pump()
            await asyncio.sleep(0)  # the loop's turn: what a tight loop would starve
        return plan.matches

    def send_nowait(self, body: object, mode: Checked[ReceiveMode] = ReceiveMode.EQ,
                    target: Checked[Target] = None, *,
                    sender: Checked[str | None] = None) -> int:
        """``send_to`` that never waits, for code that cannot await (a sync handler); call it on
        the node's loop. When the window of a peer it reaches is spent right now, raises
        ``LinkFull`` at once, having sent nothing."""
        protocol = self._running()
        checked_mode, checked_target = self._check_target(mode, target)
        sender_name = (check_name(sender, "sender", self.limits.max_name_length)
                       if sender is not None else None)
        plan = None
        if protocol.full_peers:
            plan = protocol.plan(checked_mode, checked_target)
            blocked = protocol.blocked_by(plan)
            if blocked is not None:
                self._link_full(blocked, 0.0)
        plan = self._send(protocol, body, checked_mode, checked_target, sender_name, None, plan)
        if self._batch_full:
            self._batch_full = False
            self._driver.pump()
        return plan.matches

    async def request(self, target: Checked[Target], body: object, *,
                      mode: Checked[ReceiveMode] = ReceiveMode.ANY,
                      timeout: Checked[float] = 5.0) -> object:
        """Send ``body`` and wait for the first reply (the handler's return value).

        Raises ``NoSubscriber`` when nobody matches, ``RequestTimeout`` when no reply comes
        within ``timeout`` seconds, ``PeerLost`` as soon as every node it went to has left or
        been declared dead, ``RemoteError`` when the handler raised, ``LinkFull`` as
        ``send_to`` does.
        """
        protocol = self._running()
        checked_mode, checked_target = self._check_target(mode, target)
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise UsageError("timeout must be a positive number of seconds")
        plan = (await self._room_for(protocol, checked_mode, checked_target)
                if protocol.full_peers else None)
        assert self._loop is not None
        request_id, pending = self._requests.open(self._loop, timeout)
        try:
            plan = self._send(protocol, body, checked_mode, checked_target, None, request_id,
                              plan, at_once=True)
            if plan.matches == 0:
                raise NoSubscriber(f"no subscriber for {checked_target!r} ({checked_mode.name})")
            # Each remote node answers, or says it has nobody left, or goes (PeerDown): then
            # we stop waiting early.
            pending.remaining = len(plan.remote) + (1 if plan.local else 0)
            pending.nodes = set(plan.remote)
            if self._batch_full:
                self._batch_full = False
                self._driver.pump()
            try:
                return await pending.future  # failed with TimeoutError at the deadline
            except TimeoutError:
                raise RequestTimeout(
                    f"no reply from {target!r} within {timeout} s") from None
        finally:
            self._requests.close(request_id)

    def lookup(self, name: str) -> list[Subscriber]:
        """Every known subscriber of ``name`` (ours and remote), from the replicated table."""
        return self._running().lookup(name)

    def subscribers(self) -> list[Subscriber]:
        """Every known subscriber in the cluster."""
        return self._running().subscribers()

    async def wait_for(self, name: Checked[str], count: int = 1,
                       timeout: float = 5.0) -> list[Subscriber]:
        """Wait until at least ``count`` subscribers of ``name`` are known; returns them.

        Raises ``WaitTimeout`` (a ``TimeoutError``) if that does not happen within ``timeout``.
        """
        protocol = self._running()
        name = check_name(name, "name", self.limits.max_name_length)
        await self._dispatcher.wait_for(name, count, timeout)
        return protocol.lookup(name)

    @property
    def peers(self) -> list[PeerInfo]:
        """Peers we have a HELLO from and have not declared dead."""
        return self.protocol.peer_infos() if self.protocol is not None else []

    def events(self) -> EventStream:
        """An async iterator of ``PeerUp``, ``PeerDown``, ``SubscriberUp``,
        ``SubscriberUpdated``, ``SubscriberDown`` from now on; it ends when the node closes."""
        return self._dispatcher.stream()

    @property
    def losses(self) -> dict[str, int]:
        """Messages (and replies) lost per peer node id (hex): sent, never acknowledged, and
        the peer gone for good; their sum is ``stats()["lost_messages"]``."""
        return dict(self.protocol.losses) if self.protocol is not None else {}

    def stats(self) -> dict[str, int]:
        """Counters since start (messages sent, received, delivered, dropped, malformed...)."""
        stats = dict.fromkeys(
            ("sent", "sent_remote_frames", "received", "delivered", "dropped",
             "handler_errors", "queue_full", "link_full", "events_dropped"), 0)
        parts: list[dict[str, int]] = [dict(self._stats), self._driver.stats()]
        if self.protocol is not None:
            parts.append(self.protocol.stats())
        for part in parts:  # a name two rooms count (malformed_frames...) is their sum
            for name, value in part.items():
                stats[name] = stats.get(name, 0) + value
        stats["sent"] += self._sent
        stats["sent_remote_frames"] += self._sent_remote_frames
        stats["received"] += self._dispatcher.received
        stats["delivered"] += self._dispatcher.delivered
        # Dropped: by a full handler queue, undeliverable here, or a link's overflow.
        stats["dropped"] += stats.get("undeliverable_messages", 0) + stats.get(
            "dropped_batches", 0)
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

    # --- sending --------------------------------------------------------------------------------

    def _check_target(self, mode: object, target: object) -> tuple[ReceiveMode, Target]:
        if (type(target) is str and (mode is _EQ or mode is _ANY)
                and 0 < len(target) <= self.limits.max_name_length):
            # The common send, one name in EQ or ANY, here in compiled code: the full check is
            # a call into pure Python (~0.4 us).
            return (_EQ if mode is _EQ else _ANY), target
        return check_target(mode, target, max_name_length=self.limits.max_name_length,
                            max_names=self.limits.max_target_names,
                            check_pattern=self._running().check_pattern)

    async def _room_for(self, protocol: Protocol, mode: ReceiveMode, target: Target) -> Plan:
        """Wait until no peer this send reaches has a spent window and return that plan (send
        it as it is: planning again would move ANY's round robin on); ``LinkFull`` after
        ``send_timeout_s`` (then nothing is sent: the caller decides to retry or drop)."""
        deadline = self._now() + self.timings.send_timeout_s
        while True:
            plan = protocol.plan(mode, target)
            blocked = protocol.blocked_by(plan)
            if blocked is None:
                return plan
            if self._now() >= deadline:
                self._link_full(blocked, self.timings.send_timeout_s)
            await asyncio.sleep(ROOM_POLL_S)

    def _link_full(self, peer: PeerInfo, waited_s: float) -> None:
        self._stats["link_full"] += 1
        raise LinkFull(f"the link to {peer.node_id[:8]} ({peer.endpoint}) has been full for "
                       f"{waited_s} s (its window of unacknowledged batches is spent: the peer "
                       f"is slow or frozen): nothing was sent", node_id=peer.node_id)

    def _send(self, protocol: Protocol, body: object, mode: ReceiveMode, target: Target,
              sender: str | None, request_id: int | None, plan: Plan | None = None, *,
              at_once: bool = False) -> Plan:
        """Plan, queue for peers and deliver locally; sets ``_batch_full`` when a batch for a
        peer is full (the caller lets it leave). With ``at_once``, the first send of a loop
        turn leaves now, the others of the turn with the pump it schedules."""
        if plan is None:
            plan = protocol.plan(mode, target)
        seq = next(self._seq)
        type_name = type_name_of(body)
        if plan.remote:
            if protocol.send_to(plan, seq, sender, mode, target, type_name, encode_body(body),
                                request_id):
                self._batch_full = True
            self._sent_remote_frames += len(plan.remote)
            driver = self._driver
            if not (driver.pump_scheduled or driver.pumping):
                driver.schedule_pump()
                if at_once:
                    # A request waits for its reply: its batch need not wait for the loop's
                    # next turn (a round trip's critical path is one turn shorter). The
                    # scheduled pump still gathers what the rest of this turn sends, so a
                    # gather of thousands of requests leaves in full batches, not one each.
                    driver.send_now()
        elif not surely_encodes(body):
            # Not encoded when no peer needs the bytes, but still checked: what cannot travel
            # is refused even when the subscribers are all local today.
            encode_body(body)
        self._sent += 1
        if plan.local:
            replier = (self._requests.local_replier(request_id) if request_id is not None
                       else None)
            self._dispatcher.deliver_local(plan.local, seq, body, type_name, mode, target,
                                           sender, replier)
        return plan

    def _send_reply(self, origin: str, request_id: int, status: ReplyStatus, type_name: str,
                    body: bytes) -> bool:
        protocol = self.protocol
        if protocol is None or self._closed:
            return False
        return protocol.reply(origin, request_id, status, type_name, body, self._now())

    def _count(self, name: str) -> int:
        return self.protocol.count(name) if self.protocol is not None else 0

    def _hint(self, endpoint: str) -> None:
        if self.protocol is not None and not self._closed:
            self.protocol.hint(endpoint, self._now())
            self._driver.pump()
