"""Prices per node from a CostPolicy: rate card, price book split, overrides, cpu factor."""

from __future__ import annotations

from decimal import Decimal

from kopeck.accounting.prices import GIB, HOUR, NodeFacts, rates_for_node, split_node_price
from kopeck.api.costpolicy import Pricing

NODE = NodeFacts(
    name="n1",
    labels={"node.kubernetes.io/instance-type": "m5.xlarge", "pool": "spot"},
    cpu_cores=Decimal(4),
    memory_bytes=16 * 2**30,
)


def test_rate_card_per_second() -> None:
    pricing = Pricing.model_validate(
        {"rateCard": {"cpuCoreHour": "0.036", "memoryGiBHour": "0.0045"}}
    )
    rates = rates_for_node(pricing, NODE)
    assert rates.cpu_core_second * HOUR == Decimal("0.036")
    assert rates.memory_byte_second * HOUR * GIB == Decimal("0.0045")
    # node cost = capacity at the rates: 4 x 0.036 + 16 x 0.0045 per hour
    assert rates.node_cost_per_second(NODE) * HOUR == Decimal("0.216")


def test_price_book_split_adds_up_to_node_price() -> None:
    cpu, mem = split_node_price(Decimal("0.192"), NODE, Decimal(8))
    assert cpu == mem * 8
    assert cpu * 4 + mem * 16 == Decimal("0.192")
    pricing = Pricing.model_validate(
        {"priceBook": {"instanceTypes": {"m5.xlarge": "0.192"}, "cpuToMemoryCostRatio": 8}}
    )
    rates = rates_for_node(pricing, NODE)
    assert rates.source == "priceBook"
    assert abs(rates.node_cost_per_second(NODE) * HOUR - Decimal("0.192")) < Decimal("1e-20")
    whole = rates.cpu_core_second * 4 + rates.memory_byte_second * 16 * 2**30
    assert abs(whole * HOUR - Decimal("0.192")) < Decimal("1e-20")


def test_unknown_instance_type_falls_back_to_default_then_rate_card() -> None:
    book_only = Pricing.model_validate(
        {"priceBook": {"instanceTypes": {"c5.large": "0.085"}, "defaultPricePerHour": "0.1"}}
    )
    per_hour = rates_for_node(book_only, NODE).node_cost_per_second(NODE) * HOUR
    assert abs(per_hour - Decimal("0.1")) < Decimal("1e-20")
    both = Pricing.model_validate(
        {
            "rateCard": {"cpuCoreHour": "0.05", "memoryGiBHour": "0.005"},
            "priceBook": {"instanceTypes": {"c5.large": "0.085"}},
        }
    )
    assert rates_for_node(both, NODE).source == "rateCard"


def test_node_override_by_label_wins() -> None:
    pricing = Pricing.model_validate(
        {
            "rateCard": {"cpuCoreHour": "0.05", "memoryGiBHour": "0.005"},
            "nodeOverrides": [
                {"nodeSelector": {"pool": "reserved"}, "pricePerHour": "9"},
                {"nodeSelector": {"pool": "spot"}, "pricePerHour": "0.06"},
            ],
        }
    )
    rates = rates_for_node(pricing, NODE)
    assert abs(rates.node_cost_per_second(NODE) * HOUR - Decimal("0.06")) < Decimal("1e-20")
    other = NodeFacts("n2", {"pool": "ondemand"}, Decimal(4), 16 * 2**30)
    assert rates_for_node(pricing, other).cpu_core_second * HOUR == Decimal("0.05")


def test_cpu_factor_label() -> None:
    assert NodeFacts("a", {"cost.kopeck.io/cpu-factor": "1.25"}).cpu_factor == Decimal("1.25")
    assert NodeFacts("a", {"cost.kopeck.io/cpu-factor": "junk"}).cpu_factor == 1
    assert NodeFacts("a", {"cost.kopeck.io/cpu-factor": "-3"}).cpu_factor == 1
    assert NodeFacts("a").cpu_factor == 1
