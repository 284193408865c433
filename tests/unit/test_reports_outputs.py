"""Tables, CSV and the FinOps FOCUS export, from the recorded dump, and the two commands."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.cli import main
from kopeck.reports.aggregate import GroupBy, aggregate, parse_group_by, select
from kopeck.reports.csvout import RECORD_FIELDS, records_csv, row_fields, rows_csv
from kopeck.reports.focus import (
    DATETIME_COLUMNS,
    DECIMAL_COLUMNS,
    FOCUS_COLUMNS,
    FocusContext,
    focus_csv,
    focus_rows,
)
from kopeck.reports.records import COMPONENTS, Dataset, dataset
from kopeck.reports.tables import table

DUMP = Path(__file__).with_name("reports_dump.json")
D = Decimal
FOCUS_MANDATORY_1_0 = {
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return dataset(json.loads(DUMP.read_text())["items"])


def test_table_is_aligned_with_totals(data: Dataset) -> None:
    rows = aggregate(data, select(data, "2026-11"), GroupBy("namespace"))
    text = table(rows, GroupBy("namespace"), "period", "period 2026-11")
    lines = text.splitlines()
    boxed = [ln for ln in lines if ln.startswith(("|", "+"))]
    assert len({len(ln) for ln in boxed}) == 1, "every table line has the same width"
    assert lines[0] == "period 2026-11"
    header = boxed[1]
    for col in ("NAMESPACE", "CPU", "MEMORY", "NETWORK", "STORAGE", "IDLE", "TOTAL", "EFFICIENCY"):
        assert col in header
    assert "GPU" not in header, "GPU shows only when some row has GPU cost"
    total_line = next(ln for ln in boxed if ln.startswith("| TOTAL"))
    assert "32.34" in total_line  # 14.72 + 12.714667 + 1.002 + 3.9
    assert lines[-1] == "money in USD"
    month = table(aggregate(data, select(data, "2026-11"), GroupBy("namespace"), "month"),
                  GroupBy("namespace"), "month")
    assert "MONTHLY RATE" in month


def test_rows_csv_round_trip_is_exact(data: Dataset) -> None:
    by = GroupBy("workload")
    rows = aggregate(data, select(data, "all"), by)
    parsed = list(csv.DictReader(io.StringIO(rows_csv(rows, by))))
    assert list(parsed[0]) == row_fields(by)
    assert len(parsed) == len(rows)
    for row, line in zip(rows, parsed, strict=True):
        assert (line["namespace"], line["workload"]) == row.key
        for c in COMPONENTS:
            assert D(line[f"{c}_cost"]) == row.cost[c]
        assert D(line["total_cost"]) == row.total
        assert D(line["cpu_core_seconds"]) == row.cpu_core_seconds
        assert "E" not in line["total_cost"]


def test_records_csv_one_line_per_allocation(data: Dataset) -> None:
    parsed = list(csv.DictReader(io.StringIO(records_csv(data.allocations))))
    assert list(parsed[0]) == RECORD_FIELDS
    assert len(parsed) == len(data.allocations)
    assert sum((D(p["total_cost"]) for p in parsed), D(0)) == sum(
        (r.total for r in data.allocations), D(0))


def test_focus_rows_columns_types_and_sums(data: Dataset) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    rows = focus_rows(data, context=FocusContext(billing_account="prod-eu"), now=now)
    assert rows
    for row in rows:
        assert tuple(row) == FOCUS_COLUMNS
        for col in FOCUS_MANDATORY_1_0:
            assert row[col] is not None, col
        for col in DECIMAL_COLUMNS:
            assert row[col] is None or isinstance(row[col], Decimal), col
        for col in DATETIME_COLUMNS:
            assert isinstance(row[col], dt.datetime) and row[col].utcoffset() == dt.timedelta(0)
        assert row["ChargePeriodStart"] < row["ChargePeriodEnd"]
        assert row["BillingPeriodStart"] <= row["ChargePeriodStart"] < row["BillingPeriodEnd"]
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        assert row["ChargeCategory"] == "Usage"
        assert row["BillingAccountId"] == "prod-eu"
        assert row["x_KopeckComponent"] in COMPONENTS
        assert row["ResourceType"] != "Namespace", "namespace totals would count twice"
        assert all(c in FOCUS_COLUMNS[:34] or c.startswith("x_") for c in row)
    billed = sum((r["BilledCost"] for r in rows), D(0))
    cluster = sum((r.total for r in data.allocations if r.record_kind != "namespace"), D(0))
    assert billed == cluster
    web_cpu = next(r for r in rows if r["ResourceName"] == "web" and r["x_KopeckPeriod"] == "2026-11"
                   and r["x_KopeckComponent"] == "cpu")
    assert web_cpu["ConsumedQuantity"] == D("250.125")
    assert web_cpu["PricingQuantity"] == D("924")
    assert web_cpu["ConsumedUnit"] == "Core-Hours"
    assert web_cpu["SubAccountId"] == "shop"
    assert web_cpu["ServiceCategory"] == "Compute"
    assert web_cpu["ChargePeriodEnd"] == dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    assert web_cpu["Tags"]["team"] == "storefront"
    idle = [r for r in rows if r["ResourceType"] == "Node"]
    assert {r["x_KopeckComponent"] for r in idle} == {"idle"}
    assert all(r["ConsumedQuantity"] is None for r in idle)


def test_focus_csv_round_trip(data: Dataset) -> None:
    rows = focus_rows(data, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    parsed = list(csv.DictReader(io.StringIO(focus_csv(rows))))
    assert tuple(parsed[0]) == FOCUS_COLUMNS
    assert len(parsed) == len(rows)
    for row, line in zip(rows, parsed, strict=True):
        assert D(line["BilledCost"]) == row["BilledCost"]
        assert dt.datetime.fromisoformat(line["ChargePeriodStart"]) == row["ChargePeriodStart"]
        assert line["ChargePeriodEnd"].endswith("Z")
        assert json.loads(line["Tags"]) == row["Tags"]
        assert line["ChargeClass"] == "" and line["RegionId"] == ""
        if row["ConsumedQuantity"] is not None:
            assert D(line["ConsumedQuantity"]) == row["ConsumedQuantity"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_command_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "report", "--from-file", str(DUMP), "--by", "label:team",
                         "-o", "json", "--period", "2026-10")
    assert rc == 0
    doc: dict[str, Any] = json.loads(out)
    assert doc["by"] == "label:team"
    values = {r["label_value"]: D(r["total_cost"]) for r in doc["rows"]}
    assert values["data"] == D("0.992") + D("0.496") + D("0.18") + D("0.128") + D("0.032")
    rc, out, _ = run_cli(capsys, "report", "--from-file", str(DUMP), "-o", "csv")
    assert rc == 0 and out.startswith("namespace,currency,")
    rc, out, _ = run_cli(capsys, "report", "--from-file", str(DUMP), "--by", "workload")
    assert rc == 0 and "statefulset/index" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--by", "pod"], "label:<key>"),
        (["--period", "1999-01"], "periods on record are"),
        (["-n", "nope"], "namespaces with records are"),
    ],
)
def test_report_command_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    rc, out, err = run_cli(capsys, "report", "--from-file", str(DUMP), *argv)
    assert rc == 1 and out == ""
    assert words in err and err.startswith("kopeck report: ")


def test_report_command_bad_and_empty_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    rc, _, err = run_cli(capsys, "report", "--from-file", str(bad))
    assert rc == 1 and "not JSON" in err
    empty = tmp_path / "empty.json"
    empty.write_text('{"kind": "List", "items": []}')
    rc, _, err = run_cli(capsys, "report", "--from-file", str(empty))
    assert rc == 1 and "no Allocations found" in err


def test_export_command_writes_focus_and_csv(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "focus.csv"
    rc, _, err = run_cli(capsys, "export", "--from-file", str(DUMP), "--format", "focus",
                         "-o", str(out_file), "--billing-account", "demo")
    assert rc == 0 and "rows" in err
    lines = list(csv.DictReader(out_file.open(newline="")))
    assert lines and {ln["BillingAccountId"] for ln in lines} == {"demo"}
    assert {ln["x_KopeckPeriod"] for ln in lines} == {
        "2026-09", "2026-10", "2026-11", "2026-11-19", "2026-11-20"}
    rc, out, _ = run_cli(capsys, "export", "--from-file", str(DUMP), "--format", "csv",
                         "--period", "2026-10", "-n", "batch")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and {p["name"] for p in parsed} == {
        "cronjob-nightly-2026-10", "job-migrate-2026-10", "namespace-total-2026-10"}


def test_by_parse_shapes_keys() -> None:
    assert parse_group_by("label:team").columns == ("LABEL team",)
    assert GroupBy("workload").columns == ("NAMESPACE", "WORKLOAD")


def test_late_usage_is_a_correction_in_focus_and_named_in_the_report(
    data: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An adjustment record (late usage of a final period) adds to its period's totals, is
    ChargeClass Correction in FOCUS, and the report heading says it is there."""
    items = json.loads(DUMP.read_text())["items"]
    final = next(i for i in items if i["spec"]["workloadRef"]["kind"] == "Deployment"
                 and i["spec"]["period"]["name"] == "2026-10")
    adj = json.loads(json.dumps(final))
    adj["metadata"]["name"] += "-adjustment"
    adj["spec"]["adjustment"] = True
    adj["status"]["cost"] = {**adj["status"]["cost"], **{k: "0" for k in COMPONENTS},
                             "cpu": "0.25", "total": "0.25"}
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"items": [*items, adj]}))
    with_late = dataset([*items, adj])
    corrections = [r for r in focus_rows(with_late) if r["ChargeClass"] == "Correction"]
    assert [(r["BilledCost"], r["x_KopeckComponent"]) for r in corrections
            if r["BilledCost"]] == [(D("0.25"), "cpu")]
    assert corrections[0]["ChargeDescription"].startswith("Late usage: ")
    assert not [r for r in focus_rows(data) if r["ChargeClass"] == "Correction"]
    ns = final["metadata"]["namespace"]

    def total(path: Path) -> tuple[str, D]:
        rc, out, _ = run_cli(capsys, "report", "--from-file", str(path), "-o", "json",
                             "--period", "2026-10", "--by", "workload", "-n", ns)
        assert rc == 0
        doc = json.loads(out)
        return doc["heading"], sum((D(r["total_cost"]) for r in doc["rows"]), D(0))

    head, with_adj = total(dump)
    plain_head, plain = total(DUMP)
    assert with_adj - plain == D("0.25")
    assert "includes late usage" in head and "1 adjustment record, 0.25" in head
    assert "late usage" not in plain_head
