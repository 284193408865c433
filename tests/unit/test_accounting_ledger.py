"""Accumulators: folding, names, exactly-once marks, and checkpoint round trips."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from kopeck.accounting.cost import PodInterval, pod_cost
from kopeck.accounting.ledger import (
    Accumulator,
    WorkloadKey,
    allocation_name,
    from_status,
    namespace_total_key,
    status_patch,
    to_status,
)
from kopeck.accounting.periods import period_at
from kopeck.accounting.prices import NodeFacts, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.api.allocation import AllocationStatus
from kopeck.api.costpolicy import Pricing

UTC = dt.UTC
T = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
RATES = rates_for_node(
    Pricing.model_validate({"rateCard": {"cpuCoreHour": "0.036", "memoryGiBHour": "0.0045"}}),
    NodeFacts("n1"),
)


def test_names() -> None:
    key = WorkloadKey("shop", "Deployment", "Web", "apps/v1")
    assert allocation_name(key, "2026-11") == "deployment-web-2026-11"
    assert allocation_name(namespace_total_key("shop"), "2026-W48") == "namespace-total-2026-w48"
    long = WorkloadKey("shop", "CronJob", "x" * 252)
    name = allocation_name(long, "2026-11")
    assert len(name) <= 253 and name == allocation_name(long, "2026-11")


def test_seqset() -> None:
    s = SeqSet()
    assert s.add(5) and s.add(7) and s.add(6) and not s.add(6)
    assert s.ranges == [(5, 7)] and 6 in s and 8 not in s
    s.add(1)
    assert s.encode() == "1,5-7"
    assert SeqSet.decode("1,5-7,junk,9-8").ranges == [(1, 1), (5, 7)]
    # bounded by settling seqs past the probe's replay horizon, never by closing open gaps
    many = SeqSet(horizon=64)
    for i in range(0, 200, 2):
        many.add(i)
    assert len(many.ranges) <= 32 and 198 in many
    assert 197 not in many and 135 not in many and 134 in many


def test_fold_and_round_trip() -> None:
    period = period_at("Monthly", T)
    acc = Accumulator(WorkloadKey("shop", "Deployment", "web", "apps/v1"), period)
    pod = PodInterval(
        "p1", Decimal(5), cpu_core_seconds=Decimal("0.02"), cpu_request_cores=Decimal("0.5"),
        memory_byte_seconds=Decimal(5 * 2**28), memory_request_bytes=Decimal(2**30),
        network_bytes={"internet": 1000}, memory_peak_bytes=2**28,
    )
    for seq in range(3):
        assert not acc.holds("n1", "boot", seq)
        acc.add(pod, pod_cost(pod, RATES), cpu_factor=Decimal("1.5"))
        acc.mark("n1", "boot", seq, T)
        assert acc.holds("n1", "boot", seq)
    assert acc.normalized_cpu_core_seconds == Decimal("0.09")
    status = to_status(acc)
    # 3 x (2.5 requested core-s x 0.036/h + 5 requested GiB-s x 0.0045/h) = 0.00009375
    # + 3 x 1000 B to the internet at 0.09/GiB, each interval rounded to 1e-12
    assert status.cost.network == 3 * Decimal("0.000000083819")
    assert status.cost.total == Decimal("0.00009375") + status.cost.network
    assert status.folded == {"n1/boot": "0-2"}
    assert status.summary.cost == "0.000094 USD"
    assert status.efficiency.cpu == 0.008
    wire = status_patch(acc)
    assert wire["cost"]["total"] == "0.000094001457"  # exact, plain digits
    assert AllocationStatus.model_validate(wire) == status
    tiny = Accumulator(acc.key, period, cost_cpu=Decimal("1.2E-11"))
    assert status_patch(tiny)["cost"]["cpu"] == "0.000000000012"
    back = from_status(acc.key, period, {**wire, "proposal": {"monthlySavings": "1"}})
    assert back.holds("n1", "boot", 1) and not back.holds("n1", "boot", 3)
    assert to_status(back).cost == status.cost
    assert back.extra == {"proposal": {"monthlySavings": "1"}}
    assert back.pods_seen == 1


def test_idle_tracking() -> None:
    acc = Accumulator(WorkloadKey("shop", "Deployment", "web"), period_at("Daily", T))
    acc.observe_cpu(T, Decimal("0.01"), Decimal(5), Decimal("0.001"))
    acc.observe_cpu(T + dt.timedelta(minutes=10), Decimal("0.01"), Decimal(5), Decimal("0.001"))
    assert acc.idle_for(T + dt.timedelta(minutes=10)) == dt.timedelta(minutes=10)
    assert acc.low_cpu_cost == Decimal("0.002")
    acc.observe_cpu(T + dt.timedelta(minutes=11), Decimal(4), Decimal(5), Decimal("0.001"))
    assert acc.idle_for(T + dt.timedelta(minutes=11)) == dt.timedelta(0)
