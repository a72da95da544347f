"""DNS discovery against a real DNS server: dnsmasq in one namespace of a simulated LAN, every
other host's /etc/resolv.conf pointing at it, nodes as real processes that know one another
only by a name (no mDNS, no seeds).

Needs root (network namespaces) and dnsmasq (``make test`` installs it when root); skipped
with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smartroute.testing import wait_until
from smartroute.testing.cluster import AgentProcess
from smartroute.testing.dnsmasq import DnsServer, dnsmasq_available
from smartroute.testing.lan import Host, Lan, lan_available

pytestmark = pytest.mark.lan

CLUSTER = "dns"
NAME = "chat.smartroute.test"
SRV_NAME = "_smartroute._tcp.chat.smartroute.test"
PORT = 7001
DNS_INTERVAL_S = 0.5
WINDOW_S = 4 * DNS_INTERVAL_S
"""An observation window: four rounds of resolution, each of which could have changed the mesh."""

Start = Callable[..., AgentProcess]


@pytest.fixture
def lan(request: pytest.FixtureRequest) -> Iterator[Lan]:
    reason = lan_available() or dnsmasq_available()
    if reason is not None:
        pytest.skip(reason)
    with Lan(request.param if hasattr(request, "param") else 5, name="dns") as made:
        yield made


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """A node on a LAN host, finding peers through ``discovery`` only; all SIGKILLed at the end."""
    agents: list[AgentProcess] = []

    def run(host: Host, discovery: list[str], port: int = PORT) -> AgentProcess:
        agent = AgentProcess(cluster=CLUSTER, prefix=host.prefix, host=host.address, port=port,
                             seeds=discovery, timings={"dns_interval_s": DNS_INTERVAL_S},
                             log_path=tmp_path / f"n{len(agents)}.log")
        agents.append(agent)
        return agent

    yield run
    for agent in agents:
        agent.kill()


def peer_ids(node: AgentProcess) -> set[str]:
    return {p["node_id"] for p in node.call("peers")}


def meet(nodes: list[AgentProcess], timeout: float = 10.0) -> None:
    for node in nodes:
        others = {n.node_id for n in nodes if n is not node}
        wait_until(lambda node=node, others=others: peer_ids(node) == others, timeout,
                   what=f"{node} meets the other {len(others)}")


def warnings_about(node: AgentProcess, text: str) -> int:
    assert node.log_path is not None
    return sum(" WARNING " in line and text in line
               for line in node.log_path.read_text(errors="replace").splitlines())


def test_nodes_meet_by_a_name_and_follow_its_records(lan: Lan, start: Start,
                                                     tmp_path: Path) -> None:
    dns_host, h1, h2, h3, h4 = lan.hosts
    dns = DnsServer(dns_host, tmp_path, {NAME: [h1.address, h2.address]})
    for host in (h1, h2, h3, h4):
        host.use_nameserver(dns.address)
    began = time.monotonic()
    by_name = [f"dns:{NAME}:{PORT}"]
    a, b = start(h1, by_name), start(h2, by_name)
    meet([a, b])
    print(f"two nodes met by name {time.monotonic() - began:.2f} s after the first was spawned")

    # Scale up: c does no discovery at all, so only its record can bring it in; d resolves too.
    c, d = start(h3, []), start(h4, by_name)
    c.call("subscribe", name="user:c")
    added = time.monotonic()
    dns.set_records({NAME: [h1.address, h2.address, h3.address, h4.address]})
    meet([a, b, c, d])
    joined = time.monotonic() - added
    print(f"scale up: the new records were joined {joined:.2f} s after dnsmasq served them "
          f"(dns_interval_s {DNS_INTERVAL_S})")
    assert joined < 3 * DNS_INTERVAL_S + 2.0
    a.call("wait_for", name="user:c")

    # A removed record alone does not kill a live peer: DNS only ever hints.
    dns.set_records({NAME: [h1.address, h3.address, h4.address]})
    time.sleep(WINDOW_S)
    for node in (a, c, d):
        assert b.node_id in peer_ids(node)
    assert [e for n in (a, b, c, d) for e in n.call("events") if e["event"] == "PeerDown"] == []

    # Stopped nodes are forgotten: b with its record gone says BYE; d is SIGKILLed and its
    # record stays, so every round hints its address again: it stays dead all the same.
    b.close()
    d.kill()
    for node in (a, c):
        wait_until(lambda node=node: peer_ids(node) == {a.node_id, c.node_id} - {node.node_id},
                   5, what=f"{node} forgets b and d")
    time.sleep(WINDOW_S)
    assert peer_ids(a) == {c.node_id} and peer_ids(c) == {a.node_id}
    for node in (a, c):
        downs = {(e["node_id"], e["reason"]) for e in node.call("events")
                 if e["event"] == "PeerDown"}
        assert (b.node_id, "bye") in downs and {n for n, _ in downs} == {b.node_id, d.node_id}

    # The DNS server stopped mid-run changes nothing for a formed mesh.
    queries = dns.queries
    dns.stop()
    time.sleep(WINDOW_S)
    assert peer_ids(a) == {c.node_id} and peer_ids(c) == {a.node_id}
    assert [e for n in (a, c) for e in n.call("events") if e["event"] == "PeerDown"] == []
    assert a.call("send_to", body="still here", target="user:c") == 1
    wait_until(lambda: [m["body"] for m in c.call("received")] == ["still here"],
               what="delivered with DNS down")
    assert warnings_about(a, f"dns:{NAME}:{PORT} does not resolve") == 1  # one line an outage
    print(f"dnsmasq answered {queries} queries; stopped, the mesh of 2 went on for "
          f"{WINDOW_S:.0f} s and node a logged one warning")


@pytest.mark.parametrize("lan", [pytest.param(4, id="4 hosts")], indirect=True)
def test_srv_records_give_each_node_its_host_and_port(lan: Lan, start: Start,
                                                      tmp_path: Path) -> None:
    """Two nodes on one host at different ports (an A record could not tell them apart), one
    on another, and a fourth whose SRV record is there but its host's A record is not, yet."""
    dns_host, h1, h2, h3 = lan.hosts
    records = {"n1.smartroute.test": [h1.address], "n2.smartroute.test": [h2.address]}
    srv = [(SRV_NAME, "n1.smartroute.test", 7101), (SRV_NAME, "n1.smartroute.test", 7102),
           (SRV_NAME, "n2.smartroute.test", 7201), (SRV_NAME, "n3.smartroute.test", 7301)]
    dns = DnsServer(dns_host, tmp_path, records, srv=srv)
    for host in (h1, h2, h3):
        host.use_nameserver(dns.address)
    by_srv = [f"dns-srv:{SRV_NAME}"]
    nodes = [start(h1, by_srv, 7101), start(h1, by_srv, 7102), start(h2, by_srv, 7201)]
    meet(nodes)
    late = start(h3, [], 7301)
    dns.set_records({**records, "n3.smartroute.test": [h3.address]})
    meet([*nodes, late])
    for node in nodes:
        assert warnings_about(node, "host n3.smartroute.test does not resolve") == 1


DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
REPO = DEPLOY.parent.parent

CHAT_CLIENT = """
import json, socket, sys, time
def connect(host):
    sock = socket.create_connection((host, 7070), timeout=5)
    return sock, sock.makefile("r")
def ask(conn, **msg):
    sock, lines = conn
    sock.sendall((json.dumps(msg) + "\\n").encode())
    while True:
        answer = json.loads(lines.readline())
        if answer.get("type") == msg["type"] or answer.get("type") == "registered":
            return answer
gateways = sys.argv[1:]
for host, name in zip(gateways, ["alice", "bob"]):
    conn = connect(host)
    assert ask(conn, type="register", name=name)["type"] == "registered"
    globals()[name] = conn
third = connect(gateways[2])
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    users = ask(third, type="who")["users"]
    if sorted(users) == ["alice", "bob"]:
        break
    time.sleep(0.05)
print(json.dumps(sorted(users)))
"""
"""Registers alice on the first gateway and bob on the second; prints who the third sees."""


def recipe_command(path: Path) -> list[str]:
    """The ``command: [...]`` of a deploy recipe (written as a JSON list on one line)."""
    for line in path.read_text().splitlines():
        if line.strip().startswith("command: ["):
            command: list[str] = json.loads(line.split("command:", 1)[1])
            return command
    raise AssertionError(f"{path} has no command line")


@pytest.mark.parametrize(("lan", "recipe", "name", "pod_ip"), [
    pytest.param(4, "compose.yaml", "gateway", False, id="compose"),
    pytest.param(4, "kubernetes.yaml", "chat-hl.default.svc.cluster.local", True,
                 id="kubernetes"),
], indirect=["lan"])
def test_the_deploy_recipes_commands_form_one_chat(lan: Lan, recipe: str, name: str,
                                                   pod_ip: bool, tmp_path: Path) -> None:
    """The recipe's own command line, bound to 0.0.0.0 in three hosts that know the others
    only as ``name`` (with ``POD_IP`` set as the downward API would): one chat."""
    command = recipe_command(DEPLOY / recipe)
    assert command[0] == "python" and f"dns:{name}:7001" in command
    dns_host, *hosts = lan.hosts
    dns = DnsServer(dns_host, tmp_path, {name: [host.address for host in hosts]})
    gateways = []
    for host in hosts:
        host.use_nameserver(dns.address)
        env = {**os.environ, "POD_IP": host.address} if pod_ip else \
            {k: v for k, v in os.environ.items() if k != "POD_IP"}
        gateways.append(host.run([sys.executable, *command[1:], "--log-level", "INFO"],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                                 stderr=(tmp_path / f"{host.namespace}.log").open("w")))
    for host, gateway in zip(hosts, gateways, strict=True):
        assert gateway.stdout is not None
        ready = gateway.stdout.readline()
        assert "chat gateway" in ready and "listening on 0.0.0.0:7070" in ready, ready
        if pod_ip:  # advertised from $POD_IP: peers dial the pod's address
            assert f"at tcp://{host.address}:7001)" in ready, ready
    client = hosts[2].run([sys.executable, "-c", CHAT_CLIENT, *(h.address for h in hosts)],
                          stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate(timeout=30)
    assert json.loads(out) == ["alice", "bob"], out
    for gateway in gateways:
        gateway.terminate()
    for gateway in gateways:
        assert gateway.wait(10) == 0
        assert gateway.stdout is not None
        gateway.stdout.close()
