"""messages.py: the @message registry, the body codec and Message."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartroute import Message, ReceiveMode, message
from smartroute.errors import RemoteProtocolError, UsageError
from smartroute.messages import (
    EXT_RECORD,
    MAX_BODY_DEPTH,
    decode_body,
    encode_body,
    surely_encodes,
    type_name_of,
)


@message("test_messages.Speak")
@dataclasses.dataclass
class Speak:
    user: str
    text: str


@message("test_messages.Room")
@dataclasses.dataclass
class Room:
    name: str
    members: list[Speak]
    last: Speak | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def ext(name: Any, fields: Any, code: int = EXT_RECORD) -> bytes:
    """A body holding one record extension, crafted by hand."""
    data: bytes = msgpack.packb(msgpack.ExtType(code, msgpack.packb([name, fields])))
    return data


# --- registration -------------------------------------------------------------------------------

def test_message_registers_the_class_under_its_name_and_returns_it() -> None:
    assert Speak.__name__ == "Speak"  # the decorator hands back the class itself
    assert type_name_of(Speak("bob", "hi")) == "test_messages.Speak"
    assert type_name_of("hi") == "str"
    assert type_name_of(None) == "NoneType"


def test_message_applies_to_dataclasses_only() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match="dataclass"):
        message("test_messages.Plain")(Plain)
    with pytest.raises(TypeError, match="dataclass"):
        message("test_messages.Instance")(Speak("a", "b"))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "x" * 129, 5, None])
def test_message_names_are_1_to_128_characters(name: Any) -> None:
    with pytest.raises(UsageError):
        message(name)


def test_a_128_character_name_is_fine() -> None:
    @message("n" * 128)
    @dataclasses.dataclass
    class Long:
        x: int

    assert decode_body(encode_body(Long(1))) == Long(1)


def test_a_name_taken_by_another_class_is_a_usage_error() -> None:
    @dataclasses.dataclass
    class Other:
        user: str
        text: str

    with pytest.raises(UsageError, match="already used"):
        message("test_messages.Speak")(Other)
    # The first registration still holds.
    assert decode_body(encode_body(Speak("a", "b"))) == Speak("a", "b")
    assert type_name_of(Other("a", "b")) == "Other"


def test_registering_the_same_class_again_is_harmless() -> None:
    assert message("test_messages.Speak")(Speak) is Speak
    assert decode_body(encode_body(Speak("a", "b"))) == Speak("a", "b")


def _twin(module: str) -> type:
    cls = dataclasses.make_dataclass("Twin", [("x", int)])
    cls.__module__ = module
    return cls


def test_a_same_named_class_from_another_module_is_a_different_class() -> None:
    first, second = _twin("app.one"), _twin("app.two")
    message("test_messages.Twin")(first)
    with pytest.raises(UsageError):
        message("test_messages.Twin")(second)


# --- round trips --------------------------------------------------------------------------------

PLAIN = ["hi", "", "é✓", b"\x00\xff", 0, -1, 2**64 - 1, -(2**63), 1.5, True, False, None, [],
         [1, "a", None, [2.5]], {}, {"a": 1, "b": [1, 2], "c": {"d": None}}, {"k": b"v"}]


@pytest.mark.parametrize("body", PLAIN, ids=repr)
def test_plain_values_round_trip(body: object) -> None:
    decoded = decode_body(encode_body(body))
    assert decoded == body
    assert type(decoded) is type(body)


def test_tuples_arrive_as_lists() -> None:
    assert decode_body(encode_body((1, "a"))) == [1, "a"]


def test_maps_with_non_str_keys_are_refused_at_the_sender() -> None:
    # The receiver only takes str/bytes keys (int keys allow hash-collision floods), so the
    # sender must refuse them rather than send what would be dropped.
    with pytest.raises(TypeError, match="keys are str or bytes"):
        encode_body({1: "one", 2: "two"})
    with pytest.raises(TypeError, match="keys are str or bytes"):
        encode_body([{"ok": {(1, 2): "tuple key"}}])


def test_bodies_nested_too_deep_are_refused_at_the_sender() -> None:
    body: object = "leaf"
    for _ in range(MAX_BODY_DEPTH + 1):
        body = [body]
    with pytest.raises(TypeError, match="nested deeper"):
        encode_body(body)


def test_a_registered_dataclass_round_trips_as_its_class() -> None:
    decoded = decode_body(encode_body(Speak("bob", "hi")))
    assert type(decoded) is Speak
    assert decoded == Speak("bob", "hi")


def test_nested_registered_dataclasses_round_trip() -> None:
    room = Room("room:7", [Speak("a", "1"), Speak("b", "2")], Speak("b", "2"),
                {"topic": "x", "pinned": [Speak("c", "3")]})
    decoded = decode_body(encode_body(room))
    assert decoded == room
    assert isinstance(decoded, Room)
    assert type(decoded.members[0]) is Speak
    assert type(decoded.meta["pinned"][0]) is Speak


def test_registered_dataclasses_inside_plain_values_round_trip() -> None:
    body = {"batch": [Speak("a", "1"), None, Speak("b", "2")]}
    assert decode_body(encode_body(body)) == body


def test_an_unknown_type_name_decodes_to_a_dict_of_its_fields() -> None:
    assert decode_body(ext("elsewhere.Unknown", {"user": "bob", "n": 3})) == {"user": "bob",
                                                                               "n": 3}


def test_an_unknown_type_built_from_a_registered_class_decodes_to_a_dict() -> None:
    # What a receiver that never registered "test_messages.Speak" would see.
    encoded = encode_body(Speak("bob", "hi"))
    payload = msgpack.unpackb(encoded, ext_hook=lambda code, data: msgpack.unpackb(data))
    assert payload == ["test_messages.Speak", {"user": "bob", "text": "hi"}]
    assert decode_body(ext("test_messages.Speak-v2", payload[1])) == {"user": "bob",
                                                                       "text": "hi"}


def test_a_known_name_with_other_fields_decodes_to_a_dict() -> None:
    # Version skew: the sender's Speak has a field ours lacks.
    fields = {"user": "bob", "text": "hi", "mood": "happy"}
    assert decode_body(ext("test_messages.Speak", fields)) == fields


# --- what cannot travel -------------------------------------------------------------------------

@dataclasses.dataclass
class Unregistered:
    x: int


@pytest.mark.parametrize("body", [object(), {1, 2}, Unregistered(1), 2**64, -(2**63) - 1,
                                  [1, object()], {"k": Unregistered(2)},
                                  Speak("bob", object())],  # type: ignore[arg-type]
                         ids=repr)
def test_unencodable_bodies_raise_type_error(body: object) -> None:
    with pytest.raises(TypeError):
        encode_body(body)


@given(st.one_of(st.binary(), st.text(), st.integers(), st.floats(), st.booleans(), st.none()))
def test_what_surely_encodes_does_encode(body: object) -> None:
    # A send with only local subscribers skips encoding such a body: it must never fail.
    if surely_encodes(body):
        assert decode_body(encode_body(body)) == body or body != body  # NaN
    else:
        assert type(body) in (str, int)  # non-ASCII text, or an int outside 64 bits


@pytest.mark.parametrize("body", ["\udc80", "é", 2**64, -(2**63) - 1, [1], {"a": 1}, (1,)],
                         ids=repr)
def test_only_scalars_that_cannot_fail_skip_the_check(body: object) -> None:
    assert not surely_encodes(body)


# --- garbage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92\x01", b"\xa1a\x00",            # not one msgpack value
    msgpack.packb({(1,): 2}, strict_types=False)[:-1],  # truncated
    b"\x81\x90\x01",                                    # a map keyed by an array
    msgpack.packb(msgpack.ExtType(7, b"")),             # unknown extension code
    msgpack.packb(msgpack.ExtType(EXT_RECORD, b"\xc1")),
    msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(5))),
    msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(["only-a-name"]))),
    ext(1, {}), ext("name", [1, 2]), ext("name", {}) + b"\x00",
], ids=repr)
def test_malformed_bodies_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(data)


NESTED_EXTENSIONS = """
import msgpack
from smartroute.errors import RemoteProtocolError
from smartroute.messages import EXT_RECORD, decode_body
payload = msgpack.packb(["n", {}])
for _ in range(1000):
    payload = msgpack.packb(["n", {"x": msgpack.ExtType(EXT_RECORD, payload)}])
