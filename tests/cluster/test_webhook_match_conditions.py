"""The webhook's match conditions, through the real apiserver: every request that can change
a budget decision still reaches kopeck, and the ones that cannot stay in the apiserver.

Calls are counted with the operator's own histogram (kopeck_admission_seconds_count: one
observation per AdmissionReview served). A request that matters is also shown to be judged
by its answer: the policy's budget is small, so each one is denied by kopeck.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    policy_manifest,
    running_operator,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster
HUGE_CPU = "5000"
DRY = ("apply", "--dry-run=server", "-f", "-")


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig,
                          tmp_path_factory.mktemp("op")) as proc:
        yield proc


def calls(op: OperatorProcess) -> int:
    """AdmissionReviews the operator has answered so far."""
    for line in op.metrics().splitlines():
        if line.startswith("kopeck_admission_seconds_count"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def pod_manifest(name: str, namespace: str, *, cpu: str, owner: bool = False) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner:
        meta["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-rs", "controller": True,
            "uid": "00000000-0000-4000-8000-000000000001",
        }]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}})


def cronjob_manifest(name: str, namespace: str, *, cpu: str, parallelism: int = 1) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "CronJob",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"schedule": "0 3 1 1 *", "suspend": True, "jobTemplate": {"spec": {
                           "parallelism": parallelism, "template": {"spec": {
                               "restartPolicy": "Never",
                               "containers": [{"name": "job", "image": "registry.k8s.io/pause:3.10",
                                               "resources": {"requests": {"cpu": cpu}}}]}}}}}})


def job_manifest(name: str, namespace: str, *, cpu: str) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"suspend": True, "template": {"spec": {
                           "restartPolicy": "Never",
                           "containers": [{"name": "job", "image": "registry.k8s.io/pause:3.10",
                                           "resources": {"requests": {"cpu": cpu}}}]}}}})


@pytest.fixture
def policy(cluster: ClusterHandle, op: OperatorProcess, namespace: str) -> Iterator[str]:
    """A small Deny budget over the namespace, for workloads not labelled tier=free, with
    workloads labelled exempt=yes exempt; registered and judging."""
    scope = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
             "selector": {"matchExpressions": [
                 {"key": "tier", "operator": "NotIn", "values": ["free"]}]}}
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="20", enforcement="Deny",
        extra_spec={"scope": scope, "exemptions": {"selector": {"matchLabels": {"exempt": "yes"}}}}))
    probe = deployment_manifest("kopeck-probe", namespace, cpu=HUGE_CPU)

    def judging() -> bool:
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=probe, check=False)
        return "denied the request" in res.stderr

    eventually(judging, timeout=30, what=f"webhook of policy {namespace} judging",
               every=0.3)
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "costpolicy", namespace, "--ignore-not-found", check=False)


def settle(op: OperatorProcess) -> int:
    """The call count once the controllers' follow-up requests have passed (1 s quiet)."""
    last, since = calls(op), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.2)
        now = calls(op)
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_requests_that_can_change_a_decision_reach_the_webhook_and_the_rest_do_not(
    cluster: ClusterHandle, op: OperatorProcess, policy: str
) -> None:
    ns = policy
    kubectl = cluster.kubectl
    for manifest in (
        deployment_manifest("web", ns, replicas=2, cpu="10m", memory="16Mi"),
        deployment_manifest("free-ride", ns, cpu="10m", memory="16Mi", labels={"exempt": "yes"}),
        deployment_manifest("side", ns, cpu="10m", memory="16Mi", labels={"tier": "free"}),
        cronjob_manifest("nightly", ns, cpu="10m"),
        job_manifest("batch", ns, cpu="10m"),
        pod_manifest("bare", ns, cpu="10m"),
    ):
        kubectl("apply", "-f", "-", input=manifest)

    def reservation_keys() -> set[str]:
        status = json.loads(kubectl("get", "costpolicy", ns, "-o", "json").stdout).get("status")
        return {str(r["key"]) for r in (status or {}).get("reservations") or []}

    eventually(lambda: f"{ns}/Deployment/web" in reservation_keys(), timeout=10,
               what="web's reservation")
    settle(op)

    def run(what: str, *args: str, input: str | None = None) -> tuple[int, str]:
        before = calls(op)
        res = kubectl(*args, input=input, check=False)
        return calls(op) - before, f"{what}: {res.stdout}{res.stderr}"

    def denied(what: str, *args: str, input: str | None = None) -> None:
        n, out = run(what, *args, input=input)
        assert "denied the request" in out and "kopeck" in out, out
        assert n == 1, f"{what}: {n} calls; {out}"

    def reached(what: str, *args: str, input: str | None = None) -> None:
        n, out = run(what, *args, input=input)
        assert "denied" not in out and n == 1, f"{what}: {n} calls; {out}"

    def skipped(what: str, *args: str, input: str | None = None) -> None:
        n, out = run(what, *args, input=input)
        assert "denied" not in out and "rror" not in out, out
        assert n == 0, f"{what} reached the webhook ({n} calls): {out}"

    # (a) every request that can change a decision is judged
    denied("create", *DRY, input=deployment_manifest("big", ns, cpu=HUGE_CPU))
    denied("bare pod create", *DRY, input=pod_manifest("bare-big", ns, cpu=HUGE_CPU))
    denied("job create", *DRY, input=job_manifest("batch-big", ns, cpu=HUGE_CPU))
    denied("replicas change", "patch", "deployment", "web", "-n", ns, "--dry-run=server",
           "-p", '{"spec":{"replicas":400000}}')
    denied("scale subresource", "scale", "deployment", "web", "-n", ns, "--dry-run=server",
           "--replicas=400000")
    denied("template resources change", "set", "resources", "deployment", "web", "-n", ns,
           "--dry-run=server", f"--requests=cpu={HUGE_CPU}")
    denied("cronjob parallelism change", "patch", "cronjob", "nightly", "-n", ns,
           "--dry-run=server", "-p", '{"spec":{"jobTemplate":{"spec":{"parallelism":400000}}}}')
    denied("init container added", "patch", "deployment", "web", "-n", ns, "--dry-run=server",
           "--type=json", "-p", json.dumps([{"op": "add", "path": "/spec/template/spec/initContainers",
                                             "value": [{"name": "init", "image": "x", "resources": {
                                                 "requests": {"cpu": HUGE_CPU}}}]}]))
    reached("scale of an exempt workload (its labels are not in a Scale)", "scale",
            "deployment", "free-ride", "-n", ns, "--dry-run=server", "--replicas=400000")
    reached("delete of an exempt workload (releases a reservation)", "delete", "deployment",
            "free-ride", "-n", ns, "--dry-run=server")

    # (b) requests that cannot change a decision stay in the apiserver
    skipped("label-only update", "label", "deployment", "web", "-n", ns, "color=blue")
    skipped("annotation-only update", "annotate", "deployment", "web", "-n", ns, "note=hi")
    skipped("image change", "set", "image", "deployment/web", "-n", ns,
            "app=registry.k8s.io/pause:3.9")
    skipped("replicas down", "patch", "deployment", "web", "-n", ns, "-p",
            '{"spec":{"replicas":1}}')
    skipped("scale down", "scale", "deployment", "web", "-n", ns, "--replicas=0")
    skipped("exempt workload create", *DRY, input=deployment_manifest(
        "free-big", ns, cpu=HUGE_CPU, labels={"exempt": "yes"}))
    skipped("workload the policy does not select", *DRY, input=deployment_manifest(
        "side-big", ns, cpu=HUGE_CPU, labels={"tier": "free"}))
    skipped("label moves a workload into the policy, same requests", "label", "deployment",
            "side", "-n", ns, "--dry-run=server", "tier-")
    skipped("delete of a workload the policy does not select", "delete", "deployment", "side",
            "-n", ns, "--dry-run=server")
    skipped("bare pod label update", "label", "pod", "bare", "-n", ns, "color=blue")
    skipped("cronjob suspend toggle", "patch", "cronjob", "nightly", "-n", ns, "-p",
            '{"spec":{"suspend":false,"schedule":"0 4 1 1 *"}}')
    skipped("job label update", "label", "job", "batch", "-n", ns, "color=blue")

    # a real delete is judged and releases the workload's reservation
    n, out = run("delete", "delete", "deployment", "web", "-n", ns, "--wait=false")
    assert n == 1, out
    eventually(lambda: f"{ns}/Deployment/web" not in reservation_keys(), timeout=10,
               what="web's reservation released")


