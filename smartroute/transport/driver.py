"""Driving the protocol with ZeroMQ and the event loop: the context and its socket budget, the
ZAP handler, the inbox and the links, the timers, and the pump that carries out what the
protocol returns and hands its events to the node's dispatcher."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import NamedTuple

import zmq

from ..config import Limits, Timings
from ..protocol import Protocol, ProtocolEvent
from .curve import Authenticator, Curve
from .zeromq import Inbox, Links

_log = logging.getLogger("smartroute.node")

SOCKETS_PER_PEER = 6
"""ZeroMQ sockets a node may need per ``max_peers``: two links, each a DEALER and a monitor."""


class Hands(NamedTuple):
    """What the driver hands the protocol's events to (the node's dispatcher)."""

    dispatch: Callable[[list[ProtocolEvent]], bool]
    """Hand events to user code; True when some wait for the next loop turn."""
    backlog: Callable[[], bool]
    """Events wait from an earlier turn."""
    holds_inbox: Callable[[], bool]
    """User code is behind: read nothing more for now."""
    on_tick: Callable[[], None]
    """Called after every tick (stuck handlers are released there)."""


class Driver:
    """One node's sockets and timers: ``open`` binds the inbox, ``start`` runs the protocol
    on them, ``pump`` carries out its output, ``close`` releases it all."""

    def __init__(self, limits: Limits, timings: Timings, curve: Curve | None,
                 stats: collections.Counter[str], name: str) -> None:
        self._limits = limits
        self._timings = timings
        self._curve = curve
        self._hands: Hands | None = None
        self._stats = stats
        """The node's counters (``internal_errors`` of the timers)."""
        self._name = name
        """For log lines."""
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._authenticator: Authenticator | None = None
        self.inbox: Inbox | None = None
        self.links: Links | None = None
        self.protocol: Protocol | None = None
        """What it drives (set by ``start``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        """The inbox reader and the timers."""
        self.pump_scheduled = False
        """A ``pump`` is scheduled with ``call_soon``."""
        self.pumping = False
        """``pump`` is running: what user code queues meanwhile leaves at its end."""
        self._acks_scheduled = False
        """``_send_acks`` is scheduled with ``call_soon``."""

    def hand_to(self, hands: Hands) -> None:
        """Where the protocol's events go (before ``start``)."""
        self._hands = hands

    def open(self, host: str, port: int) -> str:
        """Bind the inbox; returns the bound endpoint (``OSError`` if it cannot bind)."""
        self._context = context = zmq.Context()
        # The protocol opens at most 2 * max_peers links (peers, plus dials not yet answered),
        # each a DEALER and the two sockets of its connection monitor; plus the inbox and its
        # monitor, the authenticator and some slack.
        context.set(zmq.MAX_SOCKETS, SOCKETS_PER_PEER * self._limits.max_peers + 64)
        if self._curve is not None:
            # ZAP must answer before the first peer connects.
            self._authenticator = Authenticator(context)
            self._authenticator.start()
        limits, timings = self._limits, self._timings
        self.inbox = Inbox(context, max_frame_bytes=limits.max_frame_bytes,
                           receive_queue=limits.receive_queue_messages, curve=self._curve)
        try:
            bound = self.inbox.bind(host, port)
        except zmq.ZMQError as exc:
            raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
        self.links = Links(context, send_queue=limits.send_queue_messages,
                           close_linger_s=timings.close_linger_s, curve=self._curve,
                           max_frame_bytes=limits.max_frame_bytes,
                           ping_interval_s=timings.ping_interval_s,
                           ping_timeout_s=timings.ping_timeout_s)
        return bound

    def start(self, protocol: Protocol) -> None:
        """Run ``protocol`` on the sockets: read the inbox, run the timers."""
        assert self.inbox is not None
        self.protocol = protocol
        self._loop = loop = asyncio.get_running_loop()
        # The first tick: from now on a blocked loop is measured, even before the timer ran.
        protocol.tick(loop.time())
        self._tasks = [
            asyncio.create_task(self.inbox.run(self._received), name="smartroute-rx"),
            asyncio.create_task(self._run_timers(), name="smartroute-timers"),
        ]
        for task in self._tasks:
            task.add_done_callback(_task_ended)

    def _received(self, routing_id: bytes, frame: zmq.Frame) -> None:
        protocol = self.protocol
        assert protocol is not None and self._loop is not None
        protocol.receive(routing_id, frame.buffer, self._loop.time(),
                         lambda: _peer_address(frame))
        self.pump()

    async def _run_timers(self) -> None:
        protocol, loop = self.protocol, self._loop
        assert protocol is not None and loop is not None
        interval = self._timings.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                # Connections first: what they did while this loop was blocked (a handshake
                # done, a connection back) must count before the protocol judges anyone.
                self._check(protocol, loop.time())
                protocol.tick(loop.time())
                self.pump()
                if self._hands is not None:
                    self._hands.on_tick()
            except Exception:
                # A timer must never stop: heartbeats and death detection live here.
                self._stats["internal_errors"] += 1
                _log.exception("%s: internal error in the timers (node keeps running)",
                               self._name)

    def schedule_pump(self) -> None:
        """Pump at the loop's next turn (unless a pump is due anyway)."""
        if not (self.pump_scheduled or self.pumping):
            self.pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.pump)

    def send_now(self) -> None:
        """Carry out the protocol's output now (dials, batches, hang-ups), leaving its events
        to the next pump."""
        protocol = self.protocol
        if protocol is not None and self.links is not None:
            self._carry_out(protocol)

    def pump(self) -> None:
        """Carry out the protocol's output (dials, one batch per link, hang-ups), then hand
        its events to user code; what user code sent meanwhile (replies first of all) leaves
        in the same turn. An ACK due at once rides in that output, or leaves alone at the
        loop's next turn (with the next request, as often as not): a lone ACK batch sent just
        before a reply or a request cost that round trip a wake-up on the other side."""
        self.pump_scheduled = False
        protocol = self.protocol
        if protocol is None or self.links is None:
            return
        if protocol.has_output():
            self._carry_out(protocol, lone_acks=False)
        events = protocol.events_received()
        hands = self._hands
        assert hands is not None, "hand_to() before start()"
        if events or hands.backlog():
            self.pumping = True
            try:
                behind = hands.dispatch(events)
            finally:
                self.pumping = False
            if behind:
                # Budget spent (slow sync handlers): the rest after the timers and sends.
                self.schedule_pump()
            self.pace_inbox()
            if protocol.has_output():
                self._carry_out(protocol, lone_acks=False)
        if protocol.acks_waiting() and not self._acks_scheduled:
            self._acks_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._send_acks)

    def _send_acks(self) -> None:
        self._acks_scheduled = False
        self.send_now()

    def _carry_out(self, protocol: Protocol, *, lone_acks: bool = True) -> None:
        """Dial, send and hang up as the protocol asks."""
        links = self.links
        assert links is not None and self._loop is not None
        out = protocol.data_to_send(lone_acks)
        for dial in out.dials:
            if not links.dial(dial.link, dial.endpoint, dial.routing_id):
                protocol.dial_failed(dial.link, self._loop.time())
                self.schedule_pump()  # the hang-up and any PeerDown go out next
        for link, batches in out.sends.items():
            for batch in batches:
                links.send(link, batch)
        for link in out.hangups:
            links.hang_up(link)

    def _check(self, protocol: Protocol, now: float) -> None:
        """Tell the protocol what the connections did since the last check (handshakes done,
        connections closed, dials refused); move backlogged batches on."""
        if self.inbox is not None:
            self.inbox.check_handshakes()
        if self.links is None:
            return
        self.links.flush()
        for link, what in self.links.check():
            protocol.link_changed(link, what, now)

    def pace_inbox(self) -> None:
        """Read the inbox while user code keeps up; wait while it is behind (what waits
        stays in ZeroMQ, unacknowledged: senders' windows hold it back)."""
        inbox = self.inbox
        if inbox is None:
            return
        hold = self._hands is not None and self._hands.holds_inbox()
        if hold and not inbox.paused:
            inbox.paused = True
        elif not hold and inbox.paused:
            inbox.resume()

    def stats(self) -> dict[str, int]:
        """Frames the transport dropped or refused."""
        stats: dict[str, int] = {}
        if self.inbox is not None:
            # Messages that were not [routing id, batch], and handling that failed inside.
            stats["malformed_frames"] = self.inbox.dropped
            stats["internal_errors"] = self.inbox.errors
            stats["impostor_frames"] = self.inbox.impostors
            stats["handshake_failures"] = self.inbox.handshake_failures
        if self.links is not None:
            stats["dropped_batches"] = self.links.dropped_batches
            stats["handshake_failures"] = (stats.get("handshake_failures", 0)
                                           + self.links.handshake_failures)
        return stats

    async def stop(self) -> None:
        """Stop reading and the timers."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Close every socket; waits up to ``close_linger_s`` for queued batches (the BYEs)
        to leave, off the loop thread."""
        await self.stop()
        if self.inbox is not None:
            self.inbox.close()
        if self.links is not None:
            self.links.close()
        if self._context is not None:
            linger_ms = int(self._timings.close_linger_s * 1000)
            await asyncio.get_running_loop().run_in_executor(None, self._destroy, linger_ms)

    def _destroy(self, linger_ms: int) -> None:
        assert self._context is not None
        if self._authenticator is not None:
            self._authenticator.stop()  # joins its thread; its socket must close before destroy
        self._context.destroy(linger_ms)


def _task_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("smartroute task %s died: the node no longer works", task.get_name(),
                   exc_info=task.exception())


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None
