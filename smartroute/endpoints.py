"""Every rule about addresses: the ``tcp://host:port`` form, wildcard hosts, what a node binds,
what it advertises in HELLO, what discovery announces and what ``node.endpoint`` shows."""

from __future__ import annotations

import ipaddress
import socket

from .errors import UsageError

WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", "[::]", ""})
"""Hosts that mean "every interface": bound as such, and replaced by the address a peer is
seen from when one advertises them."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``tcp://host:port`` (IPv6 hosts in brackets); raises ``UsageError`` otherwise."""
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        raise UsageError(f"an endpoint looks like 'tcp://host:port', not {endpoint!r}")
    host, sep, port_text = endpoint[len("tcp://"):].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"an endpoint looks like 'tcp://host:port', not {endpoint!r}")
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``, an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def check_advertise(advertise: object) -> str:
    """``advertise`` is a host or a ``tcp://host:port`` endpoint (returned); ``UsageError``
    otherwise."""
    if not isinstance(advertise, str) or not advertise:
        raise UsageError("advertise is a host or a 'tcp://host:port' endpoint")
    if advertise.startswith("tcp://"):
        parse_endpoint(advertise)
    elif "/" in advertise:
        raise UsageError(f"advertise is a host or a 'tcp://host:port', not {advertise!r}")
    return advertise


def bind_address(host: str, port: int) -> str:
    """What the inbox binds for ``host`` (a wildcard binds every IPv4 interface)."""
    if host in ("0.0.0.0", "*", ""):
        return f"tcp://*:{port}"
    return format_endpoint(host, port)


def node_endpoints(advertise: str | None, bound_host: str, port: int) -> tuple[str, str]:
    """(what HELLO advertises, what ``node.endpoint`` shows) for a node bound at
    ``bound_host:port``."""
    if advertise is not None:
        if advertise.startswith("tcp://"):
            return advertise, advertise
        return format_endpoint(advertise, port), format_endpoint(advertise, port)
    if bound_host in WILDCARD_HOSTS:
        # Peers replace the wildcard with the address they see us from.
        return f"tcp://*:{port}", format_endpoint(best_local_address(), port)
    return format_endpoint(bound_host, port), format_endpoint(bound_host, port)


def announced_hosts(advertise: str | None, bound_host: str) -> tuple[str, ...]:
    """The addresses discovery should announce (empty: those of its interfaces)."""
    if advertise is not None:
        return (parse_endpoint(advertise)[0] if advertise.startswith("tcp://") else advertise,)
    if bound_host not in WILDCARD_HOSTS:
        return (bound_host,)
    return ()


def resolve_endpoint(endpoint: str, peer_address: str | None) -> str:
    """Replace a wildcard host (``tcp://*:7001``) by the address the peer was seen from."""
    if peer_address is None or not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if host not in WILDCARD_HOSTS:
        return endpoint
    if ":" in peer_address:
        peer_address = f"[{peer_address}]"
    return f"tcp://{peer_address}:{port}"


def best_local_address() -> str:
    """A non-loopback address of this host for display, or 127.0.0.1; sends no packet."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() on UDP only selects a route; nothing is sent (TEST-NET-1, RFC 5737).
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    return address if not ipaddress.ip_address(address).is_unspecified else "127.0.0.1"
