"""Prometheus metrics of a node (the ``smartroute[metrics]`` extra): ``node.metrics()``.

Every scrape reads ``stats()`` and ``losses`` once. Each counter of ``stats()`` becomes
``smartroute_<name>_total``; ``peers`` and ``subscribers`` are the gauges ``smartroute_peers``
and ``smartroute_subscribers``; ``losses`` is ``smartroute_peer_lost_messages_total`` with a
``peer`` label (the peer's node id), and each peer's smoothed round trip is the gauge
``smartroute_peer_rtt_seconds`` with the same label. Importing this module without
prometheus-client raises ``UsageError`` naming the extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from .errors import UsageError

try:
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise UsageError("smartroute metrics need prometheus-client: "
                     "pip install 'smartroute[metrics]'") from exc

PREFIX = "smartroute_"

GAUGES = frozenset({"peers", "subscribers", "loop_stall_max_ms"})
"""``stats()`` entries that are levels, not counts since start."""

HELP = {
    "sent": "messages send_to and request accepted",
    "received": "messages received from peers",
    "delivered": "messages handed to local subscribers",
    "dropped": "messages dropped (full queues, subscribers gone, dropped batches)",
    "lost_messages": "messages sent to a peer that went away for good before acknowledging them",
    "queue_full": "messages dropped because a handler's queue was full",
    "link_full": "send_to/request calls that raised LinkFull",
    "handler_errors": "handlers that raised",
    "malformed_frames": "frames from the network that were not a valid batch",
    "malformed_records": "invalid records inside valid batches",
    "refused_peers": "peers refused (another cluster or protocol version)",
    "handshake_failures": "CURVE handshakes that failed (a missing or different secret)",
    "impostor_frames": "frames whose routing id named another node than its key's",
    "peers": "live peers (alive or suspect)",
    "subscribers": "subscribers in the replicated table, local and remote",
    "loop_stall_max_ms": "the longest the node's timers ran late (its event loop blocked), in ms",
}
"""Help lines of the best-known entries; the others say which ``stats()`` key they are."""

SCRAPE_TIMEOUT_S = 5.0
"""A scrape from another thread waits this long for the node's event loop to read the
counters (they change on that loop); past it the scrape fails rather than hang the server."""


class NodeCollector(Collector):
    """Collects one node's ``stats()`` and per-peer ``losses`` on every scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, int]],
                 losses: Callable[[], Mapping[str, int]],
                 loop: Callable[[], asyncio.AbstractEventLoop | None],
                 rtts: Callable[[], Mapping[str, float]] | None = None) -> None:
        self._stats = stats
        self._losses = losses
        self._loop = loop
        self._rtts = rtts

    def register(self, registry: CollectorRegistry | None = None) -> NodeCollector:
        """Register on ``registry`` (default: prometheus_client's) and return self; a second
        node on one registry raises ``ValueError`` (duplicated time series)."""
        (REGISTRY if registry is None else registry).register(self)
        return self

    def _read(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        rtts = dict(self._rtts()) if self._rtts is not None else {}
        return dict(self._stats()), dict(self._losses()), rtts

    def _read_on_loop(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        loop = self._loop()
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return self._read()
        # Scrapes come on the HTTP server's thread; the counters live on the node's loop.
        future: concurrent.futures.Future[
            tuple[dict[str, int], dict[str, int], dict[str, float]]] = concurrent.futures.Future()

        def read() -> None:
            try:
                future.set_result(self._read())
            except Exception as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(read)
        return future.result(SCRAPE_TIMEOUT_S)

    def describe(self) -> Iterator[Metric]:
        """The families of ``collect()``: what lets a registry refuse a second node's."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """One family per ``stats()`` entry, then the per-peer losses."""
        stats, losses, rtts = self._read_on_loop()
        for key in sorted(stats):
            help_text = HELP.get(key, f"Node.stats()[{key!r}]")
            if key in GAUGES:
                yield GaugeMetricFamily(PREFIX + key, help_text, value=stats[key])
            else:
                yield CounterMetricFamily(PREFIX + key, help_text, value=stats[key])
        lost = CounterMetricFamily(PREFIX + "peer_lost_messages",
                                   "messages lost per peer (node.losses)", labels=["peer"])
        for peer in sorted(losses):
            lost.add_metric([peer], losses[peer])
        yield lost
        rtt = GaugeMetricFamily(PREFIX + "peer_rtt_seconds", "smoothed round trip per peer "
                                "(PeerInfo.rtt_s)", labels=["peer"])
        for peer in sorted(rtts):
            rtt.add_metric([peer], rtts[peer])
        yield rtt


def serve_http(port: int, host: str = "127.0.0.1",
               registry: CollectorRegistry | None = None) -> tuple[WSGIServer, str]:
    """Serve ``registry`` (default: prometheus_client's) at ``/metrics`` on a daemon thread;
    returns the server (``shutdown()`` it) and the URL it serves, with the port it bound."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY if registry is None
                                  else registry)
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{server.server_port}/metrics"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
