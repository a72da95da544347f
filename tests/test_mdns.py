"""MdnsDiscovery in one process: what it announces, what it ignores, what it shares."""

from __future__ import annotations

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf

from smartroute import Node
from smartroute.discovery import LocalNode, MdnsDiscovery
from smartroute.discovery.mdns import _Shared, _text_properties
from smartroute.testing import FAST_TIMINGS, async_wait_until
from smartroute.wire import PROTOCOL_VERSION

LOOPBACK = ["127.0.0.1"]


def make(**kwargs: object) -> Node:
    return Node("mdns-unit", discovery="mdns", interfaces=LOOPBACK, host="127.0.0.1",
                **FAST_TIMINGS, **kwargs)  # type: ignore[arg-type]


async def test_nodes_of_one_process_share_one_zeroconf_and_meet() -> None:
    a, b = make(), make()
    await a.start()
    await b.start()
    try:
        shared = [users for key, (_, users) in _Shared.instances.items()
                  if key[1] == ("127.0.0.1",)]
        assert shared == [2]
        await async_wait_until(lambda: len(a.peers) == 1 and len(b.peers) == 1, timeout=10,
                               what="the two nodes meet")
    finally:
        await b.close()
        await a.close()
    assert not [key for key in _Shared.instances if key[1] == ("127.0.0.1",)]


async def test_a_given_zeroconf_is_used_and_left_open() -> None:
    azc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    try:
        discovery = MdnsDiscovery(zeroconf=azc)
        node = Node("mdns-unit", discovery=discovery, host="127.0.0.1", **FAST_TIMINGS)
        await node.start()
        await node.close()
        assert not azc.zeroconf.done  # still usable by its owner
    finally:
        await azc.async_close()


def test_interfaces_are_ipv4_addresses() -> None:
    with pytest.raises(ValueError):
        MdnsDiscovery(interfaces=["eth0"])


@pytest.mark.parametrize(("properties", "expected"), [
    ({b"c": b"chat", b"v": b"1", b"p": b"7001"}, {"c": "chat", "v": "1", "p": "7001"}),
    ({b"c": b"\xff\xfe"}, None),  # not UTF-8: the whole record is ignored
    ({b"c": b"x" * 300}, None),  # longer than a TXT string can be
    ({b"flag": None, b"c": b"chat"}, {"c": "chat"}),  # valueless keys are skipped
    ("not a dict", None),
])
def test_txt_records_are_read_defensively(properties: object, expected: object) -> None:
    assert _text_properties(properties) == expected


async def test_only_our_cluster_and_version_become_hints() -> None:
    discovery = MdnsDiscovery(interfaces=LOOPBACK)
    me = LocalNode("chat", "ab" * 16, 7001, "me")

    class Info:
        def __init__(self, properties: dict[bytes, bytes], port: int | None = 7002,
                     addresses: tuple[str, ...] = ("198.18.0.2",)) -> None:
            self.properties, self.port, self._addresses = properties, port, addresses

        def parsed_addresses(self, version: IPVersion) -> list[str]:
            return list(self._addresses)

    ours = {b"c": b"chat", b"v": str(PROTOCOL_VERSION).encode()}
    assert discovery._endpoints(Info(ours), me) == ["tcp://198.18.0.2:7002"]  # type: ignore[arg-type]
    for info in (Info({**ours, b"c": b"other"}), Info({**ours, b"v": b"99"}),
                 Info(ours, port=None), Info(ours, addresses=("224.0.0.251", "0.0.0.0"))):
        assert discovery._endpoints(info, me) is None  # type: ignore[arg-type]
