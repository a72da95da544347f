"""The ``smartroute`` command.

``smartroute node``: run a node and print membership and subscriber events as they happen,
until Ctrl-C or SIGTERM (then it says BYE to its peers and exits).

``smartroute peers``: join the cluster as a node with no subscribers, print a table of the
nodes it meets (``--watch``: again every second until Ctrl-C), and leave with a BYE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .events import Event, PeerDown, PeerUp, SubscriberDown, SubscriberUp
from .messages import Message
from .node import Node


def describe(event: Event) -> str:
    """One line for an event, as ``smartroute node`` prints it."""
    if isinstance(event, PeerUp):
        peer = event.peer
        return f"peer up      {peer.node_id[:12]}  {peer.endpoint}  {peer.name}"
    if isinstance(event, PeerDown):
        peer = event.peer
        return f"peer down    {peer.node_id[:12]}  {peer.endpoint}  ({event.reason})"
    where = "here" if event.subscriber.local else event.subscriber.node_id[:12]
    if isinstance(event, SubscriberUp):
        return f"subscribe    {event.subscriber.name}  on {where}  {event.subscriber.meta or ''}"
    assert isinstance(event, SubscriberDown)
    return f"unsubscribe  {event.subscriber.name}  on {where}"


def _make_node(args: argparse.Namespace) -> Node:
    discovery: list[str] | str = args.seed if args.seed else "mdns"
    return Node(args.cluster, secret=secret_from(args), discovery=discovery, host=args.host,
                port=args.port, name=args.name, interfaces=args.interface or None)


SECRET_ENV = "SMARTROUTE_SECRET"
"""Environment variable with the cluster secret: safer than ``--secret``, which other users of
the machine can read in the process list."""


def secret_from(args: argparse.Namespace) -> str | None:
    """The cluster secret: ``--secret``, else ``$SMARTROUTE_SECRET``, else None (no CURVE)."""
    secret: str | None = args.secret if args.secret is not None else os.environ.get(SECRET_ENV)
    return secret or None


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_node(args: argparse.Namespace) -> int:
    """Run one node until interrupted; print events to stdout."""
    node = _make_node(args)
    stop = _stop_on_signals()
    async with node:
        print(f"node {node.node_id} of cluster {node.cluster!r} at {node.endpoint}", flush=True)
        events = node.events()
        server = None
        if args.metrics_port is not None:
            from .metrics import serve_http  # noqa: PLC0415 (an optional extra)
            node.metrics()
            server, url = serve_http(args.metrics_port, args.metrics_host)
            print(f"metrics at {url}", flush=True)

        def show(msg: Message) -> None:
            print(f"message      to {msg.subscriber} from {msg.sender or msg.node_id[:12]}: "
                  f"{msg.body!r}", flush=True)

        for name in args.subscribe:
            await node.subscribe(name, show)

        async def print_events() -> None:
            async for event in events:
                print(describe(event), flush=True)

        printer = asyncio.create_task(print_events())
        await stop.wait()
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        if server is not None:
            # shutdown() waits for the server's poll (0.5 s): not on the node's loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
    print("closed", flush=True)
    return 0


def peer_table(node: Node) -> str:
    """The table ``smartroute peers`` prints: one line per node met, with its subscriber count."""
    counts: dict[str, int] = {}
    for sub in node.subscribers():
        counts[sub.node_id] = counts.get(sub.node_id, 0) + 1
    rows = [("CLUSTER", "NODE ID", "NAME", "ENDPOINT", "SUBSCRIBERS", "STATE")]
    for peer in sorted(node.peers, key=lambda p: (p.name, p.node_id)):
        rows.append((node.cluster, peer.node_id[:12], peer.name, peer.endpoint,
                     str(counts.get(peer.node_id, 0)), peer.state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


async def run_peers(args: argparse.Namespace) -> int:
    """Meet the cluster, print who is there; with ``--watch`` repeat until interrupted."""
    node = _make_node(args)
    stop = _stop_on_signals()
    async with node:
        # mDNS answers in milliseconds; then HELLOs and tables take a few round trips.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.wait)
        while True:
            print(peer_table(node), flush=True)
            if not args.watch or stop.is_set():
                break
            print(flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
    return 0


WATCH_INTERVAL_S = 1.0
"""How often ``smartroute peers --watch`` prints the table again."""


def _add_mesh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="smartroute",
                        help="cluster name (default: %(default)s)")
    parser.add_argument("--seed", action="append", default=[], metavar="ENDPOINT",
                        help="seed endpoint tcp://host:port (repeatable); without seeds: mDNS")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="use mDNS only on the interface with this IPv4 address "
                             "(repeatable; default: all interfaces)")
    parser.add_argument("--secret", default=None,
                        help=f"cluster secret: CURVE-encrypt and authenticate every link "
                             f"(prefer ${SECRET_ENV}: a command line is visible to other users)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: any free)")
    parser.add_argument("--name", default=None, help="a name shown to peers")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smartroute`` console script."""
    parser = argparse.ArgumentParser(prog="smartroute", description="smartroute mesh tools")
    parser.add_argument("--version", action="version", version=f"smartroute {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    node = commands.add_parser("node", help="run a node and print mesh events")
    _add_mesh_options(node)
    node.add_argument("--subscribe", action="append", default=[], metavar="NAME",
                      help="subscribe NAME and print what it receives (repeatable)")
    node.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                      help="serve Prometheus metrics at /metrics on PORT (0: any free one; "
                           "needs smartroute[metrics])")
    node.add_argument("--metrics-host", default="127.0.0.1",
                      help="address the metrics server binds (default: %(default)s)")
    peers = commands.add_parser("peers", help="print the nodes of a cluster")
    _add_mesh_options(peers)
    peers.add_argument("--watch", action="store_true", help="print the table every second")
    peers.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                       help="how long to listen before the first table (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run_node(args) if args.command == "node" else run_peers(args))
    except (ValueError, TypeError, OSError) as exc:
        print(f"smartroute: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
