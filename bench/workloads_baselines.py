"""The baselines, measured in the same run with the same 100-byte bodies and the same process
layout (one process per end): raw pyzmq, Redis pub/sub, Eclipse Zenoh, and pyre next to
smartroute on the LAN harness.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import Bench, Worker, WorkerError, latency_rows, rate, row
from workloads_mesh import (
    FAN_OUT_NODES,
    HANDLERS,
    MIN_WAIT_S,
    RTT_WARMUP,
    SLOWEST_RATE,
    flood_rate,
    node_pair,
    round_trips,
    rtt_count,
    settle,
    throughput,
)

from smartroute.testing import free_port
from smartroute.testing.lan import Lan, lan_available

REDIS_START_S = 10.0
"""Longest redis-server may take to answer PING after it was started."""

REDIS_STOP_S = 5.0
"""How long redis-server may take to exit on SIGTERM before it is SIGKILLed."""

PYRE_ACK_EVERY = 1000
"""A pyre receiver acks every this many whispers (see worker_pyre.py)."""

PYRE_WINDOW = 2000
"""Whispers a pyre sender may have unacknowledged: below pyre's SNDHWM of 3,000, at which pyre
drops the peer."""

PYRE_ENTER_S = 15.0
"""Longest two pyre nodes may take to see each other's beacons (they take ~10 ms)."""


# --- raw pyzmq ----------------------------------------------------------------------------------


