"""CostPolicy: the cache of specs, and the status writer (spent, forecast, conditions, Events).

The figures come from the accumulators through kopeck.accounting.budget; this module only
gathers them and writes them, once per status interval or at once after an anomaly.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import kopf
from pydantic import ValidationError

from kopeck.accounting.budget import (
    forecast,
    newly_crossed,
    remaining,
    run_rate,
    thresholds_reached,
)
from kopeck.accounting.ledger import NODE_KIND
from kopeck.accounting.matching import NamedPolicy, namespace_in_scope
from kopeck.accounting.periods import PeriodKind, PeriodWindow, period_at
from kopeck.accounting.seqs import SeqSet
from kopeck.accounting.summary import micro, money_text
from kopeck.api.allocation import NAMESPACE_TOTAL_KIND
from kopeck.api.common import API_VERSION, GROUP, VERSION
from kopeck.api.costpolicy import CostPolicySpec, Reservation
from kopeck.operator import metrics
from kopeck.operator.conditions import post_event, set_condition
from kopeck.operator.fold import LEDGER_COMPLETE, REPORTS_DROPPED, dropped_in, dropped_text
from kopeck.operator.kube import ApiError, resource_path
from kopeck.operator.state import PolicyEntry, State, period_kind, spawn

log = logging.getLogger("kopeck.costpolicies")
PLURAL = "costpolicies"
SILENT_INTERVALS = 3
not_enforced: dict[str, str] = {}
"""Policy name -> why its webhook was left out of the configuration (set by webhook.py)."""
_logged_errors: set[tuple[str, str]] = set()


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_policy(body: Mapping[str, Any]) -> tuple[CostPolicySpec | None, str | None]:
    """The spec, or why it is invalid (the CRD schema should have refused it already)."""
    try:
        return CostPolicySpec.model_validate(body.get("spec") or {}), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return None, f"spec.{where}: {first.get('msg')}"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    """Keep the policy cache current and wake the status writer."""
    state: State = memo.state
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    if event.get("type") == "DELETED":
        state.policies.pop(name, None)
        return
    remember(state, body)
    kick = getattr(memo, "kick", None)
    if callable(kick):
        kick()


def policy_spent(state: State, name: str, window: PeriodWindow) -> Decimal:
    """Money spent this period by workloads the policy priced."""
    return sum(
        (acc.total for acc in state.accs.values()
         if acc.policy == name and acc.period.name == window.name
         and acc.key.kind not in (NAMESPACE_TOTAL_KIND, NODE_KIND)),
        Decimal(0),
    )


def ledger_holes(
    state: State, name: str, kind: PeriodKind, window: PeriodWindow
) -> tuple[dict[str, dict[str, SeqSet]], int]:
    """Period -> node/boot -> dropped seqs, from the LedgerComplete=False conditions of the
    policy's workload records of this period and the previous one; and how many records.

    The records' conditions are the durable source (checkpointed in their status), so the
    policy's condition survives a restart and clears once both periods are past."""
    previous = period_at(kind, window.start - dt.timedelta(microseconds=1))
    periods = {window.name, previous.name}
    holes: dict[str, dict[str, SeqSet]] = {}
    marked = 0
    for acc in state.accs.values():
        if (acc.policy != name or acc.period.name not in periods
                or acc.key.kind in (NAMESPACE_TOTAL_KIND, NODE_KIND)):
            continue
        dropped = dropped_in(acc)
        if not dropped:
            continue
        marked += 1
        into = holes.setdefault(acc.period.name, {})
        for mark, seqs in dropped.items():
            into.setdefault(mark, SeqSet(horizon=seqs.horizon)).update(seqs)
    return holes, marked


def silent_nodes(state: State, now_s: float) -> list[str]:
    """Nodes that reported before but not in the last three probe intervals."""
    limit = SILENT_INTERVALS * state.settings.probe_interval
    return sorted(n for n, t in state.node_seen.items() if now_s - t > limit)


