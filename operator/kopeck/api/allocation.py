"""Allocation: the attributed usage and cost of one workload (or a namespace) in one period.

Written by the operator, read by users with ``kubectl get allocations -A``. Closed periods
stay as immutable ledger records labelled ``cost.kopeck.io/period``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import ConfigDict, Field

from kopeck.api.common import (
    Condition,
    KopeckModel,
    MoneyString,
    ObjectRef,
    StatusModel,
    Timestamp,
)

PERIOD_LABEL = "cost.kopeck.io/period"
WORKLOAD_KIND_LABEL = "cost.kopeck.io/workload-kind"
ADJUSTMENT_LABEL = "cost.kopeck.io/adjustment"
"""Set to "true" on adjustment records (late usage of a final period)."""
NAMESPACE_TOTAL_KIND = "Namespace"


class Period(KopeckModel):
    """A billing period: calendar day, ISO week or calendar month, in UTC."""

    name: str = Field(min_length=1)
    """Short name, e.g. 2026-11, 2026-W47 or 2026-11-23."""
    start: Timestamp
    """Start of the period (inclusive)."""
    end: Timestamp
    """End of the period (exclusive)."""


class PolicyRef(KopeckModel):
    """The CostPolicy whose prices and budget apply."""

    name: str
    """Name of the cluster-scoped CostPolicy."""


class AllocationSpec(KopeckModel):
    """Which workload and period this record is for."""

    workload_ref: ObjectRef
    """The workload (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod) or Namespace."""
    period: Period
    """The billing period."""
    policy_ref: PolicyRef | None = None
    """The policy that priced it."""
    adjustment: bool = False
    """True for the adjustment record of a final period: usage reported after the period's
    record became final (late reports), priced apart so the final record never changes."""


class NetworkBytes(StatusModel):
    """Bytes by traffic class, both directions."""

    intra_zone: int = 0
    """Bytes within the node's zone (including pod-to-pod on one node)."""
    cross_zone: int = 0
    """Bytes between zones of one region."""
    cross_region: int = 0
    """Bytes between regions."""
    internet: int = 0
    """Bytes to or from outside the cluster's networks."""
    unclassified: int = 0
    """Bytes counted by eBPF that no flow record has classified yet."""


class Usage(StatusModel):
    """What the kernel measured."""

    cpu_core_seconds: float = 0.0
    """CPU time used, in core-seconds."""
    normalized_cpu_core_seconds: float = 0.0
    """CPU time scaled by each node's cost.kopeck.io/cpu-factor label."""
    memory_byte_seconds: float = 0.0
    """Working set integrated over time."""
    memory_peak_bytes: int = 0
    """Highest working set seen."""
    network_bytes: NetworkBytes = Field(default_factory=NetworkBytes)
    """Network bytes by class."""
    io_bytes: int = 0
    """Block I/O bytes read and written."""
    storage_byte_seconds: float = 0.0
    """Persistent volume capacity integrated over time."""


class Requests(StatusModel):
    """What the workload asked for, summed over its pods and integrated over time."""

    cpu_core_seconds: float = 0.0
    """Requested cores integrated over the time pods ran."""
    memory_byte_seconds: float = 0.0
    """Requested memory integrated over the time pods ran."""
    gpu_seconds: float = 0.0
    """Requested GPUs integrated over time."""


class Cost(StatusModel):
    """Money, split by what it paid for. Decimal strings, never floats."""

    currency: str = "USD"
    """ISO 4217 currency code."""
    cpu: MoneyString = Field(default=Decimal(0))
    """CPU: max(request, usage) x rate."""
    memory: MoneyString = Field(default=Decimal(0))
    """Memory: max(request, usage) x rate."""
    gpu: MoneyString = Field(default=Decimal(0))
    """GPUs by request."""
    network: MoneyString = Field(default=Decimal(0))
    """Network bytes x class rate."""
    storage: MoneyString = Field(default=Decimal(0))
    """Persistent volumes by size."""
    idle: MoneyString = Field(default=Decimal(0))
    """This workload's share of unallocated node cost (when idle sharing is on)."""
    total: MoneyString = Field(default=Decimal(0))
    """Sum of the above."""


