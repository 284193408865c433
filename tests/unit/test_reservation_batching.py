"""Reservations of concurrent admissions: decided one after the other in arrival order, but
written to the policy status together (one read and one write per burst, not per admission).

A fake apiserver with resourceVersion preconditions and a delay per round trip stands in for
the real one; the cluster tests (test_webhook_budget.py) run the same path for real.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

from kopeck.accounting.budget import Projection
from kopeck.accounting.matching import NamedPolicy
from kopeck.api.costpolicy import CostPolicySpec
from kopeck.operator.kube import ApiError
from kopeck.operator.settings import Settings
from kopeck.operator.state import State
from kopeck.operator.webhook import reserve
from tests.support.operator import policy_manifest

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


class FakeKube:
    """The policy object, its resourceVersion, and the writes made to its status."""

    def __init__(self, conflicts: int = 0) -> None:
        self.status: dict[str, Any] = {"reservations": []}
        self.rv = 1
        self.reads = self.writes = 0
        self.conflicts = conflicts

    async def get(self, path: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        self.reads += 1
        return {"metadata": {"resourceVersion": str(self.rv)}, "status": copy.deepcopy(self.status)}

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        if self.conflicts:  # someone else wrote the policy in between
            self.conflicts -= 1
            self.rv += 1
        if body["metadata"]["resourceVersion"] != str(self.rv):
            raise ApiError(409, {"message": "the object has been modified"}, path)
        self.status.update(copy.deepcopy(body["status"]))
        self.rv += 1
        self.writes += 1
        return {"metadata": {"resourceVersion": str(self.rv)}, "status": copy.deepcopy(self.status)}

    def release(self, keys: set[str]) -> None:
        """Another writer (a delete's release) drops reservations."""
        self.status["reservations"] = [r for r in self.status["reservations"]
                                       if r["key"] not in keys]
        self.rv += 1


def setup(kube: FakeKube) -> tuple[State, NamedPolicy]:
    """A state over the fake apiserver and a policy of its own (the webhook keeps one lock
    per policy name, bound to the event loop of its first use)."""
    state = State(Settings(namespace="ops"), kube, None)  # type: ignore[arg-type]
    name = f"team-{uuid.uuid4().hex[:6]}"
    spec = json.loads(policy_manifest(name, "shop", amount="10"))["spec"]
    return state, NamedPolicy(name, CostPolicySpec.model_validate(spec))


def one_dollar_each(reserved: Decimal) -> Projection:
    """Each admission adds 1 to a budget of 10 with nothing spent."""
    return Projection(added_per_second=Decimal("0.000001"), added_to_period_end=Decimal(1),
                      added_monthly=Decimal(1), spent=Decimal(0), committed=Decimal(0),
                      reserved=reserved, amount=Decimal(10))


async def burst(state: State, policy: NamedPolicy, keys: list[str]) -> list[Projection]:
    return list(await asyncio.gather(
        *(reserve(state, policy, key, one_dollar_each, NOW) for key in keys)))


def test_a_burst_is_decided_in_arrival_order_with_one_read_and_two_writes() -> None:
    kube = FakeKube()
    state, policy = setup(kube)
    keys = [f"shop/Deployment/w{i:02d}" for i in range(30)]
    decided = asyncio.run(burst(state, policy, keys))
    admitted = [k for k, p in zip(keys, decided, strict=True) if not p.over_budget]
    assert admitted == keys[:10]  # exactly what fits, first come first served
    assert [p.reserved for p in decided[:10]] == [Decimal(i) for i in range(10)]
    assert {r["key"] for r in kube.status["reservations"]} == set(keys[:10])
    assert Decimal(kube.status["reserved"]) == Decimal(10)
    assert kube.writes == 2, f"{kube.writes} status writes for one burst"
    assert kube.reads == 1, f"{kube.reads} reads for one burst"
    assert state.counters["reservations"] == 10


def test_the_same_workload_twice_in_one_burst_adds_up_as_in_sequence() -> None:
    kube = FakeKube()
    state, policy = setup(kube)
    keys = ["shop/Deployment/a", "shop/Deployment/b", "shop/Deployment/b"]
    asyncio.run(burst(state, policy, keys))
    amounts = {r["key"]: Decimal(r["amount"]) for r in kube.status["reservations"]}
    assert amounts == {"shop/Deployment/a": Decimal(1), "shop/Deployment/b": Decimal(2)}


def test_a_conflicting_write_redecides_the_burst_on_a_fresh_read() -> None:
    kube = FakeKube(conflicts=1)
    kube.status = {"reservations": [{"key": "shop/Deployment/old", "amount": "4.000000",
                                     "expires": "2026-11-23T13:00:00Z"}], "reserved": "4"}
    state, policy = setup(kube)
    keys = [f"shop/Deployment/w{i}" for i in range(8)]
    decided = asyncio.run(burst(state, policy, keys))
    assert [not p.over_budget for p in decided] == [True] * 6 + [False] * 2
    assert Decimal(kube.status["reserved"]) == Decimal(10)
    assert state.counters["reservation_conflicts"] == 1


def test_a_burst_of_denials_on_our_last_write_reads_again_before_it_stands() -> None:
    kube = FakeKube()
    state, policy = setup(kube)
    first = [f"shop/Deployment/a{i}" for i in range(10)]
    later = [f"shop/Deployment/b{i}" for i in range(6)]

    async def scenario() -> list[Projection]:
        await burst(state, policy, first)  # the budget is full; our write is remembered
        kube.release(set(first[:4]))  # deletes freed 4 behind our back
        return await burst(state, policy, later)

    decided = asyncio.run(scenario())
    assert [not p.over_budget for p in decided] == [True] * 4 + [False] * 2
    assert Decimal(kube.status["reserved"]) == Decimal(10)


def test_the_same_change_admitted_again_is_reserved_once() -> None:
    """The apiserver runs admission again for one change (a patch retried after a conflict,
    a client's retry): decided as the first time, not reserved twice; another change of the
    same workload adds up."""
    kube = FakeKube()
    state, policy = setup(kube)

    async def scenario() -> list[Projection]:
        key = "shop/Deployment/web"
        first = await reserve(state, policy, key, one_dollar_each, NOW, change="3->5")
        again = await reserve(state, policy, key, one_dollar_each, NOW, change="3->5")
        other = await reserve(state, policy, key, one_dollar_each, NOW, change="5->7")
        return [first, again, other]

    first, again, other = asyncio.run(scenario())
    (entry,) = kube.status["reservations"]
    assert Decimal(entry["amount"]) == Decimal(2)
    assert {k: Decimal(v) for k, v in entry["changes"].items()} == {
        "3->5": Decimal(1), "5->7": Decimal(1)}
    assert not again.over_budget and again.reserved == first.reserved == Decimal(0)
    assert other.reserved == Decimal(1)
    assert kube.writes == 2
