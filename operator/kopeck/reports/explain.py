"""`explain-bill` arithmetic: an Allocation's money taken apart line by line and recomputed.

What an Allocation status records is per period, not per pod-interval: requested and used
core-seconds, byte-seconds, GPU-seconds, storage byte-seconds, network bytes by class, the
money by component, the reports folded (node/bootId -> seq ranges) and how many pods were
charged. The operator charged each pod-interval max(request, usage) x rate, so from the
period sums we can prove, with the same `pod_cost` and `rates_for_node` the operator ran:

- CPU and memory money lies between max(R, U) x rate and (R + U) x rate, where R and U are
  the period's requested and used totals; it equals max(R, U) x rate exactly when one side
  was the larger in every interval (then that is what was billed);
- GPU, network and storage money equals quantity x rate;
- the components add up to status.cost.total.

Idle shares are shown, not recomputed: the per-interval node cost they were cut from is not
in the status. No I/O here: the command gathers the objects, this module explains them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from kopeck.accounting.cost import QUANTUM, PodInterval, pod_cost
from kopeck.accounting.periods import as_utc
from kopeck.accounting.prices import GIB, HOUR, MONTH_HOURS, NodeFacts, Rates, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.api.allocation import AllocationStatus
from kopeck.api.costpolicy import Pricing
from kopeck.reports.records import ZERO

Check = Literal["recomputed", "bounded", "shown", "mismatch"]
NETWORK_FIELDS: dict[str, str] = {
    "intraZone": "intra_zone", "crossZone": "cross_zone", "crossRegion": "cross_region",
    "internet": "internet", "unclassified": "unclassified",
}
"""Traffic classes as the rates key them -> the status field that counts their bytes."""
COMPONENT_FIELDS = ("cpu", "memory", "gpu", "network", "storage", "idle")
OPERATOR_MANAGER = "kopeck-operator"
"""The field manager the operator writes as (its User-Agent)."""


@dataclass(frozen=True)
class PodNow:
    """A pod of the workload as the cluster shows it now (context, not a billed figure)."""

    name: str
    node: str
    phase: str
    cpu_request: str
    memory_request: str


@dataclass(frozen=True)
class BillInput:
    """Everything explain-bill reads about one Allocation."""

    namespace: str
    name: str
    kind: str
    workload: str
    period: str
    start: dt.datetime
    end: dt.datetime
    status: AllocationStatus
    policy: str | None = None
    pricing: Pricing | None = None
    """The policy's pricing as it is now; None when the Allocation names no policy."""
    policy_missing: bool = False
    """The Allocation names a policy that no longer exists."""
    policy_generation: int | None = None
    nodes: Mapping[str, NodeFacts | None] = field(default_factory=dict)
    """Nodes its reports came from -> their facts (None: no Node object to read)."""
    pods_now: Sequence[PodNow] | None = None
    """Pods of the workload now; None when they were not looked up (e.g. from a file)."""
    parts: Sequence[Part] | None = None
    """For a namespace total: the namespace's workload records of the same period."""
    status_writers: Sequence[str] = ()
    """Who wrote the status subresource, from metadata.managedFields ("manager at time")."""


@dataclass(frozen=True)
class Part:
    """One workload record that a namespace total adds up."""

    name: str
    kind: str
    workload: str
    cost: Mapping[str, Decimal]
    """Money by component (COMPONENT_FIELDS) and "total"."""


@dataclass(frozen=True)
class Line:
    """One component of the bill: how its money came about, and whether it checks out."""

    component: str
    amount: Decimal
    """The explained amount (recomputed, or the status figure when only bounded or shown)."""
    status_amount: Decimal
    check: Check
    text: tuple[str, ...]
    """What was billed and why, one sentence per line."""


@dataclass(frozen=True)
class Interval:
    """Reports of one node boot folded into the record."""

    node: str
    boot_id: str
    seqs: str
    reports: int


@dataclass(frozen=True)
class NodeRates:
    """The rates one node's pods were priced at (None when they cannot be known)."""

    node: str
    rates: Rates | None
    why_unknown: str = ""


@dataclass(frozen=True)
class Bill:
    """The explanation of one Allocation."""

    source: BillInput
    currency: str
    intervals: tuple[Interval, ...]
    rates: tuple[NodeRates, ...]
    lines: tuple[Line, ...]
    explained_total: Decimal
    status_total: Decimal
    tolerance: Decimal
    problems: tuple[str, ...]
    """Mismatches: each names the object and field, and what to do."""
    parts_sum: Mapping[str, Decimal] | None = None
    """For a namespace total: its workload records added up, by component and total."""

    @property
    def ok(self) -> bool:
        """True when every line checks out and the lines add up to the status total."""
        return not self.problems

    @property
    def components_sum(self) -> Decimal:
        """The status's own components added up."""
        return sum((ln.status_amount for ln in self.lines), ZERO)


