"""smartroute/transport/driver.py against real ZeroMQ on 127.0.0.1: two Drivers, each running
a real Protocol, meet without a Node (the hands that would be the node's dispatcher are small
functions that keep what they are given)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import pytest
import zmq

from smartroute.config import Limits, Timings
from smartroute.endpoints import parse_endpoint
from smartroute.events import PeerUp
from smartroute.protocol import Protocol, ProtocolEvent, new_node_id
from smartroute.testing import FAST_TIMINGS, LOOPBACK, async_wait_until
from smartroute.transport.driver import SOCKETS_PER_PEER, Driver, Hands

TIMINGS = Timings(**FAST_TIMINGS)
MAX_PEERS = 4


class Side:
    """One driver, its protocol, and what its hands received."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.stats: collections.Counter[str] = collections.Counter()
        self.limits = Limits(max_peers=MAX_PEERS)
        self.driver = Driver(self.limits, TIMINGS, None, self.stats, name)
        self.events: list[ProtocolEvent] = []
        self.holding = False
        """What ``holds_inbox`` answers."""
        self.ticks = 0
        self.driver.hand_to(Hands(self._dispatch, lambda: False, lambda: self.holding,
                                  self._tick))
        self.endpoint = self.driver.open(LOOPBACK, port)
        self.protocol = Protocol(cluster="driver", node_id=new_node_id(), incarnation=1,
                                 endpoint=self.endpoint, name=name, timings=TIMINGS,
                                 limits=self.limits)

    def _dispatch(self, events: list[ProtocolEvent]) -> bool:
        self.events.extend(events)
        return False

    def _tick(self) -> None:
        self.ticks += 1

    def start(self) -> None:
        self.driver.start(self.protocol)

    def peers_up(self) -> list[str]:
        return [e.peer.node_id for e in self.events if isinstance(e, PeerUp)]


@pytest.fixture
async def sides() -> AsyncIterator[list[Side]]:
    made: list[Side] = []
    yield made
    for side in made:
        await side.driver.close()


def test_open_binds_a_real_port_and_a_taken_one_is_an_os_error() -> None:
    stats: collections.Counter[str] = collections.Counter()
    driver = Driver(Limits(), TIMINGS, None, stats, "a")
    other = Driver(Limits(), TIMINGS, None, stats, "b")
    try:
        endpoint = driver.open(LOOPBACK, 0)
        host, port = parse_endpoint(endpoint)
        assert host == LOOPBACK and port > 0
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            other.open(LOOPBACK, port)
    finally:
        asyncio.run(_close(driver, other))


async def _close(*drivers: Driver) -> None:
    for driver in drivers:
        await driver.close()


async def test_the_socket_budget_follows_max_peers(sides: list[Side]) -> None:
    side = Side("a")
    sides.append(side)
    context = side.driver._context
    assert context is not None
    assert context.get(zmq.MAX_SOCKETS) == SOCKETS_PER_PEER * MAX_PEERS + 64


async def test_two_drivers_carry_their_protocols_hello_and_meet(sides: list[Side]) -> None:
    a, b = Side("a"), Side("b")
    sides.extend([a, b])
    a.start()
    b.start()
    b.protocol.hint(a.endpoint, asyncio.get_running_loop().time())
    b.driver.pump()  # carries out the dial and the HELLO
    await async_wait_until(lambda: a.peers_up() and b.peers_up(), timeout=5.0,
                           what="both protocols see each other")
    assert a.peers_up() == [b.protocol.hex] and b.peers_up() == [a.protocol.hex]
    # The timers run the hands' on_tick (the stuck-handler check) after every tick.
    await async_wait_until(lambda: a.ticks > 1 and b.ticks > 1, timeout=2.0, what="ticks")
    assert a.driver.stats()["malformed_frames"] == 0
    assert b.driver.stats()["dropped_batches"] == 0


async def test_a_dial_that_cannot_get_a_socket_is_reported_to_the_protocol(
        sides: list[Side]) -> None:
    a, b = Side("a"), Side("b")
    sides.extend([a, b])
    a.start()
    b.start()
    context = b.driver._context
    assert context is not None
    # Spend b's whole socket budget: its next dial cannot open a DEALER.
    hogs: list[zmq.Socket[bytes]] = []
    try:
        for _ in range(SOCKETS_PER_PEER * MAX_PEERS + 64):
            try:
                hogs.append(context.socket(zmq.PAIR))
            except zmq.ZMQError:
                break
        else:
            pytest.fail("the socket budget never ran out")
        b.protocol.hint(a.endpoint, asyncio.get_running_loop().time())
        assert len(b.protocol.links) == 1
        b.driver.pump()
        # The protocol dropped the link it could not have (and dials again on a later hint).
        await async_wait_until(lambda: not b.protocol.links, timeout=2.0,
                               what="the failed link dropped")
        assert a.peers_up() == [] and b.peers_up() == []
    finally:
        for hog in hogs:
            hog.close(linger=0)


    def hinted_and_met() -> bool:
        # As discovery does, every retry: ZeroMQ frees closed sockets' slots a moment later.
        b.protocol.hint(a.endpoint, asyncio.get_running_loop().time())
        b.driver.pump()
        return bool(a.peers_up() and b.peers_up())

    await async_wait_until(hinted_and_met, timeout=5.0, interval=0.05,
                           what="they meet once sockets are free")


async def test_pace_inbox_pauses_reading_while_the_hands_are_behind(sides: list[Side]) -> None:
    a, b = Side("a"), Side("b")
    sides.extend([a, b])
    a.start()
    b.start()
    a.holding = True
    a.driver.pace_inbox()
    assert a.driver.inbox is not None and a.driver.inbox.paused
    b.protocol.hint(a.endpoint, asyncio.get_running_loop().time())
    b.driver.pump()
    inbox_socket = a.driver.inbox._sock
    # b's HELLO is in a's ROUTER, unread.
    await async_wait_until(
        lambda: inbox_socket.poll(0, zmq.POLLIN), timeout=5.0,
        what="the HELLO waiting in a's inbox")
    await asyncio.sleep(0)
    assert a.peers_up() == [] and a.protocol.stats()["peers"] == 0
    a.holding = False
    a.driver.pace_inbox()
    assert not a.driver.inbox.paused
    await async_wait_until(lambda: a.peers_up() and b.peers_up(), timeout=5.0,
                           what="they meet once a reads again")


async def test_close_releases_the_port_and_every_socket(sides: list[Side]) -> None:
    a, b = Side("a"), Side("b")
    sides.extend([a, b])  # closed again at the end: a second close() is harmless
    a.start()
    b.start()
    b.protocol.hint(a.endpoint, asyncio.get_running_loop().time())
    b.driver.pump()
    await async_wait_until(lambda: a.peers_up() and b.peers_up(), timeout=5.0, what="meet")
    port = parse_endpoint(a.endpoint)[1]
    context = a.driver._context
    assert context is not None
    await a.driver.close()
    await b.driver.close()
    assert context.closed
    assert b.driver._context is not None and b.driver._context.closed
    # The same port binds again at once: nothing of the old inbox is left.
    again = Side("again", port)
    sides.append(again)
    assert again.endpoint == a.endpoint
