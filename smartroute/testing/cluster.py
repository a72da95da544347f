"""Drive nodes in their own processes from a (synchronous) test.

``AgentProcess`` starts ``python -m smartroute.testing.agent``, waits until it is ready, and
sends it JSON commands. Every process is stopped by its PID: ``kill()`` is a real SIGKILL,
``close()`` a graceful stop (BYE to peers) falling back to SIGKILL.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from . import reap

READY_TIMEOUT_S = 15.0
"""A fresh Python process importing zmq needs ~0.3 s here; a loaded CI box much more."""

CALL_TIMEOUT_S = 15.0
"""Default wait for one command's answer."""


class AgentError(Exception):
    """The agent answered a command with an error (``kind`` is the exception class name)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class AgentProcess:
    """One node in its own process."""

    def __init__(self, *, cluster: str = "smartroute", seeds: Sequence[str] = (),
                 host: str = "127.0.0.1", port: int = 0, name: str | None = None,
                 timings: dict[str, float] | None = None, log_path: Path | None = None,
                 prefix: Sequence[str] = (), log_level: str = "INFO", mdns: bool = False,
                 interfaces: Sequence[str] = (), secret: str | None = None) -> None:
        command = [*prefix, sys.executable, "-m", "smartroute.testing.agent",
                   "--cluster", cluster, "--host", host, "--port", str(port),
                   "--log-level", log_level]
        if mdns:
            command.append("--mdns")
        for interface in interfaces:
            command += ["--interface", interface]
        for seed in seeds:
            command += ["--seed", seed]
        if name is not None:
            command += ["--name", name]
        for key, value in (timings or {}).items():
            command += ["--timing", f"{key}={value}"]
        self.log_path = log_path
        # The log file lives as long as the process, closed in _reap().
        self._log: IO[bytes] | int = (open(log_path, "ab")  # noqa: SIM115
                                      if log_path is not None else subprocess.DEVNULL)
        env = {k: v for k, v in os.environ.items() if k != "SMARTROUTE_SECRET"}
        if secret is not None:
            env["SMARTROUTE_SECRET"] = secret
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log, env=env)
        self.pid = self.process.pid
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._answers: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name=f"agent-{self.pid}").start()
        try:
            ready = self._next_line(READY_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise
        if not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"agent did not start: {ready!r} (log: {log_path})")
        self.node_id: str = ready["node_id"]
        self.endpoint: str = ready["endpoint"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue
        self._lines.put(None)

    def _next_line(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"agent {self.pid} said nothing for {timeout} s "
                               f"(log: {self.log_path})") from None
        if line is None:
            self._lines.put(None)
            raise RuntimeError(f"agent {self.pid} exited (code {self.process.poll()}; "
                               f"log: {self.log_path})")
        return line

    def call(self, op: str, *, answer_within_s: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Run one command and return its result; raises ``AgentError`` if it failed."""
        request_id = next(self._ids)
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write((json.dumps({"id": request_id, "op": op, **args}) + "\n")
                                     .encode())
            self.process.stdin.flush()
        deadline = time.monotonic() + answer_within_s
        while request_id not in self._answers:
            line = self._next_line(max(0.0, deadline - time.monotonic()))
            if "id" in line:
                self._answers[line["id"]] = line
        answer = self._answers.pop(request_id)
        if not answer["ok"]:
            raise AgentError(answer["error"], answer["message"])
        return answer["result"]

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (no BYE) and reap it."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def close(self, timeout: float = 5.0) -> None:
        """Stop gracefully (the node says BYE); SIGKILL if it does not exit in ``timeout``."""
        if self.alive:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"op": "close"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._reap()

    def _reap(self) -> None:
        reap(self.process, self._log)

    def __repr__(self) -> str:
        return f"AgentProcess(pid={self.pid}, node_id={self.node_id[:8]}, {self.endpoint})"