def _dec(value: float | int) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def count_reports(seqs: SeqSet) -> int:
    """How many report seqs a folded range set holds (a compacted floor counts from 0)."""
    settled = seqs.floor + 1 if seqs.floor >= 0 else 0
    return settled + sum(hi - max(lo, seqs.floor + 1) + 1
                         for lo, hi in seqs.ranges if hi > seqs.floor)


def intervals_of(status: AllocationStatus) -> tuple[Interval, ...]:
    """The node boots whose reports are folded into the record, with their seq ranges."""
    out = []
    for key, encoded in sorted((status.folded or {}).items()):
        node, _, boot = key.partition("/")
        out.append(Interval(node, boot, encoded, count_reports(SeqSet.decode(encoded))))
    return tuple(out)


def node_independent(pricing: Pricing) -> bool:
    """True when the rate card prices every node alike (no price book, no overrides)."""
    return pricing.price_book is None and not pricing.node_overrides


def node_rates(bill: BillInput, intervals: Sequence[Interval]) -> tuple[NodeRates, ...]:
    """Per node that reported, the rates `rates_for_node` gives under the policy now."""
    last = {bill.status.last_report.node} if bill.status.last_report else set()
    names = sorted({i.node for i in intervals} | set(bill.nodes) | last) or ["(any node)"]
    if bill.pricing is None:
        why = (f"CostPolicy {bill.policy} no longer exists" if bill.policy_missing
               else "no CostPolicy priced this record (spec.policyRef is empty)")
        if bill.policy_missing:
            return tuple(NodeRates(n, None, why) for n in names)
        zero = Rates(currency=bill.status.cost.currency, cpu_core_second=ZERO,
                     memory_byte_second=ZERO, source="none")
        return tuple(NodeRates(n, zero, why) for n in names)
    out = []
    for n in names:
        facts = bill.nodes.get(n)
        if facts is None and node_independent(bill.pricing):
            facts = NodeFacts(n)
        if facts is None:
            out.append(NodeRates(n, None, (
                f"Node {n} is gone and CostPolicy {bill.policy} prices by node "
                "(priceBook or nodeOverrides): its labels and capacity are unknown")))
            continue
        out.append(NodeRates(n, rates_for_node(bill.pricing, facts)))
    return tuple(out)


def _quantize(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM)


def _sig(value: Decimal, digits: int = 6) -> str:
    """A quantity or rate for people: `digits` significant figures, plain notation."""
    if value == 0:
        return "0"
    exp = value.adjusted() - digits + 1
    return f"{value.quantize(Decimal(1).scaleb(exp)).normalize():f}"


def _m(value: Decimal) -> str:
    return f"{_quantize(value):f}"


@dataclass(frozen=True)
class _Unit:
    """How one resource's quantity and rate are shown."""

    name: str
    per_second: Decimal
    """Seconds (x bytes) in one display unit: core-h = 3600 core-s, GiB-h = 3600 x 2^30."""
    second_name: str
    """The status's own unit, scaled to be readable: core-s, GiB-s."""
    second_size: Decimal


CORE_H = _Unit("core-h", HOUR, "core-s", Decimal(1))
GIB_H = _Unit("GiB-h", HOUR * GIB, "GiB-s", GIB)


def _q(value: Decimal, unit: _Unit) -> str:
    return (f"{_sig(value / unit.second_size)} {unit.second_name} "
            f"({_sig(value / unit.per_second)} {unit.name})")


def _rate_text(rate: Decimal, unit: _Unit, currency: str) -> str:
    return f"{_sig(rate * unit.per_second)} {currency}/{unit.name}"


