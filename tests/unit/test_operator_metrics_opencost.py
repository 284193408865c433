"""The OpenCost-compatible series and the ledger-health gauges, from recorded inputs."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import WorkloadKey
from kopeck.accounting.prices import GIB, NodeFacts, Rates, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.api.costpolicy import Pricing
from kopeck.api.report import PodUsage
from kopeck.operator import metrics
from kopeck.operator.state import PodInfo
from kopeck.operator.workloads import Workload
from kopeck.rightsizing.proposal import Resources

FACTS = NodeFacts(
    "n1", {"node.kubernetes.io/instance-type": "m5.xlarge", "topology.kubernetes.io/region":
           "eu-west-1", "kubernetes.io/arch": "amd64"}, Decimal(4), 16 * 2**30, 0,
)  # fmt: skip


def test_node_price_from_a_price_book_splits_like_opencost_and_totals_the_book_price() -> None:
    pricing = Pricing.model_validate({
        "priceBook": {"instanceTypes": {"m5.xlarge": 0.192}, "cpuToMemoryCostRatio": 8}})
    price = metrics.node_price(FACTS, rates_for_node(pricing, FACTS), "aws:///eu-west-1a/i-1")
    # 4 cores x 8 + 16 GiB = 48 GiB-equivalents: 0.004/GiB-h, 0.032/core-h
    assert price.ram_per_gib_hour == Decimal("0.004")
    assert price.cpu_per_core_hour == Decimal("0.032")
    assert price.total_per_hour == Decimal("0.192")
    assert 4 * price.cpu_per_core_hour + 16 * price.ram_per_gib_hour == price.total_per_hour
    assert price.labels() == ["n1", "n1", "m5.xlarge", "eu-west-1", "aws:///eu-west-1a/i-1",
                              "amd64"]


def test_node_price_from_a_rate_card_is_capacity_times_rates() -> None:
    rates = Rates("USD", Decimal("0.036") / 3600, Decimal("0.0045") / 3600 / GIB)
    price = metrics.node_price(FACTS, rates)
    assert price.cpu_per_core_hour == Decimal("0.036")
    assert price.ram_per_gib_hour == Decimal("0.0045")
    assert price.total_per_hour == Decimal("0.216")
    unknown = metrics.node_price(NodeFacts("n2"), rates)
    assert unknown.total_per_hour is None  # no capacity, no book price: no total series


def _info(containers: dict[str, Resources], gpus: str = "0") -> PodInfo:
    return PodInfo(
        uid="u1", namespace="shop", name="web-1", node="n1",
        workload=Workload(WorkloadKey("shop", "Deployment", "web", "apps/v1")),
        shape=PodShape(Decimal("0.75"), Decimal(768 * 2**20), Decimal(gpus)),
        containers=containers,
    )  # fmt: skip


def test_container_allocation_is_max_of_request_and_usage_per_container() -> None:
    pod = PodUsage.model_validate({
        "uid": "u1", "namespace": "shop", "name": "web-1", "seconds": 5.0,
        "cpuCoreSeconds": 4.0, "memoryWorkingSetBytes": 600 * 2**20,
        "containers": [
            {"name": "main", "cpuCoreSeconds": 1.0, "memoryWorkingSetBytes": 500 * 2**20},
            {"name": "side", "cpuCoreSeconds": 3.0, "memoryWorkingSetBytes": 100 * 2**20},
        ]})  # fmt: skip
    info = _info({"main": Resources(Decimal("0.5"), 256 * 2**20),
                  "side": Resources(Decimal("0.25"), 512 * 2**20)}, gpus="1")
    got = {a.container: a for a in metrics.container_allocations("n1", [(pod, info)])}
    assert got["main"].cpu_cores == Decimal("0.5")  # request 0.5 > 0.2 used
    assert got["main"].memory_bytes == 500 * 2**20  # working set above request
    assert got["side"].cpu_cores == Decimal("0.6")  # 3 core-s over 5 s
    assert got["side"].memory_bytes == 512 * 2**20
    assert (got["main"].gpus, got["side"].gpus) == (1, 0)
    assert got["main"].labels() == ["shop", "web-1", "main", "n1", "n1"]


def test_known_gaps_count_only_between_seen_seqs() -> None:
    s = SeqSet()
    for seq in (5, 6, 9, 12):
        s.add(seq)
    assert metrics.known_gaps(s) == 2 + 2  # 7-8 and 10-11; 0-4 were never seen
    s.add_range(7, 8)
    assert metrics.known_gaps(s) == 2
    settled = SeqSet(floor=3, ranges=[(6, 6)])
    assert metrics.known_gaps(settled) == 2  # 4 and 5 above the floor
    assert metrics.gaps_by_node({"a/boot1": s, "a/boot2": settled, "b/x": SeqSet()}) == {
        "a": 4, "b": 0}


def _scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.REGISTRY).decode()
    return {f.name: [(s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(text)}


def test_only_the_leader_exports_opencost_and_ledger_series() -> None:
    seen = SeqSet()
    seen.add(1)
    seen.add(4)
    state = SimpleNamespace(active=True, settings=SimpleNamespace(probe_interval=5.0),
                            node_seen={"n1": 1700000000.0}, seen={"n1/b": seen},
                            pods={}, nodes={"n1": FACTS})
    book = metrics.OPENCOST
    saved = (book.prices.copy(), book.containers.copy(), book.seen_at.copy())
    old_state = metrics.STATE_COLLECTOR.state
    try:
        for part in (book.prices, book.containers, book.seen_at):
            part.clear()  # the book is process-wide: other tests' nodes may be in it
        rates = Rates("USD", Decimal("0.036") / 3600, Decimal("0.0045") / 3600 / GIB)
        book.prices["n1"] = metrics.node_price(FACTS, rates)
        book.containers["n1"] = [metrics.ContainerAllocation(
            "shop", "web-1", "main", "n1", Decimal("0.5"), Decimal(2**28), Decimal(0))]
        import time
        book.seen_at["n1"] = time.monotonic()
        metrics.STATE_COLLECTOR.state = state
        got = _scrape()
        assert got["node_total_hourly_cost"] == [(
            {"instance": "n1", "node": "n1", "instance_type": "m5.xlarge",
             "region": "eu-west-1", "provider_id": "", "arch": "amd64"}, 0.216)]
        assert got["container_cpu_allocation"][0][1] == 0.5
        assert got["container_memory_allocation_bytes"][0][0]["namespace"] == "shop"
        assert got["kopeck_ledger_seq_gaps"] == [({"node": "n1"}, 2.0)]
        assert got["kopeck_node_last_report_timestamp_seconds"] == [
            ({"node": "n1"}, 1700000000.0)]
        assert got["kopeck_probe_interval_seconds"] == [({}, 5.0)]
        del state.nodes["n1"]  # the Node object is gone: no ledger series for it
        gone = _scrape()
        assert gone["kopeck_ledger_seq_gaps"] == []
        assert gone["kopeck_node_last_report_timestamp_seconds"] == []
        state.nodes["n1"] = FACTS
        state.active = False
        standby = _scrape()
        for name in ("node_total_hourly_cost", "container_cpu_allocation",
                     "kopeck_ledger_seq_gaps", "kopeck_node_last_report_timestamp_seconds"):
            assert standby[name] == [], name
    finally:
        metrics.STATE_COLLECTOR.state = old_state
        book.prices, book.containers, book.seen_at = (dict(x) for x in saved)


def test_anomalous_series_return_to_zero_when_the_book_clears_them() -> None:
    metrics.ANOMALOUS.labels("p-sync", "ns/a").set(1)
    metrics.ANOMALOUS.labels("p-sync", "ns/b").set(1)
    metrics.sync_anomalous({"p-sync": {"ns/b": object()}})
    values = {s[0]["subject"]: s[1] for s in _scrape()["kopeck_spend_anomalous"]
              if s[0]["policy"] == "p-sync"}
    assert values == {"ns/a": 0.0, "ns/b": 1.0}
    metrics.ANOMALOUS.remove("p-sync", "ns/a")
    metrics.ANOMALOUS.remove("p-sync", "ns/b")


def test_pvc_allocation_shares_a_claim_among_its_running_pods() -> None:
    def pod(uid: str, name: str, claims: tuple[str, ...], phase: str = "Running") -> PodInfo:
        info = _info({})
        info.uid, info.name, info.claims, info.phase = uid, name, claims, phase
        return info

    claims = {("shop", "data"): ("pv-data", Decimal(10 * 2**30)),
              ("shop", "logs"): ("pv-logs", Decimal(2**30)),
              ("shop", "unbound"): ("", Decimal(2**30))}
    pods = [pod("a", "db-0", ("data", "logs")), pod("b", "db-1", ("data",)),
            pod("c", "done", ("data",), phase="Succeeded"), pod("d", "new", ("unbound",))]
    got = {(a.pod, a.claim): (a.volume, a.bytes) for a in metrics.pvc_allocations(pods, claims)}
    assert got == {("db-0", "data"): ("pv-data", 5 * 2**30), ("db-1", "data"): ("pv-data", 5 * 2**30),
                   ("db-0", "logs"): ("pv-logs", 2**30)}
    share = metrics.pvc_allocations(pods, claims)[0]
    assert share.labels() == ["shop", "db-0", "data", "pv-data"]
