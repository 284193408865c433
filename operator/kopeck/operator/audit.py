"""The audit sweep and the status loop: what a timer does because events can be lost.

The sweep re-lists pods (a missed delete leaves a pod cached forever), closes records of
workloads that are gone, freezes ended periods, sets Idle conditions, and refreshes
rightsizing proposals. The status loop writes each CostPolicy's status every interval, or
at once when woken (a policy changed, an anomaly was seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from kopeck.accounting.ledger import NODE_KIND, Accumulator
from kopeck.accounting.prices import GIB, HOUR
from kopeck.accounting.summary import money_text
from kopeck.api.allocation import NAMESPACE_TOTAL_KIND
from kopeck.operator.allocations import close_ended
from kopeck.operator.conditions import set_condition
from kopeck.operator.costpolicies import write_status
from kopeck.operator.kube import ApiError, resource_path
from kopeck.operator.pods import forget_pod, purge_tombstones, register_pod
from kopeck.operator.state import State, utcnow
from kopeck.operator.webhook import admission_rates
from kopeck.operator.workloads import KINDS
from kopeck.rightsizing.gates import policy_gate
from kopeck.rightsizing.proposal import Resources, propose
from kopeck.rightsizing.strategies import PercentileSettings, make_strategy

log = logging.getLogger("kopeck.audit")
MAX_LOOKUPS = 50


async def status_loop(state: State, wake: asyncio.Event) -> None:
    """Write every policy's status each interval (when active), or when woken."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=state.settings.status_interval)
        wake.clear()
        if not state.active:
            continue
        now = utcnow()
        idle_conditions(state, now)
        state.dirty_changed()
        for entry in list(state.policies.values()):
            try:
                await asyncio.wait_for(write_status(state, entry, now), timeout=15)
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("status of CostPolicy %s: %s", entry.named.name, exc)
            except Exception:  # a bug must not stop every later status write
                log.exception("status of CostPolicy %s failed", entry.named.name)


async def sweep_loop(state: State, kick: Any, interval: float) -> None:
    """Run the audit sweep forever (when active)."""
    while True:
        await asyncio.sleep(interval)
        if not state.active:
            continue
        try:
            await sweep(state)
            state.dirty_changed()
            kick()
        except (ApiError, OSError) as exc:
            log.warning("audit sweep: %s", exc)
        except Exception:  # keep sweeping whatever one pass hit
            log.exception("audit sweep failed")


async def sweep(state: State) -> None:
    """One audit pass."""
    now = utcnow()
    purge_tombstones(state)
    listing = await state.kube.get("/api/v1/pods")
    live = {}
    for item in listing.get("items") or []:
        uid = (item.get("metadata") or {}).get("uid")
        if uid:
            live[uid] = item
    for uid, info in list(state.pods.items()):
        if uid not in live and info.deleted_at is None:
            forget_pod(state, uid)
            state.counters["missed_deletes"] += 1
    for uid, item in live.items():
        if uid not in state.pods:
            await register_pod(state, item)
    await close_gone_workloads(state, now)
    close_ended(state, now)
    idle_conditions(state, now)
    await proposals(state, now)


def _live_workloads(state: State) -> set[Any]:
    return {p.workload.key for p in state.pods.values() if p.deleted_at is None}


async def close_gone_workloads(state: State, now: dt.datetime) -> None:
    """Close open records of workloads that no longer exist (their delete event was lost)."""
    live = _live_workloads(state)
    lookups = 0
    for akey, acc in list(state.accs.items()):
        key = acc.key
        if acc.closed or key.kind in (NAMESPACE_TOTAL_KIND, NODE_KIND) or key in live:
            continue
        if key.kind not in KINDS or lookups >= MAX_LOOKUPS:
            continue
        lookups += 1
        api, plural = KINDS[key.kind]
        obj = await state.kube.get_or_none(resource_path(api, plural, key.namespace, key.name))
        if obj is None:
            acc.closed = True
            conds = acc.extra.setdefault("conditions", [])
            set_condition(conds, "WorkloadGone", True, "NotFound",
                          f"{key.kind} {key.namespace}/{key.name} no longer exists; record "
                          "closed (reopened if it reports again this period)", now)
            state.dirty.add(akey)


