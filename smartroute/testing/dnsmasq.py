"""A real DNS server for tests: dnsmasq in one host of a ``Lan``, answering only for the
records a test gives it, on that host's LAN address only.

::

    with Lan(3) as lan:
        dns = DnsServer(lan.hosts[0], tmp_path, {"chat.smartroute.test": [lan.hosts[1].address]})
        for host in lan.hosts[1:]:
            host.use_nameserver(dns.address)     # before starting processes there
        ...
        dns.set_records({...})                   # scale up or down: reloaded with SIGHUP
        dns.stop()

Contracts: dnsmasq reads no configuration, hosts file or upstream server of the machine
(``--conf-file=/dev/null --no-hosts --no-resolv``) and listens on the host's address only
(``--listen-address --bind-interfaces``), so it answers nothing but the test's records and
forwards nothing. Names under ``domain`` that are not records get NXDOMAIN; anything else is
refused. It is stopped by its PID (``stop``), and killed with the Lan at the latest.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from . import reap
from .lan import Host

DNSMASQ_MISSING = ("DNS tests need dnsmasq (Debian: apt-get install dnsmasq-base; `make test` "
                   "installs it when run as root)")
"""``dnsmasq_available()``'s answer when the binary is not installed."""

READY_TIMEOUT_S = 10.0
"""How long dnsmasq may take to start or to re-read its records."""

POLL_S = 0.01
"""How often its log is read while waiting."""


def _dnsmasq() -> str | None:
    """dnsmasq's path: on PATH, or where Debian puts it (/usr/sbin is not on every PATH)."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


def dnsmasq_available() -> str | None:
    """None when dnsmasq is installed, else why not (for ``pytest.skip``)."""
    return None if _dnsmasq() else DNSMASQ_MISSING


class DnsServer:
    """dnsmasq on ``host``: ``records`` maps a name to its addresses (A and AAAA), ``srv`` lists
    ``(name, target, port)`` SRV records. Files and its log go in ``directory``."""

    def __init__(self, host: Host, directory: Path, records: Mapping[str, Sequence[str]],
                 *, srv: Sequence[tuple[str, str, int]] = (),
                 domain: str = "smartroute.test") -> None:
        self.host = host
        self.address = host.address
        self.hosts_file = directory / f"dns-{host.namespace}.hosts"
        self.log_path = directory / f"dns-{host.namespace}.log"
        self._reads = 0
        self._write(records)
        binary = _dnsmasq()
        if binary is None:
            raise RuntimeError(DNSMASQ_MISSING)
        command = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                   "--no-hosts", f"--addn-hosts={self.hosts_file}", "--pid-file=",
                   f"--listen-address={self.address}", "--bind-interfaces", "--port=53",
                   "--user=root", f"--local=/{domain}/", "--log-facility=-", "--log-queries"]
        command += [f"--srv-host={name},{target},{port}" for name, target, port in srv]
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[Any] = host.run(command, stdin=subprocess.DEVNULL,
                                                       stdout=self._log, stderr=self._log)
        self.pid = self.process.pid
        self._wait_read()

    def _write(self, records: Mapping[str, Sequence[str]]) -> None:
        lines = [f"{address} {name}" for name, addresses in records.items()
                 for address in addresses]
        self.hosts_file.write_text("".join(f"{line}\n" for line in lines))

    def _wait_read(self) -> None:
        """Wait until dnsmasq has (re)read the hosts file once more than before."""
        self._reads += 1
        needle = f"read {self.hosts_file}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.log_path.read_text(errors="replace").count(needle) < self._reads:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited ({self.process.returncode}): "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dnsmasq did not read {self.hosts_file} "
                                   f"within {READY_TIMEOUT_S} s (log: {self.log_path})")
            time.sleep(POLL_S)

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Replace the A/AAAA records; returns once dnsmasq answers with the new ones."""
        self._write(records)
        self.process.send_signal(1)  # SIGHUP: re-read the hosts files (and clear its cache)
        self._wait_read()

    @property
    def queries(self) -> int:
        """Queries received so far (from its log)."""
        return self.log_path.read_text(errors="replace").count(" query[")

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, SIGKILL after a while, by its PID). Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
        reap(self.process, self._log)
