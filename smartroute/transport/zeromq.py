"""The ZeroMQ mesh: one ROUTER inbox per node, one DEALER per link we dialled.

The protocol decides what to send; this module only moves batches. Receiving drains the ROUTER
without awaiting between messages (one await per burst, not per message), and sending is a
non-blocking ``send`` on a DEALER that never blocks the loop: a link whose queue is full keeps
later batches, in order, in a bounded backlog and drops and counts beyond it. The protocol's window
of unacknowledged batches per peer (``streams.py``) keeps links far below ``ZMQ_SNDHWM``;
``ZMQ_RCVHWM`` bounds each incoming connection above any sender's window. Every link carries
ZMTP pings, and its monitor tells the node when its connection comes up, goes down, or a dial
is refused (``Links.check``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..config import RECEIVE_BUDGET_S
from ..endpoints import bind_address
from ..logs import QuietLog
from ..wire import NODE_ID_BYTES
from .curve import HANDSHAKE_EVENTS, Curve, client_options, handshake_failure, server_options

_log = logging.getLogger("smartroute.transport")

BACKLOG_BATCHES = 1024
"""Batches a full link holds back (in order) until its peer reads again; beyond that they are
dropped and counted. The window keeps sequenced traffic far below the high-water mark, so what
lands here is mostly control records of a link whose connection is down for long; a dropped
sequenced batch is still kept by the protocol and resent."""

RECONNECT_IVL_MS = 10
"""ZeroMQ's first reconnect interval for a link whose connection closed (plus up to as much
jitter): a killed process's port refuses the redial ~10-20 ms after its kernel closed the
connection, which is how its death is known in well under 100 ms."""

RECONNECT_IVL_MAX_MS = 1000
"""Reconnects back off up to this; a peer that is really gone is dropped by membership."""

LINK_EVENTS_UP = "up"
LINK_EVENTS_DOWN = "down"
LINK_EVENTS_REFUSED = "refused"

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
# Plain ints: pyzmq's enum flags make ``events & zmq.POLLIN`` a Python-level Flag operation
# (measured ~3 us, more than the getsockopt itself).

_send = zmq.backend.Socket.send
"""pyzmq's send under its Python-level wrapper, which only adds DRAFT arguments we never
pass: ~0.3 us a batch less."""


def _put(sock: zmq.Socket[bytes], batch: bytes) -> None:
    """Queue ``batch`` on ``sock`` without blocking (``zmq.Again`` when full). A small batch
    is copied; a big one is handed over, which pyzmq releases later on a thread of its own."""
    if len(batch) < zmq.COPY_THRESHOLD:
        _send(sock, batch, _NOBLOCK)
    else:
        _send(sock, batch, _NOBLOCK, copy=False)


Received = Callable[[bytes, zmq.Frame], None]
"""Called with the routing id and the payload frame of each message; it handles the message
completely (the driver runs the protocol and carries out its output)."""


class Inbox:
    """The node's ROUTER: every peer's batches arrive here."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], *, max_frame_bytes: int,
                 receive_queue: int, curve: Curve | None = None) -> None:
        sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # A peer whose TCP connection broke reconnects with the same routing id; without
        # handover the ROUTER would refuse the new connection while the stale one lingers.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        sock.setsockopt(zmq.RCVHWM, receive_queue)
        if curve is not None:
            server_options(sock, curve)
        self._sock = sock
        self._running = False
        self._secure = curve is not None
        self.paused = False
        """Set by the node while it has not handed out what it took: nothing more is read
        (it waits in ZeroMQ) until ``resume``."""
        self._wake: Callable[[], None] | None = None
        # Watched for the node's whole life: a stranger's failed handshake is reported here.
        self._watch = HandshakeWatch(sock)
        self._quiet = QuietLog(_log)
        self.dropped = 0
        self.errors = 0
        self.impostors = 0
        """Frames whose routing id names another node than the key they came with."""
        self.handshake_failures = 0

    def bind(self, host: str, port: int) -> str:
        """Bind and return the bound endpoint, with the real port when ``port`` was 0."""
        address = bind_address(host, port)
        if address.startswith("tcp://["):
            self._sock.setsockopt(zmq.IPV6, 1)
        self._sock.bind(address)
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(last, bytes)
        return last.decode()

    async def run(self, received: Received) -> None:
        """Hand every message to ``received`` until cancelled, yielding to other tasks every
        few milliseconds."""
        loop = asyncio.get_running_loop()
        # ZMQ_FD only says "events may have changed" (edge-triggered): after each wake-up,
        # ZMQ_EVENTS is the truth, and it is read again before the reader sleeps.
        fd = self._sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._running = True
        stopped = loop.create_future()
        secure = self._secure

        def drain() -> None:
            # Runs as the reader callback itself, not in a task woken by it: one turn of the
            # loop less per wake-up (request round trips are mostly such turns).
            if not self._running:
                return
            sock = self._sock
            # The options read here (EVENTS, RCVMORE) are ints; pyzmq types them int | bytes.
            get: Callable[[int], int] = sock.getsockopt  # type: ignore[assignment]
            recv = sock.recv
            clock = time.monotonic
            deadline = clock() + RECEIVE_BUDGET_S
            try:
                while not self.paused and get(_EVENTS) & _POLLIN:
                    # [routing id, batch], both as frames: a frame says whether more parts
                    # follow without a getsockopt (~0.7 us a message less), and the batch may
                    # be megabytes and knows the peer's address.
                    head = recv(_NOBLOCK, copy=False)
                    frame = recv(_NOBLOCK, copy=False) if head.more else None
                    if frame is None or frame.more:
                        while get(_RCVMORE):
                            recv(_NOBLOCK, copy=False)
                        self.dropped += 1
                        continue
                    routing_id = head.bytes
                    if secure and not self._is_bound(routing_id, frame):
                        continue
                    self._guard(received, routing_id, frame)
                    if clock() > deadline:
                        # Budget spent and more may be waiting, which the edge-triggered FD
                        # will not tell again: come back after the timers.
                        loop.call_soon(drain)
                        return
            except zmq.ZMQError as exc:  # the socket itself failed: run() ends with it
                self._running = False
                if not stopped.done():
                    stopped.set_exception(exc)

        loop.add_reader(fd, drain)
        def wake() -> None:
            loop.call_soon(drain)

        self._wake = wake
        loop.call_soon(drain)  # what arrived before the reader was installed
        try:
            await stopped  # until cancelled, or the socket fails
        finally:
            self._running = False
            loop.remove_reader(fd)

    def resume(self) -> None:
        """Read again after ``paused`` (the edge-triggered FD will not say what waits)."""
        self.paused = False
        if self._wake is not None:
            self._wake()

    def _is_bound(self, routing_id: bytes, frame: zmq.Frame) -> bool:
        # The authenticator named the connection after its key; a routing id is only believed
        # when it starts with that node id.
        claimed = routing_id[:NODE_ID_BYTES].hex()
        try:
            key_id = frame.get("User-Id")
        except zmq.ZMQError:
            key_id = None
        if key_id == claimed:
            return True
        self.impostors += 1
        self._quiet.warning(f"impostor:{key_id}", "dropped a frame from node %s that claims "
                            "to be node %s (a member posing as another)", str(key_id)[:8],
                            claimed[:8])
        return False

    def check_handshakes(self) -> None:
        """Log (rate-limited) and count the connections that failed their handshake."""
        for event, value in self._watch.read():
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                continue
            self.handshake_failures += 1
            line = handshake_failure(event, value, secure=self._secure, dialled=None)
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # The other side hung up first: it logs the reason; a guess here would not help.
                _log.debug("%s", line)
            else:
                self._quiet.warning(f"handshake:{event}:{value}", "%s", line)

    def _guard(self, call: Callable[..., None], *args: object) -> None:
        # Nothing one message does may stop the inbox: the node would go deaf for good.
        try:
            call(*args)
        except Exception:
            self.errors += 1
            _log.exception("internal error while handling received data (node keeps running)")

    def close(self) -> None:
        """Close the socket (pending input is dropped)."""
        self._watch.close()
        self._sock.close(linger=0)


