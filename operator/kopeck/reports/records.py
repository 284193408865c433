"""Allocation and CostPolicy objects as typed records: the one place that reads their dicts.

The pydantic API models validate each object once, at this boundary; everything after works
on frozen dataclasses with Decimal money and Decimal usage, so sums are exact and repeatable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import ValidationError

from kopeck.accounting.periods import as_utc
from kopeck.api.allocation import NAMESPACE_TOTAL_KIND, AllocationSpec, AllocationStatus
from kopeck.api.costpolicy import CostPolicySpec, CostPolicyStatus

ZERO = Decimal(0)
NODE_KIND = "Node"
COMPONENTS: tuple[str, ...] = ("cpu", "memory", "gpu", "network", "storage", "idle")
"""Cost components in the order every report shows them; their sum is the total."""
NETWORK_CLASSES: tuple[str, ...] = (
    "intra_zone", "cross_zone", "cross_region", "internet", "unclassified"
)
RecordKind = Literal["workload", "namespace", "node"]


class ReportError(Exception):
    """Something a user must fix (bad input, nothing to report); the message says what."""


@dataclass(frozen=True)
class AllocationRecord:
    """One Allocation object: who, which period, what it used, asked for and cost."""

    namespace: str
    name: str
    kind: str
    """workloadRef.kind: Deployment, ..., Namespace (the total) or Node (unallocated cost)."""
    workload: str
    """workloadRef.name."""
    period: str
    start: dt.datetime
    end: dt.datetime
    phase: str
    policy: str | None
    currency: str
    cost: Mapping[str, Decimal]
    """Money by component (COMPONENTS); the total is their sum."""
    total: Decimal
    cpu_core_seconds: Decimal = ZERO
    memory_byte_seconds: Decimal = ZERO
    storage_byte_seconds: Decimal = ZERO
    network_bytes: Mapping[str, int] = field(default_factory=dict)
    requested_cpu_core_seconds: Decimal = ZERO
    requested_memory_byte_seconds: Decimal = ZERO
    requested_gpu_seconds: Decimal = ZERO
    last_report: dt.datetime | None = None
    monthly_savings: Decimal | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str | None = None
    adjustment: bool = False
    """Late usage of a final period, recorded apart from its final record (a correction)."""

    @property
    def record_kind(self) -> RecordKind:
        """Workload records add up to namespace totals; node records hold unallocated cost."""
        if self.kind == NAMESPACE_TOTAL_KIND:
            return "namespace"
        if self.kind == NODE_KIND:
            return "node"
        return "workload"

    @property
    def network_total_bytes(self) -> int:
        """All network bytes, every class."""
        return sum(self.network_bytes.values())


@dataclass(frozen=True)
class PolicyRecord:
    """One CostPolicy's budget and what its status says about the current period."""

    name: str
    currency: str
    budget: Decimal | None
    budget_period: str | None
    thresholds: tuple[int, ...]
    period: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    spent: Decimal | None
    forecast: Decimal | None
    remaining: Decimal | None


