"""The Prometheus history source: queries, recorded results, and parity with reports."""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from typing import Any

from kopeck.api.report import ContainerUsage, PodUsage
from kopeck.rightsizing import (
    PercentileSettings,
    PercentileStrategy,
    Resources,
    WorkloadHistory,
    propose,
)
from kopeck.rightsizing.prometheus import (
    CPU_METRIC,
    MEMORY_METRIC,
    PrometheusHistorySource,
    cpu_query,
    history_from_results,
    memory_query,
    pod_regex,
    step_for,
)

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
MI = 2**20

# In the shape Prometheus 2.42 answers /api/v1/query_range (data.result, values as strings,
# NaN where rate() had too few points): two pods of one Deployment, "app" and "istio-proxy".
T = 1763899200.0
RECORDED_CPU: list[dict[str, Any]] = [
    {
        "metric": {"container": "app", "namespace": "shop", "pod": "web-7d4f9c-abcde", "uid": "u1"},
        "values": [
            [T + 60 * i, v] for i, v in enumerate(["0.21", "0.19", "0.25", "0.22", "0.48", "0.2"])
        ],
    },
    {
        "metric": {"container": "app", "namespace": "shop", "pod": "web-7d4f9c-fghij", "uid": "u2"},
        "values": [
            [T + 60 * i, v] for i, v in enumerate(["0.18", "0.2", "NaN", "0.23", "0.21", "0.2"])
        ],
    },
    {
        "metric": {
            "container": "istio-proxy",
            "namespace": "shop",
            "pod": "web-7d4f9c-abcde",
            "uid": "u1",
        },
        "values": [[T + 60 * i, "0.004"] for i in range(6)],
    },
]
RECORDED_MEMORY: list[dict[str, Any]] = [
    {
        "metric": {"container": "app", "namespace": "shop", "pod": "web-7d4f9c-abcde", "uid": "u1"},
        "values": [
            [T + 60 * i, str(v)] for i, v in enumerate([310e6, 305e6, 320e6, 330e6, 351e6, 340e6])
        ],
    },
    {
        "metric": {"container": "app", "namespace": "shop", "pod": "web-7d4f9c-fghij", "uid": "u2"},
        "values": [
            [T + 60 * i, str(v)] for i, v in enumerate([290e6, 300e6, 299e6, 310e6, 300e6, 301e6])
        ],
    },
    {
        "metric": {
            "container": "istio-proxy",
            "namespace": "shop",
            "pod": "web-7d4f9c-abcde",
            "uid": "u1",
        },
        "values": [[T + 60 * i, "41000000"] for i in range(6)],
    },
]


def test_queries_select_the_workload_and_use_the_probe_metrics() -> None:
    q = cpu_query("shop", pod_regex("Deployment", "web.v2"), dt.timedelta(seconds=60))
    assert q == (
        'rate(kopeck_container_cpu_seconds_total{namespace="shop",'
        'pod=~"web\\\\.v2-[a-z0-9]+-[a-z0-9]+",container!=""}[60s])'
    )
    m = memory_query("shop", pod_regex("StatefulSet", "db"), dt.timedelta(seconds=30))
    assert m == (
        'max_over_time(kopeck_container_memory_working_set_bytes{namespace="shop",'
        'pod=~"db-[0-9]+",container!=""}[30s])'
    )
    assert step_for(dt.timedelta(days=7), dt.timedelta(seconds=10)) == dt.timedelta(seconds=55)
    assert step_for(dt.timedelta(hours=1), dt.timedelta(seconds=10)) == dt.timedelta(seconds=10)


def test_recorded_results_become_histories() -> None:
    history = history_from_results(RECORDED_CPU, RECORDED_MEMORY, dt.timedelta(seconds=60))
    app = history.containers["app"]
    assert app.samples == 11  # the NaN point is skipped
    assert app.peak_memory_bytes() == 351_000_000
    assert 0.48 <= app.cpu.percentile(1.0) <= 0.48 * 1.05 + 0.01
    proxy = history.containers["istio-proxy"]
    assert proxy.samples == 6 and proxy.peak_memory_bytes() == 41_000_000
    rec = PercentileStrategy(PercentileSettings(min_samples=6)).run(app, NOW)
    assert rec.memory_bytes == math.ceil(351e6 * 1.15 / MI) * MI


