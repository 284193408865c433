"""Per-workload accumulators: what one Allocation holds for one period, folded from reports.

An accumulator is the in-memory twin of an Allocation's status. `to_status` and
`from_status` convert exactly (money as micro-unit strings), so the operator can checkpoint
and restore it; folding is plain arithmetic so a recorded report gives a reproducible record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kopeck.accounting.cost import QUANTUM, PodCost, PodInterval, money
from kopeck.accounting.periods import PeriodWindow
from kopeck.accounting.seqs import SeqSet
from kopeck.accounting.summary import (
    bytes_text,
    core_hours_text,
    gib_hours_text,
    micro,
    money_text,
    percent_text,
)
from kopeck.api.allocation import (
    NAMESPACE_TOTAL_KIND,
    AllocationStatus,
    Cost,
    Efficiency,
    LastReport,
    NetworkBytes,
    Requests,
    Summary,
    Usage,
)

ZERO = Decimal(0)
NODE_KIND = "Node"
IDLE_CPU_FRACTION = Decimal("0.05")
_CLASS_FIELDS = {
    "intraZone": "intra_zone",
    "crossZone": "cross_zone",
    "crossRegion": "cross_region",
    "internet": "internet",
    "unclassified": "unclassified",
}
_NAME_SAFE = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True, order=True)
class WorkloadKey:
    """The workload an Allocation is for; kind Namespace is the namespace total."""

    namespace: str
    kind: str
    name: str
    api_version: str = "v1"

    @property
    def ref(self) -> str:
        """namespace/kind/name, the key used in reservations and logs."""
        return f"{self.namespace}/{self.kind}/{self.name}"


def namespace_total_key(namespace: str) -> WorkloadKey:
    """The key of a namespace's total record."""
    return WorkloadKey(namespace, NAMESPACE_TOTAL_KIND, namespace, "v1")


ADJUSTMENT_SUFFIX = "-adjustment"
"""Appended to a period's name for the record of its late usage (record names, keys)."""


def allocation_name(key: WorkloadKey, period_name: str) -> str:
    """Predictable object names: `<kind>-<name>-<period>`, `namespace-total-<period>`.

    Lowercased and made DNS-safe; names too long for Kubernetes keep a hash suffix so they
    stay unique and stable.
    """
    if key.kind == NAMESPACE_TOTAL_KIND:
        base = f"namespace-total-{period_name}"
    else:
        base = f"{key.kind}-{key.name}-{period_name}"
    name = _NAME_SAFE.sub("-", base.lower()).strip("-.")
    if len(name) > 253:
        digest = hashlib.sha256(base.encode()).hexdigest()[:10]
        name = f"{name[:240].rstrip('-.')}-{digest}"
    return name


