"""Discovery by DNS names, resolved again every ``dns_interval_s``.

``dns:NAME:PORT`` hints every A and AAAA address of ``NAME`` at ``PORT`` (a Kubernetes headless
Service, a docker compose service name: one address per replica). ``dns-srv:NAME`` reads the SRV
records of ``NAME`` (a host and a port each), then hints every A/AAAA address of each host at
its port. A/AAAA go through the system resolver (``getaddrinfo``: /etc/hosts, then the
nameservers and search list of /etc/resolv.conf), so it works with whatever DNS the machine or
pod has. The standard library cannot ask for SRV records: ``dns-srv:`` needs dnspython
(``pip install 'smartroute[dns]'``), which reads the same /etc/resolv.conf.

Every address is only a hint, as with mDNS: the mesh decides who is alive. A record that
disappears is not a death (the node is forgotten when it says BYE or stops answering), and a
record that stays does not keep a dead node alive. A name that does not resolve is logged once
per outage and tried again at the next round; nothing raises out of the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..config import MAX_PEERS
from ..endpoints import WILDCARD_HOSTS, format_endpoint, parse_endpoint
from ..errors import UsageError
from ..logs import QuietLog
from .base import Hint, LocalNode

_log = logging.getLogger("smartroute.discovery.dns")

DNS_PREFIX = "dns:"
"""``dns:NAME:PORT``: the A and AAAA records of NAME, at PORT."""

SRV_PREFIX = "dns-srv:"
"""``dns-srv:NAME``: the SRV records of NAME (host and port), then the hosts' A/AAAA."""

MAX_NAME_LENGTH = 253
"""Longest DNS name in text form, without the final dot (RFC 1035 section 2.3.4)."""

LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
"""One label: 1..63 letters, digits, ``-`` and ``_`` (SRV names start labels with ``_``),
no ``-`` at either end (RFC 1123 section 2.1, RFC 2782)."""

MAX_ADDRESSES_PER_NAME = MAX_PEERS
"""Most endpoints one name (or one SRV answer) yields per round: a node keeps no more peers
than this, so more is a misconfiguration or a hostile answer; the rest is ignored."""

SRV_LIFETIME_S = 5.0
"""Longest one SRV lookup may take, every nameserver and retry included (dnspython's own
default), so a round never waits longer than this for an SRV name."""

Addresses = Callable[[str, int], Awaitable[list[str]]]
"""``await addresses(host, port)``: the IP addresses of ``host`` (raises when it has none)."""

Services = Callable[[str], Awaitable[list[tuple[str, int]]]]
"""``await services(name)``: the ``(host, port)`` of each SRV record of ``name``."""


@dataclasses.dataclass(frozen=True, slots=True)
class DnsName:
    """One parsed discovery string: ``port`` is None for SRV (the records carry the ports)."""

    name: str
    port: int | None

    def __str__(self) -> str:
        return f"{SRV_PREFIX}{self.name}" if self.port is None \
            else f"{DNS_PREFIX}{_bracket(self.name)}:{self.port}"


def is_dns(spec: object) -> bool:
    """True for a string meant for DNS discovery (``dns:...`` or ``dns-srv:...``)."""
    return isinstance(spec, str) and spec.startswith((DNS_PREFIX, SRV_PREFIX))


def parse_dns(spec: str) -> DnsName:
    """Parse ``dns:NAME:PORT`` or ``dns-srv:NAME``; ``UsageError`` saying what is wrong."""
    if spec.startswith(SRV_PREFIX):
        name = spec[len(SRV_PREFIX):].removesuffix(".")
        if not _is_name(name):
            raise UsageError(f"{spec!r}: dns-srv: takes a DNS name (the SRV records carry the "
                             f"ports), like 'dns-srv:_smartroute._tcp.chat.example.com'")
        if importlib.util.find_spec("dns") is None:
            raise UsageError(f"{spec!r}: SRV lookups need dnspython: "
                             f"pip install 'smartroute[dns]' (or use dns:NAME:PORT)")
        return DnsName(name, None)
    if not spec.startswith(DNS_PREFIX):
        raise UsageError(f"{spec!r} is not a dns: or dns-srv: string")
    host, sep, port_text = spec[len(DNS_PREFIX):].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = _is_ipv6(host)
    else:
        host = host.removesuffix(".")
        valid_host = _is_name(host)
    if not sep or not valid_host or not (port_text.isascii() and port_text.isdigit()) \
            or not 0 < int(port_text) < 65536:
        raise UsageError(f"{spec!r}: DNS discovery looks like 'dns:NAME:PORT' with a port "
                         f"1..65535 (or 'dns-srv:NAME' for ports from SRV records)")
    return DnsName(host, int(port_text))


def _is_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME_LENGTH and all(LABEL.fullmatch(label)
                                                    for label in name.split("."))


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def endpoint_of(address: str, port: int) -> str | None:
    """``tcp://address:port``, or None for an address no node can listen at (unspecified,
    multicast, or IPv6 with a scope, which ZeroMQ endpoints cannot carry)."""
    if "%" in address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast:
        return None
    return format_endpoint(str(ip), port)


