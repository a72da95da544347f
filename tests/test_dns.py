"""DNS discovery (``dns:NAME:PORT``, ``dns-srv:NAME``) with fake resolvers, and the advertised
address taken from the environment. No test here sends a DNS query: the resolvers are fakes
and the one node test resolves an IP literal (tests/test_lan_dns.py asks a real server)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from smartroute import Node, UsageError
from smartroute.discovery import (
    CombinedDiscovery,
    DnsDiscovery,
    DnsName,
    LocalNode,
    MdnsDiscovery,
    StaticDiscovery,
    parse_dns,
)
from smartroute.discovery.dns import MAX_ADDRESSES_PER_NAME, advertise_from_environment
from smartroute.testing import FAST_TIMINGS, async_wait_until, loopback_node

ME = LocalNode("unit", "00" * 16, 7001, "me")


class FakeDns:
    """A zone the test edits: A/AAAA per host, SRV per name; anything else does not resolve."""

    def __init__(self) -> None:
        self.hosts: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[str, int]]] = {}
        self.queries: list[str] = []
        self.broken: BaseException | None = None

    async def addresses(self, host: str, port: int) -> list[str]:
        self.queries.append(host)
        if self.broken is not None:
            raise self.broken
        if host not in self.hosts:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.hosts[host]

    async def services(self, name: str) -> list[tuple[str, int]]:
        self.queries.append(f"SRV {name}")
        if name not in self.srv:
            raise LookupError(f"{name}: NXDOMAIN")
        return self.srv[name]


def discovery(zone: FakeDns, *specs: str, interval_s: float = 5.0) -> DnsDiscovery:
    return DnsDiscovery([parse_dns(s) for s in specs], interval_s=interval_s,
                        addresses=zone.addresses, services=zone.services)


# --- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "parsed"), [
    ("dns:chat-hl.default.svc.cluster.local:7001",
     DnsName("chat-hl.default.svc.cluster.local", 7001)),
    ("dns:gateway:7001", DnsName("gateway", 7001)),
    ("dns:chat.example.com.:1", DnsName("chat.example.com", 1)),
    ("dns:10.0.0.5:65535", DnsName("10.0.0.5", 65535)),
    ("dns:[fd00::5]:7001", DnsName("fd00::5", 7001)),
    ("dns-srv:_smartroute._tcp.chat-hl.default.svc.cluster.local",
     DnsName("_smartroute._tcp.chat-hl.default.svc.cluster.local", None)),
])
def test_parse(spec: str, parsed: DnsName) -> None:
    assert parse_dns(spec) == parsed
    assert parse_dns(str(parsed)) == parsed


@pytest.mark.parametrize("spec", [
    "dns:", "dns::7001", "dns:chat", "dns:chat:", "dns:chat:0", "dns:chat:65536",
    "dns:chat:-1", "dns:chat:70o1", "dns:chat:7001/x", "dns:a..b:7001", "dns:-a.b:7001",
    "dns:a b:7001", "dns:tcp://chat:7001", f"dns:{'a' * 64}.b:7001",
    f"dns:{'a.' * 127}a:7001", "dns:[chat]:7001", "dns:fd00::5:7001",
    "dns:chat:\u00b2", "dns:chat:\uff17\uff10\uff10\uff11", "dns:chat..:7001",
    "dns-srv:", "dns-srv:_sr._tcp.chat:7001", "dns-srv:..", "dns-srv:_sr._tcp.chat..",
])
def test_bad_strings_are_usage_errors_at_node_time(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_dns(spec)
    with pytest.raises(UsageError):
        Node("unit", discovery=["mdns", spec])
    with pytest.raises(UsageError):
        Node("unit", discovery=spec)


def test_node_combines_dns_with_mdns_and_seeds() -> None:
    node = Node("unit", discovery=["mdns", "tcp://10.0.0.5:7001", "dns:chat:7001",
                                   "dns-srv:_sr._tcp.chat"], dns_interval_s=2.0)
    combined = node._discovery
    assert isinstance(combined, CombinedDiscovery)
    mdns, dns, static = combined.parts
    assert isinstance(mdns, MdnsDiscovery)
    assert isinstance(dns, DnsDiscovery)
    assert dns.names == [DnsName("chat", 7001), DnsName("_sr._tcp.chat", None)]
    assert dns.interval_s == 2.0
    assert isinstance(static, StaticDiscovery) and static.seeds == ["tcp://10.0.0.5:7001"]
    alone = Node("unit", discovery=["dns:chat:7001"])._discovery
    assert isinstance(alone, DnsDiscovery)
    assert isinstance(Node("unit", discovery="dns:chat:7001")._discovery, DnsDiscovery)
    assert Node("unit").timings.dns_interval_s == 5.0


# --- resolution ---------------------------------------------------------------------------------

async def test_every_address_of_a_name_is_hinted_at_its_port() -> None:
    zone = FakeDns()
    zone.hosts["chat"] = ["10.0.0.5", "10.0.0.6", "fd00::7", "10.0.0.5",
                          "0.0.0.0", "224.0.0.251", "fe80::1%eth0"]
    found = await discovery(zone, "dns:chat:7001").resolve()
    assert found == ("tcp://10.0.0.5:7001", "tcp://10.0.0.6:7001", "tcp://[fd00::7]:7001")


async def test_srv_records_give_hosts_and_ports() -> None:
    zone = FakeDns()
    zone.srv["_sr._tcp.chat"] = [("a.chat", 7001), ("b.chat", 7002), ("gone.chat", 7003)]
    zone.hosts.update({"a.chat": ["10.0.0.5"], "b.chat": ["10.0.0.5", "fd00::6"]})
    dns = discovery(zone, "dns-srv:_sr._tcp.chat", "dns:chat:7001")
    found = await dns.resolve()
    assert found == ("tcp://10.0.0.5:7001", "tcp://10.0.0.5:7002", "tcp://[fd00::6]:7002")
    assert dns.failures == 2  # gone.chat, and chat itself


async def test_a_name_that_does_not_resolve_logs_once_per_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="smartroute.discovery.dns")
    zone = FakeDns()
    dns = discovery(zone, "dns:chat:7001")

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING for r in caplog.records)

    for _ in range(5):
        assert await dns.resolve() == ()
    assert warnings() == 1 and dns.failures == 5
    assert "dns:chat:7001 does not resolve (gaierror" in caplog.text
    zone.hosts["chat"] = ["10.0.0.5"]
    assert await dns.resolve() == ("tcp://10.0.0.5:7001",)
    assert "dns:chat:7001 resolves again" in caplog.text
    del zone.hosts["chat"]
    for _ in range(3):
        await dns.resolve()
    assert warnings() == 2  # a new outage is worth a new line


async def test_too_many_addresses_are_cut_at_the_limit() -> None:
    zone = FakeDns()
    zone.hosts["big"] = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                         for i in range(MAX_ADDRESSES_PER_NAME + 100)]
    assert len(await discovery(zone, "dns:big:7001").resolve()) == MAX_ADDRESSES_PER_NAME


async def test_the_loop_re_resolves_survives_any_error_and_stops_at_close() -> None:
    zone = FakeDns()
    zone.broken = RuntimeError("resolver bug")
    hints: list[str] = []
    dns = discovery(zone, "dns:chat:7001", interval_s=0.01)
    await dns.start(hints.append, ME)
    await async_wait_until(lambda: dns.rounds >= 3, what="rounds despite errors")
    assert hints == []
    zone.broken = None
    zone.hosts["chat"] = ["10.0.0.5"]
    await async_wait_until(lambda: hints, what="hinted once it resolves")
    zone.hosts["chat"] = ["10.0.0.5", "10.0.0.6"]  # scale up
    await async_wait_until(lambda: "tcp://10.0.0.6:7001" in hints, what="the new record hinted")
    await dns.close()
    rounds = dns.rounds
    await asyncio.sleep(0.05)
    assert dns.rounds == rounds


async def test_two_nodes_meet_through_a_dns_string() -> None:
    """The whole path in one process; an IP literal resolves without any DNS query."""
    a = loopback_node(cluster="unit")
    await a.start()
    b = Node("unit", discovery=[f"dns:127.0.0.1:{a.port}"], host="127.0.0.1",
             dns_interval_s=0.1, **FAST_TIMINGS)
    try:
        await b.start()
        await async_wait_until(lambda: len(a.peers) == 1 and len(b.peers) == 1, what="meet")
    finally:
        await b.close()
        await a.close()


# --- advertise from the environment ---------------------------------------------------------------

def test_advertise_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTROUTE_ADVERTISE", raising=False)
    monkeypatch.delenv("POD_IP", raising=False)
    assert Node("unit").advertise is None
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    assert Node("unit").advertise == "10.1.2.3"                    # bound to 0.0.0.0
    assert Node("unit", host="::").advertise == "10.1.2.3"
    assert Node("unit", host="127.0.0.1").advertise is None         # not reachable there
    assert Node("unit", advertise="chat-0").advertise == "chat-0"   # an explicit one wins
    monkeypatch.setenv("SMARTROUTE_ADVERTISE", "tcp://chat-0.chat-hl:7001")
    assert Node("unit").advertise == "tcp://chat-0.chat-hl:7001"    # before POD_IP
    assert Node("unit", host="127.0.0.1").advertise == "tcp://chat-0.chat-hl:7001"
    monkeypatch.setenv("SMARTROUTE_ADVERTISE", "")                  # empty is unset
    assert Node("unit").advertise == "10.1.2.3"


@pytest.mark.parametrize(("variable", "value"), [
    ("SMARTROUTE_ADVERTISE", "tcp://chat-0"), ("SMARTROUTE_ADVERTISE", "chat-0/24"),
    ("POD_IP", "not an ip"), ("POD_IP", "0.0.0.0"),
])
def test_a_bad_advertise_variable_is_a_usage_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    with pytest.raises(UsageError, match=f"\\${variable}"):
        advertise_from_environment("0.0.0.0", {variable: value})
    monkeypatch.setenv(variable, value)
    with pytest.raises(UsageError, match=f"\\${variable}"):
        Node("unit")


async def test_a_started_node_advertises_the_environment_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTROUTE_ADVERTISE", "127.0.0.2")  # what a NAT would show
    node = loopback_node()
    await node.start()
    try:
        assert node.endpoint == f"tcp://127.0.0.2:{node.port}"
    finally:
        await node.close()


async def test_a_hint_that_raises_does_not_end_discovery() -> None:
    zone = FakeDns()
    zone.hosts["chat"] = ["10.0.0.5"]
    calls: list[str] = []

    def hint(endpoint: str) -> None:
        calls.append(endpoint)
        raise RuntimeError("node bug")

    dns = discovery(zone, "dns:chat:7001", interval_s=0.01)
    await dns.start(hint, ME)
    await async_wait_until(lambda: len(calls) >= 3, what="rounds go on")
    await dns.close()
