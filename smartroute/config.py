"""Named timing constants (with units) and size limits, and the settings objects built from them.

Every timing a node uses is one of the constants below; ``Node(**timings)`` overrides them by the
lower-case name (``Node(dead_after_s=3.0)``), and tests shrink them. Limits bound everything a peer
can make us allocate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# --- timings ------------------------------------------------------------------------------------

HEARTBEAT_INTERVAL_S = 0.25
"""Every link carries a record from our event loop at least this often: the table digest, the
acknowledgements, the number of the last batch sent."""

SUSPECT_AFTER_S = 0.75
"""Three missed heartbeats: the peer's event loop is busy or stuck, or its connection is down;
it is shown as suspect and still routed to."""

DEAD_AFTER_S = 20.0
"""A peer whose connection is alive (libzmq answers our pings) but whose event loop has sent
nothing for this long is stuck for good: dead. Long on purpose: a busy loop (a slow handler, a
tight send loop, a GC pause of a few seconds) is not a dead process, and its messages must
not be purged with it."""

PING_INTERVAL_S = 0.25
"""ZMTP PING on every link (``ZMQ_HEARTBEAT_IVL``). libzmq's own I/O thread sends and answers
pings, so they say "the process and the path are alive" whatever its Python loop is doing."""

PING_TIMEOUT_S = 1.0
"""A link whose ping goes unanswered this long is closed by libzmq (``ZMQ_HEARTBEAT_TIMEOUT``):
the process is frozen (SIGSTOP) or the path is cut. Four pings: one lost segment is
retransmitted by TCP well within it on a LAN."""

UNREACHABLE_AFTER_S = 0.25
"""A peer whose connection closed and is not back (handshake done) within this long is dead: a
frozen process or a cut path is then dead ~1.3-1.55 s after it stopped answering (a broken
connection to a live process is back in ~10-20 ms: libzmq redials at once). A redial
that is refused (nobody listens there: the process is gone) is dead at once."""

CONNECT_TIMEOUT_S = 5.0
"""A dialled endpoint that has not answered our HELLO by then is given up (a hint may retry it)."""

HELLO_RETRY_S = 1.0
"""A HELLO not yet answered is sent again this often: the first may have reached a process
that died, or been lost with a broken connection. At most ~5 copies wait in a dead link."""

PEER_EXCHANGE_INTERVAL_S = 2.0
"""Every peer hears the list of our peers this often, so two nodes that lost each other (a
healed partition, a lost HELLO) meet again through any third."""

REDIAL_DEAD_FOR_S = 30.0
"""A peer declared dead is dialled again every ``CONNECT_TIMEOUT_S`` for this long (then less
often, see below), and what we sent it and it did not acknowledge is kept this long for it:
if it was only cut off, the mesh heals when the network does and nothing is lost."""

REDIAL_BACKOFF_MAX_S = 60.0
"""After ``REDIAL_DEAD_FOR_S``, a dead peer's address is still dialled, backing off to once
this often, as long as we remember it (``MAX_PEERS`` addresses): a partition of any length
heals within about this long after the network does (mDNS, whose records outlive a crash
by an hour, would not tell us again)."""

DIGEST_INTERVAL_S = 1.0
"""Every link carries our table version at least this often, so a lost delta is repaired."""

SNAPSHOT_RETRY_S = 1.0
"""A snapshot request not yet answered is repeated after this long."""

SEED_RETRY_S = 1.0
"""Static discovery hints its seeds again this often while they are not connected."""

DNS_INTERVAL_S = 5.0
"""DNS discovery (``dns:`` and ``dns-srv:``) resolves its names again this often: a new replica
(a pod, a compose container) is dialled within this of its record appearing. CoreDNS, the DNS
of Kubernetes, serves Service records with a 5 s TTL, so asking more often mostly gets the same
cached answer; each round costs one query per name (and one per host of an SRV answer).
"""

TICK_INTERVAL_S = 0.05
"""Resolution of every timer above: the node wakes the protocol this often."""

CLOSE_LINGER_S = 0.5
"""On close, unsent records (BYE among them) get this long to leave the socket."""

REFUSAL_MEMORY_S = 10.0
"""A refused endpoint is not dialled back again within this time (one log line, not a storm)."""

SEND_TIMEOUT_S = 1.0
"""``send_to`` to a peer whose link is full (its window of unacknowledged batches: a slow or
frozen peer) waits this long for room, then raises ``LinkFull`` and sends nothing."""

RESEND_INTERVAL_S = 0.1
"""A receiver that sees a gap in a stream asks for the batches again at most this often (the
copies already on their way would otherwise each ask once more)."""

REFUSALS_PER_S = 10
"""Most REFUSE records a node sends per second (each needs a short-lived link of its own, and a
stranger can claim any number of endpoints)."""

ROOM_POLL_S = 0.002
"""While ``send_to`` waits for room on a full link, it looks again this often."""

SUBSCRIBES_PER_TURN = 1000
"""A loop of ``subscribe`` calls that awaits nothing else gives the event loop a turn this often:
its deltas leave as one batch (a few tens of KB) and timers, the inbox and acknowledgements
keep running."""

DRAIN_POLL_S = 0.01
"""While ``drain`` waits for answers and acknowledgements, it looks again this often."""

DISPATCH_BUDGET_S = 0.005
"""Longest the node hands received messages to sync handlers (and an async handler's worker
runs without a pause) before it lets the loop run the rest: timers, the inbox and sends must
not wait behind one frame of 2,000 messages to a 1 ms handler (2 s)."""

RECEIVE_BUDGET_S = 0.005
"""Longest the inbox handles messages before it lets other tasks run: the timers that send our
heartbeats must not wait behind a flood, or busy nodes get declared dead (measured: one
2048-batch burst of 500-message batches held the loop for ~8 s)."""


# --- limits -------------------------------------------------------------------------------------

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest ZeroMQ message accepted (ZMQ_MAXMSGSIZE too), and sent: a 100k-subscriber snapshot
is ~4 MB. Decoding costs ~70 ns a byte before the sender is known (measured: a 63 MB frame
held a node for 6-9 s), so this also bounds how long one frame can stall a node (~1 s)."""

