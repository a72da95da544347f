"""Gateways in their own processes, for the demo, the tests and the benchmark.

``GatewayProcess`` runs ``server.py`` on loopback, waits for its ``listening on`` line and
stops it by its PID: ``kill()`` is a real SIGKILL (no goodbye), ``stop()`` a SIGTERM (clients
get ``bye``, peers get BYE) falling back to SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from smartroute.testing import reap

SERVER = Path(__file__).resolve().parent / "server.py"

READY_TIMEOUT_S = 20.0
"""A fresh interpreter importing zmq and zeroconf takes ~0.5 s here; much more on a busy box."""

STOP_TIMEOUT_S = 5.0
"""A gateway asked to stop gets this long before it is SIGKILLed."""

READY = re.compile(r"chat gateway (\S+) listening on (\S+):(\d+) .*mesh node (\w+) at (\S+)\)")
WEB = re.compile(r"web chat at (\S+) \(WebSocket (\S+)\)")


class GatewayProcess:
    """One chat gateway in its own process, bound to ``host`` (loopback by default)."""

    def __init__(self, name: str, *, cluster: str, options: Sequence[str] = (),
                 host: str = "127.0.0.1", log_path: Path | None = None,
                 log_level: str = "WARNING") -> None:
        command = [sys.executable, str(SERVER), "--name", name, "--cluster", cluster,
                   "--host", host, "--port", "0", "--log-level", log_level, *options]
        self.name = name
        self.log_path = log_path
        # The log file lives as long as the process; closed when it is reaped.
        self._log: IO[bytes] | int = (open(log_path, "ab")  # noqa: SIM115
                                      if log_path is not None else subprocess.DEVNULL)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.pid = self.process.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"gateway-{self.pid}").start()
        try:
            first = self._lines.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            first = None
        found = READY.match(first or "")
        if found is None:
            self.kill()
            raise RuntimeError(f"gateway {name} did not start: {first!r} (log: {log_path})")
        self.host = found.group(2)
        self.port = int(found.group(3))
        self.node_id = found.group(4)
        self.mesh_endpoint = found.group(5)
        self.page_url: str | None = None
        """With ``--ws-port``: the chat page's URL, and ``ws_url`` its WebSocket's."""
        self.ws_url: str | None = None
        if "--ws-port" in options:
            try:
                web = WEB.match(self.next_line() or "")
            except queue.Empty:
                web = None
            if web is None:
                self.kill()
                raise RuntimeError(f"gateway {name} serves no web chat (log: {log_path})")
            self.page_url, self.ws_url = web.groups()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # drained to the end, so the pipe never fills
            self._lines.put(line)
        self._lines.put(None)

    def next_line(self, timeout: float = READY_TIMEOUT_S) -> str | None:
        """The next line it printed after the ``listening on`` one (None: it exited)."""
        line = self._lines.get(timeout=timeout)
        return None if line is None else line.rstrip("\n")

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no bye to clients, no BYE to peers (a crash, as the mesh sees it)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within ``STOP_TIMEOUT_S``."""
        if self.alive:
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        self.kill()

    def _reap(self) -> None:
        reap(self.process, self._log, STOP_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"GatewayProcess({self.name}, pid={self.pid}, {self.host}:{self.port})"


def start_gateways(count: int, *, cluster: str, options: Sequence[str] = (),
                   log_dir: Path | None = None, prefix: str = "gw") -> list[GatewayProcess]:
    """Start ``count`` gateways one after the other with mDNS on loopback only.

    On ``lo`` mDNS works one way (a later gateway finds the earlier ones) and the finder's
    HELLO makes each link two-way, so starting them in turn forms the full mesh. If one fails
    to start, those already started are stopped.
    """
    gateways: list[GatewayProcess] = []
    try:
        for i in range(1, count + 1):
            name = f"{prefix}-{i}"
            log = log_dir / f"{name}.log" if log_dir is not None else None
            gateways.append(GatewayProcess(
                name, cluster=cluster, log_path=log,
                options=["--interface", "127.0.0.1", *options]))
    except BaseException:
        for gateway in gateways:
            gateway.kill()
        raise
    return gateways
