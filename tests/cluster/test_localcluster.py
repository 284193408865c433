"""The local control plane itself: controllers and scheduler act, RBAC is on, the CLI starts
and stops a second cluster by pid, and failures say what went wrong."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.localcluster.cluster import ClusterError, Component, LocalCluster
from kopeck.localcluster.handle import ClusterHandle
from kopeck.localcluster.versions import KUBERNETES_VERSION, binaries

EXTERNAL = bool(os.environ.get("KOPECK_TEST_KUBECONFIG"))
local_only = pytest.mark.skipif(
    EXTERNAL, reason="exercises the local control plane, not KOPECK_TEST_KUBECONFIG's cluster"
)
TAINT_KEY = "kopeck.io/localcluster-test"


def _until(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def _get(cluster: ClusterHandle, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return out


@local_only
def test_server_runs_the_pinned_version(cluster: ClusterHandle) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_deployment_is_scheduled_and_garbage_collected(
    cluster: ClusterHandle, namespace: str
) -> None:
    """Deployment -> ReplicaSet -> Pods (controller-manager), bound to a node (scheduler),
    and removed with their owner (garbage collector).

    The node has no kubelet; its own taint keeps every other test's pods off it.
    """
    node = f"kt-node-{uuid.uuid4().hex[:6]}"
    cluster.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                "spec": {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
                "status": {
                    "capacity": {"cpu": "4", "memory": "8Gi", "pods": "20"},
                    "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "20"},
                },
            }
        )
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": TAINT_KEY, "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.invalid/web:1",
                            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }
    try:
        # The apiserver taints every new node not-ready; with no node-lifecycle controller
        # here, whoever plays the kubelet clears it (as kopeck.localcluster.kubelet does).
        cluster.kubectl("taint", "node", node, "node.kubernetes.io/not-ready:NoSchedule-")
        cluster.apply(yaml.safe_dump(deployment))

        def bound_pods() -> list[dict[str, Any]]:
            pods = _get(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
            bound = [p for p in pods if p["spec"].get("nodeName") == node]
            return bound if len(bound) == 2 else []

        pods = _until("2 pods bound to the node", bound_pods)
        owner = pods[0]["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ReplicaSet"
        cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")
        _until(
            "the ReplicaSet to be garbage-collected",
            lambda: not _get(cluster, "replicasets", "-n", namespace)["items"],
        )
        # Without a kubelet a pod never finishes terminating; being marked is the GC's part.
        _until(
            "the pods to be deleted by the garbage collector",
            lambda: all(
                p["metadata"].get("deletionTimestamp")
                for p in _get(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
            ),
        )
    finally:
        cluster.kubectl(
            "delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0",
            check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "node", node, "--ignore-not-found")


def test_job_controller_creates_pods(cluster: ClusterHandle, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kopeck.io/no-such-node": "true"},
                    "containers": [{"name": "c", "image": "registry.invalid/batch:1"}],
                }
            }
        },
    }
    cluster.apply(yaml.safe_dump(job))
    pods = _until(
        "the Job's pod",
        lambda: _get(cluster, "pods", "-n", namespace, "-l", "job-name=batch")["items"],
    )
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pods[0]["spec"]["serviceAccountName"] == "default"


def test_api_client_talks_to_the_cluster(cluster: ClusterHandle, namespace: str) -> None:
    from kubernetes import client

    with cluster.api_client() as api:
        ns = client.CoreV1Api(api).read_namespace(namespace)
    assert ns.metadata is not None and ns.metadata.labels is not None
    assert ns.metadata.labels["kopeck.io/test"] == "true"
    assert cluster.server.startswith("https://")
    assert cluster.ca_file is None or cluster.ca_file.exists()


@local_only
def test_rbac_is_enforced(local_cluster: LocalCluster | None, cluster: ClusterHandle) -> None:
    """A client certificate outside system:masters gets only what RBAC grants."""
    assert local_cluster is not None
    kubeconfig = local_cluster.user_kubeconfig(f"alice-{uuid.uuid4().hex[:6]}")
    env = {**cluster.env(), "KUBECONFIG": str(kubeconfig)}

    def can_i(*args: str) -> str:
        return subprocess.run(
            [str(cluster.kubectl_path), "auth", "can-i", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    assert can_i("list", "pods", "-n", "default") == "no"
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", "default").stdout.strip() == "yes"


def _kopeck(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kopeck.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _needs_binaries() -> None:
    missing = binaries().missing()
    if missing:
        pytest.fail(f"binaries missing ({missing}); run `kopeck cluster build` first")


@pytest.mark.cluster
@local_only
def test_cli_up_env_restart_down(tmp_path: Path) -> None:
    """A second cluster on its own ports: up, env, up again (no-op), down by pid, and a
    restart that keeps etcd's data and the CA."""
    _needs_binaries()
    directory = tmp_path / "c"
    up = _kopeck("cluster", "up", "--dir", str(directory))
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert set(exports) == {"KUBECONFIG", "PATH"}
        assert "cluster ready" in up.stderr
        state = json.loads((directory / "state.json").read_text())
        comps = [Component(**c) for c in state["components"]]
        assert [c.name for c in comps] == [
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
        ]  # fmt: skip
        assert all(c.alive() for c in comps)

        env = _kopeck("cluster", "env", "--dir", str(directory))
        assert env.stdout == up.stdout
        again = _kopeck("cluster", "up", "--dir", str(directory))
        assert again.returncode == 0 and "already runs" in again.stderr

        handle = ClusterHandle.from_kubeconfig(directory / "kubeconfig", binaries().kubectl)
        assert handle.server == state["server"]
        handle.kubectl("create", "namespace", "survives-restart")

        down = _kopeck("cluster", "down", "--dir", str(directory))
        assert down.returncode == 0 and "stopped" in down.stderr, down.stderr
        assert not any(c.alive() for c in comps)
        assert _kopeck("cluster", "status", "--dir", str(directory)).returncode == 1

        restart = _kopeck("cluster", "up", "--dir", str(directory))
        assert restart.returncode == 0, restart.stderr
        handle = ClusterHandle.from_kubeconfig(directory / "kubeconfig", binaries().kubectl)
        assert handle.kubectl("get", "namespace", "survives-restart").returncode == 0
    finally:
        _kopeck("cluster", "down", "--dir", str(directory))
    assert not (directory / "state.json").exists()


@pytest.mark.cluster
@local_only
def test_cli_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = _kopeck("cluster", "up", "--dir", str(tmp_path), "--port", str(port), "--no-build")
    assert out.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr, out.stderr
    assert "--port" in out.stderr
    assert not (tmp_path / "state.json").exists()


@pytest.mark.cluster
@local_only
def test_a_failing_binary_shows_its_log_and_nothing_is_left_running(tmp_path: Path) -> None:
    _needs_binaries()
    cluster = LocalCluster(
        tmp_path,
        extra_apiserver_args=["--no-such-flag=1"],
        with_controller_manager=False,
        with_scheduler=False,
        tie_to_parent=True,
    )
    with pytest.raises(ClusterError) as err:
        cluster.start()
    message = str(err.value)
    assert "kube-apiserver exited with status" in message
    assert "unknown flag: --no-such-flag" in message
    assert not (tmp_path / "state.json").exists()
    assert not cluster.components
