"""The probe loop: sample cgroups every second, cut a report every interval or on a crossing.

Sampling and reporting are decoupled on purpose: a pod that lives 3 s is read three times
and charged up to its last read, although reports go out every 5 s. A threshold crossing
cuts the report at once (trigger "threshold") so no spike waits for the interval.
"""

from __future__ import annotations

import datetime as dt
import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from kopeck.api.report import NodeInfo, ProbeReport, ThresholdEvent
from kopeck_probe import cgroups
from kopeck_probe.attribution import (
    Attributor,
    CgroupNetworkSource,
    ContainerObservation,
    NetworkAttributor,
    PodFlowSource,
    PodObservation,
    ThresholdTracker,
    merge_resources,
    threshold_conditions,
)
from kopeck_probe.cgroups import (
    CgroupLimits,
    CgroupReader,
    CgroupStats,
    CgroupVanished,
    ContainerCgroup,
    Hierarchies,
)
from kopeck_probe.config import ProbeConfig
from kopeck_probe.metrics import ProbeMetrics
from kopeck_probe.pods import PodDirectory
from kopeck_probe.push import Pusher, ReportBuffer, Transport
from kopeck_probe.report import PodLabels, ReportContext, build_report, merge_network

log = logging.getLogger(__name__)

CLOCK_STEP_TOLERANCE_S = 1.0
"""Wall and monotonic interval lengths further apart than this mean the wall clock stepped."""


