"""smartroute/requests.py: the requests a node waits on and the repliers of the requests its
subscribers receive, driven by hand on a real event loop (no sockets: the node's part is two
callables, ``send_reply`` and ``reply_sent``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from smartroute import message
from smartroute.errors import NoSubscriber, PeerLost, RemoteError
from smartroute.events import PeerDown, PeerInfo
from smartroute.messages import decode_body, encode_body
from smartroute.protocol import ReplyArrived
from smartroute.requests import DEADLINES_SLACK, ErrorReply, Pending, Requests, describe
from smartroute.wire import Reply, ReplyStatus

ME = "aa" * 16
PEER_B = "bb" * 16
PEER_C = "cc" * 16


@message("test_requests.Point")
@dataclass
class Point:
    x: int
    y: int


class Outbox:
    """What the node would send: every ``send_reply`` call, and how many pumps it asked for."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.replies: list[tuple[str, int, ReplyStatus, str, bytes]] = []
        self.pumps = 0
        self.reachable = reachable

    def send_reply(self, origin: str, request_id: int, status: ReplyStatus, type_name: str,
                   body: bytes) -> bool:
        self.replies.append((origin, request_id, status, type_name, body))
        return self.reachable

    def reply_sent(self) -> None:
        self.pumps += 1

    def requests(self) -> Requests:
        return Requests(ME, self.send_reply, self.reply_sent)


def opened(requests: Requests, remote: list[str], local: bool = False) -> tuple[int, Pending]:
    """A request as ``Node.request`` opens it: waiting on ``remote`` nodes (and a local one)."""
    request_id, pending = requests.open(asyncio.get_running_loop(), 5.0)
    pending.remaining = len(remote) + (1 if local else 0)
    pending.nodes = {bytes.fromhex(node) for node in remote}
    return request_id, pending


def reply(origin: str, request_id: int, status: ReplyStatus, type_name: str = "",
          body: bytes = b"") -> ReplyArrived:
    return ReplyArrived(origin, Reply(request_id, int(status), type_name, body))


def peer_down(node_id: str, reason: str = "timeout") -> PeerDown:
    return PeerDown(PeerInfo(node_id, "tcp://127.0.0.1:7001", "b", "alive", 1), reason)


# --- ids and pending state ------------------------------------------------------------------


async def test_open_gives_fresh_ids_and_close_forgets_them() -> None:
    requests = Outbox().requests()
    first, _ = requests.open(asyncio.get_running_loop(), 5.0)
    second, _ = requests.open(asyncio.get_running_loop(), 5.0)
    assert second == first + 1 and set(requests.pending) == {first, second}
    requests.close(first)
    requests.close(first)  # twice is harmless
    assert set(requests.pending) == {second}
    # A random start: another process on the same endpoint does not reuse our ids.
    assert Outbox().requests().open(asyncio.get_running_loop(), 5.0)[0] != first


async def test_fail_all_raises_in_every_waiting_request() -> None:
    requests = Outbox().requests()
    _, done = opened(requests, [PEER_B])
    done.future.set_result("answered")
    _, waiting = opened(requests, [PEER_B])
    requests.fail_all(RuntimeError("closed"))
    assert done.future.result() == "answered"
    with pytest.raises(RuntimeError, match="closed"):
        waiting.future.result()


# --- deadlines --------------------------------------------------------------------------------


async def test_each_request_fails_with_timeout_error_at_its_own_deadline() -> None:
    """One timer serves every request: a later, shorter request still fails first, each at
    its deadline and not before; one answered in time is left alone."""
    loop = asyncio.get_running_loop()
    requests = Outbox().requests()
    started = loop.time()
    _, long = requests.open(loop, 0.6)
    _, answered = requests.open(loop, 0.1)
    _, short = requests.open(loop, 0.2)
    answered.future.set_result("in time")
    with pytest.raises(TimeoutError):
        await short.future
    # Not before its deadline, and before the longer one's (which would have failed with it).
    assert loop.time() - started >= 0.2 and not long.future.done()
    with pytest.raises(TimeoutError):
        await long.future
    assert loop.time() - started >= 0.6
    assert answered.future.result() == "in time"


