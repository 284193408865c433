"""Pure arithmetic of reports: choose records, group them, sum money exactly, scale to a month.

Groupings:
- ``namespace``: the operator's namespace-total record when there is one (what
  ``kubectl get alloc`` shows), else the sum of that namespace's workload records;
- ``workload`` (alias ``controller``): one row per workload record;
- ``deployment``: one row per Deployment, the namespace's other workloads in one
  ``__unallocated__`` row (as `kubectl cost deployment` shows them);
- ``label:<key>``: Allocations carry no workload labels (only ``cost.kopeck.io/period`` and
  ``cost.kopeck.io/workload-kind``), so the value comes from the Allocation's own labels
  first, then from its namespace's labels; records with neither fall in ``__unallocated__``.
Node records (unallocated node cost, when idle is not shared out) form an ``__idle__`` row.

Monthly rate = window total x 730 h / observed hours of the record's period, where a closed
period counts whole and an open one up to the newest report folded into any of its records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from kopeck.accounting.periods import as_utc
from kopeck.reports.records import (
    COMPONENTS,
    ZERO,
    AllocationRecord,
    Dataset,
    ReportError,
)

MONTH_HOURS = Decimal(730)
HOUR_SECONDS = Decimal(3600)
GIB = Decimal(2**30)
IDLE_KEY = "__idle__"
UNALLOCATED = "__unallocated__"
RATE_QUANTUM = Decimal("0.000001")
Window = Literal["period", "month"]


@dataclass(frozen=True)
class GroupBy:
    """How rows are keyed: by namespace, by workload, or by one label's value."""

    kind: Literal["namespace", "workload", "deployment", "label"]
    label: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        """Heading of the key columns."""
        if self.kind == "namespace":
            return ("NAMESPACE",)
        if self.kind == "workload":
            return ("NAMESPACE", "WORKLOAD")
        if self.kind == "deployment":
            return ("NAMESPACE", "DEPLOYMENT")
        return (f"LABEL {self.label}",)


def parse_group_by(text: str) -> GroupBy:
    """`namespace`, `workload` (or `controller`), `deployment` or `label:<key>`; anything
    else is a ReportError saying so."""
    if text in ("namespace", "workload", "deployment"):
        return GroupBy(text)  # type: ignore[arg-type]
    if text == "controller":
        return GroupBy("workload")
    if text.startswith("label:") and text[6:].strip():
        return GroupBy("label", text[6:].strip())
    raise ReportError(
        f"--by {text!r} is not understood: use namespace, workload (or controller), deployment or "
        "label:<key> "
        "(e.g. label:team; the key is looked up on the Allocation, then its namespace)"
    )


@dataclass
class Row:
    """One line of a report: a group's money by component and its usage, in one currency."""

    key: tuple[str, ...]
    currency: str
    cost: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, ZERO))
    cpu_core_seconds: Decimal = ZERO
    memory_byte_seconds: Decimal = ZERO
    network_bytes: int = 0
    requested_cpu_core_seconds: Decimal = ZERO
    requested_memory_byte_seconds: Decimal = ZERO
    records: int = 0

    @property
    def total(self) -> Decimal:
        """The sum of the components."""
        return sum(self.cost.values(), ZERO)

    @property
    def cpu_efficiency(self) -> float | None:
        """CPU used over requested (None without a request)."""
        if self.requested_cpu_core_seconds <= 0:
            return None
        return float(self.cpu_core_seconds / self.requested_cpu_core_seconds)

    @property
    def memory_efficiency(self) -> float | None:
        """Memory used over requested (None without a request)."""
        if self.requested_memory_byte_seconds <= 0:
            return None
        return float(self.memory_byte_seconds / self.requested_memory_byte_seconds)

    @property
    def efficiency(self) -> float | None:
        """CPU and memory efficiency weighted by their cost, as the operator computes it."""
        parts = [(self.cpu_efficiency, self.cost["cpu"]),
                 (self.memory_efficiency, self.cost["memory"])]
        known = [(e, w) for e, w in parts if e is not None]
        den = sum((w for _, w in known), ZERO)
        if den > 0:
            return float(sum((Decimal(repr(e)) * w for e, w in known), ZERO) / den)
        return known[0][0] if known else None

    def add(self, rec: AllocationRecord, scale: Decimal) -> None:
        """Fold one record in, its money multiplied by `scale` (1 for window totals)."""
        for name in COMPONENTS:
            self.cost[name] += rec.cost[name] * scale
        self.cpu_core_seconds += rec.cpu_core_seconds
        self.memory_byte_seconds += rec.memory_byte_seconds
        self.network_bytes += rec.network_total_bytes
        self.requested_cpu_core_seconds += rec.requested_cpu_core_seconds
        self.requested_memory_byte_seconds += rec.requested_memory_byte_seconds
        self.records += 1


