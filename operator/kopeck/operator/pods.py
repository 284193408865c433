"""Pods: the cache that joins probe usage (by pod uid) with requests and workloads."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import kopf

from kopeck.accounting.budget import PodShape
from kopeck.api.report import PodUsage
from kopeck.operator import metrics
from kopeck.operator.kube import ApiError, resource_path
from kopeck.operator.state import PodInfo, State
from kopeck.operator.workloads import container_resources, pod_shape, pvc_bytes, pvc_names

TOMBSTONE_SECONDS = 900.0
"""Deleted pods are remembered this long: their last reports arrive after the delete."""

_pvc_cache: dict[tuple[str, str], tuple[float, Decimal]] = {}


async def _storage_bytes(state: State, namespace: str, spec: Mapping[str, Any]) -> Decimal:
    total = Decimal(0)
    for claim in pvc_names(spec):
        cached = _pvc_cache.get((namespace, claim))
        if cached is not None and cached[0] > time.monotonic():
            total += cached[1]
            continue
        try:
            pvc = await state.kube.get_or_none(
                resource_path("v1", "persistentvolumeclaims", namespace, claim)
            )
        except ApiError:
            pvc = None
        size = pvc_bytes(pvc) if pvc else Decimal(0)
        metrics.note_claim(namespace, claim, pvc)
        _pvc_cache[(namespace, claim)] = (time.monotonic() + 300, size)
        total += size
    return total


async def register_pod(state: State, body: Mapping[str, Any]) -> PodInfo | None:
    """Add or refresh a pod in the cache from its object."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    namespace = str(meta.get("namespace", ""))
    name = str(meta.get("name", ""))
    if not uid or not namespace:
        return None
    spec = body.get("spec") or {}
    known = state.pods.get(uid)
    workload = known.workload if known else await state.resolver.resolve(namespace, meta)
    storage = known.storage_bytes if known else await _storage_bytes(state, namespace, spec)
    info = PodInfo(
        uid=uid,
        namespace=namespace,
        name=name,
        node=spec.get("nodeName"),
        workload=workload,
        shape=pod_shape(spec),
        containers=container_resources(spec),
        storage_bytes=storage,
        claims=known.claims if known else tuple(pvc_names(spec)),
        phase=str((body.get("status") or {}).get("phase", "Pending")),
    )
    state.pods[uid] = info
    state.pod_uids[(namespace, name)] = uid
    return info


def forget_pod(state: State, uid: str) -> None:
    """Mark a pod deleted; it stays resolvable for late reports, then goes."""
    info = state.pods.get(uid)
    if info is not None and info.deleted_at is None:
        info.deleted_at = time.monotonic()


def purge_tombstones(state: State) -> int:
    """Drop pods deleted long ago (called by the audit sweep)."""
    cutoff = time.monotonic() - TOMBSTONE_SECONDS
    gone = [uid for uid, p in state.pods.items() if p.deleted_at and p.deleted_at < cutoff]
    for uid in gone:
        info = state.pods.pop(uid)
        state.first_reported.get(info.workload.key, {}).pop(uid, None)
        if state.pod_uids.get((info.namespace, info.name)) == uid:
            del state.pod_uids[(info.namespace, info.name)]
    return len(gone)


_missing: dict[tuple[str, str], float] = {}
MISSING_SECONDS = 60.0


async def pod_from_report(state: State, pod: PodUsage, node: str) -> PodInfo | None:
    """A pod the apiserver no longer has (deleted while this operator was down, or before
    its buffered reports arrived), rebuilt from what its report carries: its controller,
    pod-template-hash and requests. Kept as a tombstone, as a deleted pod is."""
    if pod.owner is None or not pod.namespace or not pod.name:
        return None
    owner = pod.owner
    meta: dict[str, Any] = {
        "name": pod.name,
        "labels": {"pod-template-hash": pod.template_hash} if pod.template_hash else {},
        "ownerReferences": [{"apiVersion": owner.api_version, "kind": owner.kind,
                             "name": owner.name, "uid": owner.uid, "controller": True}],
    }
    workload = await state.resolver.resolve(pod.namespace, meta)
    req = pod.requests
    cpu = req.cpu_cores if req is not None and req.cpu_cores is not None else 0.0
    memory = req.memory_bytes if req is not None and req.memory_bytes is not None else 0
    info = PodInfo(
        uid=pod.uid, namespace=pod.namespace, name=pod.name, node=node, workload=workload,
        shape=PodShape(cpu_cores=Decimal(repr(cpu)), memory_bytes=Decimal(memory)),
        phase="Unknown", deleted_at=time.monotonic(),
    )
    state.pods[pod.uid] = info
    state.pod_uids[(pod.namespace, pod.name)] = pod.uid
    return info


async def fetch_pod(state: State, namespace: str, name: str) -> PodInfo | None:
    """Look up a pod the watch has not delivered yet (a report may be faster); a pod that
    is not there is not asked for again for a minute (reports of it keep coming)."""
    key = (namespace, name)
    if _missing.get(key, 0.0) > time.monotonic():
        return None
    try:
        body = await state.kube.get_or_none(resource_path("v1", "pods", namespace, name))
    except ApiError:
        return None
    if body is None:
        if len(_missing) > 100_000:
            _missing.clear()
        _missing[key] = time.monotonic() + MISSING_SECONDS
        return None
    return await register_pod(state, body)


@kopf.on.event("", "v1", "pods")
async def pod_event(event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **_: Any) -> None:
    """Keep the pod cache current."""
    state: State = memo.state
    if event.get("type") == "DELETED":
        forget_pod(state, str((body.get("metadata") or {}).get("uid", "")))
        return
    await register_pod(state, body)
