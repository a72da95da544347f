"""What the benchmark runner and its worker processes share: sizes, statistics, rows, and the
worker processes themselves (started, driven over JSON lines, stopped by PID).

Worker protocol (the one ``smartroute.testing.agent`` speaks): the worker's first stdout line is
``{"ready": true, ...}``; each stdin line is ``{"id": N, "op": NAME, ...}``, answered by
``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error": ..., "message":
...}``; ``{"op": "close"}`` ends it. ``AgentProcess`` drives only smartroute's own agent, and most
workers here are not smartroute nodes, hence ``Worker``.

Clock: every timestamp that crosses a process boundary is ``time.monotonic()``. On Linux it is
CLOCK_MONOTONIC, one clock for every process of the machine (network namespaces included), so
a sender's start and a receiver's end can be subtracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import itertools
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from smartroute.testing import reap
from smartroute.testing.agent import answer_requests

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BODY_BYTES = 100
"""Body size of every message in every workload and baseline (the issue's 100-byte bodies)."""

BODY = b"x" * BODY_BYTES

PER_TURN = 500
"""A flooding sender yields to its event loop after this many sends (as the test agent's flood
does): the records of one turn leave as one batch, and a node's timers still run. Redis
publishers pipeline the same number of PUBLISH commands per round trip, for the same reason."""

READY_TIMEOUT_S = 20.0
"""A fresh worker imports zmq (and redis or pyre) in ~0.3 s here; a loaded box needs more."""

CALL_TIMEOUT_S = 60.0
"""Longest any one command to a worker may take: the slowest (a pyre flood) needs ~5 s."""

STOP_TIMEOUT_S = 5.0
"""How long a worker asked to close may take before it is SIGKILLed."""

PARENT_ENV = "SMARTROUTE_BENCH_RUNNER"
"""Environment variable holding the runner's PID, which every worker's parent must be."""

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies."""


@dataclass(frozen=True)
class Scale:
    """How much each workload does: ``quick`` (``make bench-quick``, < 2 min) or full."""

    quick: bool

    @property
    def runs(self) -> int:
        """Runs per figure: the issue asks for medians of at least 5 (3 allowed in quick)."""
        return 3 if self.quick else 5

    def count(self, full: int, quick: int) -> int:
        """Messages (or round trips) per run in this mode."""
        return quick if self.quick else full


# --- statistics and rows ------------------------------------------------------------------------

Row = dict[str, Any]
"""One figure: workload, system, metric, value (median of the runs), unit, runs, min, max."""


def row(workload: str, system: str, metric: str, values: Sequence[float], unit: str) -> Row:
    """The row for one figure measured once per run in ``values``."""
    if not values:
        raise ValueError(f"no values for {workload} / {system} / {metric}")
    return {"workload": workload, "system": system, "metric": metric,
            "value": statistics.median(values), "unit": unit, "runs": len(values),
            "min": min(values), "max": max(values)}


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``samples``."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_rows(workload: str, system: str, runs: Sequence[Sequence[float]]) -> list[Row]:
    """p50 and p99 rows in microseconds from per-run latency samples in seconds: each run's
    percentile is one value, so min-max shows how the runs differed."""
    return [row(workload, system, name, [percentile(run, q) * 1e6 for run in runs], "us")
            for name, q in (("p50", 50), ("p99", 99))]


def rate(count: int, start: float, end: float) -> float:
    """Messages per second for ``count`` messages between two ``time.monotonic()`` stamps."""
    if end <= start:
        raise ValueError(f"end {end} is not after start {start}")
    return count / (end - start)


# --- processes ----------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker answered a command with an error, died, or stayed silent too long."""


class Worker:
    """One worker script (``bench/worker_*.py``) in its own process, driven over JSON lines.

    ``prefix`` runs it elsewhere (``Host.prefix`` of a ``Lan``: inside a network namespace).
    ``close()`` and ``kill()`` stop it by its PID; both are idempotent.
    """

    def __init__(self, script: str, args: Sequence[str] = (), *, prefix: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        command = [*prefix, sys.executable, str(HERE / script), *args]
        self.name = f"{script} {' '.join(args)}".strip()
        self.log_path = log_path
        # Lives as long as the process; closed in _reap().
        self._log: IO[bytes] | int = (open(log_path, "ab")  # noqa: SIM115
                                      if log_path is not None else subprocess.DEVNULL)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log,
                                        env={**os.environ, PARENT_ENV: str(os.getpid())})
        self.pid = self.process.pid
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._answers: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True, name=f"worker-{self.pid}").start()
        try:
            self.ready = self._next_line(READY_TIMEOUT_S)
            if not self.ready.get("ready"):
                raise WorkerError(f"{self.name} did not start: {self.ready!r}{self._log_tail()}")
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def _next_line(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise WorkerError(f"{self.name} (pid {self.pid}) said nothing for {timeout:.1f} s"
                              f"{self._log_tail()}") from None
        if line is None:
            self._lines.put(None)
            raise WorkerError(f"{self.name} (pid {self.pid}) exited with code "
                              f"{self.process.poll()}{self._log_tail()}")
        return line

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return f"; log {self.log_path}:\n  " + "\n  ".join(tail) if tail else ""

    def submit(self, op: str, **args: Any) -> int:
        """Send one command without waiting; ``wait`` collects its answer."""
        request_id = next(self._ids)
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps({"id": request_id, "op": op, **args}) + "\n")
                                     .encode())
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerError(f"{self.name} (pid {self.pid}) is gone: {exc}"
                              f"{self._log_tail()}") from exc
        return request_id

    def wait(self, request_id: int, answer_within_s: float = CALL_TIMEOUT_S) -> Any:
        """The result of a submitted command; ``WorkerError`` if it failed or took too long."""
        deadline = time.monotonic() + answer_within_s
        while request_id not in self._answers:
            line = self._next_line(deadline - time.monotonic())
            if "id" in line:
                self._answers[line["id"]] = line
        answer = self._answers.pop(request_id)
        if not answer["ok"]:
            raise WorkerError(f"{self.name}: {answer['error']}: {answer['message']}")
        return answer["result"]

    def call(self, op: str, *, answer_within_s: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Run one command (``args`` are its fields) and return its result."""
        return self.wait(self.submit(op, **args), answer_within_s)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def close(self) -> None:
        """Ask the worker to stop; SIGKILL it if it has not within ``STOP_TIMEOUT_S``."""
        if self.alive:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"op": "close"}\n')
                self.process.stdin.flush()
                self.process.wait(STOP_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _reap(self) -> None:
        reap(self.process, self._log, STOP_TIMEOUT_S)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass
class Bench:
    """One run of the suite: its scale, where worker logs go, and what it found."""

    scale: Scale
    log_dir: Path
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    """What the workloads learn about the machine (the Redis server's version)."""
    _workers: list[Worker] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def worker(self, script: str, *args: str, prefix: Sequence[str] = ()) -> Worker:
        """Start a worker whose stderr goes to a log of its own; ``close_all`` stops it."""
        log = self.log_dir / f"{next(self._names):03d}-{Path(script).stem}.log"
        started = Worker(script, args, prefix=prefix, log_path=log)
        self._workers.append(started)
        return started

    def add(self, *rows: Row) -> None:
        """Record rows and print them as they come."""
        for one in rows:
            self.rows.append(one)
            print(f"  {one['workload']} | {one['system']} | {one['metric']}: "
                  f"{one['value']:.4g} {one['unit']} ({one['min']:.4g}-{one['max']:.4g}, "
                  f"{one['runs']} runs)", flush=True)

    def skip(self, what: str, reason: str) -> None:
        """Record figures that were not measured, and why (shown in the report)."""
        self.skipped.append({"what": what, "reason": reason})
        print(f"  skipped {what}: {reason}", flush=True)

    def close_all(self) -> None:
        """Stop every worker this run started that is still alive (by PID)."""
        for started in self._workers:
            started.kill()
        self._workers.clear()


# --- the worker side ----------------------------------------------------------------------------

Op = Callable[[dict[str, Any]], Any]
"""A worker command: takes the request's fields, returns a JSON value (or an awaitable of one).
A blocking one holds the worker's loop, which is fine: each worker does one job at a time."""


async def serve(ops: dict[str, Op], ready: dict[str, Any]) -> None:
    """Announce ``ready``, then run each command line as its own task until stdin closes or
    a ``close`` command arrives; an op's exception is answered, never fatal (the test agent's
    protocol: ``smartroute.testing.agent.answer_requests``)."""

    async def run(op: str, request: dict[str, Any]) -> Any:
        result = ops[op](request)
        return await result if inspect.isawaitable(result) else result

    await answer_requests(run, ready)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the runner dies, even by SIGKILL: a worker blocked
    in a receive would otherwise outlive it. Best effort: elsewhere it is a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    runner = os.environ.get(PARENT_ENV)
    if runner is not None and os.getppid() != int(runner):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def run_worker(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entry point of a worker script: run ``main`` and exit quietly when the runner hangs up."""
    die_with_parent()
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(main())
