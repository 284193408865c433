"""Kernel facts -> pod usage: pure functions and state machines, no I/O.

The sampler hands in what it read from cgroups (cumulative counters, working sets) every
sample cycle (default 1 s); this module turns them into per-interval charges:

* counters become deltas; a counter that goes down, or a cgroup whose inode changed
  (re-created), is a reset: the new value is charged, never a negative delta;
* a cgroup that disappears is charged up to its last read and reported once with
  ``ended`` — sampling every second while reporting every interval bounds what a
  short-lived pod can lose to one sample period;
* memory is integrated over the samples (trapezoids) into byte-seconds, with the peak;
* threshold crossings (above 90% of a limit, or idle below 5% of both requests) are
  detected on the rising edge, so a pod over its limit triggers one push, not one a second.

Restart safety: the last counters are exported with each report (``state()``) and fed
back on restart, so usage between the last report and a crash is charged after restart.
With no saved state, the first look takes what it finds as history charged before the
probe, except cgroups born after the probe process started (``born_since_start``): a pod
that arrives while the probe is still starting is charged from zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kopeck.api.report import NetworkUsage, ThresholdEvent, ThresholdKind
from kopeck_probe.cgroups import CgroupLimits, CgroupStats, Qos

NS_PER_S = 1_000_000_000


def counter_deltas(prev: Sequence[int] | None, cur: Sequence[int]) -> tuple[int, ...]:
    """What cumulative counters that restart together (one cgroup's, one map entry's) added
    since prev. Any of them lower than before means all restarted at 0: then the new values
    are the deltas, never a negative one. No prev: counted from zero."""
    if prev is None or any(c < p for p, c in zip(prev, cur, strict=True)):
        return tuple(cur)
    return tuple(c - p for p, c in zip(prev, cur, strict=True))


def counter_delta(prev: int | None, cur: int) -> int:
    """What one cumulative counter added since prev (see counter_deltas)."""
    return counter_deltas(None if prev is None else (prev,), (cur,))[0]


@dataclass
class Accumulated:
    """One cgroup's charges within the current report interval."""

    cpu_ns: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    memory_byte_seconds: float = 0.0
    memory_peak_bytes: int = 0
    memory_last_bytes: int = 0
    seconds: float = 0.0


@dataclass
class Tracked:
    """A cgroup's last cumulative read and what it has been charged this interval."""

    inode: int | None = None
    cpu_ns: int | None = None
    io_read: int | None = None
    io_write: int | None = None
    last_t: float | None = None
    last_ws: int | None = None
    cpu_rate_cores: float | None = None
    acc: Accumulated = field(default_factory=Accumulated)
    ended: bool = False

    def observe(self, t: float, stats: CgroupStats, from_zero: bool) -> None:
        """Fold one read in; from_zero charges the whole counter (a cgroup born since)."""
        recreated = self.inode is not None and self.inode != stats.inode
        fresh = self.inode is None or recreated
        if fresh and not from_zero and not recreated:
            # Existing before we first looked: its history was charged by someone else.
            self.inode = stats.inode
            self.cpu_ns = stats.cpu_usage_ns
            self.io_read, self.io_write = stats.io_read_bytes, stats.io_write_bytes
            self._memory(t, stats.memory_working_set_bytes)
            return
        prev_cpu = None if fresh else self.cpu_ns
        if stats.cpu_usage_ns is not None:
            d = counter_delta(prev_cpu, stats.cpu_usage_ns)
            self.acc.cpu_ns += d
            if not fresh and self.last_t is not None and t > self.last_t:
                self.cpu_rate_cores = d / NS_PER_S / (t - self.last_t)
            self.cpu_ns = stats.cpu_usage_ns
        if stats.io_read_bytes is not None:
            self.acc.io_read_bytes += counter_delta(
                None if fresh else self.io_read, stats.io_read_bytes
            )
            self.io_read = stats.io_read_bytes
        if stats.io_write_bytes is not None:
            self.acc.io_write_bytes += counter_delta(
                None if fresh else self.io_write, stats.io_write_bytes
            )
            self.io_write = stats.io_write_bytes
        self.inode = stats.inode
        self.ended = False
        self._memory(t, stats.memory_working_set_bytes)

    def _memory(self, t: float, ws: int | None) -> None:
        if ws is None:
            self.last_t = t
            return
        a = self.acc
        if self.last_t is not None and self.last_ws is not None and t > self.last_t:
            dt = t - self.last_t
            a.memory_byte_seconds += (self.last_ws + ws) / 2 * dt
            a.seconds += dt
        a.memory_peak_bytes = max(a.memory_peak_bytes, ws)
        a.memory_last_bytes = ws
        self.last_t, self.last_ws = t, ws

    def cut(self) -> Accumulated:
        """Hand over this interval's charges and start the next interval."""
        acc = self.acc
        self.acc = Accumulated(
            memory_peak_bytes=self.last_ws or 0, memory_last_bytes=self.last_ws or 0
        )
        return acc

    def baseline(self) -> dict[str, int | None]:
        """The cumulative counters to resume from after a restart."""
        return {"inode": self.inode, "cpu": self.cpu_ns, "ior": self.io_read, "iow": self.io_write}

    @classmethod
    def from_baseline(cls, raw: Mapping[str, Any]) -> Tracked:
        """Resume from a baseline saved with the last report."""
        return cls(
            inode=raw.get("inode"),
            cpu_ns=raw.get("cpu"),
            io_read=raw.get("ior"),
            io_write=raw.get("iow"),
        )


