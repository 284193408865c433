"""Pod metadata for this node's pods, from a watch on the API server (optional at runtime).

The cgroups give only pod UIDs and runtime container ids; names, namespaces, container
names, requests and pod IPs come from the Pod objects bound to this node (field selector
spec.nodeName). Without an API server the probe still reports, by UID only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kopeck.api.report import PodOwner, PodRequests
from kopeck_probe.attribution import PodResources
from kopeck_probe.report import PodLabels

log = logging.getLogger(__name__)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}


def parse_quantity(q: str | int | float) -> Decimal:
    """A Kubernetes quantity ('250m', '512Mi', '1e3') as an exact Decimal."""
    if isinstance(q, int | float):
        return Decimal(str(q))
    s = q.strip()
    for suffix, factor in _BINARY.items():
        if s.endswith(suffix):
            return Decimal(s[: -len(suffix)]) * factor
    if s and s[-1] in _DECIMAL:
        return Decimal(s[:-1]) * _DECIMAL[s[-1]]
    return Decimal(s)


@dataclass(frozen=True)
class PodMeta:
    """What the probe needs to know about one pod."""

    uid: str
    namespace: str
    name: str
    ip: str | None
    container_names: Mapping[str, str]
    """Runtime container id (without the 'containerd://' scheme) -> container name."""
    resources: PodResources
    phase: str = ""
    owner: PodOwner | None = None
    template_hash: str | None = None

    def labels(self) -> PodLabels:
        """The report's view of this pod."""
        r = self.resources
        requests = (
            PodRequests(cpu_cores=r.cpu_request_cores, memory_bytes=r.memory_request_bytes)
            if r.cpu_request_cores is not None or r.memory_request_bytes is not None else None
        )
        return PodLabels(self.namespace, self.name, self.container_names, self.owner,
                         self.template_hash, requests)


def _sum(containers: list[dict[str, Any]], kind: str, resource: str) -> Decimal | None:
    total = Decimal(0)
    seen = False
    for c in containers:
        value = ((c.get("resources") or {}).get(kind) or {}).get(resource)
        if value is not None:
            total += parse_quantity(value)
            seen = True
    return total if seen else None


def _all_set(containers: list[dict[str, Any]], kind: str, resource: str) -> bool:
    return bool(containers) and all(
        ((c.get("resources") or {}).get(kind) or {}).get(resource) is not None for c in containers
    )


def pod_meta(obj: Mapping[str, Any]) -> PodMeta:
    """Map a Pod object (camelCase dict as the API serves it) to PodMeta.

    Requests sum the app containers (the kubelet's pod-level accounting, init containers
    excluded as they do not run alongside); a pod limit exists only when every container
    sets one, otherwise the pod is unbounded.
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers: list[dict[str, Any]] = list(spec.get("containers") or [])
    names: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = cs.get("containerID") or ""
            if cid:
                names[cid.split("://", 1)[-1]] = cs.get("name", "")
    cpu_req = _sum(containers, "requests", "cpu")
    mem_req = _sum(containers, "requests", "memory")
    cpu_lim = _sum(containers, "limits", "cpu") if _all_set(containers, "limits", "cpu") else None
    mem_lim = (
        _sum(containers, "limits", "memory") if _all_set(containers, "limits", "memory") else None
    )
    # Kubernetes defaults requests to limits when only limits are given.
    cpu_req = cpu_req if cpu_req is not None else cpu_lim
    mem_req = mem_req if mem_req is not None else mem_lim
    return PodMeta(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        ip=status.get("podIP"),
        container_names=names,
        resources=PodResources(
            cpu_request_cores=float(cpu_req) if cpu_req is not None else None,
            memory_request_bytes=int(mem_req) if mem_req is not None else None,
            cpu_limit_cores=float(cpu_lim) if cpu_lim is not None else None,
            memory_limit_bytes=int(mem_lim) if mem_lim is not None else None,
        ),
        phase=str(status.get("phase", "")),
        owner=_controller(meta),
        template_hash=(meta.get("labels") or {}).get("pod-template-hash"),
    )


def _controller(meta: Mapping[str, Any]) -> PodOwner | None:
    """The ownerReference marked controller, if any."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") and ref.get("name"):
            return PodOwner(api_version=str(ref.get("apiVersion", "")), kind=str(ref["kind"]),
                            name=str(ref["name"]), uid=str(ref.get("uid", "")))
    return None


