"""The ``smartroute`` command.

``smartroute node``: run a node and print membership and subscriber events as they happen,
until Ctrl-C or SIGTERM (then it says BYE to its peers and exits).

``smartroute peers``: join the cluster as a node with no subscribers, print a table of the
nodes it meets (``--watch``: again every second until Ctrl-C), and leave with a BYE.

The ops commands join the same way: ``send TARGET BODY`` and ``request TARGET BODY`` (BODY is
JSON) once a subscriber of TARGET is known; ``subscribers`` and ``stats`` print the table and
this node's counters (``--watch``: then every change). Exit codes: 0 done, 1 nobody to send to
or no answer, 2 bad arguments (one ``smartroute: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from . import __version__, build
from .errors import LinkFull, NoSubscriber, RequestError, RequestTimeout, UsageError
from .events import Event, PeerDown, PeerUp, SubscriberDown, SubscriberUp, SubscriberUpdated
from .messages import Message
from .modes import ReceiveMode
from .node import Node
from .patterns import compile_pattern


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
    if isinstance(event, SubscriberUpdated):
        return f"update       {event.subscriber.name}  on {where}  {event.subscriber.meta or ''}"
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


DRAIN_TIMEOUT_S = 5.0
"""How long ``smartroute node`` drains on SIGTERM before it closes anyway (Kubernetes gives a
pod 30 s between SIGTERM and SIGKILL)."""


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
        # A rolling restart's SIGTERM: peers stop choosing this node, what it handles is
        # answered and what it sent acknowledged, then BYE (see Node.drain).
        await node.drain(args.drain_timeout)
        print("drained", flush=True)
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
        _stop_after(stop, args.watch_for)
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
"""How often ``smartroute peers --watch`` prints the table again, and ``stats --watch`` looks
for changed counters."""

CONVERGE_QUIET_S = 0.25
"""``send`` goes once its target has a subscriber and no peer or subscriber has come for this
long (``subscribers`` and ``stats`` print once a peer has): the peers that the first one told
us about say HELLO, their tables with it, within a few round trips, so a send to a room reaches
its members on every node."""


def _stop_after(stop: asyncio.Event, seconds: float | None) -> None:
    """Set ``stop`` after ``seconds`` (``--for``), if given."""
    if seconds is not None:
        asyncio.get_running_loop().call_later(seconds, stop.set)


def json_body(text: str) -> object:
    """BODY on the command line: a JSON value (a string is quoted: '"hello"')."""
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not JSON: {text!r} (a string is quoted in JSON: '\"{text}\"')") from None


def receive_mode(text: str) -> ReceiveMode:
    """``--mode``: a receive mode by name, in any case."""
    try:
        return ReceiveMode[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown mode {text!r} (one of {', '.join(m.name for m in ReceiveMode)})") from None


def as_json(value: object) -> str:
    """A reply as ``smartroute request`` prints it: JSON; bytes and other non-JSON values as
    their Python repr, in a JSON string."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def target_matcher(node: Node, mode: ReceiveMode, target: str) -> Callable[[], bool]:
    """Whether ``send_to(.., mode, target)`` would reach somebody, from the replicated table."""
    if mode in (ReceiveMode.EQ, ReceiveMode.ANY):
        return lambda: bool(node.lookup(target))
    if mode is ReceiveMode.NOT_EQ:
        return lambda: any(sub.name != target for sub in node.subscribers())
    if mode is ReceiveMode.ALL:
        return lambda: bool(node.subscribers())
    pattern = compile_pattern(target)
    return lambda: any(pattern.search(sub.name) for sub in node.subscribers())


