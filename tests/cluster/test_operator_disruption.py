"""The operator's PodDisruptionBudget from deploy/base, against the real apiserver and
disruption controller: with only the active replica Ready (the base's readiness design), the
leader cannot be evicted (a drain waits for it) and the not-Ready standby can; a leader that
is not Ready either does not block a drain (unhealthyPodEvictionPolicy AlwaysAllow)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.localcluster.handle import ClusterHandle

pytestmark = pytest.mark.cluster
BASE = Path(__file__).resolve().parents[2] / "deploy" / "base"


def _rendered(cluster: ClusterHandle, kind: str) -> dict[str, Any]:
    out = cluster.kubectl("kustomize", str(BASE)).stdout
    (doc,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == kind]
    return dict(doc)


@pytest.fixture
def node(cluster: ClusterHandle) -> Iterator[str]:
    """A Node object without a kubelet (no node-lifecycle controller runs here, so it is
    never tainted); its pods keep the status the test writes."""
    name = f"kt-pdb-{uuid.uuid4().hex[:6]}"
    cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    try:
        yield name
    finally:
        cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)


def _pod(name: str, namespace: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "automountServiceAccountToken": False,
                 "containers": [{"name": "operator", "image": "kopeck:0.1.0"}]},
    }  # fmt: skip


def _set_ready(cluster: ClusterHandle, namespace: str, pod: str, ready: bool) -> None:
    status = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}  # fmt: skip
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))  # fmt: skip


def _evict(cluster: ClusterHandle, namespace: str, pod: str) -> tuple[bool, str]:
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace}}  # fmt: skip
    run = cluster.kubectl("create", "--raw",
                          f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
                          input=json.dumps(body), check=False)  # fmt: skip
    return run.returncode == 0, run.stdout + run.stderr


def _wait_status(cluster: ClusterHandle, namespace: str, pdb: str, healthy: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "pdb", pdb, "-n", namespace, "-o", "json").stdout
        status = json.loads(out).get("status", {})
        if status.get("currentHealthy") == healthy and "disruptionsAllowed" in status:
            return status
        time.sleep(0.3)
    raise AssertionError(f"PodDisruptionBudget {pdb}: currentHealthy never {healthy}: {status}")


def test_leader_is_kept_and_standby_may_go(
    cluster: ClusterHandle, namespace: str, node: str
) -> None:
    pdb = _rendered(cluster, "PodDisruptionBudget")
    labels = _rendered(cluster, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb["metadata"]["namespace"] = namespace
    pods = ("leader", "standby")
    try:
        cluster.apply(yaml.safe_dump(pdb))
        for name in pods:
            cluster.apply(yaml.safe_dump(_pod(name, namespace, node, labels)))
        _set_ready(cluster, namespace, "leader", True)
        _set_ready(cluster, namespace, "standby", False)
        status = _wait_status(cluster, namespace, pdb["metadata"]["name"], healthy=1)
        assert status["expectedPods"] == 2, status
        assert status["desiredHealthy"] == 1 and status["disruptionsAllowed"] == 0, status

        evicted, out = _evict(cluster, namespace, "leader")
        assert not evicted and "disruption budget" in out, out
        evicted, out = _evict(cluster, namespace, "standby")
        assert evicted, out
        gone = json.loads(cluster.kubectl("get", "pod", "standby", "-n", namespace, "-o", "json",
                                          "--ignore-not-found").stdout or "{}")  # fmt: skip
        assert not gone or gone["metadata"].get("deletionTimestamp"), gone
        leader = json.loads(cluster.kubectl("get", "pod", "leader", "-n", namespace,
                                            "-o", "json").stdout)  # fmt: skip
        assert not leader["metadata"].get("deletionTimestamp")

        # the leader stops being Ready (lost the apiserver, crash loop): the budget is
        # unhealthy, and AlwaysAllow still lets a drain evict it (IfHealthyBudget would not)
        _set_ready(cluster, namespace, "leader", False)
        _wait_status(cluster, namespace, pdb["metadata"]["name"], healthy=0)
        evicted, out = _evict(cluster, namespace, "leader")
        assert evicted, out
    finally:
        # no kubelet confirms a graceful deletion: remove the pods outright, or the
        # namespace would stay Terminating
        cluster.kubectl("delete", "pod", *pods, "-n", namespace, "--grace-period=0", "--force",
                        "--ignore-not-found", check=False)  # fmt: skip
