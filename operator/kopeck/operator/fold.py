"""Folding one probe report into the accumulators: attribution, pricing, idle, de-dup, and
the gaps it declares (reports its probe dropped, marked LedgerComplete=False where they hit).

No I/O: the caller first makes sure every pod in the report is known (ingest.py), then
calls `fold_report`, which runs without awaiting and so is atomic within the event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from kopeck.accounting.cost import (
    NodeInterval,
    PodCost,
    PodInterval,
    money,
    pod_cost,
    share_idle,
)
from kopeck.accounting.ledger import NODE_KIND, Accumulator, WorkloadKey, namespace_total_key
from kopeck.accounting.matching import NamedPolicy
from kopeck.accounting.network import bytes_by_class
from kopeck.accounting.periods import PeriodWindow, period_at, split_interval
from kopeck.accounting.prices import NodeFacts, Rates, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.api.report import REPLAY_HORIZON_REPORTS, PodUsage, ProbeReport
from kopeck.operator.conditions import set_condition
from kopeck.operator.state import AccKey, PodInfo, State, period_kind
from kopeck.operator.workloads import Workload

ZERO = Decimal(0)
log = logging.getLogger("kopeck.fold")
NO_RATES = Rates(currency="USD", cpu_core_second=ZERO, memory_byte_second=ZERO)


@dataclass
class FoldResult:
    """What one report changed, for the ack, metrics and anomaly detection."""

    duplicate: bool = False
    touched: set[AccKey] = field(default_factory=set)
    unattributed: int = 0
    late: int = 0
    seconds: Decimal = ZERO
    spend_by_workload: dict[WorkloadKey, Decimal] = field(default_factory=dict)
    spend_by_namespace: dict[str, Decimal] = field(default_factory=dict)
    spend_by_policy: dict[str, Decimal] = field(default_factory=dict)
    policy_by_workload: dict[WorkloadKey, str] = field(default_factory=dict)
    node_cost: Decimal = ZERO
    """The node's cost over the interval; what pods were charged for compute plus idle."""
    node_allocated: Decimal = ZERO
    """Compute cost charged to the node's pods over the interval."""
    currency: str = "USD"
    node_rates: Rates | None = None
    """The rates that priced the node's interval (for OpenCost's node price metrics)."""
    node_facts: NodeFacts | None = None
    dropped: list[DropPlan] = field(default_factory=list)
    """The holes the report's gaps declared (reports its probe dropped, never to arrive)."""


def node_facts(state: State, report: ProbeReport) -> NodeFacts:
    """The node's labels from its Node object and its capacity from there or the report."""
    known = state.nodes.get(report.node)
    info = report.node_info
    labels = dict(known.labels) if known else {}
    if info is not None and info.cpu_factor != 1.0 and "cost.kopeck.io/cpu-factor" not in labels:
        labels["cost.kopeck.io/cpu-factor"] = repr(info.cpu_factor)
    cores = known.cpu_cores if known and known.cpu_cores > 0 else (
        Decimal(repr(info.cpu_cores)) if info else ZERO
    )
    memory = known.memory_bytes if known and known.memory_bytes > 0 else (
        info.memory_bytes if info else 0
    )
    return NodeFacts(report.node, labels, cores, memory, known.gpus if known else 0)


def pod_interval(pod: PodUsage, info: PodInfo | None, interval_seconds: Decimal) -> PodInterval:
    """Join a pod's measured usage with its requests into a pricing input."""
    seconds = Decimal(repr(pod.seconds)) if pod.seconds > 0 else interval_seconds
    seconds = min(seconds, interval_seconds) if interval_seconds > 0 else seconds
    mem_s = Decimal(repr(pod.memory_byte_seconds))
    if mem_s == 0:
        mem_s = Decimal(pod.memory_working_set_bytes) * seconds
    net = bytes_by_class(pod.network)
    io = sum(c.io_read_bytes + c.io_write_bytes for c in pod.containers)
    shape = info.shape if info else None
    return PodInterval(
        uid=pod.uid,
        seconds=seconds,
        cpu_core_seconds=Decimal(repr(pod.cpu_core_seconds)),
        cpu_request_cores=shape.cpu_cores if shape else ZERO,
        memory_byte_seconds=mem_s,
        memory_request_bytes=shape.memory_bytes if shape else ZERO,
        gpus=shape.gpus if shape else ZERO,
        storage_bytes=info.storage_bytes if info else ZERO,
        network_bytes=net,
        memory_peak_bytes=max(pod.memory_peak_bytes, pod.memory_working_set_bytes),
        io_bytes=io,
    )