def raise_fd_limit() -> None:
    """Up to eight files per pod cgroup stay open: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Probe:
    """One node's probe: readers -> attribution -> report -> buffer (-> pusher thread)."""

    def __init__(
        self,
        cfg: ProbeConfig,
        transport: Transport | None = None,
        network: CgroupNetworkSource | None = None,
        flows: PodFlowSource | None = None,
        directory: PodDirectory | None = None,
        boot_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        started_ticks: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.reader = CgroupReader(Hierarchies.detect(cfg.cgroup_base), cfg.prefix)
        self.boot_id = boot_id or cgroups.boot_id()
        self.buffer = ReportBuffer(cfg.wal_path, self.boot_id, cfg.wal_max_reports)
        saved = self.buffer.load_state()
        self.attributor = Attributor(baselines=saved.get("cgroups", {}) if saved else None)
        # The probe's start (clock ticks after boot): cgroups whose processes all started
        # since are charged from zero though the first look finds them (see _first_look).
        self.started_ticks = (
            started_ticks if started_ticks is not None else cgroups.process_start_ticks()
        )
        self.network = network
        self.net_attr = NetworkAttributor(network.source if network else "ebpf")
        self.flows = flows
        self.directory = directory or PodDirectory()
        self.thresholds = ThresholdTracker()
        self.metrics = ProbeMetrics()
        self.pusher = Pusher(self.buffer, transport) if transport is not None else None
        cpus, mem = cgroups.node_capacity()
        self.node_info = NodeInfo(cpu_cores=cpus, memory_bytes=mem)
        self._inodes: dict[str, int] = {}
        self._limits: dict[str, CgroupLimits] = {}
        self._cycle = 0
        self._interval_start = dt.datetime.now(dt.UTC)
        self._interval_mono = self.clock()
        self.cpu_seconds_sampling = 0.0
        self._oldest_buffered: float | None = None
        raise_fd_limit()

    # -- one sampling cycle ----------------------------------------------------------
    def _read(self, relpath: str, with_io: bool = True, memory_stat: bool = True) -> CgroupStats:
        ino = self._inodes.get(relpath)
        if ino is None:
            ino = self._inodes[relpath] = self.reader.inode(relpath)
        return self.reader.read(relpath, ino, with_io, memory_stat)

    def sample(self, full: bool = True) -> list[ThresholdEvent]:
        """Read every pod cgroup once and fold it in; return thresholds newly crossed.

        Light cycles (between reports) read each pod's CPU and memory usage counters only,
        which is what billing and short-lived pods need each second: pod counters include
        their containers', so nothing is lost. A full cycle (each report) also reads each
        pod's memory.stat, so the working set is exact at every report, and its containers
        (listed again only when needed: see CgroupReader.discover). Between two memory.stat
        reads the working set is usage minus the last inactive_file (the bound is in
        cgroups.MEMORY_STAT_SLACK_BYTES). Pod I/O is not read: reports carry it per
        container. With 1,000 pods of one container each (bench/probe_cost.py) a light
        cycle went from 31 to ~10 ms of CPU and a full one from 76 to ~40.
        """
        cpu0 = time.thread_time()
        t = self.clock()
        reader = self.reader
        read = reader.read
        inodes, limits = self._inodes, self._limits
        pods = reader.discover(with_containers=full)
        first_look = self.attributor.first_look and self.started_ticks is not None
        reread_limits = self._cycle % self.cfg.limits_every_cycles == 0
        observations: list[PodObservation] = []
        live: set[str] = set()
        for pod in pods:
            rel = pod.relpath
            stats: CgroupStats | None
            unreadable = False
            try:
                ino = inodes.get(rel)
                if ino is None:
                    ino = inodes[rel] = reader.inode(rel)
                stats = read(rel, ino, False, full)
                if reread_limits or rel not in limits:
                    limits[rel] = reader.limits(rel)
            except CgroupVanished:
                stats = None
            except (OSError, ValueError, KeyError):
                stats, unreadable = None, True
            ctrs: tuple[ContainerObservation, ...] = ()
            if full:
                live.add(rel)
                if stats is not None and pod.containers:
                    ctrs = tuple(self._read_container(c, live) for c in pod.containers)
                    if any(c.stats is None and not c.unreadable for c in ctrs):
                        # One vanished: perhaps replaced by one the directory's link
                        # count did not show (see CgroupReader.discover). Look now.
                        seen = {c.relpath for c in pod.containers}
                        ctrs += tuple(
                            self._read_container(c, live)
                            for c in reader.relist(pod).containers
                            if c.relpath not in seen
                        )
            observations.append(
                PodObservation(
                    pod.uid,
                    pod.qos,
                    rel,
                    stats,
                    ctrs,
                    limits.get(rel),
                    unreadable,
                    containers_read=full,
                )
            )
            if first_look and stats is not None:
                self._first_look(observations[-1])
        self.attributor.observe(t, observations)
        if full:  # light cycles do not see containers: tidy up on full ones only
            for cache in (self._inodes, self._limits):
                for rel in [r for r in cache if r not in live]:
                    del cache[rel]
            self.reader.release(live)
        if self.network is not None:
            try:
                self.net_attr.observe(self.network.read(), self.attributor.pod_inodes())
            except Exception:
                self.metrics.health.network_errors += 1
                log.exception("network source %s failed", self.network.source)
        events = self._thresholds()
        self._cycle += 1
        h = self.metrics.health
        h.cycles += 1
        h.cgroup_reads = self.reader.reads
        h.read_errors = self.reader.errors
        h.sample_seconds = self.clock() - t
        self.cpu_seconds_sampling += time.thread_time() - cpu0
        return events

    def _first_look(self, obs: PodObservation) -> None:
        """Mark what was born since this process started, among what the first look (with no
        saved state) finds: a pod whose processes all started after the probe did arrived
        while it was starting up (importing, loading eBPF), not before it. A pod with no
        process left tells nothing and is taken as history, as before."""
        started = self.started_ticks
        assert started is not None

        def born(relpath: str) -> bool:
            oldest = self.reader.oldest_task_start(relpath)
            return oldest is not None and oldest >= started

        obs.born_since_start = born(obs.relpath)
        for c in obs.containers:
            # A container is no older than its pod; in an old pod it may be new (a restart).
            c.born_since_start = obs.born_since_start or born(c.relpath)

    def _read_container(self, c: ContainerCgroup, live: set[str]) -> ContainerObservation:
        live.add(c.relpath)
        try:
            stats = self._read(c.relpath, with_io=True, memory_stat=False)
            return ContainerObservation(c.container_id, c.relpath, stats)
        except CgroupVanished:
            return ContainerObservation(c.container_id, c.relpath, None)
        except (OSError, ValueError, KeyError):
            return ContainerObservation(c.container_id, c.relpath, None, unreadable=True)

    def _thresholds(self) -> list[ThresholdEvent]:
        rates = self.attributor.cpu_rates()
        ws = self.attributor.working_sets()
        limits = self.attributor.limits()
        events: list[ThresholdEvent] = []
        directory = self.directory.snapshot()
        for uid, cg_limits in limits.items():
            meta = directory.get(uid)
            if (
                meta is None
                and cg_limits.cpu_limit_cores is None
                and cg_limits.memory_limit_bytes is None
            ):
                if self.thresholds.active(uid):
                    events.extend(self.thresholds.update(uid, {}))
                continue  # nothing to compare with
            res = merge_resources(meta.resources if meta else None, cg_limits)
            conds = threshold_conditions(
                rates.get(uid), ws.get(uid), res, self.cfg.high_fraction, self.cfg.idle_fraction
            )
            events.extend(self.thresholds.update(uid, conds))
        self.thresholds.retain(limits)
        return events

    # -- reports -----------------------------------------------------------------------
    def cut_report(
        self,
        trigger: Literal["periodic", "threshold"] = "periodic",
        events: list[ThresholdEvent] | None = None,
    ) -> ProbeReport:
        """Close the interval: build the report, buffer it with the counters, wake the pusher."""
        intervals = self.attributor.cut()
        network = merge_network(self.net_attr.cut(), self.flows.take() if self.flows else {})
        directory = self.directory.snapshot()
        labels: dict[str, PodLabels] = {uid: m.labels() for uid, m in directory.items()}
        start, end = self._interval_start, dt.datetime.now(dt.UTC)
        mono = self.clock()
        elapsed = mono - self._interval_mono
        self._interval_start, self._interval_mono = end, mono
        # Sent only when the wall clock stepped, so an operator of the previous version
        # (which refuses unknown fields) still takes every ordinary report.
        stepped = abs((end - start).total_seconds() - elapsed) > CLOCK_STEP_TOLERANCE_S

        def build(seq: int, gaps: list[Any]) -> ProbeReport:
            ctx = ReportContext(
                self.cfg.node_name, self.boot_id, seq, start, end, trigger, self.node_info,
                elapsed if stepped else None,
            )
            return build_report(ctx, intervals, labels, network, events or (), gaps)

        report = self.buffer.append(build, state={"cgroups": self.attributor.state()})
        self.directory.forget_deleted({p.uid for p in intervals if not p.ended})
        self.metrics.fold(report.pods, at=end.timestamp())
        h = self.metrics.health
        h.reports_built += 1
        h.threshold_pushes += int(trigger == "threshold")
        self.refresh_push_health()
        if self.pusher is not None:
            self.pusher.wake()
        return report

    def refresh_push_health(self) -> None:
        """Copy buffer and pusher counters into the health metrics."""
        h = self.metrics.health
        h.reports_buffered = self.buffer.count()
        self._oldest_buffered = self.buffer.oldest_created()
        self._tick_push_health()

    def _tick_push_health(self) -> None:
        """Between reports, ask SQLite only while the pusher has something to send: the
        buffer changes through cut_report (which refreshes) and the pusher's acks only.
        Saves two queries a second (~1 ms of CPU at 1,000 pods)."""
        h = self.metrics.health
        if self.pusher is not None and h.reports_buffered > 0:
            h.reports_buffered = self.buffer.count()
            self._oldest_buffered = self.buffer.oldest_created()
        oldest = self._oldest_buffered
        h.push_lag_seconds = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        h.reports_dropped = self.buffer.dropped
        if self.pusher is not None:
            h.pushes = self.pusher.stats.sent
            h.push_failures = self.pusher.stats.failures
            h.refusals = self.pusher.stats.refused

    # -- main loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Sample and report until stop is set; a last report is cut on the way out."""
        push_thread: threading.Thread | None = None
        if self.pusher is not None:
            push_thread = threading.Thread(
                target=self.pusher.run, args=(stop,), name="push", daemon=True
            )
            push_thread.start()
        next_sample = self.clock()
        next_report = next_sample + self.cfg.report_interval_s
        self.refresh_push_health()  # reports left from an earlier run count from the start
        try:
            while not stop.is_set():
                due = self.clock() >= next_report - 1e-3
                # The first look must see containers too, or they would be taken for new.
                events = self.sample(full=due or self._cycle == 0)
                now = self.clock()
                if events:
                    self.cut_report("threshold", events)
                    next_report = now + self.cfg.report_interval_s
                elif due:
                    self.cut_report("periodic")
                    next_report = max(
                        next_report + self.cfg.report_interval_s,
                        now + 0.5 * self.cfg.sample_interval_s,
                    )
                else:
                    self._tick_push_health()
                next_sample += self.cfg.sample_interval_s
                if next_sample < self.clock():  # fell behind: skip, do not burst
                    next_sample = self.clock() + self.cfg.sample_interval_s
                stop.wait(max(0.0, next_sample - self.clock()))
            self.sample()
            self.cut_report("periodic")
        finally:
            if self.pusher is not None and push_thread is not None:
                self.pusher.wake()
                push_thread.join(timeout=15)
            if self.pusher is not None and not (push_thread and push_thread.is_alive()):
                try:
                    self.pusher.drain()  # what is left stays buffered for the next start
                except Exception:
                    log.exception("last push before exit failed")
            self.reader.release()
            self.buffer.close()
