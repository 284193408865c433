"""Policy gates: exemptions and time windows, with real time zones (DST, midnight)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from kopeck.api.common import LabelSelector, LabelSelectorRequirement
from kopeck.api.costpolicy import CostPolicySpec, Exemptions, TimeWindow
from kopeck.rightsizing.gates import gate, policy_gate, selector_matches, window_open

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


BUSINESS = TimeWindow(name="business-hours", start="09:00", end="17:00", time_zone="Europe/Berlin")


def test_business_hours_in_berlin_winter_and_summer() -> None:
    # Monday 2026-11-23: CET = UTC+1.
    assert not window_open(BUSINESS, utc(2026, 11, 23, 7, 59))
    assert window_open(BUSINESS, utc(2026, 11, 23, 8, 0))
    assert window_open(BUSINESS, utc(2026, 11, 23, 15, 59))
    assert not window_open(BUSINESS, utc(2026, 11, 23, 16, 0))  # end is exclusive
    # Monday 2026-07-06: CEST = UTC+2.
    assert window_open(BUSINESS, utc(2026, 7, 6, 7, 0))
    assert not window_open(BUSINESS, utc(2026, 7, 6, 15, 0))
    # Saturday is not a business day.
    assert not window_open(BUSINESS, utc(2026, 11, 28, 10, 0))


def test_the_day_is_the_local_day_near_midnight() -> None:
    late = TimeWindow(days=["Mon"], start="23:00", end="23:59", time_zone="America/New_York")
    # Monday 23:30 in New York is Tuesday 04:30 UTC.
    assert window_open(late, utc(2026, 11, 24, 4, 30))
    assert not window_open(late, utc(2026, 11, 23, 23, 30))  # Monday in UTC, 18:30 in NY
    early = TimeWindow(days=["Tue"], start="00:00", end="01:00", time_zone="Asia/Tokyo")
    # Tuesday 00:30 in Tokyo is Monday 15:30 UTC.
    assert window_open(early, utc(2026, 11, 23, 15, 30))
    assert not window_open(early, utc(2026, 11, 24, 0, 30))


def test_spring_forward_skipped_hour_never_opens() -> None:
    # Europe/Berlin jumps 02:00 -> 03:00 on Sunday 2026-03-29.
    skipped = TimeWindow(days=["Sun"], start="02:00", end="03:00", time_zone="Europe/Berlin")
    minutes = [utc(2026, 3, 29, 0, 0) + dt.timedelta(minutes=m) for m in range(0, 180)]
    assert not any(window_open(skipped, t) for t in minutes)
    # A window spanning the jump is open for one real hour instead of two.
    spanning = TimeWindow(days=["Sun"], start="01:00", end="04:00", time_zone="Europe/Berlin")
    open_minutes = sum(
        window_open(spanning, t)
        for t in [utc(2026, 3, 28, 22) + dt.timedelta(minutes=m) for m in range(360)]
    )
    assert open_minutes == 120


def test_fall_back_repeated_hour_opens_twice() -> None:
    # America/New_York repeats 01:00-02:00 on Sunday 2026-11-01.
    repeated = TimeWindow(days=["Sun"], start="01:00", end="02:00", time_zone="America/New_York")
    start = utc(2026, 11, 1, 4, 0)  # 00:00 EDT
    open_minutes = sum(window_open(repeated, start + dt.timedelta(minutes=m)) for m in range(240))
    assert open_minutes == 120
    assert window_open(repeated, dt.datetime(2026, 11, 1, 1, 30, fold=0, tzinfo=NEW_YORK))
    assert window_open(repeated, dt.datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK))


def test_naive_instant_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        window_open(BUSINESS, dt.datetime(2026, 11, 23, 10))


def test_selector_semantics() -> None:
    labels = {"app": "web", "tier": "critical"}
    assert selector_matches(None, labels)
    assert selector_matches(LabelSelector(), labels)
    assert selector_matches(LabelSelector(match_labels={"app": "web"}), labels)
    assert not selector_matches(LabelSelector(match_labels={"app": "db"}), labels)

    def expr(op: str, values: list[str] | None = None, key: str = "tier") -> LabelSelector:
        return LabelSelector(
            match_expressions=[LabelSelectorRequirement(key=key, operator=op, values=values)]
        )

    assert selector_matches(expr("In", ["critical", "gold"]), labels)
    assert not selector_matches(expr("In", ["gold"]), labels)
    assert not selector_matches(expr("NotIn", ["critical"]), labels)
    assert selector_matches(expr("NotIn", ["critical"]), {"app": "web"})
    assert selector_matches(expr("Exists"), labels)
    assert not selector_matches(expr("Exists"), {})
    assert selector_matches(expr("DoesNotExist", key="canary"), labels)
    assert not selector_matches(expr("DoesNotExist"), labels)


def test_gate_windows_apply_to_actions_and_selected_workloads() -> None:
    critical = TimeWindow(
        name="no-changes-critical",
        start="09:00",
        end="17:00",
        time_zone="Europe/Berlin",
        applies_to=["Rightsizing", "Enforcement"],
        selector=LabelSelector(match_labels={"tier": "critical"}),
    )
    rightsizing_only = TimeWindow(start="00:00", end="06:00", time_zone="UTC")
    windows = [critical, rightsizing_only]
    monday_10_berlin = dt.datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN)

    d = gate("Enforcement", monday_10_berlin, "shop", {"tier": "critical"}, windows=windows)
    assert d.suspended and "no-changes-critical" in d.reason and "Europe/Berlin" in d.reason
    assert not gate("Enforcement", monday_10_berlin, "shop", {"tier": "batch"}, windows=windows)
    night = utc(2026, 11, 24, 3, 0)
    assert gate("Rightsizing", night, "shop", {}, windows=windows).suspended
    assert not gate("Enforcement", night, "shop", {}, windows=windows).suspended
    assert not gate("Rightsizing", utc(2026, 11, 24, 12, 0), "shop", {}, windows=windows)


def test_exemptions() -> None:
    ex = Exemptions(
        namespaces=["kube-system"],
        selector=LabelSelector(match_labels={"cost.kopeck.io/exempt": "true"}),
    )
    at = utc(2026, 11, 23, 12)
    d = gate("Enforcement", at, "kube-system", {}, exemptions=ex)
    assert d.suspended and "namespace kube-system is exempt" in d.reason
    assert gate("Rightsizing", at, "shop", {"cost.kopeck.io/exempt": "true"}, exemptions=ex)
    assert not gate("Rightsizing", at, "shop", {"cost.kopeck.io/exempt": "false"}, exemptions=ex)
    # An empty exemption selector exempts nothing (never "everything").
    assert not gate("Enforcement", at, "shop", {}, exemptions=Exemptions(selector=LabelSelector()))


def test_unknown_time_zone_is_reported_not_raised() -> None:
    bad = TimeWindow(
        name="typo",
        start="00:00",
        end="23:59",
        days=["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        time_zone="Europe/Berlln",
    )
    d = gate("Rightsizing", utc(2026, 11, 23, 12), "shop", {}, windows=[bad])
    assert not d.suspended
    assert d.problems and "typo" in d.problems[0] and "timeZone 'Europe/Berlln'" in d.problems[0]


def test_policy_gate_reads_the_spec() -> None:
    spec = CostPolicySpec.model_validate(
        {
            "pricing": {"rateCard": {"cpuCoreHour": 0.04, "memoryGiBHour": 0.005}},
            "exemptions": {"namespaces": ["infra"]},
            "windows": [
                {
                    "start": "09:00",
                    "end": "17:00",
                    "timeZone": "Europe/Berlin",
                    "appliesTo": ["Enforcement"],
                }
            ],
        }
    )
    at = dt.datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN)
    assert policy_gate(spec, "Enforcement", at, "shop", {}).suspended
    assert not policy_gate(spec, "Rightsizing", at, "shop", {}).suspended
    assert policy_gate(spec, "Rightsizing", at, "infra", {}).suspended