@dataclass(frozen=True)
class Selection:
    """The records a report covers and how it got them (for headings and errors)."""

    records: tuple[AllocationRecord, ...]
    periods: tuple[str, ...]
    namespace: str | None


def periods_of(records: Iterable[AllocationRecord]) -> list[str]:
    """Distinct period names, oldest first."""
    seen: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    for r in records:
        seen.setdefault(r.period, (r.start, r.end))
    return sorted(seen, key=lambda p: (seen[p], p))


def select(data: Dataset, period: str | None = None, namespace: str | None = None) -> Selection:
    """Records of one period (default: the current ones), optionally of one namespace.

    The default takes every period that contains the newest period start on record, so a
    cluster with Daily and Monthly policies reports today and this month together. `all`
    takes every period.
    """
    records = data.allocations
    if not records:
        raise ReportError(
            "no Allocations found: is the operator running and has a node-probe reported? "
            "(`kubectl get alloc -A`; or pass --from-file with a `kubectl get alloc,cpol -A "
            "-o json` dump)"
        )
    known = periods_of(records)
    if period in (None, ""):
        newest = max(r.start for r in records)
        chosen = [r for r in records if r.start <= newest < r.end]
    elif period == "all":
        chosen = list(records)
    else:
        chosen = [r for r in records if r.period == period]
        if not chosen:
            raise ReportError(
                f"no Allocations for period {period!r}: periods on record are "
                f"{', '.join(known[-12:])} (or use --period all)"
            )
    if namespace:
        in_ns = [r for r in chosen if r.namespace == namespace]
        if not in_ns:
            namespaces = sorted({r.namespace for r in chosen})
            raise ReportError(
                f"no Allocations in namespace {namespace!r} for the chosen period(s): "
                f"namespaces with records are {', '.join(namespaces)}"
            )
        chosen = in_ns
    return Selection(tuple(chosen), tuple(periods_of(chosen)), namespace)


def period_as_of(records: Iterable[AllocationRecord], now: dt.datetime) -> dict[str, dt.datetime]:
    """Per period, the time its figures are good to: its end once closed (or over), else the
    newest report folded into any of its records (`now` when none has one)."""
    newest: dict[str, dt.datetime] = {}
    ends: dict[str, dt.datetime] = {}
    closed: set[str] = set()
    for r in records:
        ends[r.period] = r.end
        if r.phase == "Closed":
            closed.add(r.period)
        if r.last_report is not None and (r.period not in newest or r.last_report > newest[r.period]):
            newest[r.period] = r.last_report
    out: dict[str, dt.datetime] = {}
    for p, end in ends.items():
        t = end if p in closed else newest.get(p, as_utc(now))
        out[p] = min(t, end)
    return out


def observed_hours(rec: AllocationRecord, as_of: dt.datetime) -> Decimal:
    """Hours of the record's period covered by its figures (at most the whole period)."""
    upto = min(max(as_of, rec.start), rec.end)
    return Decimal((upto - rec.start).total_seconds()) / HOUR_SECONDS


def month_scale(rec: AllocationRecord, as_of: dt.datetime) -> Decimal:
    """Factor that turns the record's money into a 730-hour monthly rate (0 if no time yet)."""
    hours = observed_hours(rec, as_of)
    return MONTH_HOURS / hours if hours > 0 else ZERO


