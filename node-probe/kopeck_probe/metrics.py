"""Prometheus exposition of the probe's figures and its own health.

The figures are the reports' figures, folded into running totals when each report is cut,
so /metrics and the operator's Allocations agree. A custom collector renders them at scrape
time, so series of ended pods disappear without label bookkeeping.

Per-pod series carry the time of the report they come from (as cAdvisor's do): the totals
change once per report, and a scrape stamped with its own time would put a report's usage
in the wrong scrape interval whenever scrape and report times are close, so a rate over a
few intervals would swing by a whole report.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kopeck.api.report import PodUsage


@dataclass
class _Container:
    name: str = ""
    """'' until the runtime names it; unnamed containers get no series."""
    cpu_seconds: float = 0.0
    memory_working_set: int = 0
    io_read: int = 0
    io_write: int = 0


@dataclass
class _Pod:
    namespace: str
    name: str
    at: float | None = None
    cpu_seconds: float = 0.0
    memory_working_set: int = 0
    memory_byte_seconds: float = 0.0
    net: dict[tuple[str, str, str], int] = field(default_factory=dict)
    containers: dict[str, _Container] = field(default_factory=dict)
    """By container id (by name where the runtime gives no id)."""


@dataclass
class Health:
    """The probe's own counters; the probe loop updates them in place."""

    cycles: int = 0
    cgroup_reads: int = 0
    read_errors: int = 0
    sample_seconds: float = 0.0
    reports_built: int = 0
    threshold_pushes: int = 0
    reports_buffered: int = 0
    reports_dropped: int = 0
    refusals: int = 0
    pushes: int = 0
    push_failures: int = 0
    push_lag_seconds: float = 0.0
    network_errors: int = 0


