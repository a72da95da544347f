"""The blocking facade, for code without an event loop."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import smartroute
from smartroute import EventStream as AsyncEventStream
from smartroute import (
    LinkFull,
    Message,
    NodeClosed,
    NoSubscriber,
    PeerUp,
    ReceiveMode,
    SubscriberUp,
    UsageError,
)
from smartroute import Node as AsyncNode
from smartroute import Subscription as AsyncSubscription
from smartroute.sync import EventStream as SyncEventStream
from smartroute.sync import Node, Subscription, discard_unstarted
from smartroute.testing import async_wait_until, loopback_node, loopback_sync_node, wait_until

_T = TypeVar("_T")


def test_blocking_nodes_subscribe_send_and_request() -> None:
    got: list[tuple[str, object]] = []
    with loopback_sync_node(cluster="sync") as a, \
            loopback_sync_node(a.endpoint, cluster="sync") as b:
        sub = a.subscribe("user:alice", lambda m: got.append((m.subscriber, m.body)))
        a.subscribe("svc:upper", lambda m: str(m.body).upper())
        assert len(b.wait_for("svc:upper")) == 1
        b.wait_for("user:alice")
        assert b.send_to("hi", ReceiveMode.EQ, "user:alice") == 1
        wait_until(lambda: got == [("user:alice", "hi")], what="delivery")
        assert b.request("svc:upper", "shout") == "SHOUT"
        with pytest.raises(NoSubscriber):
            b.request("svc:none", "x")
        assert [p.node_id for p in b.peers] == [a.node_id]
        assert {s.name for s in b.subscribers()} == {"user:alice", "svc:upper"}
        sub.close()
        wait_until(lambda: b.lookup("user:alice") == [], what="unsubscribe seen")
        assert b.stats()["peers"] == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("smartroute-")]


def test_handlers_run_on_the_node_thread() -> None:
    threads: list[str] = []

    def handler(msg: Message) -> None:
        threads.append(threading.current_thread().name)

    with loopback_sync_node(cluster="sync") as a:
        a.subscribe("x", handler)
        a.send_to(None, ReceiveMode.EQ, "x")
        assert threads == [f"smartroute-{a.node_id[:8]}"]


# --- the rules of the facade: nothing hangs ---------------------------------------------------

DEADLINE_S = 5.0
"""What a call that must not hang gets before the test calls it hung."""


def call_within(function: Callable[[], _T], seconds: float = DEADLINE_S) -> _T:
    """``function()`` in a helper thread; ``AssertionError`` if it has not returned in time
    (a deadlocked node would otherwise hang the test run)."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as exc:  # re-raised on the test's thread
            failure.append(exc)

    helper = threading.Thread(target=run, daemon=True)
    helper.start()
    helper.join(seconds)
    assert not helper.is_alive(), f"{function} did not return within {seconds} s"
    if failure:
        raise failure[0]
    return result[0]


def next_within(events: Iterator[_T]) -> _T:
    """The next event, within the deadline."""
    return call_within(lambda: next(events))


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    a = loopback_sync_node(cluster="sync")
    b = loopback_sync_node(cluster="sync")
    try:
        a.start()
        b = loopback_sync_node(a.endpoint, cluster="sync")
        b.start()
        wait_until(lambda: len(a.peers) == 1 and len(b.peers) == 1, what="pair meets")
        yield a, b
    finally:
        call_within(b.close)
        call_within(a.close)


def test_every_public_name_of_the_async_node_is_on_the_blocking_one() -> None:
    async_node = AsyncNode("sync", discovery=[])
    blocking = loopback_sync_node(cluster="sync")
    try:
        public = {name for name in dir(async_node) if not name.startswith("_")}
        # No deliberate difference: the blocking node has every method (without await) and
        # every attribute (as a read-only property). The context manager is __enter__ and
        # __exit__ instead of __aenter__ and __aexit__, checked below.
        deliberately_missing: set[str] = set()
        assert public - deliberately_missing - set(dir(blocking)) == set()
        assert hasattr(blocking, "__enter__") and hasattr(blocking, "__exit__")
        for name in public - {"close", "drain", "events", "lookup", "request", "send_nowait",
                              "send_to",
                              "start", "stats", "subscribe", "subscribers", "wait_for",
                              "peers", "metrics"}:
            assert getattr(blocking, name) == getattr(blocking._node, name), name
    finally:
        blocking.close()


