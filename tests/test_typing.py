"""The public API is typed for its users: mypy flags a misuse in user code, although the
compiled build's functions take those arguments untyped at run time (``Checked[T]``, see
smartroute/checked.py) so that their own checks give the documented errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="needs the dev extra (mypy)")

USER_CODE = '''
from smartroute import Message, Node, ReceiveMode, message

async def main() -> None:
    node = Node("chat", secret="s3cret", discovery=["tcp://127.0.0.1:7000"], port=7000)
    async with node:
        def handle(msg: Message) -> None: ...
        sub = await node.subscribe("user:alice", handle, {"gateway": "g1"}, concurrency=2)
        await sub.update_meta({"status": "away"})
        await node.send_to(b"hi", ReceiveMode.EQ, "user:alice", sender="bob")
        await node.send_to(b"hi", ReceiveMode.ALL, ["user:alice", "user:bob"])
        node.send_nowait(b"hi", target="user:alice")
        await node.request("svc", b"ping", timeout=1.0)
        await node.wait_for("user:alice", 1)
        await node.drain(timeout=2.0)
        {misuse}
'''

MISUSES = {
    'Node(port="7000")': 'Argument "port" to "Node"',
    'Node(secret=b"s3cret")': 'Argument "secret" to "Node"',
    'Node(7)': 'Argument 1 to "Node"',
    'await node.subscribe(7, handle)': 'Argument 1 to "subscribe"',
    'await node.subscribe("x", handle, meta=["gateway"])': 'Argument "meta" to "subscribe"',
    'await node.send_to(b"hi", ReceiveMode.EQ, 7)': 'Argument 3 to "send_to"',
    'await node.send_to(b"hi", target="x", sender=5)': 'Argument "sender" to "send_to"',
    'await node.request("svc", b"ping", timeout="1")': 'Argument "timeout" to "request"',
    'await sub.update_meta("away")': 'Argument 1 to "update_meta"',
    'message(5)': 'Argument 1 to "message"',
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module: smartroute is analysed once, not per case."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(tmp_path: Path, cache: Path, misuse: str) -> str:
    source = tmp_path / "user.py"
    source.write_text(textwrap.dedent(USER_CODE).replace("{misuse}", misuse))
    out, err, _ = mypy_api.run(["--strict", "--cache-dir", str(cache), "--no-error-summary",
                                str(source)])
    return out + err


def test_correct_use_type_checks(tmp_path: Path, cache: Path) -> None:
    assert _mypy(tmp_path, cache, "pass") == ""


@pytest.mark.parametrize("misuse", list(MISUSES))
def test_a_misuse_is_flagged_by_mypy(tmp_path: Path, cache: Path, misuse: str) -> None:
    out = _mypy(tmp_path, cache, misuse)
    errors = [line for line in out.splitlines() if re.search(r": error: ", line)]
    assert len(errors) == 1 and MISUSES[misuse] in errors[0], out
