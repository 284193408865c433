"""The ingest endpoint without a cluster: auth outcomes, bad bodies, de-dup, ack after save."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from kopeck.accounting.ledger import WorkloadKey
from kopeck.operator.state import State
from tests.support.ingest import Client, FakeKube, body, post, run
from tests.support.operator import pod_usage, report


def test_auth_outcomes_and_bad_bodies() -> None:
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        assert (await post(client, body(1), None))[0] == 401
        assert (await post(client, body(1), "forged"))[0] == 401
        code, answer = await post(client, body(1), "other")
        assert code == 403 and "may not post" in answer["error"]
        assert (await post(client, b"{", "good"))[0] == 400
        assert (await post(client, {**body(1), "node": ""}, "good"))[0] == 400
        assert (await post(client, [1, 2], "good"))[0] == 400
        assert kube.statuses == {}  # nothing written for any of these
        reviews = kube.reviews
        await post(client, b"{", "good")
        assert kube.reviews == reviews  # the verdict on a token is cached

    run(scenario)


def test_accepted_then_duplicate_and_ack_only_after_save() -> None:
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        assert await post(client, body(1), "good") == (200, {"accepted": True,
                                                             "duplicate": False})
        saved = next(s for p, s in kube.statuses.items() if "deployment-web" in p)
        assert saved["folded"] == {"n1/b": "1"}
        assert await post(client, body(1), "good") == (200, {"accepted": True,
                                                             "duplicate": True})
        kube.fail_writes = True  # the apiserver refuses: no ack, the probe keeps the report
        code, _ = await post(client, body(2), "good")
        assert code == 503
        kube.fail_writes = False
        assert (await post(client, body(2), "good"))[0] == 200  # the resend is saved now
        saved = next(s for p, s in kube.statuses.items() if "deployment-web" in p)
        assert saved["folded"] == {"n1/b": "1-2"}

    run(scenario)


def test_standby_and_warming_up_answer_503() -> None:
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        state.ready = False
        assert (await post(client, body(1), "good"))[0] == 503
        state.ready, state.active = True, False
        code, answer = await post(client, body(1), "good")
        assert code == 503 and "standby" in answer["error"]

    run(scenario)


def test_a_report_from_the_future_is_refused_with_the_reason() -> None:
    """A node clock far ahead would open future periods: refused (422, kept by the probe);
    a clock a couple of minutes ahead is fine."""

    def ending(seq: int, ahead: dt.timedelta) -> dict[str, Any]:
        end = dt.datetime.now(dt.UTC).replace(microsecond=0) + ahead
        return report(node="n1", boot_id="clock", seq=seq, end=end, pods=[
            pod_usage("u1", "shop", "web-1", cpu_core_seconds=1, working_set=2**20)])

    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        code, answer = await post(client, ending(1, dt.timedelta(hours=3)), "good")
        assert code == 422
        assert "n1/clock/1" in answer["error"] and "ahead of the operator's clock" in answer["error"]
        assert kube.statuses == {} and not state.accs
        code, _ = await post(client, ending(2, dt.timedelta(minutes=2)), "good")
        assert code == 200

    run(scenario)


def test_a_pod_gone_from_the_apiserver_is_charged_to_its_deployment_from_its_report() -> None:
    """A pod deleted while the operator was down (its ReplicaSet and Deployment gone too):
    the buffered report carries its controller, pod-template-hash and requests, so it lands
    in the Deployment's record priced at max(request, usage), not in a bare-Pod record."""
    pod = {"metadata": {"uid": "u9", "namespace": "shop", "name": "web-7d9f-x1",
                        "labels": {"app": "web", "pod-template-hash": "7d9f"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                             "name": "web-7d9f", "uid": "rs-1",
                                             "controller": True}]},
           "spec": {"containers": [{"name": "app", "resources": {
               "requests": {"cpu": "2", "memory": "1Gi"}}}]}}
    usage = pod_usage("u9", "shop", "web-7d9f-x1", cpu_core_seconds=1, working_set=2**20,
                      pod=pod)
    assert usage["owner"]["name"] == "web-7d9f" and usage["templateHash"] == "7d9f"
    assert usage["requests"] == {"cpuCores": 2.0, "memoryBytes": 2**30}
    end = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)

    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        body = report(node="n1", boot_id="gone", seq=1, end=end, pods=[usage])
        assert (await post(client, body, "good"))[0] == 200
        keys = {(k.kind, k.name) for k, _ in state.accs}
        assert ("Deployment", "web") in keys and ("Pod", "web-7d9f-x1") not in keys
        acc = state.accs[(WorkloadKey("shop", "Deployment", "web", "apps/v1"), "2026-11")]
        assert acc.requested_cpu_core_seconds == Decimal(10)  # 2 cores requested x 5 s
        assert acc.cpu_core_seconds == Decimal(1)

    run(scenario)
