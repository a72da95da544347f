"""Backpressure at the sender: a peer that stops reading makes ``send_to`` wait, then raise
``LinkFull``; memory stays bounded and nothing that ``send_to`` accepted is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from smartroute import LinkFull, ReceiveMode
from smartroute.testing import async_wait_until, loopback_node, rss_bytes
from smartroute.testing.cluster import AgentProcess

pytestmark = pytest.mark.processes

CLUSTER = "backpressure"
MIB = 1024 * 1024
BODY = "x" * 1000
SENDS_PER_TURN = 50
"""Messages queued per loop turn: they leave as one batch per link."""

MAX_SENDS = 2_000_000
"""Bound of the flood loop; the link fills long before (measured: after 50,000 messages)."""

FLOOD_LIMIT_S = 60.0
SEND_TIMEOUT_S = 0.5
RSS_GROWTH_BOUND_MB = 100
"""What a full link may cost the sender: ZeroMQ's queue of ``send_queue_messages`` (1,000)
batches of ~50 KB each plus the backlog of one loop turn. Measured: 48 MB (490 MB when the
queue held 10,000 batches)."""


async def test_a_frozen_peer_makes_send_to_raise_link_full_and_loses_nothing(
        tmp_path: Path) -> None:
    # The peer must stay "alive" for the whole flood: failure detection is not under test here.
    sender = loopback_node(cluster=CLUSTER, timings=None, suspect_after_s=60, dead_after_s=60,
                           send_timeout_s=SEND_TIMEOUT_S)
    await sender.start()
    frozen = AgentProcess(cluster=CLUSTER, seeds=[sender.endpoint],
                          log_path=tmp_path / "frozen.log")
    try:
        frozen.call("subscribe", name="sink", reply="count")
        await sender.wait_for("sink")
        os.kill(frozen.pid, signal.SIGSTOP)
        before = rss_bytes(os.getpid()) / MIB
        accepted = 0
        started = time.monotonic()
        with pytest.raises(LinkFull) as raised:
            while accepted < MAX_SENDS and time.monotonic() - started < FLOOD_LIMIT_S:
                waited = time.monotonic()
                assert await sender.send_to(BODY, ReceiveMode.EQ, "sink") == 1
                accepted += 1
                if accepted % SENDS_PER_TURN == 0:
                    await asyncio.sleep(0)
        assert time.monotonic() - waited >= SEND_TIMEOUT_S
        grown = rss_bytes(os.getpid()) / MIB - before
        assert raised.value.node_id == frozen.node_id
        assert "nothing was sent" in str(raised.value)
        assert grown < RSS_GROWTH_BOUND_MB, f"{grown:.0f} MB for {accepted} messages"
        stats = sender.stats()
        assert stats["link_full"] == 1 and stats["dropped_batches"] == 0

        os.kill(frozen.pid, signal.SIGCONT)
        # Everything send_to accepted arrives, in full, once the peer reads again.
        await async_wait_until(lambda: frozen.call("counts")["sink"] == accepted, timeout=60,
                               what=f"all {accepted} accepted messages")
        assert await sender.send_to(BODY, ReceiveMode.EQ, "sink") == 1
        await async_wait_until(lambda: frozen.call("counts")["sink"] == accepted + 1,
                               timeout=10)
        assert sender.stats()["dropped_batches"] == 0
        print(f"accepted {accepted} messages ({accepted // SENDS_PER_TURN} batches) before "
              f"LinkFull; sender RSS grew {grown:.0f} MB")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.close()
        await sender.close()


async def test_any_goes_to_a_subscriber_whose_link_has_room(tmp_path: Path) -> None:
    sender = loopback_node(cluster=CLUSTER, timings=None, suspect_after_s=60, dead_after_s=60,
                           send_timeout_s=SEND_TIMEOUT_S)
    await sender.start()
    frozen = AgentProcess(cluster=CLUSTER, seeds=[sender.endpoint],
                          log_path=tmp_path / "frozen.log")
    healthy = AgentProcess(cluster=CLUSTER, seeds=[sender.endpoint],
                           log_path=tmp_path / "healthy.log")
    try:
        frozen.call("subscribe", name="sink", reply="count")
        for agent in (frozen, healthy):
            agent.call("subscribe", name="svc", reply="count")
        await sender.wait_for("svc", count=2)
        await sender.wait_for("sink")
        os.kill(frozen.pid, signal.SIGSTOP)
        with pytest.raises(LinkFull):
            for i in range(MAX_SENDS):
                await sender.send_to(BODY, ReceiveMode.EQ, "sink")
                if i % SENDS_PER_TURN == 0:
                    await asyncio.sleep(0)
        # The frozen peer's link is full: every ANY goes to the one that reads.
        for _ in range(20):
            assert await sender.send_to("job", ReceiveMode.ANY, "svc") == 1
        await async_wait_until(lambda: healthy.call("counts")["svc"] == 20, timeout=10,
                               what="20 jobs on the healthy peer")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.close()
        healthy.close()
        await sender.close()
