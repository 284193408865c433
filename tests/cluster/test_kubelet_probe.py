"""The node-probe's cgroup reader, pointed at the mini-kubelet's prefix, sees its Pods.

This is the contract `make demo` rests on: a Pod created with kubectl runs real work whose
CPU the probe reads from the cgroups the kubelet made, matched by the Pod's real UID and
the container ID the kubelet posted in status.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kopeck.localcluster.handle import ClusterHandle
from kopeck.localcluster.kubelet import MiniKubelet, NodeSettings
from kopeck.localcluster.sandbox import cgroup_layout
from kopeck_probe.cgroups import CgroupReader, Hierarchies

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.node,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups and netns"),
    pytest.mark.skipif(not cgroup_layout(), reason="no cgroup hierarchy mounted"),
]


@pytest.fixture(params=["systemd", "cgroupfs"])
def kubelet(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[MiniKubelet]:
    k = MiniKubelet(
        cluster.api_client(),
        settings=NodeSettings(
            name=f"kt-probe-{uuid.uuid4().hex[:6]}",
            taints=({"key": "kopeck.io/kubelet-test", "value": "only", "effect": "NoSchedule"},),
        ),
        driver=request.param,
        subnet="10.255.0.0/24",
    )
    k.start()
    try:
        yield k
    finally:
        k.stop()


def test_probe_reads_cpu_of_a_kubectl_pod(
    cluster: ClusterHandle, kubelet: MiniKubelet, namespace: str
) -> None:
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: busy, namespace: {namespace}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {kubelet.node_name}}}
  tolerations: [{{key: kopeck.io/kubelet-test, operator: Exists}}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: work
    image: busybox
    command: ["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 3600"]
    resources: {{limits: {{cpu: 500m, memory: 64Mi}}}}
"""
    )
    deadline = time.monotonic() + 60
    pod: Any = {}
    while time.monotonic() < deadline:
        pod = json.loads(
            cluster.kubectl("get", "pod", "-n", namespace, "busy", "-o", "json").stdout
        )
        if pod["status"].get("phase") == "Running":
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"pod busy not Running within 60s: {pod.get('status')}")
    uid = pod["metadata"]["uid"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    reader = CgroupReader(Hierarchies.detect(), prefix=kubelet.probe_settings()["prefix"])
    (found,) = [p for p in reader.discover() if p.uid == uid]
    assert found.qos == "guaranteed"
    assert [c.container_id for c in found.containers] == [cid]
    inode = reader.inode(found.relpath)
    used_ns = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        used_ns = reader.read(found.relpath, inode).cpu_usage_ns or 0
        if used_ns > 100_000_000:
            break
        time.sleep(0.5)
    assert used_ns > 100_000_000, f"pod cgroup used only {used_ns} ns of CPU"
    limits = reader.limits(found.relpath)
    assert limits.cpu_limit_cores == pytest.approx(0.5)
    assert limits.memory_limit_bytes == 64 * 2**20
