"""The namespace LAN harness (smartroute.testing.lan): reachability, multicast, cut/heal, loss,
and that everything it builds is gone after close()."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartroute.testing import wait_until
from smartroute.testing.lan import Host, Lan, LanError, lan_available

pytestmark = pytest.mark.lan

_REASON = lan_available()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

ECHO_PORT = 5398
MCAST_GROUP = "224.0.0.251"
MCAST_PORT = 5399  # not 5353: no clash with a real mDNS responder
PROBE_TIMEOUT_S = 0.3
CHANGE_TIMEOUT_S = 5.0
PROCESS_TIMEOUT_S = 10.0

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

ECHO_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.sendto(b"probe", (sys.argv[1], int(sys.argv[2])))
try:
    sys.exit(0 if s.recv(2048) == b"probe" else 1)
except OSError:
    sys.exit(1)
"""

MCAST_RECEIVER = """
import socket, struct, sys
group, port, local = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(local)))
print("joined", flush=True)
s.settimeout(5)
data, peer = s.recvfrom(2048)
print(data.decode(), peer[0], flush=True)
"""

MCAST_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(3):
    s.sendto(b"hello-multicast", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.02)
"""


@pytest.fixture
def lan() -> Iterator[Lan]:
    with Lan(2, name="t") as built:
        yield built


def start_echo(host: Host) -> subprocess.Popen[str]:
    """A UDP echo server on ``host``'s address; killed by the Lan's close()."""
    server = host.run([sys.executable, "-c", ECHO_SERVER, host.address, str(ECHO_PORT)],
                      stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


def reachable(source: Host, target: Host) -> bool:
    """One UDP echo round trip from ``source`` to ``target``'s echo server."""
    probe = subprocess.run(
        [*source.prefix, sys.executable, "-c", ECHO_PROBE, target.address, str(ECHO_PORT),
         str(PROBE_TIMEOUT_S)], timeout=PROCESS_TIMEOUT_S, check=False)
    return probe.returncode == 0


def test_hosts_have_their_addresses_and_namespaces(lan: Lan) -> None:
    assert [host.address for host in lan.hosts] == ["198.18.0.1", "198.18.0.2"]
    assert [host.index for host in lan.hosts] == [0, 1]
    names = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               check=True).stdout.split())
    assert {host.namespace for host in lan.hosts} | {lan.bridge_namespace} <= names
    assert all(ns.startswith(lan.name + "-") for ns in lan.namespaces)


def test_hosts_reach_each_other_over_udp(lan: Lan) -> None:
    a, b = lan.hosts
    start_echo(a)
    start_echo(b)
    assert wait_until(lambda: reachable(a, b), CHANGE_TIMEOUT_S, what="a -> b echo")
    assert wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="b -> a echo")


@pytest.mark.skipif(shutil.which("ping") is None, reason="ping not installed (iputils-ping)")
def test_hosts_ping_each_other(lan: Lan) -> None:
    a, b = lan.hosts
    for source, target in ((a, b), (b, a)):
        done = subprocess.run([*source.prefix, "ping", "-c", "1", "-W", "2", target.address],
                              capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_multicast_reaches_the_other_host(lan: Lan) -> None:
    a, b = lan.hosts
    receiver = b.run([sys.executable, "-c", MCAST_RECEIVER, MCAST_GROUP, str(MCAST_PORT),
                      b.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "joined"
    subprocess.run([*a.prefix, sys.executable, "-c", MCAST_SENDER, MCAST_GROUP,
                    str(MCAST_PORT)], timeout=PROCESS_TIMEOUT_S, check=True)
    out, err = receiver.communicate(timeout=PROCESS_TIMEOUT_S)
    assert receiver.returncode == 0, err
    assert out.split() == ["hello-multicast", a.address]


def test_cut_isolates_a_host_and_heal_restores_it(lan: Lan) -> None:
    a, b = lan.hosts
    start_echo(a)
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable before cut")
    a.cut()
    wait_until(lambda: not reachable(b, a), CHANGE_TIMEOUT_S, what="a unreachable after cut")
    assert not reachable(b, a)
    a.heal()
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable after heal")


def test_full_loss_drops_traffic_and_clearing_restores_it(lan: Lan) -> None:
    a, b = lan.hosts
    start_echo(a)
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable before netem")
    a.netem(loss_percent=100)
    wait_until(lambda: not reachable(b, a), CHANGE_TIMEOUT_S, what="a silent under 100% loss")
    assert not reachable(b, a)
    a.clear_netem()
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable after clear")
    a.clear_netem()  # clearing twice is a no-op


def test_partial_loss_drops_some_packets(lan: Lan) -> None:
    a, b = lan.hosts
    start_echo(a)
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable before netem")
    a.netem(loss_percent=50)
    probe = subprocess.run(  # 100 probes: all lost or none lost has odds ~ 2**-99
        [*b.prefix, sys.executable, "-c", """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.02)
got = 0
for i in range(100):
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    try:
        s.recv(16)
        got += 1
    except OSError:
        pass
print(got)
""", a.address, str(ECHO_PORT)], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
        check=True)
    assert 0 < int(probe.stdout) < 100


def test_netem_delay_when_the_kernel_has_netem(lan: Lan) -> None:
    if not lan.netem_supported:
        pytest.skip("kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): delay cannot be emulated")
    a, b = lan.hosts
    start_echo(a)
    wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable before netem")
    a.netem(delay_ms=200)
    started = time.monotonic()
    assert wait_until(lambda: reachable(b, a), CHANGE_TIMEOUT_S, what="a reachable, delayed")
    assert time.monotonic() - started >= 0.2


def test_close_kills_processes_and_removes_every_namespace() -> None:
    def root_state() -> tuple[str, str]:
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=True).stdout
        routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                                text=True, check=True).stdout
        return ("\n".join(sorted(line.split(":")[1] for line in links.splitlines())), routes)

    before = root_state()
    lan = Lan(2, name="t")
    sleeper = lan.hosts[1].run(["sleep", "60"])
    assert root_state() == before  # nothing created in the root namespace
    lan.close()
    assert sleeper.poll() == -9
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert lan.name not in listed
    lan.close()  # idempotent
    with pytest.raises(LanError):
        lan.hosts[0].run(["true"])
    assert root_state() == before


def test_close_runs_when_the_test_body_raises() -> None:
    with pytest.raises(RuntimeError), Lan(1, name="t") as lan:
        raise RuntimeError("test failed")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert lan.name not in listed


def test_a_host_gets_its_own_resolv_conf_and_close_removes_it() -> None:
    lan = Lan(2)
    try:
        a, b = lan.hosts
        a.use_nameserver(b.address, search=["smartroute.test"])
        seen = subprocess.run([*a.prefix, "cat", "/etc/resolv.conf"], capture_output=True,
                              text=True, check=True, timeout=PROCESS_TIMEOUT_S).stdout
        assert seen == (f"nameserver {b.address}\nsearch smartroute.test\n"
                        "options timeout:1 attempts:1\n")
        other = subprocess.run([*b.prefix, "cat", "/etc/resolv.conf"], capture_output=True,
                               text=True, check=True, timeout=PROCESS_TIMEOUT_S).stdout
        assert other == Path("/etc/resolv.conf").read_text()  # a host not told: the machine's
        written = lan._netns_paths[-1]
        assert written.exists()
    finally:
        lan.close()
    assert not written.exists() and not written.parent.exists()
