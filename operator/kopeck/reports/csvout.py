"""CSV and JSON of report rows and of raw Allocation records; money as exact decimal strings.

`kopeck report -o csv` writes aggregated rows; `kopeck export --format csv` writes one line
per Allocation so that a spreadsheet can regroup it any way it likes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from kopeck.reports.aggregate import GroupBy, Row
from kopeck.reports.records import COMPONENTS, NETWORK_CLASSES, AllocationRecord


def _num(value: Decimal) -> str:
    """Plain digits, never exponent notation (Decimal's str() would use it for 1E-7)."""
    return format(value, "f")


def _eff(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def row_fields(by: GroupBy) -> list[str]:
    """Column names of aggregated rows."""
    keys = [c.lower().replace(" ", "_") for c in by.columns]
    if by.kind == "label":
        keys = ["label_value"]
    return [
        *keys, "currency", *(f"{c}_cost" for c in COMPONENTS), "total_cost",
        "cpu_core_seconds", "requested_cpu_core_seconds", "memory_byte_seconds",
        "requested_memory_byte_seconds", "network_bytes",
        "cpu_efficiency", "memory_efficiency", "efficiency", "records",
    ]


def row_dict(row: Row, by: GroupBy) -> dict[str, str]:
    """One aggregated row as strings (the CSV and JSON form)."""
    key = [*row.key, *([""] * len(by.columns))][: len(by.columns)]
    values: list[str] = [
        *key, row.currency, *(_num(row.cost[c]) for c in COMPONENTS),
        _num(row.total), _num(row.cpu_core_seconds), _num(row.requested_cpu_core_seconds),
        _num(row.memory_byte_seconds), _num(row.requested_memory_byte_seconds),
        str(row.network_bytes), _eff(row.cpu_efficiency), _eff(row.memory_efficiency),
        _eff(row.efficiency), str(row.records),
    ]
    return dict(zip(row_fields(by), values, strict=True))


def rows_csv(rows: Sequence[Row], by: GroupBy) -> str:
    """Aggregated rows as CSV text with a header line."""
    return write_csv(row_fields(by), (row_dict(r, by) for r in rows))


RECORD_FIELDS = [
    "namespace", "name", "workload_kind", "workload_name", "period", "period_start",
    "period_end", "phase", "policy", "currency", *(f"{c}_cost" for c in COMPONENTS),
    "total_cost", "cpu_core_seconds", "requested_cpu_core_seconds", "memory_byte_seconds",
    "requested_memory_byte_seconds", "requested_gpu_seconds", "storage_byte_seconds",
    *(f"network_{c}_bytes" for c in NETWORK_CLASSES), "last_report", "monthly_savings",
]


def _ts(value: Any) -> str:
    return "" if value is None else value.isoformat().replace("+00:00", "Z")


def record_dict(rec: AllocationRecord) -> dict[str, str]:
    """One Allocation as a flat row of strings."""
    return dict(zip(RECORD_FIELDS, [
        rec.namespace, rec.name, rec.kind, rec.workload, rec.period, _ts(rec.start),
        _ts(rec.end), rec.phase, rec.policy or "", rec.currency,
        *(_num(rec.cost[c]) for c in COMPONENTS), _num(rec.total),
        _num(rec.cpu_core_seconds), _num(rec.requested_cpu_core_seconds),
        _num(rec.memory_byte_seconds), _num(rec.requested_memory_byte_seconds),
        _num(rec.requested_gpu_seconds), _num(rec.storage_byte_seconds),
        *(str(rec.network_bytes.get(c, 0)) for c in NETWORK_CLASSES), _ts(rec.last_report),
        "" if rec.monthly_savings is None else _num(rec.monthly_savings),
    ], strict=True))


def records_csv(records: Iterable[AllocationRecord]) -> str:
    """Every Allocation as one CSV line (namespace totals included, marked by their kind)."""
    return write_csv(RECORD_FIELDS, (record_dict(r) for r in records))


def write_csv(fields: Sequence[str], rows: Iterable[dict[str, str]]) -> str:
    """CSV text (RFC 4180, \\r\\n line ends as the csv module writes them)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
