"""A clustered chat gateway: each gateway joins the smartroute mesh by itself, and users
connected to different gateways chat as if they were on one server.

    python examples/chat_gateway/server.py --port 7070     # start as many as you like on the LAN
    python examples/chat_gateway/server.py --port 7070 --ws-port 8080   # and the browser page

Clients speak newline-delimited JSON over TCP, or the same JSON over a WebSocket (README.md
next to this file has the protocol). This file only wires the parts: mesh.py (the chat over
smartroute: the part to copy), gateway.py (the JSON commands), limits.py (what keeps the
gateway up whatever clients do), tcp.py and ws.py (the two transports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python examples/chat_gateway/server.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.chat_gateway.gateway import Gateway
from examples.chat_gateway.limits import IDLE_TIMEOUT_S, MAX_LINE_BYTES, MAX_OUTPUT_BYTES
from examples.chat_gateway.tcp import LineClient, listen
from smartroute import Node, Timings

__all__ = ["MAX_LINE_BYTES", "main"]

DEFAULT_PORT = 7070
"""TCP port clients connect to."""

DEFAULT_CLUSTER = "chat"


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit (one per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0",
                        help="address clients and the mesh bind to (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port for clients (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--ws-port", type=int, default=None, metavar="PORT",
                        help="also serve WebSocket clients and the chat page on this port "
                             "(0: any free one; needs smartroute[chat], i.e. websockets)")
    parser.add_argument("--ws-origin", action="append", default=[], metavar="ORIGIN",
                        help="a page (scheme://host:port) besides the gateway's own that may "
                             "open its WebSocket (repeatable; others are refused)")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER,
                        help=f"gateways of one cluster form one chat (default {DEFAULT_CLUSTER!r})")
    parser.add_argument("--secret", default=None,
                        help="cluster secret (default: $SMARTROUTE_SECRET; none: unencrypted)")
    parser.add_argument("--interface", action="append", default=[], metavar="IP",
                        help="mDNS only on the interface with this address (repeatable)")
    parser.add_argument("--seed", action="append", default=[], metavar="tcp://HOST:PORT",
                        help="a gateway's mesh endpoint to dial, besides mDNS, or a DNS name "
                             "of them all: dns:NAME:PORT, dns-srv:NAME (repeatable)")
    parser.add_argument("--mesh-port", type=int, default=0, metavar="PORT",
                        help="port of the mesh node (default: any free one; give one when "
                             "peers find it by DNS name)")
    parser.add_argument("--no-mdns", action="store_true", help="discover by --seed only")
    parser.add_argument("--name", default=None, help="gateway name shown to users")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="S",
                        help=f"drop clients silent this long (default {IDLE_TIMEOUT_S:g} s)")
    parser.add_argument("--max-output-bytes", type=int, default=MAX_OUTPUT_BYTES, metavar="N",
                        help=f"drop clients with more unsent bytes (default {MAX_OUTPUT_BYTES})")
    parser.add_argument("--dead-after", type=float, default=None, metavar="S",
                        help="a peer gateway whose event loop is silent this long while its "
                             "connection is alive is stuck: dead (default: the mesh's 20 s)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve the mesh node's Prometheus metrics on 127.0.0.1:PORT/metrics "
                             "(0: any free port; needs smartroute[metrics])")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.idle_timeout <= 0 or args.max_output_bytes <= 0:
        parser.error("--idle-timeout and --max-output-bytes must be positive")
    # Suspected at half of it, which must stay above the heartbeat interval.
    least = 2 * Timings().heartbeat_interval_s
    if args.dead_after is not None and args.dead_after <= least:
        parser.error(f"--dead-after must be over {least} s")
    return args


DRAIN_TIMEOUT_S = 5.0
"""On SIGTERM the gateway's node drains at most this long (then BYE)."""


async def run(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, then say bye to clients, drain and BYE to the mesh."""
    discovery: list[str] = ([] if args.no_mdns else ["mdns"]) + args.seed
    secret = args.secret or os.environ.get("SMARTROUTE_SECRET")
    # Only when given: a node without a secret says in its log that links are unencrypted.
    options: dict[str, Any] = {"secret": secret} if secret else {}
    if args.dead_after is not None:
        options.update(dead_after_s=args.dead_after, suspect_after_s=args.dead_after / 2)
    node = Node(args.cluster, discovery=discovery, host=args.host, port=args.mesh_port,
                interfaces=args.interface or None, name=args.name, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        gateway = Gateway(node, args.name or node.name, idle_timeout_s=args.idle_timeout,
                          max_output_bytes=args.max_output_bytes)
        servers = []
        server, (host, port) = await listen(lambda: LineClient(gateway), args.host, args.port)
        servers.append(server)
        print(f"chat gateway {gateway.name} listening on {host}:{port} (cluster "
              f"{args.cluster!r}, mesh node {node.node_id[:8]} at {node.endpoint})", flush=True)
        if args.ws_port is not None:
            from examples.chat_gateway.ws import WebSocketClient  # noqa: PLC0415 (optional)
            origins = frozenset(args.ws_origin)
            server, (host, port) = await listen(lambda: WebSocketClient(gateway, origins),
                                                args.host, args.ws_port)
            servers.append(server)
            print(f"web chat at http://{host}:{port}/ (WebSocket ws://{host}:{port}/)",
                  flush=True)
        metrics = None
        if args.metrics_port is not None:
            from smartroute.metrics import serve_http  # noqa: PLC0415 (an optional extra)
            node.metrics()
            metrics, url = serve_http(args.metrics_port)
            print(f"metrics at {url}", flush=True)
        await stop.wait()
        for server in servers:
            server.close()
        await gateway.close()
        # The mesh side of a rolling restart: peers stop choosing this gateway, then BYE.
        await node.drain(DRAIN_TIMEOUT_S)
        if metrics is not None:
            await asyncio.to_thread(metrics.shutdown)
    print("closed", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ws_port is not None:
        try:
            import websockets  # noqa: F401, PLC0415 (only checked: ws.py imports it)
        except ImportError:
            print("--ws-port needs websockets: pip install 'smartroute[chat]'", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_open_files_limit()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
