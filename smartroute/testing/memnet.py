"""An in-memory network of sans-I/O ``Protocol`` instances, driven by a fake clock: test a
service's use of the mesh, or the protocol itself, without sockets, processes or waiting.

Each host is a ``Protocol``; ``flush()`` carries out every host's ``data_to_send()`` the way
a ``Node`` does (dials, then the batches of each link, then hang-ups) and delivers each
batch to the host that owns the dialled endpoint *at delivery time* (a ZeroMQ DEALER reconnects
to whoever listens there), in FIFO order. A link's connection is reported up as soon as a live
host owns its endpoint, and down then refused when that host crashes (a killed process's port
refuses the redial); a ``cut`` reports nothing by itself (call ``link_changed`` in the test).
``run(seconds)`` ticks every live host at the tick interval. Every batch is logged, decoded,
for tests to count records.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple, TypeVar

from .. import wire
from ..config import Limits, Timings
from ..events import PeerDown, PeerUp
from ..messages import encode_body, type_name_of
from ..modes import ReceiveMode
from ..protocol import Deliver, Dial, Plan, Protocol, ProtocolEvent

_E = TypeVar("_E")

MAX_ROUNDS = 1000
"""A flush that keeps producing traffic this many rounds is a livelock: fail loudly."""


@dataclasses.dataclass
class Host:
    """One protocol on the network, with every event it reported."""

    name: str
    protocol: Protocol
    events: list[ProtocolEvent] = dataclasses.field(default_factory=list)
    up: bool = True
    stalled: bool = False
    """Its event loop is blocked: no ticks, nothing sent or read (what arrives waits), but
    its connections stay up (libzmq answers pings on its own thread)."""
    held: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.protocol.endpoint

    @property
    def node_id(self) -> bytes:
        return self.protocol.node_id

    @property
    def hex(self) -> str:
        return self.protocol.hex

    def peers(self) -> set[bytes]:
        """Node ids of the peers this host knows."""
        return set(self.protocol.membership.peers)

    def of(self, kind: type[_E]) -> list[_E]:
        """The events of one kind, in order."""
        return [e for e in self.events if type(e) is kind]

    def downs(self) -> list[tuple[str, str]]:
        """(node hex, reason) of every PeerDown."""
        return [(e.peer.node_id, e.reason) for e in self.of(PeerDown)]

    def ups(self) -> list[str]:
        return [e.peer.node_id for e in self.of(PeerUp)]

    def delivered(self) -> list[Deliver]:
        return self.of(Deliver)

    def names_seen(self, name: str) -> list[str]:
        """Hex node ids of the subscribers of ``name`` in this host's table."""
        return sorted(s.node_id for s in self.protocol.table.lookup(name))


class Traffic(NamedTuple):
    """One batch that travelled (or was dropped)."""

    src: str
    dst: str | None
    records: list[wire.Record]
    dropped: bool