def _node_policy(state: State, policies: list[NamedPolicy | None]) -> NamedPolicy | None:
    """The policy that prices a node's idle: the one most of its pods use, else the
    highest-priority policy whose namespace selector is empty (cluster-wide)."""
    counts: dict[str, int] = defaultdict(int)
    by_name: dict[str, NamedPolicy] = {}
    for p in policies:
        if p is not None:
            counts[p.name] += 1
            by_name[p.name] = p
    if counts:
        return by_name[min(counts, key=lambda n: (-counts[n], n))]
    wide = [p for p in state.valid_policies() if p.spec.scope.namespace_selector.is_empty()]
    return min(wide, key=lambda p: (-p.spec.scope.priority, p.name)) if wide else None


def resolve_pod(state: State, pod: PodUsage) -> PodInfo | None:
    """The cached pod for a reported one, by uid, else by namespace/name."""
    info = state.pods.get(pod.uid)
    if info is None and pod.namespace and pod.name:
        uid = state.pod_uids.get((pod.namespace, pod.name))
        info = state.pods.get(uid) if uid else None
    return info


def _record(
    state: State, key: WorkloadKey, window: PeriodWindow, policy: NamedPolicy | None,
    report: ProbeReport, result: FoldResult,
) -> tuple[AccKey, Accumulator] | None:
    """The record a report's share of one period goes into; None when it holds it already.

    A final record never changes: usage arriving for its period lands in the period's
    adjustment record (counted as late). A record closed only because its workload went
    away reopens when the workload reports again within the period."""
    acc = state.accumulator(key, window, policy)
    if acc.holds(report.node, report.boot_id, report.seq):
        return None
    if acc.final:
        result.late += 1
        acc = state.accumulator(key, window, policy, adjustment=True)
        if acc.holds(report.node, report.boot_id, report.seq):
            return None
    elif acc.closed:
        acc.closed = False
    return (key, acc.record), acc


