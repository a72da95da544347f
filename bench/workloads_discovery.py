"""7. Discovery convergence of 2 and 8 nodes on the LAN harness, cold and warm: the
measurements of ``lan_convergence.py`` (which also writes DISCOVERY.md, with 16 hosts), run
here with this suite's number of runs."""

from __future__ import annotations

from common import Bench, row
from lan_convergence import cold, warm

from smartroute.testing.lan import lan_available

HOSTS = (2, 8)
"""Cluster sizes of the discovery workload (the issue's 2 and 8 nodes)."""


def discovery(bench: Bench) -> None:
    """Cold start (N nodes at once) and warm join (one into N-1) for each size in ``HOSTS``."""
    reason = lan_available()
    if reason is not None:
        bench.skip("discovery convergence", reason)
        return
    log_dir = bench.log_dir / "discovery"
    log_dir.mkdir(exist_ok=True)
    for hosts in HOSTS:
        for kind, measure in (("cold", cold), ("warm", warm)):
            samples = [measure(hosts, log_dir) for _ in range(bench.scale.runs)]
            # Same workload and metric names as lan_convergence.py's rows.
            bench.add(*(row(f"discovery {kind} start, {hosts} hosts", "smartroute", metric,
                            [sample[metric] for sample in samples], "s")
                        for metric in samples[0]))
