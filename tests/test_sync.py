"""The blocking facade, for code without an event loop."""

from __future__ import annotations

import threading

import pytest

from smartroute import Message, NoSubscriber, ReceiveMode
from smartroute.sync import Node
from smartroute.testing import FAST_TIMINGS, wait_until


def test_blocking_nodes_subscribe_send_and_request() -> None:
    got: list[tuple[str, object]] = []
    with Node("sync", discovery=[], host="127.0.0.1", **FAST_TIMINGS) as a, \
            Node("sync", discovery=[a.endpoint], host="127.0.0.1", **FAST_TIMINGS) as b:
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

    with Node("sync", discovery=[], host="127.0.0.1", **FAST_TIMINGS) as a:
        a.subscribe("x", handler)
        a.send_to(None, ReceiveMode.EQ, "x")
        assert threads == [f"smartroute-{a.node_id[:8]}"]
