"""Budgets: spend so far, forecast at the run rate, thresholds, and admission projections.

Everything here is arithmetic on Decimal money and timestamps, so the admission webhook and
the status writer reach the same verdict from the same figures, and a unit test can too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from kopeck.accounting.cost import money
from kopeck.accounting.periods import PeriodWindow, as_utc, seconds_left
from kopeck.accounting.prices import HOUR, MONTH_HOURS, Rates

ZERO = Decimal(0)
MONTH_SECONDS = MONTH_HOURS * HOUR


@dataclass(frozen=True)
class PodShape:
    """Requests of one replica of a workload, summed over its containers."""

    cpu_cores: Decimal = ZERO
    memory_bytes: Decimal = ZERO
    gpus: Decimal = ZERO

    def cost_per_second(self, rates: Rates) -> Decimal:
        """What one replica costs per second at its requests."""
        return (
            self.cpu_cores * rates.cpu_core_second
            + self.memory_bytes * rates.memory_byte_second
            + self.gpus * rates.gpu_second
        )


def run_rate(spent: Decimal, window: PeriodWindow, now: dt.datetime) -> Decimal:
    """Average spend per second since the period began (0 at its very start)."""
    elapsed = Decimal((min(as_utc(now), window.end) - window.start).total_seconds())
    return spent / elapsed if elapsed > 0 else ZERO


def forecast(
    spent: Decimal, rate_per_second: Decimal, window: PeriodWindow, now: dt.datetime
) -> Decimal:
    """Spend expected at the end of the period if the current rate holds."""
    return money(spent + rate_per_second * seconds_left(window, now))


def remaining(amount: Decimal, spent: Decimal) -> Decimal:
    """Budget left (negative when exceeded)."""
    return amount - spent


def thresholds_reached(amount: Decimal, spent: Decimal, thresholds: Iterable[int]) -> list[int]:
    """The threshold percentages that spent has reached, ascending."""
    if amount <= 0:
        return sorted(thresholds)
    return sorted(t for t in thresholds if spent * 100 >= amount * t)


def newly_crossed(reached: Sequence[int], announced: Iterable[int]) -> list[int]:
    """Thresholds reached but not yet announced this period: one Event each."""
    done = set(announced)
    return [t for t in reached if t not in done]


@dataclass(frozen=True)
class Projection:
    """The admission arithmetic for one change, all in the policy's currency."""

    added_per_second: Decimal
    added_to_period_end: Decimal
    added_monthly: Decimal
    spent: Decimal
    committed: Decimal
    reserved: Decimal
    amount: Decimal

    @property
    def projected(self) -> Decimal:
        """Spend at the period's end if the change is admitted."""
        return self.spent + self.committed + self.reserved + self.added_to_period_end

    @property
    def over_budget(self) -> bool:
        """True when an increase would take the period past its budget."""
        return self.added_to_period_end > 0 and self.projected > self.amount


def project_change(
    *,
    old: PodShape | None,
    old_replicas: int,
    new: PodShape,
    new_replicas: int,
    rates: Rates,
    window: PeriodWindow,
    now: dt.datetime,
    amount: Decimal,
    spent: Decimal,
    reserved: Decimal,
    committed_rate_per_second: Decimal = ZERO,
) -> Projection:
    """Project the period's spend with a workload change: requests x replicas x rates x time left.

    `committed_rate_per_second` is the current run rate of what already runs (0 reproduces
    the plain "spent + added" rule); `reserved` is spend promised to earlier admissions.
    """
    before = old.cost_per_second(rates) * old_replicas if old is not None else ZERO
    after = new.cost_per_second(rates) * new_replicas
    added = after - before
    left = seconds_left(window, now)
    return Projection(
        added_per_second=added,
        added_to_period_end=money(added * left),
        added_monthly=money(added * MONTH_SECONDS),
        spent=spent,
        committed=money(committed_rate_per_second * left),
        reserved=reserved,
        amount=amount,
    )
