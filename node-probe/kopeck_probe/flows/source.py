"""The NetFlow v9 / IPFIX collector as the probe core's ``PodFlowSource``, and its topology.

Pod IPs are leased to the collector's ``PodIPMap`` from the Pod watch (``PodDirectory``)
and, for pods the watch does not know (``--no-watch``), from the pod's own network
namespace. Flows give the kernel's bytes by class: price the classes from flows and use
the eBPF/veth totals to check them, never add the two.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kopeck.api.report import Direction, NetworkUsage, TrafficClass
from kopeck_probe.attribution import counter_deltas
from kopeck_probe.config import (
    ProbeConfig,
    exporter_allow_list,
    parse_classed_cidr,
    parse_listen,
    parse_located_cidr,
)
from kopeck_probe.flows.classify import Location, NodePlacement, Topology, parse_cidrs
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector, local_addresses
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.netns import PodNetns, netns_addresses

log = logging.getLogger(__name__)


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
                # lower than before: the pod was forgotten and is counted afresh
                db, dp = counter_deltas(self._last.get(key), (t.bytes, t.packets))
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


def collector_config(
    listen: str, allow: Sequence[str] | None, settings: ProbeConfig | None = None
) -> CollectorConfig:
    """The collector's settings from the probe's: listen HOST:PORT (port 2055 when not
    given), allow-list entries ADDRESS|CIDR[@DOMAIN] (None: this node and loopback), and
    the stream, template and byte bounds of ``settings`` (defaults when None)."""
    host, port = parse_listen(listen)
    allowed = None if allow is None else exporter_allow_list(tuple(allow))
    s = settings
    bounds = (
        {}
        if s is None
        else {
            "max_streams": s.flows_max_streams,
            "max_streams_per_exporter": s.flows_streams_per_exporter,
            "max_templates_per_stream": s.flows_templates_per_stream,
            "max_fields_per_template": s.flows_template_fields,
            "max_template_bytes_per_exporter": s.flows_template_bytes_per_exporter,
            "max_template_bytes": s.flows_template_bytes,
        }
    )
    return CollectorConfig(
        host=host,
        port=port,
        allowed_exporters=None if allowed is None else allowed.any_domain,
        allowed_domains=None if allowed is None else allowed.domains,
        **bounds,
    )


def open_flow_source(
    listen: str,
    allow: Sequence[str] | None,
    topology: Topology,
    directory_ips: Callable[[], Mapping[str, str]],
    netns: PodNetns | None,
    settings: ProbeConfig | None = None,
) -> FlowSource:
    """A started FlowSource on listen (HOST:PORT); allow None = this node and loopback;
    ``settings``: the probe config whose flows_* bounds the collector takes."""
    pods = PodIPMap()
    collector = FlowCollector(pods, topology, collector_config(listen, allow, settings))
    src = FlowSource(collector, pods, directory_ips, netns)
    src.start()
    return src


def node_addresses() -> frozenset[str]:
    """This node's addresses (for the topology and the default exporter allow-list)."""
    return local_addresses()