async def test_closed_requests_do_not_pile_up_in_the_deadline_heap() -> None:
    """A hundred thousand requests answered long before their deadline leave the heap no
    larger than its slack beyond twice the open ones."""
    loop = asyncio.get_running_loop()
    requests = Outbox().requests()
    kept = [requests.open(loop, 60.0)[1] for _ in range(10)]
    for _ in range(100_000):
        request_id, pending = requests.open(loop, 60.0)
        pending.future.set_result(None)
        requests.close(request_id)
    assert requests.deadlines_held() <= 2 * len(kept) + DEADLINES_SLACK + 1
    assert len(requests.pending) == len(kept)
    requests.fail_all(RuntimeError("closed"))
    assert all(pending.future.done() for pending in kept)


# --- the local replier ----------------------------------------------------------------------


async def test_a_local_replier_resolves_the_request_with_the_value_as_it_is() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [], local=True)
    replier = requests.local_replier(request_id)
    body = Point(1, 2)
    replier(body)
    assert pending.future.result() is body  # not encoded: it never left the process
    replier("again")  # a second answer is ignored
    assert pending.future.result() is body


async def test_a_local_replier_raises_remote_error_with_the_handler_error_type() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [], local=True)
    requests.local_replier(request_id)(ErrorReply(KeyError("alice")))
    with pytest.raises(RemoteError) as caught:
        pending.future.result()
    assert str(caught.value) == "KeyError: 'alice'"
    assert caught.value.error_type == "KeyError" and caught.value.node_id == ME


async def test_a_local_replier_of_a_closed_request_does_nothing() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [], local=True)
    requests.close(request_id)
    requests.local_replier(request_id)("late")
    assert not pending.future.done()


# --- the remote replier ---------------------------------------------------------------------


async def test_a_remote_replier_sends_an_ok_reply_and_counts_handling_until_called() -> None:
    outbox = Outbox()
    requests = outbox.requests()
    replier = requests.remote_replier(PEER_B, 41)
    other = requests.remote_replier(PEER_C, 42)
    assert requests.handling == 2
    replier(Point(3, 4))
    assert requests.handling == 1
    assert outbox.replies == [(PEER_B, 41, ReplyStatus.OK, "test_requests.Point",
                               encode_body(Point(3, 4)))]
    assert decode_body(outbox.replies[0][4]) == Point(3, 4)
    assert outbox.pumps == 1
    other(None)
    assert requests.handling == 0
    assert outbox.replies[1] == (PEER_C, 42, ReplyStatus.OK, "NoneType", encode_body(None))


async def test_a_remote_replier_sends_an_error_as_type_and_text() -> None:
    outbox = Outbox()
    requests = outbox.requests()
    requests.remote_replier(PEER_B, 7)(ErrorReply(ValueError("bad input")))
    assert outbox.replies == [(PEER_B, 7, ReplyStatus.ERROR, "ValueError",
                               b"ValueError: bad input")]
    assert requests.handling == 0 and outbox.pumps == 1


async def test_an_unencodable_reply_becomes_an_error_reply_of_type_type_error() -> None:
    outbox = Outbox()
    requests = outbox.requests()
    requests.remote_replier(PEER_B, 8)(object())
    [(origin, request_id, status, type_name, body)] = outbox.replies
    assert (origin, request_id, status, type_name) == (PEER_B, 8, ReplyStatus.ERROR, "TypeError")
    assert body.startswith(b"reply cannot be encoded: ")
    assert requests.handling == 0


async def test_no_pump_is_asked_for_when_the_origin_is_gone() -> None:
    outbox = Outbox(reachable=False)
    requests = outbox.requests()
    requests.remote_replier(PEER_B, 9)("x")
    requests.answer_nobody(PEER_B, 10)
    assert [r[2] for r in outbox.replies] == [ReplyStatus.OK, ReplyStatus.NO_SUBSCRIBER]
    assert outbox.pumps == 0 and requests.handling == 0


async def test_answer_nobody_sends_no_subscriber_with_an_empty_body() -> None:
    outbox = Outbox()
    outbox.requests().answer_nobody(PEER_B, 11)
    assert outbox.replies == [(PEER_B, 11, ReplyStatus.NO_SUBSCRIBER, "", b"")]
    assert outbox.pumps == 1