async def system_addresses(host: str, port: int) -> list[str]:
    """A and AAAA of ``host`` through the system resolver (``loop.getaddrinfo``), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def dnspython_services(name: str) -> list[tuple[str, int]]:
    """The SRV records of ``name`` through dnspython (nameservers and search list of
    /etc/resolv.conf); a target of ``.`` ("no such service here", RFC 2782) is left out."""
    import dns.asyncresolver  # noqa: PLC0415 - optional: only dns-srv: needs it

    resolver = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf again: it may change
    answer = await resolver.resolve(name, "SRV", search=True, lifetime=SRV_LIFETIME_S)
    found: list[tuple[str, int]] = []
    for record in answer:
        target = record.target.to_text(omit_final_dot=True)
        if target and target != "." and 0 < record.port < 65536:
            found.append((target, int(record.port)))
    return found


class DnsDiscovery:
    """Resolves ``names`` at start and every ``interval_s``; hints every endpoint found.

    ``addresses`` and ``services`` replace the system resolver and dnspython (tests give fakes).
    """

    def __init__(self, names: Sequence[DnsName], *, interval_s: float,
                 addresses: Addresses | None = None, services: Services | None = None) -> None:
        self.names = list(names)
        self.interval_s = interval_s
        self._addresses = addresses or system_addresses
        self._services = services or dnspython_services
        self._task: asyncio.Task[None] | None = None
        self._quiet = QuietLog(_log)
        self._outages: dict[str, int] = {}
        """Each name (or SRV host) that did not resolve in the last round: its outage's serial."""
        self._failing: set[str] = set()
        self._serial = 0
        self.rounds = 0
        """Rounds of resolution done."""
        self.failures = 0
        """Lookups that failed (a name that did not resolve, in one round)."""
        self.endpoints: tuple[str, ...] = ()
        """What the last round found, in order."""

    async def start(self, hint: Hint, me: LocalNode) -> None:
        """Start resolving in the background; returns at once."""
        self._task = asyncio.create_task(self._run(hint), name="smartroute-dns")

    async def _run(self, hint: Hint) -> None:
        while True:  # until close(): a node's lifetime
            try:
                for endpoint in await self.resolve():
                    hint(endpoint)
            except Exception as exc:  # a bug must not end discovery: the next may do better
                self._quiet.warning(f"round:{type(exc).__name__}", "DNS discovery round "
                                    "failed: %r (retried every %g s)", exc, self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def resolve(self) -> tuple[str, ...]:
        """One round: every name, looked up at once; what does not resolve is logged, not
        raised. Returns the endpoints found, each once, at most ``MAX_ADDRESSES_PER_NAME`` a
        name."""
        self._failing = set()
        found = await asyncio.gather(*(self._resolve_name(name) for name in self.names))
        # Bounded memory: an SRV host that is gone from the answer is no longer an outage.
        self._outages = {k: v for k, v in self._outages.items() if k in self._failing}
        self.rounds += 1
        self.endpoints = tuple(dict.fromkeys(e for endpoints in found for e in endpoints))
        return self.endpoints

    async def _resolve_name(self, name: DnsName) -> list[str]:
        if name.port is not None:
            return (await self._lookup(str(name), name.name, name.port))[:MAX_ADDRESSES_PER_NAME]
        try:
            services = await self._services(name.name)
            if not services:
                raise LookupError("no SRV record")
        except Exception as exc:  # anything a resolver raises: retried next round
            self._failed(str(name), exc)
            return []
        self._resolved(str(name))
        services = list(dict.fromkeys(services))[:MAX_ADDRESSES_PER_NAME]
        hosts = await asyncio.gather(*(self._lookup(f"{name} host {host}", host, port)
                                       for host, port in services))
        return list(dict.fromkeys(e for endpoints in hosts for e in endpoints)) \
            [:MAX_ADDRESSES_PER_NAME]

    async def _lookup(self, key: str, host: str, port: int) -> list[str]:
        try:
            addresses = await self._addresses(host, port)
            endpoints = [e for e in (endpoint_of(a, port) for a in addresses) if e is not None]
            if not endpoints:
                raise LookupError("no usable address")
        except Exception as exc:  # anything a resolver raises: retried next round
            self._failed(key, exc)
            return []
        self._resolved(key)
        return endpoints

    def _failed(self, key: str, exc: Exception) -> None:
        self.failures += 1
        self._failing.add(key)
        if key not in self._outages:
            self._serial += 1
            self._outages[key] = self._serial
        # Once per outage at WARNING, then DEBUG: a name down for a day costs one line.
        self._quiet.warning(f"{key}#{self._outages[key]}",
                            "%s does not resolve (%s: %s); trying again every %g s", key,
                            type(exc).__name__, exc, self.interval_s)

    def _resolved(self, key: str) -> None:
        if self._outages.pop(key, None) is not None:
            _log.info("%s resolves again", key)

    async def close(self) -> None:
        """Stop resolving and hinting."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


ADVERTISE_ENV = "SMARTROUTE_ADVERTISE"
"""The host (or ``tcp://host:port``) a node advertises when ``Node(advertise=None)``."""

POD_IP_ENV = "POD_IP"
"""The pod's address, as Kubernetes' downward API conventionally names it
(``valueFrom: fieldRef: fieldPath: status.podIP``)."""


def advertise_from_environment(host: str, environ: Mapping[str, str]) -> str | None:
    """What a node with ``advertise=None`` bound to ``host`` advertises: ``$SMARTROUTE_ADVERTISE``
    if set; else ``$POD_IP`` if set and ``host`` is a wildcard; else None (the node's own
    rule). A malformed value is a ``UsageError`` naming the variable."""
    for variable in (ADVERTISE_ENV, POD_IP_ENV):
        value = environ.get(variable, "").strip()
        if not value or (variable == POD_IP_ENV and host not in WILDCARD_HOSTS):
            continue
        try:
            if value.startswith("tcp://"):
                parse_endpoint(value)
            elif "/" in value or value.startswith("[") or \
                    (variable == POD_IP_ENV and endpoint_of(value, 1) is None):
                raise UsageError("not an address")
        except UsageError:
            raise UsageError(f"${variable} is a host or a 'tcp://host:port' peers can dial, "
                             f"not {value!r}") from None
        return value
    return None
