"""A mini-kubelet: this machine as a real Node of the local cluster, running real processes.

There is no container runtime here, so kind and a real kubelet cannot run. The product still
has to be measured on what the kernel sees, with Pods created the ordinary way (kubectl,
Deployments, Jobs) and scheduled by the real scheduler. This kubelet registers a Node, keeps
its Lease and Ready condition fresh, watches the Pods bound to it and gives each a sandbox
(kopeck.localcluster.sandbox: kubelet-layout cgroups, a netns with the pod IP) in which it
runs each container's command on the host. It posts Pod status as a kubelet does, restarts
containers per restartPolicy with back-off, and finalizes deleted Pods, so that controllers
(ReplicaSet, Job, namespace) behave exactly as on a real cluster.

Images are not pulled: a container's command must exist on this host (see kubelet_spec).
Commands run on the host filesystem, as root unless securityContext names a user: join only
clusters you own (the local one), or taint the Node (NodeSettings.taints) so that only Pods
that tolerate it land here. `kubectl logs` works through a loopback endpoint
(kubelet_server); exec, port-forward, probes, volumes and resource-backed env do not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import os
import platform
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kopeck.localcluster.kubelet_server import LogServer
from kopeck.localcluster.kubelet_spec import (
    CFS_PERIOD_US,
    SLEEP_FOREVER,
    CgroupLimits,
    ContainerPlan,
    PodPlan,
    PodSpecError,
    plan_pod,
)
from kopeck.localcluster.kubelet_status import (
    Backoff,
    Conditions,
    ContainerState,
    Phase,
    desired_conditions,
    exit_code_of,
    init_done,
    next_init,
    pod_phase,
    pod_status,
    rfc3339,
    rfc3339_micro,
)
from kopeck.localcluster.sandbox import (
    CGROUP_BASE,
    Driver,
    PodSandbox,
    QoS,
    SandboxHost,
    _run_ip,
)
from kopeck.localcluster.versions import KUBERNETES_VERSION

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
ANNOTATION_PREFIX = "localcluster.kopeck.io"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def default_node_name() -> str:
    """This host's name when it is a valid Node name, else 'kopeck-node-1'."""
    name = socket.gethostname().lower()
    return name if _DNS1123.match(name) and len(name) <= 63 else "kopeck-node-1"


def host_memory_bytes() -> int:
    """MemTotal of this machine (the Node's memory capacity)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def host_cpu_cores() -> int:
    """CPUs this process may run on (the Node's CPU capacity)."""
    return len(os.sched_getaffinity(0))


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _qos_dir(qos: str) -> QoS:
    if qos == "Guaranteed":
        return "guaranteed"
    if qos == "BestEffort":
        return "besteffort"
    return "burstable"


@dataclass(frozen=True)
class NodeSettings:
    """How the Node presents itself: topology and instance type drive pricing in kopeck."""

    name: str = field(default_factory=default_node_name)
    instance_type: str = "kopeck-local"
    zone: str = "local-1a"
    region: str = "local-1"
    cpu_factor: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    internal_ip: str = "127.0.0.1"
    cpu_cores: int = field(default_factory=host_cpu_cores)
    memory_bytes: int = field(default_factory=host_memory_bytes)
    max_pods: int = 110
    taints: tuple[Mapping[str, str], ...] = ()
    """e.g. ({"key": "kopeck.io/test", "value": "x", "effect": "NoSchedule"},) so that
    only Pods that tolerate it land here (tests keep other suites' Pods off their Node)."""

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64" if platform.machine() == "x86_64" else platform.machine(),
            "node.kubernetes.io/instance-type": self.instance_type,
            "topology.kubernetes.io/zone": self.zone,
            "topology.kubernetes.io/region": self.region,
            f"{ANNOTATION_PREFIX}/kubelet": "mini",
        }
        if self.cpu_factor is not None:
            labels["cost.kopeck.io/cpu-factor"] = self.cpu_factor
        labels.update(self.labels)
        return labels


class IPAllocator:
    """Pod IPs from the node's pod subnet, reused once their pod is gone (.1 is kept back)."""

    def __init__(self, subnet: str) -> None:
        self.network = ipaddress.ip_network(subnet)
        self._free: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address] = iter(
            self.network.hosts()
        )
        next(self._free)  # the gateway address, by convention
        self._returned: list[str] = []
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            if self._returned:
                return self._returned.pop(0)
            try:
                return str(next(self._free))
            except StopIteration:
                raise RuntimeError(f"pod subnet {self.network} is exhausted") from None

    def give_back(self, ip: str) -> None:
        with self._lock:
            self._returned.append(ip)


