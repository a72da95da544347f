"""mDNS discovery between processes on loopback, with no seeds at all.

On ``lo`` (no MULTICAST flag) mDNS only works one way: a node started later finds the
earlier ones, not the reverse. Its HELLO makes every link two-way, so a full mesh still forms.
The symmetric case, on a real (simulated) LAN, is in test_lan.py.
"""

from __future__ import annotations

import time

import pytest

from smartroute.testing import FAST_TIMINGS, wait_until

from .conftest import Spawn

pytestmark = pytest.mark.processes

LOOPBACK_MDNS = {"mdns": True, "interfaces": ["127.0.0.1"], "timings": FAST_TIMINGS}


def test_nodes_with_no_configuration_find_each_other(spawn: Spawn) -> None:
    a = spawn(cluster="zeroconf", **LOOPBACK_MDNS)
    a.call("subscribe", name="user:alice")
    b = spawn(cluster="zeroconf", **LOOPBACK_MDNS)
    c = spawn(cluster="zeroconf", **LOOPBACK_MDNS)
    for node in (a, b, c):
        wait_until(lambda node=node: len(node.call("peers")) == 2, timeout=10,
                   what=f"{node} sees both others")
    c.call("wait_for", name="user:alice")
    assert c.call("send_to", body="found you", target="user:alice") == 1
    wait_until(lambda: [d["body"] for d in a.call("received")] == ["found you"],
               what="delivery")


def test_other_clusters_on_the_same_lan_never_merge(spawn: Spawn) -> None:
    red = [spawn(cluster="red", **LOOPBACK_MDNS) for _ in range(2)]
    blue = [spawn(cluster="blue", **LOOPBACK_MDNS) for _ in range(2)]
    for node in red + blue:
        wait_until(lambda node=node: len(node.call("peers")) == 1, timeout=10,
                   what="team mates meet")
    time.sleep(1.0)  # an observation window: a wrong merge would show within it
    assert {p["node_id"] for p in red[0].call("peers")} == {red[1].node_id}
    assert {p["node_id"] for p in blue[0].call("peers")} == {blue[1].node_id}
    for node in red + blue:
        assert node.call("stats")["refused_peers"] == 0  # filtered by TXT, never even dialled
