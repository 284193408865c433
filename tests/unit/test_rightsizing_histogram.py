"""Decaying exponential histograms and their checkpoints (VPA-compatible behaviour)."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from kopeck.api.report import ContainerUsage, PodUsage, ProbeReport
from kopeck.rightsizing.histogram import (
    CPU_BUCKETS,
    HALF_LIFE_SECONDS,
    MEMORY_BUCKETS,
    DecayingHistogram,
)
from kopeck.rightsizing.history import ContainerHistory, WorkloadHistory

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC).timestamp()


def test_buckets_match_vpa_layout() -> None:
    # VPA: first bucket 0.01 cores, ratio 1.05; bucket i starts at 0.01*(1.05^i-1)/0.05.
    assert CPU_BUCKETS.bucket_start(0) == 0
    assert CPU_BUCKETS.bucket_start(1) == pytest.approx(0.01)
    assert CPU_BUCKETS.bucket_start(2) == pytest.approx(0.0205)
    assert CPU_BUCKETS.num_buckets == 176
    assert MEMORY_BUCKETS.bucket_start(1) == pytest.approx(1e7)
    for value in [0.0, 0.005, 0.01, 0.0205, 0.25, 1.0, 3.7, 999.0]:
        b = CPU_BUCKETS.find_bucket(value)
        assert CPU_BUCKETS.bucket_start(b) <= value + 1e-12
        assert value < CPU_BUCKETS.bucket_start(b + 1)
    assert CPU_BUCKETS.find_bucket(1e6) == CPU_BUCKETS.num_buckets - 1


def test_percentile_is_bucket_upper_bound_within_five_percent() -> None:
    hist = DecayingHistogram(CPU_BUCKETS)
    for i in range(100):
        hist.add_sample(0.01 * (i + 1), 1.0, T0)  # 0.01 .. 1.00 cores
    p95 = hist.percentile(0.95)
    assert 0.95 <= p95 <= 0.95 * 1.05 + 0.01
    assert hist.percentile(1.0) >= 1.0
    assert DecayingHistogram(CPU_BUCKETS).percentile(0.95) == 0.0


def test_a_day_old_sample_counts_half() -> None:
    hist = DecayingHistogram(CPU_BUCKETS)
    hist.add_sample(1.0, 1.0, T0)
    hist.add_sample(2.0, 1.0, T0 + HALF_LIFE_SECONDS)
    w_old = hist.weights[CPU_BUCKETS.find_bucket(1.0)]
    w_new = hist.weights[CPU_BUCKETS.find_bucket(2.0)]
    assert w_new / w_old == pytest.approx(2.0)
    # Two days of 1.0 against one fresh 2.0 of equal raw weight: the fresh one is the median+.
    assert hist.percentile(0.5) == pytest.approx(
        CPU_BUCKETS.bucket_start(CPU_BUCKETS.find_bucket(2.0) + 1)
    )


def test_reference_shift_keeps_ratios_and_avoids_overflow() -> None:
    hist = DecayingHistogram(CPU_BUCKETS)
    hist.add_sample(1.0, 1.0, T0)
    later = T0 + HALF_LIFE_SECONDS * 150  # past the 2**100 limit: renormalised
    hist.add_sample(1.0, 1.0, later)
    assert hist.reference is not None and hist.reference > T0
    assert all(w < 2.0**101 for w in hist.weights.values())
    assert hist.percentile(0.5) > 0


def test_checkpoint_is_sparse_small_and_a_fixed_point() -> None:
    rng = random.Random(7)
    hist = DecayingHistogram(CPU_BUCKETS)
    for i in range(5000):
        hist.add_sample(abs(rng.gauss(0.3, 0.05)), 5.0, T0 + 5 * i)
    cp = hist.to_checkpoint()
    assert len(json.dumps(cp)) < 600
    assert max(cp["b"].values()) == 10_000
    restored = DecayingHistogram.from_checkpoint(json.loads(json.dumps(cp)), CPU_BUCKETS)
    assert restored.to_checkpoint() == cp
    for q in (0.5, 0.9, 0.95, 0.99):
        assert restored.percentile(q) == hist.percentile(q)
    assert restored.total_weight == pytest.approx(hist.total_weight, rel=1e-8)


def _report(seq: int, end: float, pods: list[PodUsage], seconds: float = 5.0) -> ProbeReport:
    return ProbeReport(
        node="n1",
        boot_id="b",
        seq=seq,
        interval_start=dt.datetime.fromtimestamp(end - seconds, dt.UTC),
        interval_end=dt.datetime.fromtimestamp(end, dt.UTC),
        pods=pods,
    )


def _pod(uid: str, cpu_core_seconds: float, ws: int, peak: int = 0) -> PodUsage:
    return PodUsage(
        uid=uid,
        cpu_core_seconds=cpu_core_seconds,
        memory_working_set_bytes=ws,
        containers=[
            ContainerUsage(
                name="app",
                cpu_core_seconds=cpu_core_seconds,
                memory_working_set_bytes=ws,
                memory_peak_bytes=peak,
            )
        ],
    )


def test_reports_fold_into_container_history() -> None:
    wl = WorkloadHistory()
    for i in range(24):
        end = T0 + 5 * (i + 1)
        report = _report(i, end, [_pod("a", 1.25, 100 << 20, 120 << 20), _pod("zz", 5.0, 1 << 30)])
        assert wl.add_report(report, ["a"]) == 1
    app = wl.containers["app"]
    assert app.samples == 24
    assert app.peak_memory_bytes() == 120 << 20  # the peak, not the working set
    assert 0.25 <= app.cpu.percentile(0.95) <= 0.25 * 1.05


def test_pod_seconds_used_for_pods_that_started_mid_interval() -> None:
    wl = WorkloadHistory()
    pod = _pod("a", 0.5, 1 << 20)
    pod.seconds = 1.0  # ran 1 s of the 5 s interval at 0.5 cores
    wl.add_pod_usage(
        pod, dt.datetime.fromtimestamp(T0, dt.UTC), dt.datetime.fromtimestamp(T0 + 5, dt.UTC)
    )
    assert wl.containers["app"].cpu.percentile(1.0) >= 0.5
    assert wl.containers["app"].cpu.total_weight == pytest.approx(1.0, rel=1e-3)


def test_memory_peaks_per_window_and_history_window() -> None:
    hist = ContainerHistory()
    day = 86400.0
    hist.add_sample(T0 + 10, 0.1, 900 << 20, 5)  # day 0 peak 900Mi
    hist.add_sample(T0 + day + 10, 0.1, 300 << 20, 5)  # day 1
    hist.add_sample(T0 + 2 * day + 10, 0.1, 200 << 20, 5)  # day 2, open window
    hist.add_sample(T0 + 2 * day + 20, 0.1, 250 << 20, 5)
    assert hist.peak_memory_bytes() == 900 << 20
    assert hist.peak_memory_bytes(since=T0 + day + 5) == 300 << 20
    assert hist.window_peak_bytes == 250 << 20
    assert hist.memory.total_weight == pytest.approx(1.0 + 2.0)  # day0 w=1, day1 w=2 (decay)
    mem = hist.memory_histogram()
    assert mem.percentile(1.0) >= 900 << 20
    assert hist.memory.total_weight == pytest.approx(3.0)  # the copy did not touch it


def test_workload_checkpoint_round_trips_exactly() -> None:
    rng = random.Random(1)
    wl = WorkloadHistory()
    for i in range(3000):
        t = T0 + 30 * i
        wl.container("app").add_sample(t, abs(rng.gauss(0.4, 0.1)), int(rng.gauss(300e6, 20e6)), 30)
        wl.container("sidecar").add_sample(t, 0.004, 30 << 20, 30)
    cp = wl.to_checkpoint()
    text = json.dumps(cp, separators=(",", ":"))
    assert len(text) < 2500, text
    again = WorkloadHistory.from_checkpoint(json.loads(text))
    assert again.to_checkpoint() == cp
    for name, hist in wl.containers.items():
        other = again.containers[name]
        assert other.samples == hist.samples
        assert other.peak_memory_bytes() == hist.peak_memory_bytes()
        for q in (0.5, 0.95, 1.0):
            assert other.cpu.percentile(q) == hist.cpu.percentile(q)
            assert other.memory_histogram().percentile(q) == hist.memory_histogram().percentile(q)
    # More samples after a restore behave as if there had been no restart.
    wl.container("app").add_sample(T0 + 30 * 3000, 2.0, 1 << 30, 30)
    again.container("app").add_sample(T0 + 30 * 3000, 2.0, 1 << 30, 30)
    assert again.to_checkpoint() == wl.to_checkpoint()


def test_unknown_or_missing_checkpoint_gives_empty_history() -> None:
    assert WorkloadHistory.from_checkpoint(None).containers == {}
    assert WorkloadHistory.from_checkpoint({"v": 99, "containers": {"x": {}}}).containers == {}


def test_naive_datetimes_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        ContainerHistory().add_sample(dt.datetime(2026, 1, 1), 0.1, 1, 5)
