"""The sample chat gateway: three gateway processes on loopback, real TCP clients.

The gateways are started as the demo starts them (mDNS bound to 127.0.0.1, in turn) and
stopped by PID. Each test uses its own user and room names, so what one test leaves behind
(a departing user) cannot pass for what another expects.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.chat_gateway.client import ChatClient
from examples.chat_gateway.demo import wait_for_mesh
from examples.chat_gateway.processes import GatewayProcess, start_gateways
from examples.chat_gateway.server import MAX_LINE_BYTES
from smartroute.testing import async_wait_until
from tests.conftest import Connect

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent

OBSERVE_S = 0.3
"""An observation window: a duplicate or stray delivery on loopback shows up well within it."""

DELIVERY_TIMEOUT_S = 10.0
"""Longest wait for one expected message (the mesh declares a killed gateway dead in 1.5 s)."""


class Mesh(NamedTuple):
    gateways: list[GatewayProcess]
    cluster: str
    logs: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("gateways")
    cluster = f"chat-test-{os.getpid()}"  # never meets gateways of other test runs
    gateways = start_gateways(3, cluster=cluster, log_dir=logs)
    try:
        yield Mesh(gateways, cluster, logs)
    finally:
        for gateway in gateways:
            gateway.kill()






def has_users(expected: dict[str, int]) -> Callable[[dict[str, Any]], bool]:
    """A ``who`` answer lists exactly these users, with these connection counts."""
    return lambda who: {name: info["connections"] for name, info in who["users"].items()} \
        == expected


async def arrives(client: ChatClient, **fields: Any) -> dict[str, Any]:
    """Wait for a message with these fields."""
    return await client.wait_for(lambda m: all(m.get(k) == v for k, v in fields.items()),
                                 DELIVERY_TIMEOUT_S, what=f"a message with {fields}")


def messages(client: ChatClient, **fields: Any) -> list[dict[str, Any]]:
    return [m for m in client.received if all(m.get(k) == v for k, v in fields.items())]


async def flood_past(flood: ChatClient, fast: ChatClient) -> None:
    """``flood`` speaks 9.6 MB to each receiver: more than the kernel buffers (tcp_wmem max
    4 MiB) plus the gateway's 1 MiB per-connection limit. At most WINDOW messages are ahead of
    ``fast``, so it is never the one that falls 1 MiB behind: it gets them all, in order."""
    count, window, text = 800, 8, "z" * 12_000
    for i in range(count + window):
        if i >= window:
            await fast.wait_for(lambda m, n=i - window: m.get("type") == "speak"
                                and m["text"].startswith(f"{n} "), DELIVERY_TIMEOUT_S,
                                what=f"speak {i - window} at the fast client",
                                start=max(0, len(fast.received) - 2 * window))
        if i < count:
            await flood.send({"type": "speak", "text": f"{i} {text}"})
    assert [int(m["text"].split()[0]) for m in messages(fast, type="speak")] == \
        list(range(count))


async def idle_one_dropped(gateway: GatewayProcess, connect: Connect, **options: Any) -> None:
    """On a gateway with a 1 s idle timeout: a client that never answers pings is pinged,
    then dropped; one that answers stays (``options``: for ``connect``, e.g. the transport)."""
    mute = await connect(gateway, "idle-mute", answer_pings=False, **options)
    chatty = await connect(gateway, "idle-chatty", **options)  # answers pings
    await arrives(mute, type="ping")
    await arrives(mute, type="bye", reason="idle")
    await mute.closed()
    await asyncio.sleep(1.5)  # observation window: chatty would be dropped within it
    assert not chatty.closed_by_gateway
    assert chatty.of_type("ping")  # it was pinged, and its pongs kept it
    counters = (await chatty.request("stats"))["counters"]
    assert (counters["idle_disconnects"], counters["connections"]) == (1, 1)


async def test_the_demo_start_forms_a_full_mesh_over_loopback_mdns(mesh: Mesh,
                                                                   connect: Connect) -> None:
    await wait_for_mesh(mesh.gateways)
    for gateway in mesh.gateways:
        probe = await connect(gateway)
        assert (await probe.request("stats"))["counters"]["peers"] == 2


async def test_speak_reaches_every_other_connection_exactly_once(mesh: Mesh,
                                                                 connect: Connect) -> None:
    g1, g2, g3 = mesh.gateways
    ann = await connect(g1, "sp-ann")
    ann_phone = await connect(g3, "sp-ann")
    ben, cat, dan = await connect(g2, "sp-ben"), await connect(g3, "sp-cat"), \
        await connect(g1, "sp-dan")
    # NOT_EQ reaches room subscribers too: they must not make a second delivery.
    for client in (ann_phone, ben, cat, dan):
        await client.request("join", room="sp-lobby")
    await wait_for_mesh(mesh.gateways, lambda who: has_users(
        {"sp-ann": 2, "sp-ben": 1, "sp-cat": 1, "sp-dan": 1})(who)
        and len(who["rooms"].get("sp-lobby", [])) == 4)

    answer = await ann.request("speak", text="hello all")
    assert answer["type"] == "ok"
    for client in (ben, cat, dan):
        await arrives(client, type="speak", text="hello all")
    await asyncio.sleep(OBSERVE_S)  # nothing else happens: a duplicate would show by now
    for client in (ben, cat, dan):
        assert messages(client, type="speak") == [
            {"type": "speak", "from": "sp-ann", "text": "hello all"}]
    assert messages(ann, type="speak") == messages(ann_phone, type="speak") == []


async def test_whisper_reaches_all_connections_of_its_target_and_nobody_else(
        mesh: Mesh, connect: Connect) -> None:
    g1, g2, g3 = mesh.gateways
    ann, ann_phone = await connect(g1, "wh-ann"), await connect(g3, "wh-ann")
    ben, cat = await connect(g2, "wh-ben"), await connect(g1, "wh-cat")
    await wait_for_mesh(mesh.gateways, has_users({"wh-ann": 2, "wh-ben": 1, "wh-cat": 1}))

    answer = await ben.request("whisper", to="wh-ann", text="psst")
    assert (answer["type"], answer["connections"]) == ("ok", 2)
    for client in (ann, ann_phone):
        await arrives(client, type="whisper", text="psst")
    await asyncio.sleep(OBSERVE_S)  # nothing else happens
    for client in (ann, ann_phone):
        assert messages(client, type="whisper") == [
            {"type": "whisper", "from": "wh-ben", "text": "psst"}]
    assert messages(ben, type="whisper") == messages(cat, type="whisper") == []

    answer = await ben.request("whisper", to="wh-nobody", text="anyone?")
    assert (answer["type"], answer["code"]) == ("error", "no_such_user")


async def test_rooms_join_say_leave_across_gateways(mesh: Mesh, connect: Connect) -> None:
    g1, g2, g3 = mesh.gateways
    ann, ben, cat = (await connect(g1, "rm-ann"), await connect(g2, "rm-ben"),
                     await connect(g3, "rm-cat"))
    answer = await ann.request("join", room="rm-x")
    assert answer == {"type": "joined", "room": "rm-x", "members": ["rm-ann"], "count": 1,
                      "id": answer["id"]}
    await wait_for_mesh(mesh.gateways, lambda who: who["rooms"].get("rm-x") == ["rm-ann"])
    await ben.request("join", room="rm-x")
    await arrives(ann, type="room", room="rm-x", user="rm-ben", event="joined")
    await wait_for_mesh(mesh.gateways,
                        lambda who: who["rooms"].get("rm-x") == ["rm-ann", "rm-ben"])

    await ben.request("say", room="rm-x", text="hi room")
    for client in (ann, ben):  # the sender's own connection gets it too: that is its echo
        await arrives(client, type="say", room="rm-x", text="hi room")
    answer = await cat.request("say", room="rm-x", text="let me in")
    assert (answer["type"], answer["code"]) == ("error", "not_in_room")

    assert (await ben.request("leave", room="rm-x"))["type"] == "left"
    await arrives(ann, type="room", room="rm-x", user="rm-ben", event="left")
    await wait_for_mesh(mesh.gateways, lambda who: who["rooms"].get("rm-x") == ["rm-ann"])
    await ann.request("say", room="rm-x", text="alone now")
    await arrives(ann, type="say", text="alone now")
    await asyncio.sleep(OBSERVE_S)  # nothing else happens
    assert [m["text"] for m in messages(ann, type="say")] == ["hi room", "alone now"]
    assert [m["text"] for m in messages(ben, type="say")] == ["hi room"]
    assert messages(cat, type="say") == messages(cat, type="room") == []
    assert messages(ben, type="room") == []  # ann was there first: no news for ben


async def test_who_lists_users_and_rooms_of_every_gateway(mesh: Mesh,
                                                          connect: Connect) -> None:
    g1, g2, g3 = mesh.gateways
    await connect(g1, "who-ann")
    await connect(g2, "who-ann")
    ben = await connect(g3, "who-ben")
    await ben.request("join", room="who-room")
    expected = {
        "users": {"who-ann": {"connections": 2, "gateways": [g1.name, g2.name]},
                  "who-ben": {"connections": 1, "gateways": [g3.name]}},
        "rooms": {"who-room": ["who-ben"]},
    }
    # Asked of every gateway, by a client that did not even register.
    await wait_for_mesh(mesh.gateways, lambda who: who == {"type": "who", **expected,
                                                           "id": who["id"]})


async def test_presence_follows_a_users_connections_on_every_gateway(
        mesh: Mesh, connect: Connect) -> None:
    g1, g2, g3 = mesh.gateways
    ann, cat = await connect(g1, "pr-ann"), await connect(g3, "pr-cat")
    await wait_for_mesh(mesh.gateways, has_users({"pr-ann": 1, "pr-cat": 1}))
    ben = await connect(g2, "pr-ben")
    for client in (ann, cat):
        await arrives(client, type="presence", user="pr-ben", status="online")
    ben_phone = await connect(g3, "pr-ben")  # a second connection: not news
    await wait_for_mesh(mesh.gateways, has_users({"pr-ann": 1, "pr-ben": 2, "pr-cat": 1}))
    await ben.close()  # still online on the other one
    await wait_for_mesh(mesh.gateways, has_users({"pr-ann": 1, "pr-ben": 1, "pr-cat": 1}))
    await ben_phone.close()
    for client in (ann, cat):
        await arrives(client, type="presence", user="pr-ben", status="offline")
    await asyncio.sleep(OBSERVE_S)  # nothing else happens
    for client in (ann, cat):
        assert [m["status"] for m in messages(client, type="presence", user="pr-ben")] == \
            ["online", "offline"]


async def test_a_killed_gateways_users_go_offline_everywhere(mesh: Mesh,
                                                             connect: Connect) -> None:
    g1, g2, _ = mesh.gateways
    doomed = GatewayProcess("gw-doomed", cluster=mesh.cluster, log_path=mesh.logs / "doomed.log",
                            options=["--interface", "127.0.0.1"])
    try:
        ann, ben = await connect(g1, "k-ann"), await connect(g2, "k-ben")
        await ann.request("join", room="k-room")
        eve, fay = await connect(doomed, "k-eve"), await connect(doomed, "k-fay")
        await fay.request("join", room="k-room")
        everyone = [*mesh.gateways, doomed]
        await wait_for_mesh(everyone, lambda who: has_users(
            {"k-ann": 1, "k-ben": 1, "k-eve": 1, "k-fay": 1})(who)
            and who["rooms"].get("k-room") == ["k-ann", "k-fay"])
        await arrives(ann, type="room", room="k-room", user="k-fay", event="joined")

        doomed.kill()  # SIGKILL: no goodbye to anyone
        for client in (ann, ben):
            for user in ("k-eve", "k-fay"):
                await arrives(client, type="presence", user=user, status="offline")
        await arrives(ann, type="room", room="k-room", user="k-fay", event="left")
        await wait_for_mesh(mesh.gateways, lambda who: has_users(
            {"k-ann": 1, "k-ben": 1})(who) and who["rooms"].get("k-room") == ["k-ann"])
        assert not eve.received or eve.closed_by_gateway
    finally:
        doomed.kill()


async def test_bad_input_gets_an_error_and_the_connection_survives(mesh: Mesh,
                                                                   connect: Connect) -> None:
    client = await connect(mesh.gateways[0])
    bad_lines = [
        (b"this is not json\n", "bad_json"),
        (b"\xff\xfe\xfd\n", "bad_json"),
        (b"[1, 2, 3]\n", "bad_request"),
        (b'{"type": "dance"}\n', "unknown_type"),
        (b'{"text": "no type"}\n', "unknown_type"),
        (b'{"type": "speak", "text": "too early"}\n', "not_registered"),
        (b'{"type": "register"}\n', "missing_field"),
        (b'{"type": "register", "name": "two words"}\n', "bad_field"),
        (b"x" * (MAX_LINE_BYTES + 1) + b"\n", "line_too_long"),
        # over the limit before its newline arrives: one error, the tail is skipped
        (b'{"type": "speak", "text": "' + b"y" * MAX_LINE_BYTES, "line_too_long"),
        (b'y" }\n', None),
        (b'{"type": "register", "name": "bad-ann"}\n', None),
        (b'{"type": "whisper", "to": "bad-ann"}\n', "missing_field"),
        (b'{"type": "speak", "text": 5}\n', "bad_field"),
        (b'{"type": "say", "room": "nowhere", "text": "hi"}\n', "not_in_room"),
        (b'{"type": "register", "name": "bad-ann"}\n', "already_registered"),
    ]
    for line, _ in bad_lines:
        await client.send_raw(line)
    assert (await client.request("ping"))["type"] == "pong"  # still served, in order
    assert [m["code"] for m in client.of_type("error")] == \
        [code for _, code in bad_lines if code is not None]
    assert [m["name"] for m in client.of_type("registered")] == ["bad-ann"]


async def test_a_client_that_stops_reading_does_not_delay_the_others(
        mesh: Mesh, connect: Connect) -> None:
    g1, g2, _ = mesh.gateways
    flood = await connect(g1, "sl-flood")
    fast = await connect(g2, "sl-fast")
    # The slow client registers and never reads again; a small receive buffer keeps the
    # kernel from absorbing what the gateway sends it.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(slow, (g2.host, g2.port))
        await loop.sock_sendall(slow, b'{"type": "register", "name": "sl-slow"}\n')
        await wait_for_mesh(mesh.gateways,
                            has_users({"sl-flood": 1, "sl-fast": 1, "sl-slow": 1}))

        await flood_past(flood, fast)
        await arrives(fast, type="presence", user="sl-slow", status="offline")
        counters = (await fast.request("stats"))["counters"]
        assert counters["slow_disconnects"] == 1
    finally:
        slow.close()


async def test_an_idle_client_is_pinged_then_dropped(tmp_path: Path, connect: Connect) -> None:
    gateway = GatewayProcess("gw-idle", cluster=f"chat-idle-{os.getpid()}",
                             log_path=tmp_path / "idle.log",
                             options=["--no-mdns", "--idle-timeout", "1.0"])
    try:
        await idle_one_dropped(gateway, connect)
    finally:
        gateway.kill()


def test_make_demo_converses_and_leaves_no_process() -> None:
    result = subprocess.run([sys.executable, "-m", "examples.chat_gateway.demo"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the mesh formed" in out
    assert re.search(r"bob@gw-2 +alice: hello everyone", out)
    assert len(re.findall(r"alice\S*@gw-\d +bob whispers: lunch at noon\?", out)) == 2
    assert re.search(r"bob@gw-2 +#ops carol: deploy at 5", out)
    assert re.search(r"alice@gw-1 +\* online: alice \(gw-1\+gw-3, 2 connections\)", out)
    assert re.search(r"carol@gw-3 +\* bob is offline", out)
    assert re.search(r"alice@gw-1 +\* carol is offline", out)
    done = re.search(r"done: gateways ([\d, ]+) stopped", out)
    assert done is not None, out
    for pid in (int(p) for p in done.group(1).split(", ")):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_gateways_with_a_secret_chat_and_one_without_is_left_out(
        tmp_path: Path, connect: Connect) -> None:
    cluster = f"chat-secret-{os.getpid()}"
    secret = "the chat test's cluster secret, long and random enough"
    secure = start_gateways(2, cluster=cluster, options=["--secret", secret], log_dir=tmp_path,
                            prefix="sec")
    try:
        outsider = GatewayProcess("plain", cluster=cluster, log_path=tmp_path / "plain.log",
                                  options=["--interface", "127.0.0.1"])
        try:
            await wait_for_mesh(secure)
            ann, ben = await connect(secure[0], "sec-ann"), await connect(secure[1], "sec-ben")
            eve = await connect(outsider, "sec-eve")
            await wait_for_mesh(secure, has_users({"sec-ann": 1, "sec-ben": 1}))
            assert (await ann.request("whisper", to="sec-ben", text="psst"))["type"] == "ok"
            await arrives(ben, type="whisper", text="psst")
            # The gateway without the secret finds the others over mDNS and gets nowhere.
            async def refused() -> bool:
                answer = await eve.request("stats")
                return bool(answer["counters"]["mesh_handshake_failures"] > 0)

            await async_wait_until(refused, DELIVERY_TIMEOUT_S, what="eve's gateway refused")
            assert has_users({"sec-eve": 1})(await eve.request("who"))
            assert (await eve.request("stats"))["counters"]["peers"] == 0
            answer = await eve.request("whisper", to="sec-ann", text="let me in")
            assert answer["type"] == "error", answer
            await asyncio.sleep(OBSERVE_S)  # nothing of eve's reaches ann
            assert messages(ann, text="let me in") == []
        finally:
            outsider.kill()
    finally:
        for gateway in secure:
            gateway.kill()


def test_a_gateway_serves_its_mesh_metrics(tmp_path: Path) -> None:
    gateway = GatewayProcess("gw-metrics", cluster=f"chat-metrics-{os.getpid()}",
                             log_path=tmp_path / "metrics.log",
                             options=["--no-mdns", "--metrics-port", "0"])
    try:
        line = gateway.next_line()
        assert line is not None and line.startswith("metrics at http://127.0.0.1:")
        url = line.removeprefix("metrics at ")
        with urllib.request.urlopen(url, timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read()
                                                                          .decode())}
        assert families["smartroute_peers"].type == "gauge"
        assert families["smartroute_peers"].samples[0].value == 0
        assert families["smartroute_sent"].type == "counter"
        gateway.stop()
        assert gateway.process.returncode == 0
    finally:
        gateway.kill()


def test_the_readme_shows_mesh_py_as_it_is() -> None:
    """The README walks through mesh.py by quoting it: every quote must still be there."""
    example = ROOT / "examples" / "chat_gateway"
    readme, mesh = (example / "README.md").read_text(), (example / "mesh.py").read_text()
    quotes = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(quotes) >= 3
    for quote in quotes:
        assert quote in mesh, quote
