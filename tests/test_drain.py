"""``Node.drain``: a rolling restart under request load fails no request and leaves no ghost.

Issue 13, part 2: the node says LEAVING, peers stop choosing its subscribers for ANY at once,
it answers what it is handling and waits until everything it sent is acknowledged, then BYE.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from smartroute import ReceiveMode, UsageError
from smartroute.testing import loopback_node, wait_until
from smartroute.testing.cluster import AgentProcess
from smartroute.testing.memnet import MemNet, send
from tests.conftest import Spawn

CLUSTER = "drain"
SERVICE = "svc:work"
RUN_S = 60.0
"""The issue's scenario: a minute of restarts."""
RESTART_EVERY_S = 4.0
RATE_PER_S = 100.0


@pytest.fixture
def net() -> MemNet:
    return MemNet()


def test_peers_stop_choosing_a_leaving_node_for_any_and_it_settles(net: MemNet) -> None:
    a, b, c = net.mesh("a", "b", "c")
    for host in (b, c):
        host.protocol.subscribe(SERVICE, {}, net.now)
    net.flush()
    c.protocol.leave(net.now)
    assert not c.protocol.settled()  # LEAVING is on its way, unacknowledged
    net.flush()
    net.run(2 * net.timings.tick_interval_s)  # the ACKs of LEAVING come back
    assert c.protocol.settled()
    chosen = {next(iter(send(a.protocol, ReceiveMode.ANY, SERVICE, i).remote))
              for i in range(10)}
    assert chosen == {b.node_id}
    # Only the leaving node has one: it is still chosen (it still handles what reaches it).
    b.protocol.unsubscribe(b.protocol.table.local_by_name[SERVICE][0], net.now)
    net.flush()
    assert send(a.protocol, ReceiveMode.ANY, SERVICE, 0).remote.keys() == {c.node_id}


def start(spawn: Spawn, seeds: list[str], port: int = 0) -> AgentProcess:
    agent = spawn(cluster=CLUSTER, seeds=seeds, port=port, log_level="WARNING")
    agent.call("subscribe", name=SERVICE, reply="echo")
    return agent


def service_nodes(agent: AgentProcess) -> set[str]:
    return {s["node_id"] for s in agent.call("lookup", name=SERVICE)}


@pytest.mark.processes
@pytest.mark.timeout(RUN_S + 90)
def test_a_rolling_restart_with_drain_fails_no_request_and_leaves_no_ghost(
        spawn: Spawn) -> None:
    """Six nodes: one sends 100 ANY requests a second for a minute to the five others, one of
    which is drained and replaced every few seconds (on the same port, as a deployment does).
    Every request is answered; after each restart the table holds exactly the live ones."""
    client = spawn(cluster=CLUSTER, log_level="WARNING")
    workers = [start(spawn, [client.endpoint]) for _ in range(5)]
    wait_until(lambda: len(service_nodes(client)) == 5, 10, what="five workers known")
    load = client.call("paced_requests", target=SERVICE, rate_per_s=RATE_PER_S, for_s=RUN_S,
                       timeout=5.0)
    started = time.monotonic()
    restarts = 0
    ghosts: list[Any] = []
    while time.monotonic() - started < RUN_S - RESTART_EVERY_S:
        time.sleep(RESTART_EVERY_S)  # the scenario's pace: requests flow meanwhile
        old = workers.pop(0)
        port = int(old.endpoint.rsplit(":", 1)[1])
        assert old.call("drain", timeout=5.0, answer_within_s=10) is True
        old.kill()
        new = start(spawn, [client.endpoint], port=port)
        workers.append(new)
        restarts += 1
        live = {w.node_id for w in workers}
        try:
            wait_until(lambda live=live: service_nodes(client) == live, 10,
                       what="the table holds exactly the live workers")
        except TimeoutError:
            ghosts.append(sorted(service_nodes(client) - live))
    result = client.call("traffic_result", traffic=load, answer_within_s=RUN_S + 30)
    print(f"drain: {restarts} restarts, {result['sent']} requests, {result['answered']} "
          f"answered, failures {result['failures']}")
    assert restarts >= 10
    assert result["failures"] == {}, result["failures"]
    assert result["answered"] == result["sent"] == int(RATE_PER_S * RUN_S)
    assert ghosts == []
    assert [e for e in client.call("events") if e["event"] == "PeerDown"
            and e["reason"] != "bye"] == []


async def test_drain_of_a_closed_node_is_a_no_op_and_a_bad_timeout_is_refused() -> None:
    node = loopback_node(cluster=CLUSTER, timings=None)
    await node.start()
    with pytest.raises(UsageError):
        await node.drain(-1)
    began = time.monotonic()
    await node.drain(5.0)  # no peers: settled at once, then closed
    assert not node.running and time.monotonic() - began < 2.0
    await node.drain()  # again: nothing to do