@dataclass
class Accumulator:
    """Usage, requests and money of one workload in one period, with the reports it holds."""

    key: WorkloadKey
    period: PeriodWindow
    currency: str = "USD"
    policy: str | None = None
    cpu_core_seconds: Decimal = ZERO
    normalized_cpu_core_seconds: Decimal = ZERO
    memory_byte_seconds: Decimal = ZERO
    memory_peak_bytes: int = 0
    io_bytes: int = 0
    storage_byte_seconds: Decimal = ZERO
    network_bytes: dict[str, int] = field(default_factory=dict)
    requested_cpu_core_seconds: Decimal = ZERO
    requested_memory_byte_seconds: Decimal = ZERO
    requested_gpu_seconds: Decimal = ZERO
    cost_cpu: Decimal = ZERO
    cost_memory: Decimal = ZERO
    cost_gpu: Decimal = ZERO
    cost_network: Decimal = ZERO
    cost_storage: Decimal = ZERO
    cost_idle: Decimal = ZERO
    pods: set[str] = field(default_factory=set)
    restored_pods: int = 0
    folded: dict[str, SeqSet] = field(default_factory=dict)
    last_report: tuple[str, int, dt.datetime] | None = None
    closed: bool = False
    final: bool = False
    """The period is over and its grace passed: this record never changes again."""
    adjustment: bool = False
    """Late usage of a final period, recorded apart from it (its adjustment record)."""
    low_cpu_since: dt.datetime | None = None
    low_cpu_cost: Decimal = ZERO
    extra: dict[str, Any] = field(default_factory=dict)
    """Status parts other components own (proposal, histograms, conditions), kept as is."""

    @property
    def record(self) -> str:
        """The record's part of its key and object name: the period's name, with
        ADJUSTMENT_SUFFIX for an adjustment record."""
        return self.period.name + (ADJUSTMENT_SUFFIX if self.adjustment else "")

    @property
    def total(self) -> Decimal:
        """All money charged to this record."""
        return (
            self.cost_cpu + self.cost_memory + self.cost_gpu + self.cost_network
            + self.cost_storage + self.cost_idle
        )

    def holds(self, node: str, boot_id: str, seq: int) -> bool:
        """True when that report is already folded into this record."""
        marks = self.folded.get(f"{node}/{boot_id}")
        return marks is not None and seq in marks

    def mark(self, node: str, boot_id: str, seq: int, time: dt.datetime) -> None:
        """Remember that the report is folded in (call once per report, after `add`)."""
        self.folded.setdefault(f"{node}/{boot_id}", SeqSet()).add(seq)
        if self.last_report is None or time >= self.last_report[2]:
            self.last_report = (node, seq, time)

    def add(
        self,
        pod: PodInterval,
        cost: PodCost,
        *,
        fraction: Decimal = Decimal(1),
        cpu_factor: Decimal = Decimal(1),
    ) -> None:
        """Fold one pod-interval (or the `fraction` of it inside this period)."""
        f = fraction
        self.cpu_core_seconds += pod.cpu_core_seconds * f
        self.normalized_cpu_core_seconds += pod.cpu_core_seconds * cpu_factor * f
        self.memory_byte_seconds += pod.memory_byte_seconds * f
        self.memory_peak_bytes = max(self.memory_peak_bytes, pod.memory_peak_bytes)
        self.io_bytes += int(pod.io_bytes * f)
        self.storage_byte_seconds += pod.storage_bytes * pod.seconds * f
        for cls, n in pod.network_bytes.items():
            self.network_bytes[cls] = self.network_bytes.get(cls, 0) + int(n * f)
        self.requested_cpu_core_seconds += pod.cpu_request_cores * pod.seconds * f
        self.requested_memory_byte_seconds += pod.memory_request_bytes * pod.seconds * f
        self.requested_gpu_seconds += pod.gpus * pod.seconds * f
        self.cost_cpu += money(cost.cpu * f)
        self.cost_memory += money(cost.memory * f)
        self.cost_gpu += money(cost.gpu * f)
        self.cost_network += money(cost.network * f)
        self.cost_storage += money(cost.storage * f)
        self.cost_idle += money(cost.idle * f)
        self.pods.add(pod.uid)

    def add_group(
        self,
        pods: list[PodInterval],
        costs: list[PodCost],
        *,
        fraction: Decimal = Decimal(1),
        cpu_factor: Decimal = Decimal(1),
    ) -> None:
        """Fold many pod-intervals of one report at once: sums first, one rounding per
        category (the same result as `add` per pod when the whole interval is inside)."""
        f = fraction
        cpu = mem = storage_s = req_cpu = req_mem = req_gpu = ZERO
        io = 0
        peak = self.memory_peak_bytes
        net: dict[str, int] = {}
        for pod in pods:
            cpu += pod.cpu_core_seconds
            mem += pod.memory_byte_seconds
            peak = max(peak, pod.memory_peak_bytes)
            io += pod.io_bytes
            storage_s += pod.storage_bytes * pod.seconds
            req_cpu += pod.cpu_request_cores * pod.seconds
            req_mem += pod.memory_request_bytes * pod.seconds
            req_gpu += pod.gpus * pod.seconds
            for cls, n in pod.network_bytes.items():
                net[cls] = net.get(cls, 0) + n
            self.pods.add(pod.uid)
        self.cpu_core_seconds += cpu * f
        self.normalized_cpu_core_seconds += cpu * cpu_factor * f
        self.memory_byte_seconds += mem * f
        self.memory_peak_bytes = peak
        self.io_bytes += int(io * f)
        self.storage_byte_seconds += storage_s * f
        for cls, n in net.items():
            self.network_bytes[cls] = self.network_bytes.get(cls, 0) + int(n * f)
        self.requested_cpu_core_seconds += req_cpu * f
        self.requested_memory_byte_seconds += req_mem * f
        self.requested_gpu_seconds += req_gpu * f
        self.cost_cpu += money(sum((c.cpu for c in costs), ZERO) * f)
        self.cost_memory += money(sum((c.memory for c in costs), ZERO) * f)
        self.cost_gpu += money(sum((c.gpu for c in costs), ZERO) * f)
        self.cost_network += money(sum((c.network for c in costs), ZERO) * f)
        self.cost_storage += money(sum((c.storage for c in costs), ZERO) * f)
        self.cost_idle += money(sum((c.idle for c in costs), ZERO) * f)

    def add_idle(self, amount: Decimal, fraction: Decimal = Decimal(1)) -> None:
        """Fold a node's unallocated cost (node records only)."""
        self.cost_idle += money(amount * fraction)

    def observe_cpu(
        self, end: dt.datetime, used: Decimal, requested: Decimal, cost: Decimal
    ) -> None:
        """Track how long the workload has used under 5% of its CPU request, and its cost."""
        if requested > 0 and used < requested * IDLE_CPU_FRACTION:
            if self.low_cpu_since is None:
                self.low_cpu_since = end
                self.low_cpu_cost = ZERO
            self.low_cpu_cost += cost
        else:
            self.low_cpu_since = None
            self.low_cpu_cost = ZERO

    def idle_for(self, now: dt.datetime) -> dt.timedelta:
        """How long CPU has stayed under 5% of request (zero when it has not)."""
        return now - self.low_cpu_since if self.low_cpu_since is not None else dt.timedelta(0)

    @property
    def pods_seen(self) -> int:
        """Distinct pods charged (a restart keeps the checkpointed count as a floor)."""
        return max(self.restored_pods, len(self.pods))

    def efficiency(self) -> Efficiency:
        """Usage over request for CPU and memory, and their cost-weighted mean."""
        cpu = (
            float(self.cpu_core_seconds / self.requested_cpu_core_seconds)
            if self.requested_cpu_core_seconds > 0 else None
        )
        mem = (
            float(self.memory_byte_seconds / self.requested_memory_byte_seconds)
            if self.requested_memory_byte_seconds > 0 else None
        )
        weights = [(cpu, self.cost_cpu), (mem, self.cost_memory)]
        num = sum((Decimal(repr(e)) * w for e, w in weights if e is not None), ZERO)
        den = sum((w for e, w in weights if e is not None), ZERO)
        overall = float(num / den) if den > 0 else (cpu if cpu is not None else mem)
        return Efficiency(cpu=cpu, memory=mem, overall=overall)