@dataclass
class PodDirectory:
    """This node's pods by UID and by IP; fed by the watcher, read by the probe loop."""

    _by_uid: dict[str, PodMeta] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Fold one watch event in (ADDED, MODIFIED, DELETED)."""
        meta = pod_meta(obj)
        if not meta.uid:
            return
        with self._lock:
            if event_type == "DELETED":
                # Keep the names until the cgroup's last report has been built.
                self._by_uid[meta.uid] = PodMeta(
                    meta.uid,
                    meta.namespace,
                    meta.name,
                    None,
                    meta.container_names,
                    meta.resources,
                    "Deleted",
                )
            else:
                self._by_uid[meta.uid] = meta

    def replace(self, objs: list[Mapping[str, Any]]) -> None:
        """A fresh list: everything else is gone."""
        metas = [pod_meta(o) for o in objs]
        with self._lock:
            self._by_uid = {m.uid: m for m in metas if m.uid}

    def get(self, uid: str) -> PodMeta | None:
        """Metadata of one pod, if known."""
        with self._lock:
            return self._by_uid.get(uid)

    def snapshot(self) -> dict[str, PodMeta]:
        """A copy of the directory."""
        with self._lock:
            return dict(self._by_uid)

    def uid_by_ip(self) -> dict[str, str]:
        """Pod IP -> UID for running pods (the flows collector maps flows with it)."""
        with self._lock:
            return {m.ip: m.uid for m in self._by_uid.values() if m.ip and m.phase != "Deleted"}

    def forget_deleted(self, live_uids: set[str]) -> None:
        """Drop deleted pods whose cgroups are gone too."""
        with self._lock:
            for uid in [
                u for u, m in self._by_uid.items() if m.phase == "Deleted" and u not in live_uids
            ]:
                del self._by_uid[uid]


class PodWatcher:
    """Lists then watches Pods with spec.nodeName=<node>, re-listing when the watch expires."""

    def __init__(self, directory: PodDirectory, node: str, kubeconfig: str | None = None) -> None:
        self.directory = directory
        self.node = node
        self.kubeconfig = kubeconfig
        self.errors = 0

    def _client(self) -> Any:
        import kubernetes

        client: Any = kubernetes.client
        config: Any = kubernetes.config

        if self.kubeconfig:
            config.load_kube_config(config_file=self.kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        return client.CoreV1Api()

    def run(self, stop: threading.Event) -> None:
        """Keep the directory current until stop is set."""
        import kubernetes
        from kubernetes.client.exceptions import ApiException

        watch: Any = kubernetes.watch

        api = self._client()
        selector = f"spec.nodeName={self.node}"
        while not stop.is_set():
            try:
                listing = api.list_pod_for_all_namespaces(field_selector=selector)
                self.directory.replace(
                    [api.api_client.sanitize_for_serialization(p) for p in listing.items]
                )
                rv = listing.metadata.resource_version
                w = watch.Watch()
                for ev in w.stream(
                    api.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=60,
                ):
                    if ev["type"] == "ERROR":  # e.g. 410 Gone: the resourceVersion expired
                        break
                    obj = ev["object"]
                    raw = (
                        obj
                        if isinstance(obj, dict)
                        else api.api_client.sanitize_for_serialization(obj)
                    )
                    self.directory.apply(ev["type"], raw)
                    if stop.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                self.errors += 1
                log.warning("pod watch on node %s: HTTP %s; re-listing", self.node, exc.status)
                stop.wait(2)
            except Exception as exc:
                self.errors += 1
                log.warning("pod watch on node %s failed: %s; retrying", self.node, exc)
                stop.wait(5)