try:
    decode_body(msgpack.packb(msgpack.ExtType(EXT_RECORD, payload)))
    print("decoded")
except RemoteProtocolError:
    print("RemoteProtocolError")
"""


def test_deeply_nested_extensions_do_not_crash_the_process() -> None:
    # In a child process: the failure mode is a segmentation fault of the whole interpreter.
    result = subprocess.run([sys.executable, "-c", NESTED_EXTENSIONS], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"decode_body killed the process ({result.returncode})"
    assert result.stdout.strip() in ("decoded", "RemoteProtocolError")


def test_deeply_nested_arrays_raise_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(b"\x91" * 100_000 + b"\xc0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(data)


VALID = encode_body({"room": Room("r", [Speak("a", "b")], None, {"n": [1, 2.5, None, b"x"]})})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(0, len(VALID)))
def test_mutated_bodies_decode_or_raise_remote_protocol_error(
        edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    for candidate in (bytes(data), bytes(data[:cut])):
        with contextlib.suppress(RemoteProtocolError):
            decode_body(candidate)


# --- Message ------------------------------------------------------------------------------------

def make_message(replier: Any = None) -> Message:
    return Message(1, "ping", "str", ReceiveMode.ANY, "svc:echo", None, "ab", "svc:echo",
                   replier)


def test_a_message_id_is_the_origin_node_and_its_sequence() -> None:
    assert make_message().id == "ab-1"


async def test_a_request_is_answered_once() -> None:
    answers: list[object] = []

    async def replier(body: object) -> None:
        answers.append(body)

    msg = make_message(replier)
    assert msg.is_request
    await msg.reply("pong")
    assert answers == ["pong"]
    assert not msg.is_request
    with pytest.raises(UsageError):
        await msg.reply("again")
    assert answers == ["pong"]


async def test_a_plain_function_replier_is_answered_once_too() -> None:
    answers: list[object] = []
    msg = make_message(answers.append)  # the node's repliers answer at once, without a task
    await msg.reply("pong")
    assert answers == ["pong"]
    with pytest.raises(UsageError):
        await msg.reply("again")
    assert answers == ["pong"]


async def test_replying_to_a_plain_message_is_a_usage_error() -> None:
    msg = make_message()
    assert not msg.is_request
    with pytest.raises(UsageError):
        await msg.reply("pong")
    assert "svc:echo" in repr(msg) and "ANY" in repr(msg)


@message("test_messages.Validated")
@dataclasses.dataclass
class Validated:
    amount: int

    def __post_init__(self) -> None:
        if self.amount < 0:
            raise LookupError("negative amount")  # any exception, not only TypeError


def test_a_record_our_class_refuses_arrives_as_its_fields() -> None:
    # The sender's class accepted it (an older version); ours raises in __post_init__.
    data = msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(
        ["test_messages.Validated", {"amount": -5}])))
    assert decode_body(data) == {"amount": -5}