def _label_value(rec: AllocationRecord, key: str, ns_labels: Mapping[str, Mapping[str, str]]) -> str:
    if key in rec.labels:
        return rec.labels[key]
    return ns_labels.get(rec.namespace, {}).get(key, UNALLOCATED)


def _row_key(rec: AllocationRecord, by: GroupBy, data: Dataset) -> tuple[str, ...]:
    if rec.record_kind == "node":
        if by.kind == "deployment":
            return (IDLE_KEY, "")
        return (IDLE_KEY,) if by.kind != "workload" else (IDLE_KEY, f"node/{rec.workload}")
    if by.kind == "namespace":
        return (rec.namespace,)
    if by.kind == "workload":
        return (rec.namespace, f"{rec.kind.lower()}/{rec.workload}")
    if by.kind == "deployment":
        return (rec.namespace, rec.workload if rec.kind == "Deployment" else UNALLOCATED)
    return (_label_value(rec, by.label, data.namespace_labels),)


def contributing(selection: Selection, by: GroupBy, idle: bool = True) -> list[AllocationRecord]:
    """The records a grouping sums, each counted once (see the module docstring)."""
    recs = selection.records
    node = [r for r in recs if r.record_kind == "node" and r.total != 0] if idle else []
    workloads = [r for r in recs if r.record_kind == "workload"]
    if by.kind != "namespace":
        return workloads + node
    totals = [r for r in recs if r.record_kind == "namespace"]
    have_total = {(r.namespace, r.period) for r in totals}
    return totals + [r for r in workloads if (r.namespace, r.period) not in have_total] + node


def aggregate(
    data: Dataset,
    selection: Selection,
    by: GroupBy,
    window: Window = "period",
    now: dt.datetime | None = None,
    idle: bool = True,
) -> list[Row]:
    """Rows keyed by `by`, most expensive first, idle last; money exact for window totals,
    rounded to micro-units for monthly rates."""
    as_of = period_as_of(selection.records, now or dt.datetime.now(dt.UTC))
    rows: dict[tuple[tuple[str, ...], str], Row] = {}
    for rec in contributing(selection, by, idle):
        key = _row_key(rec, by, data)
        row = rows.get((key, rec.currency))
        if row is None:
            row = rows[(key, rec.currency)] = Row(key, rec.currency)
        scale = Decimal(1) if window == "period" else month_scale(rec, as_of[rec.period])
        row.add(rec, scale)
    out = list(rows.values())
    if window == "month":
        for row in out:
            row.cost = {k: v.quantize(RATE_QUANTUM) for k, v in row.cost.items()}
    out.sort(key=lambda r: (r.key[0] == IDLE_KEY, -r.total, r.key))
    return out


def totals(rows: Sequence[Row]) -> list[Row]:
    """One total row per currency (money of different currencies is never added)."""
    out: dict[str, Row] = {}
    for row in rows:
        t = out.setdefault(row.currency, Row(("TOTAL",), row.currency))
        for name in COMPONENTS:
            t.cost[name] += row.cost[name]
        t.cpu_core_seconds += row.cpu_core_seconds
        t.memory_byte_seconds += row.memory_byte_seconds
        t.network_bytes += row.network_bytes
        t.requested_cpu_core_seconds += row.requested_cpu_core_seconds
        t.requested_memory_byte_seconds += row.requested_memory_byte_seconds
        t.records += row.records
    return [out[c] for c in sorted(out)]


@dataclass(frozen=True)
class PeriodSpend:
    """Money of one group in one period: the points of the spend-over-time plot."""

    period: str
    start: dt.datetime
    end: dt.datetime
    key: str
    currency: str
    total: Decimal

    @property
    def kind(self) -> str:
        """Daily, Weekly or Monthly, from the period's length."""
        days = (self.end - self.start).days
        return "Daily" if days <= 1 else "Weekly" if days <= 7 else "Monthly"


