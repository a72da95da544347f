"""The chat gateway's WebSocket endpoint (``--ws-port``): real gateway processes, real
WebSocket clients (the websockets package) beside real TCP ones.

The same commands, pushes, limits and bad-input policy as TCP (tests/test_chat_gateway.py):
a WebSocket user and a TCP user on different gateways chat; bad messages get error replies;
a client that stops reading is dropped without delaying anyone; an idle one is pinged, then
dropped.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.chat_gateway.client import WebSocketChatClient
from examples.chat_gateway.demo import wait_for_mesh
from examples.chat_gateway.processes import GatewayProcess, start_gateways
from examples.chat_gateway.server import MAX_LINE_BYTES
from tests.test_chat_gateway import (
    DELIVERY_TIMEOUT_S,
    OBSERVE_S,
    Connect,
    arrives,
    flood_past,
    has_users,
    idle_one_dropped,
    messages,
)

websockets = pytest.importorskip("websockets", reason="needs smartroute[chat] (websockets)")
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from examples.chat_gateway.ws import MAX_MESSAGE_BYTES  # noqa: E402

pytestmark = pytest.mark.processes


ALLOWED_ORIGIN = "https://chat.example:8443"
"""A page elsewhere that the module's gateways let open their WebSocket (``--ws-origin``)."""


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    logs = tmp_path_factory.mktemp("ws-gateways")
    started = start_gateways(2, cluster=f"chat-ws-{os.getpid()}",
                             options=["--ws-port", "0", "--ws-origin", ALLOWED_ORIGIN],
                             log_dir=logs, prefix="ws")
    try:
        yield started
    finally:
        for gateway in started:
            gateway.kill()


async def test_a_websocket_user_and_a_tcp_user_on_two_gateways_chat(
        gateways: list[GatewayProcess], connect: Connect) -> None:
    g1, g2 = gateways
    web = await connect(g1, "wt-web", ws=True)
    tcp = await connect(g2, "wt-tcp")
    await arrives(web, type="presence", user="wt-tcp", status="online")
    await wait_for_mesh(gateways, has_users({"wt-web": 1, "wt-tcp": 1}))

    assert (await web.request("speak", text="hi from the browser"))["connections"] == 1
    await arrives(tcp, type="speak", text="hi from the browser")
    assert (await tcp.request("speak", text="hi from the terminal"))["connections"] == 1
    await arrives(web, type="speak", text="hi from the terminal")
    assert (await tcp.request("whisper", to="wt-web", text="psst"))["connections"] == 1
    await arrives(web, type="whisper", text="psst")
    for client in (web, tcp):
        assert (await client.request("join", room="wt-room"))["type"] == "joined"
    await arrives(web, type="room", room="wt-room", user="wt-tcp", event="joined")
    await web.request("say", room="wt-room", text="in the room")
    for client in (web, tcp):
        await arrives(client, type="say", room="wt-room", text="in the room")
    await asyncio.sleep(OBSERVE_S)  # nothing else happens: a duplicate would show by now
    assert messages(tcp, type="speak") == [
        {"type": "speak", "from": "wt-web", "text": "hi from the browser"}]
    assert messages(web, type="speak") == [
        {"type": "speak", "from": "wt-tcp", "text": "hi from the terminal"}]
    assert [m["text"] for m in messages(tcp, type="say")] == ["in the room"]

    await tcp.close()
    await arrives(web, type="presence", user="wt-tcp", status="offline")


async def test_a_status_set_on_one_gateway_is_told_and_listed_on_the_other(
        gateways: list[GatewayProcess], connect: Connect) -> None:
    g1, g2 = gateways
    web = await connect(g1, "st-web", ws=True)
    tcp = await connect(g2, "st-tcp")
    await wait_for_mesh(gateways, has_users({"st-web": 1, "st-tcp": 1}))

    answer = await tcp.request("status", status="away")
    assert (answer["type"], answer["for"]) == ("ok", "status")
    await arrives(web, type="status", user="st-tcp", status="away")
    await wait_for_mesh(gateways, lambda who: who["users"]["st-tcp"] == {
        "connections": 1, "gateways": [g2.name], "status": "away"})
    await web.request("status", status="typing")
    await arrives(tcp, type="status", user="st-web", status="typing")
    await tcp.request("status", status="available")
    await arrives(web, type="status", user="st-tcp", status="available")
    await wait_for_mesh(gateways, lambda who: "status" not in who["users"]["st-tcp"])
    await asyncio.sleep(OBSERVE_S)  # nothing else happens: no echo, no repeat
    assert [m["status"] for m in messages(web, type="status")] == ["away", "available"]
    assert [m["status"] for m in messages(tcp, type="status")] == ["typing"]

    for fields, code in (({}, "missing_field"), ({"status": "asleep"}, "bad_field"),
                         ({"status": ["away"]}, "bad_field")):
        answer = await tcp.request("status", **fields)
        assert (answer["type"], answer["code"]) == ("error", code)
    stranger = await connect(g1)
    assert (await stranger.request("status", status="away"))["code"] == "not_registered"