@dataclass(slots=True)
class ContainerObservation:
    """One container cgroup as read in one cycle (stats None: it vanished)."""

    container_id: str
    relpath: str
    stats: CgroupStats | None
    unreadable: bool = False
    born_since_start: bool = False
    """Born after the probe started (see PodObservation)."""


@dataclass(slots=True)
class PodObservation:
    """One pod cgroup as read in one cycle (stats None: it vanished).

    Not frozen, like CgroupStats: 1,000 are made a second (0.6 us each frozen, 0.15 not).
    """

    uid: str
    qos: Qos
    relpath: str
    stats: CgroupStats | None
    containers: tuple[ContainerObservation, ...] = ()
    limits: CgroupLimits | None = None
    unreadable: bool = False
    """The read failed for another reason than removal: keep the pod, charge it next time."""
    containers_read: bool = True
    """False on light cycles that read only pod cgroups: containers are left as they are."""
    born_since_start: bool = False
    """Born after the probe started, though already there at its first look (the probe was
    still starting): its whole counter is ours. Set by the sampler at the first look only."""


@dataclass(frozen=True)
class ContainerInterval:
    """One container's charges over a report interval."""

    container_id: str
    usage: Accumulated
    ended: bool


@dataclass(frozen=True)
class PodInterval:
    """One pod's charges over a report interval: what report.py turns into PodUsage."""

    uid: str
    qos: Qos
    usage: Accumulated
    containers: tuple[ContainerInterval, ...]
    limits: CgroupLimits
    ended: bool
    cpu_rate_cores: float | None


@dataclass
class _Pod:
    uid: str
    qos: Qos
    relpath: str
    cg: Tracked
    containers: dict[str, tuple[str, Tracked]] = field(default_factory=dict)
    limits: CgroupLimits = field(default_factory=lambda: CgroupLimits(None, None))


