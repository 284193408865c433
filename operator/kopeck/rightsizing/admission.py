"""Admission warnings for over-requesting workloads (requests at least twice the proposal).

The webhook admits the object and returns these strings as ``warnings``; kubectl prints
each on a line starting with ``Warning:``. The apiserver may truncate a warning past 256
characters, so the text is kept short and puts the figures first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from kopeck.api.allocation import Proposal
from kopeck.rightsizing.proposal import Resources, monthly_savings
from kopeck.rightsizing.quantity import format_cpu, format_memory

WARN_RATIO = Decimal(2)
"""Warn when a request is at least this many times the proposal."""
MAX_WARNING_CHARS = 256


@dataclass(frozen=True)
class WorkloadName:
    """Who the warning is about."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} in namespace {self.namespace}"


def should_warn(current: Resources, proposed: Resources, ratio: Decimal = WARN_RATIO) -> bool:
    """True when the current CPU or memory request is at least ``ratio`` times the proposal."""
    if (
        current.cpu_cores is not None
        and proposed.cpu_cores is not None
        and proposed.cpu_cores > 0
        and current.cpu_cores >= ratio * proposed.cpu_cores
    ):
        return True
    return (
        current.memory_bytes is not None
        and proposed.memory_bytes is not None
        and proposed.memory_bytes > 0
        and current.memory_bytes >= ratio * proposed.memory_bytes
    )


def _fmt(res: Resources) -> str:
    cpu = "-" if res.cpu_cores is None else format_cpu(res.cpu_cores)
    mem = "-" if res.memory_bytes is None else format_memory(res.memory_bytes)
    return f"cpu={cpu} memory={mem}"


def warning_text(
    workload: WorkloadName,
    container: str,
    current: Resources,
    proposed: Resources,
    savings: Decimal,
    currency: str = "USD",
) -> str:
    """One warning line naming the workload, the container, both requests and the savings."""
    text = (
        f"kopeck: {workload} container {container} requests {_fmt(current)}, "
        f"usage suggests {_fmt(proposed)}; "
        f"about {savings:.2f} {currency}/month to save"
    )
    return text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 3] + "..."


def admission_warnings(
    workload: WorkloadName,
    current: Mapping[str, Resources],
    proposal: Proposal | None,
    *,
    replicas: int,
    cpu_core_hour: Decimal,
    memory_gib_hour: Decimal,
    currency: str = "USD",
    ratio: Decimal = WARN_RATIO,
) -> list[str]:
    """Warnings for the containers of an incoming object whose requests are >= 2x proposed.

    ``current`` is the requests in the object being admitted (not the ones the proposal was
    made against), so that lowering requests in the same apply silences the warning.
    """
    if proposal is None:
        return []
    out: list[str] = []
    for cp in proposal.containers:
        now = current.get(cp.container)
        if now is None:
            continue
        proposed = Resources.proposed(cp)
        if not should_warn(now, proposed, ratio):
            continue
        saved = monthly_savings(now, proposed, replicas, cpu_core_hour, memory_gib_hour)
        out.append(warning_text(workload, cp.container, now, proposed, saved, currency))
    return out
