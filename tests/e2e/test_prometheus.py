"""Rightsizing from a real Prometheus scraping the real node-probe and operator.

The whole product runs (``Stack``): a Deployment with a known steady load (a CPU burner at
a fixed duty cycle and a memory holder) runs in a real sandbox under a CostPolicy that
proposes requests. Prometheus (the Debian package) scrapes the probe's and the operator's
/metrics every second. The operator's own proposal, from the histograms it folds from the
probe's reports, must agree within 5% with the proposal the same recommender gives from
Prometheus history (``PrometheusHistorySource`` through prometheus-api-client) for the same
workload and window; then an operator restarted with ``--prometheus-url`` writes a
proposal of source Prometheus that agrees too.

The CPU proposal is the end of a histogram bucket (5% wide), so "within 5%" means the same
bucket: the load is chosen so that its p95 sits well inside one (0.281-0.305 cores) at
both resolutions, one-second reports and five-second Prometheus steps; a failure prints
both histograms. The operator is restarted on its own ports with ``--prometheus-url``
(and ``--prometheus-step 5``, so a policy's minSamples means the same order of time).

Prometheus runs on a loopback port with a temporary config and storage, and is ended by
its pid; the stack stops everything it started. About two minutes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect

from kopeck.api.costpolicy import Rightsizing
from kopeck.demo import scenario
from kopeck.demo.operator_process import OperatorProcess
from kopeck.demo.stack import Stack, StackSettings
from kopeck.rightsizing import PercentileSettings, PercentileStrategy, Resources, propose
from kopeck.rightsizing.histogram import CPU_BUCKETS
from kopeck.rightsizing.prometheus import PrometheusHistorySource, pod_regex
from kopeck.rightsizing.quantity import parse_cpu, parse_duration, parse_memory
from tests.support.prometheus import Prometheus, running_prometheus, scrape_config

pytestmark = [pytest.mark.e2e, pytest.mark.node]

NS = "prom-e2e"
APP = "steady"
CONTAINER = "main"
RUN_SECONDS = 60
"""Seconds of steady load before the proposals are compared."""
STEP = dt.timedelta(seconds=5)
"""Prometheus range-query step: one history sample per step (12 in a minute)."""
MIN_SAMPLES = 10
WINDOW = "10m"
"""The policy's history window: what both sources consider (and Prometheus is asked for)."""
CPU_CORE_HOUR = Decimal("0.031611")
MEMORY_GIB_HOUR = Decimal("0.004237")
REQUESTS = {"cpu": "1", "memory": "512Mi"}
# 29% of a core in 10 ms busy slices (steady at one-second resolution; about 0.29 cores,
# mid-bucket) and 96 MiB held.
LOAD = (
    "stress-ng --cpu 1 --cpu-load 29 --cpu-load-slice 10 & "
    "stress-ng --vm 1 --vm-bytes 96M --vm-keep --vm-hang 0 & wait"
)


def policy() -> dict[str, Any]:
    """Propose after a few samples, priced by a rate card, for the test namespace only."""
    return {
        "apiVersion": "cost.kopeck.io/v1alpha1",
        "kind": "CostPolicy",
        "metadata": {"name": "prom-e2e"},
        "spec": {
            "scope": {"namespaceSelector": {"matchLabels": {"e2e": "prometheus"}},
                      "priority": 950},
            "pricing": {"currency": "USD",
                        "rateCard": {"cpuCoreHour": float(CPU_CORE_HOUR),
                                     "memoryGiBHour": float(MEMORY_GIB_HOUR)}},
            "rightsizing": {"mode": "Propose", "minSamples": MIN_SAMPLES, "cpuPercentile": 95,
                            "memoryHeadroomPercent": 15, "historyWindow": WINDOW},
            "anomaly": {"enabled": False},
        },
    }  # fmt: skip


@dataclass
class Run:
    """What the module's fixture started."""

    stack: Stack
    prometheus: Prometheus
    load_started: dt.datetime
    histogram_proposal: Resources | None = None
    """The operator's own proposal, once the comparison test has read it."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    lines: list[str] = []
    stack = Stack(
        tmp_path_factory.mktemp("stack"), StackSettings(report_interval_s=1.0), say=lines.append
    )
    with stack:
        assert stack.operator is not None
        targets = {
            "probe": f"127.0.0.1:{stack.probe_metrics_port}",
            "operator": f"127.0.0.1:{stack.operator.health_port}",
        }
        with running_prometheus(scrape_config(targets, honor_labels=False)) as prom:
            for manifest in (policy(), scenario.namespace(NS, {"e2e": "prometheus"})):
                seen = scenario.kubectl(stack, "apply", "-f", "-", manifest=manifest)
                assert seen.returncode == 0, seen.stderr
            scenario.wait_default_sa(stack, NS)
            seen = scenario.kubectl(
                stack,
                "apply",
                "-f",
                "-",
                manifest=scenario.deployment(
                    APP, NS, ["sh", "-c", LOAD], cpu=REQUESTS["cpu"], memory=REQUESTS["memory"]
                ),
            )
            assert seen.returncode == 0, seen.stderr
            stack.wait_for(
                f"a Running pod of {APP}",
                lambda: scenario.running_ip(stack, NS, APP) is not None,
                timeout=60,
                every=0.5,
            )
            yield Run(stack, prom, dt.datetime.now(dt.UTC))


def allocation(stack: Stack) -> dict[str, Any]:
    """The Deployment's Allocation ({} until there is one)."""
    for a in scenario.allocations(stack):
        ref = a["spec"]["workloadRef"]
        if (ref["kind"], ref["name"], ref.get("namespace")) == ("Deployment", APP, NS):
            return a
    return {}


