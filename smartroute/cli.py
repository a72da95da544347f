"""The ``smartroute`` command.

``smartroute node``: run a node and print membership and subscriber events as they happen,
until Ctrl-C or SIGTERM (then it says BYE to its peers and exits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
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


async def run_node(args: argparse.Namespace) -> int:
    """Run one node until interrupted; print events to stdout."""
    discovery: list[str] | str = args.seed if args.seed else "mdns"
    try:
        node = Node(args.cluster, discovery=discovery, host=args.host, port=args.port,
                    name=args.name)
    except NotImplementedError as exc:
        print(f"smartroute: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        print(f"node {node.node_id} of cluster {node.cluster!r} at {node.endpoint}", flush=True)
        events = node.events()

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
    print("closed", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smartroute`` console script."""
    parser = argparse.ArgumentParser(prog="smartroute", description="smartroute mesh tools")
    parser.add_argument("--version", action="version", version=f"smartroute {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    node = commands.add_parser("node", help="run a node and print mesh events")
    node.add_argument("--cluster", default="smartroute", help="cluster name (default: %(default)s)")
    node.add_argument("--seed", action="append", default=[], metavar="ENDPOINT",
                      help="seed endpoint tcp://host:port (repeatable); without seeds: mDNS")
    node.add_argument("--host", default="0.0.0.0", help="address to bind (default: %(default)s)")
    node.add_argument("--port", type=int, default=0, help="port to bind (default: any free)")
    node.add_argument("--name", default=None, help="a name shown to peers")
    node.add_argument("--subscribe", action="append", default=[], metavar="NAME",
                      help="subscribe NAME and print what it receives (repeatable)")
    node.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(run_node(args))


if __name__ == "__main__":
    sys.exit(main())