class MemNet:
    """Hosts wired together in memory; ``now`` is the fake clock."""

    def __init__(self, *, timings: Timings | None = None, limits: Limits | None = None,
                 now: float = 1000.0) -> None:
        self.timings = timings or Timings()
        self.limits = limits or Limits()
        self.now = now
        self.hosts: dict[str, Host] = {}
        self.by_endpoint: dict[str, Host] = {}
        self.links: dict[tuple[str, int], Dial] = {}
        self.connected: set[tuple[str, int]] = set()
        """Links whose connection was reported up (and not down since)."""
        self.log: list[Traffic] = []
        self._drops: list[tuple[str, str, type | None]] = []
        self.cuts: set[tuple[str, str]] = set()
        """(src, dst) host names: every batch from src to dst is lost."""
        self._ids = itertools.count(1)
        self._decoder = wire.Decoder(
            max_frame_bytes=self.limits.max_frame_bytes,
            max_table_entries=self.limits.max_table_entries, max_peers=self.limits.max_peers,
            max_target_names=self.limits.max_target_names, max_name_length=1024,
            max_meta_bytes=self.limits.max_meta_bytes)

    # --- hosts -----------------------------------------------------------------------------------

    def add(self, name: str, *, cluster: str = "test", endpoint: str | None = None,
            node_id: bytes | None = None, incarnation: int | None = None) -> Host:
        """A new host listening at ``endpoint`` (default ``tcp://<name>:7000``)."""
        assert name not in self.hosts
        n = next(self._ids)
        protocol = Protocol(
            cluster=cluster, node_id=node_id or bytes([n]) * 16,
            incarnation=incarnation if incarnation is not None else n,
            endpoint=endpoint or f"tcp://{name}:7000", name=name, timings=self.timings,
            limits=self.limits)
        host = Host(name, protocol)
        self.hosts[name] = host
        self.by_endpoint[protocol.endpoint] = host
        return host

    def mesh(self, *names: str) -> list[Host]:
        """Hosts that all know each other (each hinted with the first only)."""
        hosts = [self.add(name) for name in names]
        for host in hosts[1:]:
            host.protocol.hint(hosts[0].endpoint, self.now)
            self.flush()
        ids = {h.node_id for h in hosts}
        for host in hosts:
            assert host.peers() == ids - {host.node_id}, f"{host.name} did not join the mesh"
        return hosts

    def stall(self, host: Host) -> None:
        """The host's loop blocks (see ``Host.stalled``) until ``unstall``."""
        host.stalled = True

    def unstall(self, host: Host) -> None:
        """The loop runs again: it reads what waited, then ticks and sends as usual."""
        host.stalled = False
        held, host.held = host.held, []
        for routing_id, batch in held:
            host.protocol.receive(routing_id, batch, self.now)
        self.flush()

    def crash(self, host: Host) -> None:
        """The host stops: no ticks, nothing sent, batches to its endpoint are lost."""
        host.up = False
        if self.by_endpoint.get(host.endpoint) is host:
            del self.by_endpoint[host.endpoint]

    def cut(self, src: Host, dst: Host) -> None:
        """Lose every batch from ``src`` to ``dst`` until ``heal``."""
        self.cuts.add((src.name, dst.name))

    def heal(self, src: Host, dst: Host) -> None:
        self.cuts.discard((src.name, dst.name))

    def drop_next(self, src: Host, dst: Host, carrying: type | None = None) -> None:
        """Lose the next batch from ``src`` to ``dst`` (that carries a ``carrying`` record)."""
        self._drops.append((src.name, dst.name, carrying))

    # --- time and traffic ------------------------------------------------------------------------

    def _connections(self) -> None:
        """Report every link's connection change the way the transport's monitors do."""
        for key, dial in list(self.links.items()):
            host = self.hosts[key[0]]
            if not host.up or host.stalled:
                continue
            dst = self.by_endpoint.get(dial.endpoint)
            listening = dst is not None and dst.up
            if listening and key not in self.connected:
                self.connected.add(key)
                host.protocol.link_changed(key[1], "up", self.now)
            elif not listening and key in self.connected:
                self.connected.discard(key)
                host.protocol.link_changed(key[1], "down", self.now)
                host.protocol.link_changed(key[1], "refused", self.now)

    def flush(self) -> None:
        """Carry out every host's output until the network is quiet."""
        for _ in range(MAX_ROUNDS):
            self._connections()
            batches: list[tuple[Host, Dial, bytes]] = []
            for host in list(self.hosts.values()):
                if not host.up or host.stalled:
                    continue
                out = host.protocol.data_to_send()
                for dial in out.dials:
                    self.links[host.name, dial.link] = dial
                for link, framed in out.sends.items():
                    # KeyError here: the protocol sent on a link it never dialled or hung up.
                    dial = self.links[host.name, link]
                    batches.extend((host, dial, batch) for batch in framed)
                for link in out.hangups:
                    del self.links[host.name, link]
                    self.connected.discard((host.name, link))
                host.events.extend(host.protocol.events_received())
            if not batches:
                return
            for src, dial, batch in batches:
                dst = self.by_endpoint.get(dial.endpoint)
                decoded = [self._decoder.record(raw) for raw in self._decoder.batch(batch)]
                pair = (src.name, dst.name if dst else "")
                dropped = pair in self.cuts
                for drop in self._drops:
                    if drop[:2] == pair and (drop[2] is None
                                             or any(type(r) is drop[2] for r in decoded)):
                        self._drops.remove(drop)
                        dropped = True
                        break
                self.log.append(Traffic(src.name, dst.name if dst else None, decoded, dropped))
                if dst is not None and dst.up and not dropped:
                    if dst.stalled:
                        dst.held.append((dial.routing_id, batch))
                    else:
                        dst.protocol.receive(dial.routing_id, batch, self.now)
        raise AssertionError(f"the network did not settle in {MAX_ROUNDS} rounds")

    def run(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, ticking every live host at the tick interval."""
        step = self.timings.tick_interval_s
        start = self.now
        for k in range(1, round(seconds / step) + 1):
            self.now = start + k * step
            for host in list(self.hosts.values()):
                if host.up and not host.stalled:
                    host.protocol.tick(self.now)
            self.flush()

    def records(self, kind: type[_E], src: Host | None = None,
                dst: Host | None = None) -> list[_E]:
        """Every record of ``kind`` that was sent (dropped ones too), optionally by/to a host."""
        return [record for t in self.log
                if (src is None or t.src == src.name) and (dst is None or t.dst == dst.name)
                for record in t.records if type(record) is kind]


def msg(target: str | list[str] | None, body: Any = "hi", *, mode: ReceiveMode = ReceiveMode.EQ,
        seq: int = 1, request_id: int | None = None) -> wire.Msg:
    """A MSG record, for tests that feed a protocol batches they crafted themselves."""
    return wire.Msg(seq, None, int(mode), target, type_name_of(body), encode_body(body), None,
                    request_id)


def send(protocol: Protocol, mode: ReceiveMode, target: str | list[str] | None, body: Any = "hi",
         *, seq: int = 1, request_id: int | None = None) -> Plan:
    """Plan and send one message to the peers it reaches (local subscribers get nothing: a
    ``Node`` hands those their messages itself)."""
    plan = protocol.plan(mode, target)
    protocol.send_to(plan, seq, None, mode, target, type_name_of(body), encode_body(body),
                  request_id)
    return plan