async def test_bad_websocket_messages_get_an_error_and_the_connection_survives(
        gateways: list[GatewayProcess], connect: Connect) -> None:
    client = await connect(gateways[0], ws=True)
    assert isinstance(client, WebSocketChatClient)
    bad_messages: list[tuple[bytes | str, str | None]] = [
        ("this is not json", "bad_json"),
        (b"\xff\xfe\xfd", "bad_json"),  # a binary message, not UTF-8
        ("[1, 2, 3]", "bad_request"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"text": "no type"}', "unknown_type"),
        ('{"type": "speak", "text": "too early"}', "not_registered"),
        ('{"type": "register"}', "missing_field"),
        ('{"type": "register", "name": "two words"}', "bad_field"),
        ("x" * (MAX_LINE_BYTES + 1), "line_too_long"),
        ('{"type": "speak", "text": "' + "y" * MAX_LINE_BYTES + '"}', "line_too_long"),
        ("", None),  # an empty message, as an empty line: nothing to answer
        ('{"type": "register", "name": "wb-ann"}', None),
        ('{"type": "whisper", "to": "wb-ann"}', "missing_field"),
        ('{"type": "speak", "text": 5}', "bad_field"),
        ('{"type": "say", "room": "nowhere", "text": "hi"}', "not_in_room"),
        ('{"type": "register", "name": "wb-ann"}', "already_registered"),
    ]
    for message, _ in bad_messages:
        await client.send_raw(message)
    assert (await client.request("ping"))["type"] == "pong"  # still served, in order
    assert [m["code"] for m in client.of_type("error")] == \
        [code for _, code in bad_messages if code is not None]
    assert [m["name"] for m in client.of_type("registered")] == ["wb-ann"]

    # Faster than the gateway answers: it stops reading (backpressure), nothing is lost.
    for i in range(500):
        await client.send({"type": "ping", "id": f"flood-{i}"})
    await client.wait_for(lambda m: m.get("id") == "flood-499", DELIVERY_TIMEOUT_S,
                          what="the last flood answer")
    assert [m["id"] for m in client.of_type("pong") if str(m.get("id")).startswith("flood")] \
        == [f"flood-{i}" for i in range(500)]

    # A message the gateway will not read whole closes the connection (1009, too big).
    await client.send_raw("z" * (MAX_MESSAGE_BYTES + 1))
    await client.closed()
    assert client.closed_by_gateway and client.ws.close_code == 1009


async def test_a_websocket_client_that_stops_reading_does_not_delay_the_others(
        gateways: list[GatewayProcess], connect: Connect) -> None:
    g1, g2 = gateways
    flood = await connect(g1, "ws-flood")
    fast = await connect(g2, "ws-fast", ws=True)
    # The slow client registers and never reads again: websockets stops reading its socket
    # once max_queue messages wait, and a small receive buffer holds little in the kernel.
    assert g2.ws_url is not None
    slow = await WebSocketChatClient.connect_ws(g2.ws_url, receive_buffer=4096, max_queue=1)
    slow._task.cancel()  # nothing reads its messages from here on
    try:
        await slow.send({"type": "register", "name": "ws-slow"})
        await wait_for_mesh(gateways, has_users({"ws-flood": 1, "ws-fast": 1, "ws-slow": 1}))

        await flood_past(flood, fast)  # as over TCP
        await arrives(fast, type="presence", user="ws-slow", status="offline")
        assert (await fast.request("stats"))["counters"]["slow_disconnects"] == 1
    finally:
        slow.ws.transport.abort()


async def test_an_idle_websocket_client_is_pinged_then_dropped(tmp_path: Path,
                                                               connect: Connect) -> None:
    gateway = GatewayProcess("ws-idle", cluster=f"chat-ws-idle-{os.getpid()}",
                             log_path=tmp_path / "idle.log",
                             options=["--no-mdns", "--idle-timeout", "1.0", "--ws-port", "0"])
    try:
        await idle_one_dropped(gateway, connect, ws=True)  # as over TCP
    finally:
        gateway.kill()


def test_the_page_is_served_at_the_root_and_nothing_else(
        gateways: list[GatewayProcess]) -> None:
    url = gateways[0].page_url
    assert url is not None and url.endswith("/")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert "<title>smartroute chat</title>" in page and "new WebSocket(" in page
    assert "http://" not in page.replace(url, "") and "https://" not in page  # nothing remote
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url + "elsewhere.js", timeout=5)
    assert missing.value.code == 404


async def test_the_websocket_port_is_plain_websocket(gateways: list[GatewayProcess]) -> None:
    """Any WebSocket client works: no subprotocol, no client library of ours."""
    assert gateways[1].ws_url is not None
    async with ws_connect(gateways[1].ws_url) as ws:
        await ws.send('{"type": "ping", "id": 1}')
        assert await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT_S) == '{"type":"pong","id":1}'


async def test_only_the_gateways_own_page_and_allowed_ones_may_open_the_websocket(
        gateways: list[GatewayProcess]) -> None:
    """A browser connects from any page and sends the user's cookies: a hostile page must not
    get a WebSocket. Refused with 403: an ``Origin`` that is neither the gateway's page nor
    one given with ``--ws-origin``; let in: those, and clients that send no ``Origin``."""
    url = gateways[0].ws_url
    assert url is not None
    own = "http://" + url.removeprefix("ws://").rstrip("/")
    for origin in ("http://evil.example", own.replace("http://", "http://x."), "null",
                   own + "0"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(url, origin=origin):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403, origin
    for origin in (own, ALLOWED_ORIGIN, None):
        async with ws_connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send('{"type": "ping", "id": 2}')
            assert await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT_S) == (
                '{"type":"pong","id":2}'), origin
    log = gateways[0].log_path.read_text()
    assert log.count("refused a WebSocket opened by a page of") == 4
