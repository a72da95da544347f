"""The node's ZeroMQ side as one object: the context and its socket budget, the ZAP handler,
the inbox and the links; it carries out what the protocol returns and reports what the
connections did."""

from __future__ import annotations

import asyncio

import zmq

from ..config import Limits, Timings
from ..protocol import Protocol
from .curve import Authenticator, Curve
from .zeromq import Inbox, Links, Received

SOCKETS_PER_PEER = 6
"""ZeroMQ sockets a node may need per ``max_peers``: two links, each a DEALER and a monitor."""


class Driver:
    """Sockets of one node: ``open`` binds the inbox, ``carry_out`` moves the protocol's
    output onto them, ``check`` reports connection changes, ``close`` releases it all."""

    def __init__(self, limits: Limits, timings: Timings, curve: Curve | None) -> None:
        self._limits = limits
        self._timings = timings
        self._curve = curve
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._authenticator: Authenticator | None = None
        self.inbox: Inbox | None = None
        self.links: Links | None = None

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

    async def receive(self, received: Received) -> None:
        """Hand every batch that arrives to ``received`` until cancelled."""
        assert self.inbox is not None
        await self.inbox.run(received)

    def carry_out(self, protocol: Protocol, now: float) -> bool:
        """Dial, send and hang up as the protocol asks; True when a dial failed (the protocol
        then has more output: the hang-up and any ``PeerDown``)."""
        links = self.links
        assert links is not None
        out = protocol.data_to_send()
        failed = False
        for dial in out.dials:
            if not links.dial(dial.link, dial.endpoint, dial.routing_id):
                protocol.dial_failed(dial.link, now)
                failed = True
        for link, batches in out.sends.items():
            for batch in batches:
                links.send(link, batch)
        for link in out.hangups:
            links.hang_up(link)
        return failed

    def check(self, protocol: Protocol, now: float) -> bool:
        """Tell the protocol what the connections did since the last check (handshakes done,
        connections closed, dials refused) and move backlogged batches on; True when
        anything changed."""
        if self.inbox is not None:
            self.inbox.check_handshakes()
        if self.links is None:
            return False
        self.links.flush()
        changes = self.links.check()
        for link, what in changes:
            protocol.link_changed(link, what, now)
        return bool(changes)

    def pace(self, hold: bool) -> None:
        """Stop reading the inbox (``hold``), or read again."""
        inbox = self.inbox
        if inbox is None:
            return
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

    async def close(self) -> None:
        """Close every socket; waits up to ``close_linger_s`` for queued batches (the BYEs)
        to leave, off the loop thread."""
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