def rs_manifest(kind: str, name: str, namespace: str, *, cpu: str, replicas: int = 1) -> str:
    api = "apps/v1" if kind == "ReplicaSet" else "v1"
    selector: dict[str, Any] = {"app": name}
    return json.dumps({"apiVersion": api, "kind": kind,
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"replicas": replicas,
                                "selector": {"matchLabels": selector} if kind == "ReplicaSet"
                                else selector,
                                "template": {"metadata": {"labels": selector}, "spec": {
                                    "containers": [{"name": "app",
                                                    "image": "registry.k8s.io/pause:3.10",
                                                    "resources": {"requests": {"cpu": cpu}}}]}}}})


def test_every_route_to_pods_is_judged(
    cluster: ClusterHandle, op: OperatorProcess, policy: str
) -> None:
    """Pods whose controller a user made up, ReplicaSets and ReplicationControllers of
    their own (and their scale subresource) and in-place resizes all reach the budget;
    what the controllers create for a judged workload does not reach it again."""
    ns = policy
    kubectl = cluster.kubectl

    def verdict(*args: str, input: str | None = None) -> str:
        res = kubectl(*args, input=input, check=False)
        return res.stdout + res.stderr

    def denied(what: str, *args: str, input: str | None = None) -> None:
        out = verdict(*args, input=input)
        assert "denied the request" in out and "kopeck" in out, f"{what}: {out}"

    forged = json.loads(pod_manifest("forged", ns, cpu=HUGE_CPU, owner=True))
    denied("a user's pod naming a ReplicaSet as its controller", *DRY, input=json.dumps(forged))
    forged["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                              "name": "x", "uid": "u", "controller": True}]
    denied("a pod owned by something that is not a workload", *DRY, input=json.dumps(forged))
    denied("a ReplicaSet of one's own", *DRY, input=rs_manifest("ReplicaSet", "rs-big", ns,
                                                                 cpu=HUGE_CPU))
    denied("a ReplicationController", *DRY,
           input=rs_manifest("ReplicationController", "rc-big", ns, cpu=HUGE_CPU))
    kubectl("apply", "-f", "-", input=rs_manifest("ReplicationController", "rc", ns, cpu="10m"))
    denied("a ReplicationController's scale subresource", "scale", "rc", "rc", "-n", ns,
           "--dry-run=server", "--replicas=400000")
    kubectl("apply", "-f", "-", input=pod_manifest("small", ns, cpu="10m"))
    resize = json.dumps({"spec": {"containers": [
        {"name": "app", "resources": {"requests": {"cpu": HUGE_CPU}}}]}})
    denied("an in-place resize", "patch", "pod", "small", "-n", ns, "--subresource=resize",
           "--dry-run=server", "-p", resize)

    # a judged Deployment's ReplicaSet and pods, made by the controllers, are not judged again
    settle(op)
    before = calls(op)
    kubectl("apply", "-f", "-", input=deployment_manifest("ctl", ns, replicas=2, cpu="10m",
                                                          memory="16Mi"))
    eventually(lambda: len(json.loads(kubectl("get", "pods", "-n", ns, "-l", "app=ctl", "-o",
                                              "json").stdout)["items"]) == 2,
               timeout=30, what="the controllers' pods")
    assert settle(op) - before == 1, "the controllers' ReplicaSet or pods reached the webhook"
