"""Workloads: owner-reference resolution and request shapes from pod templates.

Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet, or a
bare Pod. Owners never change during an object's life, so a resolution is cached by the
owner's uid. The request arithmetic (containers summed, init containers maxed, overhead
added, as the scheduler counts them) is pure and shared with the admission webhook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import WorkloadKey
from kopeck.operator.kube import ApiError, Kube, resource_path
from kopeck.rightsizing.proposal import Resources
from kopeck.rightsizing.quantity import QuantityError, parse_quantity

# kind -> (apiVersion, plural) of the owners we follow
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("apps/v1", "deployments"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "ReplicationController": ("v1", "replicationcontrollers"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "Job": ("batch/v1", "jobs"),
    "CronJob": ("batch/v1", "cronjobs"),
    "Pod": ("v1", "pods"),
}
ZERO = Decimal(0)


def _quantity(value: Any) -> Decimal:
    try:
        return parse_quantity(value) if value is not None else ZERO
    except QuantityError:
        return ZERO


def _gpus(requests: Mapping[str, Any]) -> Decimal:
    return sum((_quantity(v) for k, v in requests.items() if k.endswith("/gpu")), ZERO)


def _requests(container: Mapping[str, Any]) -> Mapping[str, Any]:
    resources = container.get("resources") or {}
    req = resources.get("requests")
    if req is None:  # like the apiserver: limits default the requests
        req = resources.get("limits") or {}
    return req if isinstance(req, Mapping) else {}


def pod_shape(spec: Mapping[str, Any]) -> PodShape:
    """Effective requests of one pod, as the scheduler counts them (KEP-753 sidecars):
    max(app containers + sidecars, the peak while init containers run) plus overhead."""
    totals: list[Decimal] = []
    for resource in ("cpu", "memory", "gpu"):
        def amount(c: Mapping[str, Any], resource: str = resource) -> Decimal:
            r = _requests(c)
            return _gpus(r) if resource == "gpu" else _quantity(r.get(resource))

        app = sum((amount(c) for c in spec.get("containers") or []), ZERO)
        sidecars = peak = ZERO
        for c in spec.get("initContainers") or []:
            if c.get("restartPolicy") == "Always":  # a sidecar keeps running with the app
                sidecars += amount(c)
                peak = max(peak, sidecars)
            else:
                peak = max(peak, amount(c) + sidecars)
        totals.append(max(app + sidecars, peak))
    overhead = spec.get("overhead") or {}
    return PodShape(
        cpu_cores=totals[0] + _quantity(overhead.get("cpu")),
        memory_bytes=totals[1] + _quantity(overhead.get("memory")),
        gpus=totals[2],
    )


def container_resources(spec: Mapping[str, Any]) -> dict[str, Resources]:
    """Requests per container name, as the rightsizing library reads them."""
    out: dict[str, Resources] = {}
    for c in spec.get("containers") or []:
        try:
            out[str(c.get("name", ""))] = Resources.from_requests(_requests(c))
        except (QuantityError, ValueError):
            out[str(c.get("name", ""))] = Resources()
    return out


def template_of(kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec a workload object creates pods from (None for unknown kinds)."""
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tmpl = spec.get("template") or {}
    pod_spec = tmpl.get("spec")
    return pod_spec if isinstance(pod_spec, Mapping) else None


def replicas_of(kind: str, obj: Mapping[str, Any], node_count: int = 1) -> int:
    """How many pods the object runs at once: replicas, parallelism, or one per node.

    A CronJob counts as one concurrent run of its job (its schedule is not modelled).
    """
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
        value = spec.get("replicas", 1)
    elif kind == "DaemonSet":
        value = max(1, node_count)
    elif kind == "Job":
        value = spec.get("parallelism", 1)
    elif kind == "CronJob":
        value = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("parallelism", 1)
    else:
        value = 1
    try:
        return max(0, int(value if value is not None else 1))
    except (TypeError, ValueError):
        return 1


def controller_ref(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference with controller: true (or the only owner)."""
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return refs[0] if len(refs) == 1 else None


@dataclass(frozen=True)
class Workload:
    """The top-level workload a pod belongs to, with the labels policy selectors read."""

    key: WorkloadKey
    labels: Mapping[str, str] = field(default_factory=dict)


def _deployment_named(kind: str, name: str, pod_labels: Mapping[str, str]) -> str | None:
    """The Deployment a gone ReplicaSet belonged to: the deployment controller names its
    ReplicaSets `<deployment>-<pod-template-hash>` and labels their pods with that hash."""
    suffix = pod_labels.get("pod-template-hash")
    if kind != "ReplicaSet" or not suffix or not name.endswith(f"-{suffix}"):
        return None
    return name[: -len(suffix) - 1] or None


class OwnerResolver:
    """Follows controller owner references up to the workload, caching by owner uid."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cache: dict[str, Workload] = {}
        self.lookups = 0

    async def resolve(
        self, namespace: str, meta: Mapping[str, Any], kind: str = "Pod"
    ) -> Workload:
        """The workload for an object's metadata (a Pod's, usually)."""
        name = str(meta.get("name", ""))
        current = Workload(
            WorkloadKey(namespace, kind, name, KINDS.get(kind, ("v1", ""))[0]),
            dict(meta.get("labels") or {}),
        )
        chain: list[str] = []
        cacheable = True
        ref = controller_ref(meta)
        for _ in range(4):
            if ref is None:
                break
            uid = str(ref.get("uid", ""))
            if uid in self._cache:
                current = self._cache[uid]
                break
            if uid:
                chain.append(uid)
            okind, oname = str(ref.get("kind", "")), str(ref.get("name", ""))
            if okind not in KINDS or okind == "Pod":  # a controller we do not know: it is
                current = Workload(  # the workload
                    WorkloadKey(namespace, okind, oname, str(ref.get("apiVersion", ""))),
                    current.labels,
                )
                break
            api, plural = KINDS[okind]
            self.lookups += 1
            try:
                obj = await self.kube.get_or_none(resource_path(api, plural, namespace, oname))
            except ApiError:
                obj = None
            if obj is None:  # owner gone or unreadable: charge it by name, do not cache
                deployment = _deployment_named(okind, oname, current.labels)
                current = Workload(
                    WorkloadKey(namespace, "Deployment", deployment, KINDS["Deployment"][0])
                    if deployment else WorkloadKey(namespace, okind, oname, api),
                    current.labels,
                )
                cacheable = False
                break
            owner_meta = obj.get("metadata") or {}
            current = Workload(
                WorkloadKey(namespace, okind, oname, api), dict(owner_meta.get("labels") or {})
            )
            ref = controller_ref(owner_meta) if okind in ("ReplicaSet", "Job") else None
        if cacheable:
            for uid in chain:
                self._cache[uid] = current
        return current

    def forget(self, uid: str) -> None:
        """Drop a cached owner (deleted)."""
        self._cache.pop(uid, None)


def pvc_names(spec: Mapping[str, Any]) -> Sequence[str]:
    """Names of the PersistentVolumeClaims a pod mounts."""
    out = []
    for vol in spec.get("volumes") or []:
        claim = vol.get("persistentVolumeClaim")
        if isinstance(claim, Mapping) and claim.get("claimName"):
            out.append(str(claim["claimName"]))
    return out


def pvc_bytes(pvc: Mapping[str, Any]) -> Decimal:
    """A claim's size: its bound capacity, else its request."""
    cap = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    if cap is None:
        cap = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    return _quantity(cap)