def pyzmq(bench: Bench) -> None:
    """PUSH/PULL throughput (blocking; asyncio with batch draining) and the asyncio
    DEALER/ROUTER round trip, each end in its own process on loopback."""
    count = bench.scale.count(500_000, 100_000)
    for system, use_asyncio in (("pyzmq PUSH/PULL, blocking", False),
                                ("pyzmq PUSH/PULL, asyncio batch drain", True)):
        with bench.worker("worker_zmq.py") as pull, bench.worker("worker_zmq.py") as push:
            endpoint = pull.call("pull_bind", asyncio=use_asyncio)
            push.call("push_connect", endpoint=endpoint, asyncio=use_asyncio)
            suffix = "_async" if use_asyncio else ""

            def once(n: int, pull: Worker = pull, push: Worker = push,
                     suffix: str = suffix) -> float:
                pending = pull.submit("pull" + suffix, count=n)
                started = push.call("push" + suffix, count=n)
                return rate(n, started, pull.wait(pending))

            once(count // 10)
            values = [once(count) for _ in range(bench.scale.runs)]
        bench.add(row("cross-node throughput", system, "throughput", values, "msg/s"))
    with bench.worker("worker_zmq.py") as server, bench.worker("worker_zmq.py") as client:
        endpoint = server.call("router_echo")
        runs = [client.call("dealer_rtt", endpoint=endpoint, count=rtt_count(bench),
                            warmup=RTT_WARMUP) for _ in range(bench.scale.runs)]
    bench.add(*latency_rows("request/reply round trip", "pyzmq DEALER/ROUTER, asyncio", runs))


# --- Redis --------------------------------------------------------------------------------------


class RedisServer:
    """redis-server on 127.0.0.1 with a port of its own and no persistence, stopped by PID."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self._log = open(log_dir / "redis-server.log", "ab")  # noqa: SIM115 - closed in stop()
        # A subscriber that falls behind a pipelined publisher is disconnected once 32 MB wait
        # for it (the default pubsub output limit); a bounded run is allowed to queue instead.
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self._dir.name, "--daemonize", "no",
             "--client-output-buffer-limit", "pubsub 0 0 0"],
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.version = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        import redis  # noqa: PLC0415 - the bench extra may be missing; checked by the caller

        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + REDIS_START_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            try:
                info = client.info("server")
                client.close()
                return str(info["redis_version"])
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``REDIS_STOP_S``; idempotent."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(REDIS_STOP_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server(binary: str, log_dir: Path) -> Iterator[RedisServer]:
    """A running ``RedisServer`` for the block."""
    server = RedisServer(binary, log_dir)
    try:
        yield server
    finally:
        server.stop()


def redis_unavailable() -> str | None:
    """Why the Redis baselines cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return ("redis-server is not installed (`make bench` installs it with apt-get when run "
                "as root)")
    if importlib.util.find_spec("redis") is None:
        return "redis-py is missing (pip install -e '.[bench]')"
    return None


def redis_baselines(bench: Bench) -> None:
    """Relay throughput (publisher -> redis-server -> subscriber, three processes), fan-out to
    4 subscriber processes, and the round trip through Redis both ways."""
    reason = redis_unavailable()
    if reason is not None:
        bench.skip("Redis pub/sub baselines", reason)
        return
    binary = shutil.which("redis-server")
    assert binary is not None
    with redis_server(binary, bench.log_dir) as server:
        bench.machine["redis_server"] = server.version
        port = str(server.port)
        count = bench.scale.count(200_000, 30_000)
        with bench.worker("worker_redis.py", "--port", port) as sub, \
                bench.worker("worker_redis.py", "--port", port) as pub:
            sub.call("subscribe", channel="sink")

            def once(n: int) -> float:
                pending = sub.submit("recv", count=n)
                started = pub.call("publish", channel="sink", count=n)
                return rate(n, started, sub.wait(pending))

            once(count // 10)
            values = [once(count) for _ in range(bench.scale.runs)]
        bench.add(row("cross-node throughput", "Redis pub/sub", "throughput", values, "msg/s"))

        fan_count = bench.scale.count(50_000, 10_000)
        with contextlib.ExitStack() as stack:
            subs = [stack.enter_context(bench.worker("worker_redis.py", "--port", port))
                    for _ in range(FAN_OUT_NODES)]
            pub = stack.enter_context(bench.worker("worker_redis.py", "--port", port))
            for one in subs:
                one.call("subscribe", channel="fan")

            def fan(n: int) -> float:
                pending = [(one, one.submit("recv", count=n)) for one in subs]
                started = pub.call("publish", channel="fan", count=n, receivers=FAN_OUT_NODES)
                return rate(n, started, max(one.wait(p) for one, p in pending))

            fan(fan_count // 10)
            values = [fan(fan_count) for _ in range(bench.scale.runs)]
        bench.add(row("fan-out to 4 nodes", "Redis pub/sub", "throughput", values, "msg/s"),
                  row("fan-out to 4 nodes", "Redis pub/sub", "deliveries",
                      [v * FAN_OUT_NODES for v in values], "msg/s"))

        with bench.worker("worker_redis.py", "--port", port) as echo, \
                bench.worker("worker_redis.py", "--port", port) as client:
            echo.call("echo_server", request="req", reply="rep")
            runs = [client.call("rtt", request="req", reply="rep", count=rtt_count(bench),
                                warmup=RTT_WARMUP) for _ in range(bench.scale.runs)]
        bench.add(*latency_rows("request/reply round trip", "Redis pub/sub", runs))


# --- Eclipse Zenoh -----------------------------------------------------------------------------

ZENOH_CONGESTION = (("Zenoh put, congestion BLOCK", "BLOCK"),
                    ("Zenoh put, congestion DROP (default)", "DROP"))
"""System name and congestion control of each Zenoh throughput figure."""

ZENOH_QUERIERS = (("Zenoh querier.get", "default"),
                  ("Zenoh querier.get, consolidation NONE", "NONE"))
"""System name and consolidation of each Zenoh round-trip figure (the default consolidation
holds a reply back until the query's end; NONE hands it over as it comes)."""

LOOPBACK_HOSTS = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def zenoh_unavailable() -> str | None:
    """Why the Zenoh baselines cannot run here, or None."""
    if importlib.util.find_spec("zenoh") is None:
        return "eclipse-zenoh is missing (pip install -e '.[bench]')"
    if shutil.which("ss") is None:
        return "ss (iproute2) is missing: what Zenoh binds cannot be checked against loopback"
    return None


def sockets_off_loopback(pid: int) -> list[str]:
    """The TCP and UDP sockets of process ``pid`` whose local address is not loopback, as
    ``ss`` shows them (the network rule: a baseline binds nothing on the interfaces)."""
    shown = subprocess.run(["ss", "-Htunap"], capture_output=True, text=True, timeout=10,
                           check=True).stdout
    off = []
    for line in shown.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[4]
        if local.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
            off.append(line)
    return off


def zenoh_pair(bench: Bench) -> tuple[Worker, Worker]:
    """Two Zenoh peers in two processes, A connected to B, both checked to have bound
    nothing but loopback."""
    b = bench.worker("worker_zenoh.py", "--port", str(free_port()))
    a = bench.worker("worker_zenoh.py", "--port", str(free_port()), "--connect",
                     b.ready["endpoint"])
    for peer in (a, b):
        off = sockets_off_loopback(peer.pid)
        if off:
            raise RuntimeError(f"a Zenoh peer bound off loopback: {off}")
    return a, b


ZENOH_THROUGHPUT = "cross-node throughput, next to Zenoh"
ZENOH_RTT = "request/reply round trip, next to Zenoh"
"""Workloads of the Zenoh family: smartroute's runs alternate with Zenoh's in them, so the
ratios of issue 12's goals compare runs made under the same load."""


def zenoh(bench: Bench) -> None:
    """Peer-to-peer put throughput with congestion control BLOCK and DROP, alternating run by
    run with smartroute's flood (a run that lost messages is counted, never a throughput
    figure); then the ``querier.get`` round trip to a queryable (default and NONE
    consolidation) alternating with smartroute's ``request``. Fresh processes for each."""
    reason = zenoh_unavailable()
    if reason is not None:
        bench.skip("Zenoh baselines", reason)
        return
    count = bench.scale.count(200_000, 40_000)
    timeout = max(MIN_WAIT_S, count / SLOWEST_RATE)
    za, zb = zenoh_pair(bench)
    sa, sb = node_pair(bench)
    with za, zb, sa, sb:
        zb.call("subscribe", key="bench/sink")
        za.call("wait_subscriber", key="bench/sink")
        sb.call("subscribe", name="sink", handler="count")
        sa.call("wait_for", name="sink")
        ours: list[float] = []
        rates: dict[str, list[float]] = {cc: [] for _, cc in ZENOH_CONGESTION}
        delivered: dict[str, list[int]] = {cc: [] for _, cc in ZENOH_CONGESTION}
        for run in range(bench.scale.runs + 1):  # the first is the warm-up
            n = count // 10 if run == 0 else count
            try:
                value = flood_rate(sa, [sb], n, "sink")
                if run:
                    ours.append(value)
            except WorkerError as exc:
                bench.skip(f"{ZENOH_THROUGHPUT}, smartroute: run discarded",
                           str(exc).splitlines()[0])
                settle([sb])
            for system, congestion in ZENOH_CONGESTION:
                zb.call("arm", count=n)
                sent = za.call("flood", key="bench/sink", count=n, congestion=congestion,
                               answer_within_s=timeout)
                got = zb.call("collect", timeout=timeout,
                              answer_within_s=timeout + MIN_WAIT_S)
                if run == 0:
                    continue
                delivered[congestion].append(got["received"])
                if got["complete"]:
                    rates[congestion].append(rate(n, sent["t_start"], got["t_last"]))
                else:
                    bench.skip(f"{ZENOH_THROUGHPUT}, {system}: run lost messages",
                               f"{got['received']:,} of {n:,} delivered")
        if ours:
            bench.add(row(ZENOH_THROUGHPUT, "smartroute", "throughput", ours, "msg/s"))
        for system, congestion in ZENOH_CONGESTION:
            lossy = bench.scale.runs - len(rates[congestion])
            if lossy:
                bench.skip(f"{ZENOH_THROUGHPUT}, {system}: throughput",
                           f"not a result: {lossy} of {bench.scale.runs} runs lost messages "
                           f"(fewest delivered: {min(delivered[congestion]):,} of {count:,})")
            else:
                bench.add(row(ZENOH_THROUGHPUT, system, "throughput", rates[congestion],
                              "msg/s"))
            bench.add(row(ZENOH_THROUGHPUT, system, f"delivered of {count:,}",
                          delivered[congestion], "messages"))
    za, zb = zenoh_pair(bench)
    sa, sb = node_pair(bench)
    with za, zb, sa, sb:
        zb.call("queryable", key="bench/echo")
        for _, consolidation in ZENOH_QUERIERS:
            za.call("wait_queryable", key="bench/echo", consolidation=consolidation)
        sb.call("subscribe", name="svc:echo", handler="echo")
        sa.call("wait_for", name="svc:echo")
        runs: dict[str, list[list[float]]] = {c: [] for c in ("smartroute", *dict(
            ZENOH_QUERIERS).values())}
        for _ in range(bench.scale.runs):
            runs["smartroute"].append(sa.call("rtt", target="svc:echo", count=rtt_count(bench),
                                              warmup=RTT_WARMUP))
            for _, consolidation in ZENOH_QUERIERS:
                runs[consolidation].append(za.call(
                    "rtt", key="bench/echo", consolidation=consolidation,
                    count=rtt_count(bench), warmup=RTT_WARMUP))
        bench.add(*latency_rows(ZENOH_RTT, "smartroute", runs["smartroute"]))
        for system, consolidation in ZENOH_QUERIERS:
            bench.add(*latency_rows(ZENOH_RTT, system, runs[consolidation]))


# --- pyre, and smartroute next to it, on the LAN harness ----------------------------------------


def lan_baselines(bench: Bench) -> None:
    """pyre WHISPER throughput and round trip between two hosts of the LAN harness, and
    smartroute on the same two hosts: pyre's UDP beacons need a real broadcast domain, so
    both run on veths in network namespaces instead of loopback."""
    reason = lan_available()
    if reason is not None:
        bench.skip("pyre and smartroute on the LAN harness", reason)
        return
    with Lan(2, name="bench") as lan:
        first, second = lan.hosts
        if importlib.util.find_spec("pyre") is None:
            bench.skip("pyre baselines", "zeromq-pyre is missing (pip install -e '.[bench]')")
        else:
            _pyre(bench, first.prefix, second.prefix)
        a, b = node_pair(bench, prefix_a=first.prefix, prefix_b=second.prefix,
                         host_a=first.address, host_b=second.address)
        with a, b:
            # The sync handler only: the comparison with pyre is about the transport.
            throughput(bench, "cross-node throughput, LAN harness", a, b,
                       handlers=HANDLERS[:1], counts=(150_000, 30_000))
            round_trips(bench, "request/reply round trip, LAN harness", a, b,
                        system="smartroute")


def _pyre(bench: Bench, prefix_a: list[str], prefix_b: list[str]) -> None:
    count = bench.scale.count(30_000, 8_000)
    with bench.worker("worker_pyre.py", prefix=prefix_a) as a, \
            bench.worker("worker_pyre.py", prefix=prefix_b) as b:
        uuid_a = a.call("start", name="bench-a", group="bench")
        uuid_b = b.call("start", name="bench-b", group="bench")
        try:
            a.call("wait_peer", peer=uuid_b, timeout=PYRE_ENTER_S)
            b.call("wait_peer", peer=uuid_a, timeout=PYRE_ENTER_S)
        except Exception as exc:
            bench.skip("pyre baselines", f"the pyre nodes did not find each other with UDP "
                       f"beacons inside the namespaces: {exc}")
            return

        def once(n: int) -> float:
            pending = b.submit("recv", count=n, ack_every=PYRE_ACK_EVERY)
            started = a.call("send", peer=uuid_b, count=n, window=PYRE_WINDOW,
                             ack_every=PYRE_ACK_EVERY)
            return rate(n, started, b.wait(pending))

        once(count // 10)
        values = [once(count) for _ in range(bench.scale.runs)]
        bench.add(row("cross-node throughput, LAN harness", "pyre WHISPER", "throughput",
                      values, "msg/s"))
        runs = []
        for _ in range(bench.scale.runs):
            pending = b.submit("echo", count=RTT_WARMUP + rtt_count(bench))
            runs.append(a.call("rtt", peer=uuid_b, count=rtt_count(bench), warmup=RTT_WARMUP))
            b.wait(pending)
        bench.add(*latency_rows("request/reply round trip, LAN harness", "pyre WHISPER", runs))
