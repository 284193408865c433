"""Recommenders: each a class with a pydantic settings model and one method (KRR's pattern).

A strategy turns one container's ``ContainerHistory`` into a ``Recommendation``; it knows
nothing of where the history came from (reports or Prometheus), so both sources give the
same answer for the same data. New strategies register themselves with ``@register`` and
the runner (``kopeck.rightsizing.proposal``) picks them by name.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kopeck.api.costpolicy import Rightsizing
from kopeck.rightsizing.history import ContainerHistory
from kopeck.rightsizing.quantity import (
    parse_cpu,
    parse_duration,
    parse_memory,
    round_up_cpu,
    round_up_memory,
)


@dataclass(frozen=True)
class Recommendation:
    """Proposed requests for one container, or why there is none yet."""

    cpu_cores: Decimal | None
    """Proposed CPU request in cores (whole millicores), None when not enough data."""
    memory_bytes: int | None
    """Proposed memory request in bytes (whole MiB), None when not enough data."""
    samples: int
    """Observations the recommendation rests on."""
    reason: str = ""
    """Why no recommendation was made, for a condition message."""

    @property
    def ready(self) -> bool:
        """Both figures are known."""
        return self.cpu_cores is not None and self.memory_bytes is not None


class StrategySettings(BaseModel):
    """Settings common to every strategy: floors, evidence needed, history considered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_samples: int = Field(default=12, ge=1)
    """No recommendation before this many observations."""
    min_cpu: str = "10m"
    """Smallest CPU request ever proposed (quantity)."""
    min_memory: str = "20Mi"
    """Smallest memory request ever proposed (quantity)."""
    history_window: dt.timedelta = dt.timedelta(hours=168)
    """Memory peaks older than this are ignored; the Prometheus source queries this far back."""

    @field_validator("min_cpu")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        parse_cpu(value)
        return value

    @field_validator("min_memory")
    @classmethod
    def _memory_quantity(cls, value: str) -> str:
        parse_memory(value)
        return value

    @property
    def min_cpu_cores(self) -> Decimal:
        """The CPU floor in cores."""
        return parse_cpu(self.min_cpu)

    @property
    def min_memory_bytes(self) -> int:
        """The memory floor in bytes."""
        return parse_memory(self.min_memory)


S = TypeVar("S", bound=StrategySettings)


class Strategy(abc.ABC, Generic[S]):
    """A recommender. Subclasses set ``name`` and ``settings_model`` and implement ``run``."""

    name: ClassVar[str]
    settings_model: ClassVar[type[StrategySettings]]

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @abc.abstractmethod
    def run(self, history: ContainerHistory, now: dt.datetime) -> Recommendation:
        """Turn one container's history into a recommendation."""

    def _not_enough(self, history: ContainerHistory) -> Recommendation | None:
        if history.samples < self.settings.min_samples:
            return Recommendation(
                None,
                None,
                history.samples,
                f"needs {self.settings.min_samples} samples, has {history.samples}",
            )
        return None

    def _floor(self, cpu_cores: float, memory_bytes: float, samples: int) -> Recommendation:
        cpu = max(round_up_cpu(Decimal(repr(cpu_cores))), round_up_cpu(self.settings.min_cpu_cores))
        memory = max(round_up_memory(memory_bytes), round_up_memory(self.settings.min_memory_bytes))
        return Recommendation(cpu, memory, samples)


STRATEGIES: dict[str, type[Strategy[Any]]] = {}
"""Registered strategies by name."""

T = TypeVar("T", bound=type[Strategy[Any]])


def register(cls: T) -> T:
    """Class decorator: make a strategy available by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(
    name: str, settings: dict[str, Any] | StrategySettings | None = None
) -> Strategy[Any]:
    """Build a registered strategy from a name and raw (or parsed) settings."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown rightsizing strategy {name!r}; known: {known}") from None
    if isinstance(settings, StrategySettings):
        parsed = cls.settings_model.model_validate(settings.model_dump())
    else:
        parsed = cls.settings_model.model_validate(settings or {})
    return cls(parsed)


class PercentileSettings(StrategySettings):
    """KRR's simple strategy: a CPU percentile, memory peak plus headroom."""

    cpu_percentile: float = Field(default=95, gt=0, le=100)
    """CPU request = this percentile of the decaying CPU histogram."""
    memory_headroom_percent: float = Field(default=15, ge=0)
    """Memory request = peak working set in the history window plus this percentage."""

    @classmethod
    def from_policy(cls, policy: Rightsizing) -> PercentileSettings:
        """Settings from a CostPolicy's ``spec.rightsizing``."""
        return cls(
            cpu_percentile=policy.cpu_percentile,
            memory_headroom_percent=policy.memory_headroom_percent,
            min_samples=policy.min_samples,
            min_cpu=policy.min_cpu,
            min_memory=policy.min_memory,
            history_window=parse_duration(policy.history_window),
        )


@register
class PercentileStrategy(Strategy[PercentileSettings]):
    """CPU = pXX of usage (decaying histogram); memory = peak + headroom; both floored."""

    name = "percentile"
    settings_model = PercentileSettings

    def run(self, history: ContainerHistory, now: dt.datetime) -> Recommendation:
        """The default recommender (KRR defaults: p95 CPU, peak memory + 15%)."""
        missing = self._not_enough(history)
        if missing is not None:
            return missing
        cpu = history.cpu.percentile(self.settings.cpu_percentile / 100)
        since = now.timestamp() - self.settings.history_window.total_seconds()
        peak = history.peak_memory_bytes(since=since)
        memory = peak * (1 + self.settings.memory_headroom_percent / 100)
        return self._floor(cpu, memory, history.samples)


class VpaTargetSettings(StrategySettings):
    """VPA's target estimator: p90 CPU, p90 of memory peaks, both plus a safety margin."""

    cpu_percentile: float = Field(default=90, gt=0, le=100)
    """Percentile of the CPU histogram."""
    memory_percentile: float = Field(default=90, gt=0, le=100)
    """Percentile of the per-window memory peaks histogram."""
    safety_margin_percent: float = Field(default=15, ge=0)
    """Added to both (VPA's safetyMarginFraction 0.15)."""


@register
class VpaTargetStrategy(Strategy[VpaTargetSettings]):
    """Both resources from percentiles of the decaying histograms, as VPA's target."""

    name = "vpa-target"
    settings_model = VpaTargetSettings

    def run(self, history: ContainerHistory, now: dt.datetime) -> Recommendation:
        """VPA-style recommendation, for comparison with the percentile default."""
        missing = self._not_enough(history)
        if missing is not None:
            return missing
        margin = 1 + self.settings.safety_margin_percent / 100
        cpu = history.cpu.percentile(self.settings.cpu_percentile / 100) * margin
        memory = history.memory_histogram().percentile(self.settings.memory_percentile / 100)
        return self._floor(cpu, memory * margin, history.samples)
