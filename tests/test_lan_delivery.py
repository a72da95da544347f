"""The delivery and liveness contract of issue 10 on a simulated LAN, with default timings:

- a link whose TCP connections are reset (or whose cable is pulled) for 2 s under ~10,000
  msg/s loses nothing silently: every accepted message arrives once, in order, or is counted;
- the Lifeguard "slow node" scenario: nodes that block their own event loop for 0.5-3 s are
  not declared dead, and every accepted message is delivered exactly once.

Peers find each other through seeds (the hosts' addresses), not mDNS: discovery is not what
these tests are about, and seeds keep them deterministic. Needs root; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smartroute.testing import wait_until
from smartroute.testing.cluster import AgentProcess
from smartroute.testing.lan import Host, Lan

pytestmark = [pytest.mark.lan, pytest.mark.processes]

CLUSTER = "delivery"
PORT = 7000
"""Every node binds this port on its own host's address (each host is its own namespace)."""

TRAFFIC_ANSWER_S = 60.0
"""How long the test waits for a node to report the traffic it sent."""

DRAIN_TIMEOUT_S = 30.0
"""Longest wait, after the traffic stopped, for what is still in flight to arrive."""

DRAIN_STABLE_S = 5.0
"""Tallies that have not moved for this long are final (a redial of a peer that was declared dead
waits up to connect_timeout_s, 5 s)."""


def endpoint(host: Host, port: int = PORT) -> str:
    return f"tcp://{host.address}:{port}"


@pytest.fixture
def start(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentProcess]]:
    """Start a node on a LAN host with seeds, no mDNS; all SIGKILLed by PID at the end."""
    agents: list[AgentProcess] = []

    def run(host: Host, seeds: list[str], *, port: int = PORT) -> AgentProcess:
        agent = AgentProcess(cluster=CLUSTER, prefix=host.prefix, host=host.address, port=port,
                             seeds=seeds, log_path=tmp_path / f"n{len(agents)}.log")
        agents.append(agent)
        return agent

    yield run
    for agent in agents:
        agent.kill()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for agent in agents[:4]:
            if agent.log_path and agent.log_path.exists():
                tail = agent.log_path.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {agent!r} log tail ---", *tail, sep="\n")