def write_limits(dirs: Mapping[str, Path], limits: CgroupLimits) -> list[str]:
    """Write CFS quota, shares and memory limit where the hierarchy has the file.

    Returns the errors (a write the kernel refuses, e.g. a child quota above its parent's
    under cgroup v1) rather than failing the pod, as these limits are best effort here.
    """
    writes: list[tuple[Path, str]] = []
    cpu = dirs.get("cpu")
    if cpu is not None:
        if limits.cpu_shares is not None:
            writes.append((cpu / "cpu.shares", str(limits.cpu_shares)))
        if limits.cpu_quota_us is not None:
            writes.append((cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US)))
            writes.append((cpu / "cpu.cfs_quota_us", str(limits.cpu_quota_us)))
    mem = dirs.get("memory")
    if mem is not None and limits.memory_limit_bytes is not None:
        writes.append((mem / "memory.limit_in_bytes", str(limits.memory_limit_bytes)))
    unified = dirs.get("unified")
    if unified is not None:
        if limits.cpu_quota_us is not None:
            writes.append((unified / "cpu.max", f"{limits.cpu_quota_us} {CFS_PERIOD_US}"))
        if limits.cpu_shares is not None:
            weight = 1 + ((limits.cpu_shares - 2) * 9999) // 262142
            writes.append((unified / "cpu.weight", str(weight)))
        if limits.memory_limit_bytes is not None:
            writes.append((unified / "memory.max", str(limits.memory_limit_bytes)))
    errors: list[str] = []
    for path, value in writes:
        if not path.exists():
            continue
        try:
            path.write_text(value)
        except OSError as exc:
            errors.append(f"{path}: {value}: {exc}")
    return errors


V2_CONTROLLERS = ("cpu", "memory", "pids", "io")


