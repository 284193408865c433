"""What the mini-kubelet must run for a Pod, computed from the Pod object alone (pure).

The Pod arrives as the JSON the apiserver serves. Everything the kubelet decides from the
spec — QoS class, the cgroup limits it writes, the argv and environment of each container —
is derived here without I/O, so each rule can be checked against recorded Pods in unit tests
and matches what a real kubelet would have done with the same object.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

from kopeck.rightsizing.quantity import QuantityError, parse_quantity

QoSClass = Literal["Guaranteed", "Burstable", "BestEffort"]
RestartPolicy = Literal["Always", "OnFailure", "Never"]
ContainerKind = Literal["init", "sidecar", "regular"]

CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
MIN_SHARES = 2
SHARES_PER_CPU = 1024
SLEEP_FOREVER = ("sleep", "infinity")
_QOS_RESOURCES = ("cpu", "memory")
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class PodSpecError(ValueError):
    """A Pod this kubelet cannot run as written (names the pod and field)."""


@dataclass(frozen=True)
class CgroupLimits:
    """What the kubelet writes into one cgroup: CFS quota, shares and memory limit."""

    cpu_quota_us: int | None = None
    cpu_shares: int | None = None
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class ContainerPlan:
    """One container as this host will run it."""

    name: str
    kind: ContainerKind
    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str | None
    image: str
    restart_policy: RestartPolicy
    limits: CgroupLimits
    note: str | None = None
    """Why argv is not the spec's command (no command given): shown in an Event."""
    run_as_user: int | None = None
    run_as_group: int | None = None

    def exec_argv(self) -> tuple[str, ...]:
        """argv as started: under setpriv when the securityContext names a user or group."""
        if self.run_as_user is None and self.run_as_group is None:
            return self.argv
        ids: list[str] = []
        if self.run_as_user is not None:
            ids.append(f"--reuid={self.run_as_user}")
        ids.append(f"--regid={self.run_as_group if self.run_as_group is not None else 0}")
        return ("setpriv", *ids, "--clear-groups", "--", *self.argv)


@dataclass(frozen=True)
class PodPlan:
    """A Pod reduced to what the kubelet needs to create its sandbox and run it."""

    uid: str
    namespace: str
    name: str
    qos: QoSClass
    restart_policy: RestartPolicy
    grace_period_seconds: int
    pod_limits: CgroupLimits
    init_containers: tuple[ContainerPlan, ...]
    containers: tuple[ContainerPlan, ...]
    host_network: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def all_containers(self) -> tuple[ContainerPlan, ...]:
        return self.init_containers + self.containers


def _quantities(resources: Mapping[str, Any] | None, key: str) -> dict[str, Decimal]:
    raw = (resources or {}).get(key) or {}
    out: dict[str, Decimal] = {}
    for name, value in raw.items():
        try:
            out[name] = parse_quantity(value)
        except QuantityError as exc:
            raise PodSpecError(f"resources.{key}.{name}: {exc}") from exc
    return out


def compute_qos(pod: Mapping[str, Any]) -> QoSClass:
    """The Pod's QoS class by Kubernetes' rules (v1 helper ComputePodQOS).

    Requests (defaulted to limits, as the apiserver does) and limits of cpu and memory are
    summed over regular and init containers (or taken from pod-level resources when given);
    Guaranteed needs every container to limit both and the sums of requests to equal the
    sums of limits.
    """
    spec = pod.get("spec") or {}
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True

    def add(into: dict[str, Decimal], values: dict[str, Decimal]) -> set[str]:
        found: set[str] = set()
        for name, qty in values.items():
            if name in _QOS_RESOURCES and qty > 0:
                into[name] = into.get(name, Decimal(0)) + qty
                found.add(name)
        return found

    def defaulted(res: Mapping[str, Any] | None) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        # the apiserver defaults a missing request to its limit before anyone reads the pod
        lim = _quantities(res, "limits")
        return {**lim, **_quantities(res, "requests")}, lim

    pod_resources = spec.get("resources")
    if pod_resources and (pod_resources.get("requests") or pod_resources.get("limits")):
        req, lim = defaulted(pod_resources)
        add(requests, req)
        if add(limits, lim) != set(_QOS_RESOURCES):
            guaranteed = False
    else:
        for ctr in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            req, lim = defaulted(ctr.get("resources"))
            add(requests, req)
            if add(limits, lim) != set(_QOS_RESOURCES):
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed:
        for name, total in requests.items():
            if limits.get(name) != total:
                guaranteed = False
                break
    if guaranteed and len(requests) == len(limits):
        return "Guaranteed"
    return "Burstable"