async def converge(node: Node, matches: Callable[[], bool], wait_s: float,
                   quiet_s: float) -> bool:
    """Wait up to ``wait_s`` until ``matches()``, then until no peer or subscriber has come for
    ``quiet_s`` (within the same ``wait_s``); returns ``matches()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    quiet_until: float | None = None
    events = node.events()
    try:
        while True:
            if quiet_until is None and matches():
                quiet_until = loop.time() + quiet_s
            end = deadline if quiet_until is None else min(deadline, quiet_until)
            if end <= loop.time():
                break
            try:
                event = await asyncio.wait_for(anext(events), end - loop.time())
            except TimeoutError:
                break
            if quiet_until is not None and isinstance(event, PeerUp | SubscriberUp):
                quiet_until = loop.time() + quiet_s
    finally:
        await events.aclose()
    return matches()


def _nobody(target: str, mode: ReceiveMode, wait_s: float) -> int:
    who = {ReceiveMode.ALL: "nobody subscribes to anything",
           ReceiveMode.NOT_EQ: f"nobody but {target!r} subscribes",
           ReceiveMode.REGEX: f"no subscriber matches {target!r}"}.get(
        mode, f"nobody subscribes to {target!r}")
    print(f"smartroute: {who} (waited {wait_s:g} s)", file=sys.stderr)
    return 1


async def run_send(args: argparse.Namespace) -> int:
    """Send BODY once TARGET has a subscriber; print how many subscribers it matched."""
    node = _make_node(args)
    async with node:
        matches = target_matcher(node, args.mode, args.target)
        # ANY reaches one subscriber: the first one known will do.
        quiet_s = 0.0 if args.mode is ReceiveMode.ANY else CONVERGE_QUIET_S
        count = 0
        if await converge(node, matches, args.wait, quiet_s):
            try:
                count = await node.send_to(args.body, args.mode, args.target,
                                           sender=args.sender)
            except LinkFull as exc:  # a peer that does not keep up: nothing was sent
                print(f"smartroute: {exc}", file=sys.stderr)
                return 1
    if not count:
        return _nobody(args.target, args.mode, args.wait)
    print(f"sent to {count} subscriber{'s' if count != 1 else ''}", flush=True)
    return 0


async def run_request(args: argparse.Namespace) -> int:
    """Request BODY from one subscriber of TARGET; print the reply as JSON."""
    node = _make_node(args)
    async with node:
        if not await converge(node, lambda: bool(node.lookup(args.target)), args.wait, 0.0):
            return _nobody(args.target, ReceiveMode.ANY, args.wait)
        try:
            reply = await node.request(args.target, args.body, timeout=args.timeout)
        except NoSubscriber:
            return _nobody(args.target, ReceiveMode.ANY, args.wait)
        except RequestTimeout:
            print(f"smartroute: no reply from {args.target!r} within {args.timeout:g} s",
                  file=sys.stderr)
            return 1
        except RequestError as exc:  # RemoteError (the handler raised), PeerLost
            print(f"smartroute: {exc}", file=sys.stderr)
            return 1
    print(as_json(reply), flush=True)
    return 0


async def _meet(node: Node, stop: asyncio.Event, wait_s: float) -> None:
    """Wait up to ``wait_s`` (or ``stop``) until a peer is up and the mesh is quiet."""
    meeting = asyncio.ensure_future(converge(node, lambda: bool(node.peers), wait_s,
                                             CONVERGE_QUIET_S))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((meeting, stopped), return_when=asyncio.FIRST_COMPLETED)
    for task in (meeting, stopped):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def subscriber_table(node: Node) -> str:
    """The table ``smartroute subscribers`` prints: one line per subscriber, by name."""
    names = {peer.node_id: peer.name for peer in node.peers}
    rows: list[tuple[str, ...]] = [("NAME", "NODE ID", "NODE", "META")]
    for sub in sorted(node.subscribers(), key=lambda s: (s.name, s.node_id)):
        rows.append((sub.name, sub.node_id[:12], names.get(sub.node_id, "?"),
                     json.dumps(sub.meta, ensure_ascii=False, default=repr) if sub.meta else ""))
    return _table(rows)


async def run_subscribers(args: argparse.Namespace) -> int:
    """Print the subscribers of the cluster; with ``--watch`` then every change."""
    node = _make_node(args)
    stop = _stop_on_signals()
    async with node:
        await _meet(node, stop, args.wait)
        # No await between the two: the stream starts exactly where the table ends.
        events = node.events()
        print(subscriber_table(node), flush=True)

        async def print_changes() -> None:
            async for event in events:
                if isinstance(event, SubscriberUp | SubscriberUpdated | SubscriberDown):
                    print(describe(event), flush=True)

        if args.watch:
            _stop_after(stop, args.watch_for)
            printer = asyncio.create_task(print_changes())
            await stop.wait()
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
        await events.aclose()
    return 0


def stats_lines(stats: dict[str, int], before: dict[str, int] | None = None) -> list[str]:
    """``name value`` per counter, sorted; with ``before``, only the changed ones, with
    ``(+delta)``."""
    width = max(map(len, stats), default=0)
    lines = []
    for name in sorted(stats):
        value = stats[name]
        if before is None:
            lines.append(f"{name.ljust(width)}  {value}")
        elif value != before.get(name, 0):
            lines.append(f"{name.ljust(width)}  {value} ({value - before.get(name, 0):+d})")
    return lines


async def run_stats(args: argparse.Namespace) -> int:
    """Print this node's ``stats()`` once it met the cluster; with ``--watch`` then every
    change, once a second."""
    node = _make_node(args)
    stop = _stop_on_signals()
    async with node:
        await _meet(node, stop, args.wait)
        stats = node.stats()
        print("\n".join(stats_lines(stats)), flush=True)
        if args.watch:
            _stop_after(stop, args.watch_for)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
                now = node.stats()
                changed = stats_lines(now, stats)
                if changed:
                    print("\n".join(changed), flush=True)
                stats = now
    return 0


def _add_mesh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="smartroute",
                        help="cluster name (default: %(default)s)")
    parser.add_argument("--seed", action="append", default=[], metavar="ENDPOINT",
                        help="seed endpoint tcp://host:port, or every address of a DNS name: "
                             "dns:NAME:PORT, dns-srv:NAME (repeatable); without seeds: mDNS")
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


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one ``smartroute: ...`` line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"smartroute: {message} (see {self.prog} --help)\n")


def _add_watch_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--watch", action="store_true", help=what)
    parser.add_argument("--for", dest="watch_for", type=float, default=None, metavar="SECONDS",
                        help="with --watch: stop after this long (default: until Ctrl-C)")


def _add_wait_option(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument("--wait", type=float, default=default, metavar="SECONDS",
                        help=f"{what} (default: %(default)s)")


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "node": run_node, "peers": run_peers, "send": run_send, "request": run_request,
    "subscribers": run_subscribers, "stats": run_stats,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``smartroute``; a bad one exits 2 with one line on stderr."""
    parser = _Parser(prog="smartroute", description="smartroute mesh tools")
    parser.add_argument("--version", action="version",
                        version=f"smartroute {__version__} ({build})")
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
    node.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S, metavar="S",
                      help="on SIGTERM or Ctrl-C, drain for at most S seconds before closing "
                           "(default: %(default)s)")
    peers = commands.add_parser("peers", help="print the nodes of a cluster")
    _add_mesh_options(peers)
    _add_watch_options(peers, "print the table every second")
    _add_wait_option(peers, 2.0, "how long to listen before the first table")
    for name, verb in (("send", "send BODY to the subscribers TARGET selects"),
                       ("request", "send BODY to one subscriber of TARGET, print its reply")):
        command = commands.add_parser(name, help=verb)
        _add_mesh_options(command)
        command.add_argument("target", metavar="TARGET",
                             help="a subscriber name (a pattern with --mode REGEX; "
                                  "ignored with --mode ALL)")
        command.add_argument("body", metavar="BODY", type=json_body,
                             help="the message body as JSON: '\"hi\"', '{\"n\": 1}', 42")
        _add_wait_option(command, 5.0, "how long to wait for a subscriber of TARGET")
    send = commands.choices["send"]
    send.add_argument("--mode", type=receive_mode, default=ReceiveMode.EQ,
                      help="EQ (default), NOT_EQ, ALL, REGEX or ANY")
    send.add_argument("--sender", default=None, metavar="NAME",
                      help="the sender name receivers see")
    commands.choices["request"].add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="how long to wait for the reply (default: %(default)s)")
    subscribers = commands.add_parser("subscribers", help="print the subscribers of a cluster")
    _add_mesh_options(subscribers)
    _add_watch_options(subscribers, "then print every subscriber that comes or goes")
    _add_wait_option(subscribers, 2.0, "how long to wait for a peer before the table")
    stats = commands.add_parser("stats", help="print this node's counters once it met the "
                                "cluster")
    _add_mesh_options(stats)
    _add_watch_options(stats, "then print the counters that change, every second")
    _add_wait_option(stats, 2.0, "how long to wait for a peer before the counters")
    args = parser.parse_args(argv)
    chosen = commands.choices[args.command]
    if getattr(args, "watch_for", None) is not None:
        if not args.watch:
            chosen.error("--for needs --watch")
        if args.watch_for <= 0:
            chosen.error("--for must be positive")
    for option in ("wait", "timeout"):
        if getattr(args, option, 1.0) < 0:
            chosen.error(f"--{option} must not be negative")
    if args.command == "send" and args.mode is ReceiveMode.REGEX:
        try:
            compile_pattern(args.target)
        except UsageError as exc:
            chosen.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smartroute`` console script."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, OSError) as exc:
        print(f"smartroute: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
