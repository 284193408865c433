"""Adapters that fit the network readers to the probe core's seams.

- :class:`EbpfNetworkSource` — the eBPF counters (per socket cgroup id) as a
  ``CgroupNetworkSource``; the ids are v2 cgroup inodes, so they map to pods directly
  through ``Attributor.pod_inodes()`` (pod and container cgroups).
- :class:`VethNetworkSource` — the fallback: host-side veth counters re-keyed by the pod
  cgroup's v2 inode. A veth is mapped to a pod through a process in the pod's cgroup, its
  ``/proc/<pid>/ns/net`` and the veths whose peer lives in that namespace; the mapping is
  cached per pod cgroup.
- :class:`FlowSource` — the NetFlow v9 / IPFIX collector as a ``PodFlowSource``: pod IPs
  are leased to the collector's ``PodIPMap`` from the Pod watch (``PodDirectory``) and,
  for pods the watch does not know (``--no-watch``), from the pod's own network namespace.

Both kinds of source reach the report side by side and are told apart by ``source``:
ebpf/veth give the kernel's unclassified totals per direction, flows give the same traffic
by class. They are two measurements of one set of bytes — never add them up; price the
classes from flows and use the kernel totals to check (and bound) them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kopeck.api.report import Direction, NetworkUsage, TrafficClass
from kopeck_probe.attribution import NetCounters
from kopeck_probe.cgroups import Hierarchies, discover
from kopeck_probe.config import (
    allowed_exporters,
    parse_classed_cidr,
    parse_listen,
    parse_located_cidr,
)
from kopeck_probe.ebpf import Counters, EbpfReader, VethReader, bpf_stats, total_cost
from kopeck_probe.ebpf.cost import ProgramCost
from kopeck_probe.flows.classify import Location, NodePlacement, Topology, parse_cidrs
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector, local_addresses
from kopeck_probe.flows.podmap import PodIPMap

log = logging.getLogger(__name__)

KUBEPODS_DIRS = ("kubepods.slice", "kubepods")
"""The pods' parent cgroup under the systemd and the cgroupfs driver."""


def kubepods_v2_dirs(cgroup_base: Path, prefix: str = "") -> list[Path]:
    """The v2 directories the eBPF programs attach at (whichever driver's layout exists)."""
    h = Hierarchies.detect(cgroup_base)
    if h.unified is None:
        return []
    root = h.unified / prefix.strip("/") if prefix.strip("/") else h.unified
    return [root / d for d in KUBEPODS_DIRS if (root / d).is_dir()]


def _net(c: Counters) -> NetCounters:
    return NetCounters(c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets)


# -- eBPF ---------------------------------------------------------------------------------