def idle_conditions(state: State, now: dt.datetime) -> None:
    """Idle: CPU below 5% of request for the configured time, with what that time cost."""
    after = dt.timedelta(seconds=state.settings.idle_after)
    for akey, acc in state.accs.items():
        if acc.closed or acc.key.kind in (NAMESPACE_TOTAL_KIND, NODE_KIND):
            continue
        idle_for = acc.idle_for(now)
        conds: list[dict[str, Any]] = acc.extra.setdefault("conditions", [])
        if idle_for >= after:
            minutes = int(idle_for.total_seconds() // 60)
            changed = set_condition(
                conds, "Idle", True, "CpuUnder5PercentOfRequest",
                f"CPU under 5% of its request for {minutes}m; that time cost "
                f"{money_text(acc.low_cpu_cost, acc.currency)}", now,
            )
        elif any(c.get("type") == "Idle" for c in conds):
            changed = set_condition(conds, "Idle", False, "Busy",
                                    "CPU at or above 5% of request", now)
        else:
            continue
        if changed:
            state.dirty.add(akey)


def _current(state: State, acc: Accumulator) -> tuple[dict[str, Resources], int]:
    pods = [p for p in state.pods.values()
            if p.deleted_at is None and p.workload.key == acc.key]
    containers = pods[0].containers if pods else {}
    return containers, max(1, len(pods))


_prometheus: dict[str, Any] = {}


async def _history(state: State, acc: Accumulator, window: str, now: dt.datetime) -> Any:
    """The workload's usage history: Prometheus when configured, else the histograms."""
    url = state.settings.prometheus_url
    if not url:
        return state.histories.get(acc.key), "Histogram"
    cached = _prometheus.get(acc.key.ref)
    refresh = dt.timedelta(seconds=state.settings.prometheus_refresh)
    if cached is not None and now - cached[0] < refresh:
        return cached[1], "Prometheus"
    from kopeck.rightsizing.prometheus import PrometheusHistorySource, pod_regex
    from kopeck.rightsizing.quantity import parse_duration

    if "source" not in _prometheus:
        step = dt.timedelta(seconds=state.settings.prometheus_step)
        _prometheus["source"] = PrometheusHistorySource(url, step=step)
    source = _prometheus["source"]
    try:
        hist = await asyncio.to_thread(
            source.workload_history, acc.key.namespace, pod_regex(acc.key.kind, acc.key.name),
            now=now, window=parse_duration(window),
        )
    except Exception as exc:  # Prometheus down: keep the histograms' answer
        log.warning("Prometheus history for %s: %s", acc.key.ref, exc)
        return state.histories.get(acc.key), "Histogram"
    _prometheus[acc.key.ref] = (now, hist)
    return hist, "Prometheus"


async def proposals(state: State, now: dt.datetime) -> None:
    """Refresh rightsizing proposals of workloads whose policy asks for them."""
    for akey, acc in list(state.accs.items()):
        if acc.closed or acc.policy is None or acc.key.kind in (NAMESPACE_TOTAL_KIND, NODE_KIND):
            continue
        entry = state.policies.get(acc.policy)
        if entry is None or entry.named.spec.rightsizing.mode != "Propose":
            continue
        spec = entry.named.spec
        hist, source = await _history(state, acc, spec.rightsizing.history_window, now)
        if hist is None or not hist.containers:
            continue
        labels = next((p.workload.labels for p in state.pods.values()
                       if p.workload.key == acc.key), {})
        conds: list[dict[str, Any]] = acc.extra.setdefault("conditions", [])
        gate = policy_gate(spec, "Rightsizing", now, acc.key.namespace, labels)
        if gate.suspended:
            if set_condition(conds, "Rightsizable", False, "Suspended", gate.reason, now):
                state.dirty.add(akey)
            continue
        rates = admission_rates(state, entry.named)
        if rates is None:
            continue
        current, replicas = _current(state, acc)
        strategy = make_strategy("percentile", PercentileSettings.from_policy(spec.rightsizing))
        result = propose(
            hist, current, strategy, now, replicas=replicas,
            cpu_core_hour=rates.cpu_core_second * HOUR,
            memory_gib_hour=rates.memory_byte_second * HOUR * GIB,
            source=source,
        )
        if result.proposal is None:
            continue
        acc.extra["proposal"] = result.proposal.to_wire()
        savings = result.proposal.monthly_savings
        set_condition(
            conds, "Rightsizable", savings > Decimal(0),
            "SavingsPossible" if savings > 0 else "WellSized",
            f"about {money_text(savings, acc.currency)}/month to save by the proposal", now,
        )
        state.dirty.add(akey)
