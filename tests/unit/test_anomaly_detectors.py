"""Spend-rate anomaly detection on synthetic and recorded-shape series."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from typing import Any

import pytest

from kopeck.anomaly import (
    DETECTORS,
    Detection,
    DetectorSettings,
    EwmaMadSettings,
    RateSample,
    SpendMonitor,
    even_rate_per_hour,
    make_detector,
    spend_rate_per_hour,
)
from kopeck.api.costpolicy import Anomaly as AnomalyPolicy

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
DETECTOR_NAMES = ["ewma-mad", "rolling-median"]


def run(
    name: str,
    rates: list[float],
    budget_rate: Decimal | None = None,
    **settings: Any,
) -> list[Detection]:
    detector = make_detector(name, settings)
    state: dict[str, Any] | None = None
    out = []
    for i, r in enumerate(rates):
        sample = RateSample(
            T0 + dt.timedelta(seconds=5 * i),
            Decimal(str(r)),
            "namespace shop",
            budget_rate,
        )
        d = detector.detect(state, sample)
        # The state is JSON and what comes back from JSON behaves the same.
        state = json.loads(json.dumps(d.state))
        out.append(d)
    return out


def noisy(n: int, level: float = 1.0, rel: float = 0.03, seed: int = 5) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(level, rel * level)) for _ in range(n)]


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_warm_up_uses_the_static_threshold(name: str) -> None:
    # Budget 720/month -> 1.0/h even rate; multiplier 5 -> limit 5.0/h.
    budget_rate = Decimal(1)
    rates = [0.5, 0.6, 4.9, 5.5, 0.5, 0.55]
    out = run(name, rates, budget_rate, warm_up_samples=12)
    flagged = [i for i, d in enumerate(out) if d.anomalous]
    assert flagged == [3]
    a = out[3].anomaly
    assert a is not None and a.phase == "WarmUp" and a.first_in_episode
    assert a.observed_per_hour == Decimal("5.500000")
    assert a.score == pytest.approx(1.1)
    assert "above the warm-up limit of 5.0000 USD/h" in a.message
    assert "namespace shop" in a.message
    # Without a budget there is no static limit: nothing is flagged in warm-up.
    assert not any(d.anomalous for d in run(name, rates, None, warm_up_samples=12))


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_steady_noise_is_not_flagged(name: str) -> None:
    for seed in range(4):
        out = run(name, noisy(1500, rel=0.05, seed=seed), Decimal(1))
        assert not any(d.anomalous for d in out), seed


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_spike_after_warm_up_is_flagged_once_and_baseline_kept(name: str) -> None:
    rates = [*noisy(100), 3.0, *noisy(50, seed=9)]
    out = run(name, rates, Decimal(1))
    flagged = [i for i, d in enumerate(out) if d.anomalous]
    assert flagged == [100]
    a = out[100].anomaly
    assert a is not None and a.phase == "Baseline" and a.first_in_episode
    assert a.expected_per_hour == pytest.approx(Decimal(1), rel=Decimal("0.05"))
    assert a.score > 4.5
    assert "3.0x the expected" in a.message and "sensitivity Medium" in a.message
    # The spike did not move the baseline: an equal second spike is flagged again.
    again = run(name, [*rates, 3.0], Decimal(1))
    assert again[-1].anomalous


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_level_shift_becomes_the_new_baseline(name: str) -> None:
    rates = noisy(100) + noisy(300, level=2.0, seed=8)
    out = run(name, rates, Decimal(1), shift_samples=12)
    flagged = [i for i, d in enumerate(out) if d.anomalous]
    events = [i for i, d in enumerate(out) if d.anomaly and d.anomaly.first_in_episode]
    assert events == [100]  # one Event, not one per report
    assert flagged == list(range(100, 111))  # the condition clears after 12 points
    assert out[111].baseline_shifted
    # Later points at the new level are normal; a spike above the new level is not.
    tail = run(name, [*rates, 6.0], Decimal(1), shift_samples=12)
    assert tail[-1].anomalous


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_drops_are_not_anomalies_and_are_learnt(name: str) -> None:
    rates = noisy(100, level=2.0) + noisy(200, level=1.0, seed=3) + [1.6]
    out = run(name, rates, Decimal(1))
    assert not any(d.anomalous for d in out[:-1])
    assert out[-1].anomalous  # 1.6 is a rise against the learnt 1.0
    both = run(name, [*noisy(100, level=2.0), 0.5], Decimal(1), direction="Both")
    assert both[-1].anomalous


def test_sensitivity_changes_what_is_flagged() -> None:
    rates = [*noisy(200, rel=0.05), 1.5]
    assert run("ewma-mad", rates, None, sensitivity="High")[-1].anomalous
    assert not run("ewma-mad", rates, None, sensitivity="Low")[-1].anomalous


def test_settings_from_policy() -> None:
    policy = AnomalyPolicy(
        sensitivity="High", warm_up_samples=30, static_threshold_multiplier=Decimal(3)
    )
    settings = EwmaMadSettings.from_policy(policy)
    assert isinstance(settings, EwmaMadSettings)
    assert settings.k == 3.5 and settings.warm_up_samples == 30
    detector = make_detector("rolling-median", DetectorSettings.from_policy(policy))
    assert detector.settings.warm_up_samples == 30
    with pytest.raises(ValueError, match="unknown anomaly detector 'nope'"):
        make_detector("nope")
    assert set(DETECTOR_NAMES) <= set(DETECTORS)


def test_zero_baseline_does_not_flag_cents() -> None:
    rates = [0.0] * 50 + [0.0000001]
    assert not run("ewma-mad", rates, None)[-1].anomalous
    assert run("ewma-mad", [0.0] * 50 + [0.5], None)[-1].anomalous


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_state_is_small_and_round_trips(name: str) -> None:
    detector = make_detector(name)
    state: dict[str, Any] | None = None
    for i, r in enumerate([*noisy(500), 5.0]):
        sample = RateSample(T0 + dt.timedelta(seconds=5 * i), Decimal(str(r)), "ns")
        d = detector.detect(state, sample)
        restored = json.loads(json.dumps(d.state))
        assert restored == d.state
        state = restored
    assert len(json.dumps(state)) < (100 if name == "ewma-mad" else 1000)


def test_spend_rates() -> None:
    t1 = T0 + dt.timedelta(seconds=5)
    assert spend_rate_per_hour(T0, Decimal("1.00"), t1, Decimal("1.01")) == Decimal("7.2")
    assert spend_rate_per_hour(T0, Decimal(1), T0, Decimal(2)) is None
    assert spend_rate_per_hour(T0, Decimal(5), t1, Decimal(1)) is None  # new period
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    end = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert even_rate_per_hour(Decimal(720), start, end) == Decimal(1)


def test_monitor_from_cumulative_totals_and_checkpoint() -> None:
    monitor = SpendMonitor()
    total = Decimal(0)
    detections = []
    for i in range(200):
        per_interval = Decimal("0.0014") if i != 150 else Decimal("0.02")
        total += per_interval
        at = T0 + dt.timedelta(seconds=5 * i)
        d = monitor.observe_total(
            "ns/shop", "namespace shop", at, total, budget_rate_per_hour=Decimal(1)
        )
        detections.append(d)
        if i == 100:
            # Restart the operator: checkpoint, JSON, restore.
            text = json.dumps(monitor.to_dict())
            monitor = SpendMonitor.from_dict(json.loads(text))
    assert detections[0] is None
    flagged = [i for i, d in enumerate(detections) if d is not None and d.anomalous]
    assert flagged == [150]
    anomaly = detections[150].anomaly if detections[150] else None
    assert anomaly is not None
    assert anomaly.observed_per_hour == Decimal("14.400000")
    assert anomaly.expected_per_hour == Decimal("1.008000")
    assert len(json.dumps(monitor.to_dict())) < 200
    # Another detector's checkpoint is not misread.
    other = SpendMonitor.from_dict(monitor.to_dict(), make_detector("rolling-median"))
    assert other.series == {}
    monitor.forget("ns/shop")
    assert monitor.series == {}


def test_monitor_observe_rate_keeps_keys_apart() -> None:
    monitor = SpendMonitor()
    for i in range(40):
        at = T0 + dt.timedelta(seconds=5 * i)
        monitor.observe_rate("ns/a", "namespace a", at, Decimal(1))
        d = monitor.observe_rate("ns/b", "namespace b", at, Decimal(10 if i == 39 else 2))
    assert d.anomalous and d.anomaly is not None and d.anomaly.subject == "namespace b"
    assert set(monitor.series) == {"ns/a", "ns/b"}


def _replicas_cost(replicas: list[int], per_replica: float = 0.12) -> list[float]:
    """Spend per hour of a Deployment priced by request: steps when it scales."""
    return [r * per_replica for r in replicas]


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_autoscaling_steps_and_a_runaway_scale_up(name: str) -> None:
    replicas = [3] * 60 + [4] * 60 + [3] * 60 + [9] * 80
    out = run(name, _replicas_cost(replicas), Decimal(1))
    events = [i for i, d in enumerate(out) if d.anomaly and d.anomaly.first_in_episode]
    assert events == [180]  # 3 -> 4 is normal scaling; 3 -> 9 is the one alarm
    assert not any(d.anomalous for d in out[200:])
