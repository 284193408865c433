"""Spend-rate anomaly detectors: a pydantic settings model and one method each (KRR's pattern).

A detector sees one series (a namespace's or a workload's spend per hour, one point per
accounting sample) and answers, per point, whether it is anomalous. Its state is a small
JSON-able dict the caller keeps (the operator checkpoints it), so detectors are pure.

Every detector here shares the life cycle users expect:

- warm-up: until ``warm_up_samples`` points exist there is no baseline to trust, so a point
  is anomalous only above the static limit (``static_threshold_multiplier`` x the budget's
  even spend rate);
- after warm-up: a robust score (deviation from the baseline in robust standard deviations)
  above ``k`` (Low 6, Medium 4.5, High 3.5) is anomalous: at 5 s reports a Gaussian
  tail of 3.5 would alarm every few hours on pure noise, 4.5 about once a month; only rises count by default;
- episodes: consecutive anomalous points form one episode, and only its first point asks
  for an Event (``first_in_episode``), so a sustained rise is one alert, not one per report;
- level shifts: an episode that lasts ``shift_samples`` points is a new normal; the
  baseline jumps to the episode's level and the alert clears. A sustained drop (with
  ``direction`` Up) becomes the baseline the same way, without an alert.
"""

from __future__ import annotations

import abc
import datetime as dt
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kopeck.api.costpolicy import Anomaly as AnomalyPolicy

Sensitivity = Literal["Low", "Medium", "High"]
K_BY_SENSITIVITY: dict[str, float] = {"Low": 6.0, "Medium": 4.5, "High": 3.5}
"""Robust standard deviations above the baseline that count as anomalous."""
MAD_TO_SIGMA = 1.4826
"""Median absolute deviation -> standard deviation, for normal noise."""
MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2)
"""Mean absolute deviation -> standard deviation, for normal noise."""
RATE_QUANTUM = Decimal("0.000001")
_DIGITS = 8
"""Significant digits kept for floats in the state."""


def _r(value: float) -> float:
    return float(f"{value:.{_DIGITS}g}")


@dataclass(frozen=True)
class RateSample:
    """One point of a spend-rate series and what is needed to judge and describe it."""

    at: dt.datetime
    rate_per_hour: Decimal
    """Observed spend per hour over the last accounting interval."""
    subject: str
    """Who spent it, for messages, e.g. 'namespace shop' or 'deployment shop/web'."""
    budget_rate_per_hour: Decimal | None = None
    """The budget's even spend rate (amount / hours in the period); None without a budget."""
    currency: str = "USD"


@dataclass(frozen=True)
class Anomaly:
    """An anomalous point: the figures for the condition, the Event and the metric."""

    subject: str
    at: dt.datetime
    observed_per_hour: Decimal
    expected_per_hour: Decimal
    score: float
    """Robust z-score after warm-up; observed / static limit during warm-up."""
    threshold: float
    """The score above which a point is anomalous."""
    phase: Literal["WarmUp", "Baseline"]
    first_in_episode: bool
    """True for the first point of a run of anomalous points: emit the Event for this one."""
    message: str


@dataclass(frozen=True)
class Detection:
    """The detector's answer for one point, and its state after it."""

    state: dict[str, Any]
    anomaly: Anomaly | None = None
    baseline_shifted: bool = False
    """A sustained change was accepted as the new baseline at this point."""

    @property
    def anomalous(self) -> bool:
        """Whether the point is anomalous (the condition should be True)."""
        return self.anomaly is not None


class DetectorSettings(BaseModel):
    """Settings every detector reads (mirrors CostPolicy ``spec.anomaly``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensitivity: Sensitivity = "Medium"
    """High flags smaller deviations."""
    warm_up_samples: int = Field(default=12, ge=1)
    """Points before the baseline is trusted."""
    static_threshold_multiplier: Decimal = Field(default=Decimal(5), gt=0)
    """During warm-up, anomalous above this many times the budget's even rate."""
    direction: Literal["Up", "Both"] = "Up"
    """Up: only rises in spend are anomalies (a drop saves money)."""
    min_relative_sigma: float = Field(default=0.1, ge=0)
    """Floor of the robust deviation as a fraction of the baseline: a perfectly steady
    series must still rise by k x this (Medium: 45%) to be anomalous, so an autoscaler
    adding one replica in four is not an alarm while a doubling always is."""
    min_abs_sigma_per_hour: float = Field(default=1e-6, ge=0)
    """Absolute floor of the deviation, so a zero baseline does not make every cent odd."""
    shift_samples: int = Field(default=12, ge=1)
    """An episode this long is a level shift: the baseline moves to it."""

    @property
    def k(self) -> float:
        """Robust standard deviations that count as anomalous."""
        return K_BY_SENSITIVITY[self.sensitivity]

    @classmethod
    def from_policy(cls, policy: AnomalyPolicy, **overrides: Any) -> Self:
        """Settings from a CostPolicy's ``spec.anomaly`` (``enabled`` is the caller's)."""
        values: dict[str, Any] = {
            "sensitivity": policy.sensitivity,
            "warm_up_samples": policy.warm_up_samples,
            "static_threshold_multiplier": policy.static_threshold_multiplier,
        }
        values.update(overrides)
        return cls(**values)


