"""Spend-rate anomalies within seconds: each report's spend goes to the detectors at once.

The detectors (kopeck.anomaly) are pure; this module keeps one SpendMonitor per policy,
turns detections into conditions on Allocations and CostPolicies, Events and metrics.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kopeck.accounting.ledger import WorkloadKey
from kopeck.accounting.matching import NamedPolicy
from kopeck.accounting.periods import period_at
from kopeck.anomaly import DetectorSettings, SpendMonitor, even_rate_per_hour, make_detector
from kopeck.anomaly.detectors import Anomaly

HOUR = Decimal(3600)


@dataclass
class Hit:
    """One anomalous point to announce."""

    policy: str
    scope: str
    """"namespace" or "workload"."""
    key: str
    workload: WorkloadKey | None
    namespace: str
    anomaly: Anomaly


class AnomalyBook:
    """Per-policy monitors and the currently anomalous series."""

    def __init__(self) -> None:
        self.monitors: dict[str, tuple[Any, SpendMonitor]] = {}
        self.active: dict[str, dict[str, tuple[dt.datetime, str]]] = {}
        """policy -> series key -> (when, message) while anomalous."""

    def monitor(self, policy: NamedPolicy) -> SpendMonitor:
        """The policy's monitor, rebuilt when its anomaly settings change."""
        spec = policy.spec.anomaly
        settings = DetectorSettings(
            sensitivity=spec.sensitivity,
            warm_up_samples=spec.warm_up_samples,
            static_threshold_multiplier=spec.static_threshold_multiplier,
        )
        found = self.monitors.get(policy.name)
        if found is None or found[0] != settings:
            old = found[1].series if found else {}
            found = (settings, SpendMonitor(make_detector("ewma-mad", settings), dict(old)))
            self.monitors[policy.name] = found
        return found[1]

    def observe(
        self,
        policy: NamedPolicy,
        at: dt.datetime,
        seconds: Decimal,
        by_workload: dict[WorkloadKey, Decimal],
    ) -> list[Hit]:
        """Feed one report's spend (per workload of this policy and per namespace)."""
        if not policy.spec.anomaly.enabled or seconds <= 0:
            return []
        monitor = self.monitor(policy)
        budget = policy.spec.budget
        window = period_at(budget.period if budget else "Monthly", at)
        even = even_rate_per_hour(budget.amount, window.start, window.end) if budget else None
        currency = policy.spec.pricing.currency
        hits: list[Hit] = []
        by_ns: dict[str, Decimal] = {}
        active = self.active.setdefault(policy.name, {})
        series: list[tuple[str, str, WorkloadKey | None, str, Decimal]] = []
        for workload, spend in sorted(by_workload.items()):
            by_ns[workload.namespace] = by_ns.get(workload.namespace, Decimal(0)) + spend
            series.append(("workload", f"wl/{workload.ref}", workload,
                           f"{workload.kind.lower()} {workload.namespace}/{workload.name}", spend))
        for ns, spend in sorted(by_ns.items()):
            series.append(("namespace", f"ns/{ns}", None, f"namespace {ns}", spend))
        for scope, key, wk, subject, spend in series:
            rate = spend * HOUR / seconds
            detection = monitor.observe_rate(
                key, subject, at, rate, budget_rate_per_hour=even, currency=currency
            )
            if detection.anomaly is not None:
                active[key] = (at, detection.anomaly.message)
                ns = wk.namespace if wk else key[3:]
                hits.append(Hit(policy.name, scope, key, wk, ns, detection.anomaly))
            else:
                active.pop(key, None)
        return hits

    def current(self, policy: str) -> list[str]:
        """Messages of the series anomalous now for a policy."""
        return [msg for _, msg in sorted(self.active.get(policy, {}).values())]
