"""explain-bill: Allocations folded by the real ledger code are explained to the micro-unit,
tampered ones are caught, and what cannot be checked is said so."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.accounting.cost import NodeInterval, PodInterval, pod_cost, share_idle
from kopeck.accounting.ledger import Accumulator, WorkloadKey, status_patch
from kopeck.accounting.periods import period_at
from kopeck.accounting.prices import NodeFacts, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.api.costpolicy import Pricing
from kopeck.cli import main
from kopeck.reports.explain import (
    ExplainError,
    bill_inputs,
    count_reports,
    explain,
    parse_target,
    pods_of,
)

DUMP = Path(__file__).with_name("reports_dump.json")
D = Decimal
T = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
PERIOD = period_at("Monthly", T)
CARD = {"currency": "EUR", "rateCard": {"cpuCoreHour": 0.036, "memoryGiBHour": 0.0045,
                                        "gpuHour": 2.5, "storageGiBMonth": 0.1}}


def policy(name: str, pricing: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cost.kopeck.io/v1alpha1", "kind": "CostPolicy",
            "metadata": {"name": name, "generation": 3}, "spec": {"pricing": pricing}}


def allocation(status: dict[str, Any], *, kind: str = "Deployment", name: str = "web",
               pol: str | None = "card") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workloadRef": {"apiVersion": "apps/v1", "kind": kind, "name": name, "namespace": "shop"},
        "period": {"name": PERIOD.name, "start": PERIOD.start.isoformat(),
                   "end": PERIOD.end.isoformat()},
    }
    if pol:
        spec["policyRef"] = {"name": pol}
    return {"apiVersion": "cost.kopeck.io/v1alpha1", "kind": "Allocation",
            "metadata": {"name": f"{kind.lower()}-{name}-{PERIOD.name}", "namespace": "shop"},
            "spec": spec, "status": status}


def folded_status(pricing: dict[str, Any], *, over_request: str, reports: int = 40,
                  share: bool = False, seed: int = 7) -> dict[str, Any]:
    """A status folded exactly as the operator folds: pod_cost per pod-interval, add_group
    per report, status_patch at the end. `over_request`: never, always or sometimes."""
    rng = random.Random(seed)
    rates = rates_for_node(Pricing.model_validate(pricing), NodeFacts("n1"))
    node = NodeFacts("n1", cpu_cores=D(8), memory_bytes=32 * 2**30)
    acc = Accumulator(WorkloadKey("shop", "Deployment", "web", "apps/v1"), PERIOD,
                      currency=rates.currency, policy="card")
    for seq in range(1, reports + 1):
        pods = []
        for p in range(3):
            req_cpu, req_mem = D("0.5"), D(2**30)
            above = {"never": False, "always": True}.get(over_request, rng.random() < 0.3)
            used = req_cpu * (D("1.7") if above else D(rng.randint(1, 90)) / 100)
            mem = req_mem * (D("1.2") if above else D(rng.randint(10, 95)) / 100)
            pods.append(PodInterval(
                f"pod-{p}", D(5), cpu_core_seconds=used * 5, cpu_request_cores=req_cpu,
                memory_byte_seconds=mem * 5, memory_request_bytes=req_mem,
                gpus=D(1) if p == 0 else D(0), storage_bytes=D(10 * 2**30),
                network_bytes={"internet": rng.randint(0, 2**20), "crossZone": 4096},
            ))
        costs = [pod_cost(p, rates) for p in pods]
        if share:
            cost = sum((c.compute for c in costs), D(0))
            interval = share_idle(NodeInterval("n1", D(5), cost * 3, tuple(costs), cost * 2))
            costs = list(interval.pods)
        acc.add_group(pods, costs)
        acc.mark("n1", "boot-1", seq, T + dt.timedelta(seconds=5 * seq))
    assert node.cpu_cores  # the node is only context here; rate cards price every node alike
    return status_patch(acc)


def bills(items: list[dict[str, Any]], target: str = "deployment/web") -> list[Any]:
    kind, name = parse_target(target)
    return [explain(b) for b in bill_inputs(items, kind, name, "shop")]


@pytest.mark.parametrize("over", ["never", "always", "sometimes"])
def test_folded_allocation_is_explained_to_the_status_total(over: str) -> None:
    st = folded_status(CARD, over_request=over)
    (bill,) = bills([policy("card", CARD), allocation(st)])
    assert bill.ok, bill.problems
    assert bill.components_sum == D(st["cost"]["total"])
    assert abs(bill.explained_total - D(st["cost"]["total"])) <= bill.tolerance
    by = {ln.component: ln for ln in bill.lines}
    assert [ln.component for ln in bill.lines] == ["cpu", "memory", "gpu", "network",
                                                   "storage", "idle"]
    expected = {"never": "recomputed", "always": "recomputed", "sometimes": "bounded"}[over]
    assert by["cpu"].check == expected and by["memory"].check == expected
    for comp in ("gpu", "network", "storage"):
        assert by[comp].check == "recomputed", by[comp]
        assert abs(by[comp].amount - D(st["cost"][comp])) <= D("1e-9")
    if over == "never":
        assert "= request" in by["cpu"].text[1]
        assert by["cpu"].amount == D(st["cost"]["cpu"])
    if over == "always":
        assert "= usage" in by["cpu"].text[1]
    assert bill.intervals[0].reports == 40 and bill.intervals[0].node == "n1"


def test_shared_idle_is_shown_and_still_adds_up() -> None:
    st = folded_status(CARD, over_request="never", share=True)
    assert D(st["cost"]["idle"]) > 0
    (bill,) = bills([policy("card", CARD), allocation(st)])
    idle = next(ln for ln in bill.lines if ln.component == "idle")
    assert idle.check == "shown" and "% of compute" in idle.text[0]
    assert bill.ok and bill.components_sum == D(st["cost"]["total"])


@pytest.mark.parametrize("field,factor", [("cpu", 10), ("memory", D("0.5")), ("network", 2),
                                          ("gpu", 3), ("storage", D("1.01"))])
def test_a_tampered_component_is_a_mismatch_naming_object_and_field(
    field: str, factor: Decimal
) -> None:
    st = folded_status(CARD, over_request="sometimes")
    bad = copy.deepcopy(st)
    bad["cost"][field] = format(D(st["cost"][field]) * D(factor), "f")
    total = sum(D(bad["cost"][c]) for c in ("cpu", "memory", "gpu", "network", "storage",
                                            "idle"))
    bad["cost"]["total"] = format(total, "f")  # a consistent forgery: only rates expose it
    forged = allocation(bad)
    forged["metadata"]["managedFields"] = [
        {"manager": "kubectl-patch", "operation": "Update", "subresource": "status",
         "time": "2026-11-23T13:00:00Z"},
        {"manager": "kopeck-operator", "operation": "Update", "subresource": "status",
         "time": "2026-11-23T12:00:00Z"},
        {"manager": "kopeck-operator", "operation": "Update", "time": "2026-11-23T11:00:00Z"},
    ]
    (bill,) = bills([policy("card", CARD), forged])
    assert bill.source.status_writers == ["kopeck-operator at 2026-11-23T12:00:00Z",
                                          "kubectl-patch at 2026-11-23T13:00:00Z"]
    assert not bill.ok
    assert any(f"status.cost.{field}" in p and "Allocation shop/deployment-web-" in p
               and "written by kubectl-patch at 2026-11-23T13:00:00Z" in p
               for p in bill.problems), bill.problems
    assert next(ln for ln in bill.lines if ln.component == field).check == "mismatch"
    assert bill.explained_total != D(bad["cost"]["total"])


def test_a_tampered_total_is_a_mismatch_and_the_command_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = folded_status(CARD, over_request="never")
    bad = copy.deepcopy(st)
    bad["cost"]["total"] = format(D(st["cost"]["total"]) + D("0.01"), "f")
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"items": [policy("card", CARD), allocation(bad)]}))
    rc = main(["explain-bill", "deployment/web", "-n", "shop", "--from-file", str(dump)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "status.cost.total" in err and "add up to" in err
    assert "MISMATCH" in out
    dump.write_text(json.dumps({"items": [policy("card", CARD), allocation(st)]}))
    assert main(["explain-bill", "deploy/web", "-n", "shop", "--from-file", str(dump),
                 "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (a,) = doc["allocations"]
    assert doc["ok"] and a["ok"] and a["statusTotal"] == st["cost"]["total"]
    assert sum(D(ln["amount"]) for ln in a["lines"]) == D(a["explainedTotal"])


def test_the_recorded_dump_is_explained_and_its_unpriced_storage_is_caught() -> None:
    """The hand-written dump charges storage that its policy (no storageGiBMonth) never
    priced: explain-bill says so, and every other line checks out."""
    items = json.loads(DUMP.read_text())["items"]
    seen = flagged = 0
    for it in items:
        if it["kind"] != "Allocation":
            continue
        ref = it["spec"]["workloadRef"]
        kind, name = parse_target(f"{ref['kind']}/{ref['name']}")
        for b in bill_inputs(items, kind, name, it["metadata"]["namespace"], "all"):
            bill = explain(b)
            assert bill.components_sum == bill.status_total
            storage = D((it.get("status") or {}).get("cost", {}).get("storage", "0"))
            bad = {ln.component for ln in bill.lines if ln.check == "mismatch"}
            if b.name == it["metadata"]["name"]:
                assert bad == ({"storage"} if storage else set()), bill.problems
                flagged += bool(bad)
            seen += 1
    assert seen >= 29 and flagged >= 3


def test_node_dependent_prices_without_the_node_are_shown_not_checked() -> None:
    book = {"currency": "USD", "priceBook": {"instanceTypes": {"m5.large": 0.2},
                                            "defaultPricePerHour": 4.0}}
    st = folded_status(CARD, over_request="never")
    (bill,) = bills([policy("card", book), allocation(st)])
    by = {ln.component: ln for ln in bill.lines}
    assert by["cpu"].check == "shown" and "Node n1 is gone" in by["cpu"].text[-1]
    assert bill.ok, "nothing contradicts the status; the lines just cannot be checked"
    node = {"kind": "Node", "metadata": {"name": "n1", "labels": {}},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi"}}}
    (bill,) = bills([policy("card", book), allocation(st), node])
    assert {ln.check for ln in bill.lines if ln.component in ("cpu", "memory")} == {"mismatch"}
    assert any("priceBook" in r.rates.source for r in bill.rates if r.rates)  # type: ignore[union-attr]


def test_missing_policy_and_no_policy() -> None:
    st = folded_status(CARD, over_request="never")
    (bill,) = bills([allocation(st)])  # the policy was deleted
    assert all(ln.check == "shown" for ln in bill.lines) and bill.ok
    assert "no longer exists" in bill.rates[0].why_unknown
    zero = {"cost": {"currency": "USD"}, "requests": {"cpuCoreSeconds": 100.0}}
    (bill,) = bills([allocation(zero, pol=None)])
    assert bill.ok and bill.lines[0].check == "recomputed" and bill.explained_total == 0
    forged = {"cost": {"currency": "USD", "cpu": "1.5", "total": "1.5"},
              "requests": {"cpuCoreSeconds": 100.0}}
    (bill,) = bills([allocation(forged, pol=None)])
    assert not bill.ok and "status.cost.cpu" in bill.problems[0]


def test_targets_and_errors() -> None:
    assert parse_target("deploy/web") == ("Deployment", "web")
    assert parse_target("statefulsets.apps/db") == ("StatefulSet", "db")
    assert parse_target("ns/shop") == ("Namespace", "shop")
    for bad in ("web", "widget/x", "deployment/"):
        with pytest.raises(ExplainError, match="kind>/<name>"):
            parse_target(bad)
    items = [policy("card", CARD), allocation(folded_status(CARD, over_request="never"))]
    with pytest.raises(ExplainError, match=r"no Allocation for deployment/api .*deployment/web"):
        bill_inputs(items, "Deployment", "api", "shop")
    with pytest.raises(ExplainError, match=f"periods are {PERIOD.name}"):
        bill_inputs(items, "Deployment", "web", "shop", "1999-01")
    broken = allocation({"cost": {"cpu": "lots"}})
    with pytest.raises(ExplainError, match=r"Allocation shop/deployment-web-.*: status\.cost"):
        bill_inputs([broken], "Deployment", "web", "shop")


def test_pods_are_found_through_their_owners() -> None:
    def obj(kind: str, name: str, owner: tuple[str, str] | None, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "shop"}
        if owner:
            meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
        return {"kind": kind, "metadata": meta, **extra}

    spec = {"nodeName": "n1", "containers": [
        {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
        {"resources": {"requests": {"cpu": "750m", "memory": "512Mi"}}}]}
    items = [
        obj("ReplicaSet", "web-5d9", ("Deployment", "web")),
        obj("Pod", "web-5d9-a", ("ReplicaSet", "web-5d9"), spec=spec,
            status={"phase": "Running"}),
        obj("Pod", "api-1", ("ReplicaSet", "api-77"), spec=spec),
        obj("Job", "nightly-1", ("CronJob", "nightly")),
        obj("Pod", "nightly-1-x", ("Job", "nightly-1"), spec={}),
    ]
    (web,) = pods_of(items, "shop", "Deployment", "web")
    assert (web.name, web.node, web.cpu_request, web.memory_request, web.phase) == (
        "web-5d9-a", "n1", "1", "1Gi", "Running")
    assert [p.name for p in pods_of(items, "shop", "CronJob", "nightly")] == ["nightly-1-x"]
    assert pods_of(items, "other", "Deployment", "web") == []


def test_report_counts() -> None:
    assert count_reports(SeqSet.decode("1-40")) == 40
    assert count_reports(SeqSet.decode("1,5-7")) == 4
    assert count_reports(SeqSet.decode("..9,20-21")) == 12


def test_a_namespace_total_is_its_workload_records_added_up() -> None:
    items = json.loads(DUMP.read_text())["items"]
    inputs = bill_inputs(items, "Namespace", "shop", "shop", "all")
    assert [b.period for b in inputs] == ["2026-09", "2026-10", "2026-11"]
    for b in inputs:
        bill = explain(b)
        assert bill.parts_sum is not None and b.parts is not None
        assert {p.workload for p in b.parts} == {"web", "api"}
        assert bill.parts_sum["total"] == bill.status_total
        assert not [p for p in bill.problems if "workload records" in p]
    gone = [i for i in items if i["metadata"]["name"] != "deployment-api-2026-11"]
    (b,) = bill_inputs(gone, "Namespace", "shop", "shop", "2026-11")
    bill = explain(b)
    assert any("namespace-total-2026-11: status.cost.total of the namespace total" in p
               and "1 workload records" in p for p in bill.problems), bill.problems
