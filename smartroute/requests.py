"""Requests and replies on the node's side: the requests this node waits on, and the repliers
that answer the requests its subscribers receive (a local one resolves a future, a remote one
sends a REPLY through the protocol)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable

from .errors import NoSubscriber, PeerLost, RemoteError, RemoteProtocolError
from .events import PeerDown
from .messages import Message, decode_body, encode_body, type_name_of
from .protocol import ReplyArrived, ReplyStatus

Replier = Callable[[object], None]
"""Answers one request: called once, with the reply body or an ``ErrorReply``."""

SendReply = Callable[[str, int, ReplyStatus, str, bytes], bool]
"""``(origin, request_id, status, type name, body) -> False if the origin is gone``."""

DEADLINES_SLACK = 1024
"""Entries of closed requests the deadline heap may hold beyond twice the open ones before
it is rebuilt from them."""


class ErrorReply:
    """A request's handler failed: ``error`` is what it raised (or why it was not run)."""

    __slots__ = ("error",)

    def __init__(self, error: object) -> None:
        self.error = error


class Pending:
    """A request this node waits on."""

    __slots__ = ("deadline", "future", "nodes", "remaining")

    def __init__(self, future: asyncio.Future[object], deadline: float) -> None:
        self.future = future
        self.deadline = deadline
        """Loop time at which it fails with ``TimeoutError``."""
        self.remaining = 0
        """Nodes (and local subscribers) that may still answer."""
        self.nodes: set[bytes] = set()
        """The remote nodes it went to that may still answer."""


