"""The WebSocket side of the gateway (``--ws-port``): the same JSON requests and pushes as
TCP, one per text message, and the chat page (``chat.html``) at ``/`` on the same port.

websockets' Sans-I/O ``ServerProtocol`` runs inside the same kind of ``asyncio.Protocol`` as
a TCP client (limits.py's ``Client``), not in websockets' asyncio server: the mesh hands the
gateway messages synchronously, and one connection's limits (backpressure, the slow-client
rule on the transport's buffer, idleness) must be the TCP ones, not a second copy.

A browser sends every page's cookies and connects from any page, so a WebSocket that trusted
any page would let a hostile site chat in its visitors' names: a handshake whose ``Origin`` is
neither the gateway's own page (the request's ``Host``) nor one given with ``--ws-origin`` is
refused (403). Clients that are not browsers send no ``Origin`` and are let in.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from .limits import MAX_LINE_BYTES, TOO_LONG, Client, Hub, log

PAGE = (Path(__file__).resolve().parent / "chat.html").read_bytes()
"""The browser client, served at ``/``."""

MAX_MESSAGE_BYTES = 4 * MAX_LINE_BYTES
"""A WebSocket message is read whole before it is handled (unlike a TCP line, skipped as it
comes): up to this size one over ``MAX_LINE_BYTES`` is answered ``line_too_long`` as on TCP;
a larger one closes the connection (1009, message too big)."""

DATA = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


class WebSocketClient(Client):
    """A browser (or any WebSocket client): one JSON object per message, both ways."""

    __slots__ = ("origins", "parts", "ws")

    def __init__(self, hub: Hub, origins: Collection[str] = ()) -> None:
        super().__init__(hub)
        self.ws = ServerProtocol(max_size=MAX_MESSAGE_BYTES)
        self.origins = origins
        """Pages besides the gateway's own that may open a WebSocket (``--ws-origin``)."""
        self.parts: list[bytes] = []
        """The frames of a fragmented message so far."""

    def data_received(self, data: bytes) -> None:
        self.heard()
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(self._respond(event))
            elif isinstance(event, Frame) and event.opcode in DATA:
                self.parts.append(bytes(event.data))
                if event.fin:
                    message = b"".join(self.parts)
                    self.parts = []
                    if len(message) > MAX_LINE_BYTES:
                        self.take(TOO_LONG)
                    elif message.strip():
                        self.take(message)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def _respond(self, request: Request) -> Response:
        """The handshake's answer: a WebSocket, the page at ``/``, or 404."""
        if "websocket" in request.headers.get("Upgrade", "").lower():
            origin = request.headers.get("Origin")
            if origin is None or origin in self.origins or _same_origin(origin, request):
                return self.ws.accept(request)
            log.warning("refused a WebSocket opened by a page of %r (not this gateway's own; "
                        "--ws-origin allows more)", origin[:200])
            return self.ws.reject(403, f"Forbidden: a page of {origin[:200]} may not open "
                                       "this WebSocket\n")
        if request.path.partition("?")[0] in ("/", "/index.html"):
            headers = Headers([("Content-Type", "text/html; charset=utf-8"),
                               ("Content-Length", str(len(PAGE))),
                               ("Cache-Control", "no-store"), ("Connection", "close")])
            return Response(200, "OK", headers, PAGE)
        return self.ws.reject(404, "Not found: the chat page is at /\n")

    def _flush(self) -> None:
        """Write what the protocol has to send; its end-of-stream closes the connection."""
        transport = self.transport
        assert transport is not None
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            else:  # after an HTTP answer, a close handshake, or a protocol error
                self.closing = True
                transport.close()

    def ready(self) -> bool:
        return self.ws.state is State.OPEN

    def put(self, line: bytes) -> None:
        self.ws.send_text(line[:-1])  # the message is the line, without its newline
        self._flush()

    def close(self) -> None:
        if self.ready() and not self.closing:
            self.ws.send_close(CloseCode.GOING_AWAY)
            self._flush()
        super().close()


def _same_origin(origin: str, request: Request) -> bool:
    """Whether ``origin`` is the page this gateway served: http(s) on the host and port the
    browser asked for."""
    parts = urlsplit(origin)
    return (parts.scheme in ("http", "https")
            and parts.netloc.lower() == request.headers.get("Host", "").lower())
