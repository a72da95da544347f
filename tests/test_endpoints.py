"""smartroute/endpoints.py: every rule about addresses, one function at a time."""

from __future__ import annotations

import ipaddress
import socket
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartroute import endpoints
from smartroute.endpoints import (
    WILDCARD_HOSTS,
    announced_hosts,
    best_local_address,
    bind_address,
    check_advertise,
    format_endpoint,
    node_endpoints,
    parse_endpoint,
    resolve_endpoint,
)
from smartroute.errors import UsageError

# --- parse_endpoint / format_endpoint -------------------------------------------------------


def test_parse_endpoint_splits_host_and_port_and_unbrackets_ipv6() -> None:
    assert parse_endpoint("tcp://127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_endpoint("tcp://chat-0.chat-hl:1") == ("chat-0.chat-hl", 1)
    assert parse_endpoint("tcp://[::1]:65535") == ("::1", 65535)
    assert parse_endpoint("tcp://[fe80::1%eth0]:7001") == ("fe80::1%eth0", 7001)
    assert parse_endpoint("tcp://*:7001") == ("*", 7001)


@pytest.mark.parametrize("bad", [
    "127.0.0.1:7001", "udp://127.0.0.1:7001", "tcp://127.0.0.1", "tcp://:7001",
    "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://127.0.0.1:-1", "tcp://h:70x1",
    "tcp://[]:7001", "", 7001, None, b"tcp://127.0.0.1:7001",
])
def test_parse_endpoint_refuses_what_is_not_tcp_host_port(bad: object) -> None:
    with pytest.raises(UsageError, match="tcp://host:port"):
        parse_endpoint(bad)  # type: ignore[arg-type]


def test_format_endpoint_brackets_ipv6_once() -> None:
    assert format_endpoint("127.0.0.1", 7001) == "tcp://127.0.0.1:7001"
    assert format_endpoint("::1", 7001) == "tcp://[::1]:7001"
    assert format_endpoint("[::1]", 7001) == "tcp://[::1]:7001"
    assert format_endpoint("chat-0", 1) == "tcp://chat-0:1"


_HOST_NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}\Z")
_HOSTS = st.one_of(
    _HOST_NAMES,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=_HOSTS, port=st.integers(1, 65535))
def test_format_then_parse_gives_back_host_and_port(host: str, port: int) -> None:
    endpoint = format_endpoint(host, port)
    assert parse_endpoint(endpoint) == (host, port)
    assert format_endpoint(*parse_endpoint(endpoint)) == endpoint


# --- check_advertise ------------------------------------------------------------------------


def test_check_advertise_takes_a_host_or_an_endpoint() -> None:
    for good in ("10.1.2.3", "chat-0.chat-hl", "::1", "tcp://chat-0:7001", "tcp://[::1]:7001"):
        check_advertise(good)