def spend_over_time(data: Dataset, namespace: str | None = None) -> list[PeriodSpend]:
    """Window totals per (period, namespace) over the whole ledger, idle as its own group."""
    records = [r for r in data.allocations if namespace is None or r.namespace == namespace]
    if not records:
        return []
    sel = Selection(tuple(records), tuple(periods_of(records)), namespace)
    sums: dict[tuple[str, str, str], Decimal] = {}
    spans: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    for rec in contributing(sel, GroupBy("namespace")):
        key = IDLE_KEY if rec.record_kind == "node" else rec.namespace
        sums[(rec.period, key, rec.currency)] = (
            sums.get((rec.period, key, rec.currency), ZERO) + rec.total
        )
        spans[rec.period] = (rec.start, rec.end)
    return sorted(
        (PeriodSpend(p, *spans[p], k, c, v) for (p, k, c), v in sums.items()),
        key=lambda s: (s.start, s.period, s.key == IDLE_KEY, s.key),
    )


@dataclass(frozen=True)
class Burn:
    """A budget's period: spent so far (as of when) and the forecast, against the amount."""

    policy: str
    currency: str
    period: str
    start: dt.datetime
    end: dt.datetime
    as_of: dt.datetime
    spent: Decimal
    forecast: Decimal
    budget: Decimal
    thresholds: tuple[int, ...]


def budget_burn(data: Dataset, now: dt.datetime | None = None) -> list[Burn]:
    """One Burn per CostPolicy with a budget and a status period.

    `as_of` is the newest report folded into the policy's records of that period (`now` if
    none), clamped to the period: the status figures are good to then.
    """
    now = as_utc(now or dt.datetime.now(dt.UTC))
    out: list[Burn] = []
    for pol in data.policies:
        if pol.budget is None or pol.period is None or pol.start is None or pol.end is None:
            continue
        mine = [r for r in data.allocations if r.policy == pol.name and r.record_kind == "workload"]
        reports = [r.last_report for r in mine if r.period == pol.period and r.last_report]
        as_of = min(max(max(reports) if reports else now, pol.start), pol.end)
        spent = pol.spent if pol.spent is not None else sum(
            (r.total for r in mine if r.period == pol.period), ZERO)
        out.append(Burn(
            policy=pol.name, currency=pol.currency, period=pol.period, start=pol.start,
            end=pol.end, as_of=as_of, spent=spent,
            forecast=pol.forecast if pol.forecast is not None else spent,
            budget=pol.budget, thresholds=pol.thresholds,
        ))
    return out


@dataclass(frozen=True)
class RequestUse:
    """A workload's requested and used CPU and memory over the window (for the plot)."""

    key: str
    cpu_requested_core_hours: float
    cpu_used_core_hours: float
    memory_requested_gib_hours: float
    memory_used_gib_hours: float
    total: Decimal


def requested_vs_used(selection: Selection, top: int = 12) -> list[RequestUse]:
    """The `top` most expensive workloads of the selection, requests next to usage."""
    rows: dict[str, RequestUse] = {}
    for rec in selection.records:
        if rec.record_kind != "workload":
            continue
        key = f"{rec.namespace}/{rec.kind.lower()}/{rec.workload}"
        prev = rows.get(key)
        add = RequestUse(
            key,
            float(rec.requested_cpu_core_seconds / HOUR_SECONDS),
            float(rec.cpu_core_seconds / HOUR_SECONDS),
            float(rec.requested_memory_byte_seconds / HOUR_SECONDS / GIB),
            float(rec.memory_byte_seconds / HOUR_SECONDS / GIB),
            rec.total,
        )
        if prev is not None:
            add = RequestUse(
                key,
                prev.cpu_requested_core_hours + add.cpu_requested_core_hours,
                prev.cpu_used_core_hours + add.cpu_used_core_hours,
                prev.memory_requested_gib_hours + add.memory_requested_gib_hours,
                prev.memory_used_gib_hours + add.memory_used_gib_hours,
                prev.total + add.total,
            )
        rows[key] = add
    return sorted(rows.values(), key=lambda r: (-r.total, r.key))[:top]
