"""Issue 10's promises, measured: how soon a SIGKILLed or a frozen (SIGSTOP) node is declared
dead, and how many messages are lost across a sender's loop stall and across a TCP connection
reset under load.

Every node is a ``worker_smartroute.py`` process with default timings, on loopback. A loss is
the figure here, not a failed run: each run counts what the receiver got against what the
sender's ``send_to`` accepted, after waiting for the stragglers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from common import Bench, Worker, row
from workloads_mesh import NODE, node_pair, settle

from smartroute.testing import wait_until

JOIN_WAIT_S = 15.0
"""Longest a fresh node may take to be alive at both survivors."""

KILL_WAIT_S = 15.0
"""Longest a SIGKILLed node may take to be declared dead (goal: < 100 ms)."""

STOP_WAIT_S = 30.0
"""Longest a SIGSTOPped node may take to be declared dead (goal: < 2 s; past
``dead_after_s`` = 20 s a silent loop is dead anyway)."""

DOWN_POLL_S = 0.02
"""How often the survivors are asked for the PeerDown events they saw: only the wait, not the
figure (each event is stamped by the survivor itself when its node reports it)."""

STALLS_S = (2.0, 5.0)
"""The sender's loop stalls measured (``time.sleep`` on its loop between two sends)."""

STALL_SENDS = (20_250, 20_000)
"""Sends before and after the stall: 20,250 leaves 250 records of the last turn queued, unsent,
across the stall."""

ARRIVAL_WAIT_S = 20.0
"""Longest wait for the last message of a stall or reset run once the sender is done."""

RESET_COUNT = (200_000, 100_000)
"""Messages of one reset run (full, quick): ~1 s of flood, the reset comes in the middle."""

RESET_AFTER_S = 0.1
"""The first reset is made this long after the flood started."""

RESET_EVERY_S = 0.05
"""Then one more this often: ~20 batches in flight at each."""

RESETS_PER_RUN = 8
"""Connection resets per run (the flood lasts ~0.8 s: most come while it runs)."""

SS_TIMEOUT_S = 10.0
"""Longest ``ss -K`` may take."""

LOST = "messages"


def _runs(bench: Bench, full: int) -> int:
    return min(bench.scale.runs, full) if not bench.scale.quick else max(1, bench.scale.runs - 1)


# --- failure detection --------------------------------------------------------------------------


def _death_times(bench: Bench, signum: int, wait_s: float) -> tuple[list[float], list[float]]:
    """Per run: seconds from ``signum`` sent to a node until each of two survivors reported it
    down (``PeerDown``), and until the last of them did."""
    each: list[float] = []
    last: list[float] = []
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(bench.worker(NODE))
        second = stack.enter_context(bench.worker(NODE, "--seed", first.ready["endpoint"]))
        survivors = [first, second]
        for survivor in survivors:
            survivor.call("watch")
        for _ in range(bench.scale.runs):
            victim = stack.enter_context(bench.worker(NODE, "--seed", first.ready["endpoint"]))
            victim_id = victim.ready["node_id"]
            wait_until(lambda: all(victim_id in s.call("peers")  # noqa: B023 - called at once
                                   for s in survivors), JOIN_WAIT_S, what="the victim joined")
            sent = time.monotonic()
            os.kill(victim.pid, signum)

            def downs(victim_id: str = victim_id) -> list[float] | None:
                found = [[one["t"] for one in s.call("downs") if one["node_id"] == victim_id]
                         for s in survivors]
                return None if not all(found) else [times[0] for times in found]

            wait_until(lambda: downs() is not None, wait_s, interval=DOWN_POLL_S,
                       what=f"every survivor reported the victim down after signal {signum}")
            times = downs()
            assert times is not None
            each += [t - sent for t in times]
            last.append(max(times) - sent)
            victim.kill()  # SIGKILL ends a stopped process too
    return each, last


def failure_detection(bench: Bench) -> None:
    """6. SIGKILL, then SIGSTOP, of one of three nodes until each other node reports it down."""
    workload = "failure detection"
    each, last = _death_times(bench, signal.SIGKILL, KILL_WAIT_S)
    bench.add(row(workload, "smartroute", "SIGKILL to dead everywhere", last, "s"),
              row(workload, "smartroute", "SIGKILL to PeerDown, each peer", each, "s"))
    each, last = _death_times(bench, signal.SIGSTOP, STOP_WAIT_S)
    bench.add(row(workload, "smartroute", "SIGSTOP to dead everywhere", last, "s"),
              row(workload, "smartroute", "SIGSTOP to PeerDown, each peer", each, "s"))


# --- losses -------------------------------------------------------------------------------------


def _counters(worker: Worker, keys: tuple[str, ...]) -> dict[str, int]:
    stats = worker.call("stats")
    return {key: int(stats.get(key, 0)) for key in keys}


