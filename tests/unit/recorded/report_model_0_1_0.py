"""RECORDED: kopeck.api.report as released in 0.1.0 (the previous operator), for skew tests.

ProbeReport: what one node-probe sends the operator for one interval.

The key ``(node, boot_id, seq)`` identifies a report: the operator acknowledges and ignores
a report it has already folded in, so the probe may resend anything not acknowledged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kopeck.api.common import KopeckModel, Timestamp

TrafficClass = Literal["intraZone", "crossZone", "crossRegion", "internet", "unclassified"]
Direction = Literal["tx", "rx"]
ThresholdKind = Literal["CpuHigh", "MemoryHigh", "Idle"]


class NetworkUsage(KopeckModel):
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


class ContainerUsage(KopeckModel):
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


class PodUsage(KopeckModel):
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


class ThresholdEvent(KopeckModel):
    """A pod crossed a threshold; the report was pushed at once because of it."""

    pod_uid: str
    """Pod UID."""
    kind: ThresholdKind
    """CpuHigh/MemoryHigh: above 90% of limit; Idle: CPU and memory below 5% of request."""
    value: float
    """Observed fraction of limit or request."""
    threshold: float
    """The threshold crossed."""


class Gap(KopeckModel):
    """Reports dropped by the probe's bounded buffer (oldest first)."""

    from_seq: int
    """First dropped sequence number."""
    to_seq: int
    """Last dropped sequence number."""
    boot_id: str | None = None
    """Boot id of the dropped reports, when it is not the carrying report's."""


class NodeInfo(KopeckModel):
    """Facts about the node needed to price and normalise usage."""

    cpu_cores: float = Field(gt=0)
    """Logical CPUs of the node."""
    memory_bytes: int = Field(gt=0)
    """Physical memory of the node."""
    cpu_factor: float = 1.0
    """Per-core speed factor from the cost.kopeck.io/cpu-factor label."""


class ProbeReport(KopeckModel):
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

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity used for de-duplication."""
        return (self.node, self.boot_id, self.seq)


class ReportAck(KopeckModel):
    """The operator's answer to a report."""

    accepted: bool
    """True when folded in now or earlier."""
    duplicate: bool = False
    """True when this key was already folded in."""
