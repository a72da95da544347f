"""smartroute/discovery/static.py: seeds hinted at start and again every ``retry_s``, on a real
event loop (no network: hints are only calls)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time

import pytest

from smartroute.discovery.base import LocalNode
from smartroute.discovery.static import StaticDiscovery
from smartroute.errors import UsageError
from smartroute.testing import async_wait_until

ME = LocalNode("unit", "ab" * 16, 7001, "me")
RETRY_S = 0.05


async def test_every_seed_is_hinted_at_start_and_again_every_retry() -> None:
    seeds = ["tcp://127.0.0.1:7001", "tcp://[::1]:7002"]
    hints: list[tuple[float, str]] = []
    discovery = StaticDiscovery(seeds, retry_s=RETRY_S)
    began = time.monotonic()
    await discovery.start(lambda seed: hints.append((time.monotonic(), seed)), ME)
    try:
        await async_wait_until(lambda: len(hints) >= 6, timeout=2.0, what="three rounds")
    finally:
        await discovery.close()
    # Round by round, in order: the first one at once (the loop's next turn), then one per
    # retry_s (asyncio.sleep never wakes early).
    rounds = [hints[i:i + 2] for i in range(0, 6, 2)]
    assert [[seed for _, seed in r] for r in rounds] == [seeds] * 3
    assert rounds[0][0][0] - began < RETRY_S
    for earlier, later in itertools.pairwise(rounds):
        assert later[0][0] - earlier[0][0] >= RETRY_S * 0.9  # monotonic vs loop clock rounding


async def test_close_stops_hinting_and_may_be_called_twice() -> None:
    hints: list[str] = []
    discovery = StaticDiscovery(["tcp://127.0.0.1:7001"], retry_s=RETRY_S)
    await discovery.start(hints.append, ME)
    await async_wait_until(lambda: hints, timeout=2.0, what="the first hint")
    await discovery.close()
    count = len(hints)
    await asyncio.sleep(3 * RETRY_S)  # nothing to wait for: proving that nothing comes
    assert len(hints) == count
    await discovery.close()


@pytest.mark.parametrize("bad", ["127.0.0.1:7001", "tcp://127.0.0.1", "udp://h:1", ""])
def test_a_bad_seed_is_a_usage_error_at_construction(bad: str) -> None:
    with pytest.raises(UsageError, match="tcp://host:port"):
        StaticDiscovery(["tcp://127.0.0.1:7001", bad], retry_s=RETRY_S)


async def test_a_host_name_is_resolved_once_at_start() -> None:
    hints: list[str] = []
    discovery = StaticDiscovery(["tcp://localhost:7001"], retry_s=RETRY_S)
    await discovery.start(hints.append, ME)
    try:
        await async_wait_until(lambda: hints, timeout=2.0, what="the first hint")
    finally:
        await discovery.close()
    # /etc/hosts: localhost is 127.0.0.1 or ::1, never a DNS query off the machine.
    assert hints[0] in ("tcp://127.0.0.1:7001", "tcp://[::1]:7001")


async def test_a_name_that_does_not_resolve_is_hinted_as_written(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real failed lookup would ask the machine's DNS server (off loopback): the loop's
    # resolver fails the way getaddrinfo does instead.
    async def no_such_name(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    seed = "tcp://no-such-host.invalid:7001"
    hints: list[str] = []
    discovery = StaticDiscovery([seed], retry_s=RETRY_S)
    with caplog.at_level(logging.WARNING, logger="smartroute.discovery"):
        await discovery.start(hints.append, ME)
    try:
        await async_wait_until(lambda: hints, timeout=2.0, what="the first hint")
    finally:
        await discovery.close()
    assert hints[0] == seed
    assert f"cannot resolve seed {seed}: [Errno -2] Name or service not known" in caplog.text


async def test_an_ip_literal_is_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_lookup(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("an IP literal was looked up")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_lookup)
    hints: list[str] = []
    discovery = StaticDiscovery(["tcp://127.0.0.1:7001", "tcp://[::1]:7001"], retry_s=RETRY_S)
    await discovery.start(hints.append, ME)
    try:
        await async_wait_until(lambda: len(hints) >= 2, timeout=2.0, what="the first round")
    finally:
        await discovery.close()
    assert hints[:2] == ["tcp://127.0.0.1:7001", "tcp://[::1]:7001"]
