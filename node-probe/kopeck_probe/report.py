"""Build the kopeck.api.ProbeReport of one interval from attribution's output.

Kept apart from attribution (math) and push (I/O) so that the wire format is one small
function: interval charges + pod metadata + network usage -> the pydantic model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kopeck.api.report import (
    ContainerUsage,
    Gap,
    NetworkUsage,
    NodeInfo,
    PodOwner,
    PodRequests,
    PodUsage,
    ProbeReport,
    ThresholdEvent,
)
from kopeck_probe.attribution import NS_PER_S, PodInterval


@dataclass(frozen=True)
class PodLabels:
    """What pod metadata adds to a report: names and container names by runtime id, and
    what the operator needs to charge a pod it can no longer look up (owner, requests)."""

    namespace: str
    name: str
    container_names: Mapping[str, str]
    owner: PodOwner | None = None
    template_hash: str | None = None
    requests: PodRequests | None = None


@dataclass(frozen=True)
class ReportContext:
    """Everything about a report that is not usage."""

    node: str
    boot_id: str
    seq: int
    interval_start: dt.datetime
    interval_end: dt.datetime
    trigger: Literal["periodic", "threshold", "resend"] = "periodic"
    node_info: NodeInfo | None = None
    elapsed_seconds: float | None = None
    """The interval on the monotonic clock; only when the wall clock disagrees (a step)."""


def pod_usage(
    p: PodInterval,
    labels: PodLabels | None,
    network: Sequence[NetworkUsage] = (),
) -> PodUsage:
    """One pod's PodUsage: CPU in core-seconds, memory working set and byte-seconds."""
    names = labels.container_names if labels else {}
    return PodUsage(
        uid=p.uid,
        namespace=labels.namespace if labels else None,
        name=labels.name if labels else None,
        owner=labels.owner if labels else None,
        template_hash=labels.template_hash if labels else None,
        requests=labels.requests if labels else None,
        qos=p.qos,
        cpu_core_seconds=p.usage.cpu_ns / NS_PER_S,
        memory_working_set_bytes=p.usage.memory_last_bytes,
        memory_byte_seconds=p.usage.memory_byte_seconds,
        memory_peak_bytes=p.usage.memory_peak_bytes,
        network=list(network),
        ended=p.ended,
        seconds=p.usage.seconds,
        containers=[
            ContainerUsage(
                name=names.get(c.container_id, ""),
                container_id=c.container_id,
                cpu_core_seconds=c.usage.cpu_ns / NS_PER_S,
                memory_working_set_bytes=c.usage.memory_last_bytes,
                memory_byte_seconds=c.usage.memory_byte_seconds,
                memory_peak_bytes=c.usage.memory_peak_bytes,
                io_read_bytes=c.usage.io_read_bytes,
                io_write_bytes=c.usage.io_write_bytes,
            )
            for c in p.containers
        ],
    )


def build_report(
    ctx: ReportContext,
    pods: Sequence[PodInterval],
    labels: Mapping[str, PodLabels],
    network: Mapping[str, Sequence[NetworkUsage]],
    events: Sequence[ThresholdEvent] = (),
    gaps: Sequence[Gap] = (),
) -> ProbeReport:
    """The report of one interval. Network usage from every source is listed per pod with
    its ``source`` (ebpf/veth: unclassified totals; flows: by class), so the operator can
    price classified bytes and check them against the kernel's totals."""
    return ProbeReport(
        node=ctx.node,
        boot_id=ctx.boot_id,
        seq=ctx.seq,
        interval_start=ctx.interval_start,
        interval_end=ctx.interval_end,
        trigger=ctx.trigger,
        node_info=ctx.node_info,
        elapsed_seconds=ctx.elapsed_seconds,
        pods=[pod_usage(p, labels.get(p.uid), network.get(p.uid, ())) for p in pods],
        events=list(events),
        gaps=list(gaps),
    )


def merge_network(*parts: Mapping[str, Sequence[NetworkUsage]]) -> dict[str, list[NetworkUsage]]:
    """Network usage of several sources, per pod."""
    out: dict[str, list[NetworkUsage]] = {}
    for part in parts:
        for uid, usages in part.items():
            out.setdefault(uid, []).extend(usages)
    return out
