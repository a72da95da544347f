"""Every queue of a node is bounded, and what it drops is counted and logged once.

README "Bounded queues" is the policy; this file holds the in-process proofs, the process ones
(a stuck handler across nodes, a frozen peer) are in test_hostile_processes.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import zmq

from smartroute import Limits, Message, PeerUp, ReceiveMode, RemoteError
from smartroute.testing import async_wait_until, loopback_node


async def test_a_sync_handler_returning_awaitables_is_bounded_like_an_async_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """``lambda msg: coroutine(msg)`` is not an async function, but what it returns is work
    waiting on the loop: at most ``handler_queue_size`` of them per subscriber at a time."""
    node = loopback_node(limits=Limits(handler_queue_size=5))
    await node.start()
    try:
        release = asyncio.Event()
        finished: list[object] = []

        async def slow(msg: Message) -> str:
            await release.wait()
            finished.append(msg.body)
            return "done"

        def wrapped(msg: Message) -> Any:  # a plain function that returns an awaitable
            return slow(msg)

        await node.subscribe("svc:wrapped", wrapped)
        caplog.set_level(logging.WARNING, logger="smartroute")
        for i in range(20):
            assert await node.send_to(i, ReceiveMode.EQ, "svc:wrapped") == 1
        with pytest.raises(RemoteError, match="queue full"):
            await node.request("svc:wrapped", "one more", mode=ReceiveMode.EQ, timeout=1.0)
        stats = node.stats()
        assert stats["delivered"] == 5
        assert stats["queue_full"] == 16 and stats["dropped"] >= 16
        full = [r for r in caplog.records if "full" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.WARNING
        release.set()
        await async_wait_until(lambda: len(finished) == 5, what="the five run")
        assert sorted(finished) == [0, 1, 2, 3, 4]  # type: ignore[type-var]
        # Room again once they finished.
        assert await node.request("svc:wrapped", 99, mode=ReceiveMode.EQ, timeout=1.0) == "done"
    finally:
        await node.close()


async def test_an_events_iterator_that_falls_behind_drops_the_oldest_counted_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    a = loopback_node(limits=Limits(event_queue_size=3))
    await a.start()
    try:
        caplog.set_level(logging.WARNING, logger="smartroute")
        stream = a.events()
        for i in range(10):
            await a.subscribe(f"name:{i}", print)  # one SubscriberUp each, nobody reading
        # Reported with the rest of the loop turn (subscribe's deltas leave together).
        await async_wait_until(lambda: stream.dropped >= 7, timeout=5, what="the drops")
        assert stream.dropped == 7
        assert a.stats()["events_dropped"] == 7
        names = [event.subscriber.name async for event in _take(stream, 3)]  # type: ignore[attr-defined]
        assert names == ["name:7", "name:8", "name:9"]  # the newest survive
        dropped = [r for r in caplog.records if "events" in r.getMessage()]
        assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
        b = loopback_node(a.endpoint)
        await b.start()
        try:
            event = await asyncio.wait_for(anext(stream), 5)  # still delivering after drops
            assert isinstance(event, PeerUp)
        finally:
            await b.close()
    finally:
        await a.close()


async def _take(stream: Any, n: int) -> Any:
    for _ in range(n):
        yield await asyncio.wait_for(anext(stream), 5)


async def test_a_frame_over_max_frame_bytes_never_reaches_the_decoder() -> None:
    """ZeroMQ's MAXMSGSIZE refuses it (and drops that connection); the sender reconnects and
    what it sends next is read again."""
    node = loopback_node(limits=Limits(max_frame_bytes=1024))
    await node.start()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(node.endpoint)
        sock.send(b"\xc1" * 1025)  # garbage our decoder would count, were it let through
        await asyncio.sleep(0.3)  # an observation window: it would have been counted by now
        assert node.stats()["frames_received"] == 0
        for _ in range(50):  # the socket reconnects (100 ms) and is heard again
            sock.send(b"\xc1" * 1024)
            await asyncio.sleep(0.02)
            if node.stats()["malformed_frames"]:
                break
        stats = node.stats()
        assert stats["malformed_frames"] >= 1
        assert stats["frames_received"] == stats["malformed_frames"]
    finally:
        ctx.destroy(linger=0)
        await node.close()