MAX_NAME_LENGTH = 256
"""Longest subscriber name, in characters."""

MAX_META_BYTES = 4096
"""Largest encoded ``meta`` dict of one subscriber; meta is replicated to every node."""

MAX_TABLE_ENTRIES = 1_000_000
"""Most subscribers one peer's snapshot may carry."""

MAX_TARGET_NAMES = 10_000
"""Most names (or patterns) in one list target."""

MAX_PATTERN_LENGTH = 512
"""Longest REGEX target pattern, in characters."""

MAX_PEERS = 512
"""Most peers a node keeps (and lists in one PEERS record). A node keeps at most twice as many
links (dials not yet answered count), each a ZeroMQ DEALER plus the two sockets of its connection
monitor: it allows itself ``6 * MAX_PEERS + 64`` sockets (ZeroMQ's own default cap is 1023).
Mind the process's open-files limit: a link costs ~4 file descriptors."""

REGEX_CACHE_SIZE = 1024
"""Compiled patterns kept; patterns arrive from the network, so the cache is bounded."""

SEND_QUEUE_MESSAGES = 1_000
"""ZeroMQ send high-water mark per link, in batches. The window below keeps a link far under
it: it is only reached by control records of a link whose connection is down for long."""

SEND_WINDOW_BATCHES = 64
"""Sequenced batches sent to one peer and not yet acknowledged, at most: ``send_to`` waits for
room beyond it (then raises ``LinkFull``). Every unacknowledged batch is kept for a resend, so
this (with ``SEND_WINDOW_BYTES``) bounds what one slow, frozen or cut-off peer costs us."""

SEND_WINDOW_BYTES = 8 * 1024 * 1024
"""The same window in bytes (a batch bigger than it still goes when the window is empty)."""

MAX_BATCH_BYTES = 256 * 1024
"""What one loop turn queues for one link leaves in batches of at most this many bytes (a
bigger record travels alone), so ``SEND_QUEUE_MESSAGES`` also bounds a link in bytes."""