def meet(nodes: list[AgentProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        wait_until(lambda node=node: len(node.call("peers")) == len(nodes) - 1,
                   max(0.1, deadline - time.monotonic()),
                   what=f"{node} meets the other {len(nodes) - 1}")


def drain(receivers: list[AgentProcess], accounted: Callable[[int], bool]) -> list[dict[str, Any]]:
    """Every receiver's tallies once ``accounted(numbers arrived in all)`` holds, or once the
    tallies stopped moving for ``DRAIN_STABLE_S`` (bounded by ``DRAIN_TIMEOUT_S``)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last, last_change = -1, time.monotonic()
    while True:  # bounded by DRAIN_TIMEOUT_S
        tallies = [r.call("tallies", answer_within_s=30) for r in receivers]
        total = sum(len(numbers) for tally in tallies for by_sender in tally.values()
                    for numbers in by_sender.values())
        now = time.monotonic()
        if total != last:
            last, last_change = total, now
        if accounted(total) or now - last_change >= DRAIN_STABLE_S or now >= deadline:
            return tallies
        time.sleep(0.2)


def peer_downs(nodes: list[AgentProcess]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, e) for i, node in enumerate(nodes) for e in node.call("events", answer_within_s=30)
            if e["event"] == "PeerDown"]


# --- 1. a link reset or cut for 2 s under ~10,000 msg/s ---------------------------------------

RATE_PER_S = 10_000
TRAFFIC_S = 8.0
PAD_BYTES = 4000
"""Each message carries its number and this much padding (~40 MB/s), so a reset finds data in
flight. Measured on today's code (no retransmission): bare numbers (~0.3 MB/s) lost messages in
2 of 5 runs, 1000 bytes in 8 of 11, 4000 bytes in 6 of 6 (45-585 lost per run)."""
DISRUPT_AT_S = 3.0
DISRUPT_FOR_S = 2.0
RESET_EVERY_S = 0.01
"""ZeroMQ redials within ~0.1 s (ZMQ_RECONNECT_IVL) and then flushes what queued meanwhile:
resetting every 10 ms kills each new connection during that flush, for the whole 2 s."""


def _reset_all(host: Host, other: Host) -> int:
    """``ss -K`` every TCP socket of ``host`` to or from ``other``; how many it killed."""
    out = subprocess.run([*host.prefix, "ss", "-K", "-tn", "dst", other.address],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return sum(1 for line in out.splitlines()[1:] if line.strip())


def _sockets(host: Host, *ss_args: str) -> int:
    out = subprocess.run([*host.prefix, "ss", "-Htn", *ss_args], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def _reset_unavailable(lan: Lan) -> str | None:
    """None when ``ss -K`` can destroy a socket in a namespace here, else why not."""
    a, b = lan.hosts
    idle = "import socket, sys, time\n{}\ntime.sleep(30)"
    port = PORT + 1
    processes = [b.run([sys.executable, "-c", idle.format(
        f"s = socket.socket(); s.bind(({b.address!r}, {port})); s.listen(); c, _ = s.accept()")])]
    try:
        wait_until(lambda: _sockets(b, "state", "listening", "sport", f"= :{port}"), 10,
                   what="the probe server listens")
        processes.append(a.run([sys.executable, "-c", idle.format(
            f"s = socket.create_connection(({b.address!r}, {port}))")]))
        wait_until(lambda: _sockets(a, "state", "established", "dst", b.address), 10,
                   what="the probe client connects")
        try:
            killed = _reset_all(a, b)
        except (subprocess.CalledProcessError, OSError) as exc:
            return f"`ss -K` failed here ({exc}): ss missing or too old"
        if killed == 0:
            return "`ss -K` destroyed no socket: the kernel lacks CONFIG_INET_DIAG_DESTROY"
        return None
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(5)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("disruption", ["tcp_reset", "cut"])
def test_two_seconds_of_resets_or_a_cut_under_load_lose_nothing_silently(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess],
        disruption: str) -> None:
    """A sender on host A sends numbered messages at ~10,000 msg/s to a subscriber on host B
    for 8 s; from 3 s to 5 s the link is disrupted:

    - ``tcp_reset``: every TCP connection between A and B is reset, again and again, by
      ``ss -K`` in B's then A's namespace every 10 ms (the kernel aborts the socket, dropping
      its queues, and sends the peer a RST; ZeroMQ redials within ~0.1 s and is reset again).
      Chosen because it works on this kernel (CONFIG_INET_DIAG_DESTROY is on) with iproute2
      alone; there is no iptables or nft here, and no netem. Skipped when ``ss -K`` cannot
      destroy a socket.
    - ``cut``: A's cable is pulled for 2 s (``Host.cut``/``heal``).

    Then: what the receiver got is in order, each number once, all of them accepted numbers;
    accepted (``send_to`` returned 1) = delivered + ``lost_messages`` (both nodes' counts).
    Refused numbers (``LinkFull``, or no subscriber in the sender's view) are not accepted.
    """
    lan = lan_factory(2)
    a_host, b_host = lan.hosts
    if disruption == "tcp_reset":
        reason = _reset_unavailable(lan)
        if reason is not None:
            pytest.skip(reason)
    sender = start(a_host, [endpoint(b_host)])
    receiver = start(b_host, [endpoint(a_host)])
    receiver.call("subscribe_tally", name="sink")
    meet([sender, receiver], 15)
    sender.call("wait_for", name="sink", timeout=10)
    traffic = sender.call("traffic", targets=["sink"], rate_per_s=RATE_PER_S, for_s=TRAFFIC_S,
                          pad_bytes=PAD_BYTES)
    time.sleep(DISRUPT_AT_S)
    killed = 0
    if disruption == "tcp_reset":
        until = time.monotonic() + DISRUPT_FOR_S
        while time.monotonic() < until:  # bounded by time: ~40 rounds
            killed += _reset_all(b_host, a_host) + _reset_all(a_host, b_host)
            time.sleep(RESET_EVERY_S)
    else:
        a_host.cut()
        try:
            time.sleep(DISRUPT_FOR_S)
        finally:
            a_host.heal()
    sent = sender.call("traffic_result", traffic=traffic, answer_within_s=TRAFFIC_ANSWER_S)["sink"]
    refused = set(sent["link_full"]) | set(sent["no_route"])
    accepted = sent["accepted"]
    stats: list[dict[str, Any]] = []

    def stat(name: str) -> int:
        return sum(int(node_stats.get(name, 0)) for node_stats in stats)

    def accounted(arrived: int) -> bool:
        # Retransmissions may still be on their way: done when arrived + lost covers accepted.
        stats[:] = [sender.call("stats"), receiver.call("stats")]
        return arrived + stat("lost_messages") >= accepted

    tally = drain([receiver], accounted)[0]
    arrived = tally.get("sink", {}).get(sender.node_id, [])
    stats[:] = [sender.call("stats"), receiver.call("stats")]

    missing = accepted - len(arrived)
    downs = peer_downs([sender, receiver])
    print(f"{disruption}: attempted {sent['attempted']}, accepted {accepted}, "
          f"LinkFull {len(sent['link_full'])}, no route {len(sent['no_route'])}, "
          f"errors {sent['errors']}; delivered {len(arrived)}, missing {missing}; "
          f"lost_messages {stat('lost_messages')}, "
          f"retransmitted_batches {stat('retransmitted_batches')}, "
          f"duplicate_batches {stat('duplicate_batches')}, gap_batches {stat('gap_batches')}; "
          f"sockets reset {killed}; PeerDown {len(downs)}")
    assert sent["errors"] == {}
    assert accepted == sent["attempted"] - len(refused)
    assert accepted >= sent["attempted"] // 4, "most of the traffic was refused: nothing tested"
    if disruption == "tcp_reset":
        assert killed > 0, "no connection was reset"
    in_order_once = all(x < y for x, y in itertools.pairwise(arrived))
    assert in_order_once, "a number arrived twice or out of order"
    assert not set(arrived) & refused, "a refused message was delivered"
    assert set(arrived) <= set(range(sent["attempted"])), "a number never sent arrived"
    assert accepted == len(arrived) + stat("lost_messages"), (
        f"{missing} accepted messages neither arrived nor were counted as lost "
        f"(lost_messages {stat('lost_messages')})")


# --- 2. Lifeguard's slow nodes: a busy loop is not a dead node ---------------------------------

LIFEGUARD_S = float(os.environ.get("SMARTROUTE_LIFEGUARD_S", "120"))
"""How long the slow-node scenario runs (CI runs the full 120 s)."""

NODES = 16
SLOW_NODES = 2
STALL_EVERY_S = 3.0
STALL_MIN_S = 0.5
STALL_MAX_S = 1.2
LONG_STALL_S = 3.0
TRAFFIC_RATE_PER_S = 10.0
"""Each node sends each of its targets one message per 100 ms."""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(LIFEGUARD_S + 240)
def test_nodes_that_block_their_loop_are_not_declared_dead(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    """16 nodes, one per host. For ``SMARTROUTE_LIFEGUARD_S`` (120 s) two of them block their
    own event loop (``time.sleep`` on the loop thread) for a random 0.5-1.2 s every 3 s, and
    one of those once for 3 s; meanwhile every node sends one message per 100 ms to each
    slow node's subscriber and to two other nodes' subscribers. Then no node has seen any
    PeerDown, and for every (sender, subscriber) pair the numbers accepted arrived exactly
    once, in order, and nothing else did.
    """
    lan = lan_factory(NODES)
    hosts = lan.hosts
    started = time.monotonic()
    nodes = [start(host, [endpoint(hosts[1] if i == 0 else hosts[0])])
             for i, host in enumerate(hosts)]
    for i, node in enumerate(nodes):
        node.call("subscribe_tally", name=f"n:{i}")
    slow = nodes[:SLOW_NODES]
    for j, node in enumerate(slow):
        node.call("subscribe_tally", name=f"slow:{j}")
    meet(nodes, 90)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == NODES + SLOW_NODES, 30,
                   what=f"{node} has the whole table")
    setup_s = time.monotonic() - started
    assert peer_downs(nodes) == []  # nothing before the scenario counts

    targets = {i: [f"slow:{j}" for j in range(SLOW_NODES)]
               + [f"n:{(i + 1) % NODES}", f"n:{(i + 7) % NODES}"] for i in range(NODES)}
    cpu_before = sum(_cpu_seconds(node.pid) for node in nodes)
    scenario_started = time.monotonic()
    traffic = {i: node.call("traffic", targets=targets[i], rate_per_s=TRAFFIC_RATE_PER_S,
                            for_s=LIFEGUARD_S) for i, node in enumerate(nodes)}
    rng = random.Random(10)
    stallers = [node.call("stall_every", every_s=STALL_EVERY_S, min_s=STALL_MIN_S,
                          max_s=STALL_MAX_S, for_s=LIFEGUARD_S, seed=rng.randrange(2**32),
                          long_at_s=LIFEGUARD_S / 2 if j == 0 else 0,
                          long_s=LONG_STALL_S if j == 0 else 0)
                for j, node in enumerate(slow)]
    sent = {i: node.call("traffic_result", traffic=traffic[i],
                         answer_within_s=LIFEGUARD_S + TRAFFIC_ANSWER_S)
            for i, node in enumerate(nodes)}
    stalls = [node.call("stall_result", staller=stallers[j], answer_within_s=TRAFFIC_ANSWER_S)
              for j, node in enumerate(slow)]
    scenario_s = time.monotonic() - scenario_started
    cpu_share = (sum(_cpu_seconds(node.pid) for node in nodes) - cpu_before) / scenario_s

    accepted = sum(record["accepted"] for by_target in sent.values()
                   for record in by_target.values())
    tallies = drain(nodes, lambda arrived: arrived >= accepted)
    downs = peer_downs(nodes)
    owner = {f"n:{i}": i for i in range(NODES)} | {f"slow:{j}": j for j in range(SLOW_NODES)}
    wrong: list[str] = []
    delivered = 0
    for i, by_target in sent.items():
        for target, record in by_target.items():
            refused = set(record["link_full"]) | set(record["no_route"])
            expected = [n for n in range(record["attempted"]) if n not in refused]
            got = tallies[owner[target]].get(target, {}).get(nodes[i].node_id, [])
            delivered += len(got)
            if got != expected or record["errors"]:
                in_order = all(x < y for x, y in itertools.pairwise(got))
                wrong.append(f"node {i} -> {target}: accepted {len(expected)}, arrived "
                             f"{len(got)} ({len(set(got))} distinct, "
                             f"{'in order' if in_order else 'OUT OF ORDER'}), "
                             f"errors {record['errors']}")
    senders = {node.node_id for node in nodes}
    strangers = [name for tally in tallies for name, by_sender in tally.items()
                 for sender in by_sender if sender not in senders]
    link_full = sum(len(r["link_full"]) for t in sent.values() for r in t.values())
    no_route = sum(len(r["no_route"]) for t in sent.values() for r in t.values())
    print(f"{NODES} nodes ({SLOW_NODES} slow), {LIFEGUARD_S:.0f} s: setup {setup_s:.1f} s, "
          f"scenario {scenario_s:.1f} s, nodes' CPU {cpu_share:.2f} cores; stalls "
          f"{[len(s) for s in stalls]} (longest {max(max(s, default=0) for s in stalls):.2f} s); "
          f"accepted {accepted}, delivered {delivered}, LinkFull {link_full}, "
          f"no route {no_route}; PeerDown {len(downs)}; pairs wrong {len(wrong)}")
    for line in wrong[:10]:
        print("  ", line)
    index = {node.node_id: i for i, node in enumerate(nodes)}
    for i, event in downs[:20]:
        print(f"   node {i} saw PeerDown of node {index.get(event['node_id'])} "
              f"({event.get('reason')})")
    assert downs == [], f"{len(downs)} PeerDown events; a busy loop was declared dead"
    assert wrong == [], f"{len(wrong)} sender/subscriber pairs did not get what was accepted"
    assert strangers == []
    assert accepted > 0