def to_status(acc: Accumulator) -> AllocationStatus:
    """The Allocation status that checkpoints this accumulator."""
    net = NetworkBytes(**{_CLASS_FIELDS[c]: n for c, n in acc.network_bytes.items()
                          if c in _CLASS_FIELDS})
    eff = acc.efficiency()
    total = acc.total.quantize(QUANTUM)
    last = (
        LastReport(node=acc.last_report[0], seq=acc.last_report[1], time=acc.last_report[2])
        if acc.last_report else None
    )
    status = AllocationStatus(
        phase="Closed" if acc.closed else "Open",
        final=acc.final,
        usage=Usage(
            cpu_core_seconds=float(acc.cpu_core_seconds),
            normalized_cpu_core_seconds=float(acc.normalized_cpu_core_seconds),
            memory_byte_seconds=float(acc.memory_byte_seconds),
            memory_peak_bytes=acc.memory_peak_bytes,
            network_bytes=net,
            io_bytes=acc.io_bytes,
            storage_byte_seconds=float(acc.storage_byte_seconds),
        ),
        requests=Requests(
            cpu_core_seconds=float(acc.requested_cpu_core_seconds),
            memory_byte_seconds=float(acc.requested_memory_byte_seconds),
            gpu_seconds=float(acc.requested_gpu_seconds),
        ),
        cost=Cost(
            currency=acc.currency,
            cpu=acc.cost_cpu.quantize(QUANTUM),
            memory=acc.cost_memory.quantize(QUANTUM),
            gpu=acc.cost_gpu.quantize(QUANTUM),
            network=acc.cost_network.quantize(QUANTUM),
            storage=acc.cost_storage.quantize(QUANTUM),
            idle=acc.cost_idle.quantize(QUANTUM),
            total=total,
        ),
        efficiency=eff,
        pods_seen=acc.pods_seen,
        summary=Summary(
            cpu=core_hours_text(float(acc.cpu_core_seconds)),
            memory=gib_hours_text(float(acc.memory_byte_seconds)),
            network=bytes_text(sum(acc.network_bytes.values())),
            cost=money_text(micro(total), acc.currency),
            efficiency=percent_text(eff.overall),
        ),
        last_report=last,
        folded={k: v.encode() for k, v in sorted(acc.folded.items())} or None,
    )
    return status


