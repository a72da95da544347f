"""A terminal client for the chat gateway, and ``ChatClient`` for scripts and tests.

    python examples/chat_gateway/client.py --host 127.0.0.1 --port 7070 --name alice

Type a line to speak to everyone; ``/help`` lists the other commands. Incoming messages show
up while you type. Needs only the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

READ_LIMIT_BYTES = 64 * 1024 * 1024
"""Longest line we accept from the gateway (a ``who`` of a big cluster is long)."""

ANSWER_TIMEOUT_S = 10.0
"""How long ``request`` waits for the gateway's answer."""

HELP = """commands:
  TEXT                  speak to everyone (on every gateway)
  /w USER TEXT          whisper to USER (all of their connections)
  /join ROOM            /leave ROOM
  /say ROOM TEXT        speak in a room you joined
  /who                  who is online, and the rooms
  /status away          or available: shown to everyone
  /ping                 /quit"""


class ChatClient:
    """One connection to a gateway: send requests, keep everything that arrives.

    ``received`` holds every line from the gateway, decoded, in arrival order. The gateway's
    idle pings are answered unless ``answer_pings`` is false.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 answer_pings: bool = True,
                 on_message: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.answer_pings = answer_pings
        self.on_message = on_message
        self.received: list[dict[str, Any]] = []
        self.closed_by_gateway = False
        self._arrived = asyncio.Event()
        self._ids = itertools.count(1)
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int, *, answer_pings: bool = True,
                      on_message: Callable[[dict[str, Any]], None] | None = None,
                      receive_buffer: int | None = None) -> ChatClient:
        """Connect; ``receive_buffer`` sets SO_RCVBUF (small: a client that reads slowly)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer is not None:  # before connect, or the window is already agreed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT_BYTES)
        return cls(reader, writer, answer_pings=answer_pings, on_message=on_message)

    async def _incoming(self) -> AsyncIterator[bytes | str]:
        """What the gateway sends, one JSON object at a time, until it hangs up."""
        while line := await self.reader.readline():
            yield line

    async def _read(self) -> None:
        try:
            async for line in self._incoming():
                try:
                    msg = json.loads(line)
                except ValueError:
                    text = line if isinstance(line, str) else line.decode(errors="replace")
                    msg = {"type": "unparsable", "line": text}
                self.received.append(msg)
                if self.answer_pings and msg.get("type") == "ping":
                    await self.send({"type": "pong"})
                if self.on_message is not None:
                    self.on_message(msg)
                self._arrived.set()
        except (ConnectionError, OSError):
            pass
        self.closed_by_gateway = True
        self._arrived.set()

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one request (no answer awaited)."""
        await self.send_raw(json.dumps(msg).encode() + b"\n")

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for testing what the gateway does with bad input)."""
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh ``id`` and return the answer carrying it (an
        ``error`` answer is returned, not raised)."""
        ref = next(self._ids)
        start = len(self.received)
        await self.send({"type": kind, "id": ref, **fields})
        return await self.wait_for(lambda m: m.get("id") == ref, ANSWER_TIMEOUT_S,
                                   what=f"the answer to {kind}", start=start)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = ANSWER_TIMEOUT_S, *, what: str = "a message",
                       start: int = 0) -> dict[str, Any]:
        """The first message (from index ``start`` of ``received``) matching ``predicate``,
        waiting up to ``timeout`` seconds; ``TimeoutError`` otherwise."""
        checked = start
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._arrived.clear()
                    for msg in self.received[checked:]:
                        if predicate(msg):
                            return msg
                    checked = max(checked, len(self.received))
                    if self.closed_by_gateway:
                        raise ConnectionError(f"the gateway hung up before {what}")
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"no {what} within {timeout} s") from None

    async def closed(self, timeout: float = ANSWER_TIMEOUT_S) -> None:
        """Wait until the gateway closes the connection."""
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Every received message of this ``type``."""
        return [msg for msg in self.received if msg.get("type") == kind]

    async def close(self) -> None:
        """Hang up (the gateway unsubscribes this connection)."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class WebSocketChatClient(ChatClient):
    """A ``ChatClient`` over a WebSocket (``server.py --ws-port``): one JSON object per
    message. Needs the ``websockets`` package (``smartroute[chat]``)."""

    def __init__(self, ws: ClientConnection, **options: Any) -> None:
        self.ws = ws
        super().__init__(None, None, **options)  # type: ignore[arg-type]

    @classmethod
    async def connect_ws(cls, url: str, *, receive_buffer: int | None = None,
                         max_queue: int = 16, **options: Any) -> WebSocketChatClient:
        """Connect to ``ws://HOST:PORT/``; ``receive_buffer`` sets SO_RCVBUF (small, with a
        small ``max_queue``: a client that reads slowly)."""
        from websockets.asyncio.client import connect  # noqa: PLC0415 (an optional extra)
        host, _, port = url.removeprefix("ws://").partition("/")[0].rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer is not None:  # before connect, or the window is already agreed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            ws = await connect(url, sock=sock, max_queue=max_queue, max_size=READ_LIMIT_BYTES,
                               compression=None)
        except BaseException:
            sock.close()
            raise
        return cls(ws, **options)

    async def _incoming(self) -> AsyncIterator[bytes | str]:
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                yield message

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: bytes | str) -> None:
        """Send one message as it is: ``str`` as a text message, ``bytes`` as binary."""
        await self.ws.send(data)

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def describe(msg: dict[str, Any]) -> str:
    """One readable line for a message from the gateway."""
    kind = msg.get("type")
    if kind == "speak":
        return f"{msg['from']}: {msg['text']}"
    if kind == "whisper":
        return f"{msg['from']} whispers: {msg['text']}"
    if kind == "say":
        return f"#{msg['room']} {msg['from']}: {msg['text']}"
    if kind in ("presence", "status"):
        return f"* {msg['user']} is {msg['status']}"
    if kind == "room":
        return f"* #{msg['room']}: {msg['user']} {msg['event']}"
    if kind == "joined":
        return f"* you joined #{msg['room']} with {', '.join(msg['members'])}"
    if kind == "left":
        return f"* you left #{msg['room']}"
    if kind == "registered":
        return f"* you are {msg['name']} on gateway {msg['gateway']}"
    if kind == "who":
        users = ", ".join(
            f"{name} ({'+'.join(info['gateways'])}"
            + (f", {info['connections']} connections)" if info["connections"] > 1 else ")")
            for name, info in msg["users"].items())
        rooms = "; ".join(f"#{room}: {', '.join(members)}"
                          for room, members in msg["rooms"].items())
        return f"* online: {users or 'nobody'}\n* rooms: {rooms or 'none'}"
    if kind == "error":
        return f"! {msg.get('code')}: {msg.get('message')}"
    if kind == "bye":
        return f"* the gateway closed the connection ({msg.get('reason')})"
    return json.dumps(msg)


def command_of(line: str) -> dict[str, Any] | None:
    """The request a typed line stands for; None for an empty line. Raises ``ValueError``
    with a usage hint for a command it does not know."""
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        return {"type": "speak", "text": line}
    word, _, rest = line[1:].partition(" ")
    arg, _, text = rest.strip().partition(" ")
    if word in ("w", "whisper") and arg and text:
        return {"type": "whisper", "to": arg, "text": text}
    if word in ("join", "leave") and arg:
        return {"type": word, "room": arg}
    if word == "say" and arg and text:
        return {"type": "say", "room": arg, "text": text}
    if word == "status" and arg:
        return {"type": "status", "status": arg}
    if word in ("who", "ping", "stats"):
        return {"type": word}
    raise ValueError(HELP)


async def interactive(host: str, port: int, name: str) -> int:
    """Register as ``name`` and chat on the terminal until /quit or end of input."""
    prompt = "> " if sys.stdin.isatty() else ""

    def show(msg: dict[str, Any]) -> None:
        if msg.get("type") in ("ping", "pong", "ok"):
            return
        # Clear the line being typed, print, then show the prompt again.
        sys.stdout.write(f"\r\x1b[K{describe(msg)}\n{prompt}" if prompt else
                         f"{describe(msg)}\n")
        sys.stdout.flush()

    try:
        client = await ChatClient.connect(host, port, on_message=show)
    except OSError as exc:
        print(f"cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        answer = await client.request("register", name=name)
        if answer["type"] == "error":
            return 1
        if prompt:
            print(HELP)
        lines = _stdin_lines()
        while not client.closed_by_gateway:
            if prompt:
                sys.stdout.write(prompt)
                sys.stdout.flush()
            line = await lines.get()
            if not line or line.strip() == "/quit":
                break
            try:
                request = command_of(line)
            except ValueError as exc:
                print(exc)
                continue
            if request is not None:
                await client.send(request)
        if not client.closed_by_gateway:
            # The gateway answers in order: once this is answered, so is everything we sent.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await client.request("ping")
    finally:
        await client.close()
    return 0


def _stdin_lines() -> asyncio.Queue[str]:
    """Lines typed on stdin ("" at the end), read by a daemon thread: a blocked read then
    never keeps the program from exiting (as an executor thread would, on Ctrl-C)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: we are exiting
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read, daemon=True, name="stdin").start()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat through a smartroute chat gateway.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7070)
    parser.add_argument("--name", required=True, help="your user name (1..32 characters)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(interactive(args.host, args.port, args.name))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
