"""A simulated LAN of N hosts built from Linux network namespaces, for tests with real processes.

::

    with Lan(3) as lan:
        a, b, c = lan.hosts
        proc = a.run([sys.executable, "-m", "smartroute.testing.agent", "--host", a.address])
        c.cut()            # pull c's cable
        b.netem(loss_percent=20)

Layout: one namespace holds a bridge ``br0`` (multicast snooping off, so multicast is flooded
like on a dumb switch); each host namespace has ``eth0`` (a veth whose peer ``h<index>`` is a
port of that bridge) with address ``198.18.0.<index+1>/16`` from the benchmarking range
(RFC 2544), ``lo`` up and a ``224.0.0.0/4`` route on ``eth0`` so mDNS works.

Contracts:

- Nothing is created or changed in the root namespace: no interface, address, route or sysctl,
  so no test traffic can leave the namespaces. The one file written outside them is a host's
  ``/etc/netns/<namespace>/resolv.conf`` when asked (``Host.use_nameserver``), removed at close.
- ``close()`` (also run by ``with``, and at interpreter exit for a Lan never closed) SIGKILLs
  every process started with ``Host.run`` and any other process left in the Lan's namespaces,
  then deletes every namespace it created, which removes their veths and the bridge. It is
  idempotent and ignores objects that are already gone.
- Needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``) and iproute2; ``lan_available()`` says
  why not when it cannot work. ``netem`` needs ``tc``; see ``Host.netem`` for kernels without
  ``sch_netem``.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

LAN_NETWORK = ipaddress.IPv4Network("198.18.0.0/16")
"""Host addresses: the first half of the RFC 2544 benchmarking range 198.18.0.0/15."""

MAX_HOSTS = LAN_NETWORK.num_addresses - 2
"""One address per host, minus the network and broadcast addresses."""

MULTICAST_ROUTE = "224.0.0.0/4"
"""Routed to ``eth0`` in every host namespace, so multicast (mDNS) has an interface."""

BRIDGE = "br0"
"""The bridge's name inside the bridge namespace."""

HOST_INTERFACE = "eth0"
"""The host-side veth's name inside each host namespace."""

DEFAULT_NAME = "srlan"
"""Namespace name prefix when ``Lan`` is given no name."""

NAME_MAX_CHARS = 8
"""Longest ``name`` accepted: namespace names stay short and readable in ``ip netns list``."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")
"""Characters allowed in ``name`` (``-`` separates the name from its suffix)."""

SUFFIX_BYTES = 3
"""Random bytes (6 hex characters) that make each Lan's namespace names unique."""

COMMAND_TIMEOUT_S = 15.0
"""Longest any one ``ip`` / ``tc`` command may take before it counts as failed."""

KILL_WAIT_S = 5.0
"""How long ``close()`` waits for SIGKILLed processes to be gone before deleting namespaces."""

KILL_POLL_S = 0.01
"""How often ``close()`` checks whether killed processes are gone."""

NETNS_ETC = Path("/etc/netns")
"""``ip netns exec NS`` bind-mounts each file of ``/etc/netns/NS/`` over the one of ``/etc/``: a
``resolv.conf`` there gives the processes of that host their own DNS server."""

NOT_ROOT_REASON = "LAN tests need root to create network namespaces (run as root, or see README)"
"""``lan_available()``'s answer for a non-root user."""

TC_ACT_OK = 0
"""tc action: let the packet through (a direct-action BPF filter's return value)."""

TC_ACT_SHOT = 2
"""tc action: drop the packet."""

BPF_LD_RANDOM = "32 0 0 4294963256"
"""Classic BPF ``ld rand``: A = a random u32 (ancillary load at SKF_AD_OFF + SKF_AD_RANDOM)."""

U32_RANGE = 2**32
"""Number of values a random u32 can take; a loss of p % drops when A < p/100 * U32_RANGE."""


class LanError(RuntimeError):
    """A command building, changing or removing the LAN failed."""


class NetemUnavailable(LanError):
    """The kernel has no ``sch_netem`` and the requested impairment cannot be emulated."""


