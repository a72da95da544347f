"""The ``smartroute node`` command, as a real process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from smartroute.cli import describe
from smartroute.events import Subscriber, SubscriberUpdated
from smartroute.testing import reap, wait_until

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
        assert printed("drained") and printed("closed")
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


# --- the ops commands: send, request, subscribers, stats ---------------------------------------

def smartroute(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run one ``smartroute`` command on loopback to its end."""
    return subprocess.run([sys.executable, "-m", "smartroute.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def joining(cluster: str, seed: str) -> list[str]:
    return ["--cluster", cluster, "--host", "127.0.0.1", "--seed", seed]


def test_send_reaches_every_node_of_the_mesh_through_one_seed(spawn: Spawn) -> None:
    a = spawn(cluster="cli-send")
    b = spawn(cluster="cli-send", seeds=[a.endpoint])
    a.call("subscribe", name="room:1")
    b.call("subscribe", name="room:1")
    b.call("subscribe", name="user:bob")
    a.call("wait_for", name="user:bob")
    result = smartroute("send", *joining("cli-send", a.endpoint), "room:1",
                        '{"text": "hi", "n": [1, 2]}', "--sender", "user:cli")
    assert (result.returncode, result.stdout, result.stderr) == (0, "sent to 2 subscribers\n", "")
    for agent in (a, b):
        got = wait_until(lambda agent=agent: agent.call("received"), what="the message")
        assert [(m["subscriber"], m["body"], m["sender"], m["mode"]) for m in got] == [
            ("room:1", {"text": "hi", "n": [1, 2]}, "user:cli", "EQ")]
    result = smartroute("send", *joining("cli-send", a.endpoint), "^user:", "42",
                        "--mode", "regex")
    assert (result.returncode, result.stdout) == (0, "sent to 1 subscriber\n")
    got = wait_until(lambda: b.call("received"), what="the REGEX message")
    assert [(m["subscriber"], m["body"], m["mode"]) for m in got] == [("user:bob", 42, "REGEX")]


def test_send_to_nobody_exits_1_with_one_line(spawn: Spawn) -> None:
    a = spawn(cluster="cli-nobody")
    a.call("subscribe", name="user:alice")
    result = smartroute("send", *joining("cli-nobody", a.endpoint), "user:zed", '"hi"',
                        "--wait", "0.5")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "smartroute: nobody subscribes to 'user:zed' (waited 0.5 s)\n")
    result = smartroute("send", *joining("cli-nobody", a.endpoint), "user:alice", '"hi"',
                        "--mode", "NOT_EQ", "--wait", "0.3")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "smartroute: nobody but 'user:alice' subscribes (waited 0.3 s)\n")
    assert a.call("received") == []


def test_subscribers_lists_every_node_met_through_one_seed(spawn: Spawn) -> None:
    a = spawn(cluster="cli-list", name="web-1")
    b = spawn(cluster="cli-list", seeds=[a.endpoint], name="web-2")
    a.call("subscribe", name="user:alice")
    b.call("subscribe", name="user:bob", meta={"nick": "Bob"})
    a.call("wait_for", name="user:bob")
    result = smartroute("subscribers", *joining("cli-list", a.endpoint))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "NAME        NODE ID       NODE   META",
        f"user:alice  {a.node_id[:12]}  web-1",
        f'user:bob    {b.node_id[:12]}  web-2  {{"nick": "Bob"}}']


def test_request_prints_the_reply_as_json_or_says_why_there_is_none(spawn: Spawn) -> None:
    a = spawn(cluster="cli-request")
    a.call("subscribe", name="svc:echo", reply="echo")
    a.call("subscribe", name="svc:silent", reply="silent")
    a.call("subscribe", name="svc:raise", reply="raise")
    join = joining("cli-request", a.endpoint)
    result = smartroute("request", *join, "svc:echo", '{"ping": 1}')
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f'{{"echo": {{"ping": 1}}, "by": "{a.node_id}"}}\n'
    result = smartroute("request", *join, "svc:silent", "1", "--timeout", "0.3")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "smartroute: no reply from 'svc:silent' within 0.3 s\n")
    result = smartroute("request", *join, "svc:raise", '"x"')
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("smartroute: ") and "refuses 'x'" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    result = smartroute("request", *join, "svc:none", "1", "--wait", "0.3")
    assert (result.returncode, result.stderr) == (
        1, "smartroute: nobody subscribes to 'svc:none' (waited 0.3 s)\n")