def _usage_line(
    component: Literal["cpu", "memory"], requested: Decimal, used: Decimal, charged: Decimal,
    rates: Sequence[Rates] | None, why_unknown: str, tol: Decimal, currency: str, where: str,
) -> tuple[Line, str | None]:
    unit = CORE_H if component == "cpu" else GIB_H
    what = "CPU" if component == "cpu" else "memory"
    head = f"requested {_q(requested, unit)}, used {_q(used, unit)} (status.requests, status.usage)"

    def amount(r: Rates, req: Decimal, use: Decimal) -> Decimal:
        c = pod_cost(PodInterval("explain", Decimal(1), cpu_core_seconds=use,
                                 cpu_request_cores=req, memory_byte_seconds=use,
                                 memory_request_bytes=req), r)
        return c.cpu if component == "cpu" else c.memory

    if not rates:
        return Line(component, charged, charged, "shown", (
            head, f"rates unknown ({why_unknown}): {_m(charged)} {currency} not checked")), None
    per = [r.cpu_core_second if component == "cpu" else r.memory_byte_second for r in rates]
    larger = "request" if requested >= used else "usage"
    if len(set(per)) == 1:
        r = rates[0]
        lo, hi = amount(r, requested, used), amount(r, requested + used, ZERO)
        rate_t = _rate_text(per[0], unit, currency)
        if per[0] == 0 and abs(charged) <= tol:
            return Line(component, ZERO, charged, "recomputed", (
                head, f"the rate for {what} is 0 ({rate_t}): nothing is billed")), None
        if abs(charged - lo) <= tol:
            why = ("usage stayed at or under the request in every interval" if larger == "request"
                   else "usage was at or above the request in every interval")
            billed = max(requested, used)
            return Line(component, lo, charged, "recomputed", (
                head, f"billed max(request, usage) = {larger}: {why}",
                f"{_q(billed, unit)} x {rate_t} = {_m(lo)} {currency}")), None
        if lo - tol <= charged <= hi + tol:
            billed = charged / per[0] if per[0] else ZERO
            return Line(component, charged, charged, "bounded", (
                head,
                "billed max(request, usage) per interval: usage was over the request in some "
                "intervals and under it in others, so the period sums bound the amount",
                f"{_m(charged)} {currency} / {rate_t} = {_q(billed, unit)} billed, "
                f"{_q(billed - max(requested, used), unit)} above the larger total; "
                f"bounds {_m(lo)} .. {_m(hi)} {currency}")), None
    else:
        lo = min(amount(r, requested, used) for r in rates)
        hi = max(amount(r, requested + used, ZERO) for r in rates)
        if lo - tol <= charged <= hi + tol:
            return Line(component, charged, charged, "bounded", (
                head, "its pods ran on nodes with different rates: the split per node is not "
                "in the status, so the period sums bound the money",
                f"{_m(charged)} {currency} within {_m(lo)} .. {_m(hi)} {currency}")), None
    explained = min(max(charged, lo), hi)
    problem = (
        f"{where}: status.cost.{component} is {_m(charged)} {currency}, but max(request, usage) "
        f"x rate gives {_m(lo)} .. {_m(hi)} {currency} for {what} ({head.split(' (')[0]}): the "
        "status was changed by something other than the operator, or the CostPolicy's rates "
        "changed during the period; compare the rates above with the policy's history"
    )
    return Line(component, explained, charged, "mismatch", (
        head, f"expected {_m(lo)} .. {_m(hi)} {currency}, status has {_m(charged)} {currency}")
    ), problem


def _flat_line(
    component: str, head: str, charged: Decimal, expected: Sequence[Decimal] | None,
    formula: str, why_unknown: str, tol: Decimal, currency: str, where: str,
) -> tuple[Line, str | None]:
    """A line whose money is quantity x rate: recomputed when the rate is one, bounded else."""
    if expected is None:
        return Line(component, charged, charged, "shown", (
            head, f"rates unknown ({why_unknown}): {_m(charged)} {currency} not checked")), None
    lo, hi = min(expected), max(expected)
    if len(set(expected)) == 1 and abs(charged - lo) <= tol:
        return Line(component, lo, charged, "recomputed", (head, formula)), None
    if len(set(expected)) > 1 and lo - tol <= charged <= hi + tol:
        return Line(component, charged, charged, "bounded", (
            head, f"nodes with different rates: {_m(lo)} .. {_m(hi)} {currency}")), None
    explained = min(max(charged, lo), hi)
    problem = (
        f"{where}: status.cost.{component} is {_m(charged)} {currency}, but quantity x rate "
        f"gives {_m(lo)}{'' if lo == hi else ' .. ' + _m(hi)} {currency} ({head}): the status "
        "was changed by something other than the operator, or the CostPolicy's rates changed "
        "during the period"
    )
    return Line(component, explained, charged, "mismatch", (head, formula)), problem


