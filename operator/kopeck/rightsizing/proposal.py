"""The runner: histories + current requests + a strategy -> an Allocation ``Proposal``.

Also the savings estimate, so that the Allocation status, the admission warning and the
report all quote the same money.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from kopeck.api.allocation import ContainerProposal, Proposal
from kopeck.rightsizing.history import ContainerHistory, WorkloadHistory
from kopeck.rightsizing.quantity import (
    GI,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_memory,
)
from kopeck.rightsizing.strategies import Recommendation, Strategy

HOURS_PER_MONTH = Decimal(730)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Resources:
    """CPU and memory requests of one container (or a sum); None = not set."""

    cpu_cores: Decimal | None = None
    memory_bytes: int | None = None

    @classmethod
    def from_quantities(
        cls, cpu: str | int | float | None = None, memory: str | int | float | None = None
    ) -> Resources:
        """From Kubernetes quantities as found in ``resources.requests``."""
        return cls(
            cpu_cores=None if cpu is None else parse_cpu(cpu),
            memory_bytes=None if memory is None else parse_memory(memory),
        )

    @classmethod
    def from_requests(cls, requests: Mapping[str, Any] | None) -> Resources:
        """From a container's ``resources.requests`` dict (keys ``cpu`` and ``memory``)."""
        requests = requests or {}
        return cls.from_quantities(requests.get("cpu"), requests.get("memory"))

    @classmethod
    def proposed(cls, proposal: ContainerProposal) -> Resources:
        """The requests a ContainerProposal proposes."""
        return cls.from_quantities(proposal.cpu_request, proposal.memory_request)


def monthly_savings(
    current: Resources,
    proposed: Resources,
    replicas: int,
    cpu_core_hour: Decimal,
    memory_gib_hour: Decimal,
) -> Decimal:
    """Money saved per 730-hour month if ``proposed`` replaced ``current`` on every replica.

    Negative when the proposal raises requests. A request not set on either side counts as
    unchanged (nothing to compare). Rounded to cents.
    """
    per_hour = Decimal(0)
    if current.cpu_cores is not None and proposed.cpu_cores is not None:
        per_hour += (current.cpu_cores - proposed.cpu_cores) * cpu_core_hour
    if current.memory_bytes is not None and proposed.memory_bytes is not None:
        delta_gib = Decimal(current.memory_bytes - proposed.memory_bytes) / GI
        per_hour += delta_gib * memory_gib_hour
    total = per_hour * HOURS_PER_MONTH * max(replicas, 0)
    return total.quantize(CENT, rounding=ROUND_HALF_EVEN)


def container_proposal(
    name: str, recommendation: Recommendation, current: Resources | None
) -> ContainerProposal | None:
    """The API form of a ready recommendation (None when it is not ready)."""
    if recommendation.cpu_cores is None or recommendation.memory_bytes is None:
        return None
    current = current or Resources()
    return ContainerProposal(
        container=name,
        cpu_request=format_cpu(recommendation.cpu_cores),
        memory_request=format_memory(recommendation.memory_bytes),
        current_cpu_request=None if current.cpu_cores is None else format_cpu(current.cpu_cores),
        current_memory_request=None
        if current.memory_bytes is None
        else format_memory(current.memory_bytes),
        samples=recommendation.samples,
    )


@dataclass(frozen=True)
class ProposalResult:
    """A proposal (None until some container has enough data) and per-container details."""

    proposal: Proposal | None
    recommendations: dict[str, Recommendation]
    savings_by_container: dict[str, Decimal]


def propose(
    history: WorkloadHistory | Mapping[str, ContainerHistory],
    current: Mapping[str, Resources],
    strategy: Strategy[Any],
    now: dt.datetime,
    *,
    replicas: int,
    cpu_core_hour: Decimal,
    memory_gib_hour: Decimal,
    source: Literal["Histogram", "Prometheus"] = "Histogram",
) -> ProposalResult:
    """Run ``strategy`` on every container with history and price the difference.

    Containers that are in ``current`` but have no history get no proposal; the proposal
    is None when no container has enough samples yet.
    """
    containers = history.containers if isinstance(history, WorkloadHistory) else history
    recommendations: dict[str, Recommendation] = {}
    proposals: list[ContainerProposal] = []
    savings: dict[str, Decimal] = {}
    for name in sorted(containers):
        rec = strategy.run(containers[name], now)
        recommendations[name] = rec
        cp = container_proposal(name, rec, current.get(name))
        if cp is None:
            continue
        proposals.append(cp)
        savings[name] = monthly_savings(
            current.get(name) or Resources(),
            Resources(rec.cpu_cores, rec.memory_bytes),
            replicas,
            cpu_core_hour,
            memory_gib_hour,
        )
    if not proposals:
        return ProposalResult(None, recommendations, savings)
    proposal = Proposal(
        containers=proposals,
        monthly_savings=sum(savings.values(), Decimal(0)),
        source=source,
        generated_at=now,
    )
    return ProposalResult(proposal, recommendations, savings)