class FakeClient:
    """Answers like PrometheusConnect.custom_query_range, recording the questions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dt.datetime, dt.datetime, str]] = []

    def custom_query_range(
        self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str
    ) -> list[dict[str, Any]]:
        self.calls.append((query, start_time, end_time, step))
        return RECORDED_CPU if query.startswith("rate(") else RECORDED_MEMORY


def test_source_asks_for_the_window_and_step() -> None:
    client = FakeClient()
    source = PrometheusHistorySource(client=client, step=dt.timedelta(seconds=60))
    history = source.workload_history(
        "shop", pod_regex("Deployment", "web"), now=NOW, window=dt.timedelta(hours=168)
    )
    assert set(history.containers) == {"app", "istio-proxy"}
    (q1, start, end, step), (q2, *_) = client.calls
    assert end == NOW and start == NOW - dt.timedelta(hours=168)
    assert step == "60s"
    assert "[60s]" in q1 and q2.startswith("max_over_time(")


def _usage_series(
    seconds: int, step: int, seed: int, noise: float = 0.01
) -> list[tuple[float, float, int]]:
    """(time, cores, working set) every ``step`` s: a daily wave, minute-level load, noise."""
    rng = random.Random(seed)
    out = []
    level = 0.3
    for i in range(seconds // step):
        t = NOW.timestamp() - seconds + step * (i + 1)
        if i % (60 // step) == 0:
            level = max(0.02, 0.3 + 0.15 * math.sin(2 * math.pi * t / 86400) + rng.gauss(0, 0.05))
        cores = max(0.0, level + rng.gauss(0, noise))
        ws = int(200e6 + 80e6 * (level - 0.15) + rng.gauss(0, 2e6))
        out.append((t, cores, ws))
    return out


def _embedded(series: list[tuple[float, float, int]], step: int) -> WorkloadHistory:
    wl = WorkloadHistory()
    for t, cores, ws in series:
        pod = PodUsage(
            uid="u1",
            cpu_core_seconds=cores * step,
            memory_working_set_bytes=ws,
            containers=[
                ContainerUsage(
                    name="app", cpu_core_seconds=cores * step, memory_working_set_bytes=ws
                )
            ],
        )
        start = dt.datetime.fromtimestamp(t - step, dt.UTC)
        wl.add_pod_usage(pod, start, dt.datetime.fromtimestamp(t, dt.UTC))
    return wl


def _as_prometheus(
    series: list[tuple[float, float, int]], report_step: int, query_step: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What rate()/max_over_time() at ``query_step`` return for the probe's series."""
    per = query_step // report_step
    cpu_values, mem_values = [], []
    for j in range(len(series) // per):
        chunk = series[j * per : (j + 1) * per]
        t = chunk[-1][0]
        cpu_values.append([t, repr(sum(c for _, c, _ in chunk) / per)])
        mem_values.append([t, str(max(w for _, _, w in chunk))])
    labels = {"namespace": "shop", "pod": "web-1-a", "container": "app"}
    return [{"metric": labels, "values": cpu_values}], [{"metric": labels, "values": mem_values}]


def _proposal_figures(history: WorkloadHistory, source: str) -> tuple[Decimal, int]:
    result = propose(
        history,
        {"app": Resources.from_quantities("1", "1Gi")},
        PercentileStrategy(PercentileSettings()),
        NOW,
        replicas=1,
        cpu_core_hour=Decimal("0.04"),
        memory_gib_hour=Decimal("0.005"),
        source=source,  # type: ignore[arg-type]
    )
    assert result.proposal is not None
    rec = result.recommendations["app"]
    assert rec.cpu_cores is not None and rec.memory_bytes is not None
    return rec.cpu_cores, rec.memory_bytes


def test_prometheus_and_embedded_histories_agree_within_five_percent() -> None:
    series = _usage_series(86400, 5, seed=11)  # a day of 5 s reports
    embedded = _proposal_figures(_embedded(series, 5), "Histogram")
    for query_step in (5, 60):
        cpu_s, mem_s = _as_prometheus(series, 5, query_step)
        prom = _proposal_figures(
            history_from_results(cpu_s, mem_s, dt.timedelta(seconds=query_step)), "Prometheus"
        )
        cpu_ratio = float(prom[0] / embedded[0])
        mem_ratio = prom[1] / embedded[1]
        print(
            f"step {query_step}s: cpu {prom[0]} vs {embedded[0]} ({cpu_ratio:.4f}), memory {prom[1]} vs {embedded[1]} ({mem_ratio:.4f})"
        )
        assert abs(cpu_ratio - 1) <= 0.05
        assert abs(mem_ratio - 1) <= 0.05
        if query_step == 5:
            assert prom == embedded  # same data at the same resolution: the same proposal


def test_coarser_steps_smooth_bursty_usage() -> None:
    """The figure for the report: a 60 s step averages away 5 s bursts (noise 0.1 cores)."""
    series = _usage_series(86400, 5, seed=12, noise=0.1)
    embedded = _proposal_figures(_embedded(series, 5), "Histogram")
    cpu_s, mem_s = _as_prometheus(series, 5, 60)
    prom = _proposal_figures(
        history_from_results(cpu_s, mem_s, dt.timedelta(seconds=60)), "Prometheus"
    )
    print(f"bursty, step 60s: cpu {prom[0]} vs {embedded[0]}, memory {prom[1]} vs {embedded[1]}")
    assert prom[0] <= embedded[0]
    assert prom[1] == embedded[1]


def test_queries_use_the_names_and_labels_the_probe_exposes() -> None:
    """Couples the queries to node-probe's metrics.py: renaming a series there fails here."""
    from prometheus_client import generate_latest

    from kopeck_probe.metrics import ProbeMetrics, registry_with

    metrics = ProbeMetrics()
    metrics.fold(
        [
            PodUsage(
                uid="u1",
                namespace="shop",
                name="web-7d4f9c-abcde",
                cpu_core_seconds=1.0,
                memory_working_set_bytes=5,
                containers=[
                    ContainerUsage(name="app", cpu_core_seconds=1.0, memory_working_set_bytes=5)
                ],
            )
        ]
    )
    text = generate_latest(registry_with(metrics)).decode()
    labels = 'container="app",namespace="shop",pod="web-7d4f9c-abcde"'
    for metric in (CPU_METRIC, MEMORY_METRIC):
        lines = [line for line in text.splitlines() if line.startswith(metric + "{")]
        assert lines, f"{metric} not exposed by the probe:\n{text}"
        for part in labels.split(","):
            assert part in lines[0]