class Requests:
    """Pending requests by id, and the repliers of requests delivered here."""

    def __init__(self, node_id: str, send_reply: SendReply,
                 reply_sent: Callable[[], None]) -> None:
        self._node_id = node_id
        self._send_reply = send_reply
        self._reply_sent = reply_sent
        """Called after a remote reply is queued: it must leave (the node pumps)."""
        self.pending: dict[int, Pending] = {}
        # Random start: a reply meant for an earlier process on the same endpoint cannot
        # resolve one of our requests.
        self._ids = itertools.count(random.getrandbits(62))
        self.handling = 0
        """Requests from peers delivered here and not answered yet (``drain`` waits for
        them)."""
        # One timer for all requests, not one each: an asyncio.timeout per request, with its
        # timer handle made and cancelled, cost ~4 us of a round trip's ~56 us of Python.
        # Entries of closed requests stay in the heap until they come up, or until rebuilt.
        self._deadlines: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def open(self, loop: asyncio.AbstractEventLoop, timeout: float) -> tuple[int, Pending]:
        """A new request id and its pending state, whose future fails with ``TimeoutError``
        after ``timeout`` seconds (``close`` it when done)."""
        request_id = next(self._ids)
        deadline = loop.time() + timeout
        pending = self.pending[request_id] = Pending(loop.create_future(), deadline)
        heapq.heappush(self._deadlines, (deadline, request_id))
        if self._timer is None or deadline < self._timer_at:
            self._arm(loop, deadline)
        return request_id, pending

    def close(self, request_id: int) -> None:
        self.pending.pop(request_id, None)
        if len(self._deadlines) > 2 * len(self.pending) + DEADLINES_SLACK:
            self._deadlines = [(pending.deadline, pending_id)
                               for pending_id, pending in self.pending.items()]
            heapq.heapify(self._deadlines)

    def deadlines_held(self) -> int:
        """Deadlines the heap holds, of open and of closed requests (for tests)."""
        return len(self._deadlines)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop may run a timer a clock resolution early: what it was set for is due too.
        now = max(loop.time(), self._timer_at)
        self._timer = None
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            pending = self.pending.get(request_id)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(TimeoutError())
        if deadlines:
            self._arm(loop, deadlines[0][0])

    def fail_all(self, exc: Exception) -> None:
        """The node closes: every waiting request raises ``exc``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)

    # --- answering requests delivered here ------------------------------------------------------

    def local_replier(self, request_id: int) -> Replier:
        """The replier of a request sent from this node to its own subscriber."""
        def reply(value: object) -> None:
            pending = self.pending.get(request_id)
            if pending is None or pending.future.done():
                return
            if isinstance(value, ErrorReply):
                exc = value.error
                pending.future.set_exception(RemoteError(
                    describe(exc), node_id=self._node_id, error_type=type(exc).__name__))
            else:
                pending.future.set_result(value)
        return reply

    def remote_replier(self, origin: str, request_id: int) -> Replier:
        """The replier of a request from node ``origin``: counted in ``handling`` until
        called."""
        self.handling += 1

        def reply(value: object) -> None:
            self.handling -= 1  # called once: reply_now drops the replier
            if isinstance(value, ErrorReply):
                self.answer(origin, request_id, value.error, error=True)
            else:
                self.answer(origin, request_id, value, error=False)
        return reply

    def answer(self, origin: str, request_id: int, value: object, *, error: bool) -> None:
        """Send ``value`` (or, with ``error``, the exception ``value``) to node ``origin``."""
        if error:
            status, type_name, body = (ReplyStatus.ERROR, type(value).__name__,
                                       describe(value).encode())
        else:
            try:
                status, type_name, body = ReplyStatus.OK, type_name_of(value), encode_body(value)
            except TypeError as exc:
                status, type_name, body = (ReplyStatus.ERROR, "TypeError",
                                           f"reply cannot be encoded: {exc}".encode())
        if self._send_reply(origin, request_id, status, type_name, body):
            self._reply_sent()

    def answer_nobody(self, origin: str, request_id: int) -> None:
        """Tell node ``origin`` its request found no subscriber here (it closed meanwhile)."""
        if self._send_reply(origin, request_id, ReplyStatus.NO_SUBSCRIBER, "", b""):
            self._reply_sent()

    # --- answers to our requests ----------------------------------------------------------------

    def on_reply(self, event: ReplyArrived) -> None:
        reply = event.reply
        pending = self.pending.get(reply.request_id)
        if pending is None or pending.future.done():
            return
        if reply.status == ReplyStatus.OK:
            try:
                pending.future.set_result(decode_body(reply.body))
            except RemoteProtocolError as exc:
                pending.future.set_exception(RemoteError(
                    f"undecodable reply: {exc}", node_id=event.origin))
        elif reply.status == ReplyStatus.ERROR:
            pending.future.set_exception(RemoteError(
                reply.body.decode(errors="replace"), node_id=event.origin,
                error_type=reply.type))
        else:
            pending.remaining -= 1
            pending.nodes.discard(bytes.fromhex(event.origin))
            if pending.remaining <= 0:
                pending.future.set_exception(NoSubscriber(
                    "the subscriber left before the request reached it"))

    def peer_gone(self, event: PeerDown) -> None:
        """Requests waiting on a node that left or died: one fewer may answer."""
        if not self.pending:
            return
        gone = event.peer.node_id
        node = bytes.fromhex(gone)
        for pending in self.pending.values():
            if node in pending.nodes and not pending.future.done():
                pending.nodes.discard(node)
                pending.remaining -= 1
                if pending.remaining <= 0:
                    pending.future.set_exception(PeerLost(
                        f"node {gone[:8]} ({event.peer.endpoint}) is gone ({event.reason}) "
                        f"before it answered", node_id=gone))


def reply_now(msg: Message, value: object, *, error: bool) -> None:
    """Answer the request ``msg`` at once with ``value`` (an exception, with ``error``)."""
    replier = msg._replier
    msg._replier = None
    assert replier is not None
    replier(ErrorReply(value) if error else value)


def describe(exc: object) -> str:
    """How an error travels in a REPLY: ``"Type: message"``."""
    return f"{type(exc).__name__}: {exc}"
