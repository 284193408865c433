"""A reservation holds until the pods it was made for report, through the real apiserver.

Scaling a Deployment from 1 to 20 reserves the 19 new pods' spend; the one old pod reports
at once, and a second scale-up right after must still be judged against the first (the
reservation was released at the workload's first report before, so the second scale-up
was admitted against a projection without the 19 pods: a budget bypass). Once the new pods
report, their own usage carries the projection and the reservation ends.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from kopeck.localcluster.handle import ClusterHandle
from tests.support.budget import apply_policy, delete_policy, per_deployment
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    probe_token,
    report,
    running_operator,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster


@pytest.fixture
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op"),
                          extra=["--status-interval", "1"]) as proc:
        yield proc


def test_a_reservation_holds_until_its_own_pods_report(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    kubectl = cluster.kubectl
    per = per_deployment()  # one 1-CPU / 1-GiB pod to the end of the month
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 25), enforcement="Deny")
    token = probe_token(kubectl, op)
    node, boot, seq = f"resv-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex, 0

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(kubectl(
            "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
        return items

    def post(items: list[dict[str, Any]]) -> None:
        nonlocal seq
        seq += 1
        body = report(node=node, boot_id=boot, seq=seq, end=dt.datetime.now(dt.UTC), pods=[
            pod_usage(p["metadata"]["uid"], namespace, p["metadata"]["name"],
                      cpu_core_seconds=0.1, working_set=2**26, pod=p) for p in items])
        code, answer = op.post(body, token)
        assert code == 200, answer

    def reservation() -> dict[str, Any] | None:
        status = json.loads(kubectl("get", "costpolicy", namespace, "-o", "json").stdout
                            ).get("status") or {}
        return next((r for r in status.get("reservations") or []
                     if r["key"] == f"{namespace}/Deployment/web"), None)

    try:
        kubectl("apply", "-f", "-", input=deployment_manifest("web", namespace, replicas=1))
        eventually(lambda: len(pods()) == 1, timeout=30, what="web's pod")
        first = pods()
        post(first)
        eventually(lambda: reservation() is None, timeout=15,
                   what="the create's reservation released by its pod's report")
        kubectl("scale", "deployment/web", "-n", namespace, "--replicas=20")
        held = reservation()
        assert held is not None and held["newPods"] == 19, held
        assert abs(Decimal(held["amount"]) - per * 19) < Decimal("0.01")
        post(first)  # the old pod reports at once; the 19 new ones have not yet
        eventually(lambda: len(pods()) == 20, timeout=30, what="the 19 new pods")
        for _ in range(3):  # status cycles (1 s) pass while only the old pod reports
            post(first)
            time.sleep(1.0)
        assert reservation() is not None, "released before the new pods reported"
        res = kubectl("scale", "deployment/web", "-n", namespace, "--replicas=30",
                      check=False)
        assert res.returncode != 0 and "denied the request" in res.stderr, (
            "a second scale-up was judged without the first one's pods: "
            f"{res.stdout}{res.stderr}")
        post(pods())  # the new pods report: their usage carries the projection now
        eventually(lambda: reservation() is None, timeout=15,
                   what="the scale-up's reservation released once its pods reported")
    finally:
        delete_policy(cluster, namespace)
