"""Probe reports through the real ingest endpoint into Allocations, priced exactly."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

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
MI = 2**20
GI = 2**30
PERIOD = period_at("Monthly", dt.datetime.now(dt.UTC)).name


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op"),
                          extra=["--status-interval", "1"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def node(cluster: ClusterHandle) -> Iterator[str]:
    """A Node object (no kubelet) whose label sets the normalisation factor."""
    name = f"kt-node-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"cost.kopeck.io/cpu-factor": "1.5"}},
    }))
    time.sleep(1)  # let the operator's watch deliver it
    yield name
    cluster.kubectl("delete", "node", name, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def token(cluster: ClusterHandle, op: OperatorProcess) -> str:
    return probe_token(cluster.kubectl, op)


def wait_pods(cluster: ClusterHandle, namespace: str, count: int, selector: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector,
                                           "-o", "json").stdout)["items"]
        if len(items) >= count:
            return list(items)
        time.sleep(0.3)
    pytest.fail(f"{count} pods with {selector} not created in {namespace}")


def get_alloc(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "alloc", "-n", namespace, name, "-o", "json")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def web_setup(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="1000000", enforcement="Warn",
        cpu_core_hour="36", memory_gib_hour="4.5"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "web", namespace, replicas=2, cpu="500m", memory="256Mi"))
    return wait_pods(cluster, namespace, 2, "app=web")


def web_report(node: str, boot: str, seq: int, pods: list[dict[str, Any]], namespace: str,
               end: dt.datetime) -> dict[str, Any]:
    return report(node=node, boot_id=boot, seq=seq, end=end, pods=[
        pod_usage(p["metadata"]["uid"], namespace, p["metadata"]["name"],
                  cpu_core_seconds=0.2, working_set=128 * MI, internet_bytes=MI)
        for p in pods
    ])


# One pod-interval: 0.5 core requested for 5 s (used 0.2) at 36/core-h, 256Mi requested
# (used 128Mi) at 4.5/GiB-h, 1 MiB to the internet at 0.09/GiB.
POD_INTERVAL = (
    Decimal("2.5") * 36 / 3600 + Decimal("1.25") * Decimal("4.5") / 3600
    + Decimal("0.09") / 1024
)
NODE_INTERVAL = (4 * Decimal(36) + 16 * Decimal("4.5")) * 5 / 3600
POD_COMPUTE = Decimal("2.5") * 36 / 3600 + Decimal("1.25") * Decimal("4.5") / 3600


def micro(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.000001")))


def exact(d: Decimal) -> str:
    return format(d.quantize(Decimal("1e-12")), "f")


def test_reports_show_up_in_kubectl_get_alloc_with_the_right_money(
    cluster: ClusterHandle, op: OperatorProcess, token: str, node: str, namespace: str
) -> None:
    pods = web_setup(cluster, namespace)
    boot = uuid.uuid4().hex
    end = dt.datetime.now(dt.UTC)
    for seq in (1, 2, 3):
        status, ack = op.post(web_report(node, boot, seq, pods, namespace,
                                         end + dt.timedelta(seconds=5 * seq)), token)
        assert (status, ack) == (200, {"accepted": True, "duplicate": False}), op.log_tail()
    expected = POD_INTERVAL * 6
    alloc = get_alloc(cluster, namespace, f"deployment-web-{PERIOD}")
    st = alloc["status"]
    assert st["cost"]["total"] == exact(expected)
    assert st["podsSeen"] == 2 and st["phase"] == "Open"
    assert st["usage"]["cpuCoreSeconds"] == pytest.approx(1.2)
    assert st["usage"]["normalizedCpuCoreSeconds"] == pytest.approx(1.8)  # cpu-factor 1.5
    assert st["usage"]["networkBytes"]["internet"] == 6 * MI
    assert st["folded"] == {f"{node}/{boot}": "1-3"}
    assert alloc["metadata"]["labels"]["cost.kopeck.io/period"] == PERIOD
    assert alloc["spec"]["workloadRef"]["kind"] == "Deployment"
    total = get_alloc(cluster, namespace, f"namespace-total-{PERIOD}")["status"]
    assert total["cost"]["total"] == exact(expected)
    idle = get_alloc(cluster, op.namespace, f"node-{node}-{PERIOD}")["status"]["cost"]["idle"]
    assert Decimal(idle) >= (NODE_INTERVAL - 2 * POD_COMPUTE) * 3 - Decimal("0.000001")
    table = cluster.kubectl("get", "alloc", "-A").stdout
    row = next(line for line in table.splitlines() if f"deployment-web-{PERIOD}" in line
               and namespace in line)
    assert f"{micro(expected)} USD" in row  # amounts under 1 keep micro-units
    assert "6.0 MiB" in row
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spent = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout).get(
            "status", {}).get("spent")
        if spent == micro(expected):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"CostPolicy spent {spent}, expected {micro(expected)}")


def test_duplicates_are_acknowledged_and_ignored(
    cluster: ClusterHandle, op: OperatorProcess, token: str, node: str, namespace: str
) -> None:
    pods = web_setup(cluster, namespace)
    boot = uuid.uuid4().hex
    end = dt.datetime.now(dt.UTC)
    body = web_report(node, boot, 7, pods, namespace, end)
    assert op.post(body, token) == (200, {"accepted": True, "duplicate": False})
    assert op.post(body, token) == (200, {"accepted": True, "duplicate": True})
    st = get_alloc(cluster, namespace, f"deployment-web-{PERIOD}")["status"]
    assert st["cost"]["total"] == exact(POD_INTERVAL * 2)


def test_bad_tokens_and_bodies_are_refused(
    cluster: ClusterHandle, op: OperatorProcess, token: str, node: str, namespace: str
) -> None:
    pods = web_setup(cluster, namespace)
    body = web_report(node, uuid.uuid4().hex, 1, pods, namespace, dt.datetime.now(dt.UTC))
    assert op.post(body, None)[0] == 401
    assert op.post(body, "not-a-token")[0] == 401
    other = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    code, answer = op.post(body, other)
    assert code == 403 and "may not post" in answer["error"]
    assert op.post(b"{not json", token)[0] == 400
    assert op.post({**body, "seq": -1}, token)[0] == 400
    assert op.post({**body, "pods": [{"uid": 5}]}, token)[0] == 400
    inverted = {**body, "intervalStart": body["intervalEnd"],
                "intervalEnd": "2000-01-01T00:00:00Z"}
    assert op.post(inverted, token)[0] == 400
    assert op.post(b"\xff" * 1000, token)[0] == 400
    out = cluster.kubectl("get", "alloc", "-n", namespace, "-o", "name").stdout
    assert out.strip() == ""  # nothing was folded
    assert op.health() is not None  # and the operator is alive
    assert 'kopeck_reports_total{result="malformed"}' in op.metrics()


def test_owner_references_resolve_to_the_workload(
    cluster: ClusterHandle, op: OperatorProcess, token: str, node: str, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount=None, cpu_core_hour="36", memory_gib_hour="4.5"))
    cron = json.loads(cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}}},
    })).stdout)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nightly-1", "namespace": namespace, "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
            "uid": cron["metadata"]["uid"], "controller": True}]},
        "spec": {"template": {"metadata": {"labels": {"job": "nightly-1"}}, "spec": {
            "restartPolicy": "Never", "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}},
    }))
    job_pod = wait_pods(cluster, namespace, 1, "job=nightly-1")[0]
    bare = json.loads(cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lonely", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"cpu": "250m"}}}]},
    })).stdout)
    body = report(node=node, boot_id=uuid.uuid4().hex, seq=1, end=dt.datetime.now(dt.UTC),
                  pods=[
                      pod_usage(job_pod["metadata"]["uid"], namespace, job_pod["metadata"]["name"],
                                cpu_core_seconds=1.0, working_set=GI),
                      pod_usage(bare["metadata"]["uid"], namespace, "lonely",
                                cpu_core_seconds=0.1, working_set=10 * MI),
                  ])
    assert op.post(body, token)[0] == 200
    names = cluster.kubectl("get", "alloc", "-n", namespace, "-o", "name").stdout.split()
    assert f"allocation.cost.kopeck.io/cronjob-nightly-{PERIOD}" in names
    assert f"allocation.cost.kopeck.io/pod-lonely-{PERIOD}" in names
    st = get_alloc(cluster, namespace, f"cronjob-nightly-{PERIOD}")["status"]
    # 1 core x 5 s at 36/h + 1 GiB x 5 s at 4.5/h
    assert st["cost"]["total"] == exact(Decimal(5) * 36 / 3600 + Decimal(5) * Decimal("4.5") / 3600)


def test_restart_loses_nothing_and_counts_nothing_twice(
    cluster: ClusterHandle, op: OperatorProcess, token: str, node: str, namespace: str
) -> None:
    pods = web_setup(cluster, namespace)
    boot = uuid.uuid4().hex
    end = dt.datetime.now(dt.UTC)
    bodies = [web_report(node, boot, s, pods, namespace, end + dt.timedelta(seconds=5 * s))
              for s in (1, 2, 3)]
    assert op.post(bodies[0], token)[0] == 200
    assert op.post(bodies[1], token)[0] == 200
    op.kill()  # a crash: every acknowledged report must be in the Allocation already
    op.start()
    # the probe resends what it is unsure of (2), then goes on (3)
    assert op.post(bodies[1], token) == (200, {"accepted": True, "duplicate": True})
    assert op.post(bodies[2], token) == (200, {"accepted": True, "duplicate": False})
    st = get_alloc(cluster, namespace, f"deployment-web-{PERIOD}")["status"]
    assert st["cost"]["total"] == exact(POD_INTERVAL * 6)
    assert st["folded"] == {f"{node}/{boot}": "1-3"}