class ProbeMetrics(Collector):
    """Running per-pod totals and probe health, rendered on each scrape."""

    def __init__(self) -> None:
        self.health = Health()
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()

    def fold(self, pods: Iterable[PodUsage], at: float | None = None) -> None:
        """Add one report's pods to the running totals; ended pods are dropped after it.

        ``at``: the report's end (Unix seconds), the timestamp of the pods' samples."""
        with self._lock:
            for p in pods:
                cur = self._pods.get(p.uid)
                if cur is None:
                    cur = self._pods[p.uid] = _Pod(p.namespace or "", p.name or "")
                cur.at = at
                if p.namespace:
                    cur.namespace, cur.name = p.namespace, p.name or ""
                cur.cpu_seconds += p.cpu_core_seconds
                cur.memory_working_set = p.memory_working_set_bytes
                cur.memory_byte_seconds += p.memory_byte_seconds
                for n in p.network:
                    key = (n.direction, n.traffic_class, n.source)
                    cur.net[key] = cur.net.get(key, 0) + n.bytes
                for c in p.containers:
                    cc = cur.containers.setdefault(c.container_id or c.name, _Container())
                    cc.name = c.name or cc.name
                    cc.cpu_seconds += c.cpu_core_seconds
                    cc.memory_working_set = c.memory_working_set_bytes
                    cc.io_read += c.io_read_bytes
                    cc.io_write += c.io_write_bytes
                if p.ended:
                    del self._pods[p.uid]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Render every family (called by prometheus_client on scrape)."""
        pl = ["namespace", "pod", "uid"]
        cl = [*pl, "container"]
        cpu = CounterMetricFamily(
            "kopeck_pod_cpu_seconds",
            "CPU core-seconds charged to the pod (kernel accounting)",
            labels=pl,
        )
        mem = GaugeMetricFamily(
            "kopeck_pod_memory_working_set_bytes",
            "Pod working set (usage minus inactive file)",
            labels=pl,
        )
        mbs = CounterMetricFamily(
            "kopeck_pod_memory_byte_seconds", "Pod working set integrated over time", labels=pl
        )
        net = CounterMetricFamily(
            "kopeck_pod_network_bytes",
            "Pod network bytes",
            labels=[*pl, "direction", "class", "source"],
        )
        ccpu = CounterMetricFamily(
            "kopeck_container_cpu_seconds", "CPU core-seconds charged to the container", labels=cl
        )
        cmem = GaugeMetricFamily(
            "kopeck_container_memory_working_set_bytes", "Container working set", labels=cl
        )
        cio = CounterMetricFamily(
            "kopeck_container_io_bytes", "Container block I/O bytes", labels=[*cl, "op"]
        )
        with self._lock:
            for uid, p in self._pods.items():
                lv, ts = [p.namespace, p.name, uid], p.at
                cpu.add_metric(lv, p.cpu_seconds, timestamp=ts)
                mem.add_metric(lv, p.memory_working_set, timestamp=ts)
                mbs.add_metric(lv, p.memory_byte_seconds, timestamp=ts)
                for (direction, cls, source), b in p.net.items():
                    net.add_metric([*lv, direction, cls, source], b, timestamp=ts)
                for c in p.containers.values():
                    if not c.name:
                        continue
                    cname = c.name
                    ccpu.add_metric([*lv, cname], c.cpu_seconds, timestamp=ts)
                    cmem.add_metric([*lv, cname], c.memory_working_set, timestamp=ts)
                    cio.add_metric([*lv, cname, "read"], c.io_read, timestamp=ts)
                    cio.add_metric([*lv, cname, "write"], c.io_write, timestamp=ts)
            h = self.health
            yield from (cpu, mem, mbs, net, ccpu, cmem, cio)
        yield CounterMetricFamily("kopeck_probe_cycles", "Sampling cycles run", value=h.cycles)
        yield CounterMetricFamily("kopeck_probe_cgroup_reads", "Cgroup reads", value=h.cgroup_reads)
        yield CounterMetricFamily(
            "kopeck_probe_read_errors",
            "Cgroup reads that failed (not vanished cgroups)",
            value=h.read_errors,
        )
        yield GaugeMetricFamily(
            "kopeck_probe_sample_duration_seconds",
            "Wall time of the last sampling cycle",
            value=h.sample_seconds,
        )
        yield CounterMetricFamily("kopeck_probe_reports", "Reports built", value=h.reports_built)
        yield CounterMetricFamily(
            "kopeck_probe_threshold_pushes",
            "Reports cut early by a threshold crossing",
            value=h.threshold_pushes,
        )
        yield GaugeMetricFamily(
            "kopeck_probe_reports_buffered",
            "Reports waiting for acknowledgement",
            value=h.reports_buffered,
        )
        yield CounterMetricFamily(
            "kopeck_probe_reports_dropped",
            "Reports dropped by the full buffer (each leaves a Gap on the bill)",
            value=h.reports_dropped,
        )
        yield CounterMetricFamily(
            "kopeck_probe_report_refusals",
            "Reports the operator refused (4xx); they stay buffered and are offered again",
            value=h.refusals,
        )
        yield CounterMetricFamily(
            "kopeck_probe_pushes", "Reports acknowledged by the operator", value=h.pushes
        )
        yield CounterMetricFamily(
            "kopeck_probe_push_failures", "Failed pushes", value=h.push_failures
        )
        yield GaugeMetricFamily(
            "kopeck_probe_push_lag_seconds",
            "Age of the oldest unacknowledged report",
            value=h.push_lag_seconds,
        )
        yield CounterMetricFamily(
            "kopeck_probe_network_read_errors",
            "Failed network source reads",
            value=h.network_errors,
        )


def registry_with(metrics: ProbeMetrics, *extra: Collector) -> CollectorRegistry:
    """A registry holding only the probe's collectors (no process defaults double-registered);
    extra: the network sources' own health (see network_health.NetworkHealth)."""
    reg = CollectorRegistry()
    reg.register(metrics)
    for c in extra:
        reg.register(c)
    return reg


def serve(metrics: ProbeMetrics, port: int, addr: str = "0.0.0.0", *extra: Collector) -> None:
    """Serve /metrics on a background thread."""
    start_http_server(port, addr=addr, registry=registry_with(metrics, *extra))