@pytest.mark.parametrize(("args", "expected"), [
    (["send", "user:a", "hello"],
     "smartroute: argument BODY: not JSON: 'hello' (a string is quoted in JSON: '\"hello\"') "
     "(see smartroute send --help)"),
    (["send", "user:a", "1", "--mode", "SOME"],
     "smartroute: argument --mode: unknown mode 'SOME' (one of EQ, NOT_EQ, ALL, REGEX, ANY) "
     "(see smartroute send --help)"),
    (["send", "user:(", "1", "--mode", "REGEX"],
     "smartroute: bad REGEX pattern 'user:(': missing ), unterminated subpattern at position 5 "
     "(see smartroute send --help)"),
    (["request", "svc:a", "{"],
     "smartroute: argument BODY: not JSON: '{' (a string is quoted in JSON: '\"{\"') "
     "(see smartroute request --help)"),
    (["request", "svc:a"], "smartroute: the following arguments are required: BODY "
                           "(see smartroute request --help)"),
    (["stats", "--for", "1"], "smartroute: --for needs --watch (see smartroute stats --help)"),
    (["subscribers", "--watch", "--for", "0"],
     "smartroute: --for must be positive (see smartroute subscribers --help)"),
    (["send", "user:a", "1", "--wait", "-1"],
     "smartroute: --wait must not be negative (see smartroute send --help)"),
])
def test_bad_ops_arguments_are_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = smartroute(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", expected + "\n")


class Lines:
    """A running command's stdout, read on a thread, for ``wait_until``."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def has(self, line: str) -> bool:
        """Whether ``line`` (compared word by word) was printed."""
        while not self._queue.empty():
            self.seen.append(self._queue.get())
        return line.split() in [seen.split() for seen in self.seen]


def watching(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "smartroute.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_subscribers_prints_the_table_then_every_change(spawn: Spawn) -> None:
    a = spawn(cluster="cli-subs", name="web-1")
    a.call("subscribe", name="user:alice", meta={"nick": "Alice"})
    a.call("subscribe", name="room:1")
    cli = watching("subscribers", *joining("cli-subs", a.endpoint), "--wait", "0.5", "--watch",
                   "--for", "30")
    try:
        out = Lines(cli)
        node = a.node_id[:12]
        wait_until(lambda: out.has(f'user:alice  {node}  web-1  {{"nick": "Alice"}}'),
                   timeout=15, what="the table")
        assert out.seen == ["NAME        NODE ID       NODE   META",
                            f"room:1      {node}  web-1",
                            f'user:alice  {node}  web-1  {{"nick": "Alice"}}']
        sub = a.call("subscribe", name="room:9", meta={"topic": "ops"})
        wait_until(lambda: out.has(f"subscribe room:9 on {node} {{'topic': 'ops'}}"),
                   what="the new subscriber")
        a.call("unsubscribe", sub=sub)
        wait_until(lambda: out.has(f"unsubscribe room:9 on {node}"), what="the one gone")
        os.kill(cli.pid, signal.SIGTERM)
        assert cli.wait(10) == 0
    finally:
        reap(cli)
    assert cli.stderr is not None and cli.stderr.read() == ""
    assert out.seen[3:] == [f"subscribe    room:9  on {node}  {{'topic': 'ops'}}",
                            f"unsubscribe  room:9  on {node}"]


def test_stats_watch_prints_what_changes_and_stops_after_for(spawn: Spawn) -> None:
    a = spawn(cluster="cli-stats")
    a.call("subscribe", name="user:alice")
    cli = watching("stats", *joining("cli-stats", a.endpoint), "--wait", "0.5", "--watch",
                   "--for", "4")
    try:
        out = Lines(cli)
        wait_until(lambda: out.has("unknown_sender_records 0"), timeout=15, what="the counters")
        assert out.has("peers 1") and out.has("subscribers 1") and out.has("sent 0")
        a.call("subscribe", name="room:1")
        wait_until(lambda: out.has("subscribers 2 (+1)"), what="the change")
        assert cli.wait(15) == 0  # --for 4 ended it
    finally:
        reap(cli)


def test_describe_prints_a_meta_update() -> None:
    event = SubscriberUpdated(Subscriber("user:bob", "ab" * 16, {"status": "away"}),
                              {"status": "online"})
    assert describe(event) == f"update       user:bob  on {'ab' * 6}  {{'status': 'away'}}"