def explain(bill: BillInput) -> Bill:
    """Take one Allocation's money apart and check every line against the policy's rates."""
    st = bill.status
    c, u, r = st.cost, st.usage, st.requests
    currency = c.currency
    where = f"Allocation {bill.namespace}/{bill.name}"
    intervals = intervals_of(st)
    reports = sum(i.reports for i in intervals) or 1
    per_node = node_rates(bill, intervals)
    known = [nr.rates for nr in per_node if nr.rates is not None]
    unknown = "; ".join(dict.fromkeys(nr.why_unknown for nr in per_node if nr.rates is None))
    rates = known if known and not unknown else None

    def tol(value: Decimal) -> Decimal:
        # one rounding to 1e-12 per pod and per fold, and the status's float quantities
        return QUANTUM * (reports * (st.pods_seen + 2)) + abs(value) * Decimal("1e-9")

    problems: list[str] = []
    lines: list[Line] = []

    def add(pair: tuple[Line, str | None]) -> None:
        lines.append(pair[0])
        if pair[1]:
            problems.append(pair[1])

    for comp, req, use, charged in (
        ("cpu", _dec(r.cpu_core_seconds), _dec(u.cpu_core_seconds), c.cpu),
        ("memory", _dec(r.memory_byte_seconds), _dec(u.memory_byte_seconds), c.memory),
    ):
        add(_usage_line(comp, req, use, charged, rates, unknown, tol(charged), currency,  # type: ignore[arg-type]
                        where))

    gpu_s = _dec(r.gpu_seconds)
    gpu = [pod_cost(PodInterval("explain", Decimal(1), gpus=gpu_s), x).gpu for x in rates or []]
    gpu_rate = (f"{_sig(rates[0].gpu_second * HOUR)} {currency}/GPU-h" if rates else "")
    add(_flat_line(
        "gpu", f"requested {_sig(gpu_s / HOUR)} GPU-h (status.requests.gpuSeconds)", c.gpu,
        gpu if rates else None,
        f"GPUs are billed by request: {_sig(gpu_s / HOUR)} GPU-h x {gpu_rate} = "
        f"{_m(gpu[0]) if gpu else '?'} {currency}", unknown, tol(c.gpu), currency, where))

    net_bytes = {cls: getattr(u.network_bytes, f) for cls, f in NETWORK_FIELDS.items()}
    net = [pod_cost(PodInterval("explain", Decimal(1), network_bytes=net_bytes), x).network
           for x in rates or []]
    shown = [cls for cls, n in net_bytes.items() if n] or ["internet"]
    parts = [
        f"{cls} {_sig(Decimal(net_bytes[cls]) / GIB)} GiB x "
        f"{_sig(rates[0].network_per_byte.get(cls, ZERO) * GIB) if rates else '?'} "
        f"{currency}/GiB" for cls in shown
    ]
    add(_flat_line(
        "network", "bytes by class " + ", ".join(
            f"{cls} {net_bytes[cls]}" for cls in shown) + " (status.usage.networkBytes)",
        c.network, net if rates else None,
        " + ".join(parts) + f" = {_m(net[0]) if net else '?'} {currency}",
        unknown, tol(c.network), currency, where))

    sto_bs = _dec(u.storage_byte_seconds)
    sto = [pod_cost(PodInterval("explain", Decimal(1), storage_bytes=sto_bs), x).storage
           for x in rates or []]
    sto_rate = (f"{_sig(rates[0].storage_byte_second * HOUR * MONTH_HOURS * GIB)} "
                f"{currency}/GiB-month" if rates else "?")
    add(_flat_line(
        "storage", f"volumes {_sig(sto_bs / HOUR / MONTH_HOURS / GIB)} GiB-month "
        "(status.usage.storageByteSeconds)", c.storage, sto if rates else None,
        f"{_sig(sto_bs / HOUR / MONTH_HOURS / GIB)} GiB-month x {sto_rate} = "
        f"{_m(sto[0]) if sto else '?'} {currency}", unknown, tol(c.storage), currency, where))

    compute = c.cpu + c.memory + c.gpu
    if bill.kind == "Node":
        idle_text: tuple[str, ...] = (
            f"unallocated cost of node {bill.workload}: per interval, the node's cost minus "
            "the compute charged to its pods, summed (idle is not shared out to pods); the "
            "node cost per interval is not in the status, so this line is shown, not "
            "recomputed",)
    elif c.idle == 0:
        idle_text = (
            "0: idle is not shared out; each node's unallocated cost (node cost - what its "
            "pods were charged for compute) stays in that node's Allocation (kind Node)",)
    else:
        share = f"{_sig(c.idle / compute * 100, 4)}% of compute" if compute else "no compute"
        idle_text = (
            f"share of node idle: {_m(c.idle)} {currency} = {share}",
            "each node-interval's idle (node cost - compute charged to its pods) is split "
            "over its pods by compute cost; the node cost per interval is not in the status, "
            "so this line is shown, not recomputed",
        )
    lines.append(Line("idle", c.idle, c.idle, "shown", idle_text))

    explained = sum((ln.amount for ln in lines), ZERO)
    components = sum((ln.status_amount for ln in lines), ZERO)
    total_tol = sum((tol(ln.status_amount) for ln in lines), ZERO)
    if components != c.total:
        problems.append(
            f"{where}: status.cost.total is {_m(c.total)} {currency} but its components "
            f"(cpu + memory + gpu + network + storage + idle) add up to {_m(components)} "
            f"{currency}; the status was changed by something other than the operator"
        )
    elif abs(explained - c.total) > total_tol and not problems:
        problems.append(
            f"{where}: the explained lines add up to {_m(explained)} {currency}, "
            f"status.cost.total is {_m(c.total)} {currency}"
        )
    parts_sum = None
    if bill.parts is not None:
        parts_sum = {k: sum((p.cost[k] for p in bill.parts), ZERO)
                     for k in (*COMPONENT_FIELDS, "total")}
        for k, v in parts_sum.items():
            own = c.total if k == "total" else getattr(c, k)
            if v != own:
                problems.append(
                    f"{where}: status.cost.{k} of the namespace total is {_m(own)} {currency} "
                    f"but its {len(bill.parts)} workload records of period {bill.period} add "
                    f"up to {_m(v)} {currency}: a workload record was deleted or changed (or "
                    "the operator was writing them just now: run again)"
                )
    others = [w for w in bill.status_writers if not w.startswith(OPERATOR_MANAGER)]
    if others:
        problems = [f"{p}; besides {OPERATOR_MANAGER}, the status was written by "
                    f"{', '.join(others)} (metadata.managedFields)" for p in problems]
    return Bill(
        source=bill, currency=currency, intervals=intervals, rates=per_node,
        lines=tuple(lines), explained_total=explained, status_total=c.total,
        tolerance=total_tol, problems=tuple(problems), parts_sum=parts_sum,
    )


