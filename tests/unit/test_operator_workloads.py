"""Requests from pod templates and owner-reference resolution."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from kopeck.operator.kube import Credentials, Kube
from kopeck.operator.workloads import (
    OwnerResolver,
    pod_shape,
    pvc_bytes,
    replicas_of,
    template_of,
)


def test_pod_shape_counts_like_the_scheduler() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
            {"resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}},
        ],
        "initContainers": [
            {"resources": {"requests": {"cpu": "2", "memory": "64Mi"}}},
            {"restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
        ],
        "overhead": {"cpu": "10m"},
    }
    shape = pod_shape(spec)
    # app 1.25 + sidecar 0.1 = 1.35 < the 2-core init container; + 10m overhead
    assert shape.cpu_cores == Decimal("2.01")
    assert shape.memory_bytes == 128 * 2**20 + 2**30
    assert shape.gpus == 1


def test_templates_and_replicas() -> None:
    dep = {"spec": {"replicas": 3, "template": {"spec": {"containers": []}}}}
    cron = {"spec": {"jobTemplate": {"spec": {"parallelism": 2,
                                              "template": {"spec": {"containers": [1]}}}}}}
    assert template_of("Deployment", dep) == {"containers": []}
    assert template_of("CronJob", cron) == {"containers": [1]}
    assert replicas_of("Deployment", dep) == 3
    assert replicas_of("CronJob", cron) == 2
    assert replicas_of("DaemonSet", {}, node_count=7) == 7
    assert replicas_of("Deployment", {"spec": {"replicas": "junk"}}) == 1
    assert pvc_bytes({"spec": {"resources": {"requests": {"storage": "10Gi"}}}}) == 10 * 2**30
    assert pvc_bytes({"status": {"capacity": {"storage": "20Gi"}}}) == 20 * 2**30


class FakeKube(Kube):
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        super().__init__(Credentials("https://127.0.0.1:1", None))
        self.objects = objects
        self.calls: list[str] = []

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        self.calls.append(path)
        return self.objects.get(path)


def test_owner_chain_resolves_and_caches() -> None:
    kube = FakeKube({
        "/apis/apps/v1/namespaces/shop/replicasets/web-abc": {"metadata": {
            "name": "web-abc", "ownerReferences": [
                {"kind": "Deployment", "name": "web", "uid": "d1", "controller": True}]}},
        "/apis/apps/v1/namespaces/shop/deployments/web": {"metadata": {
            "name": "web", "labels": {"tier": "front"}}},
        "/apis/batch/v1/namespaces/shop/jobs/nightly-1": {"metadata": {
            "name": "nightly-1", "ownerReferences": [
                {"kind": "CronJob", "name": "nightly", "uid": "c1", "controller": True}]}},
        "/apis/batch/v1/namespaces/shop/cronjobs/nightly": {"metadata": {"name": "nightly"}},
    })
    resolver = OwnerResolver(kube)

    def pod(owner_kind: str, owner: str, uid: str) -> dict[str, Any]:
        return {"name": "p", "ownerReferences": [
            {"kind": owner_kind, "name": owner, "uid": uid, "controller": True}]}

    async def run() -> None:
        w = await resolver.resolve("shop", pod("ReplicaSet", "web-abc", "rs1"))
        assert (w.key.kind, w.key.name, w.labels) == ("Deployment", "web", {"tier": "front"})
        calls = len(kube.calls)
        again = await resolver.resolve("shop", pod("ReplicaSet", "web-abc", "rs1"))
        assert again == w and len(kube.calls) == calls  # cached by owner uid
        j = await resolver.resolve("shop", pod("Job", "nightly-1", "j1"))
        assert (j.key.kind, j.key.name) == ("CronJob", "nightly")
        bare = await resolver.resolve("shop", {"name": "lonely", "labels": {"a": "b"}})
        assert (bare.key.kind, bare.key.name, bare.labels) == ("Pod", "lonely", {"a": "b"})
        custom = await resolver.resolve("shop", pod("Rollout", "canary", "r1"))
        assert (custom.key.kind, custom.key.name) == ("Rollout", "canary")
        gone = await resolver.resolve("shop", pod("ReplicaSet", "vanished", "rs9"))
        assert (gone.key.kind, gone.key.name) == ("ReplicaSet", "vanished")

    asyncio.run(run())
