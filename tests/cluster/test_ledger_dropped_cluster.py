"""A probe that declares dropped reports (ProbeReport.gaps) leaves a bill that says so: the
CostPolicy and the Allocations carry LedgerComplete=False as stored by the real apiserver,
the metric counts the hole, an Event names it, and the condition outlives an operator restart."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def get_json(cluster: ClusterHandle, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return out


def test_dropped_reports_mark_policy_and_allocations_durably(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="100", enforcement="Warn"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "api", namespace, replicas=1, cpu="100m", memory="64Mi"))
    pods = eventually(lambda: get_json(cluster, "pods", "-n", namespace)["items"],
                      timeout=30, what="a pod of the Deployment")
    uid, name = pods[0]["metadata"]["uid"], pods[0]["metadata"]["name"]
    node, boot = f"kt-dropped-{uuid.uuid4().hex[:4]}", uuid.uuid4().hex
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)

    def body(seq: int, **extra: Any) -> dict[str, Any]:
        return {**report(node=node, boot_id=boot, seq=seq,
                         end=start + dt.timedelta(seconds=5 * seq),
                         pods=[pod_usage(uid, namespace, name, cpu_core_seconds=0.05,
                                         working_set=32 * 2**20)]), **extra}

    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op") as op:
        token = probe_token(cluster.kubectl, op)
        for seq in (1, 2, 8):
            assert op.post(body(seq), token)[0] == 200, op.log_tail()
        code, ack = op.post(body(9, gaps=[{"fromSeq": 3, "toSeq": 7}]), token)
        assert (code, ack) == (200, {"accepted": True, "duplicate": False}), op.log_tail()
        text = op.metrics()
        assert f'kopeck_ledger_dropped_reports_total{{node="{node}"}} 5.0' in text
        want = f"node {node} boot {boot} seq 3-7 (5 reports)"

        # the Allocations as stored by the apiserver: the workload's and the node's
        allocs = get_json(cluster, "alloc", "-n", namespace)["items"]
        mine = next(a for a in allocs if a["spec"]["workloadRef"]["kind"] == "Deployment")
        cond = conditions(mine)["LedgerComplete"]
        assert (cond["status"], cond["reason"]) == ("False", "ReportsDropped")
        assert want in cond["message"]
        nodes = get_json(cluster, "alloc", "-n", op.namespace)["items"]
        node_rec = next(a for a in nodes if a["spec"]["workloadRef"]["name"] == node)
        assert want in conditions(node_rec)["LedgerComplete"]["message"]

        def policy_says() -> dict[str, Any] | None:
            c = conditions(get_json(cluster, "cpol", namespace)).get("LedgerComplete")
            return c if c and c["status"] == "False" else None

        pol = eventually(policy_says, timeout=20, what="CostPolicy LedgerComplete=False")
        assert pol is not None
        assert pol["reason"] == "ReportsDropped" and want in pol["message"]
        period = mine["spec"]["period"]["name"]
        assert f"in {period}:" in pol["message"]
        events = eventually(lambda: get_json(
            cluster, "events", "-n", op.namespace,
            "--field-selector=reason=ReportsDropped")["items"],
            timeout=10, what="a ReportsDropped Event on the node's Allocation")
        assert events[0]["involvedObject"]["name"] == node_rec["metadata"]["name"]
        transition = pol["lastTransitionTime"]
        spent_before = get_json(cluster, "cpol", namespace)["status"]["spent"]

        # a restart: the records' stored conditions keep the policy's condition False
        op.stop()
        op.start()
        token = probe_token(cluster.kubectl, op)
        assert op.post(body(10), token)[0] == 200, op.log_tail()

        def rewritten() -> dict[str, Any] | None:
            pol = get_json(cluster, "cpol", namespace)
            return pol if pol["status"]["spent"] != spent_before else None

        after = eventually(rewritten, timeout=20, what="the CostPolicy status rewritten")
        assert after is not None
        cond = conditions(after)["LedgerComplete"]
        assert cond["status"] == "False" and want in cond["message"], cond
        assert cond["lastTransitionTime"] == transition
