"""The operator's in-memory state: caches fed by watches, accumulators, de-dup marks, counters.

One `State` lives in kopf's memo and is shared by the handlers, the ingest server, the
checkpointer, the status loop and the webhook. asyncio runs one coroutine at a time, so
synchronous sections (a whole report fold, a whole status computation) are atomic.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import ADJUSTMENT_SUFFIX, Accumulator, WorkloadKey
from kopeck.accounting.matching import NamedPolicy, choose_policy
from kopeck.accounting.periods import PeriodKind, PeriodWindow
from kopeck.accounting.prices import NodeFacts
from kopeck.accounting.seqs import SeqSet
from kopeck.operator.kube import Kube
from kopeck.operator.settings import Settings
from kopeck.operator.workloads import OwnerResolver, Workload
from kopeck.rightsizing.history import WorkloadHistory
from kopeck.rightsizing.proposal import Resources

AccKey = tuple[WorkloadKey, str]
"""(workload, period name)."""


@dataclass
class PodInfo:
    """What the operator knows of a pod: where it runs, what it asked for, whose it is."""

    uid: str
    namespace: str
    name: str
    node: str | None
    workload: Workload
    shape: PodShape
    containers: dict[str, Resources] = field(default_factory=dict)
    storage_bytes: Decimal = Decimal(0)
    claims: tuple[str, ...] = ()
    """Names of the PersistentVolumeClaims it mounts (for pod_pvc_allocation)."""
    phase: str = "Pending"
    deleted_at: float | None = None


@dataclass
class PolicyEntry:
    """A CostPolicy as last seen: parsed spec, raw status, generation."""

    named: NamedPolicy
    status: dict[str, Any] = field(default_factory=dict)
    invalid: str | None = None
    resource_version: str | None = None


@dataclass
class State:
    """Everything shared inside one operator process."""

    settings: Settings
    kube: Kube
    resolver: OwnerResolver
    policies: dict[str, PolicyEntry] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: dict[str, PodInfo] = field(default_factory=dict)
    pod_uids: dict[tuple[str, str], str] = field(default_factory=dict)
    nodes: dict[str, NodeFacts] = field(default_factory=dict)
    node_seen: dict[str, float] = field(default_factory=dict)
    accs: dict[AccKey, Accumulator] = field(default_factory=dict)
    dirty: set[AccKey] = field(default_factory=set)
    first_reported: dict[WorkloadKey, dict[str, dt.datetime]] = field(default_factory=dict)
    """Workload -> pod uid -> the end of the first report that carried the pod: a
    reservation ends once the pods it was made for report (prune_reservations)."""
    ledger_versions: dict[AccKey, str] = field(default_factory=dict)
    """Record -> the resourceVersion of its Allocation as last read or written here: every
    ledger write is conditional on it, so a replica with a stale copy (an old leader still
    flushing) cannot overwrite what another wrote."""
    seen: dict[str, SeqSet] = field(default_factory=dict)
    histories: dict[WorkloadKey, WorkloadHistory] = field(default_factory=dict)
    spend_rates: dict[str, Decimal] = field(default_factory=dict)
    """Policy name -> current spend per second (trailing window), for forecasts."""
    spend_log: dict[str, deque[tuple[float, Decimal]]] = field(default_factory=dict)
    """Policy name -> (report end, spend) over the trailing window."""
    announced: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    """(policy, period) -> thresholds already announced (status may lag behind a watch)."""
    silent_announced: dict[str, set[str]] = field(default_factory=dict)
    """Policy -> nodes already announced as silent."""
    counters: Counter[str] = field(default_factory=Counter)
    anomaly: Any = None
    webhook_ssl: Any = None
    """The webhook server's SSL context (for handshake counts in /metrics)."""
    flush_soon: Any = None
    """Wakes the checkpointer (set at start) for changes made outside ingest."""
    ready: bool = False
    """True once the caches were filled by listing (see allocations.prime)."""
    active: bool = True
    """False while another replica holds the lead (kopf peering)."""
    started: float = field(default_factory=time.time)

    def dirty_changed(self) -> None:
        """Ask for a checkpoint of records changed by the sweep or the status loop."""
        if self.dirty and callable(self.flush_soon):
            self.flush_soon()

    def valid_policies(self) -> list[NamedPolicy]:
        """Policies whose spec parsed."""
        return [p.named for p in self.policies.values() if p.invalid is None]

    def policy_for(self, namespace: str, workload_labels: Mapping[str, str]) -> NamedPolicy | None:
        """The CostPolicy that governs a workload in a namespace."""
        return choose_policy(
            self.valid_policies(), self.namespaces.get(namespace, {}), workload_labels
        )

    def accumulator(
        self, key: WorkloadKey, window: PeriodWindow, policy: NamedPolicy | None,
        adjustment: bool = False,
    ) -> Accumulator:
        """The accumulator of a workload in a period (or of the period's late usage: its
        adjustment record), created empty on first use."""
        akey = (key, window.name + (ADJUSTMENT_SUFFIX if adjustment else ""))
        acc = self.accs.get(akey)
        if acc is None:
            acc = Accumulator(
                key=key,
                period=window,
                currency=policy.spec.pricing.currency if policy else "USD",
                policy=policy.name if policy else None,
                adjustment=adjustment,
            )
            self.accs[akey] = acc
        elif policy is not None and acc.policy is None:
            acc.policy = policy.name
            acc.currency = policy.spec.pricing.currency
        return acc

    def history(self, key: WorkloadKey) -> WorkloadHistory:
        """Rightsizing history of a workload (restored lazily from its Allocation)."""
        hist = self.histories.get(key)
        if hist is None:
            hist = WorkloadHistory()
            self.histories[key] = hist
        return hist


def period_kind(policy: NamedPolicy | None) -> PeriodKind:
    """A workload's billing period follows its policy's budget period (Monthly without one)."""
    if policy is not None and policy.spec.budget is not None:
        return policy.spec.budget.period
    return "Monthly"


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a fire-and-forget coroutine (Events), keeping a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def utcnow() -> dt.datetime:
    """The wall clock in UTC (one place, so tests can reason about it)."""
    return dt.datetime.now(dt.UTC)
