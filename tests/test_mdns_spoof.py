"""Spoofed mDNS announcements on loopback: a node neither crashes nor is misled.

A spoofer (python-zeroconf bound to 127.0.0.1) announces services of another cluster or
version, with huge or garbage TXT records, with our own node id, with bogus ports and
addresses. A real node of the cluster announces itself too. The node under test must dial the
real one only, end with it as its one peer, log no error, and have seen (and ignored) the
spoofs. Where a spoof would have led the node, a listening socket of ours waits: no connection
may reach it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from smartroute import Node
from smartroute.discovery import Hint, LocalNode, MdnsDiscovery
from smartroute.discovery.mdns import SERVICE_TYPE
from smartroute.testing import async_wait_until
from smartroute.wire import PROTOCOL_VERSION

LOOPBACK = "127.0.0.1"
CLUSTER = "spoofed"
VERSION = str(PROTOCOL_VERSION).encode()

QUIET_WINDOW_S = 1.5
"""After the node has found its real peer and seen every spoof: a wrong dial or a late error
would show within this (a dial takes ~1 ms on loopback; a mDNS resolution < 0.2 s)."""


class RecordingDiscovery:
    """mDNS discovery that remembers every hint it gives the node."""

    def __init__(self) -> None:
        self.mdns = MdnsDiscovery(interfaces=[LOOPBACK])
        self.hints: list[str] = []

    async def start(self, hint: Hint, me: LocalNode) -> None:
        def record(endpoint: str) -> None:
            self.hints.append(endpoint)
            hint(endpoint)

        await self.mdns.start(record, me)

    async def close(self) -> None:
        await self.mdns.close()


def txt(*strings: bytes) -> bytes:
    """Raw TXT rdata: each string behind its length byte."""
    return b"".join(bytes([len(s)]) + s for s in strings)


def ours(**extra: bytes) -> list[bytes]:
    return [b"v=" + VERSION, b"c=" + CLUSTER.encode(), b"p=1",
            *(k.encode() + b"=" + v for k, v in extra.items())]


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


@pytest.fixture
def trap() -> Iterator[tuple[int, socket.socket]]:
    """A listening TCP socket on loopback that the node under test must never connect to."""
    sock = listener()
    yield sock.getsockname()[1], sock
    sock.close()


@pytest.fixture
def decoy() -> Iterator[int]:
    """A port of ours, so that a dial to it reaches nobody else's node."""
    sock = listener()
    yield sock.getsockname()[1]
    sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_spoofed_announcements_neither_crash_nor_mislead_a_node(
        trap: tuple[int, socket.socket], decoy: int, caplog: pytest.LogCaptureFixture) -> None:
    trap_port, trap_sock = trap
    caplog.set_level(logging.WARNING)
    # Default timings: both nodes share this test's event loop, and a loaded machine must not
    # make a false death look like a node misled.
    target = Node(CLUSTER, discovery=RecordingDiscovery(), host=LOOPBACK)
    discovery = target._discovery
    assert isinstance(discovery, RecordingDiscovery)
    real = Node(CLUSTER, discovery="mdns", interfaces=[LOOPBACK], host=LOOPBACK)
    loopback = socket.inet_aton(LOOPBACK)

    def spoof(label: str, text: bytes, *, port: int | None = trap_port,
              addresses: tuple[bytes, ...] = (loopback,)) -> ServiceInfo:
        return ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port, properties=text,
                           server=f"{label}.local.", addresses=list(addresses))

    ignored = [  # each resolves, and each must be counted as ignored
        spoof("other-cluster", txt(b"v=" + VERSION, b"c=other", b"p=1")),
        spoof("other-version", txt(b"v=99", *ours()[1:])),
        spoof("cluster-with-nul", txt(b"v=" + VERSION, b"c=" + CLUSTER.encode() + b"\0x")),
        spoof("cluster-prefix", txt(b"v=" + VERSION, b"c=" + CLUSTER.encode()[:-1])),
        spoof("not-utf8", txt(*ours(), b"n=\xff\xfe\xfd")),
        spoof("huge-txt", txt(*[bytes([65 + i]) + b"=" + b"\xee" * 253 for i in range(30)])),
        spoof("huge-cluster", txt(b"v=" + VERSION, b"c=" + b"x" * 253)),
        spoof("lying-length", txt(*ours())[:-1] + b"\xff" + b"c=" + CLUSTER.encode()),
        spoof("no-txt", b""),
        spoof("garbage-txt", bytes(range(256)) * 4),
        spoof("port-zero", txt(*ours()), port=0),
        spoof("bogus-addresses", txt(*ours()), addresses=tuple(socket.inet_aton(a) for a in (
            "0.0.0.0", "224.0.0.251", "255.255.255.255"))),  # none leaves the host if dialled
    ]
    # Our own node id, pointing at a port of its own: the real node may well dial that one
    # (to it, this is just another node of the cluster); the target must not.
    own_id = spoof(target.node_id, txt(*ours()), port=decoy)
    spoofer = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        for info in [*ignored, own_id]:
            await spoofer.async_register_service(info, cooperating_responders=True)
        await real.start()
        await target.start()
        try:
            real_endpoint = real.endpoint
            await async_wait_until(lambda: [p.node_id for p in target.peers] == [real.node_id],
                                   timeout=15, what="the target finds the real node")
            await async_wait_until(lambda: discovery.mdns.ignored >= len(ignored), timeout=15,
                                   what="every spoof seen and ignored")
            await asyncio.sleep(QUIET_WINDOW_S)  # an observation window: nothing else happens
            assert set(discovery.hints) == {real_endpoint}
            assert discovery.mdns.found >= 1
            assert [p.node_id for p in target.peers] == [real.node_id]
            assert connections(trap_sock) == 0
            stats = target.stats()
            assert stats["refused_peers"] == 0 and stats["internal_errors"] == 0
        finally:
            await target.close()
            await real.close()
    finally:
        await spoofer.async_close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and (r.name.startswith("smartroute") or r.name == "asyncio")]
    assert errors == []
    warnings: dict[str, int] = {}
    for record in caplog.records:
        if record.name.startswith("smartroute") and record.levelno == logging.WARNING:
            warnings[record.getMessage()] = warnings.get(record.getMessage(), 0) + 1
    assert all(count == 1 for count in warnings.values()), warnings
