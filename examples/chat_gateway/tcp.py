"""The TCP side of the gateway: newline-delimited JSON, and a listener that accepts a
reconnect storm a few connections per loop turn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from .limits import MAX_LINE_BYTES, TOO_LONG, Client, Hub

ACCEPT_BACKLOG = 1024
"""Pending TCP connections the kernel queues for us (a reconnect storm after a restart)."""

ACCEPTS_PER_TURN = 64
"""Connections accepted per event-loop turn (asyncio accepts up to its ``backlog`` per turn):
in a storm, accepting 1,024 at once took up to ~1 s of one turn here, while the mesh's
heartbeats waited."""


class LineClient(Client):
    """A TCP client: one JSON object per line, both ways."""

    __slots__ = ("buffer", "discarding")

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.buffer = bytearray()
        self.discarding = False
        """True while skipping the rest of an over-long line."""

    def data_received(self, data: bytes) -> None:
        self.heard()
        buffer = self.buffer
        buffer += data
        if b"\n" in data:
            *lines, rest = buffer.split(b"\n")
            self.buffer = buffer = rest
            for line in lines:
                if self.discarding:  # the tail of an over-long line
                    self.discarding = False
                elif len(line) > MAX_LINE_BYTES:
                    self.take(TOO_LONG)
                elif line.strip():
                    self.take(bytes(line))
        if len(buffer) > MAX_LINE_BYTES:
            buffer.clear()
            if not self.discarding:
                self.discarding = True
                self.take(TOO_LONG)

    def put(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line)


async def listen(factory: Callable[[], asyncio.Protocol], host: str,
                 port: int) -> tuple[asyncio.Server, tuple[str, int]]:
    """Listen with a deep kernel queue but few accepts per loop turn; (server, bound address)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        server = await asyncio.get_running_loop().create_server(
            factory, sock=sock, backlog=ACCEPTS_PER_TURN)
        # create_server listened with ACCEPTS_PER_TURN, which asyncio also uses as the
        # accepts per turn; listening again only deepens the kernel's queue.
        sock.listen(ACCEPT_BACKLOG)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    return server, (bound_host, bound_port)