def _ts(t: dt.datetime) -> str:
    return as_utc(t).strftime("%Y-%m-%d %H:%M:%SZ")


def rates_text(nr: NodeRates, currency: str) -> str:
    """One node's rates in the units a rate card is written in."""
    r = nr.rates
    if r is None:
        return f"node {nr.node}: unknown ({nr.why_unknown})"
    net = ", ".join(f"{cls} {_sig(r.network_per_byte.get(cls, ZERO) * GIB)}"
                    for cls in NETWORK_FIELDS)
    return (
        f"node {nr.node} ({r.source}): cpu {_rate_text(r.cpu_core_second, CORE_H, currency)}, "
        f"memory {_rate_text(r.memory_byte_second, GIB_H, currency)}, "
        f"gpu {_sig(r.gpu_second * HOUR)} {currency}/GPU-h, "
        f"storage {_sig(r.storage_byte_second * HOUR * MONTH_HOURS * GIB)} {currency}/GiB-month, "
        f"network {currency}/GiB: {net}"
        + (f" [{nr.why_unknown}]" if nr.why_unknown else "")
    )


def render_text(bills: Sequence[Bill]) -> str:
    """The bills as text: the record, its pods and intervals, rates, lines, the total."""
    out: list[str] = []
    for b in bills:
        s = b.source
        st = s.status
        out.append(f"Allocation {s.namespace}/{s.name}: {s.kind} {s.namespace}/{s.workload}, "
                   f"period {s.period} [{_ts(s.start)} .. {_ts(s.end)}), {st.phase}")
        if s.policy is None:
            out.append("  policy     none: no CostPolicy selected this workload, so it was "
                       "priced at zero")
        else:
            gen = f", generation {s.policy_generation}" if s.policy_generation else ""
            gone = " (gone: rates cannot be checked)" if s.policy_missing else ""
            out.append(f"  policy     CostPolicy {s.policy}{gen}{gone}; rates as the policy is "
                       "now")
        if s.status_writers:
            out.append(f"  status     written by {', '.join(s.status_writers)} "
                       "(metadata.managedFields)")
        out.append(f"  pods       {st.pods_seen} distinct pods charged this period "
                   "(status.podsSeen)")
        if s.pods_now is not None:
            if not s.pods_now:
                out.append("             none of them runs now")
            for p in s.pods_now:
                out.append(f"             now: {p.name} on {p.node or '(unscheduled)'}, "
                           f"requests cpu={p.cpu_request} memory={p.memory_request}, {p.phase}")
        if b.intervals:
            n = sum(i.reports for i in b.intervals)
            out.append(f"  intervals  {n} probe reports folded (status.folded):")
            for i in b.intervals:
                out.append(f"             node {i.node} boot {i.boot_id}: seq {i.seqs} "
                           f"({i.reports} reports)")
        else:
            out.append("  intervals  no probe report folded yet")
        if st.last_report is not None:
            lr = st.last_report
            out.append(f"             newest: node {lr.node} seq {lr.seq}, interval ending "
                       f"{_ts(lr.time)}")
        for nr in b.rates:
            out.append(f"  rates      {rates_text(nr, b.currency)}")
        out.append("")
        for ln in b.lines:
            mark = {"recomputed": "ok", "bounded": "ok (bounded)", "shown": "shown",
                    "mismatch": "MISMATCH"}[ln.check]
            out.append(f"  {ln.component:<8} {_m(ln.amount):>22} {b.currency}   status "
                       f"{_m(ln.status_amount)}  {mark}")
            out.extend(f"             {t}" for t in ln.text)
        out.append(f"  {'TOTAL':<8} {_m(b.explained_total):>22} {b.currency}   status.cost.total "
                   f"{_m(b.status_total)}  {'ok' if b.ok else 'MISMATCH'}")
        if s.parts is not None and b.parts_sum is not None:
            out.append(f"  the namespace total is the sum of its {len(s.parts)} workload "
                       "records of the period (explain each with KIND/NAME):")
            for part in sorted(s.parts, key=lambda x: (-x.cost["total"], x.name)):
                split = ", ".join(f"{k} {_m(part.cost[k])}" for k in COMPONENT_FIELDS
                                  if part.cost[k])
                ref = f"{part.kind.lower()}/{part.workload}"
                out.append(f"    {ref:<40} {_m(part.cost['total']):>20} {b.currency}  "
                           f"({split or 'nothing charged'})")
            out.append(f"    {'sum':<40} {_m(b.parts_sum['total']):>20} {b.currency}")
        out.extend(f"  MISMATCH: {problem}" for problem in b.problems)
        out.append("")
    return "\n".join(out) + "\n"


