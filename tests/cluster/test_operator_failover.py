"""Two replicas with kopf peering: one active, one on standby; killing the active hands over."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path

import pytest

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)

pytestmark = pytest.mark.cluster


def test_killing_the_active_replica_hands_over(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    peering = f"kopeck-{uuid.uuid4().hex[:6]}"
    common = ["--peering", peering, "--peering-lifetime", "5", "--status-interval", "1"]
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "a",
                          extra=[*common, "--priority", "100"]) as a, \
         running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "b",
                          extra=[*common, "--priority", "50"], namespace=a.namespace) as b:
        try:
            run_failover(cluster, namespace, a, b)
        finally:
            cluster.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found",
                            check=False)
            cluster.kubectl("delete", "costpolicy", namespace, "--ignore-not-found", check=False)


def run_failover(cluster: ClusterHandle, namespace: str, a: OperatorProcess,
                 b: OperatorProcess) -> None:
    a.wait_active(True, timeout=30)
    b.wait_active(False, timeout=5)
    token = probe_token(cluster.kubectl, a)
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(namespace, namespace,
                                                              amount="1000", enforcement="Warn"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest("svc", namespace))
    deadline = time.monotonic() + 30
    pods: list[dict[str, object]] = []
    while not pods and time.monotonic() < deadline:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json")
                          .stdout)["items"]
        time.sleep(0.3)
    meta = pods[0]["metadata"]
    assert isinstance(meta, dict)
    node, boot, now = "kt-failover", uuid.uuid4().hex, dt.datetime.now(dt.UTC)

    def body(seq: int) -> dict[str, object]:
        return report(node=node, boot_id=boot, seq=seq, end=now + dt.timedelta(seconds=5 * seq),
                      pods=[pod_usage(str(meta["uid"]), namespace, str(meta["name"]),
                                      cpu_core_seconds=0.5, working_set=2**29)])

    assert b.post(body(1), token)[0] == 503  # standby refuses: the probe retries elsewhere
    assert a.post(body(1), token) == (200, {"accepted": True, "duplicate": False})

    a.kill()
    took = b.wait_active(True, timeout=30)
    assert took < 15, f"handover took {took:.1f}s"
    assert b.post(body(1), token) == (200, {"accepted": True, "duplicate": True})
    assert b.post(body(2), token) == (200, {"accepted": True, "duplicate": False})
    period = period_at("Monthly", now).name
    st = json.loads(cluster.kubectl("get", "alloc", "-n", namespace, f"deployment-svc-{period}",
                                    "-o", "json").stdout)["status"]
    assert st["folded"] == {f"{node}/{boot}": "1-2"}
    # kopf's handlers resumed in b too: a spec change is reflected in status by b
    cluster.kubectl("patch", "costpolicy", namespace, "--type=merge",
                    "-p", '{"spec":{"budget":{"amount":2000}}}')
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pol = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
        if pol.get("status", {}).get("observedGeneration") == pol["metadata"]["generation"]:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"standby never took over the CostPolicy status\n{b.log_tail()}")
