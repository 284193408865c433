"""Per-container usage history: what the recommenders read, from reports or from Prometheus.

One ``ContainerHistory`` aggregates a container name over every pod of a workload, as VPA
aggregates a container over a controller's pods. CPU samples are cores averaged over a
report interval, weighted by the interval's seconds, in a decaying histogram. Memory keeps
the peak per aggregation window (VPA: 24 h): the peaks feed a decaying histogram and a short
exact list, so "peak + 15%" (KRR) needs no bucket rounding.

Checkpoint (``WorkloadHistory.to_checkpoint``), stored in Allocation ``status.histograms``::

    {"v": 1, "containers": {"app": {
        "n": 1440, "first": 1763856000, "last": 1763863195,
        "cpu": {"ref": 1763856000, "total": 7195.0, "b": {"57": 10000, "58": 312}},
        "mem": {"ref": 1763856000, "total": 1.0, "b": {"152": 10000}},
        "win": [1763856000, 187654144],
        "peaks": [[1763769600, 190000000]]}}}

``n`` samples, ``first``/``last`` sample times (Unix s); ``cpu``/``mem`` histograms (see
``DecayingHistogram.to_checkpoint``); ``win`` the open memory window (start, peak bytes);
``peaks`` closed windows (start, peak bytes) still inside the history window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kopeck.api.report import ContainerUsage, PodUsage, ProbeReport
from kopeck.rightsizing.histogram import (
    CPU_BUCKETS,
    HALF_LIFE_SECONDS,
    MEMORY_BUCKETS,
    DecayingHistogram,
)

CHECKPOINT_VERSION = 1
MEMORY_WINDOW_SECONDS = 24 * 3600.0
"""Memory is sampled as the peak of each window of this length (VPA's aggregation interval)."""
DEFAULT_RETENTION_SECONDS = 14 * 24 * 3600.0
"""Closed memory peaks older than this are dropped from the exact list."""


def _epoch(when: dt.datetime | float) -> float:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError(f"timestamp {when} has no time zone; use an aware datetime")
        return when.timestamp()
    return float(when)


@dataclass
class ContainerHistory:
    """Usage history of one container name across a workload's pods."""

    cpu: DecayingHistogram = field(default_factory=lambda: DecayingHistogram(CPU_BUCKETS))
    memory: DecayingHistogram = field(default_factory=lambda: DecayingHistogram(MEMORY_BUCKETS))
    samples: int = 0
    first_sample: float | None = None
    last_sample: float | None = None
    window_start: float | None = None
    window_peak_bytes: int = 0
    peaks: list[tuple[float, int]] = field(default_factory=list)
    memory_window_seconds: float = MEMORY_WINDOW_SECONDS
    retention_seconds: float = DEFAULT_RETENTION_SECONDS

    def add_sample(
        self,
        at: dt.datetime | float,
        cpu_cores: float,
        memory_peak_bytes: int,
        weight_seconds: float,
    ) -> None:
        """Fold one observation: average cores over ``weight_seconds`` ending at ``at``."""
        if weight_seconds <= 0:
            return
        t = _epoch(at)
        self.add_cpu_sample(t, cpu_cores, weight_seconds)
        self.add_memory_peak(t, memory_peak_bytes)

    def add_cpu_sample(
        self, at: dt.datetime | float, cpu_cores: float, weight_seconds: float
    ) -> None:
        """Fold average cores over ``weight_seconds`` ending at ``at``; counts one sample."""
        if weight_seconds <= 0:
            return
        t = _epoch(at)
        self.cpu.add_sample(cpu_cores, weight_seconds, t)
        self.samples += 1
        self.first_sample = t if self.first_sample is None else min(self.first_sample, t)
        self.last_sample = t if self.last_sample is None else max(self.last_sample, t)

    def add_memory_peak(self, at: dt.datetime | float, peak_bytes: int) -> None:
        """Raise the open window's peak, closing the window first when ``at`` is past it."""
        at = _epoch(at)
        if self.window_start is None:
            self.window_start = at - at % self.memory_window_seconds
        if at >= self.window_start + self.memory_window_seconds:
            self._close_window()
            self.window_start = at - at % self.memory_window_seconds
        elif at < self.window_start:
            # A late sample of an already closed window: count it in the exact peaks only.
            self.peaks.append((at - at % self.memory_window_seconds, peak_bytes))
            return
        self.window_peak_bytes = max(self.window_peak_bytes, peak_bytes)

    def _close_window(self) -> None:
        if self.window_start is None or self.window_peak_bytes <= 0:
            self.window_peak_bytes = 0
            return
        self.memory.add_sample(float(self.window_peak_bytes), 1.0, self.window_start)
        self.peaks.append((self.window_start, self.window_peak_bytes))
        horizon = self.window_start - self.retention_seconds
        self.peaks = [(s, p) for s, p in self.peaks if s >= horizon]
        self.window_peak_bytes = 0

    def memory_histogram(self) -> DecayingHistogram:
        """The memory-peak histogram including the open window's peak so far."""
        hist = DecayingHistogram(
            MEMORY_BUCKETS,
            self.memory.half_life_seconds,
            self.memory.reference,
            dict(self.memory.weights),
        )
        if self.window_start is not None and self.window_peak_bytes > 0:
            hist.add_sample(float(self.window_peak_bytes), 1.0, self.window_start)
        return hist

    def peak_memory_bytes(self, since: float | None = None) -> int:
        """The highest working set seen in windows starting at or after ``since``."""
        best = 0
        for start, peak in self.peaks:
            if since is None or start + self.memory_window_seconds > since:
                best = max(best, peak)
        if self.window_start is not None:
            best = max(best, self.window_peak_bytes)
        return best

    def to_checkpoint(self) -> dict[str, Any]:
        """The compact dict described in the module docstring."""
        if self.last_sample is not None:
            # Keep stored weights near 1: an exact power-of-two rescale.
            self.cpu.shift_reference(self.last_sample)
            self.memory.shift_reference(self.last_sample)
        out: dict[str, Any] = {
            "n": self.samples,
            "first": _int_or_none(self.first_sample),
            "last": _int_or_none(self.last_sample),
            "cpu": self.cpu.to_checkpoint(),
            "mem": self.memory.to_checkpoint(),
        }
        if self.window_start is not None:
            out["win"] = [int(self.window_start), self.window_peak_bytes]
        if self.peaks:
            out["peaks"] = [[int(s), p] for s, p in self.peaks]
        return out

    @classmethod
    def from_checkpoint(
        cls, data: Mapping[str, Any], half_life_seconds: float = HALF_LIFE_SECONDS
    ) -> ContainerHistory:
        """Restore a container's history from ``to_checkpoint`` output."""
        hist = cls(
            cpu=DecayingHistogram.from_checkpoint(
                data.get("cpu") or {}, CPU_BUCKETS, half_life_seconds
            ),
            memory=DecayingHistogram.from_checkpoint(
                data.get("mem") or {}, MEMORY_BUCKETS, half_life_seconds
            ),
            samples=int(data.get("n", 0)),
            first_sample=_float_or_none(data.get("first")),
            last_sample=_float_or_none(data.get("last")),
        )
        win = data.get("win")
        if win:
            hist.window_start = float(win[0])
            hist.window_peak_bytes = int(win[1])
        hist.peaks = [(float(s), int(p)) for s, p in data.get("peaks") or []]
        return hist


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def container_cores(usage: ContainerUsage, seconds: float) -> float:
    """Average cores of a container over an interval of ``seconds``."""
    return usage.cpu_core_seconds / seconds if seconds > 0 else 0.0


def container_peak_bytes(usage: ContainerUsage) -> int:
    """The interval's memory peak, falling back to the end-of-interval working set."""
    return max(usage.memory_peak_bytes, usage.memory_working_set_bytes)


@dataclass
class WorkloadHistory:
    """Histories of a workload's containers, keyed by container name."""

    containers: dict[str, ContainerHistory] = field(default_factory=dict)

    def container(self, name: str) -> ContainerHistory:
        """The history of a container, created empty on first use."""
        if name not in self.containers:
            self.containers[name] = ContainerHistory()
        return self.containers[name]

    def add_pod_usage(
        self, pod: PodUsage, interval_start: dt.datetime, interval_end: dt.datetime
    ) -> None:
        """Fold one pod's containers from one report interval.

        The pod's own ``seconds`` (time it ran in the interval) is used when given, so a pod
        that started mid-interval is not shown as idle.
        """
        interval = (interval_end - interval_start).total_seconds()
        seconds = pod.seconds if 0 < pod.seconds <= interval else interval
        for usage in pod.containers:
            self.container(usage.name).add_sample(
                interval_end,
                container_cores(usage, seconds),
                container_peak_bytes(usage),
                seconds,
            )

    def add_report(self, report: ProbeReport, pod_uids: Iterable[str]) -> int:
        """Fold the pods of ``report`` that belong to this workload; returns how many."""
        wanted = set(pod_uids)
        folded = 0
        for pod in report.pods:
            if pod.uid in wanted:
                self.add_pod_usage(pod, report.interval_start, report.interval_end)
                folded += 1
        return folded

    def to_checkpoint(self) -> dict[str, Any]:
        """A JSON-able dict for Allocation ``status.histograms``."""
        return {
            "v": CHECKPOINT_VERSION,
            "containers": {
                name: hist.to_checkpoint() for name, hist in sorted(self.containers.items())
            },
        }

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any] | None) -> WorkloadHistory:
        """Restore; ``None`` or an unknown version gives an empty history (never an error)."""
        if not data or data.get("v") != CHECKPOINT_VERSION:
            return cls()
        return cls(
            containers={
                str(name): ContainerHistory.from_checkpoint(cp)
                for name, cp in (data.get("containers") or {}).items()
            }
        )