def status_patch(acc: Accumulator) -> dict[str, Any]:
    """The JSON status to write: the checkpoint plus the parts other components own.

    Money is written exactly (1e-12, plain digits) so that a restart restores the very
    same sums; Decimal's own str() would use exponent notation for tiny amounts.
    """
    status = to_status(acc)
    body = status.to_wire()
    body["cost"].update({
        name: format(getattr(status.cost, name), "f")
        for name in ("cpu", "memory", "gpu", "network", "storage", "idle", "total")
    })
    body.update(acc.extra)
    return body


def _dec(value: Any) -> Decimal:
    try:
        out = Decimal(str(value))
    except ArithmeticError:
        return ZERO
    return out if out.is_finite() else ZERO


_OWN_FIELDS = {
    "phase", "final", "usage", "requests", "cost", "efficiency", "podsSeen", "summary",
    "lastReport", "folded",
}


def from_status(
    key: WorkloadKey, period: PeriodWindow, status: Mapping[str, Any] | None,
    policy: str | None = None,
) -> Accumulator:
    """Restore an accumulator from a checkpointed Allocation status (tolerating junk)."""
    acc = Accumulator(key=key, period=period, policy=policy)
    if not status:
        return acc
    st = AllocationStatus.model_validate(status)
    acc.closed = st.phase == "Closed"
    acc.final = st.final
    acc.currency = st.cost.currency
    u, r, c = st.usage, st.requests, st.cost
    acc.cpu_core_seconds = _dec(u.cpu_core_seconds)
    acc.normalized_cpu_core_seconds = _dec(u.normalized_cpu_core_seconds)
    acc.memory_byte_seconds = _dec(u.memory_byte_seconds)
    acc.memory_peak_bytes = u.memory_peak_bytes
    acc.io_bytes = u.io_bytes
    acc.storage_byte_seconds = _dec(u.storage_byte_seconds)
    acc.network_bytes = {
        cls: getattr(u.network_bytes, attr)
        for cls, attr in _CLASS_FIELDS.items() if getattr(u.network_bytes, attr)
    }
    acc.requested_cpu_core_seconds = _dec(r.cpu_core_seconds)
    acc.requested_memory_byte_seconds = _dec(r.memory_byte_seconds)
    acc.requested_gpu_seconds = _dec(r.gpu_seconds)
    acc.cost_cpu, acc.cost_memory, acc.cost_gpu = c.cpu, c.memory, c.gpu
    acc.cost_network, acc.cost_storage, acc.cost_idle = c.network, c.storage, c.idle
    acc.restored_pods = st.pods_seen
    acc.folded = {k: SeqSet.decode(v) for k, v in (st.folded or {}).items()}
    if st.last_report is not None:
        acc.last_report = (st.last_report.node, st.last_report.seq, st.last_report.time)
    acc.extra = {k: v for k, v in status.items() if k not in _OWN_FIELDS}
    return acc
