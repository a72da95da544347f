"""The sans-I/O mesh protocol: one object that turns received bytes, API calls and ``now`` into
records to send, links to open or close, and events to act on.

It owns the table (``registry``), the peers (``membership``) and the planner (``routing``) and
makes them agree. Nothing here touches a socket, a clock or a loop: ``node.py`` feeds inputs
(``receive``, ``hint``, ``tick``, ``subscribe``, ``send``...) and then drains the outputs with
``data_to_send()`` and ``events_received()``, the python-websockets way.

Links are one-way: we send on a link we dialled (a ZeroMQ DEALER) and receive everything on
our one ROUTER. A link's ZeroMQ routing id is our node id plus the link number, so the receiver
knows the sender of every batch and two links of one node never collide.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import random
import struct
from collections.abc import Callable
from typing import NamedTuple

from . import wire
from .config import MAX_BATCH_BYTES, REFUSALS_PER_S, Limits, Timings
from .endpoints import resolve_endpoint
from .errors import RemoteProtocolError, UsageError
from .events import Event, PeerDown, PeerInfo, PeerUp, Subscriber
from .logs import QuietLog
from .membership import HelloVerdict, Membership, Peer
from .modes import ReceiveMode, Target
from .registry import DeltaOutcome, Table, TableEvent
from .routing import Plan, Router
from .streams import Inflow, Outbox, Verdict
from .wire import Meta, ReplyStatus

__all__ = [
    "Deliver",
    "Dial",
    "Output",
    "Plan",
    "Protocol",
    "ProtocolEvent",
    "ReplyArrived",
    "ReplyStatus",
    "new_node_id",
]

_log = logging.getLogger("smartroute.protocol")

_LINK_NUMBER = struct.Struct(">I")
_MODES = tuple(ReceiveMode)
"""Modes by wire value."""
_SEQ = int(wire.Kind.SEQ)
_MSG = int(wire.Kind.MSG)

RTT_SMOOTHING = 0.2
"""Weight of a new round-trip sample in a peer's smoothed ``rtt_s`` (about the last five)."""

ENVELOPE_BYTES = 64 * 1024
"""Room a body leaves in a frame for its envelope (target, sender, type); a bigger envelope (a
huge target list) is still caught when the batch is sent."""


def new_node_id() -> bytes:
    """A random node id (when no CURVE key decides it)."""
    # ZeroMQ reserves routing ids that start with a zero byte.
    while True:
        node_id = os.urandom(wire.NODE_ID_BYTES)
        if node_id[0]:
            return node_id


class Dial(NamedTuple):
    """Open link ``link`` to ``endpoint``, identifying ourselves with ``routing_id``."""

    link: int
    endpoint: str
    routing_id: bytes


class Output(NamedTuple):
    """What to do on the network, in this order: dial, send, hang up."""

    dials: list[Dial]
    sends: dict[int, list[bytes]]
    hangups: list[int]


class Deliver:
    """A peer's message reaches these local subscribers. (A plain class, not a NamedTuple:
    one per message, and the compiled build makes and reads it natively.)"""

    __slots__ = ("msg", "origin", "sub_ids")

    def __init__(self, sub_ids: list[int], origin: str, msg: wire.Msg) -> None:
        self.sub_ids = sub_ids
        self.origin = origin
        """Hex id of the sending node."""
        self.msg = msg

    def __repr__(self) -> str:
        return f"Deliver(sub_ids={self.sub_ids!r}, origin={self.origin!r}, msg={self.msg!r})"


class ReplyArrived(NamedTuple):
    """A peer answered one of our requests."""

    origin: str
    reply: wire.Reply


ProtocolEvent = Event | Deliver | ReplyArrived
AddressGetter = Callable[[], str | None]


@dataclasses.dataclass(slots=True)
class Link:
    """A link we dialled; ``peer`` is set once the node behind it said HELLO."""

    id: int
    endpoint: str
    opened_at: float
    hello_at: float
    """When we last sent a HELLO on it (0 for a link that never carries one)."""
    peer: bytes | None = None
    one_shot: bool = False
    """Opened only to send a REFUSE; never matched to a peer."""
    connected: bool = False
    """Its connection's handshake is done and it has not closed since (the transport says)."""


@dataclasses.dataclass(slots=True)
class Redial:
    """A dead peer's address, dialled again until it answers."""

    endpoint: str
    dead_at: float
    next_at: float
    attempts: int = 0
    """Dials in the backoff phase (after ``redial_dead_for_s``)."""


@dataclasses.dataclass(slots=True)
class Counters:
    """What the protocol counted; ``Node.stats()`` reports these."""

    frames_received: int = 0
    records_received: int = 0
    malformed_frames: int = 0
    malformed_records: int = 0
    unknown_sender_records: int = 0
    undeliverable_messages: int = 0
    refused_peers: int = 0
    snapshot_requests: int = 0
    lost_messages: int = 0
    """Messages (and replies) sent to a peer that went away before acknowledging them."""
    retransmitted_batches: int = 0
    duplicate_batches: int = 0
    """Copies of batches already taken (a resend crossing the original): dropped."""
    gap_batches: int = 0
    """Batches that came after a gap (lost with a broken connection): dropped, asked again."""
    stale_batches: int = 0
    """Late batches of a stream its sender had replaced: dropped (their records are either
    taken already or counted lost by their sender)."""
    misdirected_batches: int = 0
    """Batches sent to another incarnation on our endpoint (a predecessor's): dropped,
    never acknowledged (their sender counts them lost)."""
    resend_requests: int = 0
    restarted_streams: int = 0
    """Streams started anew because their receiver asked for batches it had acknowledged."""


def _queue(queues: dict[int, list[bytes]], link_id: int, record: bytes) -> None:
    """Append ``record`` to the list of ``link_id`` in ``queues``."""
    queue = queues.get(link_id)
    if queue is None:
        queues[link_id] = [record]
    else:
        queue.append(record)


