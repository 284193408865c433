"""Cost of each pod in one interval on one node, and the node's idle remainder.

The cost model: CPU and memory are charged for max(request, usage), GPUs by request,
network bytes by traffic class, persistent volumes by size. Idle is what the node cost
minus what its pods were charged for compute, so pods + idle = node cost by construction;
`share_idle` spreads idle over pods without losing a micro-unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from kopeck.accounting.prices import NodeFacts, Rates

ZERO = Decimal(0)
QUANTUM = Decimal("1e-12")
"""Money inside accounting is fixed-point at 1e-12: sums of such values are exact."""


def money(value: Decimal) -> Decimal:
    """Round to the accounting quantum so that later sums and differences are exact."""
    return value.quantize(QUANTUM)


@dataclass(frozen=True)
class PodInterval:
    """What one pod requested and used during one interval (recorded or live input)."""

    uid: str
    seconds: Decimal
    cpu_core_seconds: Decimal = ZERO
    cpu_request_cores: Decimal = ZERO
    memory_byte_seconds: Decimal = ZERO
    memory_request_bytes: Decimal = ZERO
    gpus: Decimal = ZERO
    storage_bytes: Decimal = ZERO
    network_bytes: Mapping[str, int] = field(default_factory=dict)
    memory_peak_bytes: int = 0
    io_bytes: int = 0


@dataclass(frozen=True)
class PodCost:
    """Money charged to one pod for one interval, by category."""

    uid: str
    cpu: Decimal = ZERO
    memory: Decimal = ZERO
    gpu: Decimal = ZERO
    network: Decimal = ZERO
    storage: Decimal = ZERO
    idle: Decimal = ZERO

    @property
    def compute(self) -> Decimal:
        """The part that competes for the node's capacity (and so for its price)."""
        return self.cpu + self.memory + self.gpu

    @property
    def total(self) -> Decimal:
        """Everything charged to the pod, idle share included."""
        return self.compute + self.network + self.storage + self.idle


@dataclass(frozen=True)
class NodeInterval:
    """One node's interval: its cost, its pods' charges and the idle remainder."""

    node: str
    seconds: Decimal
    node_cost: Decimal
    pods: tuple[PodCost, ...]
    idle: Decimal

    @property
    def allocated(self) -> Decimal:
        """Compute cost charged to pods (network and storage are billed apart)."""
        return sum((p.compute for p in self.pods), ZERO)


def pod_cost(pod: PodInterval, rates: Rates) -> PodCost:
    """The cost of one pod-interval under the node's rates."""
    cpu_charged = max(pod.cpu_request_cores * pod.seconds, pod.cpu_core_seconds)
    mem_charged = max(pod.memory_request_bytes * pod.seconds, pod.memory_byte_seconds)
    network = sum(
        (Decimal(b) * rates.network_per_byte.get(cls, ZERO) for cls, b in pod.network_bytes.items()),
        ZERO,
    )
    return PodCost(
        uid=pod.uid,
        cpu=money(cpu_charged * rates.cpu_core_second),
        memory=money(mem_charged * rates.memory_byte_second),
        gpu=money(pod.gpus * pod.seconds * rates.gpu_second),
        network=money(network),
        storage=money(pod.storage_bytes * pod.seconds * rates.storage_byte_second),
    )


def node_interval(
    node: NodeFacts, rates: Rates, seconds: Decimal, pods: Sequence[PodInterval]
) -> NodeInterval:
    """Price every pod on the node and the idle remainder for one interval.

    Idle may be negative when pods use more than they requested on an overcommitted node:
    we show that rather than hide it, and conservation still holds.
    """
    node_cost = money(rates.node_cost_per_second(node) * seconds)
    costs = tuple(pod_cost(p, rates) for p in pods)
    allocated = sum((c.compute for c in costs), ZERO)
    return NodeInterval(node.name, seconds, node_cost, costs, node_cost - allocated)


def share_idle(interval: NodeInterval) -> NodeInterval:
    """Spread the node's idle cost over its pods in proportion to their compute cost.

    Shares are rounded down to the quantum and the remainder goes to the largest pod, so the
    shares sum to the idle amount exactly and pods + idle-left (zero) = node cost.
    """
    total = interval.allocated
    if not interval.pods or total <= 0 or interval.idle == 0:
        return interval
    shares = [
        (interval.idle * c.compute / total).quantize(QUANTUM, rounding=ROUND_DOWN)
        for c in interval.pods
    ]
    remainder = interval.idle - sum(shares, ZERO)
    biggest = max(range(len(shares)), key=lambda i: interval.pods[i].compute)
    shares[biggest] += remainder
    pods = tuple(
        PodCost(c.uid, c.cpu, c.memory, c.gpu, c.network, c.storage, c.idle + s)
        for c, s in zip(interval.pods, shares, strict=True)
    )
    return NodeInterval(interval.node, interval.seconds, interval.node_cost, pods, ZERO)


def conserved(interval: NodeInterval) -> bool:
    """True when pods' compute and idle shares plus unshared idle equal the node cost."""
    charged = sum((c.compute + c.idle for c in interval.pods), ZERO)
    return charged + interval.idle == interval.node_cost