def compute_status(
    state: State, entry: PolicyEntry, now: dt.datetime, now_s: float
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The new status of one policy and the Events to record (reason, message, type)."""
    policy = entry.named
    spec = policy.spec
    prev = entry.status
    kind = period_kind(policy)
    window = period_at(kind, now)
    currency = spec.pricing.currency
    spent = policy_spent(state, policy.name, window)
    rate = state.spend_rates.get(policy.name)
    if rate is None:
        rate = run_rate(spent, window, now)
    fc = forecast(spent, rate, window, now)
    conditions: list[dict[str, Any]] = [dict(c) for c in prev.get("conditions") or []]
    gen = policy.generation
    events: list[tuple[str, str, str]] = []
    refused = not_enforced.get(policy.name)
    if entry.invalid:
        set_condition(conditions, "Ready", False, "InvalidSpec", entry.invalid, now, gen)
    elif refused:
        if set_condition(conditions, "Ready", False, "NotEnforced", refused, now, gen):
            events.append(("NotEnforced", f"CostPolicy {policy.name}: {refused}", "Warning"))
    else:
        set_condition(conditions, "Ready", True, "Reconciled",
                      "prices and budget in force", now, gen)
    status: dict[str, Any] = {
        "period": window.name,
        "periodStart": _ts(window.start),
        "periodEnd": _ts(window.end),
        "currency": currency,
        "spent": str(micro(spent)),
        "forecast": str(micro(fc)),
        "matchedNamespaces": sorted(
            ns for ns, labels in state.namespaces.items() if namespace_in_scope(policy, labels)
        ),
        "observedGeneration": gen,
    }
    announced = state.announced.setdefault((policy.name, window.name), set())
    if prev.get("period") == window.name:
        announced.update(prev.get("thresholdsCrossed") or [])
    crossed_prev = sorted(announced)
    budget = spec.budget
    if budget is not None:
        amount = budget.amount
        status["remaining"] = str(micro(remaining(amount, spent)))
        reached = thresholds_reached(amount, spent, budget.thresholds)
        for t in newly_crossed(reached, crossed_prev):
            announced.add(t)
            events.append((
                "BudgetThreshold",
                f"CostPolicy {policy.name}: spent {money_text(spent, currency)} of "
                f"{money_text(amount, currency)} ({t}% threshold) in {window.name}",
                "Warning" if t >= 80 else "Normal",
            ))
        status["thresholdsCrossed"] = sorted(set(crossed_prev) | set(reached))
        warn_at = [t for t in budget.thresholds if t < 100]
        warned = bool(warn_at) and spent * 100 >= amount * min(warn_at)
        exceeded = spent >= amount
        forecast_over = fc > amount
        set_condition(
            conditions, "BudgetWarning", warned or forecast_over,
            "ThresholdCrossed" if warned else "ForecastOverBudget" if forecast_over else "WithinBudget",
            f"spent {money_text(spent, currency)}, forecast {money_text(fc, currency)} "
            f"of {money_text(amount, currency)}", now, gen,
        )
        set_condition(
            conditions, "BudgetExceeded", exceeded,
            "SpentOverBudget" if exceeded else "WithinBudget",
            f"spent {money_text(spent, currency)} of {money_text(amount, currency)} "
            f"in {window.name}", now, gen,
        )
        metrics.BUDGET.labels(policy.name, currency).set(float(amount))
    anomalies = state.anomaly.current(policy.name) if state.anomaly is not None else []
    set_condition(
        conditions, "AnomalyDetected", bool(anomalies),
        "SpendRateAnomaly" if anomalies else "NoAnomaly",
        "; ".join(anomalies)[:1000] if anomalies else "spend rates within their baselines",
        now, gen,
    )
    silent = silent_nodes(state, now_s)
    told = state.silent_announced.setdefault(policy.name, set())
    told &= set(silent)  # a node that reports again may be announced again later
    for node in silent:
        if node not in told:
            told.add(node)
            events.append((
                "ProbeSilent",
                f"node {node}: no probe report for {SILENT_INTERVALS} intervals "
                f"({SILENT_INTERVALS * state.settings.probe_interval:g}s); its usage is not "
                "being billed — check the kopeck node-probe DaemonSet on it",
                "Warning",
            ))
    status["silentNodes"] = silent
    set_condition(
        conditions, "ProbesReporting", not silent,
        "ProbesSilent" if silent else "AllReporting",
        f"silent: {', '.join(silent)}" if silent else "every known node's probe reports",
        now, gen,
    )
    holes, marked = ledger_holes(state, policy.name, kind, window)
    if holes:
        text = "; ".join(f"in {period}: {dropped_text(d)}" for period, d in sorted(holes.items()))
        message = (f"probe reports dropped from a node-probe's full buffer, never to arrive, "
                   f"{text}; the bill of this policy's workloads that ran there lacks that "
                   f"usage ({marked} Allocations marked {LEDGER_COMPLETE}=False)")[:2000]
        if set_condition(conditions, LEDGER_COMPLETE, False, REPORTS_DROPPED, message, now, gen):
            events.append((REPORTS_DROPPED, f"CostPolicy {policy.name}: {message}", "Warning"))
    else:
        set_condition(conditions, LEDGER_COMPLETE, True, "AllReportsFolded",
                      "no node-probe declared dropped reports for this policy's workloads in "
                      "this period or the previous one", now, gen)
    status["conditions"] = conditions
    metrics.SPENT.labels(policy.name, currency).set(float(spent))
    metrics.FORECAST.labels(policy.name, currency).set(float(fc))
    return status, events


def _failed_status(entry: PolicyEntry, exc: Exception, now: dt.datetime) -> dict[str, Any]:
    """Ready=False naming the error; the traceback is logged once per distinct error."""
    name = entry.named.name
    text = f"{type(exc).__name__}: {exc}"[:900]
    if (name, text) not in _logged_errors:
        _logged_errors.add((name, text))
        log.error("status of CostPolicy %s cannot be computed", name, exc_info=exc)
    conditions = [dict(c) for c in entry.status.get("conditions") or [] if isinstance(c, dict)]
    set_condition(conditions, "Ready", False, "StatusError",
                  f"status cannot be computed: {text}; the operator log has details",
                  now, entry.named.generation)
    return {"conditions": conditions, "observedGeneration": entry.named.generation}


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if k not in ("reservations", "reserved")}
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions") or []
    ]
    return out


async def write_status(state: State, entry: PolicyEntry, now: dt.datetime) -> None:
    """Compute and (when changed) write one policy's status; record its Events."""
    try:
        status, events = compute_status(state, entry, now, time.time())
    except Exception as exc:  # one policy's bug must not stop the others, nor flood the log
        status, events = _failed_status(entry, exc, now), []
    reservations = prune_reservations(state, entry, now)
    if reservations is None and _comparable(status) == _comparable(entry.status) and not events:
        return
    path = resource_path(API_VERSION, PLURAL, None, entry.named.name, "status")
    body: dict[str, Any] = {"status": status}
    if reservations is not None:
        current = entry.resource_version
        body["status"]["reservations"] = reservations
        body["status"]["reserved"] = str(
            sum((Decimal(r["amount"]) for r in reservations), Decimal(0))
        )
        if current:
            body["metadata"] = {"resourceVersion": current}
    try:
        result = await state.kube.merge_patch(path, body)
    except ApiError as exc:
        if exc.conflict:  # the webhook reserved meanwhile: prune next time
            body.pop("metadata", None)
            body["status"].pop("reservations", None)
            body["status"].pop("reserved", None)
            result = await state.kube.merge_patch(path, body)
        elif exc.not_found:
            return
        else:
            raise
    entry.status = dict(result.get("status") or {})
    entry.resource_version = (result.get("metadata") or {}).get("resourceVersion")
    involved = {"apiVersion": API_VERSION, "kind": "CostPolicy", "name": entry.named.name,
                "uid": (result.get("metadata") or {}).get("uid")}
    for reason, message, type_ in events:
        spawn(post_event(state.kube, involved, reason, message, type_=type_, now=now))


def prune_reservations(
    state: State, entry: PolicyEntry, now: dt.datetime
) -> list[dict[str, Any]] | None:
    """Reservations still needed, or None when nothing is to be released.

    A reservation ends when it expires, or when the pods it was made for report: as many
    of the workload's pods as the admitted changes created (`newPods`) first reported after
    the reservation was made (`since`), so their own usage carries the projection in `spent`
    and the forecast. Not at the workload's first report: after a scale from 1 to 20 the one
    old pod reports at once, and a second scale-up must still be judged against the first.
    """
    current = list(entry.status.get("reservations") or [])
    if not current:
        return None
    window = period_at(period_kind(entry.named), now)
    reporting = {
        acc.key.ref for acc in state.accs.values()
        if acc.period.name == window.name and acc.last_report is not None
    }
    pods_of = {key.ref: pods for key, pods in state.first_reported.items()}
    keep = []
    for r in current:
        try:
            res = Reservation.model_validate(r)
        except ValidationError:
            continue
        if res.expires <= now:
            continue
        if res.new_pods is None or res.since is None:  # written by an older operator
            if res.key in reporting:
                continue
        elif res.new_pods <= sum(1 for first in pods_of.get(res.key, {}).values()
                                 if first > res.since):
            continue
        keep.append(r)
    return keep if len(keep) != len(current) else None


def remember(state: State, body: Mapping[str, Any]) -> None:
    """Put one CostPolicy object into the cache (from a watch event or a listing)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    spec, invalid = parse_policy(body)
    old = state.policies.get(name)
    if spec is None:
        if old is None:
            spec = CostPolicySpec.model_validate(
                {"pricing": {"rateCard": {"cpuCoreHour": 0, "memoryGiBHour": 0}}}
            )
        else:
            spec = old.named.spec
    state.policies[name] = PolicyEntry(
        NamedPolicy(name, spec, int(meta.get("generation") or 0)),
        dict(body.get("status") or {}), invalid,
        str(meta.get("resourceVersion") or "") or None,
    )
