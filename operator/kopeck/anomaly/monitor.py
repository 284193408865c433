"""Spend rates from accounting samples, and one detector state per namespace or workload.

The operator feeds each accounting sample (the money spent so far this period by a
namespace or a workload) to ``SpendMonitor.observe_total``; the monitor turns successive
totals into money per hour and asks the detector. ``to_dict``/``from_dict`` give the small
JSON-able state to checkpoint (e.g. in CostPolicy status or a ConfigMap).

Checkpoint::

    {"v": 1, "detector": "ewma-mad",
     "series": {"ns/shop": {"last": [1763899200.0, "12.345678"],
                            "d": {"n": 240, "mean": 0.41, "sigma": 0.012}}}}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kopeck.anomaly.detectors import Detection, Detector, RateSample, make_detector

CHECKPOINT_VERSION = 1
SECONDS_PER_HOUR = Decimal(3600)


def spend_rate_per_hour(
    previous_at: dt.datetime,
    previous_total: Decimal,
    at: dt.datetime,
    total: Decimal,
) -> Decimal | None:
    """Money per hour between two cumulative totals; None when it cannot be told.

    None for a non-increasing time (duplicate or reordered sample) and for a falling total
    (a new period started, or the record was reset).
    """
    seconds = Decimal(str((at - previous_at).total_seconds()))
    if seconds <= 0 or total < previous_total:
        return None
    return (total - previous_total) * SECONDS_PER_HOUR / seconds


def even_rate_per_hour(
    budget_amount: Decimal, period_start: dt.datetime, period_end: dt.datetime
) -> Decimal:
    """The budget's even spend rate: the amount spread evenly over the period's hours."""
    hours = Decimal(str((period_end - period_start).total_seconds())) / SECONDS_PER_HOUR
    return budget_amount / hours if hours > 0 else Decimal(0)


@dataclass
class SpendMonitor:
    """Per-key (namespace or workload) spend-rate series and their detector states."""

    detector: Detector[Any] = field(default_factory=make_detector)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)

    def observe_total(
        self,
        key: str,
        subject: str,
        at: dt.datetime,
        total_spent: Decimal,
        *,
        budget_rate_per_hour: Decimal | None = None,
        currency: str = "USD",
    ) -> Detection | None:
        """Fold a cumulative total; None for the first sample or one that gives no rate."""
        entry = self.series.setdefault(key, {})
        last = entry.get("last")
        entry["last"] = [at.timestamp(), str(total_spent)]
        if last is None:
            return None
        previous_at = dt.datetime.fromtimestamp(float(last[0]), dt.UTC)
        rate = spend_rate_per_hour(previous_at, Decimal(last[1]), at, total_spent)
        if rate is None:
            return None
        return self._detect(entry, subject, at, rate, budget_rate_per_hour, currency)

    def observe_rate(
        self,
        key: str,
        subject: str,
        at: dt.datetime,
        rate_per_hour: Decimal,
        *,
        budget_rate_per_hour: Decimal | None = None,
        currency: str = "USD",
    ) -> Detection:
        """Fold a rate the caller computed (e.g. one report's cost over its interval)."""
        entry = self.series.setdefault(key, {})
        return self._detect(entry, subject, at, rate_per_hour, budget_rate_per_hour, currency)

    def _detect(
        self,
        entry: dict[str, Any],
        subject: str,
        at: dt.datetime,
        rate: Decimal,
        budget_rate_per_hour: Decimal | None,
        currency: str,
    ) -> Detection:
        sample = RateSample(at, rate, subject, budget_rate_per_hour, currency)
        detection = self.detector.detect(entry.get("d"), sample)
        entry["d"] = detection.state
        return detection

    def forget(self, key: str) -> None:
        """Drop a series (its workload or namespace is gone)."""
        self.series.pop(key, None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able checkpoint described in the module docstring."""
        return {"v": CHECKPOINT_VERSION, "detector": self.detector.name, "series": self.series}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, detector: Detector[Any] | None = None
    ) -> SpendMonitor:
        """Restore; a missing or foreign checkpoint (other version or detector) starts afresh."""
        detector = detector or make_detector()
        if not data or data.get("v") != CHECKPOINT_VERSION or data.get("detector") != detector.name:
            return cls(detector)
        series = {str(k): dict(v) for k, v in (data.get("series") or {}).items()}
        return cls(detector, series)
