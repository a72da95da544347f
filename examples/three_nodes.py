"""Three smartroute nodes on loopback: seeds, every receive mode, request/reply, a node dying.

    python examples/three_nodes.py          # or: make demo

Nodes A and B run in child processes; C runs here and drives the show. B knows only A's
address and C knows only B's: peer exchange does the rest. Everything stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from smartroute import Message, Node, PeerDown, ReceiveMode

CLUSTER = "demo"
STEP_TIMEOUT_S = 10.0
"""No step of the demo waits longer than this."""

# Who subscribes what: alice is online twice (phone on A, laptop on B).
MEMBERS = {
    "A": ["user:alice", "room:lobby"],
    "B": ["user:bob", "user:alice", "room:lobby"],
}


# --- a member node (runs in a child process) ----------------------------------------------------

async def member(name: str, seeds: list[str]) -> None:
    async with Node(CLUSTER, discovery=seeds, host="127.0.0.1", name=name) as node:
        def show(msg: Message) -> None:
            print(f"{msg.subscriber:<11} got {msg.body!r} ({msg.mode.name} from {msg.sender})",
                  flush=True)

        for sub_name in MEMBERS[name]:
            await node.subscribe(sub_name, show)

        async def clock(msg: Message) -> str:
            return f"it is {time.strftime('%H:%M:%S')} on {name}"

        await node.subscribe("svc:clock", clock)
        print(f"ready {node.endpoint}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF


# --- the driver (this process) ------------------------------------------------------------------

printed: queue.Queue[str] = queue.Queue()
"""Every line the members print, so each step can wait for what it caused."""


async def expect(count: int) -> None:
    """Wait until the members printed ``count`` more lines (the loop keeps running)."""
    for _ in range(count):
        await asyncio.to_thread(printed.get, timeout=STEP_TIMEOUT_S)


class Child:
    """A member node in its own process; its lines are shown prefixed with its name."""

    def __init__(self, name: str, seeds: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--member", name, *seeds],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"member {name} did not start")
        self.endpoint = ready[1]
        threading.Thread(target=self._show, daemon=True).start()

    def _show(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"      [{self.name}] {line.rstrip()}", flush=True)
            printed.put(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # EOF: the member closes its node (BYE) and exits
            try:
                self.process.wait(STEP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


async def drive() -> None:
    a = Child("A", [])
    try:
        b = Child("B", [a.endpoint])
        try:
            await show_the_mesh(b)
        finally:
            b.stop()
    finally:
        a.stop()
    print("\ndone: every process stopped.")


async def show_the_mesh(b: Child) -> None:
    seeds = [b.endpoint]
    async with Node(CLUSTER, discovery=seeds, host="127.0.0.1", name="C") as c:
        print(f"C {c.node_id[:8]} knows only B's address {seeds[0]}")
        await c.wait_for("user:alice", count=2, timeout=STEP_TIMEOUT_S)
        await c.wait_for("room:lobby", count=2, timeout=STEP_TIMEOUT_S)
        names = {peer.node_id: peer.name for peer in c.peers}
        print(f"C meets the whole mesh: {sorted(names.values())}; the table it replicated:")
        for sub in sorted(c.subscribers(), key=lambda s: (s.name, names[s.node_id])):
            print(f"    {sub.name:<11} on {names[sub.node_id]}")

        async def send(title: str, mode: ReceiveMode, target: str | list[str] | None,
                       printing: int) -> None:
            print(f"\n{title}")
            count = await c.send_to(title, mode, target, sender="user:carol")
            print(f"  send_to(..., {mode.name}, {target!r}) -> {count} subscriber(s)")
            await expect(printing)

        await send("EQ: alice on both of her devices", ReceiveMode.EQ, "user:alice", 2)
        await send("EQ with a list", ReceiveMode.EQ, ["user:bob", "room:lobby"], 3)
        await send("NOT_EQ: everyone but bob (and the clocks)", ReceiveMode.NOT_EQ,
                   ["user:bob", "svc:clock"], 4)
        await send("ALL (the clocks get it too, silently)", ReceiveMode.ALL, None, 5)
        await send("REGEX: every room", ReceiveMode.REGEX, r"^room:", 2)
        await send("ANY: one of alice's devices", ReceiveMode.ANY, "user:alice", 1)
        await send("ANY again: the other one", ReceiveMode.ANY, "user:alice", 1)

        print("\nrequest/reply, balanced over both clocks:")
        for _ in range(2):
            print("  ", await c.request("svc:clock", "what time is it?"))

        print(f"\nSIGKILL B (pid {b.process.pid}): no goodbye, the mesh must notice")
        events = c.events()
        killed = time.monotonic()
        os.kill(b.process.pid, signal.SIGKILL)
        async with asyncio.timeout(STEP_TIMEOUT_S):
            async for event in events:
                if isinstance(event, PeerDown):
                    print(f"  C: peer {event.peer.name} is down ({event.reason}) after "
                          f"{time.monotonic() - killed:.2f} s")
                    break
        print(f"  alice is now online {len(c.lookup('user:alice'))} time(s)")
        await send("EQ to alice after B died", ReceiveMode.EQ, "user:alice", 1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        name, *seeds = sys.argv[2:]
        asyncio.run(member(name, seeds))
    else:
        asyncio.run(drive())


if __name__ == "__main__":
    main()
