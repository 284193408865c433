"""ProbeReport: what one node-probe sends the operator for one interval.

The key ``(node, boot_id, seq)`` identifies a report: the operator acknowledges and ignores
a report it has already folded in, so the probe may resend anything not acknowledged.

Probe and operator are upgraded separately, so the report schema is versioned
(``schemaVersion``) and every report model ignores fields it does not know: an operator
reads the reports of the previous and the next minor version of the probe. A wall clock
that steps backwards or a probe that stalls does not make a report invalid either: the
validator brings the interval into shape and records what it changed, so no usage is lost.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from kopeck.api.common import KopeckModel, Timestamp

TrafficClass = Literal["intraZone", "crossZone", "crossRegion", "internet", "unclassified"]
Direction = Literal["tx", "rx"]
ThresholdKind = Literal["CpuHigh", "MemoryHigh", "Idle"]

REPLAY_HORIZON_REPORTS = 100_000
"""A probe holds at most this many unacknowledged reports (its buffer refuses a larger
bound), so once the operator has seen seq H of a boot, no seq at or below H minus this can
ever be sent again: the operator may settle those instead of keeping their gaps open."""

SCHEMA_VERSION = 1
"""The report schema this code writes; bump when a field is added or its meaning changes."""
MAX_INTERVAL = dt.timedelta(hours=1)
"""The longest interval one report may cover; a longer one (a stalled probe) is cut to this
and the rest kept in ``stalledSeconds``."""
MAX_CLOCK_STEP = dt.timedelta(days=1)
"""How far the wall clock may step backwards within one report before it counts as garbage."""


class ReportModel(KopeckModel):
    """Base of the report models: unknown fields (a newer probe's) are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


class NetworkUsage(ReportModel):
    """Bytes and packets in one direction and class during the interval."""

    traffic_class: TrafficClass
    """Where the traffic went."""
    direction: Direction
    """tx = sent by the pod, rx = received by it."""
    bytes: int = Field(ge=0)
    """Bytes in the interval."""
    packets: int = Field(default=0, ge=0)
    """Packets in the interval."""
    source: Literal["ebpf", "veth", "flows"] = "ebpf"
    """Which reader measured it."""


class ContainerUsage(ReportModel):
    """One container's deltas over the interval."""

    name: str
    """Container name ('' when the runtime gives none)."""
    container_id: str | None = None
    """Runtime container id."""
    cpu_core_seconds: float = Field(ge=0)
    """CPU time used during the interval."""
    memory_working_set_bytes: int = Field(ge=0)
    """Working set at the end of the interval (usage minus inactive file)."""
    memory_byte_seconds: float = Field(default=0, ge=0)
    """Working set integrated over the interval."""
    memory_peak_bytes: int = Field(default=0, ge=0)
    """Highest working set sampled in the interval."""
    io_read_bytes: int = Field(default=0, ge=0)
    """Block bytes read during the interval."""
    io_write_bytes: int = Field(default=0, ge=0)
    """Block bytes written during the interval."""
    cpu_limit_cores: float | None = None
    """The cgroup's CPU limit, when one is set."""
    memory_limit_bytes: int | None = None
    """The cgroup's memory limit, when one is set."""


class PodOwner(ReportModel):
    """The pod's controller, from its ownerReferences (controller: true)."""

    api_version: str = ""
    """The controller's apiVersion, e.g. apps/v1."""
    kind: str
    """ReplicaSet, StatefulSet, DaemonSet, Job, ..."""
    name: str
    """The controller's name."""
    uid: str = ""
    """The controller's UID."""


class PodRequests(ReportModel):
    """The pod's requests as the probe saw them in its spec (app containers; limits where
    only limits are set)."""

    cpu_cores: float | None = Field(default=None, ge=0)
    """CPU cores requested."""
    memory_bytes: int | None = Field(default=None, ge=0)
    """Memory bytes requested."""


class PodUsage(ReportModel):
    """One pod's usage over the interval."""

    uid: str
    """Pod UID (from the cgroup path)."""
    namespace: str | None = None
    """Namespace, when the probe knows the pod."""
    name: str | None = None
    """Pod name, when the probe knows the pod."""
    qos: Literal["guaranteed", "burstable", "besteffort"] | None = None
    """QoS class from the cgroup path."""
    containers: list[ContainerUsage] = Field(default_factory=list)
    """Per-container usage."""
    cpu_core_seconds: float = Field(ge=0)
    """CPU time of the whole pod cgroup (includes the sandbox)."""
    memory_working_set_bytes: int = Field(ge=0)
    """Pod working set at the end of the interval."""
    memory_byte_seconds: float = Field(default=0, ge=0)
    """Pod working set integrated over the interval."""
    memory_peak_bytes: int = Field(default=0, ge=0)
    """Highest pod working set sampled in the interval."""
    network: list[NetworkUsage] = Field(default_factory=list)
    """Network usage by class and direction."""
    ended: bool = False
    """The pod's cgroup disappeared; this is its last report."""
    seconds: float = Field(default=0, ge=0)
    """How long within the interval the pod was running."""
    owner: PodOwner | None = None
    """The pod's controller, so a pod the operator can no longer look up (deleted while
    the operator was down) is still charged to its workload."""
    template_hash: str | None = None
    """The pod's pod-template-hash label: with the owner ReplicaSet's name it names the
    Deployment even when the ReplicaSet is gone too."""
    requests: PodRequests | None = None
    """The pod's requests, so a pod that is gone is still priced at max(request, usage)."""


class ThresholdEvent(ReportModel):
    """A pod crossed a threshold; the report was pushed at once because of it."""

    pod_uid: str
    """Pod UID."""
    kind: ThresholdKind
    """CpuHigh/MemoryHigh: above 90% of limit; Idle: CPU and memory below 5% of request."""
    value: float
    """Observed fraction of limit or request."""
    threshold: float
    """The threshold crossed."""


class Gap(ReportModel):
    """Reports dropped by the probe's bounded buffer (oldest first)."""

    from_seq: int
    """First dropped sequence number."""
    to_seq: int
    """Last dropped sequence number."""
    boot_id: str | None = None
    """Boot id of the dropped reports, when it is not the carrying report's."""


class NodeInfo(ReportModel):
    """Facts about the node needed to price and normalise usage."""

    cpu_cores: float = Field(gt=0)
    """Logical CPUs of the node."""
    memory_bytes: int = Field(gt=0)
    """Physical memory of the node."""
    cpu_factor: float = 1.0
    """Per-core speed factor from the cost.kopeck.io/cpu-factor label."""


class ProbeReport(ReportModel):
    """One interval of one node, as pushed by the node-probe."""

    node: str = Field(min_length=1)
    """Node name."""
    boot_id: str = Field(min_length=1)
    """The node's /proc/sys/kernel/random/boot_id; seq restarts with it."""
    seq: int = Field(ge=0)
    """Sequence number, increasing per (node, boot_id)."""
    interval_start: Timestamp
    """Start of the interval covered."""
    interval_end: Timestamp
    """End of the interval covered."""
    trigger: Literal["periodic", "threshold", "resend"] = "periodic"
    """Why it was sent."""
    node_info: NodeInfo | None = None
    """The node's capacity and factors."""
    pods: list[PodUsage] = Field(default_factory=list)
    """Usage per pod."""
    events: list[ThresholdEvent] = Field(default_factory=list)
    """Threshold crossings in this interval."""
    gaps: list[Gap] = Field(default_factory=list)
    """Reports lost to buffer overflow since the previous report."""
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    """Report schema version of the probe that wrote it (absent from probes before 1)."""
    elapsed_seconds: float | None = Field(default=None, ge=0)
    """The interval's length on the probe's monotonic clock, which never steps."""
    clock_step_seconds: float = Field(default=0, ge=0)
    """How far the wall clock stepped backwards within the interval (set on validation)."""
    stalled_seconds: float = Field(default=0, ge=0)
    """Time beyond MAX_INTERVAL the interval covered (set on validation; not priced yet)."""

    @model_validator(mode="after")
    def _wall_clock(self) -> ProbeReport:
        """A backwards clock step or a stall reshapes the interval instead of refusing the
        report: the usage in it is real, only the wall-clock bounds are off."""
        start, end = self.interval_start, self.interval_end
        if end < start:
            step = start - end
            if step > MAX_CLOCK_STEP:
                raise ValueError(
                    f"intervalEnd {end.isoformat()} is {step} before intervalStart; "
                    f"a wall clock step of more than {MAX_CLOCK_STEP} is not a clock step"
                )
            self.clock_step_seconds += step.total_seconds()
            elapsed = dt.timedelta(seconds=self.elapsed_seconds or 0)
            start = end - min(elapsed, MAX_INTERVAL)
        elif self.elapsed_seconds is not None and end - start > MAX_INTERVAL:
            # the wall clock jumped forwards or the probe stalled: trust the monotonic length
            start = end - dt.timedelta(seconds=self.elapsed_seconds)
        if end - start > MAX_INTERVAL:
            self.stalled_seconds += (end - start - MAX_INTERVAL).total_seconds()
            start = end - MAX_INTERVAL
        self.interval_start = start
        return self

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity used for de-duplication."""
        return (self.node, self.boot_id, self.seq)


class ReportAck(ReportModel):
    """The operator's answer to a report."""

    accepted: bool
    """True when folded in now or earlier."""
    duplicate: bool = False
    """True when this key was already folded in."""