class EbpfNetworkSource:
    """The eBPF counters of every pod cgroup, keyed by v2 cgroup id (a CgroupNetworkSource).

    Attaches at the kubepods directory of each driver layout present. When none exists
    yet (probe started before the kubelet made it), it attaches on the first read that
    finds one; a refusal then is logged once and retried every ``retry_s``.
    """

    source: Literal["ebpf", "veth"] = "ebpf"

    def __init__(
        self,
        cgroup_base: Path,
        prefix: str = "",
        *,
        max_entries: int = 8192,
        opener: Callable[[Path], EbpfReader] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        self.cgroup_base, self.prefix = cgroup_base, prefix
        self._open = opener or (lambda p: EbpfReader(p, max_entries=max_entries))
        self.readers: list[EbpfReader] = []
        self.retry_s = retry_s
        self._next_try = 0.0
        self._warned = False
        self._lock = threading.Lock()
        self.cgroups_counted = 0
        self.missed = (0, 0)
        self.cost: ProgramCost | None = None
        """The programs' cost over the last sampled window (see sample_cost_forever)."""
        self.cost_total = ProgramCost(0, 0)
        """Sum of every sampled window: runs and run time the kernel measured."""
        if Hierarchies.detect(cgroup_base).unified is None:
            raise OSError(
                errno.EOPNOTSUPP, f"no cgroup v2 hierarchy under {cgroup_base} to attach at"
            )
        self.attach()  # raises OSError (BpfError) when the kernel refuses: caller falls back

    def attach(self) -> bool:
        """Attach at each kubepods dir not yet covered; False when none exists yet."""
        with self._lock:
            have = {r.cgroup_parent for r in self.readers}
            for d in kubepods_v2_dirs(self.cgroup_base, self.prefix):
                if d not in have:
                    self.readers.append(self._open(d))
            if not self.readers and not self._warned:
                log.warning(
                    "no kubepods cgroup under %s (prefix %r) yet: eBPF counters attach when "
                    "it appears",
                    self.cgroup_base,
                    self.prefix,
                )
                self._warned = True
            return bool(self.readers)

    def read(self) -> Mapping[int, NetCounters]:
        """Cumulative counters by cgroup id, over every attached reader."""
        if not self.readers and time.monotonic() >= self._next_try:
            # Looking for the directory is a stat per read; only a refusal waits retry_s.
            try:
                self.attach()
            except OSError:
                self._next_try = time.monotonic() + self.retry_s
                log.exception("attaching eBPF counters failed; retrying in %.0fs", self.retry_s)
        out: dict[int, NetCounters] = {}
        missed_b = missed_p = 0
        for r in self.readers:
            out.update((k, _net(c)) for k, c in r.read().items())
            b, p = r.missed()
            missed_b, missed_p = missed_b + b, missed_p + p
        self.cgroups_counted = len(out)
        self.missed = (missed_b, missed_p)
        return out

    def sample_cost(self, window_s: float) -> ProgramCost:
        """Turn the kernel's BPF run-time stats on for window_s and measure the programs."""

        def now() -> ProgramCost:
            return total_cost(s for r in list(self.readers) for s in r.run_stats())

        with bpf_stats():
            before = now()
            time.sleep(window_s)
            after = now()
        cost = after - before
        if cost.run_cnt:
            self.cost = cost
        self.cost_total = ProgramCost(
            self.cost_total.run_time_ns + cost.run_time_ns, self.cost_total.run_cnt + cost.run_cnt
        )
        return cost

    def sample_cost_forever(self, stop: threading.Event, every_s: float, window_s: float) -> None:
        """Measure the programs' cost for window_s every every_s (stats cost two clock reads
        per run, so they are on only during the windows)."""
        while not stop.wait(max(0.0, every_s - window_s)):
            if not self.readers:
                continue
            try:
                self.sample_cost(min(window_s, every_s))
            except (OSError, RuntimeError) as exc:  # BpfError; RuntimeError: closed at exit
                if not stop.is_set():
                    log.warning("cannot measure the eBPF programs' cost: %s", exc)
                return

    def close(self) -> None:
        """Detach and close every reader."""
        with self._lock:
            for r in self.readers:
                r.close()
            self.readers.clear()


# -- pods' network namespaces ---------------------------------------------------------


@dataclass
class PodNet:
    """A pod cgroup's network namespace, as found through one of its processes."""

    uid: str
    relpath: str
    inode: int
    netns_ino: int | None = None
    pid: int | None = None
    veths: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    first_seen: float = 0.0


def _own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


class PodNetns:
    """Pod cgroups -> a process in each -> its network namespace; cached per pod cgroup.

    A pod whose process is still in the host's namespace (host network, or a runtime
    that has not entered the pod's yet) is looked at again on the next refresh.
    """

    def __init__(self, cgroup_base: Path, prefix: str = "") -> None:
        h = Hierarchies.detect(cgroup_base)
        self.walk_root = h.walk_root()
        self.inode_root = h.unified or self.walk_root
        self.procs_roots = [r for r in (h.unified, h.cpuacct, h.memory) if r is not None]
        self.prefix = prefix
        self.pods: dict[str, PodNet] = {}
        self._host_netns = _own_netns()
        self.lock = threading.Lock()

    def refresh(self, now: float, resolve: Callable[[PodNet], None] | None = None) -> bool:
        """Re-walk the pods; resolve the namespaces not yet known. True when anything
        changed (a pod came, went or got its namespace)."""
        found = {p.relpath: p.uid for p in discover(self.walk_root, self.prefix)}
        changed = False
        for rel in [r for r in self.pods if r not in found]:
            del self.pods[rel]
            changed = True
        for rel, uid in found.items():
            pod = self.pods.get(rel)
            if pod is None:
                try:
                    ino = os.stat(self.inode_root / rel).st_ino
                except OSError:
                    continue
                pod = self.pods[rel] = PodNet(uid, rel, ino, first_seen=now)
                changed = True
            if pod.netns_ino is None and self._resolve_netns(pod):
                if resolve is not None:
                    resolve(pod)
                changed = True
        return changed

    def _pids(self, rel: str) -> Iterator[int]:
        for root in self.procs_roots:
            base = root / rel
            dirs = [base]
            with contextlib.suppress(OSError), os.scandir(base) as it:
                dirs += [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
            for d in dirs:
                with contextlib.suppress(OSError):
                    for line in (d / "cgroup.procs").read_text().split():
                        yield int(line)

    def _resolve_netns(self, pod: PodNet) -> bool:
        for pid in self._pids(pod.relpath):
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino == self._host_netns:
                continue
            pod.netns_ino, pod.pid = ino, pid
            return True
        return False


def parse_fib_trie_local(text: str) -> list[str]:
    """This namespace's own IPv4 addresses from /proc/<pid>/net/fib_trie ('/32 host LOCAL')."""
    out: list[str] = []
    last = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--") or s.startswith("+--"):
            last = s[3:].strip().split()[0]
        elif s.startswith("/32 host LOCAL") and last and last not in out:
            out.append(last)
    return [a for a in out if not ipaddress.ip_address(a).is_loopback]


def parse_if_inet6(text: str) -> list[str]:
    """Global IPv6 addresses from /proc/<pid>/net/if_inet6 (scope 0), loopback excluded."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and int(parts[3], 16) == 0 and parts[5] != "lo":
            out.append(str(ipaddress.IPv6Address(int(parts[0], 16))))
    return out


def netns_addresses(pid: int) -> tuple[str, ...]:
    """The addresses a process's network namespace holds (its pod IPs), read via /proc."""
    ips: list[str] = []
    with contextlib.suppress(OSError):
        ips += parse_fib_trie_local(Path(f"/proc/{pid}/net/fib_trie").read_text())
    with contextlib.suppress(OSError):
        ips += parse_if_inet6(Path(f"/proc/{pid}/net/if_inet6").read_text())
    return tuple(ips)


# -- veth fallback ------------------------------------------------------------------------


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
                    total = total + Counters(
                        cur.tx_bytes - base.tx_bytes,
                        cur.rx_bytes - base.rx_bytes,
                        cur.tx_packets - base.tx_packets,
                        cur.rx_packets - base.rx_packets,
                    )
            if p.veths:
                out[p.inode] = _net(total)
        return out

    @property
    def pods_mapped(self) -> int:
        """Pods whose veth is known (for /metrics)."""
        return sum(1 for p in self.netns.pods.values() if p.veths)

    def close(self) -> None:
        """Close the netlink socket."""
        self.reader.close()


# -- flows ------------------------------------------------------------------------------


def build_topology(
    node: str,
    zone: str | None,
    region: str | None,
    pod_cidrs: Sequence[str] = (),
    node_cidrs: Sequence[str] = (),
    internal_cidrs: Sequence[str] = (),
    node_addresses: Iterable[str] = (),
) -> Topology:
    """This node's placement and the configured CIDRs, as the flows classifier needs them.

    node_cidrs without a location are taken to be in this node's zone and region; with a
    zone but no region, in this node's region.
    """
    here = Location(zone or None, region or None)
    addrs = tuple(
        a
        for a in (ipaddress.ip_address(x) for x in sorted(set(node_addresses)))
        if not a.is_loopback and not a.is_link_local
    )
    located = []
    for v in node_cidrs:
        cidr, z, r = parse_located_cidr(v)
        loc = here if z is None and r is None else Location(z, r or here.region)
        located.append((parse_cidrs([cidr])[0], loc))
    classed = []
    for v in internal_cidrs:
        cidr, cls = parse_classed_cidr(v)
        classed.append((parse_cidrs([cidr])[0], cls))
    return Topology(
        local=NodePlacement(node, here, addrs, parse_cidrs(pod_cidrs)),
        cidr_locations=tuple(located),
        cidr_classes=tuple(classed),
    )


@dataclass
class _Held:
    uid: str
    since: float
    released: float | None = None


@dataclass
class FlowSource:
    """The flow collector as a PodFlowSource: deltas per pod by class and direction.

    A refresher thread leases pod IPs to the collector every ``refresh_s`` (flows are
    looked up at their own time, so a lease must exist before the flow's datagram
    arrives). IPs come from ``directory_ips`` (the Pod watch) and, for pods it does not
    list, from the pod's network namespace when ``netns`` is given.
    """

    collector: FlowCollector
    pods: PodIPMap
    directory_ips: Callable[[], Mapping[str, str]] = dict
    netns: PodNetns | None = None
    refresh_s: float = 1.0
    forget_after_s: float = 600.0
    """A pod gone this long has its counters dropped (memory stays bounded)."""
    clock: Callable[[], float] = time.time
    _held: dict[str, _Held] = field(default_factory=dict)
    _last: dict[tuple[str, TrafficClass, Direction], tuple[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _refreshes: int = 0

    def start(self) -> None:
        """Bind the collector and start leasing pod IPs."""
        self.refresh()
        self.collector.start()
        self._thread = threading.Thread(target=self._loop, name="flow-leases", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing pod IPs for the flow collector")

    def current_ips(self, now: float) -> dict[str, str]:
        """IP -> pod uid now: the watch's pods, then pods found in their own namespace."""
        out = dict(self.directory_ips())
        if self.netns is not None:
            with self.netns.lock:
                self.netns.refresh(now)
                for p in self.netns.pods.values():
                    if not p.ips and p.pid is not None:  # the CNI may add it after start
                        p.ips = netns_addresses(p.pid)
                    for ip in p.ips:
                        out.setdefault(ip, p.uid)
        return out

    def refresh(self) -> None:
        """Lease new pod IPs, release those no longer held."""
        now = self.clock()
        ips = self.current_ips(now)
        # A pod seen at the first look held its IP before we started; later ones are
        # dated back one refresh (plus the map's slack) to cover flows that began at once.
        since = 0.0 if self._refreshes == 0 else now - self.refresh_s
        for ip, uid in ips.items():
            held = self._held.get(ip)
            if held is not None and held.uid == uid and held.released is None:
                continue
            if held is not None and held.released is None:
                self.pods.release(ip, held.uid, now)
            self.pods.assign(ip, uid, since)
            self._held[ip] = _Held(uid, since)
        for ip, held in self._held.items():
            if ip not in ips and held.released is None:
                self.pods.release(ip, held.uid, now)
                held.released = now
        self._refreshes += 1
        if self._refreshes % 60 == 0:
            self.pods.prune(now)

    def take(self) -> Mapping[str, Sequence[NetworkUsage]]:
        """What the collector counted since the last call, by pod uid."""
        out: dict[str, list[NetworkUsage]] = {}
        for uid, totals in self.collector.totals().items():
            for (cls, direction), t in totals.by_class.items():
                key = (uid, cls, direction)
                b0, p0 = self._last.get(key, (0, 0))
                db, dp = t.bytes - b0, t.packets - p0
                if db < 0 or dp < 0:  # forgotten and counted afresh
                    db, dp = t.bytes, t.packets
                self._last[key] = (t.bytes, t.packets)
                if db or dp:
                    out.setdefault(uid, []).append(
                        NetworkUsage(
                            traffic_class=cls,
                            direction=direction,
                            bytes=db,
                            packets=dp,
                            source="flows",
                        )
                    )
        self._forget_gone()
        return out

    def _forget_gone(self) -> None:
        now = self.clock()
        live = {h.uid for h in self._held.values() if h.released is None}
        gone = {
            h.uid
            for h in self._held.values()
            if h.released is not None and now - h.released > self.forget_after_s
        } - live
        for ip in [ip for ip, h in self._held.items() if h.uid in gone]:
            del self._held[ip]
        for uid in gone:
            self.collector.forget(uid)
            for key in [k for k in self._last if k[0] == uid]:
                del self._last[key]

    def stop(self) -> None:
        """Stop the refresher and the collector (what was received is counted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.collector.stop()


def open_flow_source(
    listen: str,
    allow: Sequence[str] | None,
    topology: Topology,
    directory_ips: Callable[[], Mapping[str, str]],
    netns: PodNetns | None,
) -> FlowSource:
    """A started FlowSource on listen (HOST:PORT); allow None = this node and loopback."""
    host, port = parse_listen(listen)
    allowed = None if allow is None else allowed_exporters(tuple(allow))
    pods = PodIPMap()
    collector = FlowCollector(
        pods, topology, CollectorConfig(host=host, port=port, allowed_exporters=allowed)
    )
    src = FlowSource(collector, pods, directory_ips, netns)
    src.start()
    return src


def node_addresses() -> frozenset[str]:
    """This node's addresses (for the topology and the default exporter allow-list)."""
    return local_addresses()


# -- /metrics -----------------------------------------------------------------------------


class NetworkHealth(Collector):
    """The network sources' own figures: eBPF cost and misses, veth mapping, flow drops."""

    def __init__(
        self,
        network: EbpfNetworkSource | VethNetworkSource | None,
        flows: FlowSource | None,
    ) -> None:
        self.network = network
        self.flows = flows

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Render the families (prometheus_client calls this on scrape)."""
        n = self.network
        info = GaugeMetricFamily(
            "kopeck_probe_network_source", "Which reader counts pod bytes", labels=["source"]
        )
        info.add_metric([n.source if n else "off"], 1)
        yield info
        if isinstance(n, EbpfNetworkSource):
            yield GaugeMetricFamily(
                "kopeck_probe_ebpf_attached", "eBPF attachment points", value=len(n.readers)
            )
            yield GaugeMetricFamily(
                "kopeck_probe_ebpf_cgroups", "Cgroups in the eBPF map", value=n.cgroups_counted
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_missed_bytes",
                "Bytes not counted per cgroup because the map was full",
                value=n.missed[0],
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_missed_packets",
                "Packets not counted per cgroup because the map was full",
                value=n.missed[1],
            )
            if n.cost is not None and n.cost.ns_per_packet is not None:
                yield GaugeMetricFamily(
                    "kopeck_probe_ebpf_ns_per_packet",
                    "Mean run time of the counter program per packet (last sampled window)",
                    value=n.cost.ns_per_packet,
                )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_sampled_runs",
                "Program runs measured in the cost windows",
                value=n.cost_total.run_cnt,
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_sampled_run_seconds",
                "Program run time measured in the cost windows",
                value=n.cost_total.run_time_ns / 1e9,
            )
        elif isinstance(n, VethNetworkSource):
            yield GaugeMetricFamily(
                "kopeck_probe_veth_pods_mapped", "Pods whose veth is known", value=n.pods_mapped
            )
        if self.flows is not None:
            s = self.flows.collector.stats()
            yield CounterMetricFamily(
                "kopeck_probe_flow_datagrams", "Flow datagrams received", value=s.datagrams
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_not_allowed",
                "Flow datagrams from exporters not on the allow-list",
                value=s.not_allowed,
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_records", "Flow records decoded", value=s.records
            )
            drops = CounterMetricFamily(
                "kopeck_probe_flow_drops", "Dropped datagrams/sets by reason", labels=["reason"]
            )
            for reason, count in sorted(s.drops.items()):
                drops.add_metric([reason], count)
            yield drops
            yield CounterMetricFamily(
                "kopeck_probe_flow_unattributed_bytes",
                "Flow bytes with no pod of this node at either end",
                value=s.unattributed.bytes,
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_internal_errors",
                "Flow datagrams or batches that hit a collector bug",
                value=s.internal_errors,
            )