def _milli_cpu(cores: Decimal) -> int:
    return int((cores * 1000).to_integral_value(rounding=ROUND_CEILING))


def _bytes(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def quota_us(milli_cpu: int) -> int:
    """CFS quota for a CPU limit, as the kubelet's MilliCPUToQuota computes it."""
    return max(milli_cpu * CFS_PERIOD_US // 1000, MIN_QUOTA_US)


def shares(milli_cpu: int) -> int:
    """cpu.shares for a CPU request, as the kubelet's MilliCPUToShares computes it."""
    return max(milli_cpu * SHARES_PER_CPU // 1000, MIN_SHARES)


def container_limits(ctr: Mapping[str, Any]) -> CgroupLimits:
    """The cgroup values of one container: its own limit and request, nothing inherited."""
    res = ctr.get("resources")
    lim = _quantities(res, "limits")
    req = _quantities(res, "requests")
    cpu_limit = lim.get("cpu")
    cpu_request = req.get("cpu", cpu_limit)
    mem = lim.get("memory")
    return CgroupLimits(
        cpu_quota_us=quota_us(_milli_cpu(cpu_limit)) if cpu_limit else None,
        cpu_shares=shares(_milli_cpu(cpu_request)) if cpu_request is not None else MIN_SHARES,
        memory_limit_bytes=_bytes(mem) if mem else None,
    )


def _effective(
    containers: list[Mapping[str, Any]], inits: list[Mapping[str, Any]], key: str, name: str
) -> Decimal | None:
    """Sum over regular containers, at least the largest init container (PodLimits/Requests).

    None when some container does not declare it (only meaningful for limits).
    """
    total = Decimal(0)
    for ctr in containers:
        value = _quantities(ctr.get("resources"), key).get(name)
        if value is None:
            return None
        total += value
    for ctr in inits:
        value = _quantities(ctr.get("resources"), key).get(name)
        if value is None:
            return None
        total = max(total, value)
    return total


def pod_limits(pod: Mapping[str, Any], qos: QoSClass) -> CgroupLimits:
    """The pod cgroup's values (ResourceConfigForPod): limits only when every container sets one."""
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    inits = list(spec.get("initContainers") or [])
    pod_resources = spec.get("resources") or {}
    pod_lim = _quantities(pod_resources, "limits")
    pod_req = _quantities(pod_resources, "requests")
    cpu_limit = pod_lim.get("cpu", _effective(containers, inits, "limits", "cpu"))
    mem_limit = pod_lim.get("memory", _effective(containers, inits, "limits", "memory"))
    cpu_request = pod_req.get("cpu")
    if cpu_request is None:
        total = Decimal(0)
        for ctr in containers:
            res = ctr.get("resources")
            total += _quantities(res, "requests").get(
                "cpu", _quantities(res, "limits").get("cpu", Decimal(0))
            )
        cpu_request = total
    if qos == "BestEffort":
        return CgroupLimits(cpu_shares=MIN_SHARES)
    return CgroupLimits(
        cpu_quota_us=quota_us(_milli_cpu(cpu_limit)) if cpu_limit else None,
        cpu_shares=shares(_milli_cpu(cpu_request)),
        memory_limit_bytes=_bytes(mem_limit) if mem_limit else None,
    )


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known names are replaced, $$ escapes, others stay as is."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, text)


def container_env(
    ctr: Mapping[str, Any],
    pod: Mapping[str, Any],
    base: Mapping[str, str],
    host_ip: str = "",
    pod_ip: str = "",
) -> dict[str, str]:
    """base (PATH, HOSTNAME, ...) plus the spec's env: plain values and metadata/status fieldRefs.

    Values from Secrets, ConfigMaps and resource fields are not resolved here: such a
    variable is left out, as a missing optional reference would be.
    """
    env = dict(base)
    meta = pod.get("metadata") or {}
    fields = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.podIP": pod_ip,
    }
    for var in ctr.get("env") or []:
        name = var.get("name")
        if not name:
            continue
        if "value" in var and var["value"] is not None:
            env[name] = expand_vars(str(var["value"]), env)
        elif "valueFrom" in var:
            ref = (var["valueFrom"] or {}).get("fieldRef") or {}
            path = ref.get("fieldPath")
            if path in fields:
                env[name] = str(fields[path])
        else:
            env[name] = ""
    return env


def image_entrypoint(image: str, which: Callable[[str], str | None]) -> str | None:
    """A host binary named like the image ("alexeiled/stress-ng:0.12" -> "stress-ng"), if any."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    name = last.split(":", 1)[0]
    if name and which(name):
        return name
    return None


def container_argv(
    ctr: Mapping[str, Any], env: Mapping[str, str], which: Callable[[str], str | None]
) -> tuple[tuple[str, ...], str | None]:
    """command + args with $(VAR) expanded; for no command, the image's namesake or sleep.

    The image is never pulled: a container without a command has no entrypoint here, so
    with args it runs the host binary named like the image, and with neither it sleeps
    forever. The second value says which substitution was made (None when none was).
    """
    command = [expand_vars(str(c), env) for c in ctr.get("command") or []]
    args = [expand_vars(str(a), env) for a in ctr.get("args") or []]
    if command:
        return tuple(command + args), None
    image = str(ctr.get("image") or "")
    if args:
        entry = image_entrypoint(image, which)
        if entry is not None:
            return (entry, *args), (
                f"container {ctr.get('name')!r} has no command: running host binary "
                f"{entry!r} (named like image {image!r}) with its args"
            )
    return SLEEP_FOREVER, (
        f"container {ctr.get('name')!r} has no command (image {image!r} is not pulled on "
        "this host): running 'sleep infinity' instead; set spec.containers[].command"
    )


def plan_pod(
    pod: Mapping[str, Any],
    base_env: Mapping[str, str],
    which: Callable[[str], str | None],
    host_ip: str = "",
    pod_ip: str = "",
) -> PodPlan:
    """Everything the kubelet will do for this Pod, decided from the object alone."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    uid = str(meta.get("uid") or "")
    if not uid:
        raise PodSpecError(f"pod {meta.get('namespace')}/{meta.get('name')} has no metadata.uid")
    status_qos = (pod.get("status") or {}).get("qosClass")
    qos: QoSClass = (
        status_qos
        if status_qos in ("Guaranteed", "Burstable", "BestEffort")
        else (compute_qos(pod))
    )
    policy: RestartPolicy = spec.get("restartPolicy") or "Always"
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)

    pod_security = spec.get("securityContext") or {}

    def plan(ctr: Mapping[str, Any], kind: ContainerKind) -> ContainerPlan:
        base = {**base_env, "HOSTNAME": str(meta.get("name", ""))}
        env = container_env(ctr, pod, base, host_ip=host_ip, pod_ip=pod_ip)
        argv, note = container_argv(ctr, env, which)
        ctr_policy: RestartPolicy
        if kind == "init":
            ctr_policy = "Never" if policy == "Never" else "OnFailure"
        elif kind == "sidecar":
            ctr_policy = "Always"
        else:
            ctr_policy = policy
        security = {**pod_security, **(ctr.get("securityContext") or {})}
        user = security.get("runAsUser")
        group = security.get("runAsGroup")
        if security.get("runAsNonRoot") and not user:
            raise PodSpecError(
                f"pod {meta.get('namespace')}/{meta.get('name')} container {ctr.get('name')!r}: "
                "runAsNonRoot is set but no non-zero runAsUser is given (no image to read a "
                "USER from): set securityContext.runAsUser"
            )
        return ContainerPlan(
            name=str(ctr.get("name") or "main"),
            run_as_user=int(user) if user is not None else None,
            run_as_group=int(group) if group is not None else None,
            kind=kind,
            argv=argv,
            env=env,
            working_dir=ctr.get("workingDir"),
            image=str(ctr.get("image") or ""),
            restart_policy=ctr_policy,
            limits=container_limits(ctr),
            note=note,
        )

    inits = tuple(
        plan(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
        for c in spec.get("initContainers") or []
    )
    regular = tuple(plan(c, "regular") for c in spec.get("containers") or [])
    if not regular:
        raise PodSpecError(
            f"pod {meta.get('namespace')}/{meta.get('name')}: spec.containers is empty"
        )
    return PodPlan(
        uid=uid,
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        qos=qos,
        restart_policy=policy,
        grace_period_seconds=int(grace),
        pod_limits=pod_limits(pod, qos),
        init_containers=inits,
        containers=regular,
        host_network=bool(spec.get("hostNetwork")),
        labels=dict(meta.get("labels") or {}),
    )
