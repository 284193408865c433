"""Rightsizing from a real Prometheus: it scrapes an exporter of known usage, we query it back.

The exporter serves the node-probe's metric names with values computed at scrape time
(a CPU counter growing at a known rate per pod, a working-set gauge with a known peak).
The same usage is folded into the embedded histograms as 1 s probe reports; both histories
go through the same recommender and must agree within 5%. Runs in about 20 s on loopback;
Prometheus is ended by its pid and its storage removed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kopeck.api.report import ContainerUsage, PodUsage
from kopeck.localcluster.cluster import free_port
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
    pod_regex,
)
from tests.support.prometheus import running_prometheus, scrape_config

pytestmark = pytest.mark.node

MI = 2**20
SCRAPE_SECONDS = 1
RUN_SECONDS = 16
# pod -> container -> (cores, steady working set bytes)
USAGE = {
    "web-5f7c9d8b6-aaaaa": {"app": (0.25, 180 * MI), "proxy": (0.02, 40 * MI)},
    "web-5f7c9d8b6-bbbbb": {"app": (0.60, 220 * MI), "proxy": (0.02, 41 * MI)},
}
PEAK = ("web-5f7c9d8b6-bbbbb", "app", 300 * MI)
"""One container's working set reaches this for a few seconds in the middle of the run."""


def _working_set(pod: str, container: str, elapsed: float) -> int:
    steady = USAGE[pod][container][1]
    if (pod, container) == PEAK[:2] and RUN_SECONDS / 2 <= elapsed < RUN_SECONDS / 2 + 3:
        return PEAK[2]
    return steady


class KnownUsage:
    """A collector with the probe's metric names whose values follow USAGE exactly."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        elapsed = time.time() - self.t0
        labels = ["namespace", "pod", "uid", "container"]
        cpu = CounterMetricFamily(CPU_METRIC.removesuffix("_total"), "cpu", labels=labels)
        mem = GaugeMetricFamily(MEMORY_METRIC, "working set", labels=labels)
        for pod, containers in USAGE.items():
            for container, (cores, _) in containers.items():
                lv = ["shop", pod, pod[-5:], container]
                cpu.add_metric(lv, cores * elapsed)
                mem.add_metric(lv, _working_set(pod, container, elapsed))
        yield cpu
        yield mem


@pytest.fixture
def prometheus_with_exporter() -> Iterator[tuple[str, float]]:
    t0 = time.time()
    registry = CollectorRegistry()
    registry.register(KnownUsage(t0))
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    config = scrape_config({"probe": f"127.0.0.1:{exporter_port}"}, honor_labels=False,
                           interval=f"{SCRAPE_SECONDS}s")
    try:
        with running_prometheus(config) as prom:
            yield prom.url, t0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _embedded_history(t0: float, seconds: int) -> WorkloadHistory:
    """The same usage as 1 s probe reports."""
    history = WorkloadHistory()
    for i in range(1, seconds + 1):
        start = dt.datetime.fromtimestamp(t0 + i - 1, dt.UTC)
        end = dt.datetime.fromtimestamp(t0 + i, dt.UTC)
        for pod, containers in USAGE.items():
            usage = [
                ContainerUsage(
                    name=c,
                    cpu_core_seconds=cores,
                    memory_working_set_bytes=_working_set(pod, c, i - 0.5),
                    memory_peak_bytes=max(
                        _working_set(pod, c, i - 1), _working_set(pod, c, i - 0.01)
                    ),
                )
                for c, (cores, _) in containers.items()
            ]
            history.add_pod_usage(
                PodUsage(
                    uid=pod[-5:], cpu_core_seconds=0, memory_working_set_bytes=0, containers=usage
                ),
                start,
                end,
            )
    return history


def test_prometheus_history_gives_the_embedded_proposal(
    prometheus_with_exporter: tuple[str, float],
) -> None:
    url, t0 = prometheus_with_exporter
    time.sleep(max(0.0, t0 + RUN_SECONDS - time.time()))
    now = dt.datetime.now(dt.UTC)
    source = PrometheusHistorySource(url, step=dt.timedelta(seconds=2))
    prom_history = source.workload_history(
        "shop", pod_regex("Deployment", "web"), now=now, window=dt.timedelta(seconds=60)
    )
    assert set(prom_history.containers) == {"app", "proxy"}
    assert prom_history.containers["app"].samples >= 8  # two pods, >= 4 steps each
    assert prom_history.containers["app"].peak_memory_bytes() == PEAK[2]

    settings = PercentileSettings(min_samples=5)
    current = {
        "app": Resources.from_quantities("2", "1Gi"),
        "proxy": Resources.from_quantities("100m", "128Mi"),
    }
    strategy = PercentileStrategy(settings)
    cpu_price, memory_price = Decimal("0.04"), Decimal("0.005")
    from_prom = propose(
        prom_history,
        current,
        strategy,
        now,
        replicas=2,
        cpu_core_hour=cpu_price,
        memory_gib_hour=memory_price,
        source="Prometheus",
    )
    embedded = propose(
        _embedded_history(t0, RUN_SECONDS),
        current,
        strategy,
        now,
        replicas=2,
        cpu_core_hour=cpu_price,
        memory_gib_hour=memory_price,
    )
    assert from_prom.proposal is not None and embedded.proposal is not None
    for name in ("app", "proxy"):
        p, e = from_prom.recommendations[name], embedded.recommendations[name]
        assert p.cpu_cores is not None and e.cpu_cores is not None
        assert p.memory_bytes is not None and e.memory_bytes is not None
        print(
            f"{name}: prometheus cpu={p.cpu_cores} mem={p.memory_bytes}; embedded cpu={e.cpu_cores} mem={e.memory_bytes}"
        )
        assert abs(float(p.cpu_cores / e.cpu_cores) - 1) <= 0.05
        assert abs(p.memory_bytes / e.memory_bytes - 1) <= 0.05
    # The known usage: app p95 is the 0.6-core pod, memory the 300Mi peak + 15%.
    app = from_prom.recommendations["app"]
    assert app.cpu_cores is not None and Decimal("0.6") <= app.cpu_cores <= Decimal("0.64")
    assert app.memory_bytes == 345 * MI
    assert from_prom.proposal.source == "Prometheus"
    assert (
        abs(from_prom.proposal.monthly_savings - embedded.proposal.monthly_savings)
        <= Decimal("0.05") * embedded.proposal.monthly_savings
    )