def _command(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``argv`` and return its stdout; ``LanError`` with the command and stderr on failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LanError(f"command failed: {shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise LanError(f"command failed (exit {done.returncode}): {shlex.join(argv)}: "
                       f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _namespaces() -> set[str]:
    """Names of the network namespaces in ``ip netns list``."""
    return {line.split()[0] for line in _command(["ip", "netns", "list"]).splitlines()
            if line.strip()}


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer exists or is a zombie (dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def lan_available() -> str | None:
    """None when a ``Lan`` can be built here, else a human-readable reason (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return NOT_ROOT_REASON
    if shutil.which("ip") is None:
        return "LAN tests need the `ip` command (apt-get install iproute2)"
    probe = f"{DEFAULT_NAME}-probe-{secrets.token_hex(SUFFIX_BYTES)}"
    try:
        _command(["ip", "netns", "add", probe])
    except LanError as exc:
        return f"LAN tests cannot create a network namespace: {exc}"
    try:
        _command(["ip", "netns", "delete", probe])
    except LanError as exc:
        return f"LAN tests cannot delete a network namespace: {exc}"
    return None


class Host:
    """One host of a ``Lan``: a namespace with ``eth0`` on the bridge at ``address``."""

    def __init__(self, lan: Lan, index: int, namespace: str, address: str) -> None:
        self.index = index
        self.namespace = namespace
        self.address = address
        self.prefix: list[str] = ["ip", "netns", "exec", namespace]
        """Prepend to an argv to run it inside this host's namespace."""
        self._lan = lan
        self._port = f"h{index}"
        self._shaping: Literal["netem", "bpf"] | None = None
        self._blocked = False
        """A ``block`` filter is installed (it goes with the clsact qdisc)."""

    def __repr__(self) -> str:
        return f"Host({self.index}, {self.namespace!r}, {self.address!r})"

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host's namespace; ``close()`` SIGKILLs it by PID.

        ``ip netns exec`` execs the command, so the returned ``pid`` is the command's own.
        """
        self._lan._check_open()
        process: subprocess.Popen[Any] = subprocess.Popen([*self.prefix, *argv], **popen_kwargs)
        self._lan._processes.append(process)
        return process

    def use_nameserver(self, address: str, *, search: Sequence[str] = (),
                       timeout_s: int = 1, attempts: int = 1) -> None:
        """Processes started in this host from now on resolve names through the DNS server at
        ``address`` (with the ``search`` domains), giving up on it after ``attempts`` tries of
        ``timeout_s`` s each: writes ``/etc/netns/<namespace>/resolv.conf``, which ``ip netns
        exec`` mounts over ``/etc/resolv.conf``. ``close()`` removes it. Replaces an earlier one.
        """
        self._lan._check_open()
        ipaddress.ip_address(address)  # ValueError for anything else
        directory = NETNS_ETC / self.namespace
        lines = [f"nameserver {address}"]
        if search:
            lines.append(f"search {' '.join(search)}")
        lines.append(f"options timeout:{timeout_s} attempts:{attempts}")
        created = self._lan._netns_paths  # noted before each is made: close() removes it
        for folder in (NETNS_ETC, directory):
            if not folder.exists():
                created.append(folder)
                folder.mkdir(exist_ok=True)
        created.append(directory / "resolv.conf")
        (directory / "resolv.conf").write_text("\n".join(lines) + "\n")

    def cut(self) -> None:
        """Take this host's bridge port down: it loses carrier and is cut off from the LAN."""
        self._lan._check_open()
        _command(["ip", "-n", self._lan.bridge_namespace, "link", "set", self._port, "down"])

    def heal(self) -> None:
        """Undo ``cut()``: bring this host's bridge port back up."""
        self._lan._check_open()
        _command(["ip", "-n", self._lan.bridge_namespace, "link", "set", self._port, "up"])

    def netem(self, loss_percent: float = 0, delay_ms: float = 0) -> None:
        """Impair everything this host sends on ``eth0``: drop ``loss_percent`` % of the packets
        and delay each by ``delay_ms`` ms. Replaces any earlier impairment; both 0 clears it.

        Uses the ``netem`` qdisc. Kernels built without it (``lan.netem_supported`` is False)
        get loss emulated by a classic-BPF drop filter on eth0's egress hook; asking such a
        kernel for a delay raises ``NetemUnavailable``.
        """
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"loss_percent must be within [0, 100], not {loss_percent}")
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, not {delay_ms}")
        self._lan._check_open()
        if loss_percent == 0 and delay_ms == 0:
            self.clear_netem()
            return
        if self._lan.netem_supported:
            if self._shaping == "bpf":
                self.clear_netem()
            self._tc("qdisc", "replace", "dev", HOST_INTERFACE, "root", "netem",
                     "loss", f"{loss_percent}%", "delay", f"{delay_ms}ms")
            self._shaping = "netem"
            return
        if delay_ms > 0:
            raise NetemUnavailable("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so "
                                   "delay_ms cannot be emulated; loss_percent alone can")
        if self._shaping is None:
            self._tc("qdisc", "add", "dev", HOST_INTERFACE, "clsact")
            self._shaping = "bpf"
        self._tc("filter", "replace", "dev", HOST_INTERFACE, "egress", "pref", "1", "handle", "1",
                 "bpf", "da", "bytecode", _loss_bytecode(loss_percent))

    def block(self, others: Sequence[Host]) -> None:
        """Drop every IPv4 packet this host sends to ``others`` (a partition: call it on both
        sides); ``unblock()`` undoes it. A classic-BPF filter on eth0's egress hook, beside
        any loss ``netem`` set (it keeps its own slot)."""
        self._lan._check_open()
        if not others:
            raise ValueError("block needs at least one host")
        if self._shaping == "netem":
            raise LanError("block() cannot be combined with a real netem qdisc here")
        if self._shaping is None:
            self._tc("qdisc", "add", "dev", HOST_INTERFACE, "clsact")
            self._shaping = "bpf"
        self._tc("filter", "replace", "dev", HOST_INTERFACE, "egress", "pref", "2", "handle",
                 "2", "bpf", "da", "bytecode",
                 _block_bytecode([int(ipaddress.IPv4Address(h.address)) for h in others]))
        self._blocked = True

    def unblock(self) -> None:
        """Undo ``block``; a no-op when nothing is blocked."""
        self._lan._check_open()
        if self._blocked:
            self._tc("filter", "delete", "dev", HOST_INTERFACE, "egress", "pref", "2")
            self._blocked = False

    def clear_netem(self) -> None:
        """Remove any impairment set by ``netem``; a no-op when there is none."""
        self._lan._check_open()
        if self._shaping == "netem":
            self._tc("qdisc", "delete", "dev", HOST_INTERFACE, "root")
        elif self._shaping == "bpf":
            self._tc("qdisc", "delete", "dev", HOST_INTERFACE, "clsact")
            self._blocked = False  # its filter went with the qdisc
        self._shaping = None

    def _tc(self, *args: str) -> None:
        _command([*self.prefix, "tc", *args])


def _block_bytecode(addresses: list[int]) -> str:
    """A classic-BPF program (tc ``bytecode`` syntax, from the Ethernet header) returning SHOT
    for IPv4 packets to any of ``addresses``, OK for everything else."""
    n = len(addresses)
    program = [
        "40 0 0 12",  # A = ethertype
        f"21 0 {n + 1} 2048",  # not IPv4: to OK
        "32 0 0 30",  # A = IPv4 destination
        *(f"21 {n - i} 0 {address}" for i, address in enumerate(addresses)),  # to SHOT
        f"6 0 0 {TC_ACT_OK}",
        f"6 0 0 {TC_ACT_SHOT}",
    ]
    return f"{len(program)}," + ",".join(program)


def _loss_bytecode(loss_percent: float) -> str:
    """A classic-BPF program (tc ``bytecode`` syntax) returning SHOT for ``loss_percent`` % of
    packets at random, OK for the rest."""
    if loss_percent >= 100:
        return f"1,6 0 0 {TC_ACT_SHOT}"
    threshold = min(round(loss_percent / 100 * U32_RANGE), U32_RANGE - 1)
    # A = random; if A >= threshold: pass, else drop.
    return (f"4,{BPF_LD_RANDOM},53 0 1 {threshold},"
            f"6 0 0 {TC_ACT_OK},6 0 0 {TC_ACT_SHOT}")


_OPEN_LANS: set[Lan] = set()
"""Lans not closed yet, closed at interpreter exit by ``_close_all``."""


class Lan:
    """``hosts`` hosts on one bridge, each in its own network namespace; see the module doc.

    ``name`` (at most ``NAME_MAX_CHARS`` of ``[A-Za-z0-9_]``) prefixes every namespace name,
    followed by a random suffix: ``lan.name`` is that prefix, unique to this Lan.
    """

    def __init__(self, hosts: int, *, name: str | None = None) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be within [1, {MAX_HOSTS}], not {hosts}")
        base = DEFAULT_NAME if name is None else name
        if len(base) > NAME_MAX_CHARS or not NAME_PATTERN.fullmatch(base):
            raise ValueError(f"name must be 1 to {NAME_MAX_CHARS} of [A-Za-z0-9_], not {base!r}")
        self.name = f"{base}-{secrets.token_hex(SUFFIX_BYTES)}"
        self.bridge_namespace = f"{self.name}-br"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        """Every namespace this Lan created (and must delete), in creation order."""
        self._processes: list[subprocess.Popen[Any]] = []
        self._netns_paths: list[Path] = []
        """Folders and files made under ``NETNS_ETC`` (``Host.use_nameserver``), in order."""
        self._netem_supported: bool | None = None
        self._closed = False
        _OPEN_LANS.add(self)
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Lan({self.name!r}, {len(self.hosts)} hosts, {state})"

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def netem_supported(self) -> bool:
        """Whether the kernel has the ``netem`` qdisc (probed once, inside the bridge namespace).
        """
        if self._netem_supported is None:
            self._check_open()
            exec_prefix = ["ip", "netns", "exec", self.bridge_namespace, "tc", "qdisc"]
            try:
                _command([*exec_prefix, "add", "dev", "lo", "root", "netem"])
            except LanError as exc:
                if "unknown" not in str(exc).lower():
                    raise
                self._netem_supported = False
            else:
                _command([*exec_prefix, "delete", "dev", "lo", "root"])
                self._netem_supported = True
        return self._netem_supported

    def close(self) -> None:
        """Kill every process in the Lan, then delete its namespaces. Idempotent.

        Raises ``LanError`` only if a namespace it created could not be deleted.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN_LANS.discard(self)
        self._kill_processes()
        self._remove_netns_files()
        failures: list[str] = []
        for namespace in reversed(self.namespaces):
            try:
                _command(["ip", "netns", "delete", namespace])
            except LanError as exc:
                failures.append(str(exc))
        if failures:
            try:
                left = _namespaces() & set(self.namespaces)
            except LanError:
                left = set(self.namespaces)
            if left:  # deletions that failed only because the namespace was gone are fine
                raise LanError(f"could not delete namespaces {sorted(left)}: "
                               + "; ".join(failures))

    def _remove_netns_files(self) -> None:
        """Remove what ``Host.use_nameserver`` made, newest first; a folder only once empty
        (another Lan may use ``/etc/netns`` too)."""
        for path in reversed(dict.fromkeys(self._netns_paths)):
            with contextlib.suppress(OSError):  # gone already, or a folder still in use
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        self._netns_paths.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise LanError(f"{self!r} is closed")

    def _add_namespace(self, namespace: str) -> None:
        self.namespaces.append(namespace)  # before creating: close() must try to delete it
        _command(["ip", "netns", "add", namespace])

    def _build(self, hosts: int) -> None:
        bridge = self.bridge_namespace
        self._add_namespace(bridge)
        _command(["ip", "-n", bridge, "link", "add", BRIDGE, "type", "bridge",
                  "mcast_snooping", "0"])
        _command(["ip", "-n", bridge, "link", "set", BRIDGE, "up"])
        for index in range(hosts):
            namespace = f"{self.name}-h{index}"
            address = str(LAN_NETWORK[index + 1])
            host = Host(self, index, namespace, address)
            self._add_namespace(namespace)
            # Created inside the bridge namespace, peer placed straight into the host's: no
            # interface ever exists in the root namespace.
            _command(["ip", "-n", bridge, "link", "add", host._port, "type", "veth",
                      "peer", "name", HOST_INTERFACE, "netns", namespace])
            _command(["ip", "-n", bridge, "link", "set", host._port, "master", BRIDGE])
            _command(["ip", "-n", bridge, "link", "set", host._port, "up"])
            _command(["ip", "-n", namespace, "link", "set", "lo", "up"])
            _command(["ip", "-n", namespace, "link", "set", "lo", "multicast", "on"])
            _command(["ip", "-n", namespace, "addr", "add",
                      f"{address}/{LAN_NETWORK.prefixlen}", "dev", HOST_INTERFACE])
            _command(["ip", "-n", namespace, "link", "set", HOST_INTERFACE, "up"])
            _command(["ip", "-n", namespace, "route", "add", MULTICAST_ROUTE,
                      "dev", HOST_INTERFACE])
            self.hosts.append(host)

    def _kill_processes(self) -> None:
        """SIGKILL the processes started with ``run`` and any other left in our namespaces (a
        process keeps its namespace, and so its veth, alive after ``ip netns delete``)."""
        pids: set[int] = set()
        for process in self._processes:
            if process.poll() is None:
                pids.add(process.pid)
        for namespace in self.namespaces:
            with contextlib.suppress(LanError):  # namespace never created, or already gone
                pids.update(int(pid) for pid in _command(["ip", "netns", "pids", namespace])
                            .split())
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(KILL_POLL_S)


@atexit.register
def _close_all() -> None:
    """Safety net: close every Lan a test left open (not run on SIGKILL of this process)."""
    for lan in list(_OPEN_LANS):
        with contextlib.suppress(LanError):
            lan.close()


__all__ = [
    "LAN_NETWORK",
    "MAX_HOSTS",
    "NOT_ROOT_REASON",
    "Host",
    "Lan",
    "LanError",
    "NetemUnavailable",
    "lan_available",
]
