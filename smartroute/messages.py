"""Message bodies on the wire: the ``@message`` type registry, the body codec and ``Message``.

A body is any msgpack value (str, bytes, int, float, bool, None, list, dict) or an instance of a
dataclass registered with ``@message("Name")``, at any depth. Registered instances travel as a
msgpack extension holding the stable name and the fields, so the receiver rebuilds the class by
name, not by Python path. A name the receiver does not know arrives as a plain dict of fields,
with ``Message.type`` still telling the name: never a crash.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgpack

from .checked import Checked
from .errors import RemoteProtocolError, UsageError
from .logs import QuietLog
from .modes import ReceiveMode
from .wire import packer

_log = logging.getLogger("smartroute.messages")
_quiet = QuietLog(_log)

EXT_RECORD = 1
"""msgpack extension code of a registered dataclass: payload is ``[name, {field: value}]``."""

MAX_TYPE_NAME_LENGTH = 128
"""Longest registered type name, in characters."""

_T = TypeVar("_T")

_classes: dict[str, type] = {}
_names: dict[type, str] = {}
_fields: dict[type, tuple[str, ...]] = {}


def message(name: Checked[str]) -> Callable[[type[_T]], type[_T]]:
    """Register a dataclass as a wire type under the stable ``name`` (a str of 1..128
    characters, else ``UsageError``); returns the class."""
    if not isinstance(name, str) or not name or len(name) > MAX_TYPE_NAME_LENGTH:
        raise UsageError(
            f"a message type name is 1..{MAX_TYPE_NAME_LENGTH} characters, not {name!r}")

    def register(cls: type[_T]) -> type[_T]:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"@message({name!r}) applies to a dataclass, not {cls!r}")
        known = _classes.get(name)
        # Re-registering the same class (a module reload) is fine; another class is not.
        if known is not None and _path(known) != _path(cls):
            raise UsageError(f"message type name {name!r} is already used by {_path(known)}")
        _classes[name] = cls
        _names[cls] = name
        _fields[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return cls

    return register


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_meta(meta: object, max_bytes: int) -> dict[str, Any]:
    """A subscriber's meta: None (empty) or a dict with str keys of plain msgpack values that
    encodes to at most ``max_bytes``; returns a copy."""
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise TypeError("meta must be a dict with str keys")
    try:
        size = len(msgpack.packb(meta))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"meta must hold plain msgpack values: {exc}") from exc
    if size > max_bytes:
        raise UsageError(f"meta encodes to {size} bytes, over {max_bytes}")
    return dict(meta)


def type_name_of(body: object) -> str:
    """The wire type name of ``body``: its registered name, else its Python type name."""
    name = _names.get(type(body))
    return name if name is not None else type(body).__name__


MAX_BODY_DEPTH = 32
"""Deepest nesting of lists, maps and registered records in a body, sent or received."""

_SCALARS = (str, bytes, int, float, type(None))


def _prepare(obj: object, depth: int) -> object:
    """Check ``obj`` can travel and turn registered dataclasses into record extensions."""
    if isinstance(obj, _SCALARS):
        return obj
    if depth >= MAX_BODY_DEPTH:
        raise TypeError(f"cannot send a body nested deeper than {MAX_BODY_DEPTH} levels")
    if isinstance(obj, list | tuple):
        return [_prepare(item, depth + 1) for item in obj]
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            # Other keys (ints...) would be refused by the receiver: int keys with crafted
            # hash collisions make dict inserts quadratic, so decoders only take str/bytes.
            if not isinstance(key, str | bytes):
                raise TypeError(f"cannot send a map with a {type(key).__name__} key: "
                                "keys are str or bytes")
            out[key] = _prepare(value, depth + 1)
        return out
    name = _names.get(type(obj))
    if name is None:
        raise TypeError(
            f"cannot send a {type(obj).__qualname__}: bodies are msgpack values or dataclasses "
            f"registered with @message(...)"
        )
    fields = {field: _prepare(getattr(obj, field), depth + 1) for field in _fields[type(obj)]}
    return msgpack.ExtType(EXT_RECORD, packer()([name, fields]))


def encode_body(body: object) -> bytes:
    """Encode a body once; raises ``TypeError`` for what cannot travel."""
    try:
        # A scalar needs no preparing: skip the call (most bodies are one str or bytes).
        return packer()(body if isinstance(body, _SCALARS) else _prepare(body, 0))
    except (ValueError, OverflowError) as exc:
        raise TypeError(f"cannot encode message body: {exc}") from exc


_MAX_BIN_BYTES = 2**32 - 1
"""Largest str or bytes msgpack can hold."""


def surely_encodes(body: object) -> bool:
    """True for a body ``encode_body`` accepts without having to try (bytes, ASCII str, bool,
    float, None, a 64-bit int): a send that reaches no peer then skips encoding it."""
    if type(body) is bytes:
        return len(body) <= _MAX_BIN_BYTES
    if type(body) is str:
        return body.isascii() and len(body) <= _MAX_BIN_BYTES  # isascii() is O(1)
    if type(body) is int:
        return -(2**63) <= body < 2**64
    return body is None or type(body) is float or type(body) is bool


class _RecordHook:
    """msgpack ``ext_hook`` that rebuilds registered records, counting how deep it is."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __call__(self, code: int, data: bytes) -> object:
        if code != EXT_RECORD:
            raise RemoteProtocolError(f"unknown msgpack extension {code}")
        if self.depth >= MAX_BODY_DEPTH:
            # Each level is a nested unpackb call on the C stack: bound it (a crafted 3 KB
            # body of nested records would otherwise overflow the stack).
            raise RemoteProtocolError(f"records nested deeper than {MAX_BODY_DEPTH} levels")
        try:
            name, fields = msgpack.unpackb(data, ext_hook=_RecordHook(self.depth + 1))
        except (ValueError, TypeError) as exc:
            raise RemoteProtocolError("malformed record extension") from exc
        if not isinstance(name, str) or not isinstance(fields, dict):
            raise RemoteProtocolError("malformed record extension")
        cls = _classes.get(name)
        if cls is None:
            return dict(fields)
        try:
            return cls(**fields)
        except Exception as exc:
            # Other fields than ours (a version skew), or our __post_init__ refuses the values:
            # the data still arrives, as the plain fields, and the user code decides.
            _quiet.warning(f"skew:{name}", "message type %r does not fit the local class: %s: %s",
                           name, type(exc).__name__, exc)
            return dict(fields)


