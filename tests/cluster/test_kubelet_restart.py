"""The mini-kubelet outlives a control-plane restart: its watch and heartbeats resume.

A control plane of its own (not the session's) has its kube-apiserver killed (SIGKILL, a
crash) and started again with the same command while the kubelet runs; Pods created before keep running, Pods created
after start, and a deletion after the restart is finalized.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kopeck.localcluster.build import ensure_binaries
from kopeck.localcluster.cluster import LocalCluster
from kopeck.localcluster.handle import ClusterHandle
from kopeck.localcluster.kubelet import MiniKubelet
from kopeck.localcluster.sandbox import cgroup_layout

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.node,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups and netns"),
    pytest.mark.skipif(not cgroup_layout(), reason="no cgroup hierarchy mounted"),
    pytest.mark.skipif(
        bool(os.environ.get("KOPECK_TEST_KUBECONFIG")),
        reason="restarts a local control plane; an external cluster cannot be restarted here",
    ),
]


def pod_manifest(name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: busybox, command: ["sleep", "3600"]}}
"""


def phase(handle: ClusterHandle, name: str) -> str | None:
    proc = handle.kubectl("get", "pod", "-n", "default", name, "-o", "json", check=False)
    if proc.returncode:
        return None
    pod: dict[str, Any] = json.loads(proc.stdout)
    return str(pod["status"].get("phase"))


def wait_until(what: str, probe: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def restart_apiserver(lc: LocalCluster) -> subprocess.Popen[bytes]:
    """SIGKILL the cluster's kube-apiserver (a crash) and start the same command again."""
    (comp,) = [c for c in lc.components if c.name == "kube-apiserver"]
    argv = Path(f"/proc/{comp.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(comp.pid, signal.SIGKILL)
    wait_until("the old apiserver to die", lambda: not comp.alive(), timeout=10)
    time.sleep(3)  # the kubelet's watch and heartbeats fail meanwhile
    log = Path(comp.log).open("ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=lc.directory,
        start_new_session=True,
    )


def test_pods_run_and_delete_across_an_apiserver_restart(tmp_path: Path) -> None:
    ensure_binaries()
    lc = LocalCluster(tmp_path / "cp", tie_to_parent=True).start()
    respawned: subprocess.Popen[bytes] | None = None
    try:
        handle = lc.handle()
        wait_until(
            "the default service account",
            lambda: not handle.kubectl("get", "sa", "default", check=False).returncode,
        )
        node = f"kt-restart-{uuid.uuid4().hex[:6]}"
        kubelet = MiniKubelet(
            handle.api_client(), node, subnet="10.250.0.0/24", heartbeat_seconds=2.0
        )
        kubelet.start()
        try:
            handle.apply(pod_manifest("before", node))
            wait_until("pod 'before' Running", lambda: phase(handle, "before") == "Running")

            respawned = restart_apiserver(lc)
            wait_until(
                "the apiserver to be ready again",
                lambda: not handle.kubectl("get", "--raw", "/readyz", check=False).returncode,
            )
            handle.apply(pod_manifest("after", node))
            wait_until("pod 'after' Running", lambda: phase(handle, "after") == "Running")
            assert phase(handle, "before") == "Running"

            def renew_time() -> str:
                lease = handle.kubectl("get", "lease", "-n", "kube-node-lease", node, "-o", "json")
                return str(json.loads(lease.stdout)["spec"]["renewTime"])

            renewed = renew_time()
            wait_until("the lease to be renewed", lambda: renew_time() != renewed, timeout=20)
            handle.kubectl("delete", "pod", "-n", "default", "before", "--timeout=30s")
            assert phase(handle, "before") is None
        finally:
            kubelet.stop()
        assert not [r for r in kubelet_roots(kubelet) if r.exists()]
    finally:
        if respawned is not None:  # a throw-away control plane: no graceful shutdown needed
            respawned.kill()
            respawned.wait(timeout=10)
        lc.stop()


def kubelet_roots(kubelet: MiniKubelet) -> list[Path]:
    layout = cgroup_layout()
    return [mount / kubelet.cgroup_prefix for mount in layout.values()]