def fold_report(state: State, report: ProbeReport, now: dt.datetime) -> FoldResult:
    """Price a report and fold it into every record it concerns, each exactly once."""
    result = FoldResult()
    mark_key = f"{report.node}/{report.boot_id}"
    global_seen = state.seen.setdefault(mark_key, SeqSet())
    if report.seq in global_seen:
        result.duplicate = True
        return result
    start, end = report.interval_start, report.interval_end
    interval_s = Decimal(repr(max(0.0, (end - start).total_seconds())))
    result.seconds = interval_s
    facts = node_facts(state, report)
    cpu_factor = facts.cpu_factor

    policy_cache: dict[tuple[str, WorkloadKey], NamedPolicy | None] = {}
    entries: list[tuple[PodUsage, PodInfo | None, Workload, NamedPolicy | None, PodInterval]] = []
    for pod in report.pods:
        info = resolve_pod(state, pod)
        if info is None:
            if not pod.namespace:
                result.unattributed += 1
                continue
            name = pod.name or pod.uid
            workload = Workload(WorkloadKey(pod.namespace, "Pod", name, "v1"))
            result.unattributed += 1
        else:
            workload = info.workload
        ckey = (workload.key.namespace, workload.key)
        if ckey not in policy_cache:
            policy_cache[ckey] = state.policy_for(workload.key.namespace, workload.labels)
            if policy_cache[ckey] is None:
                log.debug("no CostPolicy for %s (namespace labels %s)", workload.key.ref,
                          state.namespaces.get(workload.key.namespace))
        policy = policy_cache[ckey]
        entries.append((pod, info, workload, policy, pod_interval(pod, info, interval_s)))

    rates_cache: dict[str | None, Rates] = {}
    costs: list[PodCost] = []
    for _, _, _, policy, pi in entries:
        pname = policy.name if policy else None
        rates = rates_cache.get(pname)
        if rates is None:
            rates = rates_for_node(policy.spec.pricing, facts) if policy else NO_RATES
            rates_cache[pname] = rates
        costs.append(pod_cost(pi, rates))
    node_pol = _node_policy(state, [e[3] for e in entries])
    node_rates = rates_for_node(node_pol.spec.pricing, facts) if node_pol else NO_RATES
    allocated = sum((c.compute for c in costs), ZERO)
    capacity_known = facts.cpu_cores > 0 or node_rates.node_second is not None
    node_cost = money(node_rates.node_cost_per_second(facts) * interval_s) if capacity_known else (
        allocated
    )
    interval = NodeInterval(report.node, interval_s, node_cost, tuple(costs), node_cost - allocated)
    result.node_cost, result.node_allocated = node_cost, allocated
    result.currency = node_rates.currency
    result.node_rates, result.node_facts = node_rates, facts
    if state.settings.share_idle:
        interval = share_idle(interval)

    # group the report's pods by workload: one fold per record, not one per pod
    groups: dict[WorkloadKey, tuple[Workload, NamedPolicy | None, list[PodInterval],
                                    list[PodCost], list[PodUsage]]] = {}
    for (pod, _info, workload, policy, pi), cost in zip(entries, interval.pods, strict=True):
        group = groups.get(workload.key)
        if group is None:
            group = (workload, policy, [], [], [])
            groups[workload.key] = group
        group[2].append(pi)
        group[3].append(cost)
        group[4].append(pod)

    splits: dict[str, list[tuple[PeriodWindow, Decimal]]] = {}
    touched: set[AccKey] = set()
    held = 0
    cpu_seen: dict[AccKey, list[Decimal]] = {}
    for wkey, (_workload, policy, pis, group_costs, usages) in groups.items():
        seen_pods = state.first_reported.setdefault(wkey, {})
        for pi in pis:
            seen_pods.setdefault(pi.uid, end)
        kind = period_kind(policy)
        if kind not in splits:
            splits[kind] = split_interval(kind, start, end)
        fresh = False
        for window, frac in splits[kind]:
            for key in (wkey, namespace_total_key(wkey.namespace)):
                target = _record(state, key, window, policy, report, result)
                if target is None:
                    held += 1
                    continue
                akey, acc = target
                acc.add_group(pis, group_costs, fraction=frac, cpu_factor=cpu_factor)
                touched.add(akey)
                if key == wkey:
                    fresh = True
                    cpu_seen[akey] = [
                        sum((p.cpu_core_seconds for p in pis), ZERO) * frac,
                        sum((p.cpu_request_cores * p.seconds for p in pis), ZERO) * frac,
                        sum((c.total for c in group_costs), ZERO) * frac,
                    ]
        spend = sum((c.total for c in group_costs), ZERO)
        result.spend_by_workload[wkey] = result.spend_by_workload.get(wkey, ZERO) + spend
        ns = wkey.namespace
        result.spend_by_namespace[ns] = result.spend_by_namespace.get(ns, ZERO) + spend
        if policy is not None:
            result.policy_by_workload[wkey] = policy.name
            result.spend_by_policy[policy.name] = (
                result.spend_by_policy.get(policy.name, ZERO) + spend
            )
            if fresh and policy.spec.rightsizing.mode == "Propose":
                history = state.history(wkey)
                for pod in usages:
                    if pod.containers:
                        history.add_pod_usage(pod, start, end)

    if interval.idle != 0 or not entries:
        node_key = WorkloadKey(state.settings.namespace, NODE_KIND, report.node, "v1")
        for window, frac in split_interval(period_kind(node_pol), start, end):
            target = _record(state, node_key, window, node_pol, report, result)
            if target is None:
                continue
            target[1].add_idle(interval.idle, frac)
            touched.add(target[0])

    for akey in touched:
        acc = state.accs[akey]
        acc.mark(report.node, report.boot_id, report.seq, end)
        if akey in cpu_seen:
            used, requested, cost_total = cpu_seen[akey]
            acc.observe_cpu(end, used, requested, cost_total)
    state.dirty |= touched
    global_seen.add(report.seq)
    result.touched = touched
    result.duplicate = held > 0 and not touched  # resent after a restart: all records hold it
    if report.gaps:
        result.dropped, marked = fold_gaps(state, report, [e[3] for e in entries], now)
        result.touched = touched | marked
    return result


# ---- reports a probe dropped on purpose (ProbeReport.gaps) -----------------------------

LEDGER_COMPLETE = "LedgerComplete"
"""Condition type on Allocations (and CostPolicies): False once a probe declared reports of
a node that fed the record dropped from its buffer — those reports will never arrive."""
REPORTS_DROPPED = "ReportsDropped"
_DROPPED_ENTRY = re.compile(r"node (\S+) boot (\S+) seq ([0-9][0-9,\-]*) \(")


