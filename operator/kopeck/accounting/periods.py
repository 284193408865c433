"""Billing periods (Daily, Weekly, Monthly) in UTC, and splitting intervals across them.

A probe interval that straddles midnight is charged to both periods in proportion to the
time spent in each, so that no second is billed twice or lost at a period boundary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

PeriodKind = Literal["Daily", "Weekly", "Monthly"]
UTC = dt.UTC


@dataclass(frozen=True, order=True)
class PeriodWindow:
    """One billing period: [start, end) in UTC and its short name."""

    start: dt.datetime
    end: dt.datetime
    name: str
    kind: PeriodKind

    @property
    def seconds(self) -> Decimal:
        """Length of the period in seconds (months and DST-free UTC days differ)."""
        return Decimal((self.end - self.start).total_seconds())

    def contains(self, t: dt.datetime) -> bool:
        """True when t falls in [start, end)."""
        return self.start <= as_utc(t) < self.end


def as_utc(t: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def period_at(kind: PeriodKind, t: dt.datetime) -> PeriodWindow:
    """The period of the given kind that contains t."""
    t = as_utc(t)
    if kind == "Daily":
        start = dt.datetime(t.year, t.month, t.day, tzinfo=UTC)
        return PeriodWindow(start, start + dt.timedelta(days=1), start.strftime("%Y-%m-%d"), kind)
    if kind == "Weekly":
        day = dt.datetime(t.year, t.month, t.day, tzinfo=UTC)
        start = day - dt.timedelta(days=day.weekday())
        iso = start.isocalendar()
        return PeriodWindow(
            start, start + dt.timedelta(days=7), f"{iso.year}-W{iso.week:02d}", kind
        )
    start = dt.datetime(t.year, t.month, 1, tzinfo=UTC)
    end = (
        dt.datetime(t.year + 1, 1, 1, tzinfo=UTC)
        if t.month == 12
        else dt.datetime(t.year, t.month + 1, 1, tzinfo=UTC)
    )
    return PeriodWindow(start, end, start.strftime("%Y-%m"), kind)


def split_interval(
    kind: PeriodKind, start: dt.datetime, end: dt.datetime
) -> list[tuple[PeriodWindow, Decimal]]:
    """The periods an interval touches and the fraction of the interval in each.

    Fractions are exact and sum to 1; an empty or inverted interval belongs wholly to the
    period of its end.
    """
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        return [(period_at(kind, end), Decimal(1))]
    total = Decimal((end - start).total_seconds())
    parts: list[tuple[PeriodWindow, Decimal]] = []
    cursor = start
    while cursor < end:
        window = period_at(kind, cursor)
        upto = min(end, window.end)
        parts.append((window, Decimal((upto - cursor).total_seconds()) / total))
        cursor = upto
    if len(parts) > 1:  # make the fractions sum to exactly 1
        head = sum((f for _, f in parts[:-1]), Decimal(0))
        parts[-1] = (parts[-1][0], Decimal(1) - head)
    return parts


def elapsed_fraction(window: PeriodWindow, now: dt.datetime) -> Decimal:
    """How much of the period has passed at `now`, clamped to [0, 1]."""
    now = as_utc(now)
    if now <= window.start:
        return Decimal(0)
    if now >= window.end:
        return Decimal(1)
    return Decimal((now - window.start).total_seconds()) / window.seconds


def seconds_left(window: PeriodWindow, now: dt.datetime) -> Decimal:
    """Seconds from `now` to the end of the period (0 when it is over)."""
    return max(Decimal(0), Decimal((window.end - as_utc(now)).total_seconds()))
