"""Billing periods in UTC and intervals split across them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from kopeck.accounting.periods import elapsed_fraction, period_at, seconds_left, split_interval

UTC = dt.UTC


def test_period_names_and_bounds() -> None:
    t = dt.datetime(2026, 11, 23, 11, 45, tzinfo=UTC)
    d, w, m = period_at("Daily", t), period_at("Weekly", t), period_at("Monthly", t)
    assert (d.name, d.start, d.end) == (
        "2026-11-23", dt.datetime(2026, 11, 23, tzinfo=UTC), dt.datetime(2026, 11, 24, tzinfo=UTC)
    )
    assert w.name == "2026-W48" and w.start.weekday() == 0 and w.start.day == 23
    assert m.name == "2026-11" and m.end == dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert period_at("Monthly", dt.datetime(2026, 12, 31, 23, 59, tzinfo=UTC)).end.year == 2027
    # ISO week across a year boundary
    assert period_at("Weekly", dt.datetime(2027, 1, 1, tzinfo=UTC)).name == "2026-W53"


def test_naive_times_are_utc_and_aware_are_converted() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    t = dt.datetime(2026, 12, 1, 0, 30, tzinfo=berlin)  # 23:30 UTC on Nov 30
    assert period_at("Monthly", t).name == "2026-11"
    assert period_at("Daily", dt.datetime(2026, 11, 30, 23, 30)).name == "2026-11-30"


def test_split_across_midnight_is_exact() -> None:
    start = dt.datetime(2026, 11, 30, 23, 59, 58, tzinfo=UTC)
    end = dt.datetime(2026, 12, 1, 0, 0, 3, tzinfo=UTC)
    parts = split_interval("Monthly", start, end)
    assert [p.name for p, _ in parts] == ["2026-11", "2026-12"]
    assert [f for _, f in parts] == [Decimal("0.4"), Decimal("0.6")]
    assert sum(f for _, f in parts) == 1
    assert split_interval("Daily", end, start) == [(period_at("Daily", start), Decimal(1))]


def test_elapsed_and_left() -> None:
    day = period_at("Daily", dt.datetime(2026, 11, 23, tzinfo=UTC))
    noon = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert elapsed_fraction(day, noon) == Decimal("0.5")
    assert seconds_left(day, noon) == 43200
    assert seconds_left(day, day.end + dt.timedelta(hours=1)) == 0
