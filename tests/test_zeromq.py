"""smartroute/transport/zeromq.py: the Inbox and the Links against raw pyzmq sockets on
127.0.0.1 (no Node, no protocol: what goes in one end must come out of the other)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import zmq

from smartroute.testing import async_wait_until, free_port, wait_until
from smartroute.transport.zeromq import BACKLOG_BATCHES, Inbox, Links

ROUTING_ID = b"\x01" * 16 + b"\x00\x00\x00\x07"
"""A node id and an incarnation, as the protocol makes them."""

RECV_TIMEOUT_MS = 2000
"""How long a raw socket waits for one message before the test fails."""


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes every socket a test left open


def raw(context: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    return sock


def bound_router(context: zmq.Context[zmq.Socket[bytes]], port: int = 0) -> tuple[
        zmq.Socket[bytes], str]:
    router = raw(context, zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    last = router.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(last, bytes)
    return router, last.decode()


def links_of(context: zmq.Context[zmq.Socket[bytes]], **options: object) -> Links:
    settings: dict[str, object] = {"send_queue": 1000, "close_linger_s": 0.5,
                                   "ping_interval_s": 0.05, "ping_timeout_s": 0.2}
    settings.update(options)
    return Links(context, **settings)  # type: ignore[arg-type]


# --- Inbox ----------------------------------------------------------------------------------


async def test_the_inbox_hands_each_batch_with_its_sender_routing_id(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    inbox = Inbox(context, max_frame_bytes=1 << 20, receive_queue=1000)
    endpoint = inbox.bind("127.0.0.1", 0)
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    got: list[tuple[bytes, bytes, object]] = []
    reader = asyncio.ensure_future(inbox.run(
        lambda routing_id, frame: got.append((routing_id, frame.bytes,
                                              frame.get("Peer-Address")))))
    dealer = raw(context, zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, ROUTING_ID)
    try:
        dealer.connect(endpoint)
        for i in range(3):
            dealer.send(b"batch %d" % i)
        await async_wait_until(lambda: len(got) == 3, timeout=5.0, what="three batches")
        assert got == [(ROUTING_ID, b"batch %d" % i, "127.0.0.1") for i in range(3)]
        # Not [routing id, batch]: dropped and counted, and the inbox reads on.
        dealer.send_multipart([b"one", b"too many"])
        dealer.send(b"after")
        await async_wait_until(lambda: len(got) == 4, timeout=5.0, what="the next batch")
        assert got[3][1] == b"after" and inbox.dropped == 1
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        dealer.close()
        inbox.close()


async def test_a_paused_inbox_leaves_batches_in_zeromq_until_resumed(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    inbox = Inbox(context, max_frame_bytes=1 << 20, receive_queue=1000)
    endpoint = inbox.bind("127.0.0.1", 0)
    got: list[bytes] = []
    reader = asyncio.ensure_future(inbox.run(lambda _, frame: got.append(frame.bytes)))
    dealer = raw(context, zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, ROUTING_ID)
    try:
        dealer.connect(endpoint)
        dealer.send(b"first")
        await async_wait_until(lambda: got == [b"first"], timeout=5.0, what="the first")
        inbox.paused = True
        dealer.send(b"second")
        # It has arrived (the ROUTER has input) and still is not read.
        await async_wait_until(
            lambda: inbox._sock.poll(0, zmq.POLLIN), timeout=5.0, what="the second in the ROUTER")
        await asyncio.sleep(0)  # a turn of the loop: the reader had its chance
        assert got == [b"first"]
        inbox.resume()
        await async_wait_until(lambda: got == [b"first", b"second"], timeout=5.0,
                               what="the second after resume")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        dealer.close()
        inbox.close()


async def test_an_exception_in_the_callback_is_counted_and_the_inbox_reads_on(
        context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox(context, max_frame_bytes=1 << 20, receive_queue=1000)
    endpoint = inbox.bind("127.0.0.1", 0)
    got: list[bytes] = []

    def received(_: bytes, frame: zmq.Frame) -> None:
        if frame.bytes == b"bad":
            raise RuntimeError("a bug in the handling")
        got.append(frame.bytes)

    reader = asyncio.ensure_future(inbox.run(received))
    dealer = raw(context, zmq.DEALER)
    try:
        dealer.connect(endpoint)
        with caplog.at_level(logging.ERROR, logger="smartroute.transport"):
            dealer.send(b"bad")
            dealer.send(b"good")
            await async_wait_until(lambda: got == [b"good"], timeout=5.0, what="the good one")
        assert inbox.errors == 1 and "node keeps running" in caplog.text
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        dealer.close()
        inbox.close()


def test_an_inbox_port_that_is_taken_is_a_zmq_error(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, endpoint = bound_router(context)
    inbox = Inbox(context, max_frame_bytes=1 << 20, receive_queue=1000)
    try:
        with pytest.raises(zmq.ZMQError, match="Address already in use"):
            inbox.bind("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
    finally:
        inbox.close()
        router.close()


# --- Links ----------------------------------------------------------------------------------


def changes_until(links: Links, wanted: tuple[int, str], timeout: float = 5.0) -> list[
        tuple[int, str]]:
    """Every change ``check`` reported until ``wanted`` was among them."""
    seen: list[tuple[int, str]] = []

    def arrived() -> bool:
        seen.extend(links.check())
        return wanted in seen

    wait_until(arrived, timeout=timeout, what=f"{wanted} from check()")
    return seen


def test_a_link_sends_batches_to_a_raw_router_and_reports_up_then_down(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, endpoint = bound_router(context)
    links = links_of(context)
    assert links.dial(1, endpoint, ROUTING_ID)
    assert links.send(1, b"hello") and links.send(1, b"world")
    assert router.recv_multipart() == [ROUTING_ID, b"hello"]
    assert router.recv_multipart() == [ROUTING_ID, b"world"]
    assert changes_until(links, (1, "up")) == [(1, "up")]
    router.close()
    seen = changes_until(links, (1, "down"))
    # Down first; the redials that follow find nobody listening (refused), in any number.
    assert seen[0] == (1, "down") and set(seen[1:]) <= {(1, "refused")}


def test_a_dial_where_nobody_listens_is_reported_refused(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nobody listens: a connect is refused
    links = links_of(context)
    assert links.dial(5, endpoint, ROUTING_ID)
    seen = changes_until(links, (5, "refused"))
    assert set(seen) == {(5, "refused")}  # never up, never down


def test_a_full_link_holds_batches_back_in_order_and_flushes_them(
        context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"  # nobody there yet: the DEALER's queue fills
    links = links_of(context, send_queue=2)
    assert links.dial(1, endpoint, ROUTING_ID)
    with caplog.at_level(logging.WARNING, logger="smartroute.transport"):
        for i in range(10):
            assert links.send(1, b"%d" % i)
    assert len(links.backlogs[1]) == 8  # the DEALER itself holds send_queue (2) of them
    assert "is full (the peer is slow, frozen or unreachable)" in caplog.text
    router, _ = bound_router(context, port)
    received: list[bytes] = []

    def all_there() -> bool:
        links.flush()  # what the driver does every tick
        while router.poll(0):
            routing_id, batch = router.recv_multipart()
            assert routing_id == ROUTING_ID
            received.append(batch)
        return len(received) == 10

    wait_until(all_there, timeout=5.0, what="the backlog flushed")
    assert received == [b"%d" % i for i in range(10)]
    assert links.backlogs == {} and links.dropped_batches == 0


def test_a_full_backlog_drops_and_counts(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    links = links_of(context, send_queue=1)
    assert links.dial(1, endpoint, ROUTING_ID)
    assert links.send(1, b"x") and links.backlogs == {}  # in the DEALER's queue of 1
    for _ in range(BACKLOG_BATCHES):
        assert links.send(1, b"x")
    assert len(links.backlogs[1]) == BACKLOG_BATCHES
    assert links.send(1, b"one too many") is False
    assert links.dropped_batches == 1
    links.hang_up(1)  # what was held back is counted lost
    assert links.dropped_batches == 1 + BACKLOG_BATCHES and links.backlogs == {}


def test_hang_up_lets_queued_batches_leave_and_the_link_is_gone(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, endpoint = bound_router(context)
    links = links_of(context)
    assert links.dial(2, endpoint, ROUTING_ID)
    assert links.send(2, b"bye")
    links.hang_up(2)  # at once: the batch still leaves (close_linger_s)
    assert router.recv_multipart() == [ROUTING_ID, b"bye"]
    assert links.send(2, b"after") is False
    assert links.check() == []
    links.hang_up(2)  # twice is harmless


def test_an_oversized_batch_is_not_sent_and_is_counted(
        context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture) -> None:
    router, endpoint = bound_router(context)
    links = links_of(context, max_frame_bytes=1024)
    assert links.dial(1, endpoint, ROUTING_ID)
    with caplog.at_level(logging.WARNING, logger="smartroute.transport"):
        assert links.send(1, b"x" * 1025) is False
    assert links.dropped_batches == 1 and "over max_frame_bytes (1024)" in caplog.text
    assert links.send(1, b"x" * 1024)
    assert router.recv_multipart() == [ROUTING_ID, b"x" * 1024]


def test_a_bad_endpoint_is_a_failed_dial(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    links = links_of(context)
    assert links.dial(1, "tcp://no port here", ROUTING_ID) is False
    assert links.send(1, b"x") is False


def test_close_hangs_up_every_link_and_lets_their_batches_leave(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    router, endpoint = bound_router(context)
    links = links_of(context)
    for link in (1, 2):
        assert links.dial(link, endpoint, ROUTING_ID + bytes([link]))
        assert links.send(link, b"bye from %d" % link)
    links.close()
    assert sorted(router.recv_multipart() for _ in range(2)) == [
        [ROUTING_ID + bytes([link]), b"bye from %d" % link] for link in (1, 2)]
    assert links.send(1, b"after") is False and links.send(2, b"after") is False