RECEIVE_QUEUE_MESSAGES = 1_000
"""ZeroMQ receive high-water mark per peer connection, in batches. A sender's window keeps its
connection far under it, and must: a connection at its high-water mark is not read by libzmq
any more, so its pings would go unanswered and a busy node would look frozen."""

DISPATCH_BACKLOG_EVENTS = 10_000
"""Received messages a node holds for its sync handlers past one loop turn's budget (slow
handlers): beyond it the inbox stops reading, so what follows waits in ZeroMQ,
unacknowledged, and its senders' windows hold them back. Below it, acknowledgements and
everything else a peer sends are still read at once."""

HANDLER_HOLD_S = 0.5
"""An async handler whose half-full queue has not moved for this long is stuck: the inbox
stops waiting for it (its queue then drops the excess, counted), so one stuck handler cannot
stop a node. Under ``SEND_TIMEOUT_S``: a burst held back meanwhile raises no ``LinkFull``."""

HANDLER_QUEUE_SIZE = 10_000
"""Messages waiting for one async handler; past it new messages are dropped and counted."""

EVENT_QUEUE_SIZE = 10_000
"""Events waiting in one ``Node.events()`` iterator; past it the oldest are dropped."""


@dataclasses.dataclass(frozen=True, slots=True)
class Timings:
    """Every timing of a node, in seconds; defaults are the constants above."""

    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    suspect_after_s: float = SUSPECT_AFTER_S
    dead_after_s: float = DEAD_AFTER_S
    ping_interval_s: float = PING_INTERVAL_S
    ping_timeout_s: float = PING_TIMEOUT_S
    unreachable_after_s: float = UNREACHABLE_AFTER_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    hello_retry_s: float = HELLO_RETRY_S
    peer_exchange_interval_s: float = PEER_EXCHANGE_INTERVAL_S
    redial_dead_for_s: float = REDIAL_DEAD_FOR_S
    redial_backoff_max_s: float = REDIAL_BACKOFF_MAX_S
    digest_interval_s: float = DIGEST_INTERVAL_S
    snapshot_retry_s: float = SNAPSHOT_RETRY_S
    seed_retry_s: float = SEED_RETRY_S
    dns_interval_s: float = DNS_INTERVAL_S
    tick_interval_s: float = TICK_INTERVAL_S
    close_linger_s: float = CLOSE_LINGER_S
    refusal_memory_s: float = REFUSAL_MEMORY_S
    send_timeout_s: float = SEND_TIMEOUT_S

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{field.name} must be a number of seconds, not {value!r}")
            if not value > 0:
                raise ValueError(f"{field.name} must be > 0, not {value!r}")
        if not self.heartbeat_interval_s < self.suspect_after_s <= self.dead_after_s:
            raise ValueError(
                "timings must satisfy heartbeat_interval_s < suspect_after_s <= dead_after_s"
            )
        if not self.ping_interval_s < self.ping_timeout_s:
            raise ValueError("timings must satisfy ping_interval_s < ping_timeout_s")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Timings:
        """Build from ``Node(**timings)``; an unknown name is a ``TypeError`` listing the known."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown Node option(s) {', '.join(unknown)}; "
                f"timings are: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Every size limit of a node; defaults are the constants above."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_name_length: int = MAX_NAME_LENGTH
    max_meta_bytes: int = MAX_META_BYTES
    max_table_entries: int = MAX_TABLE_ENTRIES
    max_target_names: int = MAX_TARGET_NAMES
    max_pattern_length: int = MAX_PATTERN_LENGTH
    max_peers: int = MAX_PEERS
    regex_cache_size: int = REGEX_CACHE_SIZE
    send_queue_messages: int = SEND_QUEUE_MESSAGES
    send_window_batches: int = SEND_WINDOW_BATCHES
    send_window_bytes: int = SEND_WINDOW_BYTES
    receive_queue_messages: int = RECEIVE_QUEUE_MESSAGES
    handler_queue_size: int = HANDLER_QUEUE_SIZE
    event_queue_size: int = EVENT_QUEUE_SIZE

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field.name} must be a positive integer, not {value!r}")
