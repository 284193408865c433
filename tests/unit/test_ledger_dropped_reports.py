"""Reports a probe dropped on purpose (ProbeReport.gaps) and its threshold events, through
the in-process ingest: LedgerComplete=False on the records and the CostPolicy, the metric,
the seen-set settled; a dropped report the operator holds after all is no hole."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from kopeck.accounting.ledger import (
    NODE_KIND,
    WorkloadKey,
    allocation_name,
    from_status,
    namespace_total_key,
    status_patch,
)
from kopeck.accounting.periods import period_at
from kopeck.accounting.seqs import SeqSet
from kopeck.operator import metrics
from kopeck.operator.costpolicies import compute_status
from kopeck.operator.fold import dropped_in, mark_dropped, plan_dropped
from kopeck.operator.state import State
from tests.support.ingest import Client, FakeKube, body, post, run

DEPLOY = WorkloadKey("shop", "Deployment", "web", "apps/v1")
PERIOD = "2026-11"


def dropped_metric(node: str) -> float:
    value = metrics.REGISTRY.get_sample_value("kopeck_ledger_dropped_reports_total",
                                              {"node": node})
    return value or 0.0


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def stored(kube: FakeKube, key: WorkloadKey, period: str = PERIOD) -> dict[str, Any]:
    name = allocation_name(key, period)
    return next(s for p, s in kube.statuses.items() if f"/{name}/status" in p)


class EventKube(FakeKube):
    """FakeKube that also keeps the Events posted."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/events"):
            self.events.append(body)
        return await super().create(path, body)


def run_with_events(scenario: Any) -> None:
    run(scenario, EventKube)


def test_declared_gap_sets_conditions_metric_and_settles_seen() -> None:
    async def scenario(client: Client, state: State, kube: EventKube) -> None:
        before = dropped_metric("n1")
        for seq in (1, 2, 8, 9):
            assert (await post(client, body(seq), "good"))[0] == 200
        assert metrics.known_gaps(state.seen["n1/b"]) == 5  # 3-7 still expected
        carrying = {**body(10), "gaps": [{"fromSeq": 3, "toSeq": 7}]}
        assert await post(client, carrying, "good") == (200, {"accepted": True,
                                                              "duplicate": False})
        # the declared reports will never come: settled, no longer an open gap
        assert metrics.known_gaps(state.seen["n1/b"]) == 0
        assert all(s in state.seen["n1/b"] for s in range(3, 8))
        assert dropped_metric("n1") - before == 5
        # the workload record, its namespace total and the node's record, as written
        node_key = WorkloadKey(state.settings.namespace, NODE_KIND, "n1", "v1")
        for key in (DEPLOY, namespace_total_key("shop"), node_key):
            cond = conditions(stored(kube, key))["LedgerComplete"]
            assert cond["status"] == "False" and cond["reason"] == "ReportsDropped", key
            assert "node n1 boot b seq 3-7 (5 reports)" in cond["message"]
            assert "2026-11" in cond["message"]
        # the CostPolicy of the workload says so too, with an Event on the transition
        status, events = compute_status(state, state.policies["p"],
                                        dt.datetime(2026, 11, 23, 13, tzinfo=dt.UTC), time.time())
        pol = conditions(status)["LedgerComplete"]
        assert pol["status"] == "False" and pol["reason"] == "ReportsDropped"
        assert "in 2026-11: node n1 boot b seq 3-7 (5 reports)" in pol["message"]
        assert [e for e in events if e[0] == "ReportsDropped" and e[2] == "Warning"]
        await asyncio.sleep(0.05)  # the Event on the node's Allocation is fire-and-forget
        told = [e for e in kube.events if e["reason"] == "ReportsDropped"]
        assert len(told) == 1
        assert told[0]["involvedObject"]["name"] == allocation_name(node_key, PERIOD)
        assert "3-7 (5)" in told[0]["message"]
        # a resend of the carrying report counts nothing twice
        assert (await post(client, carrying, "good"))[1]["duplicate"] is True
        assert dropped_metric("n1") - before == 5

    run_with_events(scenario)


def test_gap_the_operator_holds_is_no_hole() -> None:
    """The probe dropped reports whose ack it never heard: the ledger has them."""
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        before = dropped_metric("n1")
        for seq in range(1, 6):
            assert (await post(client, body(seq), "good"))[0] == 200
        carrying = {**body(6), "gaps": [{"fromSeq": 2, "toSeq": 4}]}
        assert (await post(client, carrying, "good"))[0] == 200
        assert "LedgerComplete" not in conditions(stored(kube, DEPLOY))
        assert dropped_metric("n1") == before
        status, _ = compute_status(state, state.policies["p"],
                                   dt.datetime(2026, 11, 23, 13, tzinfo=dt.UTC), time.time())
        assert conditions(status)["LedgerComplete"]["status"] == "True"

    run(scenario)


def test_gap_of_an_earlier_boot_marks_that_boots_records_only() -> None:
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        for seq in (1, 2):
            assert (await post(client, body(seq), "good"))[0] == 200
        new_boot = {**body(0), "bootId": "b2", "intervalStart": body(20)["intervalStart"],
                    "intervalEnd": body(20)["intervalEnd"],
                    "gaps": [{"fromSeq": 3, "toSeq": 9, "bootId": "b"}]}
        assert (await post(client, new_boot, "good"))[0] == 200
        cond = conditions(stored(kube, DEPLOY))["LedgerComplete"]
        assert "node n1 boot b seq 3-9 (7 reports)" in cond["message"]
        assert all(s in state.seen["n1/b"] for s in range(3, 10))
        assert "n1/b2" not in dropped_in(state.accs[(DEPLOY, PERIOD)])

    run(scenario)


