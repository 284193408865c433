"""The mini-kubelet's decisions from the Pod object alone: QoS, cgroup values, argv, env."""

from __future__ import annotations

from typing import Any

import pytest

from kopeck.localcluster.kubelet_spec import (
    SLEEP_FOREVER,
    CgroupLimits,
    PodSpecError,
    compute_qos,
    container_argv,
    container_env,
    expand_vars,
    image_entrypoint,
    plan_pod,
    pod_limits,
    quota_us,
    shares,
)


def ctr(
    name: str = "main",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests:
        res["requests"] = requests
    if limits:
        res["limits"] = limits
    return {"name": name, "image": "busybox", "resources": res, **extra}


def pod(
    *containers: dict[str, Any], inits: tuple[dict[str, Any], ...] = (), **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "1234-5678"},
        "spec": {"containers": list(containers), "initContainers": list(inits), **spec},
    }


@pytest.mark.parametrize(
    ("containers", "inits", "expected"),
    [
        ([ctr()], [], "BestEffort"),
        ([ctr(requests={"cpu": "0"})], [], "BestEffort"),
        ([ctr(limits={"cpu": "1", "memory": "1Gi"})], [], "Guaranteed"),
        (
            [ctr(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "1", "memory": "1Gi"})],
            [],
            "Guaranteed",
        ),
        (
            [
                ctr(
                    requests={"cpu": "1000m", "memory": "1024Mi"},
                    limits={"cpu": "1", "memory": "1Gi"},
                )
            ],
            [],
            "Guaranteed",
        ),
        (
            [ctr(requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1", "memory": "1Gi"})],
            [],
            "Burstable",
        ),
        ([ctr(limits={"cpu": "1"})], [], "Burstable"),
        ([ctr(requests={"memory": "10Mi"})], [], "Burstable"),
        # one container without limits breaks Guaranteed for the whole pod
        ([ctr(limits={"cpu": "1", "memory": "1Gi"}), ctr("b")], [], "Burstable"),
        # init containers count too
        (
            [ctr(limits={"cpu": "1", "memory": "1Gi"})],
            [ctr("i", requests={"cpu": "100m"})],
            "Burstable",
        ),
        (
            [ctr(limits={"cpu": "1", "memory": "1Gi"})],
            [ctr("i", limits={"cpu": "1", "memory": "1Gi"})],
            "Guaranteed",
        ),
        # only cpu and memory decide
        ([ctr(limits={"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"})], [], "Guaranteed"),
        ([ctr(requests={"ephemeral-storage": "1Gi"})], [], "BestEffort"),
    ],
)
def test_qos_follows_kubernetes_rules(
    containers: list[dict[str, Any]], inits: list[dict[str, Any]], expected: str
) -> None:
    assert compute_qos(pod(*containers, inits=tuple(inits))) == expected


def test_qos_uses_pod_level_resources_when_given() -> None:
    p = pod(ctr(), resources={"limits": {"cpu": "2", "memory": "1Gi"}})
    assert compute_qos(p) == "Guaranteed"
    p = pod(ctr(), resources={"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    assert compute_qos(p) == "Burstable"


def test_kubelet_cpu_conversions() -> None:
    assert quota_us(250) == 25_000
    assert quota_us(1) == 1_000  # the kernel's minimum quota
    assert shares(0) == 2
    assert shares(100) == 102
    assert shares(1000) == 1024


def test_pod_cgroup_limits_sum_containers_and_respect_init_max() -> None:
    p = pod(
        ctr("a", limits={"cpu": "250m", "memory": "64Mi"}),
        ctr("b", limits={"cpu": "290m", "memory": "32Mi"}),
    )
    assert pod_limits(p, "Guaranteed") == CgroupLimits(
        cpu_quota_us=54_000, cpu_shares=shares(540), memory_limit_bytes=96 * 2**20
    )
    # an init container larger than the sum sets the pod limit
    p = pod(
        ctr("a", limits={"cpu": "100m", "memory": "10Mi"}),
        inits=(ctr("i", limits={"cpu": "2", "memory": "10Mi"}),),
    )
    assert pod_limits(p, "Guaranteed").cpu_quota_us == 200_000


def test_pod_cgroup_limit_unset_when_one_container_has_none() -> None:
    p = pod(ctr("a", limits={"cpu": "1", "memory": "1Gi"}), ctr("b", requests={"cpu": "100m"}))
    lim = pod_limits(p, "Burstable")
    assert lim.cpu_quota_us is None and lim.memory_limit_bytes is None
    assert lim.cpu_shares == shares(1100)
    assert pod_limits(pod(ctr()), "BestEffort") == CgroupLimits(cpu_shares=2)


def test_var_expansion_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)", env) == "1-two"
    assert expand_vars("$(MISSING)", env) == "$(MISSING)"
    assert expand_vars("$$(A)", env) == "$(A)"
    assert expand_vars("cost $5", env) == "cost $5"


def test_env_plain_values_and_field_refs() -> None:
    c = ctr(
        env=[
            {"name": "X", "value": "x"},
            {"name": "Y", "value": "$(X)y"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "EMPTY"},
        ]
    )
    env = container_env(c, pod(c), {"PATH": "/bin"}, pod_ip="10.0.0.2")
    assert env == {"PATH": "/bin", "X": "x", "Y": "xy", "POD": "p", "IP": "10.0.0.2", "EMPTY": ""}


def which_only(*names: str) -> Any:
    return lambda name: f"/usr/bin/{name}" if name in names else None


def test_argv_from_command_and_args_with_expansion() -> None:
    c = ctr(command=["stress-ng"], args=["--cpu", "$(N)"])
    argv, note = container_argv(c, {"N": "1"}, which_only())
    assert argv == ("stress-ng", "--cpu", "1") and note is None


def test_argv_without_command_sleeps_and_says_so() -> None:
    argv, note = container_argv(ctr(image="nginx:1.27"), {}, which_only("nginx"))
    assert argv == SLEEP_FOREVER
    assert note is not None and "no command" in note and "nginx" in note


def test_argv_with_args_only_runs_the_image_namesake() -> None:
    c = ctr(image="docker.io/alexeiled/stress-ng:0.17@sha256:abc", args=["--cpu", "1"])
    argv, note = container_argv(c, {}, which_only("stress-ng"))
    assert argv == ("stress-ng", "--cpu", "1") and note
    assert image_entrypoint("registry:5000/iperf3", which_only("iperf3")) == "iperf3"
    assert image_entrypoint("registry:5000/unknown:1", which_only("iperf3")) is None


def test_plan_pod_policies_and_grace() -> None:
    p = pod(
        ctr("main", command=["true"]),
        inits=(
            ctr("setup", command=["true"]),
            ctr("side", command=["sleep", "1"], restartPolicy="Always"),
        ),
        restartPolicy="Never",
        terminationGracePeriodSeconds=7,
    )
    plan = plan_pod(p, {"PATH": "/bin"}, which_only())
    assert plan.qos == "BestEffort" and plan.grace_period_seconds == 7
    kinds = {c.name: (c.kind, c.restart_policy) for c in plan.all_containers}
    assert kinds == {
        "setup": ("init", "Never"),
        "side": ("sidecar", "Always"),
        "main": ("regular", "Never"),
    }
    assert plan.containers[0].env["HOSTNAME"] == "p"
    p["metadata"]["deletionGracePeriodSeconds"] = 0
    assert plan_pod(p, {}, which_only()).grace_period_seconds == 0


def test_plan_pod_prefers_the_apiservers_qos_and_rejects_bad_specs() -> None:
    p = pod(ctr(command=["true"]))
    p["status"] = {"qosClass": "Burstable"}
    assert plan_pod(p, {}, which_only()).qos == "Burstable"
    with pytest.raises(PodSpecError, match=r"spec\.containers is empty"):
        plan_pod(pod(), {}, which_only())
    with pytest.raises(PodSpecError, match=r"resources\.limits\.cpu"):
        plan_pod(pod(ctr(limits={"cpu": "lots"})), {}, which_only())


def test_security_context_user_and_group_run_under_setpriv() -> None:
    p = pod(
        ctr("a", command=["id"], securityContext={"runAsUser": 1000}),
        ctr("b", command=["id"]),
        securityContext={"runAsGroup": 2000},
    )
    a, b = plan_pod(p, {}, which_only()).containers
    assert a.exec_argv() == (
        "setpriv",
        "--reuid=1000",
        "--regid=2000",
        "--clear-groups",
        "--",
        "id",
    )
    assert b.exec_argv() == ("setpriv", "--regid=2000", "--clear-groups", "--", "id")
    plain = plan_pod(pod(ctr(command=["id"])), {}, which_only()).containers[0]
    assert plain.exec_argv() == ("id",)
    with pytest.raises(PodSpecError, match="runAsNonRoot"):
        plan_pod(pod(ctr(command=["id"], securityContext={"runAsNonRoot": True})), {}, which_only())