@pytest.mark.parametrize(("bad", "says"), [
    ("", "advertise is a host"),
    (None, "advertise is a host"),
    (7001, "advertise is a host"),
    ("tcp://chat-0", "tcp://host:port"),        # an endpoint without its port
    ("tcp://chat-0:0", "tcp://host:port"),
    ("http://chat-0:7001", "not 'http://chat-0:7001'"),
    ("chat-0/24", "not 'chat-0/24'"),
])
def test_check_advertise_refuses_the_rest_with_a_reason(bad: object, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        check_advertise(bad)


# --- bind_address ---------------------------------------------------------------------------


def test_bind_address_binds_every_ipv4_interface_for_a_wildcard() -> None:
    for wildcard in ("0.0.0.0", "*", ""):
        assert bind_address(wildcard, 7001) == "tcp://*:7001"
    assert bind_address("127.0.0.1", 0) == "tcp://127.0.0.1:0"
    assert bind_address("::1", 7001) == "tcp://[::1]:7001"
    assert bind_address("::", 7001) == "tcp://[::]:7001"   # IPv6 wildcard: bound as written


# --- node_endpoints -------------------------------------------------------------------------


def test_node_endpoints_of_an_advertised_host_or_endpoint() -> None:
    assert node_endpoints("10.1.2.3", "0.0.0.0", 7001) == ("tcp://10.1.2.3:7001",) * 2
    assert node_endpoints("::1", "::", 7001) == ("tcp://[::1]:7001",) * 2
    # An endpoint is taken as it is, its port too (a NAT or a service in front).
    assert node_endpoints("tcp://chat-0.chat-hl:9000", "127.0.0.1", 7001) == \
        ("tcp://chat-0.chat-hl:9000",) * 2


def test_node_endpoints_of_a_specific_host() -> None:
    assert node_endpoints(None, "127.0.0.1", 7001) == ("tcp://127.0.0.1:7001",) * 2
    assert node_endpoints(None, "::1", 7001) == ("tcp://[::1]:7001",) * 2


@pytest.mark.parametrize("wildcard", sorted(WILDCARD_HOSTS))
def test_node_endpoints_of_a_wildcard_advertise_the_wildcard_and_show_an_address(
        wildcard: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "best_local_address", lambda: "10.9.8.7")
    assert node_endpoints(None, wildcard, 7001) == ("tcp://*:7001", "tcp://10.9.8.7:7001")


# --- announced_hosts ------------------------------------------------------------------------


def test_announced_hosts() -> None:
    assert announced_hosts("10.1.2.3", "0.0.0.0") == ("10.1.2.3",)
    assert announced_hosts("tcp://chat-0.chat-hl:9000", "0.0.0.0") == ("chat-0.chat-hl",)
    assert announced_hosts("tcp://[::1]:9000", "::") == ("::1",)
    assert announced_hosts(None, "127.0.0.1") == ("127.0.0.1",)
    for wildcard in WILDCARD_HOSTS:
        assert announced_hosts(None, wildcard) == ()   # discovery: its interfaces' addresses


# --- resolve_endpoint -----------------------------------------------------------------------


def test_resolve_endpoint_replaces_only_a_wildcard_host() -> None:
    assert resolve_endpoint("tcp://*:7001", "10.0.0.5") == "tcp://10.0.0.5:7001"
    assert resolve_endpoint("tcp://0.0.0.0:7001", "10.0.0.5") == "tcp://10.0.0.5:7001"
    assert resolve_endpoint("tcp://[::]:7001", "fe80::5") == "tcp://[fe80::5]:7001"
    assert resolve_endpoint("tcp://:7001", "10.0.0.5") == "tcp://10.0.0.5:7001"
    # Specific hosts, an unknown peer address and what is not tcp:// stay as they are.
    assert resolve_endpoint("tcp://10.1.1.1:7001", "10.0.0.5") == "tcp://10.1.1.1:7001"
    assert resolve_endpoint("tcp://[::1]:7001", "10.0.0.5") == "tcp://[::1]:7001"
    assert resolve_endpoint("tcp://*:7001", None) == "tcp://*:7001"
    assert resolve_endpoint("ipc:///tmp/x", "10.0.0.5") == "ipc:///tmp/x"


# --- best_local_address ---------------------------------------------------------------------


def test_best_local_address_is_an_ip_and_never_unspecified() -> None:
    address = ipaddress.ip_address(best_local_address())
    assert address.version == 4 and not address.is_unspecified


def test_best_local_address_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoRoute(socket.socket):
        def connect(self, address: object) -> None:
            raise OSError("Network is unreachable")

    class Unspecified(socket.socket):
        def connect(self, address: object) -> None:
            pass  # a socket never connected reports 0.0.0.0

    for probe in (NoRoute, Unspecified):
        # Only endpoints.py's view of the socket module: nothing else in the process.
        monkeypatch.setattr(endpoints, "socket", types.SimpleNamespace(
            socket=probe, AF_INET=socket.AF_INET, SOCK_DGRAM=socket.SOCK_DGRAM))
        assert best_local_address() == "127.0.0.1"
