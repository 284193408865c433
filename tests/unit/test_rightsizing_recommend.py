"""Strategies, the runner, savings and admission warnings."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import ClassVar

import pytest
from pydantic import ValidationError

from kopeck.api.allocation import AllocationStatus, ContainerProposal, Proposal
from kopeck.api.costpolicy import Rightsizing
from kopeck.rightsizing import (
    STRATEGIES,
    ContainerHistory,
    PercentileSettings,
    PercentileStrategy,
    Recommendation,
    Resources,
    Strategy,
    StrategySettings,
    WorkloadHistory,
    WorkloadName,
    admission_warnings,
    make_strategy,
    monthly_savings,
    propose,
    register,
    should_warn,
)
from kopeck.rightsizing.admission import warning_text

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
MI = 2**20


def _history(cores: list[float], mem_bytes: int, step: float = 5.0) -> ContainerHistory:
    hist = ContainerHistory()
    start = NOW.timestamp() - step * len(cores)
    for i, c in enumerate(cores):
        hist.add_sample(start + step * (i + 1), c, mem_bytes, step)
    return hist


def test_percentile_strategy_krr_defaults() -> None:
    rng = random.Random(3)
    cores = [abs(rng.gauss(0.2, 0.03)) for _ in range(500)]
    strategy = PercentileStrategy(PercentileSettings())
    rec = strategy.run(_history(cores, 300 * MI), NOW)
    exact_p95 = sorted(cores)[int(0.95 * len(cores))]
    assert rec.cpu_cores is not None and rec.memory_bytes is not None
    assert exact_p95 <= float(rec.cpu_cores) <= exact_p95 * 1.07
    assert rec.memory_bytes == 345 * MI  # 300Mi + 15%, rounded up to a MiB
    assert rec.samples == 500 and rec.ready


def test_percentile_is_configurable_from_the_policy() -> None:
    cores = [0.1] * 60 + [1.0] * 40
    policy = Rightsizing(
        mode="Propose", cpu_percentile=50, memory_headroom_percent=0, min_samples=10
    )
    rec = PercentileStrategy(PercentileSettings.from_policy(policy)).run(
        _history(cores, 100 * MI), NOW
    )
    assert rec.cpu_cores is not None and rec.cpu_cores < Decimal("0.2")
    assert rec.memory_bytes == 100 * MI
    high = PercentileSettings.from_policy(Rightsizing(cpu_percentile=99, min_samples=10))
    rec99 = PercentileStrategy(high).run(_history(cores, 100 * MI), NOW)
    assert rec99.cpu_cores is not None and rec99.cpu_cores >= Decimal(1)


def test_floors_apply() -> None:
    rec = PercentileStrategy(PercentileSettings(min_samples=1)).run(
        _history([0.001] * 20, 1 * MI), NOW
    )
    assert rec.cpu_cores == Decimal("0.010")
    assert rec.memory_bytes == 20 * MI
    custom = PercentileSettings(min_samples=1, min_cpu="0.05", min_memory="64Mi")
    rec = PercentileStrategy(custom).run(_history([0.001] * 20, 1 * MI), NOW)
    assert rec.cpu_cores == Decimal("0.05") and rec.memory_bytes == 64 * MI


def test_bad_floor_quantity_refused() -> None:
    with pytest.raises(ValidationError, match="not valid"):
        PercentileSettings(min_cpu="ten millicores")


def test_nothing_before_min_samples() -> None:
    rec = PercentileStrategy(PercentileSettings(min_samples=12)).run(_history([0.5] * 11, MI), NOW)
    assert not rec.ready and rec.cpu_cores is None
    assert "needs 12 samples, has 11" in rec.reason


def test_memory_peak_outside_history_window_is_forgotten() -> None:
    hist = ContainerHistory()
    old = NOW.timestamp() - 10 * 86400
    hist.add_sample(old, 0.1, 4096 * MI, 5)
    for i in range(20):
        hist.add_sample(NOW.timestamp() - 100 + i, 0.1, 200 * MI, 5)
    rec = PercentileStrategy(PercentileSettings(min_samples=1)).run(hist, NOW)
    assert rec.memory_bytes == 230 * MI
    longer = PercentileSettings(min_samples=1, history_window=dt.timedelta(days=30))
    assert PercentileStrategy(longer).run(hist, NOW).memory_bytes == 4711 * MI  # 4710.4 up


def test_vpa_target_strategy_registered() -> None:
    assert {"percentile", "vpa-target"} <= set(STRATEGIES)
    strategy = make_strategy("vpa-target", {"min_samples": 1})
    rec = strategy.run(_history([0.5] * 30, 100 * MI), NOW)
    assert rec.cpu_cores is not None and Decimal("0.575") <= rec.cpu_cores <= Decimal("0.61")
    with pytest.raises(ValueError, match="unknown rightsizing strategy 'nope'"):
        make_strategy("nope")


def test_new_strategy_plugs_in_without_touching_the_runner() -> None:
    class FixedSettings(StrategySettings):
        cores: Decimal = Decimal("0.3")

    @register
    class Fixed(Strategy[FixedSettings]):
        name: ClassVar[str] = "fixed-test"
        settings_model: ClassVar[type[StrategySettings]] = FixedSettings

        def run(self, history: ContainerHistory, now: dt.datetime) -> Recommendation:
            return Recommendation(self.settings.cores, 64 * MI, history.samples)

    try:
        wl = WorkloadHistory({"app": _history([1.0] * 3, MI)})
        result = propose(
            wl,
            {"app": Resources.from_quantities("1", "128Mi")},
            make_strategy("fixed-test", {"cores": "0.25"}),
            NOW,
            replicas=1,
            cpu_core_hour=Decimal("0.04"),
            memory_gib_hour=Decimal("0.005"),
        )
        assert result.proposal is not None
        assert result.proposal.containers[0].cpu_request == "250m"
    finally:
        del STRATEGIES["fixed-test"]


def test_monthly_savings_exact_decimal() -> None:
    current = Resources.from_quantities("1", "2Gi")
    proposed = Resources.from_quantities("250m", "512Mi")
    saved = monthly_savings(current, proposed, 3, Decimal("0.031611"), Decimal("0.004237"))
    # (0.75 * 0.031611 + 1.5 * 0.004237) * 730 * 3
    assert saved == Decimal("65.84")
    assert monthly_savings(
        proposed, current, 3, Decimal("0.031611"), Decimal("0.004237")
    ) == Decimal("-65.84")
    # A request that is not set is left out rather than counted as zero.
    assert (
        monthly_savings(Resources.from_quantities(None, "1Gi"), proposed, 1, Decimal(1), Decimal(0))
        == 0
    )


def test_propose_builds_an_allocation_proposal() -> None:
    wl = WorkloadHistory(
        {
            "app": _history([0.2] * 40, 300 * MI),
            "sidecar": _history([0.001] * 40, 10 * MI),
            "young": _history([0.5] * 3, 10 * MI),
        }
    )
    current = {
        "app": Resources.from_requests({"cpu": "1", "memory": "1Gi"}),
        "sidecar": Resources.from_requests({"cpu": "100m", "memory": "64Mi"}),
    }
    result = propose(
        wl,
        current,
        PercentileStrategy(PercentileSettings()),
        NOW,
        replicas=2,
        cpu_core_hour=Decimal("0.04"),
        memory_gib_hour=Decimal("0.005"),
    )
    assert result.proposal is not None
    by_name = {c.container: c for c in result.proposal.containers}
    assert set(by_name) == {"app", "sidecar"}  # "young" has too few samples
    # 0.2 cores falls in the bucket [0.1960, 0.2158): the proposal is its upper bound (VPA).
    assert by_name["app"].cpu_request == "216m"
    assert by_name["app"].memory_request == "345Mi"
    assert by_name["app"].current_cpu_request == "1"
    assert by_name["app"].current_memory_request == "1Gi"
    assert by_name["sidecar"].cpu_request == "10m"
    assert by_name["sidecar"].memory_request == "20Mi"
    assert result.proposal.monthly_savings == sum(result.savings_by_container.values())
    assert result.proposal.monthly_savings > 0
    assert "young" in result.recommendations and not result.recommendations["young"].ready
    # It fits the Allocation status model and its wire form.
    status = AllocationStatus(proposal=result.proposal)
    wire = status.to_wire()
    assert wire["proposal"]["containers"][0]["cpuRequest"] == "216m"
    assert AllocationStatus.model_validate(wire).proposal == result.proposal


def test_no_proposal_without_enough_data() -> None:
    result = propose(
        {"app": _history([0.2] * 2, MI)},
        {},
        PercentileStrategy(PercentileSettings()),
        NOW,
        replicas=1,
        cpu_core_hour=Decimal(1),
        memory_gib_hour=Decimal(1),
    )
    assert result.proposal is None


def test_should_warn_at_twice_the_proposal() -> None:
    proposed = Resources.from_quantities("250m", "256Mi")
    assert should_warn(Resources.from_quantities("500m", "256Mi"), proposed)
    assert not should_warn(Resources.from_quantities("499m", "511Mi"), proposed)
    assert should_warn(Resources.from_quantities("250m", "512Mi"), proposed)
    assert not should_warn(Resources(), proposed)


def test_admission_warning_text() -> None:
    proposal = Proposal(
        containers=[
            ContainerProposal(container="web", cpu_request="250m", memory_request="256Mi"),
            ContainerProposal(container="log", cpu_request="50m", memory_request="64Mi"),
        ]
    )
    workload = WorkloadName("Deployment", "shop", "frontend")
    warnings = admission_warnings(
        workload,
        {
            "web": Resources.from_requests({"cpu": "2", "memory": "1Gi"}),
            "log": Resources.from_requests({"cpu": "50m", "memory": "64Mi"}),
        },
        proposal,
        replicas=4,
        cpu_core_hour=Decimal("0.04"),
        memory_gib_hour=Decimal("0.005"),
        currency="EUR",
    )
    assert len(warnings) == 1
    text = warnings[0]
    assert "deployment/frontend in namespace shop" in text
    assert "container web" in text
    assert "cpu=2 memory=1Gi" in text
    assert "cpu=250m memory=256Mi" in text
    # (1.75 * 0.04 + 0.75 * 0.005) * 730 * 4 = 215.35
    assert "215.35 EUR/month" in text
    assert len(text) <= 256 and "\n" not in text
    assert (
        admission_warnings(
            workload, {}, None, replicas=1, cpu_core_hour=Decimal(1), memory_gib_hour=Decimal(1)
        )
        == []
    )


def test_warning_text_is_capped() -> None:
    long = WorkloadName("Deployment", "n" * 63, "x" * 200)
    text = warning_text(
        long, "c" * 63, Resources(Decimal(2), MI), Resources(Decimal(1), MI), Decimal(1)
    )
    assert len(text) == 256 and text.endswith("...")
