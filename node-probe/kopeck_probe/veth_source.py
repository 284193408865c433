"""The fallback network source: host-side veth counters re-keyed by the pod cgroup's v2 inode.

A veth is mapped to a pod through a process in the pod's cgroup, its ``/proc/<pid>/ns/net``
and the veths whose peer lives in that namespace; the mapping is cached per pod cgroup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from kopeck_probe.attribution import NetCounters, counter_deltas
from kopeck_probe.ebpf import Counters, VethReader
from kopeck_probe.ebpf_source import net_counters
from kopeck_probe.netns import PodNet, PodNetns


def _values(c: Counters) -> tuple[int, int, int, int]:
    return (c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets)


class VethNetworkSource:
    """Host-side veth counters keyed by the pod cgroup's v2 inode (a CgroupNetworkSource).

    Veths that exist at the first read are charged from then on (their history belongs to
    before the probe); veths that appear later are charged from zero. The mapping is
    refreshed when a new veth shows up and every ``refresh_s`` while pods are unmapped.
    Counts are L2 (14 bytes of Ethernet header per frame more than eBPF's L3) and include
    ARP/ND.
    """

    source: Literal["ebpf", "veth"] = "veth"

    def __init__(
        self,
        cgroup_base: Path,
        prefix: str = "",
        *,
        reader: VethReader | None = None,
        netns: PodNetns | None = None,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader or VethReader()
        self.netns = netns or PodNetns(cgroup_base, prefix)
        self.refresh_s = refresh_s
        self.clock = clock
        self._baseline: dict[str, Counters] | None = None
        self._known: set[str] = set()
        self._next_refresh = 0.0

    def _map_veths(self, pod: PodNet) -> None:
        try:
            pod.veths = tuple(self.reader.host_veths_of_netns(f"/proc/{pod.pid}/ns/net"))
        except OSError:
            pod.netns_ino = None  # the process went: try another one next time

    def read(self) -> Mapping[int, NetCounters]:
        """Cumulative counters of each mapped pod, by its cgroup's v2 inode."""
        counters = self.reader.read()
        now = self.clock()
        if self._baseline is None:
            self._baseline = dict(counters)
        for n in [n for n in self._baseline if n not in counters]:
            del self._baseline[n]  # gone: a veth of that name later is a new one
        new = counters.keys() - self._known
        self._known = set(counters)
        with self.netns.lock:
            unmapped = any(not p.veths for p in self.netns.pods.values())
            if new or now >= self._next_refresh:
                self.netns.refresh(now, self._map_veths)
                for p in self.netns.pods.values():
                    if p.netns_ino is not None and (
                        not p.veths or any(v not in counters for v in p.veths)
                    ):
                        self._map_veths(p)
                unmapped = any(not p.veths for p in self.netns.pods.values())
                self._next_refresh = now + (self.refresh_s if unmapped else 10 * self.refresh_s)
            pods = list(self.netns.pods.values())
        zero = Counters()
        out: dict[int, NetCounters] = {}
        for p in pods:
            total = Counters()
            for v in p.veths:
                cur, base = counters.get(v), self._baseline.get(v, zero)
                if cur is not None:
                    total = total + Counters(*counter_deltas(_values(base), _values(cur)))
            if p.veths:
                out[p.inode] = net_counters(total)
        return out

    @property
    def pods_mapped(self) -> int:
        """Pods whose veth is known (for /metrics)."""
        return sum(1 for p in self.netns.pods.values() if p.veths)

    def close(self) -> None:
        """Close the netlink socket."""
        self.reader.close()