@dataclass
class DropPlan:
    """What one declared Gap means for the ledger (computed from the records alone)."""

    node: str
    boot_id: str
    missing: SeqSet
    """The dropped seqs the operator holds in no record: the hole in the ledger."""
    after: dt.datetime | None
    """The hole starts after this (the latest period start among the records holding the
    newest report before it); None when no report before it is known."""
    before: dt.datetime
    """The hole ends before this (the carrying report's start, or the earliest period end
    among the records holding the oldest report after it)."""
    records: list[AccKey] = field(default_factory=list)
    """Records fed by the node's reports of that boot in a period the hole overlaps."""


def _below(seqs: SeqSet, seq: int) -> int | None:
    """The highest seq held below `seq` (a settled floor counts as held)."""
    best = min(seqs.floor, seq - 1) if seqs.floor >= 0 else None
    for lo, hi in seqs.ranges:
        if lo < seq:
            cand = min(hi, seq - 1)
            best = cand if best is None else max(best, cand)
    return best


def _above(seqs: SeqSet, seq: int) -> int | None:
    """The lowest seq held above `seq`."""
    if seqs.floor > seq:
        return seq + 1
    for lo, hi in seqs.ranges:
        if hi > seq:
            return max(lo, seq + 1)
    return None


def missing_seqs(held: SeqSet, lo: int, hi: int) -> SeqSet:
    """The seqs of [lo, hi] that `held` lacks, exactly."""
    out = SeqSet(horizon=REPLAY_HORIZON_REPORTS * 1000)
    start = lo
    if held.floor >= start:
        start = held.floor + 1
    for a, b in held.ranges:
        if b < start:
            continue
        if a > hi:
            break
        if a > start:
            out.add_range(start, min(a - 1, hi))
        start = max(start, b + 1)
    if start <= hi:
        out.add_range(start, hi)
    return out


def count_seqs(seqs: SeqSet) -> int:
    """How many seqs a set of ranges (no floor) names."""
    return sum(b - a + 1 for a, b in seqs.ranges)


def plan_dropped(
    accs: Mapping[AccKey, Accumulator], node: str, boot_id: str, lo: int, hi: int,
    carrying_start: dt.datetime, seen: SeqSet | None = None,
) -> DropPlan:
    """Where a declared gap lies in time and which records it touches.

    Only what the records prove is used: the dropped reports are gone, so their times and
    pods are unknown. The hole lies between the newest report before it and the oldest
    after it that some record holds (bounded by the periods of those records, and by the
    carrying report, which the probe built after dropping them); a record is affected
    when the same node and boot fed it in a period overlapping that span."""
    mark = f"{node}/{boot_id}"
    fed = [(akey, acc, acc.folded[mark]) for akey, acc in accs.items() if mark in acc.folded]
    held = SeqSet(horizon=REPLAY_HORIZON_REPORTS * 1000)
    if seen is not None:
        held.update(seen)
    for _, _, seqs in fed:
        held.update(seqs)
    missing = missing_seqs(held, lo, hi)
    belows = [b for _, _, s in fed if (b := _below(s, lo)) is not None]
    aboves = [a for _, _, s in fed if (a := _above(s, hi)) is not None]
    after = before = None
    if belows:
        edge = max(belows)
        after = max(acc.period.start for _, acc, s in fed if edge in s)
    bounds = [carrying_start]
    if aboves:
        edge = min(aboves)
        bounds += [acc.period.end for _, acc, s in fed if edge in s]
    before = min(bounds)
    if after is not None and after > before:
        after = before
    plan = DropPlan(node, boot_id, missing, after, before)
    if not missing.ranges:
        return plan
    for akey, acc, _ in fed:
        if acc.period.start < before and (after is None or acc.period.end > after):
            plan.records.append(akey)
    return plan


def parse_dropped(message: str) -> dict[str, SeqSet]:
    """The node/boot -> seqs a LedgerComplete message names (status is not trusted input:
    unreadable parts are skipped)."""
    out: dict[str, SeqSet] = {}
    for node, boot, ranges in _DROPPED_ENTRY.findall(message):
        seqs = SeqSet.decode(ranges, horizon=REPLAY_HORIZON_REPORTS * 1000)
        out.setdefault(f"{node}/{boot}", SeqSet(horizon=REPLAY_HORIZON_REPORTS * 1000)).update(
            seqs)
    return out