def bill_dict(b: Bill) -> dict[str, Any]:
    """One bill as JSON-ready data; money as exact decimal strings."""
    s = b.source
    return {
        "namespace": s.namespace, "name": s.name,
        "workload": {"kind": s.kind, "name": s.workload},
        "period": {"name": s.period, "start": s.start.isoformat(), "end": s.end.isoformat()},
        "phase": s.status.phase, "policy": s.policy, "currency": b.currency,
        "podsSeen": s.status.pods_seen, "statusWriters": list(s.status_writers),
        "podsNow": None if s.pods_now is None else [p.__dict__ for p in s.pods_now],
        "intervals": [i.__dict__ for i in b.intervals],
        "rates": [rates_text(nr, b.currency) for nr in b.rates],
        "lines": [{"component": ln.component, "amount": _m(ln.amount),
                   "statusAmount": _m(ln.status_amount), "check": ln.check,
                   "explanation": list(ln.text)} for ln in b.lines],
        "explainedTotal": _m(b.explained_total), "statusTotal": _m(b.status_total),
        "componentsSum": _m(b.components_sum), "tolerance": _m(b.tolerance),
        "parts": None if s.parts is None else [
            {"name": p.name, "kind": p.kind, "workload": p.workload,
             **{k: _m(v) for k, v in p.cost.items()}} for p in s.parts],
        "ok": b.ok, "problems": list(b.problems),
    }


KIND_ALIASES: dict[str, str] = {
    "deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
    "statefulset": "StatefulSet", "statefulsets": "StatefulSet", "sts": "StatefulSet",
    "daemonset": "DaemonSet", "daemonsets": "DaemonSet", "ds": "DaemonSet",
    "job": "Job", "jobs": "Job", "cronjob": "CronJob", "cronjobs": "CronJob", "cj": "CronJob",
    "pod": "Pod", "pods": "Pod", "po": "Pod",
    "namespace": "Namespace", "namespaces": "Namespace", "ns": "Namespace",
    "node": "Node", "nodes": "Node", "no": "Node",
}
"""kubectl's names and short names of the kinds an Allocation can be for."""