SENDER_KEYS = ("lost_messages", "retransmitted_batches", "link_full")
RECEIVER_KEYS = ("duplicate_batches", "gap_batches", "resend_requests", "dropped",
                 "unknown_sender_records")


def _all_counters(sender: Worker, receiver: Worker) -> dict[str, int]:
    """The sender's and the receiver's counters (absent ones, in older code, as 0) and the
    PeerDown events both saw."""
    return {**_counters(sender, SENDER_KEYS),
            **{f"rx_{k}": v for k, v in _counters(receiver, RECEIVER_KEYS).items()},
            "peer_downs": len(sender.call("downs")) + len(receiver.call("downs"))}


def _lost_run(sender: Worker, receiver: Worker, count: int, send: Callable[[], Any]) -> dict[
        str, int]:
    """Arm ``receiver`` for ``count``, run ``send`` (which makes the sender send them), and
    count what arrived: lost, delivered twice, and the counters' growth on both sides."""
    receiver.call("arm", count=count)
    for one in (sender, receiver):
        one.call("watch")
    before = _all_counters(sender, receiver)
    send()
    got = receiver.call("collect", timeout=ARRIVAL_WAIT_S, answer_within_s=ARRIVAL_WAIT_S + 10)
    if got["received"] < count:
        settle([receiver])
    received = receiver.call("collect", timeout=0)["received"]
    after = _all_counters(sender, receiver)
    return {"lost": max(0, count - received), "extra": max(0, received - count),
            **{key: after[key] - before[key] for key in after}}


def _loss_rows(bench: Bench, workload: str, runs: list[dict[str, int]]) -> None:
    bench.add(row(workload, "smartroute", "messages lost", [r["lost"] for r in runs], LOST),
              row(workload, "smartroute", "messages delivered twice",
                  [r["extra"] for r in runs], LOST),
              row(workload, "smartroute", "retransmitted batches",
                  [r["retransmitted_batches"] for r in runs], "batches"),
              row(workload, "smartroute", "lost_messages counted by the sender",
                  [r["lost_messages"] for r in runs], LOST),
              row(workload, "smartroute", "peer downs (both sides)",
                  [r["peer_downs"] for r in runs], "events"))


def stall(bench: Bench) -> None:
    """Messages lost across a 2 s and a 5 s stall of the sender's loop (goal: 0)."""
    before, after = STALL_SENDS
    for stall_s in STALLS_S:
        a, b = node_pair(bench)
        with a, b:
            b.call("subscribe", name="sink", handler="count")
            a.call("wait_for", name="sink")
            runs = []
            for _ in range(_runs(bench, 3)):
                runs.append(_lost_run(a, b, before + after, lambda a=a, stall_s=stall_s: a.call(
                    "stall_flood", target="sink", before=before, after=after, stall_s=stall_s,
                    answer_within_s=stall_s + 60)))
        _loss_rows(bench, f"sender loop stall, {stall_s:.0f} s", runs)


def reset_connections(port: int) -> int:
    """Abort every TCP connection to 127.0.0.1:``port`` (``ss -K``: both ends see a reset);
    returns how many were."""
    done = subprocess.run(["ss", "-K", "-tnH", "dst", "127.0.0.1", "dport", "=", str(port)],
                          capture_output=True, text=True, timeout=SS_TIMEOUT_S, check=True)
    return len([line for line in done.stdout.splitlines() if line.strip()])


def reset(bench: Bench) -> None:
    """Messages lost when the sender's TCP connection to the receiver is reset
    (``RESETS_PER_RUN`` times) in the middle of a flood (goal: 0), and the batches resent."""
    workload = "TCP connection reset under load"
    if shutil.which("ss") is None:
        bench.skip(workload, "no `ss` (iproute2) here")
        return
    count = bench.scale.count(*RESET_COUNT)
    a, b = node_pair(bench)
    with a, b:
        port = int(b.ready["endpoint"].rsplit(":", 1)[1])
        b.call("subscribe", name="sink", handler="count")
        a.call("wait_for", name="sink")
        runs = []
        for _ in range(_runs(bench, 5)):
            resets = 0

            def send() -> None:
                nonlocal resets
                flood = a.submit("flood", target="sink", count=count)
                time.sleep(RESET_AFTER_S)  # the flood is under way: reset it mid-stream
                for _ in range(RESETS_PER_RUN):
                    resets += reset_connections(port)
                    time.sleep(RESET_EVERY_S)
                a.wait(flood)

            runs.append(_lost_run(a, b, count, send))
            if not resets:
                bench.skip(workload, "`ss -K` found no connection to reset (kernel without "
                           "CONFIG_INET_DIAG_DESTROY, or not root)")
                return
            wait_until(lambda: a.call("wait_for", name="sink") > 0, JOIN_WAIT_S,
                       what="the link is back")
    _loss_rows(bench, workload, runs)
