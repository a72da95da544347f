"""Zero-configuration clustering on a simulated LAN: one network namespace per host, a bridge
between them, nodes as real processes with mDNS bound to their host's LAN interface only.

Needs root (network namespaces); skipped with the reason otherwise.
"""

from __future__ import annotations

import collections
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

pytestmark = pytest.mark.lan

CLUSTER = "lan"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start a node on a LAN host, mDNS on that host's address only; all SIGKILLed at the end."""
    agents: list[AgentProcess] = []

    def run(host: Host, *, cluster: str = CLUSTER, mdns: bool = True,
            **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(cluster=cluster, prefix=host.prefix, host=host.address, mdns=mdns,
                             interfaces=[host.address], log_path=tmp_path / f"n{len(agents)}.log",
                             **kwargs)
        agents.append(agent)
        return agent

    yield run
    for agent in agents:
        agent.kill()


def meet(nodes: list[AgentProcess], timeout: float = 10.0) -> None:
    for node in nodes:
        wait_until(lambda node=node: len(node.call("peers")) == len(nodes) - 1, timeout,
                   what=f"{node} meets the other {len(nodes) - 1}")


def test_zero_configuration_forms_one_cluster(lan_factory: Callable[[int], Lan],
                                              start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(4)
    nodes = [start(host) for host in lan.hosts]
    nodes.append(start(lan.hosts[0]))  # two nodes on one host
    for i, node in enumerate(nodes):
        node.call("subscribe", name=f"user:{i}")
    meet(nodes)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == len(nodes), 10,
                   what="the whole table")
        assert sorted(s["name"] for s in node.call("subscribers")) == \
            sorted(f"user:{i}" for i in range(len(nodes)))
    assert nodes[4].call("send_to", body="hi all", mode="ALL") == 5


def test_two_clusters_on_one_lan_never_merge(lan_factory: Callable[[int], Lan],
                                             start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(4)
    red = [start(lan.hosts[i], cluster="red") for i in (0, 1)]
    blue = [start(lan.hosts[i], cluster="blue") for i in (2, 3)]
    meet(red)
    meet(blue)
    time.sleep(2.0)  # an observation window: a merge would show within it
    assert {p["node_id"] for p in red[0].call("peers")} == {red[1].node_id}
    assert {p["node_id"] for p in blue[0].call("peers")} == {blue[1].node_id}


def test_a_late_node_joins_and_every_node_routes_to_it(lan_factory: Callable[[int], Lan],
                                                       start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(4)
    nodes = [start(host) for host in lan.hosts[:3]]
    meet(nodes)
    started = time.monotonic()
    late = start(lan.hosts[3])
    late.call("subscribe", name="user:late")
    for node in nodes:
        wait_until(lambda node=node: node.call("lookup", name="user:late"), 10,
                   what="routes to the late node")
    elapsed = time.monotonic() - started
    print(f"late join: every node routes to it {elapsed:.3f} s after its process started")
    assert nodes[0].call("send_to", body="welcome", target="user:late") == 1
    wait_until(lambda: [d["body"] for d in late.call("received")] == ["welcome"],
               what="delivered")


def test_clean_stop_at_once_and_sigkill_within_the_dead_timeout(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(3)
    a, b, c = (start(host) for host in lan.hosts)
    meet([a, b, c])
    stopped = time.monotonic()
    b.close()
    for node in (a, c):
        wait_until(lambda node=node: len(node.call("peers")) == 1, 5, what="BYE seen")
    assert time.monotonic() - stopped < 1.0
    c.call("subscribe", name="user:c")
    a.call("wait_for", name="user:c")
    c.kill()
    killed = time.monotonic()
    wait_until(lambda: not a.call("peers") and not a.call("lookup", name="user:c"), 5,
               interval=0.02, what="SIGKILL seen")
    assert time.monotonic() - killed < 2.0  # dead_after_s 1.5 s by default


def test_a_host_cut_off_and_healed_is_purged_then_relearned(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(3)
    nodes = [start(host) for host in lan.hosts]
    for i, node in enumerate(nodes):
        node.call("subscribe", name=f"user:{i}")
    meet(nodes)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == 3, 10, what="table")
    lan.hosts[2].cut()
    for node in nodes[:2]:
        wait_until(lambda node=node: not node.call("lookup", name="user:2"), 5,
                   what="the cut host purged")
    wait_until(lambda: not nodes[2].call("peers"), 5, what="the cut host purges the others")
    lan.hosts[2].heal()
    meet(nodes, timeout=40.0)  # re-dial of dead peers and peer exchange heal the mesh
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == 3, 10, what="re-learned")
    assert nodes[0].call("send_to", body="back", target="user:2") == 1
    wait_until(lambda: [d["body"] for d in nodes[2].call("received")] == ["back"],
               what="messages flow again")


LONG_CUT_S = 45.0
"""Longer than ``redial_dead_for_s`` (30 s), after which the mesh used to stop dialling."""


@pytest.mark.timeout(180)
def test_a_cut_longer_than_redial_dead_for_s_still_heals_with_mdns_only(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    """Issue 13: a host cut off for 45 s rejoins once the network heals, within
    ``redial_backoff_max_s`` (60 s) and a few seconds, with mDNS only (its cached records
    announce nothing new, so only the redial of dead peers can heal). Before: still split."""
    lan = lan_factory(3)
    nodes = [start(host) for host in lan.hosts]
    for i, node in enumerate(nodes):
        node.call("subscribe", name=f"user:{i}")
    meet(nodes)
    lan.hosts[2].cut()
    for node in nodes[:2]:
        wait_until(lambda node=node: not node.call("lookup", name="user:2"), 5,
                   what="the cut host purged")
    time.sleep(LONG_CUT_S)  # the scenario is the cut's length: nothing to poll for meanwhile
    lan.hosts[2].heal()
    healed = time.monotonic()
    meet(nodes, timeout=60.0 + 10.0)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == 3, 10, what="re-learned")
    print(f"cut {LONG_CUT_S:.0f} s: one mesh again {time.monotonic() - healed:.1f} s after "
          "the heal")
    assert nodes[0].call("send_to", body="back", target="user:2") == 1
    wait_until(lambda: [d["body"] for d in nodes[2].call("received")] == ["back"],
               what="messages flow again")


SPLIT_S = 90.0


@pytest.mark.timeout(240)
def test_a_three_three_split_for_90_s_with_seeds_on_one_side_heals(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    """Issue 13: six hosts split 3+3 (each side drops what it sends to the other) for 90 s,
    every seed on one side; after the heal one mesh and one table again within
    ``redial_backoff_max_s`` (60 s) and a few seconds."""
    lan = lan_factory(6)
    first = start(lan.hosts[0], mdns=False)
    nodes = [first, *(start(host, mdns=False, seeds=[first.endpoint])
                      for host in lan.hosts[1:])]
    for i, node in enumerate(nodes):
        node.call("subscribe", name=f"user:{i}")
    meet(nodes, timeout=20.0)
    side_a, side_b = lan.hosts[:3], lan.hosts[3:]
    for host in side_a:
        host.block(side_b)
    for host in side_b:
        host.block(side_a)
    for node in nodes[:3]:
        wait_until(lambda node=node: len(node.call("peers")) == 2, 10,
                   what="side A sees only side A")
    for node in nodes[3:]:
        wait_until(lambda node=node: len(node.call("peers")) == 2, 10,
                   what="side B sees only side B")
    time.sleep(SPLIT_S)  # the scenario is the split's length: nothing to poll for meanwhile
    for host in lan.hosts:
        host.unblock()
    healed = time.monotonic()
    meet(nodes, timeout=60.0 + 10.0)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == 6, 10, what="one table")
    print(f"3+3 split {SPLIT_S:.0f} s: one mesh again {time.monotonic() - healed:.1f} s after "
          "the heal")
    assert nodes[0].call("send_to", body="across", target="user:5") == 1
    sent = time.monotonic()
    try:
        wait_until(lambda: [d["body"] for d in nodes[5].call("received")] == ["across"],
                   ACROSS_S, what="messages cross the healed split")
    except TimeoutError as exc:
        # A gap and resend livelock failed this in 1 of ~4 runs (the mesh and the table were
        # whole): a heartbeat of a stream replaced during the split, arriving late, switched
        # its receiver back to it (streams.py now drops it as stale). What each side's
        # streams did, for whoever reads a failure.
        keys = ("retransmitted_batches", "gap_batches", "duplicate_batches", "stale_batches",
                "resend_requests", "restarted_streams",
                "unknown_sender_records", "lost_messages", "sent_remote_frames", "received")
        figures = {name: {k: node.call("stats").get(k) for k in keys}
                   for name, node in (("n0", nodes[0]), ("n5", nodes[5]))}
        raise AssertionError(f"{exc}: {figures}") from exc
    print(f"the first message crossed {time.monotonic() - sent:.2f} s after it was sent; "
          "late batches of replaced streams dropped, per node: "
          f"{[node.call('stats')['stale_batches'] for node in nodes]}")


ACROSS_S = 20.0
"""Longest the first message after the heal may take (its streams start anew: a lost first
batch is asked again within RESEND_INTERVAL_S; measured well under 1 s)."""


def _retransmits(host: Host) -> int:
    out = subprocess.run([*host.prefix, "nstat", "-az", "TcpRetransSegs"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("TcpRetransSegs"):
            return int(line.split()[1])
    return 0


LOSS_PERCENT = 10
LOSS_DURATION_S = 60.0
SEND_INTERVAL_S = 0.05


def test_ten_percent_loss_for_a_minute_loses_nothing_and_kills_no_one(
        lan_factory: Callable[[int], Lan], start: Callable[..., AgentProcess]) -> None:
    lan = lan_factory(3)
    nodes = [start(host) for host in lan.hosts]
    for i, node in enumerate(nodes):
        node.call("subscribe", name=f"user:{i}", reply="count")
    meet(nodes)
    for node in nodes:
        wait_until(lambda node=node: len(node.call("subscribers")) == 3, 10, what="table")
    before = sum(_retransmits(host) for host in lan.hosts)
    for host in lan.hosts:
        host.netem(loss_percent=LOSS_PERCENT)
    sent: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + LOSS_DURATION_S
    i = 0
    while time.monotonic() < deadline:  # bounded by time (and so by count)
        target = f"user:{i % 3}"
        assert nodes[(i + 1) % 3].call("send_to", body=i, target=target,
                                       answer_within_s=30) == 1
        sent[target] += 1
        i += 1
        time.sleep(SEND_INTERVAL_S)
    for host in lan.hosts:
        host.clear_netem()
    for j, node in enumerate(nodes):
        wait_until(lambda node=node, j=j: node.call("counts")[f"user:{j}"] == sent[f"user:{j}"],
                   30, what="every message delivered")
        assert [e for e in node.call("events") if e["event"] == "PeerDown"] == []
    retransmits = sum(_retransmits(host) for host in lan.hosts) - before
    print(f"{i} messages under {LOSS_PERCENT}% loss for {LOSS_DURATION_S:.0f} s: all delivered, "
          f"no false death; TCP retransmitted {retransmits} segments")
    assert retransmits > 0  # the loss was real


SECRET = "lan test secret: long enough, random enough for a test"

RAW_PROBE = """
import sys, zmq
from smartroute import wire
context = zmq.Context()
sock = context.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.ROUTING_ID, bytes(range(1, 21)))
sock.connect(sys.argv[1])
forged = wire.encode_batch([wire.encode_msg(wire.Msg(1, None, 0, "user:0", "str", b"x", None,
                                                     None))])
for _ in range(50):
    try:
        sock.send(forged, zmq.NOBLOCK)
    except zmq.Again:
        pass
print(sock.poll(2000))
context.destroy(linger=0)
"""


def test_a_secret_cluster_admits_members_only(lan_factory: Callable[[int], Lan],
                                              start: Callable[..., AgentProcess]) -> None:
    """Two members with the secret and, on a third host of the same LAN, an outsider without
    it, one with a wrong secret and a raw ZeroMQ socket: all three get nothing in."""
    lan = lan_factory(3)
    members = [start(lan.hosts[0], secret=SECRET), start(lan.hosts[1], secret=SECRET)]
    members[0].call("subscribe", name="user:0", reply="echo")
    members[1].call("subscribe", name="user:1")
    meet(members)
    assert members[1].call("request", target="user:0", body="ping") == {
        "echo": "ping", "by": members[0].node_id}
    outsiders = [start(lan.hosts[2]), start(lan.hosts[2], secret="a wrong secret, also long")]
    for outsider in outsiders:
        outsider.call("subscribe", name="user:0")  # would receive user:0's mail if it got in
    probe = lan.hosts[2].run([sys.executable, "-c", RAW_PROBE, members[0].endpoint],
                             stdout=subprocess.PIPE, text=True)
    answers, _ = probe.communicate(timeout=30)
    assert answers.strip() == "0", "the raw socket got an answer"
    # Both outsiders have had mDNS finds and handshakes fail by now, several times over.
    wait_until(lambda: all(o.call("stats")["handshake_failures"] > 0 for o in outsiders), 10,
               what="each outsider's handshakes fail")
    wait_until(lambda: members[0].call("stats")["handshake_failures"] >= 3, 10,
               what="the member refuses the outsiders and the raw socket")
    assert [m["body"] for m in members[0].call("received")] == ["ping"]
    assert members[1].call("send_to", body="members only", mode="ALL") == 2
    arrived: list[str] = []
    wait_until(lambda: arrived.extend(m["body"] for m in members[0].call("received"))
               or arrived == ["members only"], 10, what="the member's delivery")
    for outsider in outsiders:
        assert outsider.call("peers") == []
        assert outsider.call("subscribers") == [
            {"name": "user:0", "node_id": outsider.node_id, "meta": {}}]
        assert outsider.call("send_to", body="forged", mode="ALL") == 1  # only its own
        assert [m["body"] for m in outsider.call("received")] == ["forged"]
    for member in members:
        assert len(member.call("peers")) == 1
        assert sorted(s["name"] for s in member.call("subscribers")) == ["user:0", "user:1"]
    # Observation window: had anything forged got in, it would have arrived by now.
    time.sleep(0.5)
    assert members[0].call("received") == []