class ExplainError(Exception):
    """Something the user must fix to get an explanation; the message says what."""


def parse_target(text: str) -> tuple[str, str]:
    """`deployment/web` -> ("Deployment", "web"), with kubectl's kind names and short names."""
    kind, sep, name = text.partition("/")
    resolved = KIND_ALIASES.get(kind.lower().split(".")[0])
    if not sep or not name or resolved is None:
        raise ExplainError(
            f"{text!r} is not <kind>/<name>: use e.g. deployment/web, statefulset/db, "
            "daemonset/agent, job/x, cronjob/x, pod/x, namespace/shop or node/n1"
        )
    return resolved, name


def _quantity(value: Any) -> Decimal:
    from kopeck.rightsizing.quantity import QuantityError, parse_quantity

    try:
        return parse_quantity(value) if value is not None else ZERO
    except QuantityError:
        return ZERO


def node_facts_of(node: Mapping[str, Any]) -> NodeFacts:
    """What pricing reads from a Node object: labels and capacity (as the operator does)."""
    meta = node.get("metadata") or {}
    capacity = (node.get("status") or {}).get("capacity") or {}
    gpus = sum((_quantity(v) for k, v in capacity.items() if str(k).endswith("/gpu")), ZERO)
    return NodeFacts(
        name=str(meta.get("name", "")), labels=dict(meta.get("labels") or {}),
        cpu_cores=_quantity(capacity.get("cpu")),
        memory_bytes=int(_quantity(capacity.get("memory"))), gpus=int(gpus),
    )


