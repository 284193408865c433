"""The ingest endpoint in-process for unit tests: a fake apiserver (TokenReviews from USERS,
Allocation writes recorded with resourceVersions, or failing), a State with one policy and
one pod, and a test client posting reports to it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import WorkloadKey
from kopeck.operator.allocations import Checkpointer
from kopeck.operator.costpolicies import remember
from kopeck.operator.ingest import Ingest
from kopeck.operator.kube import ApiError, Credentials, Kube
from kopeck.operator.probe_auth import ProbeAuthenticator
from kopeck.operator.settings import Settings
from kopeck.operator.state import PodInfo, State
from kopeck.operator.workloads import OwnerResolver, Workload
from tests.support.operator import pod_usage, policy_manifest, report

Client = TestClient[web.Request, web.Application]
PROBE = "system:serviceaccount:ops:probe"
USERS = {"good": PROBE, "other": "system:serviceaccount:shop:default"}


class FakeKube(Kube):
    """TokenReviews answered from USERS; Allocation writes recorded (or failing)."""

    def __init__(self) -> None:
        super().__init__(Credentials("https://127.0.0.1:1", None))
        self.statuses: dict[str, dict[str, Any]] = {}
        self.fail_writes = False
        self.reviews = 0
        self.version = 0

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/tokenreviews"):
            self.reviews += 1
            user = USERS.get(body["spec"]["token"])
            return {"status": {"authenticated": user is not None,
                               "user": {"username": user} if user else {}}}
        return self._stored(body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_writes:
            raise ApiError(503, {"message": "etcd is sad"}, "PATCH")
        self.statuses[path] = body["status"]
        return self._stored(body)

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        """The object as the apiserver answers a write: with a new resourceVersion."""
        self.version += 1
        return {**body, "metadata": {**body.get("metadata", {}),
                                     "resourceVersion": str(self.version)}}

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        return None


def make_state(kube: FakeKube) -> State:
    # Plain tokens, as this fake's TokenReview knows them (node binding: test_probe_auth).
    settings = Settings(probe_service_accounts="ops:probe", checkpoint_interval=0.01,
                        probe_audience="", require_node_binding=False)
    state = State(settings, kube, OwnerResolver(kube))
    remember(state, json.loads(policy_manifest("p", "shop", amount=None)))
    state.namespaces["shop"] = {"kubernetes.io/metadata.name": "shop"}
    state.pods["u1"] = PodInfo("u1", "shop", "web-1", "n1",
                               Workload(WorkloadKey("shop", "Deployment", "web", "apps/v1")),
                               PodShape(Decimal(1), Decimal(2**30)))
    state.ready = True
    return state


def body(seq: int) -> dict[str, Any]:
    return report(node="n1", boot_id="b", seq=seq,
                  end=dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC) + dt.timedelta(seconds=5 * seq),
                  pods=[pod_usage("u1", "shop", "web-1", cpu_core_seconds=1, working_set=2**20)])


def run(scenario: Any, kube_type: type[FakeKube] | None = None) -> None:
    """Run `scenario(client, state, kube)` against a fresh in-process ingest."""
    async def main() -> None:
        kube = (kube_type or FakeKube)()
        state = make_state(kube)
        checkpointer = Checkpointer(state)
        task = asyncio.create_task(checkpointer.run())
        ingest = Ingest(state, checkpointer, reviewer=ProbeAuthenticator(state, kube))
        client = TestClient(TestServer(ingest.app()))
        await client.start_server()
        try:
            await scenario(client, state, kube)
        finally:
            await client.close()
            task.cancel()

    asyncio.run(main())


async def post(client: Client, payload: Any, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    resp = await client.post("/v1/reports", data=data, headers=headers)
    return resp.status, await resp.json()