def proposal(stack: Stack) -> dict[str, Any]:
    """The Allocation's status.proposal ({} until there is one)."""
    return dict((allocation(stack).get("status") or {}).get("proposal") or {})


def generated_at(prop: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(prop["generatedAt"]).replace("Z", "+00:00"))


def wait_proposal(run: Run, source: str, after: dt.datetime, timeout: float) -> dict[str, Any]:
    """The first proposal of ``source`` generated at or after ``after``."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.update(proposal(run.stack))
        return (
            bool(found.get("containers"))
            and found.get("source") == source
            and (generated_at(found) >= after)
        )

    run.stack.wait_for(
        f"a {source} proposal generated after {after:%H:%M:%S}", ready, timeout=timeout, every=1.0
    )
    return found


def requests_of(prop: dict[str, Any]) -> Resources:
    (c,) = [c for c in prop["containers"] if c["container"] == CONTAINER]
    return Resources(parse_cpu(c["cpuRequest"]), parse_memory(c["memoryRequest"]))


def cpu_spread(weights: dict[int, float]) -> str:
    """A CPU histogram as 'bucket start: share' (what a failed comparison needs to show)."""
    total = sum(weights.values()) or 1.0
    return ", ".join(
        f"{CPU_BUCKETS.bucket_start(b):.3f}: {w / total:.0%}"
        for b, w in sorted(weights.items())
        if w / total >= 0.005
    )


def prometheus_proposal(prom: Prometheus, now: dt.datetime) -> tuple[Resources, int, str]:
    """The recommender's proposal from Prometheus history, as the operator would make it."""
    rs = Rightsizing.model_validate(policy()["spec"]["rightsizing"])
    source = PrometheusHistorySource(prom.url, step=STEP, disable_ssl=True)
    history = source.workload_history(
        NS, pod_regex("Deployment", APP), now=now, window=parse_duration(rs.history_window)
    )
    assert set(history.containers) == {CONTAINER}, history.containers.keys()
    result = propose(
        history, {CONTAINER: Resources.from_requests(REQUESTS)},
        PercentileStrategy(PercentileSettings.from_policy(rs)), now, replicas=1,
        cpu_core_hour=CPU_CORE_HOUR, memory_gib_hour=MEMORY_GIB_HOUR, source="Prometheus",
    )  # fmt: skip
    rec = result.recommendations[CONTAINER]
    assert rec.ready, rec.reason
    assert rec.cpu_cores is not None and rec.memory_bytes is not None
    spread = cpu_spread(history.containers[CONTAINER].cpu.weights)
    return Resources(rec.cpu_cores, rec.memory_bytes), rec.samples, spread


def restart_operator(stack: Stack, *flags: str) -> OperatorProcess:
    """The stack's operator again, on the same ports and certificate, with more flags.

    The probe keeps pushing to the same ingest URL and Prometheus keeps scraping the same
    health port; the stack stops the new process at the end."""
    old = stack.operator
    assert old is not None
    old.stop()
    new = OperatorProcess(
        kubeconfig=old.kubeconfig, workdir=old.workdir, namespace=old.namespace,
        probe_accounts=old.probe_accounts, webhook_config=old.webhook_config,
        extra=[*old.extra, *flags], ingest_port=old.ingest_port,
        webhook_port=old.webhook_port, health_port=old.health_port,
    )  # fmt: skip
    stack.operator = new
    new.start(timeout=60)
    return new


def difference(a: Resources, b: Resources) -> tuple[float, float]:
    """Relative differences of b from a: (cpu, memory)."""
    assert a.cpu_cores and b.cpu_cores and a.memory_bytes and b.memory_bytes
    return (abs(float(b.cpu_cores / a.cpu_cores) - 1), abs(b.memory_bytes / a.memory_bytes - 1))