class Protocol:
    """One node's side of the mesh protocol, without I/O."""

    def __init__(self, *, cluster: str, node_id: bytes, incarnation: int, endpoint: str,
                 name: str, timings: Timings, limits: Limits) -> None:
        if len(node_id) != wire.NODE_ID_BYTES or not node_id[0]:
            # Peers would drop its every HELLO: ZeroMQ reserves ids with a leading zero byte.
            raise UsageError(f"a node id is {wire.NODE_ID_BYTES} bytes, the first not zero "
                             f"(new_node_id() makes one), not {node_id.hex()!r}")
        self.cluster = cluster
        self.node_id = node_id
        self.hex = node_id.hex()
        self.incarnation = incarnation
        self.endpoint = endpoint
        self.name = name
        self.timings = timings
        self.limits = limits
        self.table = Table(node_id, incarnation)
        self.router = Router(self.table, regex_cache_size=limits.regex_cache_size,
                             max_pattern_length=limits.max_pattern_length)
        self.plan: Callable[[ReceiveMode, Target], Plan] = self.router.plan
        """``plan(mode, target)``: who a send reaches, in our view of the table (each call moves
        ``ANY``'s round robin on: send the plan you got). The router's own method: a send
        plans once, and a wrapper would cost a call each time."""
        self.membership = Membership(suspect_after_s=timings.suspect_after_s,
                                     dead_after_s=timings.dead_after_s,
                                     unreachable_after_s=timings.unreachable_after_s,
                                     connect_timeout_s=timings.connect_timeout_s)
        self.decoder = wire.Decoder(
            max_frame_bytes=limits.max_frame_bytes, max_table_entries=limits.max_table_entries,
            max_peers=limits.max_peers, max_target_names=limits.max_target_names,
            max_name_length=max(limits.max_name_length, 1024),
            max_meta_bytes=limits.max_meta_bytes,
        )
        self.counters = Counters()
        self.links: dict[int, Link] = {}
        self._next_link = 1
        self._self_endpoints = {endpoint}
        self._refused: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._refusal_window = (0.0, 0)
        self._aliases: dict[str, bytes] = {}
        """Other endpoints (a seed's host name, a service address) that reach a peer."""
        self._redials: collections.OrderedDict[bytes, Redial] = collections.OrderedDict()
        """Peers declared dead, by node id: their address is dialled again until they answer."""
        self._dials: list[Dial] = []
        self._sends: dict[int, list[bytes]] = {}
        self._hangups: list[int] = []
        # Sequenced streams (see streams.py): ours to each peer, and each peer's to us. Both
        # outlive a peer declared dead, so that the same incarnation resumes where it stopped.
        self.outboxes: dict[bytes, Outbox] = {}
        self.inflows: collections.OrderedDict[bytes, Inflow] = collections.OrderedDict()
        self.losses: dict[str, int] = {}
        """Messages lost (sent, never acknowledged) per peer node id (hex), bounded."""
        self._stream_ids = itertools.count(random.getrandbits(31) + 1)
        self._pack = wire.new_packer()
        """Ours, for the MSG of every ``send_to``: no thread-local lookup per message (a
        protocol is driven from one thread at a time, as a Packer must be)."""
        self._riders: dict[int, list[bytes]] = {}
        """Heartbeats and ACKs this turn, by link: they ride in whatever batch the link's
        other records make (sequenced or not), or alone."""
        self._control: set[int] = set()
        """Links with HELLO, REFUSE or BYE records this turn (they travel unsequenced)."""
        self._resends: dict[int, list[bytes]] = {}
        """Batches framed already, by link, sent ahead of the turn's others: resends, and
        records sent alone (resend requests)."""
        self._ack_due: set[bytes] = set()
        """Peers we took batches from since our last ACK to them (the timer acknowledges)."""
        self._ack_now: set[bytes] = set()
        """Of those, the ones with a quarter of their window waiting: acknowledged at once."""
        self.full_peers: set[bytes] = set()
        """Peers whose window is spent: ``send_to`` waits for them (an attribute, not a
        method: ``send_to`` tests it for every message)."""
        self._ack_every = max(1, limits.send_window_batches // 4)
        self._events: list[ProtocolEvent] = []
        self._quiet = QuietLog(_log)
        self._last_exchange = 0.0
        self._last_tick = float("inf")
        """When ``tick`` last ran (none yet: no stall can be measured)."""
        self._stall_max_s = 0.0
        """The longest the driving loop went without a tick beyond its interval."""
        self._closed = False

    # --- outputs --------------------------------------------------------------------------------

    def data_to_send(self, lone_acks: bool = True) -> Output:
        """Drain the network actions accumulated since the last call: every link's records
        framed into batches (sequenced where they must not be lost), resends first. Without
        ``lone_acks``, an ACK due at once leaves only in a batch its link sends anyway, and
        ``acks_waiting`` says that others wait (for the caller's next call, soon)."""
        if self._ack_now:
            self._queue_acks(force=False, lone=lone_acks)
        sends, self._sends = self._sends, {}
        framed: dict[int, list[bytes]] = self._resends
        self._resends = {}
        riders = self._riders
        if riders:
            self._riders = {}
            for link_id, records in riders.items():
                sent = sends.get(link_id)
                if sent is not None:
                    records.extend(sent)
                    sends[link_id] = records
                else:
                    framed.setdefault(link_id, []).extend(
                        wire.encode_batches(records, MAX_BATCH_BYTES))
        for link_id, records in sends.items():
            batches = self._frame(link_id, records)
            queued = framed.get(link_id)
            if queued is None:
                framed[link_id] = batches
            else:
                queued.extend(batches)
        if self._control:
            self._control.clear()
        out = Output(self._dials, framed, self._hangups)
        self._dials, self._hangups = [], []
        return out

    def _frame(self, link_id: int, records: list[bytes]) -> list[bytes]:
        """Batches of at most ``MAX_BATCH_BYTES``; on a peer's link, every run of records
        that are not control records is sequenced."""
        link = self.links.get(link_id)
        peer = self.membership.peers.get(link.peer) if link and link.peer else None
        if peer is None or peer.link != link_id:
            return wire.encode_batches(records, MAX_BATCH_BYTES)
        outbox = self._outbox(peer)
        if link_id in self._control:
            runs: list[tuple[bool, list[bytes]]] = []
            for record in records:
                control = wire.kind_of(record) in wire.CONTROL_KINDS
                if runs and runs[-1][0] == control:
                    runs[-1][1].append(record)
                else:
                    runs.append((control, [record]))
        else:
            runs = [(False, records)]
        batches: list[bytes] = []
        for control, run in runs:
            if control:
                batches.extend(wire.encode_batches(run, MAX_BATCH_BYTES))
            else:
                for chunk in wire.chunk_records(run, MAX_BATCH_BYTES):
                    batches.append(outbox.number(chunk))
        if outbox.full:
            self.full_peers.add(peer.node_id)
        return batches

    def _outbox(self, peer: Peer) -> Outbox:
        outbox = self.outboxes.get(peer.node_id)
        if outbox is None or outbox.incarnation != peer.incarnation:
            if outbox is not None:
                self._count_lost(peer.node_id, outbox)
            outbox = self.outboxes[peer.node_id] = Outbox(
                next(self._stream_ids) & 0xFFFFFFFF or 1, peer.incarnation,
                self.limits.send_window_batches, self.limits.send_window_bytes)
        return outbox

    def _count_lost(self, node_id: bytes, outbox: Outbox) -> None:
        lost = outbox.unacked_messages()
        outbox.unacked.clear()
        outbox.unacked_bytes = 0
        self.full_peers.discard(node_id)
        if not lost:
            return
        self.counters.lost_messages += lost
        key = node_id.hex()
        if key in self.losses or len(self.losses) < 4 * self.limits.max_peers:
            self.losses[key] = self.losses.get(key, 0) + lost
        self._quiet.warning(f"lost:{key}", "%s: %d message(s) to %s were never acknowledged: "
                            "counted lost (the peer is gone)", self.hex[:8], lost, key[:8])

    def blocked_by(self, plan: Plan) -> PeerInfo | None:
        """A peer ``plan`` reaches whose window is spent (the send must wait), if any."""
        if not self.full_peers:
            return None
        peers = self.membership.peers
        for node in plan.remote:
            if node in self.full_peers:
                peer = peers.get(node)
                if peer is not None:
                    return peer.info()
        return None

    def _queue_acks(self, *, force: bool, lone: bool = True) -> None:
        """ACK what we took: from peers with a quarter of their window waiting, or (``force``:
        the timer, every ``tick_interval_s``, and close) from every peer with anything waiting.
        Not with every batch: a request/reply exchange would carry an ACK record each way,
        measured ~10% of its cost; the window has room for the timer's pace. Without ``lone``,
        only to peers whose link has records this turn (the others stay due)."""
        due = self._ack_due if force else self._ack_now
        peers = self.membership.peers
        waiting: list[bytes] = []
        for node_id in due:
            peer = peers.get(node_id)
            inflow = self.inflows.get(node_id)
            if peer is not None and inflow is not None and inflow.taken > inflow.acked:
                if not lone and peer.link not in self._sends:
                    waiting.append(node_id)
                    continue
                self._ride(peer.link, wire.encode_ack(*inflow.ack()))
        if force:
            self._ack_due.clear()
        self._ack_now.clear()
        self._ack_now.update(waiting)

    def acks_waiting(self) -> bool:
        """ACKs are due at once that ``data_to_send(lone_acks=False)`` kept back."""
        return bool(self._ack_now)

    def events_received(self) -> list[ProtocolEvent]:
        """Drain the events accumulated since the last call."""
        events, self._events = self._events, []
        return events

    def has_output(self) -> bool:
        """True when ``data_to_send`` would return something."""
        return bool(self._sends or self._riders or self._resends or self._dials
                    or self._hangups)

    # --- inputs: discovery and time -------------------------------------------------------------

    def hint(self, endpoint: str, now: float) -> None:
        """Discovery says a node may listen at ``endpoint``: dial it unless it is known."""
        if self._closed or endpoint in self._self_endpoints:
            return
        if any(link.endpoint == endpoint for link in self.links.values()):
            return
        if self.membership.by_endpoint(endpoint) is not None:
            return
        if self._aliases.get(endpoint) in self.membership.peers:
            return
        if self._refused_recently(endpoint, now):
            return
        if len(self.links) >= 2 * self.limits.max_peers:
            self._quiet.warning("links-full", "%s: too many links, not dialling %s",
                                self.hex[:8], endpoint)
            return
        link = self._dial(endpoint, now)
        self._send_hello(link, now)

    def _send_hello(self, link: Link, now: float) -> None:
        link.hello_at = now
        self._send_control(link.id, self._hello(reply=False, via=link.endpoint, echo=""))

    def tick(self, now: float) -> None:
        """Run every timer: heartbeats and digests, suspicion and death, dial timeouts."""
        if self._closed:
            return
        timings = self.timings
        stall = now - self._last_tick - timings.tick_interval_s
        self._last_tick = now
        self._stall_max_s = max(self._stall_max_s, stall)
        if stall > timings.heartbeat_interval_s:
            # Our loop was blocked (a handler, a GC pause, a starved CPU): peers' frames are
            # still waiting in our inbox, so their silence is ours. Declaring them dead now
            # would purge healthy peers and lose what they sent.
            self._quiet.warning("stall", "%s: this node's event loop was blocked for %.2f s; "
                                "that time does not count against peers", self.hex[:8], stall)
            self.membership.forgive(stall, now)
        for peer, why in self.membership.expire(now):
            _log.info("%s: peer %s (%s) is dead: %s", self.hex[:8], peer.hex[:8], peer.endpoint,
                      why)
            self._forget(peer, "timeout", now)
        if self._ack_due:
            self._queue_acks(force=True)
        for peer in self.membership.peers.values():
            if (now - peer.last_sent >= timings.heartbeat_interval_s
                    or now - peer.last_digest >= timings.digest_interval_s):
                outbox = self.outboxes.get(peer.node_id)
                stream, sent = (outbox.stream, outbox.last_sent) if outbox else (0, 0)
                held_us = int((now - peer.echo_at) * 1e6) if peer.echo_us else 0
                self._send_peer(peer, wire.encode_heartbeat(
                    self.incarnation, self.table.version, stream, sent, int(now * 1e6),
                    peer.echo_us, held_us), now)
                peer.last_digest = now
        self._expire_outboxes(now)
        if now - self._last_exchange >= timings.peer_exchange_interval_s:
            self._last_exchange = now
            for peer in self.membership.peers.values():
                self._send_peers(peer, now)
        for link in list(self.links.values()):
            if link.peer is not None or link.one_shot:
                continue
            if now - link.opened_at >= timings.connect_timeout_s:
                _log.debug("%s: no HELLO from %s after %.1f s, giving up the dial", self.hex[:8],
                           link.endpoint, now - link.opened_at)
                self._hang_up(link.id)
            elif now - link.hello_at >= timings.hello_retry_s:
                self._send_hello(link, now)
        self._redial_dead(now)

    def _redial_dead(self, now: float) -> None:
        """Dial dead peers' addresses again: every ``connect_timeout_s`` for
        ``redial_dead_for_s``, then backing off to one dial every ``redial_backoff_max_s``,
        for as long as we remember them (a partition of any length heals)."""
        timings = self.timings
        for node_id, redial in list(self._redials.items()):
            if now < redial.next_at:
                continue
            if self.membership.by_endpoint(redial.endpoint) is not None:
                del self._redials[node_id]  # its address is another live peer's now
                continue
            self.hint(redial.endpoint, now)  # a no-op while a dial to it is pending
            if now - redial.dead_at < timings.redial_dead_for_s:
                delay = timings.connect_timeout_s
            else:
                delay = min(timings.redial_backoff_max_s,
                            timings.connect_timeout_s * 2 ** redial.attempts)
                redial.attempts += 1
            redial.next_at = now + delay

    def _expire_outboxes(self, now: float) -> None:
        """A dead peer that did not come back within ``redial_dead_for_s``: what we had sent
        it and it never acknowledged is lost, and counted."""
        for node_id, outbox in list(self.outboxes.items()):
            if outbox.dead_at is not None and (
                    now - outbox.dead_at >= self.timings.redial_dead_for_s):
                self._count_lost(node_id, outbox)
                del self.outboxes[node_id]

    # --- inputs: the network --------------------------------------------------------------------

    def hint_self(self, endpoint: str) -> None:
        """``endpoint`` is one of our own addresses: never dial it."""
        self._self_endpoints.add(endpoint)

    def receive(self, routing_id: bytes, payload: bytes | memoryview, now: float,
                peer_address: AddressGetter | None = None) -> None:
        """Handle one batch that arrived on our ROUTER from ``routing_id``; ``peer_address``
        tells, when asked, the IP it came from (to resolve a wildcard endpoint)."""
        if self._closed:
            return
        self.counters.frames_received += 1
        node_id = routing_id[:wire.NODE_ID_BYTES]
        try:
            raws = self.decoder.batch(payload)
        except RemoteProtocolError as exc:
            self.counters.malformed_frames += 1
            self._quiet.warning(f"frame:{node_id.hex()}",
                                "%s: dropped a malformed frame from %s: %s",
                                self.hex[:8], node_id.hex()[:8] or "?", exc)
            return
        peer = self.membership.peers.get(node_id)
        self.counters.records_received += len(raws)
        sequenced = (bool(raws) and type(first := raws[0]) is list and bool(first)
                     and type(first[0]) is int and first[0] == _SEQ)
        if sequenced:
            if not self._take(node_id, peer, raws, now):
                return
            raws = raws[1:]
        decoder = self.decoder
        for raw in raws:
            try:
                if (peer is not None and type(raw) is list and raw
                        and type(kind := raw[0]) is int and kind == _MSG):
                    self._on_msg(peer, decoder.msg(raw), now)  # the hot record, first
                    continue
                record = decoder.record(raw)
            except RemoteProtocolError as exc:
                self.counters.malformed_records += 1
                self._quiet.warning(f"record:{node_id.hex()}",
                                    "%s: dropped a malformed record from %s: %s",
                                    self.hex[:8], node_id.hex()[:8] or "?", exc)
                continue
            if type(record) is wire.Hello:
                self._on_hello(node_id, record, now, peer_address)
                peer = self.membership.peers.get(node_id)
            elif type(record) is wire.Refuse:
                self._on_refuse(node_id, record, now)
                peer = self.membership.peers.get(node_id)
            elif peer is None:
                self._from_stranger(node_id, record, now)
            elif type(record) is wire.Ack:
                self._on_ack(peer, record, now, sequenced=sequenced)
            else:
                self._on_record(peer, record, now)
                if type(record) is wire.Bye:
                    peer = None
        if peer is not None:
            self.membership.heard(peer, now)

    def _take(self, node_id: bytes, peer: Peer | None, raws: list[object], now: float) -> bool:
        """Judge a sequenced batch: True to handle its records (the next of its stream)."""
        numbers = wire.seq_of(raws[0])
        if numbers is None:
            self.counters.malformed_records += len(raws)  # its records go with it
            self._quiet.warning(f"record:{node_id.hex()}", "%s: dropped a batch with a "
                                "malformed SEQ from %s", self.hex[:8], node_id.hex()[:8] or "?")
            return False
        stream, seq, incarnation = numbers
        if incarnation != self.incarnation:
            # Sent to a process that had this endpoint before us (its sender's socket
            # reconnected to us and flushed what it held for that one): not ours to take, nor
            # to acknowledge. Its sender counts its messages lost when it learns we replaced
            # that process; taking them would count them twice (delivered and lost).
            self.counters.misdirected_batches += 1
            self._quiet.warning(f"misdirected:{node_id.hex()}", "%s: dropped a batch from %s "
                                "meant for another process on our endpoint (incarnation %d, "
                                "ours %d)", self.hex[:8], node_id.hex()[:8] or "?", incarnation,
                                self.incarnation)
            if peer is not None:
                self.membership.heard(peer, now)
            return False
        if peer is None:
            # Not taken, so not acknowledged: its sender keeps it, and resends it once we know
            # each other again (the stranger path below says HELLO to a peer we declared dead).
            self._from_stranger(node_id, wire.Seq(*numbers), now)
            self.counters.unknown_sender_records += len(raws) - 1
            return False
        inflow = self._inflow(peer)
        verdict = inflow.judge(stream, seq)
        if verdict is Verdict.TAKE:
            self._ack_due.add(node_id)
            if inflow.taken - inflow.acked >= self._ack_every:
                self._ack_now.add(node_id)
            return True
        self.membership.heard(peer, now)
        if verdict is Verdict.DUPLICATE:
            self.counters.duplicate_batches += 1
            self._ack_due.add(node_id)  # its sender may have missed our ACK
        elif verdict is Verdict.STALE:
            self.counters.stale_batches += 1
            _log.debug("%s: dropped a late batch of an old stream of %s", self.hex[:8],
                       peer.hex[:8])
        else:
            self.counters.gap_batches += 1
            # A stream we do not follow (its sender started anew while we still held its old
            # one, and we missed the start) is asked from its start: its heartbeats cannot
            # tell us, on a busy link they ride in these very batches.
            self._ask_resend(peer, inflow, now,
                             stream=stream if stream != inflow.stream else None)
        return False

    def _inflow(self, peer: Peer) -> Inflow:
        """A peer's stream state, kept after it is declared dead (it may resume); anew for a
        new incarnation. Bounded: the oldest of peers no longer known go first, never a
        current peer's (its sender would resend from a number we no longer expect)."""
        inflow = self.inflows.get(peer.node_id)
        if inflow is not None and inflow.incarnation == peer.incarnation:
            return inflow
        inflow = self.inflows[peer.node_id] = Inflow(peer.incarnation)
        if len(self.inflows) > 4 * self.limits.max_peers:
            for old in self.inflows:
                if old not in self.membership.peers:
                    del self.inflows[old]
                    break
        return inflow

    def _ask_resend(self, peer: Peer, inflow: Inflow, now: float, *,
                    stream: int | None = None) -> None:
        """Ask ``peer`` again for what follows the gap in the stream we take (an ACK with
        resend), or for all of another ``stream`` from its start; at most every
        ``RESEND_INTERVAL_S``."""
        if not inflow.may_ask_resend(now):
            return
        self.counters.resend_requests += 1
        _log.debug("%s: gap in the stream of %s after batch %d: asking again", self.hex[:8],
                   peer.hex[:8], 0 if stream is not None else inflow.taken)
        # Alone, never in a sequenced batch: a resend of that batch would carry it again later,
        # asking for what we may have taken since (see _on_ack).
        if stream is not None:
            self._send_alone(peer.link, wire.encode_ack(stream, 0, True))
            return
        self._ack_due.discard(peer.node_id)  # the resend request acknowledges too
        self._ack_now.discard(peer.node_id)
        self._send_alone(peer.link, wire.encode_ack(*inflow.ack(resend=True)))

    def _on_ack(self, peer: Peer, ack: wire.Ack, now: float, *, sequenced: bool) -> None:
        outbox = self.outboxes.get(peer.node_id)
        if outbox is None or ack.stream != outbox.stream:
            return
        if ack.resend and outbox.unacked and ack.seq + 1 < outbox.unacked[0].seq:
            if sequenced:
                # Written before an ACK we have had since, and carried again in a resent
                # batch: stale. (Acting on it would send again what the peer has taken.)
                return
            # It asks again for batches it had acknowledged: it lost its place in the stream
            # (its state of us was dropped: a gap and resend loop otherwise, every batch we
            # still hold a gap to it). What it acknowledged was taken; the rest starts a new
            # stream, from 1.
            self.counters.restarted_streams += 1
            self._quiet.warning(f"restart:{peer.hex}", "%s: %s asks for batches of our stream "
                                "it had acknowledged (%d, we hold from %d): starting a new one",
                                self.hex[:8], peer.hex[:8], ack.seq, outbox.unacked[0].seq)
            outbox = self.outboxes[peer.node_id] = outbox.renumbered(
                next(self._stream_ids) & 0xFFFFFFFF or 1)
            self._resend(peer, outbox)
            return
        outbox.acked(ack.seq)
        if self.full_peers and not outbox.full:
            self.full_peers.discard(peer.node_id)
        if ack.resend and outbox.unacked:
            self._resend(peer, outbox)

    def _resend(self, peer: Peer, outbox: Outbox) -> None:
        batches = outbox.resend()
        self.counters.retransmitted_batches += len(batches)
        queued = self._resends.setdefault(peer.link, [])
        queued.extend(batches)

    def link_changed(self, link_id: int, what: str, now: float) -> None:
        """The transport saw our link's connection come ``"up"`` (handshake done), go
        ``"down"``, or a dial on it be ``"refused"`` (see ``Membership``)."""
        link = self.links.get(link_id)
        if link is None:
            return
        _log.debug("%s: link %d to %s: connection %s", self.hex[:8], link_id, link.endpoint, what)
        link.connected = what == "up"
        peer = self.membership.peers.get(link.peer) if link.peer else None
        if peer is None or peer.link != link_id:
            return
        if what == "up":
            was_down = peer.connected_once and peer.down_since is not None
            self.membership.link_up(peer, now)
            if was_down:
                # What was in the broken connection is gone: our batches (the peer drops what
                # it has) and our last ACK of its stream (without it, the peer would keep its
                # last batches until more traffic came: drain() would wait for them).
                outbox = self.outboxes.get(peer.node_id)
                if outbox is not None and outbox.unacked:
                    self._resend(peer, outbox)
                inflow = self.inflows.get(peer.node_id)
                if inflow is not None and inflow.incarnation == peer.incarnation:
                    inflow.ack_again()
                    self._ack_due.add(peer.node_id)
        elif what == "down":
            _log.debug("%s: connection to peer %s (%s) closed", self.hex[:8], peer.hex[:8],
                       peer.endpoint)
            self.membership.link_down(peer, now)
        else:
            self.membership.link_refused(peer)

    def dial_failed(self, link_id: int, now: float) -> None:
        """The transport could not open a link we asked for (no socket or file left, a bad
        endpoint): drop it, and the peer it was for, rather than keep a peer we cannot reach.
        A later HELLO or hint dials again."""
        link = self.links.get(link_id)
        if link is None:
            return
        peer = self.membership.peers.get(link.peer) if link.peer else None
        if peer is not None and peer.link == link_id:
            self._forget(peer, "timeout", now)
        self._hang_up(link_id)

    def _on_record(self, peer: Peer, record: wire.Record, now: float) -> None:
        kind = type(record)
        if kind is wire.Reply:
            self._events.append(ReplyArrived(peer.hex, record))  # type: ignore[arg-type]
        elif kind is wire.Delta:
            self._on_delta(peer, record, now)  # type: ignore[arg-type]
        elif kind is wire.Heartbeat:
            self._on_heartbeat(peer, record, now)  # type: ignore[arg-type]
        elif kind is wire.Snapshot:
            snap: wire.Snapshot = record  # type: ignore[assignment]
            if snap.incarnation == peer.incarnation:
                self._events.extend(self.table.replace(peer.node_id, snap.incarnation,
                                                       snap.version, snap.entries))
        elif kind is wire.SnapshotRequest:
            if self._may_send_table(peer, "snapshot_sent_at", now):
                snapshot = wire.Snapshot(self.incarnation, self.table.version,
                                         self.table.snapshot())
                self._send_reliable(peer, wire.encode_snapshot(snapshot), now)
        elif kind is wire.Peers:
            self._on_peers(record, now)  # type: ignore[arg-type]
        elif kind is wire.Bye:
            _log.info("%s: peer %s (%s) said BYE", self.hex[:8], peer.hex[:8], peer.endpoint)
            self._forget(peer, "bye", now)
        elif kind is wire.Leaving:
            _log.info("%s: peer %s (%s) is draining", self.hex[:8], peer.hex[:8], peer.endpoint)
            self.router.leaving.add(peer.node_id)

    def _on_hello(self, node_id: bytes, hello: wire.Hello, now: float,
                  peer_address: AddressGetter | None) -> None:
        if hello.node_id != node_id:
            self.counters.malformed_records += 1
            self._quiet.warning(f"spoof:{node_id.hex()}", "%s: HELLO claims id %s on a link of %s",
                                self.hex[:8], hello.node_id.hex()[:8], node_id.hex()[:8])
            return
        if node_id == self.node_id:
            self._found_self(hello.via)
            return
        endpoint = resolve_endpoint(hello.endpoint, peer_address() if peer_address else None)
        reason = self._incompatibility(hello)
        if reason is not None:
            self._refuse(node_id, endpoint, hello, reason, now)
            return
        verdict = self.membership.judge_hello(node_id, hello.incarnation)
        if verdict is HelloVerdict.STALE:
            return
        if verdict is HelloVerdict.KNOWN:
            peer = self.membership.peers[node_id]
            self._events.extend(self.table.replace(node_id, hello.incarnation, hello.version,
                                                   hello.entries))
            self._adopt_aliases(peer, hello)
            if not hello.reply and self._may_send_table(peer, "hello_sent_at", now):
                self._send_control(peer.link, self._hello(
                    reply=True, via=self.links[peer.link].endpoint, echo=hello.via))
            return
        for old in self.membership.replaced_by(node_id, hello.incarnation, endpoint):
            _log.info("%s: peer %s (%s) is replaced by %s incarnation %d", self.hex[:8],
                      old.hex[:8], old.endpoint, node_id.hex()[:8], hello.incarnation)
            self._forget(old, "replaced", now)
        if len(self.membership.peers) >= self.limits.max_peers:
            self._quiet.warning("peers-full", "%s: already %d peers, ignoring %s", self.hex[:8],
                                len(self.membership.peers), endpoint)
            return
        link = self._pending_link(hello, endpoint) or self._dial(endpoint, now)
        link.peer = node_id
        self._redials.pop(node_id, None)
        peer = self.membership.add(node_id, hello.incarnation, endpoint, hello.name, link.id, now,
                                   connected=link.connected)
        outbox = self.outboxes.get(node_id)
        if outbox is not None and outbox.incarnation == hello.incarnation:
            # It was declared dead and is back, the same process: resume our stream where it
            # stopped (it drops what it has already).
            outbox.dead_at = None
            if outbox.unacked:
                self._resend(peer, outbox)
        _log.info("%s: peer %s up at %s%s", self.hex[:8], peer.hex[:8], endpoint,
                  f" ({hello.name})" if hello.name else "")
        self._events.append(PeerUp(peer.info()))
        self._events.extend(self.table.replace(node_id, hello.incarnation, hello.version,
                                               hello.entries))
        self._adopt_aliases(peer, hello)
        if not hello.reply:
            peer.hello_sent_at = now
            self._send_control(peer.link, self._hello(reply=True, via=link.endpoint,
                                                      echo=hello.via))
        self._send_peers(peer, now)

    def _adopt_aliases(self, peer: Peer, hello: wire.Hello) -> None:
        """A reply naming a dial of ours that is not the peer's link: both dials reached the
        same node (a seed by another name, dials crossing). Keep one link, remember the name."""
        if not hello.reply or not hello.echo:
            return
        for link in list(self.links.values()):
            if link.peer is None and not link.one_shot and link.endpoint == hello.echo:
                self._hang_up(link.id)
                if len(self._aliases) < self.limits.max_peers:
                    self._aliases[hello.echo] = peer.node_id

    def _may_send_table(self, peer: Peer, last: str, now: float) -> bool:
        """Whole tables answer one peer's HELLOs, and its SNAPSHOT_REQUESTs, at most every
        ``snapshot_retry_s / 4`` each: a request is two bytes, the answer may be megabytes."""
        if now - getattr(peer, last) < self.timings.snapshot_retry_s / 4:
            return False
        setattr(peer, last, now)
        return True

    def _send_peers(self, peer: Peer, now: float) -> None:
        """Tell ``peer`` every other peer we know (peer exchange)."""
        others = [(p.node_id, p.endpoint) for p in self.membership.peers.values()
                  if p.node_id != peer.node_id]
        if others:
            self._send_reliable(peer, wire.encode_peers(others[: self.limits.max_peers]), now)

    def _pending_link(self, hello: wire.Hello, endpoint: str) -> Link | None:
        """Our unmatched dial that reached this node: named by its echo, or by its endpoint."""
        for link in self.links.values():
            if link.peer is None and not link.one_shot and (
                (hello.echo and link.endpoint == hello.echo) or link.endpoint == endpoint
            ):
                return link
        return None

    def _found_self(self, via: str) -> None:
        """A HELLO of ours came back: ``via`` is one of our own addresses; stop dialling it.

        Only a ``via`` we are dialling counts: a forged HELLO must not make us shun a peer.
        """
        for link in list(self.links.values()):
            if link.endpoint == via and link.peer is None and not link.one_shot:
                self._self_endpoints.add(via)
                self._hang_up(link.id)

    def _incompatibility(self, hello: wire.Hello) -> str | None:
        if hello.protocol != wire.PROTOCOL_VERSION:
            return (f"protocol version {hello.protocol} is not ours ({wire.PROTOCOL_VERSION})")
        if hello.cluster != self.cluster:
            return f"cluster {hello.cluster!r} is not ours ({self.cluster!r})"
        return None

    def _refuse(self, node_id: bytes, endpoint: str, hello: wire.Hello, reason: str,
                now: float) -> None:
        self.counters.refused_peers += 1
        self._quiet.warning(f"refuse:{endpoint}", "%s: refusing node %s at %s: %s",
                            self.hex[:8], node_id.hex()[:8], endpoint, reason)
        if hello.reply or self._refused_recently(endpoint, now) or not self._refusal_allowed(now):
            return
        self._refused[endpoint] = now
        if len(self._refused) > self.limits.max_peers:
            self._refused.popitem(last=False)
        link = self._dial(endpoint, now, one_shot=True)
        self._send_control(link.id, wire.encode_refuse(wire.Refuse(reason, hello.via)))
        self._hang_up(link.id)

    def _on_refuse(self, node_id: bytes, refuse: wire.Refuse, now: float) -> None:
        via = refuse.echo
        self._quiet.warning(f"refused:{node_id.hex()}", "%s: node %s refused us: %s",
                            self.hex[:8], node_id.hex()[:8], refuse.reason)
        self.counters.refused_peers += 1
        for link in list(self.links.values()):
            if link.peer is None and link.endpoint == via:
                self._refused[via] = now
                self._hang_up(link.id)
        peer = self.membership.peers.get(node_id)
        if peer is not None:
            self._forget(peer, "refused", now)

    def _refusal_allowed(self, now: float) -> bool:
        """At most ``REFUSALS_PER_S`` dial-backs to refused nodes: each costs a socket, and a
        stranger can claim any number of endpoints."""
        start, count = self._refusal_window
        if now - start >= 1.0:
            start, count = now, 0
        self._refusal_window = (start, count + 1)
        return count < REFUSALS_PER_S

    def _refused_recently(self, endpoint: str, now: float) -> bool:
        when = self._refused.get(endpoint)
        return when is not None and now - when < self.timings.refusal_memory_s

    def _from_stranger(self, node_id: bytes, record: wire.Record, now: float) -> None:
        """A record from a node that never said HELLO to us (or that we declared dead)."""
        self.counters.unknown_sender_records += 1
        if type(record) is wire.Bye:
            return
        redial = self._redials.get(node_id)
        if redial is None:
            return
        # It still talks to us, so it believes we are connected: say HELLO again (at most a
        # few times a second, whatever it sends) and both sides re-learn each other; what it
        # sent meanwhile it sends again.
        pending = [link for link in self.links.values()
                   if link.peer is None and link.endpoint == redial.endpoint]
        if not pending:
            if redial.next_at > now:
                _log.info("%s: node %s we had declared dead is talking: reconnecting",
                          self.hex[:8], node_id.hex()[:8])
                redial.next_at = now  # the timer dials it within a tick
        elif now - pending[0].hello_at >= self.timings.hello_retry_s / 4:
            self._send_hello(pending[0], now)  # its answer to the last one may be lost

    def _on_peers(self, peers: wire.Peers, now: float) -> None:
        for node_id, endpoint in peers.peers:
            if node_id != self.node_id and node_id not in self.membership.peers:
                self.hint(endpoint, now)

    def _on_delta(self, peer: Peer, delta: wire.Delta, now: float) -> None:
        replica = self.table.replicas.get(peer.node_id)
        if (replica is not None and delta.name is not None
                and delta.sub_id not in replica.entries
                and len(replica.entries) >= self.limits.max_table_entries):
            self.counters.malformed_records += 1
            self._quiet.warning(f"table-full:{peer.hex}", "%s: %s has over %d subscribers: "
                                "dropped a delta", self.hex[:8], peer.hex[:8],
                                self.limits.max_table_entries)
            return
        outcome, events = self.table.apply_delta(peer.node_id, delta)
        self._events.extend(events)
        if outcome is DeltaOutcome.GAP:
            self._ask_snapshot(peer, now)

    def _on_heartbeat(self, peer: Peer, beat: wire.Heartbeat, now: float) -> None:
        replica = self.table.replicas.get(peer.node_id)
        if beat.incarnation != peer.incarnation:
            return
        if beat.time_us:
            peer.echo_us, peer.echo_at = beat.time_us, now
        if beat.echo_us:
            rtt = now - (beat.echo_us + beat.held_us) / 1e6
            if 0 <= rtt < self.timings.dead_after_s:  # an echo of an earlier process: ignored
                peer.rtt_s = rtt if peer.rtt_s is None else (
                    peer.rtt_s + RTT_SMOOTHING * (rtt - peer.rtt_s))
        inflow = self._inflow(peer) if beat.sent else None  # 0: it sent us nothing yet
        if inflow is not None and inflow.behind(beat.stream, beat.sent):
            # What we miss is on its way again (deltas among it): no snapshot for that.
            self._ask_resend(peer, inflow, now)
            return
        if replica is None or replica.version < beat.version:
            self._ask_snapshot(peer, now)

    def _ask_snapshot(self, peer: Peer, now: float) -> None:
        replica = self.table.replicas.get(peer.node_id)
        if replica is not None:
            asked = replica.snapshot_requested_at
            if asked is not None and now - asked < self.timings.snapshot_retry_s:
                return
            replica.snapshot_requested_at = now
        self.counters.snapshot_requests += 1
        self._send_reliable(peer, wire.SNAPSHOT_REQUEST, now)

    def _on_msg(self, peer: Peer, msg: wire.Msg, now: float) -> None:
        try:
            # By index, not ReceiveMode(n) (~0.5 us): the decoder checked the range.
            sub_ids = self.router.local_matches(_MODES[msg.mode], msg.target, msg.sub_id)
        except UsageError as exc:
            self.counters.malformed_records += 1
            self._quiet.warning(f"target:{peer.hex}", "%s: bad target from %s: %s", self.hex[:8],
                                peer.hex[:8], exc)
            sub_ids = []
        if sub_ids:
            self._events.append(Deliver(sub_ids, peer.hex, msg))
            return
        self.counters.undeliverable_messages += 1
        if msg.request_id is not None:
            self._answer(peer, msg.request_id, ReplyStatus.NO_SUBSCRIBER, "", b"", now)

    # --- queries --------------------------------------------------------------------------------

    def lookup(self, name: str) -> list[Subscriber]:
        """Every known subscriber of ``name``, ours and remote."""
        return self.table.lookup(name)

    def count(self, name: str) -> int:
        """How many subscribers of ``name`` are known."""
        return self.table.count(name)

    def subscribers(self) -> list[Subscriber]:
        """Every known subscriber."""
        return self.table.all()

    def peer_infos(self) -> list[PeerInfo]:
        """The peers we have a HELLO from and have not declared dead."""
        return [peer.info() for peer in self.membership.peers.values()]

    def stats(self) -> dict[str, int]:
        """The protocol's counters, its peers and subscribers, and the longest stall of the loop
        that drives it (``loop_stall_max_ms``)."""
        counters = self.counters
        # Fields, not __slots__: a compiled (mypyc) dataclass has no __slots__.
        stats = {f.name: getattr(counters, f.name) for f in dataclasses.fields(counters)}
        stats["peers"] = len(self.membership.peers)
        stats["subscribers"] = self.table.size()
        stats["loop_stall_max_ms"] = int(self._stall_max_s * 1000)
        return stats

    # --- inputs: the API ------------------------------------------------------------------------

    def subscribe(self, name: str, meta: Meta, now: float) -> int:
        """Add a local subscriber; every peer learns it through a delta."""
        sub_id, delta, event = self.table.add_local(name, meta)
        self._events.append(event)
        self._broadcast(wire.encode_delta(delta), now)
        return sub_id

    def update_meta(self, sub_id: int, meta: Meta, now: float) -> None:
        """Replace a local subscriber's meta; every peer learns it through a delta (no-op if
        it is gone or already has that meta)."""
        updated = self.table.update_local(sub_id, meta)
        if updated is not None:
            delta, event = updated
            self._events.append(event)
            self._broadcast(wire.encode_delta(delta), now)

    def unsubscribe(self, sub_id: int, now: float) -> None:
        """Remove a local subscriber (no-op if gone)."""
        removed = self.table.remove_local(sub_id)
        if removed is not None:
            delta, event = removed
            self._events.append(event)
            self._broadcast(wire.encode_delta(delta), now)

    def check_pattern(self, pattern: str) -> None:
        """``UsageError`` unless ``pattern`` is a REGEX target we can run (length, syntax)."""
        self.router.pattern(pattern)

    def send_to(self, plan: Plan, seq: int, sender: str | None, mode: ReceiveMode,
                target: Target, type_name: str, body: bytes, request_id: int | None) -> bool:
        """Queue one MSG record for every remote node ``plan`` reaches (each fans out to its
        own subscribers); True when a link now holds a whole batch (the caller should let it
        leave, and give the loop a turn, before queueing more). ``UsageError`` (nothing
        queued) for a body no frame can carry.

        A message does not postpone the link's next heartbeat: that would cost a clock read
        per message to save four small records a second."""
        if len(body) > self.limits.max_frame_bytes - ENVELOPE_BYTES:
            raise UsageError(f"a body of {len(body)} bytes cannot reach a peer: frames are at "
                             f"most Limits.max_frame_bytes = {self.limits.max_frame_bytes} "
                             f"bytes with the envelope")
        peers = self.membership.peers
        sends = self._sends
        pack = self._pack
        record = None
        full = False
        for node, sub_id in plan.remote.items():
            link = peers[node].link
            if sub_id is None:
                if record is None:
                    record = wire.encode_msg_fields(pack, seq, sender, mode, target, type_name,
                                                    body, None, request_id)
                this = record
            else:  # ANY: the chosen subscriber travels with the record
                this = wire.encode_msg_fields(pack, seq, sender, mode, target, type_name, body,
                                              sub_id, request_id)
            queue = sends.get(link)
            if queue is None:
                sends[link] = [this]
            else:
                queue.append(this)
                # Bytes estimated from this record's size (no running sum per message): a
                # batch's worth of records like it, or two records of any size.
                if len(queue) * len(this) >= MAX_BATCH_BYTES:
                    full = True
        return full

    def reply(self, origin: str, request_id: int, status: ReplyStatus, type_name: str,
              body: bytes, now: float) -> bool:
        """Answer request ``request_id`` of node ``origin`` (hex); False if it is gone."""
        peer = self.membership.peers.get(bytes.fromhex(origin))
        if peer is None:
            return False
        self._answer(peer, request_id, status, type_name, body, now)
        return True

    def _answer(self, peer: Peer, request_id: int, status: ReplyStatus, type_name: str,
                body: bytes, now: float) -> None:
        self._send_reliable(peer, wire.encode_reply(
            wire.Reply(request_id, status, type_name, body)), now)

    def leave(self, now: float) -> None:
        """Start draining: every peer hears LEAVING (and stops choosing our subscribers for
        ANY); ``settled`` says when each has acknowledged everything we sent it."""
        if not self._closed:
            self._broadcast(wire.LEAVING, now)

    def settled(self) -> bool:
        """Every peer has acknowledged everything we sent it (and nothing waits to leave)."""
        if self._sends or self._resends:
            return False
        return not any(outbox.unacked for node_id, outbox in self.outboxes.items()
                       if node_id in self.membership.peers)

    def close(self, now: float) -> None:
        """Say BYE on every link (a dial not yet answered may already have made us the
        other side's peer) and hang up."""
        if self._closed:
            return
        self._queue_acks(force=True)  # before the BYE: after it, the peer no longer listens
        for link in self.links.values():
            if not link.one_shot:
                self._send_control(link.id, wire.BYE)
        for link_id in list(self.links):
            self._hang_up(link_id)
        self._closed = True

    # --- plumbing -------------------------------------------------------------------------------

    def _hello(self, *, reply: bool, via: str, echo: str) -> bytes:
        table = self.table
        return wire.encode_hello(wire.Hello(
            wire.PROTOCOL_VERSION, self.cluster, self.node_id, self.incarnation, self.endpoint,
            self.name, reply, via, echo, table.version, table.snapshot(),
        ))

    def _dial(self, endpoint: str, now: float, *, one_shot: bool = False) -> Link:
        link = Link(self._next_link, endpoint, now, 0.0, one_shot=one_shot)
        self._next_link += 1
        self.links[link.id] = link
        self._dials.append(Dial(link.id, endpoint, self.node_id + _LINK_NUMBER.pack(link.id)))
        return link

    def _hang_up(self, link_id: int) -> None:
        if self.links.pop(link_id, None) is not None:
            self._hangups.append(link_id)

    def _send(self, link_id: int, record: bytes) -> None:
        _queue(self._sends, link_id, record)

    def _send_control(self, link_id: int, record: bytes) -> None:
        """A HELLO, REFUSE or BYE: never sequenced (see streams.py)."""
        self._control.add(link_id)
        self._send(link_id, record)

    def _send_alone(self, link_id: int, record: bytes) -> None:
        """A record in a batch of its own, never sequenced, ahead of the link's others."""
        self._resends.setdefault(link_id, []).extend(wire.encode_batches([record],
                                                                         MAX_BATCH_BYTES))

    def _ride(self, link_id: int, record: bytes) -> None:
        """A heartbeat or an ACK: it travels with the link's other records, or alone."""
        _queue(self._riders, link_id, record)

    def _send_peer(self, peer: Peer, record: bytes, now: float) -> None:
        """A heartbeat (see ``_ride``)."""
        peer.last_sent = now
        self._ride(peer.link, record)

    def _send_reliable(self, peer: Peer, record: bytes, now: float) -> None:
        """A record that must arrive: on a peer's link, it travels sequenced."""
        peer.last_sent = now
        self._send(peer.link, record)

    def _broadcast(self, record: bytes, now: float) -> None:
        """Send to every peer and to every dial still waiting for its HELLO answer."""
        for peer in self.membership.peers.values():
            self._send_reliable(peer, record, now)
        for link in self.links.values():
            if link.peer is None and not link.one_shot:
                self._send(link.id, record)

    def _forget(self, peer: Peer, reason: str, now: float) -> None:
        """Remove a peer, its link and its subscribers; remember it a while for reconnection."""
        queued = self._sends.pop(peer.link, None)
        if queued:
            # Queued for it this turn, not sent yet: its stream holds them with the rest, lost
            # or resumed with it (sent on the link being hung up, they would go unsequenced).
            stream = self._outbox(peer)
            kept = [record for record in queued if wire.kind_of(record) not in wire.CONTROL_KINDS]
            if kept:
                for chunk in wire.chunk_records(kept, MAX_BATCH_BYTES):
                    stream.number(chunk)
        self.membership.remove(peer.node_id)
        self._hang_up(peer.link)
        for alias in [a for a, node in self._aliases.items() if node == peer.node_id]:
            del self._aliases[alias]
        events: list[TableEvent] = self.table.purge(peer.node_id)
        self._events.append(PeerDown(peer.info(), reason))
        self._events.extend(events)
        self._ack_due.discard(peer.node_id)
        self._ack_now.discard(peer.node_id)
        self.full_peers.discard(peer.node_id)
        self.router.leaving.discard(peer.node_id)
        outbox = self.outboxes.get(peer.node_id)
        if reason == "timeout":
            # Perhaps only cut off: if it comes back, our stream to it resumes (see _on_hello).
            if outbox is not None:
                outbox.dead_at = now
            self._redials[peer.node_id] = Redial(peer.endpoint, now, now)
            if len(self._redials) > self.limits.max_peers:
                self._redials.popitem(last=False)
        elif outbox is not None:
            self._count_lost(peer.node_id, outbox)
            del self.outboxes[peer.node_id]

