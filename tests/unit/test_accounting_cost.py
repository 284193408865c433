"""Cost per pod-interval and conservation: pods + idle = node cost, on recorded inputs."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from kopeck.accounting.cost import PodInterval, conserved, node_interval, pod_cost, share_idle
from kopeck.accounting.prices import HOUR, NodeFacts, rates_for_node
from kopeck.api.costpolicy import Pricing

CARD = Pricing.model_validate(
    {
        "rateCard": {
            "cpuCoreHour": "0.036",
            "memoryGiBHour": "0.0045",
            "gpuHour": "2.5",
            "storageGiBMonth": "0.1",
            "network": {"crossZonePerGiB": "0.01", "internetPerGiB": "0.09"},
        }
    }
)
BOOK = Pricing.model_validate(
    {"priceBook": {"instanceTypes": {"m5.xlarge": "0.192"}, "cpuToMemoryCostRatio": 8}}
)
NODE = NodeFacts("n1", {"node.kubernetes.io/instance-type": "m5.xlarge"}, Decimal(4), 16 * 2**30)

# One 5 s interval on a 4-core node, as a probe recorded it and the operator joined it with
# pod requests (cores, bytes): an idle web pod, a busy batch pod above its request, a
# besteffort pod with no requests, and a GPU pod.
RECORDED = json.loads(
    """
[
 {"uid": "web", "seconds": "5", "cpu": "0.05", "cpuReq": "1", "mem": "1342177280",
  "memReq": "1073741824", "net": {"crossZone": 1048576, "internet": 2097152}},
 {"uid": "batch", "seconds": "5", "cpu": "9.5", "cpuReq": "1.5", "mem": "5368709120",
  "memReq": "2147483648"},
 {"uid": "be", "seconds": "3.2", "cpu": "0.4", "cpuReq": "0", "mem": "104857600",
  "memReq": "0"},
 {"uid": "gpu", "seconds": "5", "cpu": "0.2", "cpuReq": "0.5", "mem": "536870912",
  "memReq": "1073741824", "gpus": "1", "storage": "10737418240"}
]
"""
)


def _pods() -> list[PodInterval]:
    return [
        PodInterval(
            uid=p["uid"],
            seconds=Decimal(p["seconds"]),
            cpu_core_seconds=Decimal(p["cpu"]),
            cpu_request_cores=Decimal(p["cpuReq"]),
            memory_byte_seconds=Decimal(p["mem"]) * Decimal(p["seconds"]),
            memory_request_bytes=Decimal(p["memReq"]),
            gpus=Decimal(p.get("gpus", "0")),
            storage_bytes=Decimal(p.get("storage", "0")),
            network_bytes=p.get("net", {}),
        )
        for p in RECORDED
    ]


def test_max_of_request_and_usage() -> None:
    rates = rates_for_node(CARD, NODE)
    web, batch = _pods()[:2]
    c = pod_cost(web, rates)
    # web used 0.05 core-s of 5 requested: charged for the request
    assert c.cpu * HOUR == pytest.approx(Decimal(5) * Decimal("0.036"), abs=Decimal("1e-8"))
    assert c.cpu == (Decimal(5) * Decimal("0.036") / HOUR).quantize(Decimal("1e-12"))
    # its memory usage (1.25 GiB) is above the 1 GiB request: charged for usage
    assert c.memory == (Decimal("1.25") * 5 * Decimal("0.0045") / HOUR).quantize(Decimal("1e-12"))
    # 1 MiB cross-zone + 2 MiB internet
    expected_net = (Decimal("0.01") + 2 * Decimal("0.09")) / 1024
    assert c.network == expected_net.quantize(Decimal("1e-12"))
    b = pod_cost(batch, rates)
    assert b.cpu == (Decimal("9.5") * Decimal("0.036") / HOUR).quantize(Decimal("1e-12"))


def test_gpu_by_request_and_storage_by_size() -> None:
    rates = rates_for_node(CARD, NODE)
    gpu = pod_cost(_pods()[3], rates)
    assert gpu.gpu == (Decimal("2.5") * 5 / HOUR).quantize(Decimal("1e-12"))
    assert gpu.storage == (Decimal(10) * Decimal("0.1") / 730 / HOUR * 5).quantize(
        Decimal("1e-12")
    )


@pytest.mark.parametrize("pricing", [CARD, BOOK], ids=["rateCard", "priceBook"])
def test_conservation_pods_plus_idle_is_node_cost(pricing: Pricing) -> None:
    rates = rates_for_node(pricing, NODE)
    interval = node_interval(NODE, rates, Decimal(5), _pods())
    assert conserved(interval)
    assert interval.allocated + interval.idle == interval.node_cost
    shared = share_idle(interval)
    assert conserved(shared)
    assert shared.idle == 0
    assert sum(p.compute + p.idle for p in shared.pods) == interval.node_cost


def test_conservation_over_many_recorded_intervals() -> None:
    """A day of 5 s intervals with varying pods: totals still add up to the node's cost."""
    rates = rates_for_node(BOOK, NODE)
    node_total = pods_total = idle_total = Decimal(0)
    pods = _pods()
    for i in range(17280):
        chosen = pods[: 1 + i % 4]
        interval = share_idle(node_interval(NODE, rates, Decimal(5), chosen)) if i % 3 else (
            node_interval(NODE, rates, Decimal(5), chosen)
        )
        node_total += interval.node_cost
        pods_total += sum((p.compute + p.idle for p in interval.pods), Decimal(0))
        idle_total += interval.idle
    assert pods_total + idle_total == node_total  # exact: fixed-point sums
    # 5 s of a 0.192/h node is not a finite decimal: per-interval rounding stays sub-micro
    assert abs(node_total - Decimal("0.192") * 24) < Decimal("1e-7")


def test_overcommitted_node_shows_negative_idle() -> None:
    rates = rates_for_node(CARD, NODE)
    hog = PodInterval("hog", Decimal(5), cpu_core_seconds=Decimal(40), cpu_request_cores=Decimal(4))
    interval = node_interval(NODE, rates, Decimal(5), [hog])
    assert interval.idle < 0
    assert conserved(interval)
