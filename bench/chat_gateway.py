"""The chat gateway under load, beside a raw asyncio TCP server doing the same job.

    .venv/bin/python bench/chat_gateway.py [--quick]

Measures, everything on loopback, clients in separate processes bound to several loopback
source addresses (127.0.0.2, 127.0.0.3, ...):

- how many concurrent connections one gateway holds, each registered (a ``user:`` subscriber),
  with the open-files limit raised to the hard cap (20,000 here);
- memory per idle connection: RSS growth of the server process divided by the connections,
  for the gateway (connected only, then registered) and a raw asyncio streams server;
- deliveries per second of room messages to 10,000 members spread over 3 gateways (one mesh
  frame per gateway, fanned out locally), against a raw asyncio server broadcasting to the
  same 10,000 connections from one process.

Writes bench/results/chat_gateway.json. ``--quick`` (smaller numbers) takes < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example is not an installed package

from examples.chat_gateway.client import ChatClient  # noqa: E402
from examples.chat_gateway.processes import GatewayProcess  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chat_gateway.json"

CONNECT_BATCH = 500
"""Connections a load client opens at once (the gateway's accept backlog is 1,024)."""

STALL_S = 3.0
"""A load client gives up waiting for replies after this long without progress (a server
out of file descriptors leaves connections in its backlog, never answered)."""

SETTLE_S = 0.5
"""Pause before reading a server's RSS, so what it allocates for the last connections lands."""

RUN_TIMEOUT_S = 60.0
"""Longest wait for one measured step."""

ROOM = "bench"
LINES_PER_MEMBER = 2
"""Answers each member gets while setting up: registered, joined."""


# --- the raw asyncio server (a child process) -------------------------------------------------

async def raw_server() -> None:
    """Streams, one task per connection, JSON lines: ``say`` is broadcast to every
    connection that joined; anything else gets ``{"type": "ok"}`` (with the request's id)."""
    members: set[asyncio.StreamWriter] = set()
    everyone: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        everyone.add(writer)
        try:
            async for line in reader:
                request = json.loads(line)
                if request.get("type") == "say":
                    out = json.dumps({"type": "say", "room": request["room"], "from": "x",
                                      "text": request["text"]}).encode() + b"\n"
                    for member in members:
                        member.write(out)
                    continue
                if request.get("type") == "join":
                    members.add(writer)
                writer.write(json.dumps({"type": "ok", "id": request.get("id")}).encode()
                             + b"\n")
        except (ConnectionError, ValueError):
            pass
        finally:
            members.discard(writer)
            everyone.discard(writer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    server.close()
    for writer in list(everyone):
        writer.transport.abort()  # each handler then sees the end of its stream and returns
    await asyncio.sleep(SETTLE_S)


# --- a load client (a child process): many connections, counting lines ----------------------

class Counted(asyncio.Protocol):
    """One connection that counts the lines it receives."""

    __slots__ = ("client", "lines", "transport")

    def __init__(self, client: LoadClient) -> None:
        self.client = client
        self.lines = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        count = data.count(b"\n")
        self.lines += count
        self.client.total += count
        self.client.last_rx = time.monotonic()
        self.client.progress.set()


class LoadClient:
    def __init__(self, source: str) -> None:
        self.source = source
        self.conns: list[Counted] = []
        self.total = 0
        self.last_rx = 0.0
        self.failed = 0
        self.progress = asyncio.Event()

    async def connect(self, host: str, port: int, count: int, register: bool,
                      room: str | None, prefix: str) -> str:
        """Open ``count`` connections; each registers (or only pings) and maybe joins
        ``room``; returns once each has its answers, or nothing moved for ``STALL_S``."""
        loop = asyncio.get_running_loop()
        first = len(self.conns)
        conns: list[Counted] = []

        async def open_one(i: int) -> None:
            try:
                _, conn = await loop.create_connection(lambda: Counted(self), host, port,
                                                       local_addr=(self.source, 0))
            except OSError:
                self.failed += 1
                return
            if register:
                name = f"{prefix}{first + i}"
                lines = b'{"type":"register","name":"%s","events":false}\n' % name.encode()
            else:  # a ping: its answer proves the server accepted and served us
                lines = b'{"type":"ping"}\n'
            if room is not None:
                lines += b'{"type":"join","room":"%s"}\n' % room.encode()
            assert conn.transport is not None
            conn.transport.write(lines)
            conns.append(conn)

        for start in range(0, count, CONNECT_BATCH):
            await asyncio.gather(*(open_one(i) for i in
                                   range(start, min(count, start + CONNECT_BATCH))))
        self.conns += conns
        expected = 1 + int(room is not None)
        # Until every new connection has its answers, or nothing moves for STALL_S.
        while True:
            answered = sum(1 for c in conns if c.lines >= expected)
            if answered == len(conns):
                break
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), STALL_S)
            except TimeoutError:
                break
        return f"connected {len(conns)} answered {answered} failed {self.failed} " \
               f"total {self.total}"

    async def expect(self, target: int) -> str:
        """Wait until ``target`` lines arrived in all; answer the time the last one came."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while self.total < target and time.monotonic() < deadline:
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        return f"done {self.last_rx!r} {self.total}"

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()


async def load_client(source: str) -> None:
    """Obey commands on stdin, one per line, answering one line each on stdout:
    ``connect HOST PORT COUNT REGISTER(0/1) ROOM|- PREFIX``, ``expect TOTAL``, ``total``."""
    client = LoadClient(source)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, "")

    threading.Thread(target=read, daemon=True).start()
    print("ready", flush=True)
    while line := await commands.get():
        word, *args = line.split()
        if word == "connect":
            host, port, count, register, room, prefix = args
            answer = await client.connect(host, int(port), int(count), register == "1",
                                          None if room == "-" else room, prefix)
        elif word == "expect":
            answer = await client.expect(int(args[0]))
        else:
            answer = f"total {client.total}"
        print(answer, flush=True)
    client.close()


# --- the driver ---------------------------------------------------------------------------------

class Child:
    """A child process of this script (raw server or load client), stopped by PID."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.pid = self.process.pid
        self.first = self.readline()

    def readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.pid} exited ({self.process.poll()})")
        return line.strip()

    def ask(self, command: str) -> list[str]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.readline().split()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` nearly equal counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def connect(clients: Sequence[Child], host: str, port: int, count: int, *, register: bool,
            room: str | None, prefix: str) -> tuple[int, int]:
    """Open ``count`` connections to one server spread over ``clients``; (answered, failed)."""
    return connect_each([(client, host, port, n) for client, n in
                         zip(clients, spread(count, len(clients)), strict=True)],
                        register=register, room=room, prefix=prefix)


def connect_each(plan: Sequence[tuple[Child, str, int, int]], *, register: bool,
                 room: str | None, prefix: str) -> tuple[int, int]:
    """Each (client, host, port, count) of ``plan`` at once, in parallel; (answered, failed)."""
    answers: list[list[str]] = [[] for _ in plan]

    def one(i: int) -> None:
        client, host, port, count = plan[i]
        answers[i] = client.ask(f"connect {host} {port} {count} {int(register)} "
                                f"{room or '-'} {prefix}{i}-")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(plan))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(int(a[3]) for a in answers), sum(int(a[5]) for a in answers)


def row(workload: str, system: str, metric: str, values: list[float], unit: str) -> dict[str, Any]:
    result = {"workload": workload, "system": system, "metric": metric,
              "value": statistics.median(values), "unit": unit, "runs": len(values),
              "min": min(values), "max": max(values)}
    print(f"  {system:<44} {metric:<24} {result['value']:>12,.1f} {unit}"
          f"  (min {result['min']:,.1f}, max {result['max']:,.1f}, {len(values)} runs)",
          flush=True)
    return result


def load_clients(count: int) -> list[Child]:
    clients: list[Child] = []
    try:
        for i in range(count):
            clients.append(Child("--load-client", "--source", f"127.0.0.{i + 2}"))
    except BaseException:
        for client in clients:
            client.stop()
        raise
    return clients


def gateway_options() -> list[str]:
    # Clients of a benchmark stay silent: no idle pings while we measure. A gateway's loop
    # stalls ~0.5-2 s at times here (see longest_loop_stall): since issue 10 that makes it
    # suspect, not dead (libzmq answers the mesh's pings), so the default timings apply.
    return ["--idle-timeout", "3600", "--log-level", "INFO"]


def measure_one_gateway(idle: int, hold: int, log_dir: Path) -> list[dict[str, Any]]:
    """Memory per idle connection (connected, then registered), then connections held."""
    rows = []
    gateway = GatewayProcess("bench-1", cluster=f"bench-{os.getpid()}",
                             options=["--no-mdns", *gateway_options()],
                             log_path=log_dir / "one.log")
    loop = asyncio.new_event_loop()
    clients = load_clients(4)  # 4 x 5,000 < 20,000 open files per client process
    try:
        # Connected first: at the cap the gateway can accept no one to ask.
        probe = loop.run_until_complete(ChatClient.connect(gateway.host, gateway.port))
        time.sleep(SETTLE_S)  # nothing else happens: the idle gateway's baseline
        before = rss_kib(gateway.pid)
        answered, failed = connect(clients, gateway.host, gateway.port, idle, register=False,
                                   room=None, prefix="idle")
        assert (answered, failed) == (idle, 0), (answered, failed)
        time.sleep(SETTLE_S)
        connected = rss_kib(gateway.pid)
        workload = f"idle connections, {idle:,} on one server"
        rows.append(row(workload, "smartroute chat gateway, connected",
                        "memory_per_connection", [(connected - before) / idle], "KiB"))
        # The same number again, registered: each is also a user: subscriber in the table.
        answered, failed = connect(clients, gateway.host, gateway.port, idle, register=True,
                                   room=None, prefix="reg")
        assert (answered, failed) == (idle, 0), (answered, failed)
        time.sleep(SETTLE_S)
        registered = rss_kib(gateway.pid)
        rows.append(row(workload, "smartroute chat gateway, registered",
                        "memory_per_connection", [(registered - connected) / idle], "KiB"))
        # Then more registered connections, up to the open-files cap.
        more, failed = connect(clients, gateway.host, gateway.port, hold - 2 * idle,
                               register=True, room=None, prefix="hold")
        counters = loop.run_until_complete(probe.request("stats"))["counters"]
        held = counters["connections"]
        print(f"  gateway reports {held:,} connections, {counters['registered']:,} registered "
              f"({more:,} of {hold - 2 * idle:,} more answered, {failed} refused)", flush=True)
        rows.append(row(f"connections held by one gateway (open files capped at "
                        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,})",
                        "smartroute chat gateway", "connections", [held], "connections"))
        loop.run_until_complete(probe.close())
    finally:
        for client in clients:
            client.stop()
        gateway.stop()
        loop.close()
    return rows


async def stats_of(gateway: GatewayProcess) -> dict[str, int]:
    """The gateway's counters, asked over a new connection."""
    client = await ChatClient.connect(gateway.host, gateway.port)
    try:
        counters: dict[str, int] = (await client.request("stats"))["counters"]
        return counters
    finally:
        await client.close()


def measure_raw_memory(idle: int) -> list[dict[str, Any]]:
    server = Child("--raw-server")
    port = int(server.first.split()[1])
    clients = load_clients(2)
    try:
        time.sleep(SETTLE_S)  # nothing else happens: the idle server's baseline
        before = rss_kib(server.pid)
        answered, failed = connect(clients, "127.0.0.1", port, idle, register=False, room=None,
                                   prefix="raw")
        assert (answered, failed) == (idle, 0)
        time.sleep(SETTLE_S)
        after = rss_kib(server.pid)
        return [row(f"idle connections, {idle:,} on one server", "raw asyncio TCP (streams)",
                    "memory_per_connection", [(after - before) / idle], "KiB")]
    finally:
        for client in clients:
            client.stop()
        server.stop()


def broadcast(loop: asyncio.AbstractEventLoop, clients: list[Child],
              members_per_client: list[int], baseline: list[int], sender: ChatClient,
              messages: int, runs: int) -> list[float]:
    """Deliveries per second of ``messages`` room messages, once per run."""
    rates = []
    for run in range(runs):
        targets = [b + (run + 1) * messages * n
                   for b, n in zip(baseline, members_per_client, strict=True)]
        seconds = one_broadcast(loop, clients, targets, sender, messages, f"{run}")
        rates.append(messages * sum(members_per_client) / seconds)
    return rates


def one_broadcast(loop: asyncio.AbstractEventLoop, clients: list[Child], targets: list[int],
                  sender: ChatClient, messages: int, tag: str) -> float:
    """Seconds from the first send until the last load client has its ``targets`` lines."""
    done: list[list[str]] = [[] for _ in clients]

    def wait(i: int) -> None:
        done[i] = clients[i].ask(f"expect {targets[i]}")

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    last = f"message {tag}.{messages - 1}"

    async def send() -> None:
        for i in range(messages):
            await sender.send({"type": "say", "room": ROOM, "text": f"message {tag}.{i}"})
        # The sender is a member too: its echo of the last one.
        await sender.wait_for(lambda m: m.get("text") == last, RUN_TIMEOUT_S,
                              what="the sender's echo")

    start = time.monotonic()
    loop.run_until_complete(send())
    for thread in threads:
        thread.join()
    got = [int(d[2]) for d in done]
    if got != targets:
        raise RuntimeError(f"lines expected {targets}, got {got}")
    return max(float(d[1]) for d in done) - start


def measure_room(members: int, messages: int, runs: int, log_dir: Path) -> list[dict[str, Any]]:
    """One room of ``members`` over 3 gateways, then over a raw asyncio server."""
    rows = []
    workload = f"room message to {members:,} members"
    cluster = f"bench-room-{os.getpid()}"
    gateways: list[GatewayProcess] = []
    loop = asyncio.new_event_loop()
    clients = load_clients(3)
    try:
        first = GatewayProcess("room-1", cluster=cluster, log_path=log_dir / "room-1.log",
                               options=["--no-mdns", *gateway_options()])
        gateways.append(first)
        for i in (2, 3):
            gateways.append(GatewayProcess(
                f"room-{i}", cluster=cluster, log_path=log_dir / f"room-{i}.log",
                options=["--no-mdns", "--seed", first.mesh_endpoint, *gateway_options()]))
        per_client = spread(members, 3)
        started = time.monotonic()
        answered, failed = connect_each(
            [(client, gateway.host, gateway.port, n)
             for client, gateway, n in zip(clients, gateways, per_client, strict=True)],
            register=True, room=ROOM, prefix="m")
        assert (answered, failed) == (members, 0), (answered, failed)
        print(f"  {members:,} members joined over 3 gateways in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        baseline = [int(client.ask("total")[1]) for client in clients]
        sender = loop.run_until_complete(ChatClient.connect(first.host, first.port))
        loop.run_until_complete(sender.request("register", name="sender", events=False))
        loop.run_until_complete(sender.request("join", room=ROOM))
        # Every gateway must know every member before we count deliveries.
        want = 2 * (members + 1)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not all(loop.run_until_complete(stats_of(g))["table_subscribers"] == want
                      for g in gateways):
            if time.monotonic() > deadline:
                raise TimeoutError("the gateways' tables did not converge")
            time.sleep(0.1)
        stalls = [loop.run_until_complete(stats_of(g))["loop_stall_max_ms"] for g in gateways]
        print(f"  every gateway knows all of them after {time.monotonic() - started:.1f} s "
              f"(longest event-loop stalls so far: {stalls} ms)", flush=True)
        rates = broadcast(loop, clients, per_client, baseline, sender, messages, runs)
        rows.append(row(workload, "smartroute chat gateway, 3 gateways", "deliveries_per_s",
                        rates, "deliveries/s"))
        stalls = [loop.run_until_complete(stats_of(g))["loop_stall_max_ms"] for g in gateways]
        rows.append(row(workload, "smartroute chat gateway, each of 3 gateways",
                        "longest_loop_stall", [float(stall) for stall in stalls], "ms"))
        loop.run_until_complete(sender.close())
    finally:
        for client in clients:
            client.stop()
        for gateway in gateways:
            gateway.stop()

    server = Child("--raw-server")
    port = int(server.first.split()[1])
    clients = load_clients(3)
    try:
        per_client = spread(members, 3)
        answered, failed = connect(clients, "127.0.0.1", port, members, register=True,
                                   room=ROOM, prefix="raw")
        assert (answered, failed) == (members, 0), (answered, failed)
        baseline = [int(client.ask("total")[1]) for client in clients]
        sender = loop.run_until_complete(ChatClient.connect("127.0.0.1", port))
        loop.run_until_complete(sender.request("join", room=ROOM))
        rates = broadcast(loop, clients, per_client, baseline, sender, messages, runs)
        rows.append(row(workload, "raw asyncio TCP broadcast, 1 process", "deliveries_per_s",
                        rates, "deliveries/s"))
        loop.run_until_complete(sender.close())
    finally:
        for client in clients:
            client.stop()
        server.stop()
        loop.close()
    return rows


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, < 60 s")
    parser.add_argument("--part", choices=("all", "connections", "room"), default="all",
                        help="run only the connection and memory part, or only the room part")
    parser.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="127.0.0.2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_open_files_limit()
    if args.raw_server:
        asyncio.run(raw_server())
        return 0
    if args.load_client:
        asyncio.run(load_client(args.source))
        return 0

    cap = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if args.quick:
        idle, hold, members, messages, runs = 2_000, 6_000, 2_000, 5, 2
    else:
        idle, hold, members, messages, runs = 5_000, cap, 10_000, 20, 3
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    if args.part in ("all", "connections"):
        print(f"one gateway: {idle:,} idle connections twice, then up to {hold:,}", flush=True)
        rows += measure_one_gateway(idle, hold, logs)
        rows += measure_raw_memory(idle)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    if args.part in ("all", "room"):
        print(f"a room of {members:,} members, {messages} messages x {runs} runs", flush=True)
        rows += measure_room(members, messages, runs, logs)
    shutil.rmtree(logs)  # kept when something failed: the gateways' logs are there
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
