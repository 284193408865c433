"""The pod sandbox harness itself, on the real kernel: layout, placement, limits, network, cleanup.

Every node-side test and `kopeck demo` stand on it, so it is tested first.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from kopeck.localcluster.sandbox import SandboxHost, cgroup_layout, pod_relpath

pytestmark = pytest.mark.node


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_pod_cgroups_follow_the_kubelet_layout_and_hold_the_processes(driver: str) -> None:
    with SandboxHost(driver=driver, network=False) as host:  # type: ignore[arg-type]
        pod = host.pod(qos="burstable", network=False)
        expected = pod_relpath(host.driver, "burstable", pod.uid)
        for hier, pod_dir in pod.cgroup_dirs().items():
            assert pod_dir == host.root_dir(hier) / expected
        proc = pod.run(["sleep", "30"])
        time.sleep(0.2)
        for hier, cdir in pod.container_dirs("main").items():
            pids = (cdir / "cgroup.procs").read_text().split()
            assert str(proc.pid) in pids, f"pid {proc.pid} not in {hier} {cdir}"
        if driver == "systemd":
            assert "kubepods-burstable-pod" in str(expected)
            assert pod.container_dirs()["unified"].name.startswith("cri-containerd-")
        dirs = list(pod.cgroup_dirs().values())
        pod.close()
        assert proc.poll() is not None
        assert not any(d.exists() for d in dirs)
        root_dirs = [host.root_dir(h) for h in host.layout]
    assert not any(d.exists() for d in root_dirs), "prefix directories left behind"


def test_limits_are_written_as_the_kubelet_writes_them() -> None:
    with SandboxHost(network=False) as host:
        pod = host.pod(qos="guaranteed", network=False, cpu_limit_cores=0.5,
                       memory_limit_bytes=256 << 20)
        dirs = pod.container_dirs()
        if "cpu" in dirs:
            assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        if "memory" in dirs:
            assert int((dirs["memory"] / "memory.limit_in_bytes").read_text()) == 256 << 20
        assert "pod" in pod.cgroup_dirs()["unified"].name


def test_cpu_burnt_inside_is_accounted_to_the_pod_cgroup() -> None:
    """The pod cgroup holds what its processes burnt: compared with the kernel's own
    per-process accounting (rusage of the reaped children), not with wall time, which a
    loaded machine stretches."""
    with SandboxHost(network=False) as host:
        pod = host.pod(network=False)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pod.exec(["stress-ng", "--cpu", "1", "--cpu-method", "int64", "--timeout", "2s"],
                 timeout=30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        usage_s = int((pod.cgroup_dirs()["unified"] / "cpu.stat").read_text().split()[1]) / 1e6
        assert children_s > 0.2, "stress-ng barely ran"
        assert usage_s == pytest.approx(children_s, rel=0.05)


def test_two_pods_talk_over_their_bridge() -> None:
    with SandboxHost() as host:
        a, b = host.pod(), host.pod()
        assert a.ip and b.ip and a.ip != b.ip
        server = b.run(["iperf3", "-s", "-1", "--bind", b.ip])
        time.sleep(0.5)
        result = a.exec(["iperf3", "-c", b.ip, "-n", "2M", "-J"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["end"]["sum_sent"]["bytes"] == 2 * 1024 * 1024
        server.wait(timeout=10)
        netns, veth, bridge = a.netns, a.host_veth, host.bridge
    links = Path("/sys/class/net")
    assert not (links / str(veth)).exists() and not (links / str(bridge)).exists()
    assert not Path(f"/var/run/netns/{netns}").exists()


def test_layout_detects_this_machine() -> None:
    layout = cgroup_layout()
    assert "unified" in layout


def test_names_are_not_reused_after_a_pod_closes() -> None:
    with SandboxHost() as host:
        a, b = host.pod(), host.pod()
        a.close()
        c = host.pod()  # would collide with b's netns if names came from the pod count
        assert c.netns != b.netns and c.host_veth != b.host_veth


def test_fractional_cpu_limits_round_to_the_nearest_microsecond() -> None:
    with SandboxHost(network=False) as host:
        pod = host.pod(network=False, cpu_limit_cores=0.29)
        if "cpu" in pod.cgroup_dirs():
            assert (pod.cgroup_dirs()["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "29000"


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_qos_tree_exists_before_any_pod(driver: str) -> None:
    with SandboxHost(driver=driver, network=False) as host:  # type: ignore[arg-type]
        host.ensure_qos_tree()
        parent = host.pods_parent_v2()
        assert parent.is_dir()
        names = {p.name for p in parent.iterdir() if p.is_dir()}
        expected = ({"kubepods-burstable.slice", "kubepods-besteffort.slice"}
                    if driver == "systemd" else {"burstable", "besteffort"})
        assert expected <= names
        pod = host.pod(network=False)  # lands in the existing tree
        assert pod.cgroup_dirs()["unified"].parent.parent == parent
