"""Helpers for testing services built on smartroute (and smartroute itself).

- ``FAST_TIMINGS``: timings that make a mesh converge and detect deaths in a fraction of a
  second, for tests.
- ``wait_until``: poll a condition with a deadline instead of sleeping and hoping.
- ``loopback_node`` / ``loopback_sync_node``: a node on 127.0.0.1 that meets only the seeds it
  is given (no mDNS), with ``FAST_TIMINGS``.
- ``free_port``: a port nobody listens on.
- ``rss_bytes`` / ``peak_rss_bytes``: a process's resident memory, from ``/proc``.
- ``AgentProcess`` (in ``smartroute.testing.cluster``): a node in its own process, driven over
  stdin/stdout, that a test can SIGKILL or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from ..node import Node
from ..sync import Node as SyncNode

_T = TypeVar("_T")

FAST_TIMINGS: dict[str, float] = {
    "heartbeat_interval_s": 0.05,
    "suspect_after_s": 0.15,
    "dead_after_s": 5.0,
    "ping_interval_s": 0.05,
    "ping_timeout_s": 0.2,
    "unreachable_after_s": 0.1,
    "digest_interval_s": 0.2,
    "seed_retry_s": 0.2,
    "tick_interval_s": 0.01,
    "snapshot_retry_s": 0.2,
    "close_linger_s": 0.2,
}
"""Deaths detected in ~0.3 s (a frozen or cut-off peer; a killed one in ~0.05 s): for loopback
tests. A busy loop is still given seconds (``dead_after_s``) before it counts as stuck."""

POLL_INTERVAL_S = 0.01
"""How often ``wait_until`` checks its condition."""


def wait_until(condition: Callable[[], _T], timeout: float = 5.0, *,
               interval: float = POLL_INTERVAL_S, what: str = "condition") -> _T:
    """Poll ``condition`` until it returns a truthy value and return it; ``TimeoutError``
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s (last value {value!r})")
        time.sleep(interval)


async def async_wait_until(condition: Callable[[], _T | Awaitable[_T]], timeout: float = 5.0, *,
                           interval: float = POLL_INTERVAL_S, what: str = "condition") -> _T:
    """``wait_until`` for a running event loop; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


LOOPBACK = "127.0.0.1"


def _loopback_options(seeds: tuple[str, ...], timings: Mapping[str, float] | None,
                      options: dict[str, Any]) -> dict[str, Any]:
    # ``options`` win over ``timings``: a test that needs one slow timing names just that one.
    return {"discovery": list(seeds), "host": LOOPBACK, **(timings or {}), **options}


def loopback_node(*seeds: str, cluster: str = "test",
                  timings: Mapping[str, float] | None = FAST_TIMINGS, **options: Any) -> Node:
    """A node (not started) bound to 127.0.0.1 on a free port that meets only ``seeds`` (no
    mDNS), with ``timings`` (``None``: the defaults); ``options`` go to ``Node`` as they are
    and override ``timings``."""
    return Node(cluster, **_loopback_options(seeds, timings, options))


def loopback_sync_node(*seeds: str, cluster: str = "test",
                       timings: Mapping[str, float] | None = FAST_TIMINGS,
                       **options: Any) -> SyncNode:
    """``loopback_node`` for the blocking facade (``smartroute.sync.Node``)."""
    return SyncNode(cluster, **_loopback_options(seeds, timings, options))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (nothing listens there now)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ProcessLookupError(f"no {field} for pid {pid} (it exited?)")


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` now (``VmRSS``; Linux)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory process ``pid`` ever had (``VmHWM``; Linux)."""
    return _status_kib(pid, "VmHWM") * 1024


REAP_TIMEOUT_S = 5.0
"""How long ``reap`` waits for a process to exit before it SIGKILLs it."""


def reap(process: subprocess.Popen[Any], log: IO[bytes] | int | None = None,
         timeout: float = REAP_TIMEOUT_S) -> None:
    """Wait for ``process`` to exit (SIGKILL by its PID after ``timeout``), then close its pipes
    and ``log`` (a file the caller opened for its stderr). Safe to call twice."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if log is not None and not isinstance(log, int):
        log.close()


__all__ = ["FAST_TIMINGS", "LOOPBACK", "POLL_INTERVAL_S", "async_wait_until", "free_port",
           "loopback_node", "loopback_sync_node", "peak_rss_bytes", "reap", "rss_bytes",
           "wait_until"]