@dataclass(frozen=True)
class Dataset:
    """Everything a report reads: records, policies, and namespace labels when known."""

    allocations: tuple[AllocationRecord, ...]
    policies: tuple[PolicyRecord, ...] = ()
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _exact(value: float | int) -> Decimal:
    """A JSON number as the Decimal of its shortest repr, so sums do not pick up float noise."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _where(item: Mapping[str, Any]) -> str:
    meta = item.get("metadata") or {}
    ns = meta.get("namespace")
    kind = item.get("kind", "object")
    return f"{kind} {ns}/{meta.get('name')}" if ns else f"{kind} {meta.get('name')}"


def _first_error(exc: ValidationError, prefix: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{prefix}.{loc}: {err.get('msg')}"


def allocation_record(item: Mapping[str, Any]) -> AllocationRecord:
    """Validate one Allocation dict; ReportError names the object and the field."""
    meta = item.get("metadata") or {}
    try:
        spec = AllocationSpec.model_validate(item.get("spec") or {})
    except ValidationError as exc:
        raise ReportError(f"{_where(item)}: {_first_error(exc, 'spec')}") from exc
    try:
        status = AllocationStatus.model_validate(item.get("status") or {})
    except ValidationError as exc:
        raise ReportError(f"{_where(item)}: {_first_error(exc, 'status')}") from exc
    c, u, r = status.cost, status.usage, status.requests
    cost = {name: getattr(c, name) for name in COMPONENTS}
    return AllocationRecord(
        namespace=str(meta.get("namespace") or spec.workload_ref.namespace or ""),
        name=str(meta.get("name", "")),
        kind=spec.workload_ref.kind,
        workload=spec.workload_ref.name,
        period=spec.period.name,
        start=as_utc(spec.period.start),
        end=as_utc(spec.period.end),
        phase=status.phase,
        adjustment=spec.adjustment,
        policy=spec.policy_ref.name if spec.policy_ref else None,
        currency=c.currency,
        cost=cost,
        total=sum(cost.values(), ZERO),
        cpu_core_seconds=_exact(u.cpu_core_seconds),
        memory_byte_seconds=_exact(u.memory_byte_seconds),
        storage_byte_seconds=_exact(u.storage_byte_seconds),
        network_bytes={k: getattr(u.network_bytes, k) for k in NETWORK_CLASSES},
        requested_cpu_core_seconds=_exact(r.cpu_core_seconds),
        requested_memory_byte_seconds=_exact(r.memory_byte_seconds),
        requested_gpu_seconds=_exact(r.gpu_seconds),
        last_report=as_utc(status.last_report.time) if status.last_report else None,
        monthly_savings=status.proposal.monthly_savings if status.proposal else None,
        labels=dict(meta.get("labels") or {}),
        uid=meta.get("uid"),
    )


def policy_record(item: Mapping[str, Any]) -> PolicyRecord:
    """Validate one CostPolicy dict; ReportError names the object and the field."""
    meta = item.get("metadata") or {}
    try:
        spec = CostPolicySpec.model_validate(item.get("spec") or {})
    except ValidationError as exc:
        raise ReportError(f"{_where(item)}: {_first_error(exc, 'spec')}") from exc
    try:
        st = CostPolicyStatus.model_validate(item.get("status") or {})
    except ValidationError as exc:
        raise ReportError(f"{_where(item)}: {_first_error(exc, 'status')}") from exc
    budget = spec.budget
    return PolicyRecord(
        name=str(meta.get("name", "")),
        currency=st.currency or spec.pricing.currency,
        budget=budget.amount if budget else None,
        budget_period=budget.period if budget else None,
        thresholds=tuple(budget.thresholds) if budget else (),
        period=st.period,
        start=as_utc(st.period_start) if st.period_start else None,
        end=as_utc(st.period_end) if st.period_end else None,
        spent=st.spent,
        forecast=st.forecast,
        remaining=st.remaining,
    )


def dataset(items: Iterable[Mapping[str, Any]]) -> Dataset:
    """Sort a mixed list (Allocations, CostPolicies, Namespaces; others ignored) into a Dataset.

    This is the shape of `kubectl get alloc,cpol,ns -A -o json` and of what `source` lists.
    """
    allocs: list[AllocationRecord] = []
    policies: list[PolicyRecord] = []
    ns_labels: dict[str, dict[str, str]] = {}
    for item in items:
        kind = item.get("kind")
        if kind == "Allocation":
            allocs.append(allocation_record(item))
        elif kind == "CostPolicy":
            policies.append(policy_record(item))
        elif kind == "Namespace":
            meta = item.get("metadata") or {}
            ns_labels[str(meta.get("name", ""))] = dict(meta.get("labels") or {})
    allocs.sort(key=lambda a: (a.start, a.period, a.namespace, a.kind, a.workload))
    policies.sort(key=lambda p: p.name)
    return Dataset(tuple(allocs), tuple(policies), ns_labels)