class Attributor:
    """Per-pod and per-container usage from successive cgroup reads."""

    def __init__(self, baselines: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._pods: dict[str, _Pod] = {}
        self._baselines = dict(baselines or {})
        # With no saved state, what exists at the first look was charged before us (unless
        # born since the probe started); with saved state, anything not in it was born while
        # the probe was down.
        self._unknown_from_zero = baselines is not None
        self.cycles = 0

    def observe(self, t: float, pods: Iterable[PodObservation]) -> None:
        """Fold one sampling cycle in; pods absent from it have ended."""
        seen: set[str] = set()
        for obs in pods:
            if obs.unreadable and obs.uid in self._pods:
                seen.add(obs.uid)
                continue
            if obs.stats is None:
                continue
            seen.add(obs.uid)
            pod = self._pods.get(obs.uid)
            if pod is None:
                pod = _Pod(obs.uid, obs.qos, obs.relpath, self._tracked(obs.relpath))
                self._pods[obs.uid] = pod
            pod.cg.observe(t, obs.stats, obs.born_since_start or self._from_zero(pod.cg))
            if obs.limits is not None:
                pod.limits = obs.limits
            if not obs.containers_read:
                continue
            ctr_seen: set[str] = set()
            for c in obs.containers:
                if c.unreadable:
                    ctr_seen.add(c.container_id)
                    continue
                if c.stats is None:
                    continue
                ctr_seen.add(c.container_id)
                entry = pod.containers.get(c.container_id)
                if entry is None:
                    entry = (c.relpath, self._tracked(c.relpath))
                    pod.containers[c.container_id] = entry
                entry[1].observe(t, c.stats, c.born_since_start or self._from_zero(entry[1]))
            for cid, (_, tr) in pod.containers.items():
                if cid not in ctr_seen:
                    tr.ended = True
        for uid, pod in self._pods.items():
            if uid not in seen:
                pod.cg.ended = True
                for _, tr in pod.containers.values():
                    tr.ended = True
        self._baselines.clear()  # only meaningful for the first look after a restart
        self._unknown_from_zero = True
        self.cycles += 1

    @property
    def first_look(self) -> bool:
        """Whether the next cycle is the first with no saved state: what it finds is taken
        as charged before, unless the observation says it was born since the probe started."""
        return not self._unknown_from_zero

    def _tracked(self, relpath: str) -> Tracked:
        raw = self._baselines.get(relpath)
        return Tracked.from_baseline(raw) if raw else Tracked()

    def _from_zero(self, tr: Tracked) -> bool:
        return self._unknown_from_zero or tr.inode is not None

    def cpu_rates(self) -> dict[str, float]:
        """Each live pod's CPU use over its last sample period, in cores."""
        return {
            uid: p.cg.cpu_rate_cores
            for uid, p in self._pods.items()
            if p.cg.cpu_rate_cores is not None and not p.cg.ended
        }

    def working_sets(self) -> dict[str, int]:
        """Each live pod's last working set."""
        return {
            uid: p.cg.last_ws
            for uid, p in self._pods.items()
            if p.cg.last_ws is not None and not p.cg.ended
        }

    def limits(self) -> dict[str, CgroupLimits]:
        """Each live pod's cgroup limits."""
        return {uid: p.limits for uid, p in self._pods.items() if not p.cg.ended}

    def pod_inodes(self) -> dict[str, list[int]]:
        """Pod uid -> v2 cgroup ids of the pod and its containers (to map BPF counters)."""
        out: dict[str, list[int]] = {}
        for uid, p in self._pods.items():
            ids = [p.cg.inode] + [tr.inode for _, tr in p.containers.values()]
            out[uid] = [i for i in ids if i is not None]
        return out

    def cut(self) -> list[PodInterval]:
        """Close the report interval: each pod's charges, ended pods reported one last time."""
        out: list[PodInterval] = []
        for uid in list(self._pods):
            pod = self._pods[uid]
            ctrs: list[ContainerInterval] = []
            for cid in list(pod.containers):
                _, tr = pod.containers[cid]
                ctrs.append(ContainerInterval(cid, tr.cut(), tr.ended))
                if tr.ended:
                    del pod.containers[cid]
            out.append(
                PodInterval(
                    uid=uid,
                    qos=pod.qos,
                    usage=pod.cg.cut(),
                    containers=tuple(ctrs),
                    limits=pod.limits,
                    ended=pod.cg.ended,
                    cpu_rate_cores=pod.cg.cpu_rate_cores,
                )
            )
            if pod.cg.ended:
                del self._pods[uid]
        return out

    def state(self) -> dict[str, dict[str, int | None]]:
        """Cumulative counters per cgroup path, saved with each report for restarts."""
        out: dict[str, dict[str, int | None]] = {}
        for pod in self._pods.values():
            if pod.cg.ended:
                continue
            out[pod.relpath] = pod.cg.baseline()
            for relpath, tr in pod.containers.values():
                if not tr.ended:
                    out[relpath] = tr.baseline()
        return out


# -- thresholds -----------------------------------------------------------------------


@dataclass(frozen=True)
class PodResources:
    """Requests and limits of a pod (from pod metadata; cgroup limits fill gaps)."""

    cpu_request_cores: float | None = None
    memory_request_bytes: int | None = None
    cpu_limit_cores: float | None = None
    memory_limit_bytes: int | None = None


def threshold_conditions(
    cpu_cores: float | None,
    working_set_bytes: int | None,
    res: PodResources,
    high: float = 0.9,
    idle: float = 0.05,
) -> dict[ThresholdKind, tuple[float, float]]:
    """Which thresholds a pod is past now: kind -> (observed fraction, threshold)."""
    out: dict[ThresholdKind, tuple[float, float]] = {}
    if cpu_cores is not None and res.cpu_limit_cores:
        frac = cpu_cores / res.cpu_limit_cores
        if frac > high:
            out["CpuHigh"] = (frac, high)
    if working_set_bytes is not None and res.memory_limit_bytes:
        frac = working_set_bytes / res.memory_limit_bytes
        if frac > high:
            out["MemoryHigh"] = (frac, high)
    if (
        cpu_cores is not None
        and working_set_bytes is not None
        and res.cpu_request_cores
        and res.memory_request_bytes
    ):
        frac = max(cpu_cores / res.cpu_request_cores, working_set_bytes / res.memory_request_bytes)
        if frac < idle:
            out["Idle"] = (frac, idle)
    return out


class ThresholdTracker:
    """Rising-edge detection: one event when a pod crosses, none while it stays past."""

    def __init__(self) -> None:
        self._active: dict[str, set[ThresholdKind]] = {}

    def update(
        self, uid: str, conditions: Mapping[ThresholdKind, tuple[float, float]]
    ) -> list[ThresholdEvent]:
        """Events for thresholds newly crossed by this pod."""
        before = self._active.get(uid, set())
        now = set(conditions)
        self._active[uid] = now
        return [
            ThresholdEvent(pod_uid=uid, kind=k, value=conditions[k][0], threshold=conditions[k][1])
            for k in sorted(now - before)
        ]

    def active(self, uid: str) -> bool:
        """Whether the pod is past any threshold now."""
        return bool(self._active.get(uid))

    def retain(self, uids: Iterable[str]) -> None:
        """Forget pods that are gone."""
        keep = set(uids)
        for uid in list(self._active):
            if uid not in keep:
                del self._active[uid]


def merge_resources(meta: PodResources | None, cg: CgroupLimits | None) -> PodResources:
    """Requests from metadata; limits from metadata, else from the cgroup."""
    m = meta or PodResources()
    return PodResources(
        cpu_request_cores=m.cpu_request_cores,
        memory_request_bytes=m.memory_request_bytes,
        cpu_limit_cores=m.cpu_limit_cores or (cg.cpu_limit_cores if cg else None),
        memory_limit_bytes=m.memory_limit_bytes or (cg.memory_limit_bytes if cg else None),
    )


# -- network seam ---------------------------------------------------------------------


@dataclass(frozen=True)
class NetCounters:
    """Cumulative bytes and packets of one cgroup (or pod), per direction."""

    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    rx_packets: int = 0

    def values(self) -> tuple[int, int, int, int]:
        """The four counters, for counter_deltas."""
        return (self.tx_bytes, self.rx_bytes, self.tx_packets, self.rx_packets)


class CgroupNetworkSource(Protocol):
    """A reader of cumulative per-cgroup network counters (eBPF map, or veth fallback).

    ``read()`` returns cumulative counters keyed by cgroup v2 id (the directory inode, as
    ``bpf_skb_cgroup_id`` reports it) of a pod or container cgroup. It is called every
    sample cycle, so it must be cheap (one map dump, no fork).
    """

    source: Literal["ebpf", "veth"]

    def read(self) -> Mapping[int, NetCounters]:
        """Cumulative counters by cgroup id."""
        ...


class PodFlowSource(Protocol):
    """A reader of classified per-pod bytes (the IPFIX / NetFlow collector).

    ``take()`` returns what was counted since the previous call, by pod uid; the collector
    maps flows to pods by IP (see pods.PodDirectory.uid_by_ip) and classifies them.
    """

    def take(self) -> Mapping[str, Sequence[NetworkUsage]]:
        """Deltas since the last call, by pod uid."""
        ...


class NetworkAttributor:
    """Per-pod network deltas from cumulative per-cgroup counters (resets handled)."""

    def __init__(self, source: Literal["ebpf", "veth"] = "ebpf") -> None:
        self.source: Literal["ebpf", "veth"] = source
        self._last: dict[int, NetCounters] = {}
        self._acc: dict[str, list[int]] = {}

    def observe(
        self, counters: Mapping[int, NetCounters], pod_inodes: Mapping[str, Sequence[int]]
    ) -> None:
        """Fold one read in. Cgroups first seen are charged from zero (the map starts empty
        when the probe loads the program, and a new cgroup id is a new cgroup)."""
        for uid, inodes in pod_inodes.items():
            acc = self._acc.setdefault(uid, [0, 0, 0, 0])
            for ino in inodes:
                cur = counters.get(ino)
                if cur is None:
                    continue
                # One field going down means the whole entry restarted (map entry re-made).
                prev = self._last.get(ino)
                deltas = counter_deltas(prev.values() if prev else None, cur.values())
                for i, d in enumerate(deltas):
                    acc[i] += d
                self._last[ino] = cur
        live = {i for inodes in pod_inodes.values() for i in inodes}
        for ino in list(self._last):
            if ino not in live:
                del self._last[ino]

    def cut(self) -> dict[str, list[NetworkUsage]]:
        """This interval's bytes per pod, as unclassified tx/rx usage."""
        out: dict[str, list[NetworkUsage]] = {}
        for uid, (txb, rxb, txp, rxp) in self._acc.items():
            if txb or rxb or txp or rxp:
                out[uid] = [
                    NetworkUsage(
                        traffic_class="unclassified",
                        direction="tx",
                        bytes=txb,
                        packets=txp,
                        source=self.source,
                    ),
                    NetworkUsage(
                        traffic_class="unclassified",
                        direction="rx",
                        bytes=rxb,
                        packets=rxp,
                        source=self.source,
                    ),
                ]
        self._acc.clear()
        return out
