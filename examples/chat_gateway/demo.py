"""Three chat gateways on loopback and scripted users chatting across them.

    python -m examples.chat_gateway.demo          # or: make demo

The gateways find each other over mDNS bound to 127.0.0.1 (no addresses given to anyone).
alice, bob and carol connect to different gateways (alice twice: laptop and phone); they speak,
whisper, use a room and ask who is online; bob leaves, then a whole gateway is SIGKILLed and its
users go offline everywhere. Every step waits for what it caused, with a deadline; the demo ends
by itself and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import ChatClient, describe
from .processes import GatewayProcess, start_gateways

STEP_TIMEOUT_S = 10.0
"""No step waits longer than this (the mesh declares a killed gateway dead in ~0.1 s)."""


class User:
    """A scripted user on one gateway; prints what it receives, indented under its name."""

    def __init__(self, label: str, client: ChatClient) -> None:
        self.label = label
        self.client = client

    @classmethod
    async def connect(cls, name: str, device: str, gateway: GatewayProcess) -> User:
        label = f"{name}{device}@{gateway.name}"

        def show(msg: dict[str, Any]) -> None:
            if msg.get("type") not in ("ok", "pong", "ping", "stats", "registered"):
                for line in describe(msg).splitlines():
                    print(f"    {label:<20} {line}", flush=True)

        client = await ChatClient.connect(gateway.host, gateway.port, on_message=show)
        user = cls(label, client)
        answer = await client.request("register", name=name)
        assert answer["type"] == "registered", answer
        return user

    async def sees(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        await self.client.wait_for(predicate, STEP_TIMEOUT_S, what=f"{self.label}: {what}")


def presence(user: str, status: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the presence event of ``user`` going ``status``."""
    expected = {"type": "presence", "user": user, "status": status}
    return lambda msg: msg == expected


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


async def wait_for_mesh(gateways: list[GatewayProcess],
                        table: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Until every gateway has a link to every other one and, if given, its ``who`` answer
    satisfies ``table`` (what one gateway does relies on what it knows of the others)."""
    probes = [await ChatClient.connect(g.host, g.port) for g in gateways]
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            peers = [(await p.request("stats"))["counters"]["peers"] for p in probes]
            ready = all(count == len(gateways) - 1 for count in peers)
            if ready and table is not None:
                ready = all([table(await p.request("who")) for p in probes])
            if ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the mesh did not converge: peers per gateway {peers}")
            await asyncio.sleep(0.05)
    finally:
        for probe in probes:
            await probe.close()


async def converse(gw: list[GatewayProcess]) -> None:
    step("three users on three gateways (alice twice: laptop on gw-1, phone on gw-3)")
    alice = await User.connect("alice", "", gw[0])
    bob = await User.connect("bob", "", gw[1])
    carol = await User.connect("carol", "", gw[2])
    phone = await User.connect("alice", "(phone)", gw[2])
    for user, other in ((alice, "bob"), (alice, "carol"), (bob, "carol")):
        await user.sees(presence(other, "online"), f"{other} online")
    await wait_for_mesh(gw, lambda who: who["users"].get("alice", {}).get("connections") == 2
                        and len(who["users"]) == 3)

    step("alice speaks to everyone: each other connection once, none of alice's")
    await alice.client.request("speak", text="hello everyone")
    for user in (bob, carol):
        await user.sees(lambda m: m.get("type") == "speak", "alice's speak")

    step("bob whispers to alice: both of her connections, on gw-1 and gw-3")
    await bob.client.request("whisper", to="alice", text="lunch at noon?")
    for user in (alice, phone):
        await user.sees(lambda m: m.get("type") == "whisper", "bob's whisper")

    step("bob and carol join #ops (on gw-2 and gw-3); carol says something there")
    await bob.client.request("join", room="ops")
    await carol.client.request("join", room="ops")
    await bob.sees(lambda m: m.get("type") == "room" and m["user"] == "carol", "carol joined")
    await wait_for_mesh(gw, lambda who: who["rooms"].get("ops") == ["bob", "carol"])
    await carol.client.request("say", room="ops", text="deploy at 5")
    for user in (bob, carol):
        await user.sees(lambda m: m.get("type") == "say", "carol's say")

    step("alice asks who is online (answered from the replicated table)")
    await alice.client.request("who")

    step("bob hangs up: his presence goes offline on every gateway")
    await bob.client.close()
    for user in (alice, carol):
        await user.sees(presence("bob", "offline"), "bob offline")

    step(f"SIGKILL gateway {gw[2].name} (pid {gw[2].pid}): carol and alice's phone vanish")
    killed = time.monotonic()
    gw[2].kill()
    await alice.sees(presence("carol", "offline"), "carol offline")
    print(f"    (noticed {time.monotonic() - killed:.2f} s after the kill; alice stays online "
          "through her laptop)", flush=True)
    await alice.client.request("who")
    await alice.client.close()
    for user in (carol, phone):
        await user.client.close()


async def main(log_dir: Path) -> None:
    cluster = f"chat-demo-{os.getpid()}"  # never meets another demo running on this machine
    print(f"starting 3 gateways (cluster {cluster!r}, mDNS on 127.0.0.1 only)", flush=True)
    gateways = start_gateways(3, cluster=cluster, log_dir=log_dir, options=["--ws-port", "0"])
    try:
        for gateway in gateways:
            print(f"    {gateway.name}: pid {gateway.pid}, clients on {gateway.host}:"
                  f"{gateway.port}, mesh {gateway.mesh_endpoint}, browsers at "
                  f"{gateway.page_url}", flush=True)
        await wait_for_mesh(gateways)
        print("    the mesh formed: every gateway has a link to the two others", flush=True)
        await converse(gateways)
    finally:
        for gateway in gateways:
            gateway.stop()
    print(f"\ndone: gateways {', '.join(str(g.pid) for g in gateways)} stopped.", flush=True)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the gateways' logs in this directory")
    args = parser.parse_args(argv)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        asyncio.run(main(args.logs))
    else:
        with tempfile.TemporaryDirectory(prefix="chat-demo-") as logs:
            asyncio.run(main(Path(logs)))
    return 0


if __name__ == "__main__":
    sys.exit(run())