def test_every_public_name_of_async_subscriptions_and_streams_has_its_twin() -> None:
    # A Subscription's sub_id and is_async are the async node's bookkeeping; a stream is
    # closed with close() (blocking), not aclose().
    deliberately_missing = {"sub_id", "is_async", "aclose"}
    for async_type, blocking_type, instance_names in (
            (AsyncSubscription, Subscription, {"sub_id", "name", "meta", "handler",
                                               "is_async", "closed"}),
            (AsyncEventStream, SyncEventStream, {"dropped"})):
        public = {n for n in dir(async_type) if not n.startswith("_")} | instance_names
        assert public - deliberately_missing - set(dir(blocking_type)) - {
            "node", "name", "meta", "handler"} == set(), blocking_type  # set in __init__
    with loopback_sync_node(cluster="sync") as a:
        sub = a.subscribe("x", print, meta={"k": 1})
        assert (sub.node, sub.name, sub.meta, sub.handler, sub.closed, sub.queued) == (
            a, "x", {"k": 1}, print, False, 0)
        sub.update_meta({"k": 2})
        assert sub.meta == {"k": 2} and [s.meta for s in a.lookup("x")] == [{"k": 2}]
        sub.close()
        assert sub.closed


def test_a_handler_may_send_to_on_its_own_node_locally_and_remotely(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    local: list[object] = []
    remote: list[object] = []
    counts: list[int] = []
    a.subscribe("room:local", lambda msg: local.append(msg.body))
    b.subscribe("room:remote", lambda msg: remote.append(msg.body))
    a.subscribe("relay", lambda msg: counts.append(
        a.send_to(msg.body, ReceiveMode.EQ, ["room:local", "room:remote"])))
    a.wait_for("room:remote")
    b.wait_for("relay")

    assert b.send_to("from b", ReceiveMode.EQ, "relay") == 1  # the handler runs on a's rx
    wait_until(lambda: len(local) == 1 and len(remote) == 1, timeout=DEADLINE_S,
               what="the relayed message, locally and on b")
    assert a.send_to("from a", ReceiveMode.EQ, "relay") == 1  # ... inside a's own send_to
    wait_until(lambda: len(local) == 2 and len(remote) == 2, timeout=DEADLINE_S,
               what="the second relayed message")
    # One link per direction is FIFO: once this one arrives, nothing else is on its way.
    assert a.send_to("end", ReceiveMode.EQ, "room:remote") == 1
    wait_until(lambda: remote[-1:] == ["end"], timeout=DEADLINE_S, what="the last message")
    assert local == ["from b", "from a"]
    assert remote == ["from b", "from a", "end"]
    assert counts == [2, 2]
    call_within(a.close)  # within the deadline, and b saw a BYE, not a silent peer
    wait_until(lambda: b.peers == [], timeout=DEADLINE_S, what="a gone from b")


def test_calls_that_would_wait_on_the_loop_raise_usage_error_in_a_handler(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    outcomes: dict[str, BaseException | None] = {}
    async_sub = a.subscribe("svc:async", _async_echo)
    a.subscribe("svc:echo", lambda msg: msg.body)
    events = a.events()

    def attempt(name: str, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # the test thread asserts on it
            outcomes[name] = exc
        else:
            outcomes[name] = None

    def handler(msg: Message) -> str:
        attempt("request", lambda: a.request("svc:echo", "x"))
        attempt("wait_for", lambda: a.wait_for("svc:echo"))
        attempt("start", a.start)
        attempt("close", a.close)
        attempt("async close", async_sub.close)
        attempt("events", lambda: next(events))
        return "still answering"

    a.subscribe("asker", handler)
    b.wait_for("asker")
    assert b.request("asker", "go", timeout=DEADLINE_S) == "still answering"
    assert set(outcomes) == {"request", "wait_for", "start", "close", "async close", "events"}
    for name, exc in outcomes.items():
        assert isinstance(exc, UsageError), (name, exc)
        assert "from a handler of the same sync node would wait on the thread" in str(exc)
    assert "return a value from the handler" in str(outcomes["request"])
    assert "lookup()" in str(outcomes["wait_for"])
    # Nothing happened: the node serves, the async subscriber is there, the stream lives.
    assert a.running and not async_sub.closed and len(a._node._dispatcher.streams) == 1
    assert b.request("svc:async", "ping", timeout=DEADLINE_S) == "ping"
    events.close()
    assert len(a._node._dispatcher.streams) == 0


async def _async_echo(msg: Message) -> object:
    return msg.body


def test_calls_that_need_no_waiting_work_in_a_handler(pair: tuple[Node, Node]) -> None:
    a, b = pair
    seen: dict[str, object] = {}
    got: list[object] = []

    def handler(msg: Message) -> None:
        sub = a.subscribe("made:in-handler", lambda m: got.append(m.body))
        sub.update_meta({"made": "here"})
        seen["update_meta"] = [s.meta for s in a.lookup("made:in-handler")]
        seen["send_nowait"] = a.send_nowait("hi", ReceiveMode.EQ, "made:in-handler")
        sub.close()
        seen["after close"] = a.send_to("lost", ReceiveMode.EQ, "made:in-handler")
        seen["lookup"] = [s.name for s in a.lookup("relay")]
        seen["subscribers"] = sorted(s.name for s in a.subscribers())
        seen["peers"] = [p.node_id for p in a.peers]
        seen["stats"] = a.stats()["peers"]
        seen["props"] = (a.node_id, a.incarnation, a.endpoint, a.running, a.cluster)
        stream = a.events()  # made here, iterated (or closed) elsewhere
        stream.close()

    a.subscribe("relay", handler)
    b.wait_for("relay")
    b.send_to(None, ReceiveMode.EQ, "relay")
    wait_until(lambda: len(seen) == 8, timeout=DEADLINE_S, what="the handler's calls")
    assert got == ["hi"]
    assert seen == {
        "update_meta": [{"made": "here"}], "send_nowait": 1, "after close": 0,
        "lookup": ["relay"], "subscribers": ["relay"],
        "peers": [b.node_id], "stats": 1,
        "props": (a.node_id, a.incarnation, a.endpoint, True, "sync"),
    }
    assert len(a._node._dispatcher.streams) == 0


def test_events_from_a_thread_see_a_peer_come_and_end_when_the_node_closes() -> None:
    a = loopback_sync_node(cluster="sync")
    a.start()
    seen: list[object] = []
    events = a.events()

    def consume() -> None:
        for event in events:
            seen.append(event)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        with loopback_sync_node(a.endpoint, cluster="sync") as b:
            wait_until(lambda: any(isinstance(e, PeerUp) and e.peer.node_id == b.node_id
                                   for e in seen), timeout=DEADLINE_S, what="PeerUp of b")
    finally:
        call_within(a.close)
    consumer.join(DEADLINE_S)
    assert not consumer.is_alive(), "events() did not end when the node closed"
    assert list(a.events()) == []  # a closed node's stream is over at once


def test_an_abandoned_events_iterator_releases_its_stream() -> None:
    with loopback_sync_node(cluster="sync") as a:
        streams = a._node._dispatcher.streams

        def first(events: Iterator[object]) -> object:
            for event in events:
                return event  # abandoned after one event
            raise AssertionError("no event")

        dropped = a.events()
        with_block = a.events()
        a.subscribe("one", print)  # a SubscriberUp for each stream
        assert len(streams) == 2
        assert isinstance(next_within(dropped), SubscriberUp)
        del dropped
        wait_until(lambda: len(streams) == 1, timeout=DEADLINE_S, what="dropped stream gone")
        with with_block:
            call_within(lambda: first(with_block))
        assert len(streams) == 0
        # The usual shape: a loop over a temporary, left with break or return.
        a.subscribe("two", print)  # not seen: the stream below starts after it
        stream_made = threading.Event()

        def loop_and_leave() -> object:
            events = a.events()
            stream_made.set()
            return first(events)

        leaver = threading.Thread(target=loop_and_leave, daemon=True)
        leaver.start()
        stream_made.wait(DEADLINE_S)
        wait_until(lambda: len(streams) == 1, timeout=DEADLINE_S, what="the loop's stream")
        a.subscribe("three", print)
        leaver.join(DEADLINE_S)
        assert not leaver.is_alive()
        wait_until(lambda: len(streams) == 0, timeout=DEADLINE_S, what="left stream gone")


def test_after_close_every_call_raises_node_closed_and_none_hangs() -> None:
    a = loopback_sync_node(cluster="sync")
    a.start()
    sub = a.subscribe("x", print)
    waiter_outcome: list[BaseException] = []

    def wait_for_nobody() -> None:
        try:
            a.wait_for("nobody", timeout=60)
        except BaseException as exc:
            waiter_outcome.append(exc)

    waiter = threading.Thread(target=wait_for_nobody, daemon=True)
    waiter.start()
    wait_until(lambda: a._node._dispatcher._waiters, timeout=DEADLINE_S, what="the waiter waits")
    call_within(a.close)
    waiter.join(DEADLINE_S)
    assert [type(exc) for exc in waiter_outcome] == [NodeClosed]
    for call in (lambda: a.send_to("x", ReceiveMode.EQ, "x"), a.stats, lambda: a.lookup("x"),
                 lambda: a.subscribe("y", print), lambda: a.request("x", None)):
        with pytest.raises(NodeClosed):
            call_within(call)
    sub.close()  # already closed with the node
    call_within(a.close)  # idempotent


# --- AsyncNode.send_nowait, what handlers of the facade send with --------------------------------

async def test_send_nowait_sends_like_send_to_and_never_waits_for_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = loopback_node()
    await a.start()
    b = loopback_node(a.endpoint)
    await b.start()
    try:
        got: list[tuple[str, object]] = []
        await a.subscribe("n", lambda msg: got.append(("a", msg.body)))
        await b.subscribe("n", lambda msg: got.append(("b", msg.body)))
        await a.wait_for("n", count=2)
        assert a.send_nowait("hi", ReceiveMode.EQ, "n") == 2
        assert a.send_nowait("all", ReceiveMode.ALL, sender="me") == 2
        with pytest.raises(UsageError, match="EQ needs a target"):
            a.send_nowait("hi")
        await async_wait_until(lambda: len(got) == 4, what="local and remote deliveries")
        assert sorted(got) == [("a", "all"), ("a", "hi"), ("b", "all"), ("b", "hi")]
        # b's window is spent right now (and stays so): LinkFull at once, and nothing is sent.
        assert a.protocol is not None
        monkeypatch.setattr(a.protocol, "full_peers", {bytes.fromhex(b.node_id)})
        sent = a.stats()["sent"]
        with pytest.raises(LinkFull, match="nothing was sent") as raised:
            a.send_nowait("no room", ReceiveMode.EQ, "n")
        assert raised.value.node_id == b.node_id
        assert a.stats()["sent"] == sent and a.stats()["link_full"] == 1
        assert len(got) == 4
    finally:
        monkeypatch.undo()
        await b.close()
        await a.close()


def test_a_call_still_pending_at_close_is_discarded_on_either_build() -> None:
    """What ``close`` does with the coroutine of a call handed to the loop too late to run.
    On the compiled build a coroutine is not a Python coroutine (no ``cr_running``): close
    raised ``AttributeError`` there, seen when an events() iterator's ``aclose`` was still
    pending as its node closed. A Python coroutine that never ran is closed (no warning)."""
    coro = smartroute.Node("unit", discovery=[]).drain()
    discard_unstarted(coro)
    if inspect.iscoroutine(coro):  # the pure build
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    else:
        coro.close()