def _owner(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def pods_of(items: Sequence[Mapping[str, Any]], namespace: str, kind: str,
            name: str) -> list[PodNow]:
    """The workload's pods among `items` (Pods, ReplicaSets, Jobs), following owners."""
    from kopeck.rightsizing.quantity import format_cpu, format_memory

    owners: dict[tuple[str, str], tuple[str, str] | None] = {}
    for it in items:
        meta = it.get("metadata") or {}
        if it.get("kind") in ("ReplicaSet", "Job") and meta.get("namespace") == namespace:
            owners[(str(it["kind"]), str(meta.get("name")))] = _owner(meta)
    out = []
    for it in items:
        meta = it.get("metadata") or {}
        if it.get("kind") != "Pod" or meta.get("namespace") != namespace:
            continue
        chain = [("Pod", str(meta.get("name")))]
        step = _owner(meta)
        while step is not None and len(chain) < 4:
            chain.append(step)
            step = owners.get(step)
        if (kind, name) not in chain:
            continue
        spec = it.get("spec") or {}
        cpu = mem = ZERO
        for ctr in spec.get("containers") or []:
            req = (ctr.get("resources") or {}).get("requests") or {}
            cpu += _quantity(req.get("cpu"))
            mem += _quantity(req.get("memory"))
        out.append(PodNow(
            name=str(meta.get("name")), node=str(spec.get("nodeName") or ""),
            phase=str((it.get("status") or {}).get("phase") or "Unknown"),
            cpu_request=format_cpu(cpu), memory_request=format_memory(int(mem)),
        ))
    return sorted(out, key=lambda p: p.name)


def bill_inputs(
    items: Sequence[Mapping[str, Any]], kind: str, name: str, namespace: str,
    period: str | None = None, with_pods: bool = True,
) -> list[BillInput]:
    """The Allocations of one workload (newest period, or `period`, or `all`), joined with
    their CostPolicy, the Nodes their reports came from, and the workload's pods now."""
    from pydantic import ValidationError

    from kopeck.api.allocation import AllocationSpec
    from kopeck.api.costpolicy import CostPolicySpec

    policies: dict[str, Mapping[str, Any]] = {}
    nodes: dict[str, Mapping[str, Any]] = {}
    mine: list[tuple[Mapping[str, Any], AllocationSpec]] = []
    workload_records: list[tuple[Mapping[str, Any], AllocationSpec]] = []
    others: set[str] = set()
    for it in items:
        meta = it.get("metadata") or {}
        if it.get("kind") == "CostPolicy":
            policies[str(meta.get("name"))] = it
        elif it.get("kind") == "Node":
            nodes[str(meta.get("name"))] = it
        elif it.get("kind") == "Allocation" and meta.get("namespace") == namespace:
            try:
                spec = AllocationSpec.model_validate(it.get("spec") or {})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err.get("loc", ()))
                raise ExplainError(f"Allocation {namespace}/{meta.get('name')}: spec.{loc}: "
                                   f"{err.get('msg')}") from exc
            ref = spec.workload_ref
            if ref.kind == kind and ref.name == name:
                mine.append((it, spec))
            else:
                others.add(f"{ref.kind.lower()}/{ref.name}")
                if ref.kind not in ("Namespace", "Node"):
                    workload_records.append((it, spec))
    target = f"{kind.lower()}/{name}"
    if not mine:
        hint = (f"workloads with Allocations there: {', '.join(sorted(others)[:20])}"
                if others else "it has no Allocations at all (`kubectl get alloc -A`)")
        raise ExplainError(f"no Allocation for {target} in namespace {namespace}: {hint}")
    known = sorted({s.period.name for _, s in mine},
                   key=lambda p: next(as_utc(s.period.start) for _, s in mine
                                      if s.period.name == p))
    if period in (None, "") and mine:
        newest = max(as_utc(s.period.start) for _, s in mine)
        mine = [(i, s) for i, s in mine if as_utc(s.period.start) == newest]
    elif period != "all":
        mine = [(i, s) for i, s in mine if s.period.name == period]
        if not mine:
            raise ExplainError(f"{target} in namespace {namespace} has no Allocation for "
                               f"period {period!r}: its periods are {', '.join(known)} "
                               "(or use --period all)")
    pods = pods_of(items, namespace, kind, name) if with_pods else None
    out = []
    for it, spec in sorted(mine, key=lambda p: as_utc(p[1].period.start)):
        meta = it.get("metadata") or {}
        where = f"Allocation {namespace}/{meta.get('name')}"
        try:
            status = AllocationStatus.model_validate(it.get("status") or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ExplainError(f"{where}: status.{loc}: {err.get('msg')}; the operator "
                               "rewrites it at the next report") from exc
        pol_name = spec.policy_ref.name if spec.policy_ref else None
        pricing = None
        generation = None
        pol = policies.get(pol_name) if pol_name else None
        if pol is not None:
            try:
                pricing = CostPolicySpec.model_validate(pol.get("spec") or {}).pricing
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err.get("loc", ()))
                raise ExplainError(f"CostPolicy {pol_name}: spec.{loc}: {err.get('msg')}; "
                                   "fix the policy (`kubectl edit cpol "
                                   f"{pol_name}`)") from exc
            generation = (pol.get("metadata") or {}).get("generation")
        folded_nodes = {k.partition("/")[0] for k in (status.folded or {})}
        if status.last_report is not None:
            folded_nodes.add(status.last_report.node)
        out.append(BillInput(
            namespace=namespace, name=str(meta.get("name")), kind=kind, workload=name,
            period=spec.period.name, start=as_utc(spec.period.start),
            end=as_utc(spec.period.end), status=status, policy=pol_name, pricing=pricing,
            policy_missing=pol_name is not None and pol is None,
            policy_generation=generation,
            nodes={n: node_facts_of(nodes[n]) if n in nodes else None for n in folded_nodes},
            pods_now=pods,
            parts=_parts(workload_records, spec.period.name) if kind == "Namespace" else None,
            status_writers=status_writers(meta),
        ))
    return out


def status_writers(meta: Mapping[str, Any]) -> list[str]:
    """Field managers of the status subresource, newest last: who wrote the figures."""
    entries = [m for m in meta.get("managedFields") or [] if m.get("subresource") == "status"]
    entries.sort(key=lambda m: str(m.get("time") or ""))
    return [f"{m.get('manager', '?')} at {m.get('time', '?')}" for m in entries]


def _parts(records: Sequence[tuple[Mapping[str, Any], Any]], period: str) -> list[Part]:
    """The workload records of one period as Parts (money only; unreadable ones raise)."""
    from pydantic import ValidationError

    out = []
    for it, spec in records:
        if spec.period.name != period:
            continue
        meta = it.get("metadata") or {}
        try:
            cost = AllocationStatus.model_validate(it.get("status") or {}).cost
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ExplainError(f"Allocation {meta.get('namespace')}/{meta.get('name')}: "
                               f"status.{loc}: {err.get('msg')}") from exc
        money = {k: getattr(cost, k) for k in COMPONENT_FIELDS}
        out.append(Part(str(meta.get("name")), spec.workload_ref.kind, spec.workload_ref.name,
                        {**money, "total": cost.total}))
    return out