def dropped_text(dropped: Mapping[str, SeqSet]) -> str:
    """'node n1 boot b seq 100-140 (41 reports)' per node/boot, in the order parse reads."""
    parts = []
    for mark, seqs in sorted(dropped.items()):
        node, _, boot = mark.partition("/")
        parts.append(f"node {node} boot {boot} seq {seqs.encode()} ({count_seqs(seqs)} reports)")
    return "; ".join(parts)


def dropped_in(acc: Accumulator) -> dict[str, SeqSet]:
    """The dropped reports a record's LedgerComplete condition declares (empty if none)."""
    for cond in acc.extra.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == LEDGER_COMPLETE and (
            cond.get("status") == "False"
        ):
            return parse_dropped(str(cond.get("message", "")))
    return {}


def mark_dropped(acc: Accumulator, node: str, boot_id: str, missing: SeqSet,
                 at: dt.datetime) -> bool:
    """Set LedgerComplete=False on a record, naming every hole declared for it so far;
    True when the condition changed."""
    dropped = dropped_in(acc)
    mark = f"{node}/{boot_id}"
    mine = dropped.setdefault(mark, SeqSet(horizon=REPLAY_HORIZON_REPORTS * 1000))
    before = mine.encode()
    mine.update(missing)
    conds = acc.extra.setdefault("conditions", [])
    present = any(c.get("type") == LEDGER_COMPLETE for c in conds)
    if present and mine.encode() == before:
        return False
    message = (
        f"probe reports dropped from the node-probe's full buffer, never to arrive: "
        f"{dropped_text(dropped)}; this record is fed by that node in {acc.record}, so its "
        "usage and cost may lack what those reports held"
    )
    set_condition(conds, LEDGER_COMPLETE, False, REPORTS_DROPPED, message, at)
    return True


def fold_gaps(state: State, report: ProbeReport, policies: list[NamedPolicy | None],
              now: dt.datetime) -> tuple[list[DropPlan], set[AccKey]]:
    """Apply a report's declared gaps: settle the dropped seqs in the node's seen-set (they
    can no longer count as open gaps), and mark the records they touch and the node's own
    record with LedgerComplete=False. Records' `folded` marks are left alone: they count
    the reports folded in (explain-bill), and a final record's never change."""
    plans: list[DropPlan] = []
    changed: set[AccKey] = set()
    for gap in report.gaps:
        lo, hi = sorted((gap.from_seq, gap.to_seq))
        lo = max(lo, 0)
        if hi < 0:
            continue
        boot = gap.boot_id or report.boot_id
        if boot == report.boot_id and hi >= report.seq:
            # the probe drops only reports older than the one carrying the gap: settling
            # seqs not yet sent would make them duplicates, acked and never folded
            log.warning("node %s boot %s: report %d declares seq %d-%d dropped, which it "
                        "cannot have sent yet; gap ignored", report.node, boot, report.seq,
                        lo, hi)
            continue
        seen = state.seen.setdefault(f"{report.node}/{boot}", SeqSet())
        plan = plan_dropped(state.accs, report.node, boot, lo, hi, report.interval_start, seen)
        seen.add_range(lo, hi)
        if not plan.missing.ranges:
            continue
        plans.append(plan)
        targets = list(plan.records)
        node_key = WorkloadKey(state.settings.namespace, NODE_KIND, report.node, "v1")
        nodes = [k for k in state.accs if k[0] == node_key and _overlaps(
            state.accs[k].period, plan.after, plan.before)]
        if not nodes:
            node_pol = _node_policy(state, [
                *policies,
                *(state.policies[n].named for k in plan.records
                  if (n := state.accs[k].policy) in state.policies),
            ])
            last = plan.before - dt.timedelta(microseconds=1)
            acc = state.accumulator(node_key, period_at(period_kind(node_pol), last), node_pol)
            nodes = [(node_key, acc.record)]
        targets += [k for k in nodes if k not in targets]
        for akey in targets:
            if mark_dropped(state.accs[akey], report.node, boot, plan.missing, now):
                changed.add(akey)
        plan.records = targets
    state.dirty |= changed
    return plans, changed


def _overlaps(window: PeriodWindow, after: dt.datetime | None, before: dt.datetime) -> bool:
    return window.start < before and (after is None or window.end > after)
