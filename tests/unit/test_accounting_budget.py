"""Budget arithmetic: forecast, thresholds, and the admission projection."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from kopeck.accounting.budget import (
    PodShape,
    forecast,
    newly_crossed,
    project_change,
    run_rate,
    thresholds_reached,
)
from kopeck.accounting.periods import period_at
from kopeck.accounting.prices import NodeFacts, rates_for_node
from kopeck.api.costpolicy import Pricing

UTC = dt.UTC
RATES = rates_for_node(
    Pricing.model_validate({"rateCard": {"cpuCoreHour": "0.036", "memoryGiBHour": "0.0045"}}),
    NodeFacts("any"),
)


def test_forecast_at_run_rate() -> None:
    month = period_at("Monthly", dt.datetime(2026, 11, 1, tzinfo=UTC))  # 30 days
    now = dt.datetime(2026, 11, 11, tzinfo=UTC)  # 10 days in
    rate = run_rate(Decimal(100), month, now)
    assert forecast(Decimal(100), rate, month, now) == Decimal(300)


def test_thresholds_once_each() -> None:
    reached = thresholds_reached(Decimal(100), Decimal("80"), [50, 80, 100])
    assert reached == [50, 80]
    assert newly_crossed(reached, [50]) == [80]
    assert newly_crossed(reached, [50, 80]) == []


def test_projection_fits_exactly_ten() -> None:
    """A budget that fits ten replicas-worth of a change admits the tenth, not the eleventh."""
    month = period_at("Monthly", dt.datetime(2026, 11, 1, tzinfo=UTC))
    now = dt.datetime(2026, 11, 16, tzinfo=UTC)
    shape = PodShape(cpu_cores=Decimal(1), memory_bytes=Decimal(2**30))
    one = project_change(
        old=None, old_replicas=0, new=shape, new_replicas=1, rates=RATES, window=month,
        now=now, amount=Decimal(1000), spent=Decimal(0), reserved=Decimal(0),
    )
    per = one.added_to_period_end
    assert per == Decimal("0.0405") * 15 * 24
    amount = per * 10 + Decimal("0.01")
    reserved = Decimal(0)
    admitted = 0
    for _ in range(50):
        p = project_change(
            old=None, old_replicas=0, new=shape, new_replicas=1, rates=RATES, window=month,
            now=now, amount=amount, spent=Decimal(0), reserved=reserved,
        )
        if not p.over_budget:
            admitted += 1
            reserved += p.added_to_period_end
    assert admitted == 10
    assert one.added_monthly == Decimal("0.0405") * 730


def test_scale_down_is_never_over_budget() -> None:
    month = period_at("Monthly", dt.datetime(2026, 11, 1, tzinfo=UTC))
    shape = PodShape(cpu_cores=Decimal(2))
    p = project_change(
        old=shape, old_replicas=5, new=shape, new_replicas=2, rates=RATES, window=month,
        now=dt.datetime(2026, 11, 2, tzinfo=UTC), amount=Decimal(1), spent=Decimal(50),
        reserved=Decimal(0),
    )
    assert p.added_to_period_end < 0 and not p.over_budget
