"""A spend spike is flagged within 5 s of the report that carried it."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator

import pytest

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
GI = 2**30


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig,
                          tmp_path_factory.mktemp("op")) as proc:
        yield proc


def test_spike_sets_condition_event_and_metric_within_5s(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    token = probe_token(cluster.kubectl, op)
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="100", enforcement="Warn"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "api", namespace, replicas=1, cpu="100m", memory="64Mi"))
    deadline = time.monotonic() + 30
    while True:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json")
                          .stdout)["items"]
        if pods or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert pods, "the Deployment made no pod"
    uid, name = pods[0]["metadata"]["uid"], pods[0]["metadata"]["name"]
    node, boot = f"kt-anomaly-{uuid.uuid4().hex[:4]}", uuid.uuid4().hex
    start = dt.datetime.now(dt.UTC)
    for seq in range(1, 4):  # a calm spend rate, far below 5x the budget's even rate
        body = report(node=node, boot_id=boot, seq=seq,
                      end=start + dt.timedelta(seconds=5 * seq),
                      pods=[pod_usage(uid, namespace, name, cpu_core_seconds=0.05,
                                      working_set=32 * 2**20)])
        assert op.post(body, token)[0] == 200
    time.sleep(1.5)
    calm = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
    cond = {c["type"]: c for c in calm["status"]["conditions"]}
    assert cond["AnomalyDetected"]["status"] == "False"

    spike = report(node=node, boot_id=boot, seq=4, end=start + dt.timedelta(seconds=20),
                   pods=[pod_usage(uid, namespace, name, cpu_core_seconds=0.05,
                                   working_set=32 * 2**20, internet_bytes=GI)])
    t0 = time.monotonic()
    assert op.post(spike, token)[0] == 200
    seen_condition = seen_event = None
    while time.monotonic() - t0 < 5.0 and not (seen_condition and seen_event):
        if seen_condition is None:
            pol = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
            cond = {c["type"]: c for c in pol["status"]["conditions"]}
            if cond["AnomalyDetected"]["status"] == "True":
                seen_condition = time.monotonic() - t0
                assert "api" in cond["AnomalyDetected"]["message"]
        if seen_event is None:
            events = json.loads(cluster.kubectl(
                "get", "events", "-n", namespace, "-o", "json",
                "--field-selector=reason=SpendAnomaly").stdout)["items"]
            if events:
                seen_event = time.monotonic() - t0
        time.sleep(0.1)
    assert seen_condition is not None, f"no AnomalyDetected condition within 5 s\n{op.log_tail()}"
    assert seen_event is not None, "no SpendAnomaly Event within 5 s"
    assert 'kopeck_spend_anomalies_total{scope="workload"}' in op.metrics()
    alloc = json.loads(cluster.kubectl("get", "alloc", "-n", namespace,
                                       "-o", "json").stdout)["items"]
    mine = next(a for a in alloc if a["spec"]["workloadRef"]["kind"] == "Deployment")
    conds = {c["type"]: c["status"] for c in mine["status"].get("conditions") or []}
    assert conds.get("Anomalous") == "True"
    cluster.kubectl("delete", "costpolicy", namespace, check=False)
