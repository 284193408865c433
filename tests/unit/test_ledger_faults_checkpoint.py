"""Checkpoint faults: a dropped apiserver connection, a refused write, a resend in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from kopeck.operator.allocations import Checkpointer
from kopeck.operator.ingest import Ingest
from kopeck.operator.kube import ApiError
from kopeck.operator.probe_auth import Probe
from kopeck.operator.state import State
from tests.support.ingest import PROBE, Client, FakeKube, body, make_state, post


class FaultyKube(FakeKube):
    """Status writes fail with `fault` while it is set; `gate` holds writes while clear."""

    def __init__(self) -> None:
        super().__init__()
        self.fault: BaseException | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        await self.gate.wait()
        if self.fault is not None:
            raise self.fault
        return await super().merge_patch(path, body)


def run(scenario: Any) -> None:
    async def main() -> None:
        kube = FaultyKube()
        state = make_state(kube)
        checkpointer = Checkpointer(state)
        task = asyncio.create_task(checkpointer.run())
        ingest = Ingest(state, checkpointer)

        async def authenticate(token: str) -> Probe:
            return Probe(username=PROBE, node="n1")

        ingest.reviewer.authenticate = authenticate  # type: ignore[method-assign]
        client = TestClient(TestServer(ingest.app()))
        await client.start_server()
        try:
            await scenario(client, state, kube, task)
        finally:
            await client.close()
            task.cancel()

    asyncio.run(main())


def saved_folded(kube: FakeKube) -> Any:
    return next((s["folded"] for p, s in kube.statuses.items() if "deployment-web" in p), None)


def test_a_dropped_connection_keeps_the_records_dirty_and_the_checkpointer_alive() -> None:
    async def scenario(client: Client, state: State, kube: FaultyKube, task: Any) -> None:
        kube.fault = aiohttp.ServerDisconnectedError()
        code, _ = await asyncio.wait_for(post(client, body(1), "good"), 5)
        assert code == 503
        kube.fault = None
        code, _ = await asyncio.wait_for(post(client, body(1), "good"), 5)
        assert code == 200
        assert saved_folded(kube) == {"n1/b": "1"}  # the record was written, not dropped
        assert not task.done()

    run(scenario)


def test_a_refused_write_is_not_acknowledged_and_the_record_is_kept() -> None:
    async def scenario(client: Client, state: State, kube: FaultyKube, task: Any) -> None:
        kube.fault = ApiError(422, {"message": "refused"}, "PATCH")
        code, _ = await asyncio.wait_for(post(client, body(1), "good"), 5)
        assert code != 200  # not written: the probe must keep the report
        assert any("web" in k[0].name for k in state.accs)  # the accumulator is kept
        kube.fault = None
        code, _ = await asyncio.wait_for(post(client, body(2), "good"), 5)
        assert code == 200
        assert saved_folded(kube) == {"n1/b": "1-2"}  # never less than it held

    run(scenario)


def test_a_duplicate_waits_until_the_first_fold_is_durable() -> None:
    async def scenario(client: Client, state: State, kube: FaultyKube, task: Any) -> None:
        kube.gate.clear()
        first = asyncio.create_task(post(client, body(1), "good"))
        await asyncio.wait_for(kube.entered.wait(), 5)  # the write is in flight
        second = asyncio.create_task(post(client, body(1), "good"))
        await asyncio.sleep(0.3)
        assert not second.done()  # not acked while the fold is not durable
        kube.fault = ApiError(503, {"message": "etcd is sad"}, "PATCH")
        kube.gate.set()
        assert (await asyncio.wait_for(first, 5))[0] == 503
        assert (await asyncio.wait_for(second, 5))[0] == 503

    run(scenario)


class OneRecordRefusedKube(FaultyKube):
    """The apiserver refuses one record for good (its namespace is gone): 404."""

    refused = "/namespaces/shop/"

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.refused in path:
            raise ApiError(404, {"message": "namespace shop not found"}, "PATCH")
        return await super().merge_patch(path, body)


def test_a_record_refused_for_good_holds_back_only_the_reports_that_changed_it() -> None:
    import datetime as dt
    from decimal import Decimal

    from kopeck.operator.costpolicies import remember
    from kopeck.operator.state import PodInfo
    from kopeck.operator.workloads import PodShape, Workload, WorkloadKey
    from tests.support.operator import pod_usage, policy_manifest, report

    async def main() -> None:
        kube = OneRecordRefusedKube()
        state = make_state(kube)
        remember(state, __import__("json").loads(policy_manifest("q", "other", amount=None)))
        state.namespaces["other"] = {"kubernetes.io/metadata.name": "other"}
        state.pods["u2"] = PodInfo("u2", "other", "api-1", "n2",
                                   Workload(WorkloadKey("other", "Deployment", "api", "apps/v1")),
                                   PodShape(Decimal(1), Decimal(2**30)))
        checkpointer = Checkpointer(state)
        task = asyncio.create_task(checkpointer.run())
        ingest = Ingest(state, checkpointer)

        async def authenticate(token: str) -> Probe:
            return Probe(username=PROBE, node=None)

        ingest.reviewer.authenticate = authenticate  # type: ignore[method-assign]
        client = TestClient(TestServer(ingest.app()))
        await client.start_server()
        try:
            code, _ = await asyncio.wait_for(post(client, body(1), "good"), 10)
            assert code == 503  # shop's record cannot be written: never acked
            other = report(node="n2", boot_id="b2", seq=1,
                           end=dt.datetime(2026, 11, 23, 12, 0, 5, tzinfo=dt.UTC),
                           pods=[pod_usage("u2", "other", "api-1", cpu_core_seconds=1,
                                           working_set=2**20)])
            code, _ = await asyncio.wait_for(post(client, other, "good"), 10)
            assert code == 200  # a report that did not change shop's record is not held back
            assert any("/namespaces/other/" in p for p in kube.statuses)
            code, _ = await asyncio.wait_for(post(client, body(1), "good"), 10)
            assert code == 503  # still not written: still not acked
        finally:
            await client.close()
            task.cancel()

    asyncio.run(main())
