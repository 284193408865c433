"""Prices per node: a CostPolicy's rate card or price book turned into per-second rates.

OpenCost's split: a whole-node price per hour is divided into a CPU part and a memory part
so that one core-hour costs as much as `cpuToMemoryCostRatio` GiB-hours. Every rate here
is exact Decimal money per unit-second, so an interval's cost is a product, never a float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from kopeck.api.costpolicy import NetworkRates, Pricing, RateCard

GIB = Decimal(2**30)
HOUR = Decimal(3600)
MONTH_HOURS = Decimal(730)
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
CPU_FACTOR_LABEL = "cost.kopeck.io/cpu-factor"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
TRAFFIC_CLASSES = ("intraZone", "crossZone", "crossRegion", "internet", "unclassified")


@dataclass(frozen=True)
class NodeFacts:
    """What pricing needs to know about a node: labels and capacity."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_cores: Decimal = Decimal(0)
    memory_bytes: int = 0
    gpus: int = 0

    @property
    def cpu_factor(self) -> Decimal:
        """The per-core speed factor (HS06-like) from the node label; 1 when absent or bad."""
        raw = self.labels.get(CPU_FACTOR_LABEL)
        if raw is None:
            return Decimal(1)
        try:
            value = Decimal(raw)
        except ArithmeticError:
            return Decimal(1)
        return value if value.is_finite() and value > 0 else Decimal(1)

    @property
    def instance_type(self) -> str | None:
        """The node's instance type label, when it carries one."""
        for key in INSTANCE_TYPE_LABELS:
            if key in self.labels:
                return self.labels[key]
        return None


@dataclass(frozen=True)
class Rates:
    """Money per unit-second for one node, in one currency."""

    currency: str
    cpu_core_second: Decimal
    memory_byte_second: Decimal
    gpu_second: Decimal = Decimal(0)
    storage_byte_second: Decimal = Decimal(0)
    network_per_byte: Mapping[str, Decimal] = field(default_factory=dict)
    node_second: Decimal | None = None
    """Whole-node price per second when known (price book), else capacity x rates."""
    source: str = "rateCard"

    def node_cost_per_second(self, node: NodeFacts) -> Decimal:
        """What the node costs per second: its book price, or its capacity at the rates."""
        if self.node_second is not None:
            return self.node_second
        return (
            node.cpu_cores * self.cpu_core_second
            + Decimal(node.memory_bytes) * self.memory_byte_second
            + Decimal(node.gpus) * self.gpu_second
        )


def network_rates_per_byte(network: NetworkRates) -> dict[str, Decimal]:
    """Per-GiB list prices as money per byte, keyed by the report's traffic classes."""
    return {
        "intraZone": network.intra_zone_per_gi_b / GIB,
        "crossZone": network.cross_zone_per_gi_b / GIB,
        "crossRegion": network.cross_region_per_gi_b / GIB,
        "internet": network.internet_per_gi_b / GIB,
        "unclassified": Decimal(0),
    }


def _from_card(card: RateCard, currency: str) -> Rates:
    return Rates(
        currency=currency,
        cpu_core_second=card.cpu_core_hour / HOUR,
        memory_byte_second=card.memory_gi_b_hour / HOUR / GIB,
        gpu_second=card.gpu_hour / HOUR,
        storage_byte_second=card.storage_gi_b_month / MONTH_HOURS / HOUR / GIB,
        network_per_byte=network_rates_per_byte(card.network),
    )


def split_node_price(
    price_per_hour: Decimal, node: NodeFacts, cpu_to_memory_ratio: Decimal
) -> tuple[Decimal, Decimal]:
    """(per core-hour, per GiB-hour) such that cores x cpu + GiB x mem = the node price.

    One core-hour costs `cpu_to_memory_ratio` GiB-hours. A node of unknown capacity cannot
    be split; its price is then charged to CPU alone so that nothing is lost.
    """
    gib = Decimal(node.memory_bytes) / GIB
    denominator = cpu_to_memory_ratio * node.cpu_cores + gib
    if denominator <= 0:
        return price_per_hour, Decimal(0)
    memory_gib_hour = price_per_hour / denominator
    return cpu_to_memory_ratio * memory_gib_hour, memory_gib_hour


def _from_node_price(
    price_per_hour: Decimal, node: NodeFacts, ratio: Decimal, currency: str,
    card: RateCard | None,
) -> Rates:
    cpu_hour, mem_gib_hour = split_node_price(price_per_hour, node, ratio)
    base = _from_card(card, currency) if card is not None else None
    return Rates(
        currency=currency,
        cpu_core_second=cpu_hour / HOUR,
        memory_byte_second=mem_gib_hour / HOUR / GIB,
        gpu_second=base.gpu_second if base else Decimal(0),
        storage_byte_second=base.storage_byte_second if base else Decimal(0),
        network_per_byte=base.network_per_byte if base else network_rates_per_byte(
            NetworkRates()
        ),
        node_second=price_per_hour / HOUR,
        source="priceBook",
    )


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def rates_for_node(pricing: Pricing, node: NodeFacts) -> Rates:
    """The rates that price usage on `node` under `pricing`.

    Order: the first node override whose labels match; then the price book when it knows
    the node's instance type (or has a default price); then the rate card. A policy with
    neither (impossible after CRD validation) prices everything at zero rather than failing.
    """
    currency = pricing.currency
    card = pricing.rate_card
    ratio = pricing.price_book.cpu_to_memory_cost_ratio if pricing.price_book else Decimal(8)
    for override in pricing.node_overrides or []:
        if not _labels_match(override.node_selector, node.labels):
            continue
        if override.price_per_hour is not None:
            return _from_node_price(
                override.price_per_hour, node, ratio, currency, override.rate_card or card
            )
        if override.rate_card is not None:
            return _from_card(override.rate_card, currency)
    book = pricing.price_book
    if book is not None:
        itype = node.instance_type
        price = book.instance_types.get(itype) if itype is not None else None
        if price is None:
            price = book.default_price_per_hour
        if price is not None:
            return _from_node_price(price, node, ratio, currency, card)
    if card is not None:
        return _from_card(card, currency)
    return Rates(currency=currency, cpu_core_second=Decimal(0), memory_byte_second=Decimal(0))