_TOP_HOOK = _RecordHook(0)


def decode_body(data: bytes) -> object:
    """Decode a body from the network; raises ``RemoteProtocolError`` for anything malformed."""
    try:
        return msgpack.unpackb(data, ext_hook=_TOP_HOOK)
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        # msgpack raises ValueError subclasses (ExtraData, FormatError, StackError) and
        # TypeError (unhashable or non-str map keys) on garbage: all one thing to us.
        raise RemoteProtocolError(f"malformed message body: {type(exc).__name__}") from exc


class Message:
    """One delivery of a ``send_to`` to one subscriber."""

    __slots__ = ("_replier", "_seq", "body", "mode", "node_id", "sender", "subscriber", "target",
                 "type")

    def __init__(
        self,
        seq: int,
        body: object,
        type: str,
        mode: ReceiveMode,
        target: str | list[str] | None,
        sender: str | None,
        node_id: str,
        subscriber: str,
        replier: Callable[[object], Awaitable[None] | None] | None = None,
    ) -> None:
        # Positional on purpose: one is built per delivery, on the hot path.
        self._seq = seq
        self.body = body
        """The body, rebuilt as the registered class where the type is known here."""
        self.type = type
        """The wire type name of the body (registered name, or Python type name for plain)."""
        self.mode = mode
        self.target = target
        self.sender = sender
        """The ``sender=`` name given to ``send_to``, if any."""
        self.node_id = node_id
        """Hex id of the node the message came from."""
        self.subscriber = subscriber
        """Name of the local subscription this delivery is for."""
        self._replier = replier

    @property
    def id(self) -> str:
        """Unique per origin node: ``"<node_id>-<sequence>"``."""
        return f"{self.node_id}-{self._seq}"

    @property
    def is_request(self) -> bool:
        """True when the sender waits for a reply (``Node.request``)."""
        return self._replier is not None

    async def reply(self, body: object) -> None:
        """Answer a request with ``body``; only the first reply of a message counts."""
        replier = self._replier
        if replier is None:
            raise UsageError("this message is not a request, or it was already answered")
        self._replier = None
        # The node's repliers answer at once (no task per reply); one that returns an
        # awaitable (a Message built by hand, in a test) is awaited.
        pending = replier(body)
        if pending is not None:
            await pending

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, type={self.type!r}, mode={self.mode.name}, "
            f"target={self.target!r}, sender={self.sender!r}, subscriber={self.subscriber!r})"
        )