def test_threshold_events_become_events_on_the_workload() -> None:
    async def scenario(client: Client, state: State, kube: EventKube) -> None:
        before = metrics.REGISTRY.get_sample_value("kopeck_threshold_events_total",
                                                   {"kind": "CpuHigh"}) or 0.0
        crossing = {**body(1), "trigger": "threshold", "events": [
            {"podUid": "u1", "kind": "CpuHigh", "value": 0.97, "threshold": 0.9},
            {"podUid": "unknown", "kind": "Idle", "value": 0.01, "threshold": 0.05},
        ]}
        assert (await post(client, crossing, "good"))[0] == 200
        await asyncio.sleep(0.05)
        mine = [e for e in kube.events if e["reason"] == "PodCpuHigh"]
        assert len(mine) == 1 and mine[0]["type"] == "Warning"
        assert mine[0]["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "web", "namespace": "shop"}
        assert "shop/web-1" in mine[0]["message"] and "97%" in mine[0]["message"]
        after = metrics.REGISTRY.get_sample_value("kopeck_threshold_events_total",
                                                  {"kind": "CpuHigh"})
        assert after == before + 1
        assert (await post(client, crossing, "good"))[1]["duplicate"] is True
        await asyncio.sleep(0.05)
        assert len([e for e in kube.events if e["reason"] == "PodCpuHigh"]) == 1

    run_with_events(scenario)


def test_condition_survives_restore_and_merges_later_gaps() -> None:
    window = period_at("Monthly", dt.datetime(2026, 11, 23, tzinfo=dt.UTC))
    acc = from_status(DEPLOY, window, None, "p")
    at = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    assert mark_dropped(acc, "n1", "b", SeqSet(ranges=[(3, 7)]), at)
    restored = from_status(DEPLOY, window, status_patch(acc), "p")
    assert {k: v.encode() for k, v in dropped_in(restored).items()} == {"n1/b": "3-7"}
    assert not mark_dropped(restored, "n1", "b", SeqSet(ranges=[(4, 5)]), at)  # nothing new
    assert mark_dropped(restored, "n1", "b", SeqSet(ranges=[(12, 13)]), at)
    assert mark_dropped(restored, "n2", "c", SeqSet(ranges=[(1, 1)]), at)
    got = dropped_in(from_status(DEPLOY, window, status_patch(restored), "p"))
    assert {k: v.encode() for k, v in got.items()} == {"n1/b": "3-7,12-13", "n2/c": "1"}


def test_plan_bounds_the_hole_by_the_records_around_it() -> None:
    """Only records the node fed in a period the hole can lie in are marked."""
    from kopeck.accounting.ledger import Accumulator

    def acc(key: WorkloadKey, month: int, seqs: str, mark: str = "n1/b") -> Accumulator:
        window = period_at("Monthly", dt.datetime(2026, month, 10, tzinfo=dt.UTC))
        out = Accumulator(key=key, period=window)
        out.folded = {mark: SeqSet.decode(seqs)}
        return out

    old = WorkloadKey("shop", "Job", "october-only", "batch/v1")
    before = WorkloadKey("shop", "Deployment", "november", "apps/v1")
    after = WorkloadKey("shop", "Deployment", "december", "apps/v1")
    other = WorkloadKey("shop", "Deployment", "other-boot", "apps/v1")
    accs = {
        (old, "2026-10"): acc(old, 10, "0-20"),
        (before, "2026-11"): acc(before, 11, "21-40"),
        (after, "2026-12"): acc(after, 12, "51-60"),
        (other, "2026-11"): acc(other, 11, "0-90", mark="n1/other"),
    }
    carrying = dt.datetime(2026, 12, 20, tzinfo=dt.UTC)
    plan = plan_dropped(accs, "n1", "b", 41, 50, carrying)
    assert plan.missing.encode() == "41-50"
    assert plan.after == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert plan.before == carrying  # the carrying report's start is the tighter bound
    assert sorted(plan.records) == sorted([(before, "2026-11"), (after, "2026-12")])
    partly = plan_dropped(accs, "n1", "b", 38, 45, carrying)  # 38-40 are folded
    assert partly.missing.encode() == "41-45"
    assert plan_dropped(accs, "n1", "b", 22, 30, carrying).records == []  # nothing missing


def test_gap_naming_unsent_seqs_is_ignored_not_settled() -> None:
    """A gap of the carrying report's own boot can only name older seqs: settling later
    ones would turn the reports still to come into duplicates, acked and never folded."""
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        assert (await post(client, body(1), "good"))[0] == 200
        bogus = {**body(2), "gaps": [{"fromSeq": 5, "toSeq": 1_000_000}]}
        assert (await post(client, bogus, "good"))[0] == 200
        assert 5 not in state.seen["n1/b"]
        assert await post(client, body(5), "good") == (200, {"accepted": True,
                                                             "duplicate": False})
        assert "LedgerComplete" not in conditions(stored(kube, DEPLOY))

    run(scenario)