def enable_v2_controllers(root: Path, leaf: Path) -> list[str]:
    """Delegate cpu/memory/pids/io from root down to leaf in the v2 tree (as systemd does).

    On a pure v2 host a pod cgroup has cpu.max and memory.max only when every ancestor
    enables the controller for its children; in hybrid mode the v2 tree offers none and
    this does nothing. Returns the writes the kernel refused.
    """
    errors: list[str] = []
    chain = [leaf, *leaf.parents]
    chain = list(reversed(chain[: chain.index(root) + 1])) if root in chain else [leaf]
    for d in chain:
        try:
            available = set((d / "cgroup.controllers").read_text().split())
            enabled = set((d / "cgroup.subtree_control").read_text().split())
        except OSError:
            continue
        missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
        if not missing:
            continue
        try:
            (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        except OSError as exc:
            errors.append(f"{d}/cgroup.subtree_control: {exc}")
    return errors


def _cgroup_pids(dirs: Mapping[str, Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs.values():
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return pids


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _oom_kills(dirs: Mapping[str, Path]) -> int:
    """The memory cgroup's OOM-kill count (v1 memory.oom_control, v2 memory.events)."""
    for hier, name in (("memory", "memory.oom_control"), ("unified", "memory.events")):
        d = dirs.get(hier)
        if d is None:
            continue
        with contextlib.suppress(OSError):
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


@dataclass
class _Run:
    """One started process of a container, with its log file."""

    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    dirs: dict[str, Path]
    oom_before: int


@dataclass
class PodWorker:
    """Everything the kubelet holds for one Pod; touched only by the sync thread."""

    uid: str
    pod: dict[str, Any]
    plan: PodPlan | None = None
    sandbox: PodSandbox | None = None
    ip: str | None = None
    states: dict[str, ContainerState] = field(default_factory=dict)
    runs: dict[str, _Run] = field(default_factory=dict)
    conditions: Conditions = field(default_factory=Conditions)
    start_time: dt.datetime | None = None
    phase: Phase = "Pending"
    posted: dict[str, Any] | None = None
    next_post_mono: float = 0.0
    error: str | None = None
    next_sandbox_mono: float = 0.0
    sandbox_backoff_s: float = 0.0
    terminal_since_mono: float | None = None
    kill_deadline_mono: float | None = None
    gone: bool = False
    deleted: bool = False
    pause_until_mono: float = 0.0
    events_sent: set[str] = field(default_factory=set)

    @property
    def namespace(self) -> str:
        return str(self.pod.get("metadata", {}).get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self.pod.get("metadata", {}).get("name", ""))

    @property
    def deleting(self) -> bool:
        return bool(self.pod.get("metadata", {}).get("deletionTimestamp"))


class MiniKubelet:
    """A Node of the cluster whose Pods run as real processes in sandboxes on this host.

    Use as a context manager, or start()/stop(). The probe reads exactly this kubelet's pods
    when pointed at ``cgroup_roots()`` (or ``pods_parent()``) with ``driver``; the same facts
    are on the Node as annotations under localcluster.kopeck.io/.
    """

    def __init__(
        self,
        api_client: Any,
        node_name: str | None = None,
        *,
        driver: Driver = "systemd",
        cgroup_prefix: str | None = None,
        subnet: str = "10.252.0.0/16",
        settings: NodeSettings | None = None,
        backoff: Backoff | None = None,
        max_grace_seconds: float = 30.0,
        terminated_cleanup_seconds: float = 2.0,
        heartbeat_seconds: float = 10.0,
        delete_node_on_stop: bool = True,
        log_dir: Path | None = None,
        cgroup_base: Path = CGROUP_BASE,
        request_timeout: float = 10.0,
        serve_logs: bool = True,
    ) -> None:
        from kubernetes import client

        base = settings or NodeSettings()
        if node_name is not None and node_name != base.name:
            base = dataclasses.replace(base, name=node_name)
        self.settings = base
        self.node_name = base.name
        self.driver: Driver = driver
        tag = secrets.token_hex(3)
        self.cgroup_prefix = cgroup_prefix or f"kopeck-kubelet-{os.getpid()}-{tag}"
        self.subnet = subnet
        self.backoff = backoff or Backoff()
        self.max_grace_seconds = max_grace_seconds
        self.terminated_cleanup_seconds = terminated_cleanup_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.delete_node_on_stop = delete_node_on_stop
        self.cgroup_base = cgroup_base
        self.request_timeout = request_timeout
        self.api_client = api_client
        # Bodies are plain JSON dicts (the shapes the API documents), hence Any here.
        self.core: Any = client.CoreV1Api(api_client)
        self.coordination: Any = client.CoordinationV1Api(api_client)
        self._made_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"kopeck-kubelet-{self.node_name}-"))
        self._tag = tag
        self._wire_seq = 0
        self._ips = IPAllocator(subnet)
        self.host: SandboxHost | None = None
        self.workers: dict[str, PodWorker] = {}
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_resp: Any = None
        self._boot_id = _read("/proc/sys/kernel/random/boot_id")
        self.node_registered = threading.Event()
        self.synced = threading.Event()
        self.errors: list[str] = []
        self.serve_logs = serve_logs
        self.log_server: LogServer | None = None

    # -- what the probe needs to know ------------------------------------------------
    def cgroup_roots(self) -> dict[str, Path]:
        """Hierarchy -> this kubelet's prefix directory (holds kubepods[.slice])."""
        if self.host is None:
            raise RuntimeError("kubelet not started")
        return {h: self.host.root_dir(h) for h in self.host.layout}

    def pods_parent(self, hierarchy: str = "unified") -> Path:
        """The kubepods directory of one hierarchy (kubepods.slice or kubepods)."""
        if self.host is None:
            raise RuntimeError("kubelet not started")
        return self.host.pods_parent(hierarchy)

    def probe_settings(self) -> dict[str, str]:
        """What kopeck_probe's settings need to read exactly this kubelet's pods."""
        return {"node_name": self.node_name, "prefix": self.cgroup_prefix, "driver": self.driver}

    def sandbox(self, uid: str) -> PodSandbox | None:
        """The live sandbox of a Pod by UID (None when it has none now)."""
        worker = self.workers.get(uid)
        return worker.sandbox if worker else None

    def pod_log_dir(self, namespace: str, name: str, uid: str) -> Path:
        """Where container output goes, laid out as /var/log/pods (<ns>_<name>_<uid>/<ctr>/)."""
        return self.log_dir / f"{namespace}_{name}_{uid}"

    def _pod_dir(self, namespace: str, name: str) -> Path | None:
        for w in list(self.workers.values()):
            if w.namespace == namespace and w.name == name:
                return self.pod_log_dir(namespace, name, w.uid)
        found = sorted(self.log_dir.glob(f"{namespace}_{name}_*"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def _log_files(self, namespace: str, name: str, container: str) -> list[Path]:
        pod_dir = self._pod_dir(namespace, name)
        if pod_dir is None:
            return []
        return sorted((pod_dir / container).glob("*.log"), key=lambda p: int(p.stem))

    def _is_running(self, namespace: str, name: str, container: str) -> bool:
        return any(
            w.namespace == namespace and w.name == name and container in w.runs
            for w in list(self.workers.values())
        )

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """The output of a Pod's container (every run, oldest first): stands in for kubectl logs."""
        out: list[str] = []
        for pod_dir in sorted(self.log_dir.glob(f"{namespace}_{name}_*")):
            for ctr_dir in sorted(pod_dir.iterdir()):
                if container is not None and ctr_dir.name != container:
                    continue
                for f in sorted(ctr_dir.glob("*.log"), key=lambda p: int(p.stem)):
                    out.append(f.read_text(errors="replace"))
        return "".join(out)

    # -- lifecycle ------------------------------------------------------------------
    def start(self, wait_seconds: float = 30.0) -> MiniKubelet:
        """Create the sandbox host, register the Node and begin syncing Pods."""
        self.host = SandboxHost(
            driver=self.driver,
            prefix=self.cgroup_prefix,
            subnet=self.subnet,
            cgroup_base=self.cgroup_base,
            network=True,
        )
        try:
            self.host.ensure_qos_tree()
            if self.serve_logs:
                self.log_server = LogServer(
                    self._log_files,
                    self._is_running,
                    self.log_dir / ".pki",
                    host=self.settings.internal_ip,
                ).start()
            self._register_node()
        except BaseException:
            if self.log_server is not None:
                self.log_server.stop()
                self.log_server = None
            self.host.close()
            self.host = None
            raise
        self.node_registered.set()
        for target, name in (
            (self._node_loop, "heartbeat"),
            (self._watch_loop, "watch"),
            (self._sync_loop, "sync"),
            (self._event_loop, "events"),
        ):
            t = threading.Thread(
                target=target, name=f"kubelet-{self.node_name}-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        if not self.synced.wait(wait_seconds):
            log.warning("kubelet %s: first pod list not done in %ss", self.node_name, wait_seconds)
        return self

    def stop(self, delete_node: bool | None = None) -> None:
        """Stop syncing, end every process and sandbox made, and (by default) remove the Node."""
        self._stop.set()
        resp = self._watch_resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()
        self._events.put(None)
        for t in self._threads:
            t.join(timeout=15)
        self._threads.clear()
        for worker in list(self.workers.values()):
            try:
                self._teardown(worker)
            except Exception:
                log.exception("tearing down pod %s/%s", worker.namespace, worker.name)
        if self.host is not None:
            self.host.close()
            self.host = None
        if self.log_server is not None:
            self.log_server.stop()
            self.log_server = None
        remove = self.delete_node_on_stop if delete_node is None else delete_node
        if remove:
            self._delete_node_objects()
        if self._made_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> MiniKubelet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- Node and Lease -----------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        s = self.settings
        capacity = {
            "cpu": str(s.cpu_cores),
            "memory": f"{s.memory_bytes // 1024}Ki",
            "pods": str(s.max_pods),
            "ephemeral-storage": f"{shutil.disk_usage('/').total // 1024}Ki",
        }
        now = rfc3339(_utcnow())

        def cond(ctype: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": ctype,
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._node_transition,
            }

        return {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                cond(
                    "MemoryPressure",
                    False,
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    False,
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    False,
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond("Ready", True, "KubeletReady", "kopeck mini-kubelet is posting ready status"),
            ],
            # No Hostname address: the apiserver would try it first to reach the kubelet
            # endpoint (kubectl logs), and a Node name need not resolve.
            "addresses": [{"type": "InternalIP", "address": s.internal_ip}],
            "daemonEndpoints": {
                "kubeletEndpoint": {"Port": self.log_server.port if self.log_server else 0}
            },
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": _read("/etc/machine-id"),
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "kopeck-sandbox://0.1.0",
                "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self.settings.all_labels()["kubernetes.io/arch"],
            },
        }

    def _node_body(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": self.settings.all_labels(),
                "annotations": {
                    f"{ANNOTATION_PREFIX}/cgroup-prefix": self.cgroup_prefix,
                    f"{ANNOTATION_PREFIX}/cgroup-driver": self.driver,
                    f"{ANNOTATION_PREFIX}/pod-subnet": self.subnet,
                },
            },
            "spec": {
                "podCIDR": self.subnet,
                "podCIDRs": [self.subnet],
                "providerID": f"kopeck://{self.node_name}",
                "taints": [dict(t) for t in self.settings.taints],
            },
            "status": self._node_status(),
        }

    def _register_node(self) -> None:
        from kubernetes.client.exceptions import ApiException

        self._node_transition = rfc3339(_utcnow())
        body = self._node_body()
        try:
            node = self.core.create_node(body, _request_timeout=self.request_timeout)
            self._node_uid = node.metadata.uid
        except ApiException as exc:
            if exc.status != 409:
                raise
            meta = {k: body["metadata"][k] for k in ("labels", "annotations")}
            node = self.core.patch_node(
                self.node_name,
                {"metadata": meta},
                _content_type=SMP,
                _request_timeout=self.request_timeout,
            )
            self._node_uid = node.metadata.uid
        self._post_node_status()
        self._renew_lease()
        self._clear_not_ready_taint()

    def _post_node_status(self) -> None:
        self.core.patch_node_status(
            self.node_name,
            {"status": self._node_status()},
            _content_type=SMP,
            _request_timeout=self.request_timeout,
        )

    def _renew_lease(self) -> None:
        from kubernetes.client.exceptions import ApiException

        now = rfc3339_micro(_utcnow())
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name,
                LEASE_NAMESPACE,
                {
                    "spec": {
                        "holderIdentity": self.node_name,
                        "renewTime": now,
                        "leaseDurationSeconds": LEASE_DURATION_S,
                    }
                },
                _content_type=MERGE,
                _request_timeout=self.request_timeout,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease(
                LEASE_NAMESPACE,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node_name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.node_name,
                                "uid": self._node_uid,
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": self.node_name,
                        "renewTime": now,
                        "leaseDurationSeconds": LEASE_DURATION_S,
                    },
                },
                _request_timeout=self.request_timeout,
            )

    def _clear_not_ready_taint(self) -> None:
        """Remove node.kubernetes.io/not-ready while Ready (the controller would, when running).

        The apiserver's TaintNodesByCondition admission adds it to every new Node; without a
        running node lifecycle controller nothing would ever schedule here.
        """
        node = self.api_client.sanitize_for_serialization(
            self.core.read_node(self.node_name, _request_timeout=self.request_timeout)
        )
        taints = node.get("spec", {}).get("taints") or []
        keep = [t for t in taints if t.get("key") != NOT_READY_TAINT]
        if len(keep) == len(taints):
            return
        patch = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": node["metadata"]["resourceVersion"],
            },
            {"op": "replace", "path": "/spec/taints", "value": keep},
        ]
        self.core.patch_node(
            self.node_name,
            patch,
            _content_type=JSON_PATCH,
            _request_timeout=self.request_timeout,
        )

    def _node_loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        wait = self.heartbeat_seconds
        while not self._stop.wait(wait):
            try:
                self._renew_lease()
                self._post_node_status()
                self._clear_not_ready_taint()
                wait = self.heartbeat_seconds
            except ApiException as exc:
                if exc.status == 404:
                    log.warning("node %s vanished: registering again", self.node_name)
                    with contextlib.suppress(Exception):
                        self._register_node()
                elif exc.status != 409:
                    log.warning("node %s heartbeat: %s", self.node_name, exc.reason)
                wait = min(2.0, self.heartbeat_seconds)
            except Exception as exc:
                log.warning("node %s heartbeat: %s", self.node_name, exc)
                wait = min(2.0, self.heartbeat_seconds)

    def _delete_node_objects(self) -> None:
        from kubernetes.client.exceptions import ApiException

        selector = f"spec.nodeName={self.node_name}"
        try:  # cordon first, so controllers' replacements are not bound here meanwhile
            self.core.patch_node(
                self.node_name,
                {"spec": {"unschedulable": True}},
                _content_type=SMP,
                _request_timeout=self.request_timeout,
            )
        except Exception as exc:
            log.debug("cordoning node %s: %s", self.node_name, exc)
        try:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=selector, _request_timeout=self.request_timeout
            )
            for pod in pods.items:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(
                        pod.metadata.name,
                        pod.metadata.namespace,
                        grace_period_seconds=0,
                        _request_timeout=self.request_timeout,
                    )
        except Exception as exc:
            log.warning("deleting pods of node %s: %s", self.node_name, exc)
        calls: list[tuple[Any, tuple[str, ...]]] = [
            (self.coordination.delete_namespaced_lease, (self.node_name, LEASE_NAMESPACE)),
            (self.core.delete_node, (self.node_name,)),
        ]
        for call, args in calls:
            try:
                call(*args, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("deleting node %s objects: %s", self.node_name, exc.reason)
            except Exception as exc:
                log.warning("deleting node %s objects: %s", self.node_name, exc)

    # -- Pod watch -----------------------------------------------------------------
    def _watch_loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                rv = self._watch_once(rv)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("pod watch on %s: %s %s", self.node_name, exc.status, exc.reason)
                    self._stop.wait(1.0)
                rv = None
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("pod watch on %s: %s", self.node_name, exc)
                    self._stop.wait(1.0)
                rv = None

    def _relist(self) -> str:
        resp = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}",
            _preload_content=False,
            _request_timeout=self.request_timeout,
        )
        data = json.loads(resp.data)
        self._queue.put(("RELIST", data.get("items") or []))
        return str(data["metadata"]["resourceVersion"])

    def _watch_once(self, rv: str) -> str | None:
        from kubernetes.watch.watch import iter_resp_lines

        resp = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}",
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=30,
            _preload_content=False,
            _request_timeout=(self.request_timeout, 45),
        )
        self._watch_resp = resp
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._queue.put((etype, obj))
        finally:
            self._watch_resp = None
            with contextlib.suppress(Exception):
                resp.close()
                resp.release_conn()
        return rv

    # -- events ---------------------------------------------------------------------
    def _event(
        self,
        worker: PodWorker,
        reason: str,
        message: str,
        kind: str = "Normal",
        container: str | None = None,
    ) -> None:
        now = rfc3339(_utcnow())
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": worker.namespace,
            "name": worker.name,
            "uid": worker.uid,
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        self._events.put(
            {
                "metadata": {"generateName": f"{worker.name}.", "namespace": worker.namespace},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": "kubelet", "host": self.node_name},
                "reportingComponent": "kubelet",
                "reportingInstance": self.node_name,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
        (log.warning if kind == "Warning" else log.info)(
            "pod %s/%s: %s: %s", worker.namespace, worker.name, reason, message
        )

    def _event_loop(self) -> None:
        while True:
            body = self._events.get()
            if body is None:
                return
            try:
                self.core.create_namespaced_event(
                    body["metadata"]["namespace"], body, _request_timeout=self.request_timeout
                )
            except Exception as exc:  # events are best effort, as in the kubelet
                log.debug("event not posted: %s", exc)

    # -- sync -----------------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                etype, obj = self._queue.get(timeout=0.2)
                self._apply(etype, obj)
                while True:
                    etype, obj = self._queue.get_nowait()
                    self._apply(etype, obj)
            except queue.Empty:
                pass
            except Exception:
                log.exception("kubelet %s: applying a pod event", self.node_name)
            for worker in list(self.workers.values()):
                if self._stop.is_set():
                    break
                if time.monotonic() < worker.pause_until_mono:
                    continue
                try:
                    self._sync_pod(worker)
                except Exception as exc:
                    # a bug or a kernel refusal: record it once, retry this pod in a while
                    worker.pause_until_mono = time.monotonic() + 2.0
                    msg = f"pod {worker.namespace}/{worker.name}: {exc}"
                    if msg in self.errors:
                        continue
                    self.errors.append(msg)
                    log.exception(
                        "kubelet %s: syncing pod %s/%s",
                        self.node_name,
                        worker.namespace,
                        worker.name,
                    )

    def _apply(self, etype: str, obj: Any) -> None:
        if etype == "RELIST":
            seen = set()
            for pod in obj:
                self._upsert(pod)
                seen.add(pod["metadata"]["uid"])
            for uid, worker in self.workers.items():
                if uid not in seen:
                    worker.gone = True
            self.synced.set()
        elif etype == "DELETED":
            gone = self.workers.get(obj["metadata"]["uid"])
            if gone is not None:
                gone.pod = obj
                gone.gone = True
        else:
            self._upsert(obj)

    def _upsert(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is None:
            phase = (pod.get("status") or {}).get("phase")
            worker = PodWorker(uid=uid, pod=pod)
            if phase in ("Succeeded", "Failed"):
                worker.phase = phase
                worker.terminal_since_mono = time.monotonic()
            self.workers[uid] = worker
        else:
            worker.pod = pod

    def _sync_pod(self, w: PodWorker) -> None:
        now_mono = time.monotonic()
        if w.gone:
            self._teardown(w)
            self.workers.pop(w.uid, None)
            return
        if w.deleting:
            self._sync_deletion(w, now_mono)
            return
        if w.phase in ("Succeeded", "Failed"):
            if w.plan is None:
                return  # finished before this kubelet started: nothing to run or post
            if (
                w.sandbox is not None
                and w.terminal_since_mono is not None
                and now_mono - w.terminal_since_mono >= self.terminated_cleanup_seconds
            ):
                self._close_sandbox(w)
            self._post_status(w, now_mono)
            return
        if w.sandbox is None:
            if now_mono < w.next_sandbox_mono:
                return
            if not self._make_sandbox(w, now_mono):
                self._post_status(w, now_mono)
                return
        self._sync_containers(w, now_mono)
        self._post_status(w, now_mono)

    def _make_sandbox(self, w: PodWorker, now_mono: float) -> bool:
        assert self.host is not None
        try:
            host_network = bool((w.pod.get("spec") or {}).get("hostNetwork"))
            ip = self.settings.internal_ip if host_network else self._ips.take()
            w.ip = ip
            base_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "TERM": "xterm"}
            w.plan = plan_pod(
                w.pod, base_env, shutil.which, host_ip=self.settings.internal_ip, pod_ip=ip
            )
            sandbox = self.host.pod(
                qos=_qos_dir(w.plan.qos),
                network=False,
                uid=w.uid,
                namespace=w.plan.namespace,
                name=w.plan.name,
            )
            w.sandbox = sandbox
            errors = enable_v2_controllers(self.host.layout["unified"], sandbox.dirs["unified"])
            errors += write_limits(sandbox.dirs, w.plan.pod_limits)
            for err in errors:
                self._event(w, "FailedLimits", f"pod cgroup: {err}", "Warning")
            if not host_network:
                self._wire(sandbox, ip)
        except Exception as exc:
            w.plan = None  # planned again on the next attempt
            if w.sandbox is not None:
                self._close_sandbox(w)
            elif w.ip and w.ip != self.settings.internal_ip:
                self._ips.give_back(w.ip)
                w.ip = None
            w.sandbox_backoff_s = self.backoff.next_delay(w.sandbox_backoff_s, 0)
            w.next_sandbox_mono = now_mono + w.sandbox_backoff_s
            reason = "Failed" if isinstance(exc, PodSpecError) else "FailedCreatePodSandBox"
            w.error = f"{reason}: {exc}"
            if w.error not in w.events_sent:
                w.events_sent.add(w.error)
                self._event(w, reason, str(exc), "Warning")
            return False
        w.error = None
        w.start_time = w.start_time or _utcnow()
        if not w.states:
            previous = {
                s.get("name"): int(s.get("restartCount") or 0)
                for s in ((w.pod.get("status") or {}).get("containerStatuses") or [])
            }
            for plan in w.plan.all_containers:
                state = ContainerState.from_plan(plan)
                state.restart_count = previous.get(plan.name, 0)
                w.states[plan.name] = state
        self._event(w, "SandboxReady", f"sandbox ready: ip {ip}, cgroup {sandbox.dirs['unified']}")
        return True

    def _wire(self, sandbox: PodSandbox, ip: str) -> None:
        """A netns with eth0 (the pod IP) on the host's bridge; names unique for this kubelet."""
        assert self.host is not None and self.host.bridge is not None
        self._wire_seq += 1
        seq = f"{self._tag}{self._wire_seq:06d}"
        sandbox.netns = f"kpk-{seq}"
        sandbox.host_veth = f"kpv{seq}"
        peer = f"kpp{seq}"
        prefixlen = ipaddress.ip_network(self.subnet).prefixlen
        _run_ip("netns", "add", sandbox.netns)
        _run_ip("link", "add", sandbox.host_veth, "type", "veth", "peer", "name", peer)
        _run_ip("link", "set", peer, "netns", sandbox.netns)
        _run_ip("link", "set", sandbox.host_veth, "master", self.host.bridge)
        _run_ip("link", "set", sandbox.host_veth, "up")
        ns = ["-n", sandbox.netns]
        _run_ip(*ns, "link", "set", peer, "name", "eth0")
        _run_ip(*ns, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
        _run_ip(*ns, "link", "set", "eth0", "up")
        _run_ip(*ns, "link", "set", "lo", "up")
        sandbox.ip = ip

    def _plans(self, w: PodWorker) -> dict[str, ContainerPlan]:
        assert w.plan is not None
        return {p.name: p for p in w.plan.all_containers}

    def _sync_containers(self, w: PodWorker, now_mono: float) -> None:
        assert w.plan is not None
        plans = self._plans(w)
        now = _utcnow()
        # 1. reap exited processes
        for name, run in list(w.runs.items()):
            rc = run.proc.poll()
            if rc is None:
                continue
            self._finish_run(w, name)
            state = w.states[name]
            code = exit_code_of(rc)
            reason = "OOMKilled" if _oom_kills(run.dirs) > run.oom_before else None
            restart = state.mark_exited(code, now, now_mono, self.backoff, reason=reason)
            if restart:
                self._event(w, "BackOff", state.message or "back-off", "Warning", name)
            elif code != 0:
                self._event(w, "Failed", f"container {name} exited with {code}", "Warning", name)
        # 2. start what is due: init containers in order, then the regular ones
        inits = [w.states[p.name] for p in w.plan.init_containers]
        for state in inits:
            if state.kind == "sidecar" and state.runs > 0 and state.may_start(now_mono):
                self._start(w, plans[state.name], now, now_mono)
        if not init_done(inits):
            nxt = next_init(inits)
            if nxt is not None and nxt.may_start(now_mono) and nxt.name not in w.runs:
                self._start(w, plans[nxt.name], now, now_mono)
        if init_done(inits):
            for p in w.plan.containers:
                state = w.states[p.name]
                if state.may_start(now_mono) and p.name not in w.runs:
                    self._start(w, p, now, now_mono)
        # 3. phase; a finished pod stops its sidecars and gives up its sandbox soon
        regular = [w.states[p.name] for p in w.plan.containers]
        w.phase = pod_phase(inits, regular, w.plan.restart_policy, sandbox_ready=True)
        if w.phase in ("Succeeded", "Failed"):
            for name in list(w.runs):
                self._kill_run(w, name)
                w.states[name].mark_killed(now)
            for state in w.states.values():
                if state.state == "waiting":
                    state.mark_killed(now)
            w.terminal_since_mono = now_mono

    def _start(self, w: PodWorker, plan: ContainerPlan, now: dt.datetime, now_mono: float) -> None:
        assert w.sandbox is not None
        state = w.states[plan.name]
        if plan.name in w.sandbox.containers:
            w.sandbox.remove_container(plan.name)  # a restart is a new container
        dirs = w.sandbox.container_dirs(plan.name)
        cid = "containerd://" + w.sandbox.containers[plan.name].container_id
        for err in write_limits(dirs, plan.limits):
            self._event(w, "FailedLimits", f"container {plan.name}: {err}", "Warning", plan.name)
        if plan.note and f"note:{plan.name}" not in w.events_sent:
            w.events_sent.add(f"note:{plan.name}")
            kind = "Warning" if plan.argv == SLEEP_FOREVER else "Normal"
            self._event(w, "NoCommand", plan.note, kind, plan.name)
        exe = shutil.which(plan.argv[0], path=plan.env.get("PATH", DEFAULT_PATH))
        cwd = plan.working_dir if plan.working_dir and Path(plan.working_dir).is_dir() else "/"
        state.mark_started(cid, now, now_mono)
        if exe is None:
            msg = (
                f"exec: {plan.argv[0]!r}: executable file not found in $PATH on node "
                f"{self.node_name} (images are not pulled: the command must exist on the host)"
            )
            self._event(w, "Failed", msg, "Warning", plan.name)
            state.mark_exited(128, now, now_mono, self.backoff, reason="StartError", message=msg)
            return
        log_dir = self.pod_log_dir(w.namespace, w.name, w.uid) / plan.name
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_dir / f"{state.restart_count}.log", "ab")  # noqa: SIM115
        try:
            proc = w.sandbox.run(
                plan.exec_argv(),
                container=plan.name,
                env=plan.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            log_file.close()
            msg = f"starting {plan.argv[0]!r}: {exc}"
            self._event(w, "Failed", msg, "Warning", plan.name)
            state.mark_exited(128, now, now_mono, self.backoff, reason="StartError", message=msg)
            return
        w.runs[plan.name] = _Run(proc=proc, log=log_file, dirs=dirs, oom_before=_oom_kills(dirs))
        self._event(
            w,
            "Started",
            f"Started container {plan.name}: {' '.join(plan.argv)}",
            container=plan.name,
        )

    def _finish_run(self, w: PodWorker, name: str) -> None:
        """After the main process exited: end what it left in the container's cgroups."""
        run = w.runs.pop(name)
        deadline = time.monotonic() + 5
        while (pids := _cgroup_pids(run.dirs)) and time.monotonic() < deadline:
            _signal_all(pids, signal.SIGKILL)
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            run.log.close()

    def _kill_run(self, w: PodWorker, name: str) -> None:
        run = w.runs.get(name)
        if run is None:
            return
        if run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(timeout=5)
        self._finish_run(w, name)

    def _sync_deletion(self, w: PodWorker, now_mono: float) -> None:
        """Graceful stop: SIGTERM, SIGKILL after the (bounded) grace period, then finalize."""
        from kubernetes.client.exceptions import ApiException

        if w.kill_deadline_mono is None:
            grace = w.pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = (w.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            grace_s = min(float(grace), self.max_grace_seconds)
            w.kill_deadline_mono = now_mono + grace_s
            if w.runs:
                self._event(w, "Killing", f"Stopping containers (grace {grace_s:g}s)")
            for run in w.runs.values():
                if run.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(run.proc.pid, signal.SIGTERM)
                _signal_all(_cgroup_pids(run.dirs), signal.SIGTERM)
        alive = any(r.proc.poll() is None or _cgroup_pids(r.dirs) for r in w.runs.values())
        if alive and now_mono < w.kill_deadline_mono:
            return
        if not w.deleted:
            self._teardown(w)
        if now_mono < w.next_post_mono:
            return
        try:
            self.core.delete_namespaced_pod(
                w.name,
                w.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": w.uid}},
                grace_period_seconds=0,
                _request_timeout=self.request_timeout,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning(
                    "deleting pod %s/%s: %s %s", w.namespace, w.name, exc.status, exc.reason
                )
                w.next_post_mono = now_mono + 1.0
                return
        except Exception as exc:
            log.warning("deleting pod %s/%s: %s", w.namespace, w.name, exc)
            w.next_post_mono = now_mono + 1.0
            return
        self.workers.pop(w.uid, None)

    def _close_sandbox(self, w: PodWorker) -> None:
        if w.sandbox is not None:
            w.sandbox.close()
            w.sandbox = None
        if w.ip and w.ip != self.settings.internal_ip:
            self._ips.give_back(w.ip)
        w.ip = None

    def _teardown(self, w: PodWorker) -> None:
        now = _utcnow()
        for name in list(w.runs):
            self._kill_run(w, name)
            if name in w.states:
                w.states[name].mark_killed(now)
        self._close_sandbox(w)
        w.deleted = True

    # -- status ---------------------------------------------------------------------
    def _post_status(self, w: PodWorker, now_mono: float) -> None:
        from kubernetes.client.exceptions import ApiException

        status = self._status(w)
        if status == w.posted or now_mono < w.next_post_mono:
            return
        try:
            self.core.patch_namespaced_pod_status(
                w.name,
                w.namespace,
                {"metadata": {"uid": w.uid}, "status": status},
                _content_type=SMP,
                _request_timeout=self.request_timeout,
            )
            w.posted = status
        except ApiException as exc:
            if exc.status == 404:
                w.gone = True
                return
            w.next_post_mono = now_mono + 1.0
            log.warning("status of pod %s/%s: %s %s", w.namespace, w.name, exc.status, exc.reason)
        except Exception as exc:
            w.next_post_mono = now_mono + 1.0
            log.warning("status of pod %s/%s: %s", w.namespace, w.name, exc)

    def _status(self, w: PodWorker) -> dict[str, Any]:
        now = _utcnow()
        existing = (w.pod.get("status") or {}).get("conditions") or []
        if w.plan is None:
            if w.phase in ("Succeeded", "Failed"):
                return dict(w.pod.get("status") or {})
            # not yet runnable: say why, as a kubelet does with a waiting reason
            return {
                "phase": "Pending",
                "hostIP": self.settings.internal_ip,
                "hostIPs": [{"ip": self.settings.internal_ip}],
                "message": w.error,
                "reason": "SandboxFailed" if w.error else None,
            }
        inits = [w.states[p.name] for p in w.plan.init_containers]
        regular = [w.states[p.name] for p in w.plan.containers]
        sandbox_ready = w.sandbox is not None or w.phase in ("Succeeded", "Failed")
        desired = desired_conditions(w.phase, sandbox_ready, inits, regular)
        return pod_status(
            phase=w.phase,
            conditions=w.conditions.render(desired, now, existing),
            host_ip=self.settings.internal_ip,
            pod_ip=w.ip or ((w.posted or {}).get("podIP")),
            start_time=w.start_time,
            qos=w.plan.qos,
            inits=inits,
            containers=regular,
        )


def run_forever(
    api_client: Any, on_ready: Callable[[MiniKubelet], None] | None = None, **kwargs: Any
) -> None:
    """Run a MiniKubelet until SIGINT/SIGTERM (for `kopeck demo` and by hand), then clean up."""
    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        with MiniKubelet(api_client, **kwargs) as kubelet:
            if on_ready is not None:
                on_ready(kubelet)
            done.wait()
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


__all__ = [
    "Backoff",
    "IPAllocator",
    "MiniKubelet",
    "NodeSettings",
    "default_node_name",
    "run_forever",
    "write_limits",
]