class Efficiency(StatusModel):
    """Usage divided by request; 1.0 means every requested unit was used."""

    cpu: float | None = None
    """CPU usage / CPU request."""
    memory: float | None = None
    """Memory usage / memory request."""
    overall: float | None = None
    """Cost-weighted efficiency of CPU and memory."""


class ContainerProposal(StatusModel):
    """Proposed requests for one container."""

    container: str
    """Container name."""
    cpu_request: str
    """Proposed CPU request (quantity)."""
    memory_request: str
    """Proposed memory request (quantity)."""
    current_cpu_request: str | None = None
    """The request in force when proposed."""
    current_memory_request: str | None = None
    """The request in force when proposed."""
    samples: int = 0
    """Reports the proposal rests on."""


class Proposal(StatusModel):
    """A rightsizing proposal and what it would save."""

    containers: list[ContainerProposal] = Field(default_factory=list)
    """Per-container proposals."""
    monthly_savings: MoneyString = Field(default=Decimal(0))
    """Estimated savings per 730-hour month at current prices and replicas."""
    source: Literal["Histogram", "Prometheus"] = "Histogram"
    """Where the usage history came from."""
    generated_at: Timestamp | None = None
    """When the proposal was made."""


class LastReport(StatusModel):
    """The newest probe report folded in."""

    node: str
    """Node the report came from."""
    seq: int
    """Its sequence number."""
    time: Timestamp
    """End of the interval it covered."""


class Summary(StatusModel):
    """Human-readable figures for kubectl's printer columns."""

    cpu: str = ""
    """CPU used, e.g. 1.25 core-h."""
    memory: str = ""
    """Memory used, e.g. 3.10 GiB-h."""
    network: str = ""
    """Network bytes, e.g. 512 MiB."""
    cost: str = ""
    """Total cost with currency, e.g. 12.34 USD."""
    efficiency: str = ""
    """Overall efficiency, e.g. 43%."""


_FINAL_FIELDS = ("usage", "requests", "cost", "folded")


def _unchanged(field: str) -> str:
    return (f"has(self.{field}) == has(oldSelf.{field}) && "
            f"(!has(self.{field}) || self.{field} == oldSelf.{field})")


class AllocationStatus(StatusModel):
    """What the operator attributed to the workload this period."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{
                "rule": "!has(oldSelf.final) || !oldSelf.final || (has(self.final) && "
                        "self.final && " + " && ".join(_unchanged(f) for f in _FINAL_FIELDS)
                        + ")",
                "message": "this Allocation is final (its period is over): its usage, "
                           "requests, cost and folded reports never change; late usage goes "
                           "to its adjustment record",
            }]
        }
    )

    phase: Literal["Open", "Closed"] = "Open"
    """Closed records take no more usage (the period is over, or the workload is gone; a
    workload that reports again in its period reopens its record)."""
    final: bool = False
    """Set once the period is over and its grace has passed: from then on the record never
    changes (a CRD rule holds it); late usage goes to its adjustment record."""
    usage: Usage = Field(default_factory=Usage)
    """Measured usage."""
    requests: Requests = Field(default_factory=Requests)
    """Requested resources over time."""
    cost: Cost = Field(default_factory=Cost)
    """Money by category."""
    efficiency: Efficiency = Field(default_factory=Efficiency)
    """Usage over request."""
    proposal: Proposal | None = None
    """Rightsizing proposal, when the policy asks for one."""
    histograms: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Checkpointed per-container usage histograms (recommender state)."""
    pods_seen: int = 0
    """Distinct pods charged to this record."""
    summary: Summary = Field(default_factory=Summary)
    """Printer-column strings."""
    last_report: LastReport | None = None
    """The newest report folded in."""
    folded: dict[str, str] | None = None
    """Per node/bootId, the report sequence ranges already folded in (e.g. 0-41,43-50):
    a resent report is folded only into records that do not hold it."""
    conditions: list[Condition] | None = None
    """Idle, Rightsizable, Anomalous, LedgerComplete (False, reason ReportsDropped, once a
    node-probe declared reports of a node that fed this record in its period dropped from
    its full buffer: they never arrive; the message names node, boot and seq ranges)."""
    observed_generation: int | None = None
    """The .metadata.generation this status reflects."""