def test_describe_is_type_colon_message() -> None:
    assert describe(ZeroDivisionError("division by zero")) == \
        "ZeroDivisionError: division by zero"


# --- on_reply -------------------------------------------------------------------------------


async def test_an_ok_reply_resolves_with_the_decoded_body() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B])
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.OK, "test_requests.Point",
                            encode_body(Point(5, 6))))
    assert pending.future.result() == Point(5, 6)


async def test_an_undecodable_ok_reply_raises_remote_error() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B])
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.OK, "bytes", b"\xc1"))
    with pytest.raises(RemoteError, match="undecodable reply") as caught:
        pending.future.result()
    assert caught.value.node_id == PEER_B


async def test_an_error_reply_raises_remote_error_with_its_type() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B])
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.ERROR, "KeyError",
                            b"KeyError: 'x' \xff"))
    with pytest.raises(RemoteError) as caught:
        pending.future.result()
    assert str(caught.value) == "KeyError: 'x' \ufffd"  # undecodable bytes are replaced
    assert (caught.value.node_id, caught.value.error_type) == (PEER_B, "KeyError")


async def test_no_subscriber_raises_only_when_no_one_is_left_to_answer() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B, PEER_C])
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.NO_SUBSCRIBER))
    assert not pending.future.done() and pending.remaining == 1
    assert pending.nodes == {bytes.fromhex(PEER_C)}
    requests.on_reply(reply(PEER_C, request_id, ReplyStatus.NO_SUBSCRIBER))
    with pytest.raises(NoSubscriber, match="left before the request reached it"):
        pending.future.result()


async def test_no_subscriber_then_an_answer_from_the_other_node_resolves() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B, PEER_C])
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.NO_SUBSCRIBER))
    requests.on_reply(reply(PEER_C, request_id, ReplyStatus.OK, "int", encode_body(3)))
    assert pending.future.result() == 3


async def test_replies_to_unknown_or_answered_requests_are_ignored() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B, PEER_C])
    requests.on_reply(reply(PEER_B, request_id + 1000, ReplyStatus.OK, "int", encode_body(1)))
    assert not pending.future.done()
    requests.on_reply(reply(PEER_B, request_id, ReplyStatus.OK, "int", encode_body(2)))
    requests.on_reply(reply(PEER_C, request_id, ReplyStatus.ERROR, "KeyError", b"late"))
    assert pending.future.result() == 2  # the first answer wins


# --- peer_gone ------------------------------------------------------------------------------


async def test_peer_lost_only_when_every_node_the_request_went_to_is_gone() -> None:
    requests = Outbox().requests()
    _, both = opened(requests, [PEER_B, PEER_C])
    _, only_b = opened(requests, [PEER_B])
    _, only_c = opened(requests, [PEER_C])
    requests.peer_gone(peer_down(PEER_B, "timeout"))
    with pytest.raises(PeerLost) as caught:
        only_b.future.result()
    assert caught.value.node_id == PEER_B
    assert str(caught.value) == (f"node {PEER_B[:8]} (tcp://127.0.0.1:7001) is gone "
                                 "(timeout) before it answered")
    assert not both.future.done() and both.remaining == 1
    assert not only_c.future.done()
    requests.peer_gone(peer_down(PEER_B, "timeout"))  # the same node again: counted once
    assert not both.future.done() and both.remaining == 1
    requests.peer_gone(peer_down(PEER_C, "bye"))
    with pytest.raises(PeerLost, match=r"\(bye\)") as caught:
        both.future.result()
    assert caught.value.node_id == PEER_C
    assert isinstance(only_c.future.exception(), PeerLost)


async def test_a_local_subscriber_still_counts_when_the_remote_node_is_gone() -> None:
    requests = Outbox().requests()
    request_id, pending = opened(requests, [PEER_B], local=True)
    requests.peer_gone(peer_down(PEER_B))
    assert not pending.future.done() and pending.remaining == 1
    requests.local_replier(request_id)("from here")
    assert pending.future.result() == "from here"


async def test_a_node_the_request_did_not_go_to_changes_nothing() -> None:
    requests = Outbox().requests()
    _, pending = opened(requests, [PEER_B])
    requests.peer_gone(peer_down(PEER_C))
    assert not pending.future.done() and pending.remaining == 1