def test_prometheus_scrapes_the_probe_and_the_operator(run: Run) -> None:
    client = PrometheusConnect(url=run.prometheus.url, disable_ssl=True)
    seen: dict[str, float] = {}

    def both_up() -> bool:
        for sample in client.custom_query("up"):
            seen[sample["metric"]["job"]] = float(sample["value"][1])
        return seen.get("probe") == 1.0 and seen.get("operator") == 1.0

    run.stack.wait_for("up == 1 for the probe and the operator", both_up, timeout=30)
    pod_series: list[dict[str, Any]] = []

    def per_pod() -> bool:
        pod_series[:] = client.custom_query(f'kopeck_pod_cpu_seconds_total{{namespace="{NS}"}}')
        return bool(pod_series)

    run.stack.wait_for("the probe's per-pod series of the workload", per_pod, timeout=30)
    assert pod_series[0]["metric"]["pod"].startswith(f"{APP}-")
    assert pod_series[0]["metric"]["job"] == "probe"
    memory = client.custom_query(
        f'kopeck_container_memory_working_set_bytes{{namespace="{NS}",container="{CONTAINER}"}}'
    )
    assert memory and float(memory[0]["value"][1]) > 64 * 2**20
    active = client.custom_query('kopeck_operator_active{job="operator"}')
    assert [float(s["value"][1]) for s in active] == [1.0]
    accepted = client.custom_query('sum(kopeck_reports_total{job="operator"})')
    assert accepted and float(accepted[0]["value"][1]) > 0


def after_the_run(run: Run) -> dt.datetime:
    """Sleep until the load has run RUN_SECONDS; that moment."""
    after = run.load_started + dt.timedelta(seconds=RUN_SECONDS)
    time.sleep(max(0.0, (after - dt.datetime.now(dt.UTC)).total_seconds()))
    return after


def test_operator_and_prometheus_proposals_agree_within_5_percent(run: Run) -> None:
    after = after_the_run(run)
    op = wait_proposal(run, "Histogram", after, timeout=40)
    at = generated_at(op)
    time.sleep(2)  # the last scrapes before `at` are stored
    from_prom, prom_samples, prom_spread = prometheus_proposal(run.prometheus, at)
    embedded = requests_of(op)
    cpu_diff, mem_diff = difference(embedded, from_prom)
    checkpoint = allocation(run.stack)["status"]["histograms"]["containers"][CONTAINER]
    op_spread = cpu_spread({int(b): float(w) for b, w in checkpoint["cpu"]["b"].items()})
    figures = (
        f"operator (histograms, {op['containers'][0]['samples']} samples): "
        f"cpu={embedded.cpu_cores} memory={embedded.memory_bytes}; cpu {op_spread}\n"
        f"prometheus ({prom_samples} samples, step {STEP.seconds}s): "
        f"cpu={from_prom.cpu_cores} memory={from_prom.memory_bytes}; cpu {prom_spread}\n"
        f"difference: cpu {cpu_diff:.2%} memory {mem_diff:.2%}"
    )
    print("\n" + figures)
    run.histogram_proposal = embedded
    # The known load: a 29% duty cycle and 96 MiB held (plus the shell and stress-ng).
    assert embedded.cpu_cores is not None and embedded.memory_bytes is not None
    assert Decimal("0.25") <= embedded.cpu_cores <= Decimal("0.45"), figures
    assert 96 * 1.15 * 2**20 <= embedded.memory_bytes <= 160 * 2**20, figures
    assert cpu_diff <= 0.05, figures
    assert mem_diff <= 0.05, figures


def test_operator_with_prometheus_url_proposes_the_same(run: Run) -> None:
    after_the_run(run)
    restart_operator(
        run.stack,
        "--prometheus-url",
        run.prometheus.url,
        "--prometheus-step",
        str(STEP.seconds),
        "--prometheus-refresh",
        "5",
    )
    restarted = dt.datetime.now(dt.UTC)
    op = wait_proposal(run, "Prometheus", restarted, timeout=45)
    at = generated_at(op)
    written = requests_of(op)
    from_prom, prom_samples, prom_spread = prometheus_proposal(run.prometheus, at)
    cpu_diff, mem_diff = difference(from_prom, written)
    figures = (
        f"operator --prometheus-url ({op['containers'][0]['samples']} samples): "
        f"cpu={written.cpu_cores} memory={written.memory_bytes}; "
        f"this test's query ({prom_samples} samples): cpu={from_prom.cpu_cores} "
        f"memory={from_prom.memory_bytes}; difference cpu {cpu_diff:.2%} "
        f"memory {mem_diff:.2%}; cpu {prom_spread}"
    )
    if run.histogram_proposal is not None:
        h_cpu, h_mem = difference(run.histogram_proposal, written)
        figures += (
            f"; against the histograms' cpu={run.histogram_proposal.cpu_cores} "
            f"memory={run.histogram_proposal.memory_bytes}: cpu {h_cpu:.2%} "
            f"memory {h_mem:.2%}"
        )
    print("\n" + figures)
    assert op["containers"][0]["samples"] >= MIN_SAMPLES, figures
    assert cpu_diff <= 0.05 and mem_diff <= 0.05, figures
    if run.histogram_proposal is not None:
        assert h_cpu <= 0.05 and h_mem <= 0.05, figures
