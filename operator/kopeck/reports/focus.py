"""FinOps FOCUS (1.0, with the 1.1 ServiceSubcategory) rows from Allocations.

One row per workload Allocation per non-empty cost component (cpu, memory, gpu, network,
storage, idle), plus the unallocated cost of each node record, so the rows add up to the
cluster's cost exactly once: namespace totals are left out, as they repeat their workloads.

Field choices, where FOCUS leaves them to the provider:
- BilledCost = EffectiveCost = ListCost = ContractedCost: kopeck prices at the policy's
  rate card and knows no discounts or commitments.
- ConsumedQuantity is what was used (core-hours, GiB-hours, GiB); PricingQuantity is
  max(requested, used) over the window, a lower bound of what was charged, since kopeck
  charges max(request, usage) per interval. Idle rows consume nothing measurable; they
  are priced per hour of the period (PricingUnit Hours).
- BillingPeriod is the UTC calendar month that holds the Allocation's period start;
  ChargePeriodEnd of an open period is the newest report folded into it.
- SubAccountId is the namespace; ResourceId is `<account>/<namespace>/<kind>/<name>`.
- Region is not recorded in Allocations, so RegionId/RegionName stay empty.
- Adjustment records (late usage of a period already final) are ChargeClass Correction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kopeck.reports.aggregate import GIB, HOUR_SECONDS, observed_hours, period_as_of
from kopeck.reports.csvout import write_csv
from kopeck.reports.records import AllocationRecord, Dataset

QUANTITY_QUANTUM = Decimal("0.000000001")

FOCUS_COLUMNS: tuple[str, ...] = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingAccountId", "BillingAccountName", "BillingPeriodStart", "BillingPeriodEnd",
    "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit",
    "PricingQuantity", "PricingUnit", "PricingCategory", "ProviderName", "PublisherName",
    "InvoiceIssuerName", "RegionId", "RegionName", "ResourceId", "ResourceName",
    "ResourceType", "ServiceCategory", "ServiceSubcategory", "ServiceName", "SubAccountId",
    "SubAccountName", "Tags",
    "x_KopeckComponent", "x_KopeckNamespace", "x_KopeckWorkloadKind", "x_KopeckWorkloadName",
    "x_KopeckPeriod", "x_KopeckPhase", "x_KopeckPolicy", "x_KopeckAllocation",
    "x_KopeckEfficiency",
)
DECIMAL_COLUMNS = frozenset({
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ConsumedQuantity",
    "PricingQuantity", "x_KopeckEfficiency",
})
DATETIME_COLUMNS = frozenset({
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
})

_CATEGORY = {
    "cpu": ("Compute", "Containers"), "memory": ("Compute", "Containers"),
    "gpu": ("Compute", "Containers"), "idle": ("Compute", "Containers"),
    "network": ("Networking", "Network Connectivity"), "storage": ("Storage", "Block Storage"),
}
_UNIT = {
    "cpu": "Core-Hours", "memory": "GiB-Hours", "gpu": "GPU-Hours", "network": "GiB",
    "storage": "GiB-Hours",
}
_WHAT = {
    "cpu": "CPU", "memory": "memory", "gpu": "GPU", "network": "network traffic",
    "storage": "persistent volume storage", "idle": "share of idle node capacity",
}


@dataclass(frozen=True)
class FocusContext:
    """Who issues the charges: names FOCUS requires that Allocations do not hold."""

    billing_account: str = "kubernetes"
    provider: str = "Kubernetes"
    publisher: str = "Kubernetes"
    invoice_issuer: str = "kopeck"
    service_name: str = "Kubernetes"


def _q(value: Decimal) -> Decimal:
    return value.quantize(QUANTITY_QUANTUM)


def _month(t: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def quantities(rec: AllocationRecord, component: str) -> tuple[Decimal | None, Decimal | None]:
    """(ConsumedQuantity, PricingQuantity) of one component in _UNIT; None for idle."""
    if component == "cpu":
        used = rec.cpu_core_seconds / HOUR_SECONDS
        return _q(used), _q(max(used, rec.requested_cpu_core_seconds / HOUR_SECONDS))
    if component == "memory":
        used = rec.memory_byte_seconds / HOUR_SECONDS / GIB
        req = rec.requested_memory_byte_seconds / HOUR_SECONDS / GIB
        return _q(used), _q(max(used, req))
    if component == "gpu":
        gpu = _q(rec.requested_gpu_seconds / HOUR_SECONDS)
        return gpu, gpu
    if component == "network":
        gib = _q(Decimal(rec.network_total_bytes) / GIB)
        return gib, gib
    if component == "storage":
        gib_h = _q(rec.storage_byte_seconds / HOUR_SECONDS / GIB)
        return gib_h, gib_h
    return None, None


def _efficiency(rec: AllocationRecord, component: str) -> Decimal | None:
    if component == "cpu" and rec.requested_cpu_core_seconds > 0:
        return _q(rec.cpu_core_seconds / rec.requested_cpu_core_seconds)
    if component == "memory" and rec.requested_memory_byte_seconds > 0:
        return _q(rec.memory_byte_seconds / rec.requested_memory_byte_seconds)
    return None


def focus_rows(
    data: Dataset,
    records: Iterable[AllocationRecord] | None = None,
    context: FocusContext | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """FOCUS rows with typed values: Decimal money and quantities, aware datetimes, None
    for null; `focus_csv` turns them into text."""
    ctx = context or FocusContext()
    recs = list(data.allocations if records is None else records)
    as_of = period_as_of(recs, now or dt.datetime.now(dt.UTC))
    out: list[dict[str, Any]] = []
    for rec in recs:
        kind = rec.record_kind
        if kind == "namespace":
            continue
        components = ("idle",) if kind == "node" else tuple(rec.cost)
        bill_start, bill_end = _month(rec.start)
        tags: dict[str, str] = {
            **dict(data.namespace_labels.get(rec.namespace, {})), **dict(rec.labels)
        }
        for comp in components:
            cost = rec.cost[comp]
            consumed, pricing = quantities(rec, comp)
            if cost == 0 and not consumed:
                continue
            unit = _UNIT.get(comp)
            if comp == "idle":  # unallocated node time: priced per hour of the period
                pricing, unit = _q(observed_hours(rec, as_of[rec.period])), "Hours"
            category, subcategory = _CATEGORY[comp]
            if kind == "node":
                description = f"Unallocated capacity of node {rec.workload}"
            else:
                what = _WHAT[comp]
                description = f"{what[0].upper()}{what[1:]} of {rec.kind} {rec.namespace}/{rec.workload}"
            out.append({
                "BilledCost": cost, "EffectiveCost": cost, "ListCost": cost,
                "ContractedCost": cost, "BillingCurrency": rec.currency,
                "BillingAccountId": ctx.billing_account, "BillingAccountName": ctx.billing_account,
                "BillingPeriodStart": bill_start, "BillingPeriodEnd": bill_end,
                "ChargePeriodStart": rec.start, "ChargePeriodEnd": as_of[rec.period],
                "ChargeCategory": "Usage",
                # late usage of a period already final: FOCUS's correction of a past period
                "ChargeClass": "Correction" if rec.adjustment else None,
                "ChargeDescription": (f"{'Late usage: ' if rec.adjustment else ''}"
                                      f"{description}, period {rec.period}"),
                "ChargeFrequency": "Usage-Based",
                "ConsumedQuantity": consumed, "ConsumedUnit": unit if consumed is not None else None,
                "PricingQuantity": pricing, "PricingUnit": unit,
                "PricingCategory": "Standard",
                "ProviderName": ctx.provider, "PublisherName": ctx.publisher,
                "InvoiceIssuerName": ctx.invoice_issuer, "RegionId": None, "RegionName": None,
                "ResourceId": f"{ctx.billing_account}/{rec.namespace}/{rec.kind}/{rec.workload}",
                "ResourceName": rec.workload, "ResourceType": rec.kind,
                "ServiceCategory": category, "ServiceSubcategory": subcategory,
                "ServiceName": ctx.service_name,
                "SubAccountId": rec.namespace, "SubAccountName": rec.namespace,
                "Tags": tags,
                "x_KopeckComponent": comp, "x_KopeckNamespace": rec.namespace,
                "x_KopeckWorkloadKind": rec.kind, "x_KopeckWorkloadName": rec.workload,
                "x_KopeckPeriod": rec.period, "x_KopeckPhase": rec.phase,
                "x_KopeckPolicy": rec.policy, "x_KopeckAllocation": f"{rec.namespace}/{rec.name}",
                "x_KopeckEfficiency": _efficiency(rec, comp),
            })
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))
    return str(value)


def focus_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """FOCUS rows as CSV: decimals in plain digits, UTC ISO 8601 times, Tags as JSON,
    nulls as empty fields."""
    return write_csv(FOCUS_COLUMNS, ({k: _text(row[k]) for k in FOCUS_COLUMNS} for row in rows))
