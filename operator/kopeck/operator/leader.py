"""Which replica leads: kopf peering decides, this module watches the same record.

kopf freezes its handlers in every replica but the highest-priority live one. The ingest
endpoint, the status writer, the audit sweep and the webhook registration are ours, not
kopf's, so they follow the same rule by reading the ClusterKopfPeering object: active when
no live peer has a higher priority (or the same one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kopeck.operator.kube import ApiError, Kube

log = logging.getLogger("kopeck.leader")
PEERING_API = "/apis/kopf.dev/v1/clusterkopfpeerings"
PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings",
                  "singular": "clusterkopfpeering"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"status": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": True}},
            }},
        }],
    },
}


async def ensure_peering(kube: Kube, name: str) -> None:
    """Create kopf's peering CRD and the peering object when they are missing."""
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    if await kube.get_or_none(f"{crd_path}/clusterkopfpeerings.kopf.dev") is None:
        try:
            await kube.create(crd_path, PEERING_CRD)
        except ApiError as exc:
            if not exc.conflict:
                raise
        for _ in range(100):
            try:
                await kube.get(PEERING_API)
                break
            except ApiError:
                await asyncio.sleep(0.1)
    try:
        await kube.create(PEERING_API, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                        "metadata": {"name": name}})
    except ApiError as exc:
        if not exc.conflict:
            raise


def is_leader(status: dict[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule: no other live peer with a priority >= ours."""
    for peer, info in status.items():
        if peer == identity or not isinstance(info, dict):
            continue
        try:
            lastseen = dt.datetime.fromisoformat(str(info.get("lastseen")))
            lifetime = dt.timedelta(seconds=int(info.get("lifetime", 60)))
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=dt.UTC)
        if lastseen + lifetime > now and other >= priority:
            return False
    return identity in status


async def follow(
    kube: Kube,
    name: str,
    identity: str,
    priority: int,
    on_change: Callable[[bool], Awaitable[None]],
    interval: float = 1.0,
) -> None:
    """Poll the peering object and report leadership changes."""
    active: bool | None = None
    while True:
        try:
            obj = await kube.get(f"{PEERING_API}/{name}")
            now = dt.datetime.now(dt.UTC)
            leading = is_leader(dict(obj.get("status") or {}), identity, priority, now)
        except Exception as exc:  # any fault (dropped connection, bad body): not leading now
            log.warning("cannot read peering %s: %r", name, exc)
            leading = False
        if leading != active:
            active = leading
            log.info("this replica is now %s", "ACTIVE" if leading else "on standby")
            try:
                await on_change(leading)
            except Exception:  # e.g. the restore failed: try the change again next poll
                log.exception("taking the %s role failed", "active" if leading else "standby")
                active = None
        await asyncio.sleep(interval)


LEADER_LABEL = "cost.kopeck.io/leader"


async def label_own_pod(kube: Kube, namespace: str, pod: str, leading: bool) -> None:
    """Mark this replica's Pod as leader (or not): Services select leader=true, so probes
    and the apiserver reach the replica that holds the accumulators."""
    try:
        await kube.merge_patch(
            f"/api/v1/namespaces/{namespace}/pods/{pod}",
            {"metadata": {"labels": {LEADER_LABEL: "true" if leading else "false"}}},
        )
    except (ApiError, OSError) as exc:
        log.warning("cannot label pod %s/%s as %s: %s", namespace, pod,
                    "leader" if leading else "standby", exc)
