"""``node.metrics()`` and ``smartroute node --metrics-port``: Prometheus metrics of a node."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from smartroute import Node, UsageError
from smartroute.metrics import NodeCollector
from smartroute.testing import (
    async_wait_until,
    loopback_node,
    loopback_sync_node,
    reap,
    wait_until,
)

from .conftest import Spawn

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and (sample name, labels) -> value, as prometheus-client reads it."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return types, samples


def test_counters_gauges_and_losses_by_peer() -> None:
    registry = CollectorRegistry()
    stats = {"sent": 3, "lost_messages": 5, "peers": 2, "subscribers": 7}
    collector = NodeCollector(lambda: stats, lambda: {"ab12": 4, "cd34": 1}, lambda: None,
                              lambda: {"ab12": 0.00025})
    assert collector.register(registry) is collector
    types, samples = parse(generate_latest(registry).decode())
    assert types == {"smartroute_sent": "counter", "smartroute_lost_messages": "counter",
                     "smartroute_peers": "gauge", "smartroute_subscribers": "gauge",
                     "smartroute_peer_lost_messages": "counter",
                     "smartroute_peer_rtt_seconds": "gauge"}
    assert samples == {
        ("smartroute_sent_total", ()): 3, ("smartroute_lost_messages_total", ()): 5,
        ("smartroute_peers", ()): 2, ("smartroute_subscribers", ()): 7,
        ("smartroute_peer_lost_messages_total", (("peer", "ab12"),)): 4,
        ("smartroute_peer_lost_messages_total", (("peer", "cd34"),)): 1,
        ("smartroute_peer_rtt_seconds", (("peer", "ab12"),)): 0.00025}
    stats["sent"] = 4  # every scrape reads the node again
    assert parse(generate_latest(registry).decode())[1]["smartroute_sent_total", ()] == 4
    registry.unregister(collector)
    assert generate_latest(registry) == b""


async def test_node_metrics_move_when_messages_are_sent_and_read_from_any_thread() -> None:
    registry = CollectorRegistry()
    async with loopback_node() as a, loopback_node(a.endpoint) as b:
        collector = a.metrics(registry)
        await a.subscribe("user:alice", lambda msg: None)
        await b.wait_for("user:alice")
        for _ in range(3):
            await b.send_to("hi", target="user:alice")

        async def scraped() -> Samples:
            # From another thread, as the HTTP server scrapes: read on the node's loop.
            return parse((await asyncio.to_thread(generate_latest, registry)).decode())[1]

        samples = await async_wait_until(
            lambda: _delivered(scraped, 3), what="3 deliveries in the metrics")
        assert samples["smartroute_received_total", ()] >= 3
        assert samples["smartroute_peers", ()] == 1
        assert samples["smartroute_subscribers", ()] == 1
        with pytest.raises(ValueError, match="Duplicated"):
            b.metrics(registry)  # one node per registry: the names would clash
        registry.unregister(collector)
        b.metrics(registry)


async def _delivered(scraped: object, count: int) -> Samples | None:
    assert callable(scraped)
    samples: Samples = await scraped()
    return samples if samples.get(("smartroute_delivered_total", ())) == count else None


def test_without_prometheus_client_it_is_a_usage_error_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("prometheus_client", "prometheus_client.core", "prometheus_client.registry"):
        monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like
    monkeypatch.delitem(sys.modules, "smartroute.metrics")
    with pytest.raises(UsageError, match=r"pip install 'smartroute\[metrics\]'"):
        Node("metrics", discovery=[]).metrics(CollectorRegistry())


@pytest.mark.processes
def test_smartroute_node_serves_metrics_over_http(spawn: Spawn) -> None:
    a = spawn(cluster="cli-metrics")
    cli = subprocess.Popen(
        [sys.executable, "-m", "smartroute.cli", "node", "--cluster", "cli-metrics", "--host",
         "127.0.0.1", "--seed", a.endpoint, "--subscribe", "user:zed", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.put(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    try:
        printed = wait_until(lambda: _metrics_line(lines), timeout=15, what="the metrics URL")
        url = printed.removeprefix("metrics at ")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

        def scrape() -> Samples:
            with urllib.request.urlopen(url, timeout=5) as response:
                types, samples = parse(response.read().decode())
            assert types["smartroute_delivered"] == "counter"
            assert types["smartroute_peers"] == "gauge"
            return samples

        assert scrape()["smartroute_delivered_total", ()] == 0
        a.call("wait_for", name="user:zed")
        for i in range(3):
            assert a.call("send_to", body=i, target="user:zed") == 1
        samples = wait_until(lambda: (s := scrape())["smartroute_delivered_total", ()] == 3
                             and s, what="3 deliveries scraped")
        assert samples["smartroute_received_total", ()] == 3
        assert samples["smartroute_peers", ()] == 1
        assert samples["smartroute_subscribers", ()] == 1
        assert samples["smartroute_lost_messages_total", ()] == 0
        os.kill(cli.pid, signal.SIGTERM)
        assert cli.wait(10) == 0
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
        reap(cli)
    assert cli.stderr is not None
    assert cli.stderr.read() == ""
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)  # the server went with the node


def _metrics_line(lines: queue.Queue[str]) -> str | None:
    while not lines.empty():
        line = lines.get()
        if line.startswith("metrics at "):
            return line
    return None


def test_the_sync_facade_reads_its_counters_on_its_own_thread() -> None:
    registry = CollectorRegistry()
    with loopback_sync_node() as node:
        node.metrics(registry)
        node.subscribe("user:alice", lambda msg: None)
        assert node.send_to("hi", target="user:alice") == 1
        samples = wait_until(
            lambda: (s := parse(generate_latest(registry).decode())[1])
            [("smartroute_delivered_total", ())] == 1 and s, what="the delivery")
        assert samples["smartroute_subscribers", ()] == 1