S = TypeVar("S", bound=DetectorSettings)


class Detector(abc.ABC, Generic[S]):
    """A spend-rate detector. Subclasses set ``name``/``settings_model``, implement ``detect``."""

    name: ClassVar[str]
    settings_model: ClassVar[type[DetectorSettings]]

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @abc.abstractmethod
    def detect(self, state: Mapping[str, Any] | None, sample: RateSample) -> Detection:
        """Judge one point given the state after the previous one."""


DETECTORS: dict[str, type[Detector[Any]]] = {}
"""Registered detectors by name."""

D = TypeVar("D", bound=type[Detector[Any]])


def register(cls: D) -> D:
    """Class decorator: make a detector available by its ``name``."""
    DETECTORS[cls.name] = cls
    return cls


def make_detector(
    name: str = "ewma-mad", settings: Mapping[str, Any] | DetectorSettings | None = None
) -> Detector[Any]:
    """Build a registered detector from a name and raw (or parsed) settings."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        known = ", ".join(sorted(DETECTORS))
        raise ValueError(f"unknown anomaly detector {name!r}; known: {known}") from None
    if isinstance(settings, DetectorSettings):
        return cls(cls.settings_model.model_validate(settings.model_dump()))
    return cls(cls.settings_model.model_validate(dict(settings or {})))


def _money(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(RATE_QUANTUM)


class BaselineDetector(Detector[S]):
    """Warm-up, episodes and level shifts around a baseline that subclasses keep.

    Subclasses implement three small hooks on their own state dict: the baseline and its
    robust deviation, how a normal point updates them, and how to restart them at a level.
    """

    @abc.abstractmethod
    def _baseline(self, state: Mapping[str, Any]) -> tuple[float, float]:
        """(expected rate, robust standard deviation) before this point."""

    @abc.abstractmethod
    def _learn(self, state: dict[str, Any], x: float, k_sigma: float) -> None:
        """Fold a normal point into the baseline (``k_sigma`` bounds a point's pull)."""

    @abc.abstractmethod
    def _start(self, state: dict[str, Any], values: list[float]) -> None:
        """(Re)start the baseline from a list of points (warm-up or a level shift)."""

    def detect(self, state: Mapping[str, Any] | None, sample: RateSample) -> Detection:
        """Judge one point; see the module docstring for the life cycle."""
        st: dict[str, Any] = dict(state or {})
        st.setdefault("n", 0)
        x = float(sample.rate_per_hour)
        s = self.settings
        if st["n"] < s.warm_up_samples:
            return self._warm_up(st, x, sample)
        expected, sigma = self._baseline(st)
        sigma = max(sigma, s.min_relative_sigma * abs(expected), s.min_abs_sigma_per_hour)
        z = (x - expected) / sigma
        anomalous = z > s.k or (s.direction == "Both" and z < -s.k)
        st["n"] += 1
        if not anomalous and z < -s.k:
            # A big drop is no alarm, but it must not inflate the deviation either: wait
            # shift_samples points, then take the lower level as the baseline.
            st.pop("run", None)
            low = st.get("low") or [0, 0.0]
            low = [int(low[0]) + 1, _r(float(low[1]) + x)]
            if low[0] >= s.shift_samples:
                st.pop("low", None)
                self._start(st, [low[1] / low[0]])
                return Detection(st, baseline_shifted=True)
            st["low"] = low
            return Detection(st)
        st.pop("low", None)
        if not anomalous:
            st.pop("run", None)
            self._learn(st, x, s.k * sigma)
            return Detection(st)
        run = st.get("run") or [0, 0.0]
        run = [int(run[0]) + 1, _r(float(run[1]) + x)]
        if run[0] >= s.shift_samples:
            st.pop("run", None)
            self._start(st, [run[1] / run[0]])
            return Detection(st, baseline_shifted=True)
        st["run"] = run
        anomaly = Anomaly(
            subject=sample.subject,
            at=sample.at,
            observed_per_hour=_money(x),
            expected_per_hour=_money(expected),
            score=round(z, 3),
            threshold=s.k,
            phase="Baseline",
            first_in_episode=run[0] == 1,
            message=(
                f"spend rate of {sample.subject} is {_money(x):.4f} {sample.currency}/h, "
                f"{_ratio(x, expected)} the expected {_money(expected):.4f} {sample.currency}/h "
                f"(score {z:.1f} > {s.k} at sensitivity {s.sensitivity})"
            ),
        )
        return Detection(st, anomaly)

    def _warm_up(self, st: dict[str, Any], x: float, sample: RateSample) -> Detection:
        s = self.settings
        warm: list[float] = [float(v) for v in st.get("warm", [])]
        limit = (
            None
            if sample.budget_rate_per_hour is None
            else float(sample.budget_rate_per_hour * s.static_threshold_multiplier)
        )
        anomalous = limit is not None and x > limit
        st["n"] += 1
        if not anomalous:
            warm.append(_r(x))
        run_length = 0
        if anomalous:
            run = st.get("run") or [0, 0.0]
            run_length = int(run[0]) + 1
            st["run"] = [run_length, _r(float(run[1]) + x)]
        else:
            st.pop("run", None)
        if st["n"] >= s.warm_up_samples:
            st.pop("warm", None)
            st.pop("run", None)
            self._start(st, warm or [_r(x)])
        else:
            st["warm"] = warm
        if not anomalous or limit is None:
            return Detection(st)
        expected = statistics.median(warm) if warm else float(sample.budget_rate_per_hour or 0)
        return Detection(
            st,
            Anomaly(
                subject=sample.subject,
                at=sample.at,
                observed_per_hour=_money(x),
                expected_per_hour=_money(expected),
                score=round(x / limit, 3) if limit > 0 else math.inf,
                threshold=1.0,
                phase="WarmUp",
                first_in_episode=run_length == 1,
                message=(
                    f"spend rate of {sample.subject} is {_money(x):.4f} {sample.currency}/h, "
                    f"above the warm-up limit of {_money(limit):.4f} {sample.currency}/h "
                    f"({s.static_threshold_multiplier}x the budget's even rate; "
                    f"baseline after {s.warm_up_samples} samples)"
                ),
            ),
        )


def _ratio(x: float, expected: float) -> str:
    if expected <= 0:
        return "above"
    return f"{x / expected:.1f}x"


class EwmaMadSettings(DetectorSettings):
    """Exponentially weighted mean and mean absolute deviation."""

    span: int = Field(default=120, ge=2)
    """Points of memory of the EWMA (alpha = 2 / (span + 1)); 120 reports = 10 min at 5 s."""


@register
class EwmaMadDetector(BaselineDetector[EwmaMadSettings]):
    """Robust EWMA: the mean and the absolute deviation decay; outliers never feed them.

    State: ``{"n", "mean", "sigma"}`` plus ``warm`` during warm-up and ``run`` in an episode.
    """

    name = "ewma-mad"
    settings_model = EwmaMadSettings

    def _baseline(self, state: Mapping[str, Any]) -> tuple[float, float]:
        return float(state["mean"]), float(state["sigma"])

    def _learn(self, state: dict[str, Any], x: float, k_sigma: float) -> None:
        alpha = 2 / (self.settings.span + 1)
        mean = float(state["mean"])
        deviation = min(abs(x - mean), k_sigma)
        state["mean"] = _r(mean + alpha * (x - mean))
        state["sigma"] = _r(
            (1 - alpha) * float(state["sigma"]) + alpha * MEAN_ABS_TO_SIGMA * deviation
        )

    def _start(self, state: dict[str, Any], values: list[float]) -> None:
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        state["mean"] = _r(median)
        if "sigma" not in state or len(values) > 1:
            state["sigma"] = _r(MAD_TO_SIGMA * mad)


class RollingMedianSettings(DetectorSettings):
    """Median and MAD over the last points."""

    window: int = Field(default=60, ge=3, le=500)
    """Points kept (and stored in the state)."""


@register
class RollingMedianDetector(BaselineDetector[RollingMedianSettings]):
    """Median/MAD over a rolling window: the most robust, at the cost of a bigger state.

    State: ``{"n", "w": [recent normal points]}`` plus ``warm``/``run``.
    """

    name = "rolling-median"
    settings_model = RollingMedianSettings

    def _baseline(self, state: Mapping[str, Any]) -> tuple[float, float]:
        values = [float(v) for v in state["w"]]
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        return median, MAD_TO_SIGMA * mad

    def _learn(self, state: dict[str, Any], x: float, k_sigma: float) -> None:
        window = [*state["w"], _r(x)]
        state["w"] = window[-self.settings.window :]

    def _start(self, state: dict[str, Any], values: list[float]) -> None:
        state["w"] = [_r(v) for v in values][-self.settings.window :]
