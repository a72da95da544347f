"""The ``smartroute node`` command, as a real process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from smartroute.testing import wait_until

from .conftest import Spawn

pytestmark = pytest.mark.processes


def test_smartroute_node_prints_the_mesh_and_leaves_with_a_bye(spawn: Spawn) -> None:
    a = spawn(cluster="cli")
    a.call("subscribe", name="user:alice", meta={"nick": "Alice"})
    cli = subprocess.Popen(
        [sys.executable, "-m", "smartroute.cli", "node", "--cluster", "cli", "--host",
         "127.0.0.1", "--seed", a.endpoint, "--subscribe", "user:zed", "--name", "cli-node"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.put(line.rstrip())

    threading.Thread(target=read, daemon=True).start()

    def printed(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(text in line for line in seen)

    try:
        wait_until(lambda: printed("peer up"), what="peer up printed")
        wait_until(lambda: printed("subscribe    user:alice"), what="alice printed")
        assert printed("{'nick': 'Alice'}")
        a.call("wait_for", name="user:zed")
        assert a.call("send_to", body="hello cli", target="user:zed", sender="user:alice") == 1
        wait_until(lambda: printed("message      to user:zed from user:alice: 'hello cli'"),
                   what="message printed")
        os.kill(cli.pid, signal.SIGTERM)
        assert cli.wait(10) == 0
        assert printed("closed")
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
            cli.wait()
    downs: list[dict[str, str]] = []
    wait_until(lambda: downs.extend(e for e in a.call("events") if e["event"] == "PeerDown")
               or downs, what="the BYE of the command's node")
    assert [d["reason"] for d in downs] == ["bye"]


def test_smartroute_peers_finds_the_cluster_over_mdns(spawn: Spawn) -> None:
    a = spawn(cluster="cli-peers", mdns=True, interfaces=["127.0.0.1"], name="web-1")
    a.call("subscribe", name="user:alice")
    a.call("subscribe", name="room:1")
    result = subprocess.run(
        [sys.executable, "-m", "smartroute.cli", "peers", "--cluster", "cli-peers",
         "--interface", "127.0.0.1", "--host", "127.0.0.1", "--wait", "1.5"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["CLUSTER", "NODE", "ID", "NAME", "ENDPOINT", "SUBSCRIBERS", "STATE"]
    assert [row.split() for row in rows] == [
        ["cli-peers", a.node_id[:12], "web-1", a.endpoint, "2", "alive"]]


def test_smartroute_peers_takes_the_secret_from_the_environment(spawn: Spawn) -> None:
    secret = "the cli test's cluster secret, long enough"
    a = spawn(cluster="cli-secret", secret=secret)
    command = [sys.executable, "-m", "smartroute.cli", "peers", "--cluster", "cli-secret",
               "--host", "127.0.0.1", "--seed", a.endpoint, "--wait", "1.0"]
    env = {k: v for k, v in os.environ.items() if k != "SMARTROUTE_SECRET"}
    with_secret = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                 check=False, env={**env, "SMARTROUTE_SECRET": secret})
    without = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False,
                             env=env)
    assert with_secret.returncode == 0 and without.returncode == 0, without.stderr
    assert [row.split()[1] for row in with_secret.stdout.splitlines()[1:]] == [a.node_id[:12]]
    assert without.stdout.splitlines()[1:] == []  # the same seed, no secret: nobody


def test_bad_options_are_one_clear_line() -> None:
    result = subprocess.run([sys.executable, "-m", "smartroute.cli", "node", "--interface",
                             "eth0"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("smartroute: ")