class Links:
    """Our DEALERs, one per link id; sends never block."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], *, send_queue: int,
                 close_linger_s: float, curve: Curve | None = None,
                 max_frame_bytes: int | None = None, ping_interval_s: float = 0.25,
                 ping_timeout_s: float = 1.0) -> None:
        self._context = context
        self._ping_ms = max(1, int(ping_interval_s * 1000))
        self._ping_timeout_ms = max(1, int(ping_timeout_s * 1000))
        self._max_frame_bytes = max_frame_bytes
        self._send_queue = send_queue
        self._linger_ms = int(close_linger_s * 1000)
        self._curve = curve
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        self._watches: dict[int, _Watched] = {}
        """Every link's connection events: failed handshakes, and a connection that closed."""
        self._by_reader: dict[zmq.Socket[bytes], int] = {}
        # One poll over every link's monitor per check (a failed NOBLOCK recv costs ~8 us in
        # pyzmq; polling 512 idle monitors ~0.5 ms).
        self._poller = zmq.Poller()
        self._quiet = QuietLog(_log)
        self.backlogs: dict[int, collections.deque[bytes]] = {}
        """Links that were full, with the batches waiting for room (``flush`` moves them on)."""
        self.dropped_batches = 0
        self.handshake_failures = 0

    def dial(self, link: int, endpoint: str, routing_id: bytes) -> bool:
        """Open a DEALER to ``endpoint``; batches queue until the connection is up. False (and
        logged) if the link cannot be opened (bad endpoint, no socket or file left)."""
        try:
            sock: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            self._quiet.warning("socket", "cannot open a link to %s: %s", endpoint, exc)
            return False
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.setsockopt(zmq.SNDHWM, self._send_queue)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        # ZMTP pings, sent and answered by libzmq's I/O threads: a connection whose pings go
        # unanswered is closed (the process is frozen or the path cut), one that answers is
        # alive however busy the Python on either side is. TTL: the peer drops our side too.
        sock.setsockopt(zmq.HEARTBEAT_IVL, self._ping_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self._ping_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self._ping_timeout_ms)
        if endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        if self._curve is not None:
            client_options(sock, self._curve)
        try:
            watch = HandshakeWatch(
                sock, HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._quiet.warning("socket", "cannot open a link to %s: %s", endpoint, exc)
            return False
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            watch.close()
            sock.close(linger=0)
            self._quiet.warning(f"dial:{endpoint}", "cannot dial %s: %s", endpoint, exc)
            return False
        self._socks[link] = sock
        self._watches[link] = _Watched(endpoint, watch)
        self._by_reader[watch.reader] = link
        self._poller.register(watch.reader, zmq.POLLIN)
        return True

    def check(self) -> list[tuple[int, str]]:
        """Log (rate-limited) and count failed handshakes of our links, and return what
        happened to their connections since the last check, in order: ``(link, "up")`` when a
        handshake completed, ``(link, "down")`` when an established connection closed,
        ``(link, "refused")`` when a dial attempt failed (nobody listens there)."""
        changes: list[tuple[int, str]] = []
        if not self._watches:
            return changes
        for reader, _ in self._poller.poll(0):
            link = self._by_reader[reader]
            watched = self._watches[link]
            for event, value in watched.watch.read():
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    watched.connected = True
                    changes.append((link, LINK_EVENTS_UP))
                elif event == zmq.EVENT_DISCONNECTED:
                    if watched.connected:
                        watched.connected = False
                        changes.append((link, LINK_EVENTS_DOWN))
                elif event == zmq.EVENT_CLOSED:
                    # libzmq closes a connecting socket whose connect() failed (refused,
                    # unreachable) before it retries; an established one reports DISCONNECTED.
                    if not watched.connected:
                        changes.append((link, LINK_EVENTS_REFUSED))
                else:
                    self.handshake_failures += 1
                    self._report(watched, event, value)
        return changes

    def _report(self, watched: _Watched, event: int, value: int) -> None:
        line = handshake_failure(event, value, secure=self._curve is not None,
                                 dialled=watched.endpoint)
        if event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            watched.explained = True
            self._quiet.warning(f"handshake:{watched.endpoint}:{event}:{value}", "%s", line)
            return
        # A hang-up without a reason often races with one that has a reason (the other
        # side saw a mechanism mismatch first): only a repeated, unexplained one is told.
        watched.hang_ups += 1
        if watched.hang_ups == UNEXPLAINED_HANG_UPS and not watched.explained:
            self._quiet.warning(f"handshake:{watched.endpoint}", "%s", line)
        else:
            _log.debug("%s", line)

    def _unwatch(self, link: int) -> None:
        watched = self._watches.pop(link, None)
        if watched is not None:
            self._poller.unregister(watched.watch.reader)
            del self._by_reader[watched.watch.reader]
            watched.watch.close()

    def send(self, link: int, batch: bytes) -> bool:
        """Queue one batch on a link, in order; a full link holds it in its backlog. False (and
        counted) if the link is gone or its backlog is full too."""
        sock = self._socks.get(link)
        if sock is None:
            return False
        if self._max_frame_bytes is not None and len(batch) > self._max_frame_bytes:
            # Its receiver's ZeroMQ would drop the connection without a word: say it here.
            self.dropped_batches += 1
            self._quiet.warning("oversized", "a batch of %d bytes for link %d is over "
                              "max_frame_bytes (%d): not sent (a table or body this big needs "
                              "a larger Limits.max_frame_bytes on every node)", len(batch), link,
                              self._max_frame_bytes)
            return False
        backlog = self.backlogs.get(link)
        if backlog is None:
            try:
                _put(sock, batch)
                return True
            except zmq.Again:
                backlog = self.backlogs[link] = collections.deque()
                self._quiet.warning(f"full:{link}", "link %d to %s is full (the peer is slow, "
                                    "frozen or unreachable): holding batches back", link,
                                    self._endpoint(link, sock))
        if len(backlog) >= BACKLOG_BATCHES:
            self.dropped_batches += 1
            self._quiet.warning(f"drop:{link}", "link %d to %s: backlog of %d batches full, "
                                "batch dropped", link, self._endpoint(link, sock),
                                BACKLOG_BATCHES)
            return False
        backlog.append(batch)
        return True

    def flush(self) -> None:
        """Move backlogged batches into links that have room again."""
        for link, backlog in list(self.backlogs.items()):
            sock = self._socks.get(link)
            while backlog and sock is not None:
                try:
                    _put(sock, backlog[0])
                except zmq.Again:
                    break
                backlog.popleft()
            if not backlog or sock is None:
                del self.backlogs[link]

    def _endpoint(self, link: int, sock: zmq.Socket[bytes]) -> str:
        watched = self._watches.get(link)
        if watched is not None and watched.hang_ups:
            return f"{watched.endpoint} (no connection: its handshake fails)"
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode(errors="replace") if isinstance(last, bytes) else str(last)

    def hang_up(self, link: int) -> None:
        """Close a link, giving queued batches (a BYE) ``close_linger_s`` to leave."""
        self._unwatch(link)
        backlog = self.backlogs.pop(link, None)
        if backlog:
            self.dropped_batches += len(backlog)
        sock = self._socks.pop(link, None)
        if sock is not None:
            sock.close(linger=self._linger_ms)

    def close(self) -> None:
        """Close every link (what a full link held back gets one last chance: a BYE)."""
        self.flush()
        for link in list(self._socks):
            self.hang_up(link)


UNEXPLAINED_HANG_UPS = 3
"""Hang-ups without a reason during a link's handshake before one is logged as such."""


class _Watched:
    __slots__ = ("connected", "endpoint", "explained", "hang_ups", "watch")

    def __init__(self, endpoint: str, watch: HandshakeWatch) -> None:
        self.endpoint = endpoint
        self.watch = watch
        self.connected = False
        """The last handshake succeeded and the connection has not closed since."""
        self.hang_ups = 0
        self.explained = False
        """A failure with a reason was logged for this link."""


class HandshakeWatch:
    """Connection events of one socket (handshakes by default), read without blocking
    (ZeroMQ's socket monitor)."""

    _addresses = itertools.count()

    def __init__(self, sock: zmq.Socket[bytes], events: int = HANDSHAKE_EVENTS) -> None:
        # A unique address of our own: the default one is derived from the socket's file
        # descriptor, which is reused as soon as a socket closes.
        address = f"inproc://smartroute-watch-{id(self):x}-{next(self._addresses)}"
        sock.monitor(address, events)
        reader: zmq.Socket[bytes] = sock.context.socket(zmq.PAIR)
        reader.setsockopt(zmq.LINGER, 0)
        reader.connect(address)
        self._sock = sock
        self.reader = reader
        """The socket the events arrive on (to poll)."""

    def read(self) -> list[tuple[int, int]]:
        """The (event, value) pairs that arrived since the last read."""
        events: list[tuple[int, int]] = []
        reader = self.reader
        # Asked first: a read that finds nothing raises zmq.Again, ~10 us of Python exception
        # on every timer tick (a request that met a tick waited for it).
        while reader.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            parsed = parse_monitor_message(reader.recv_multipart(zmq.NOBLOCK))
            events.append((int(parsed["event"]), int(parsed["value"])))
        return events

    def close(self) -> None:
        """Stop watching (the socket itself stays open)."""
        # A socket already closed has no monitor left to disable.
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self.reader.close(linger=0)
