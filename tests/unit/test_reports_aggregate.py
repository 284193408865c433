"""Report arithmetic on a recorded `kubectl get alloc,cpol,ns -A -o json` dump.

The dump (tests/unit/reports_dump.json) was written with the operator's own ledger code
(`status_patch`, `allocation_body`): three monthly periods of a Monthly policy, two days of
a Daily one, namespace totals, and a node's unallocated (idle) cost.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.reports.aggregate import (
    IDLE_KEY,
    UNALLOCATED,
    GroupBy,
    aggregate,
    budget_burn,
    parse_group_by,
    period_as_of,
    requested_vs_used,
    select,
    spend_over_time,
    totals,
)
from kopeck.reports.records import COMPONENTS, Dataset, ReportError, allocation_record, dataset

DUMP = Path(__file__).with_name("reports_dump.json")
D = Decimal
UTC = dt.UTC


def items() -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(DUMP.read_text())
    return list(data["items"])


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(items())


def by_key(rows: list[Any]) -> dict[tuple[str, ...], Any]:
    return {r.key: r for r in rows}


def test_default_selection_is_the_current_periods_of_every_kind(data: Dataset) -> None:
    sel = select(data)
    assert sel.periods == ("2026-11", "2026-11-20")


def test_namespace_sums_are_exact_decimals(data: Dataset) -> None:
    sel = select(data, "2026-11")
    rows = by_key(aggregate(data, sel, GroupBy("namespace")))
    shop = rows[("shop",)]
    # web 7.392 + 1.848 + 0.84, api 3.696 + 0.924 + 0.02
    assert shop.cost["cpu"] == D("11.088")
    assert shop.cost["network"] == D("0.86")
    assert shop.total == D("14.72")
    assert rows[(IDLE_KEY,)].cost["idle"] == D("3.9")
    assert rows[(IDLE_KEY,)].total == D("3.9")
    (total,) = totals(list(rows.values()))
    assert total.total == D("14.72") + D("12.714667") + D("1.002") + D("3.9")


def test_namespace_totals_agree_with_their_workloads(data: Dataset) -> None:
    """The namespace-total records (used for --by namespace) equal the workload sums, so
    every grouping has the same grand total."""
    sel = select(data, "all")
    grand = {
        kind: totals(aggregate(data, sel, parse_group_by(kind)))[0].total
        for kind in ("namespace", "workload", "label:team")
    }
    workloads = sum((r.total for r in sel.records if r.record_kind == "workload"), D(0))
    idle = sum((r.total for r in sel.records if r.record_kind == "node"), D(0))
    assert grand == dict.fromkeys(grand, workloads + idle)
    for ns_row in aggregate(data, sel, GroupBy("namespace"), idle=False):
        parts = [r for r in sel.records if r.record_kind == "workload" and r.namespace == ns_row.key[0]]
        for c in COMPONENTS:
            assert ns_row.cost[c] == sum((r.cost[c] for r in parts), D(0))
        assert ns_row.cpu_core_seconds == sum((r.cpu_core_seconds for r in parts), D(0))


def test_monthly_rate_of_a_closed_and_an_open_period(data: Dataset) -> None:
    closed = by_key(aggregate(data, select(data, "2026-10"), GroupBy("workload"), "month"))
    web = closed[("shop", "deployment/web")]
    # October has 744 hours; 11.904 + 2.976 + 1.35 = 16.23 in the window
    assert web.total == (D("16.23") * 730 / 744).quantize(D("0.000001"))
    opened = by_key(aggregate(data, select(data, "2026-11"), GroupBy("workload"), "month"))
    # November is open: figures are good to the newest report, 2026-11-20 12:00 (468 h)
    assert period_as_of(select(data, "2026-11").records, dt.datetime(2030, 1, 1, tzinfo=UTC))[
        "2026-11"] == dt.datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert opened[("shop", "deployment/web")].cost["cpu"] == (
        D("7.392") * 730 / 468).quantize(D("0.000001"))


def test_window_totals_do_not_depend_on_now(data: Dataset) -> None:
    sel = select(data)
    a = aggregate(data, sel, GroupBy("workload"), now=dt.datetime(2026, 11, 20, tzinfo=UTC))
    b = aggregate(data, sel, GroupBy("workload"), now=dt.datetime(2031, 1, 1, tzinfo=UTC))
    assert [(r.key, r.cost) for r in a] == [(r.key, r.cost) for r in b]


def test_label_grouping_uses_namespace_labels_and_unallocated(data: Dataset) -> None:
    sel = select(data, "2026-11")
    rows = by_key(aggregate(data, sel, parse_group_by("label:team")))
    assert rows[("storefront",)].total == D("14.72") + D("12.714667")
    assert rows[("data",)].total == D("1.002")
    missing = by_key(aggregate(data, sel, parse_group_by("label:cost-center")))
    assert set(missing) == {(UNALLOCATED,), (IDLE_KEY,)}
    kinds = by_key(aggregate(data, sel, parse_group_by("label:cost.kopeck.io/workload-kind")))
    assert set(kinds) == {("Deployment",), ("StatefulSet",), ("CronJob",), (IDLE_KEY,)}


def test_efficiency_is_usage_over_request_weighted_by_cost(data: Dataset) -> None:
    rows = by_key(aggregate(data, select(data, "2026-11"), GroupBy("workload")))
    web = rows[("shop", "deployment/web")]
    assert web.cpu_efficiency == pytest.approx(250.125 / 924)
    assert web.memory_efficiency == pytest.approx(700 / 1848)
    expected = (250.125 / 924 * 7.392 + 700 / 1848 * 1.848) / (7.392 + 1.848)
    assert web.efficiency == pytest.approx(expected)
    assert rows[(IDLE_KEY, "node/node-a")].efficiency is None


def test_namespace_filter_and_no_idle(data: Dataset) -> None:
    sel = select(data, "all", "batch")
    rows = aggregate(data, sel, GroupBy("workload"), idle=False)
    assert {r.key for r in rows} == {("batch", "cronjob/nightly"), ("batch", "job/migrate")}
    assert by_key(rows)[("batch", "cronjob/nightly")].records == 3


@pytest.mark.parametrize(
    ("period", "namespace", "words"),
    [
        ("2025-01", None, ["2025-01", "2026-09", "--period all"]),
        ("2026-11", "nope", ["nope", "batch", "shop"]),
    ],
)
def test_clear_errors(data: Dataset, period: str, namespace: str | None, words: list[str]) -> None:
    with pytest.raises(ReportError) as err:
        select(data, period, namespace)
    for w in words:
        assert w in str(err.value)


def test_no_allocations_and_bad_by() -> None:
    with pytest.raises(ReportError, match="no Allocations found"):
        select(dataset([]))
    with pytest.raises(ReportError, match=r"namespace, workload \(or controller\), deployment or label:<key>"):
        parse_group_by("pod")
    with pytest.raises(ReportError):
        parse_group_by("label:")


def test_a_malformed_allocation_names_object_and_field() -> None:
    bad = items()[0]
    bad["status"]["cost"]["cpu"] = "lots"
    with pytest.raises(ReportError) as err:
        allocation_record(bad)
    assert bad["metadata"]["name"] in str(err.value)
    assert "status.cost.cpu" in str(err.value)


def test_spend_over_time_covers_the_ledger(data: Dataset) -> None:
    points = spend_over_time(data)
    got = {(p.period, p.key): p.total for p in points}
    assert got[("2026-10", "shop")] == D("11.904") + D("2.976") + D("1.35") + D("5.952") + D("1.488")
    assert got[("2026-09", IDLE_KEY)] == D("6.25")
    assert {p.kind for p in points} == {"Monthly", "Daily"}
    assert points[0].period == "2026-09"


def test_budget_burn_from_policy_status(data: Dataset) -> None:
    burns = {b.policy: b for b in budget_burn(data, dt.datetime(2030, 1, 1, tzinfo=UTC))}
    team = burns["team-budget"]
    assert team.budget == D(50)
    assert team.spent == D("28.436667")
    assert team.as_of == dt.datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert team.forecast > team.spent
    assert burns["ci-daily"].thresholds == (50, 80, 100)


def test_requested_vs_used_top_workloads(data: Dataset) -> None:
    top = requested_vs_used(select(data, "2026-11"), top=2)
    assert [t.key for t in top] == ["search/statefulset/index", "shop/deployment/web"]
    assert top[1].cpu_requested_core_hours == pytest.approx(924)
    assert top[1].memory_used_gib_hours == pytest.approx(700)
