"""A container replaced by another between two looks, on the real kernel: the pod's count of
sub-cgroups stays the same, so the probe finds the new one because reading the old one fails
(ENODEV), and charges both (kopeck_probe.cgroups.CgroupReader.discover)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kopeck.localcluster.sandbox import SandboxHost
from kopeck_probe.config import ProbeConfig
from kopeck_probe.probe import Probe

pytestmark = pytest.mark.node


def cpuacct_seconds(d: Path) -> float:
    return int((d / "cpuacct.usage").read_text()) / 1e9


def test_replaced_container_is_found_in_the_same_cycle(tmp_path: Path) -> None:
    with SandboxHost(driver="systemd", network=False) as host:
        if "cpuacct" not in host.layout:
            pytest.skip("compares with v1 cpuacct")
        cfg = ProbeConfig(
            node_name="n",
            cgroup_base=host.cgroup_base,
            prefix=host.prefix,
            wal_path=tmp_path / "w.db",
            metrics_port=None,
            watch_pods=False,
        )
        probe = Probe(cfg)
        probe.sample()
        pod = host.pod(network=False)
        burn = ["stress-ng", "--cpu", "1", "--cpu-ops", "1500", "-q"]
        pod.exec(burn, timeout=60)
        old_id = pod.containers["main"].container_id
        old_cpu = cpuacct_seconds(pod.container_dirs()["cpuacct"])
        probe.sample()
        pod.remove_container("main")
        pod.exec(burn, timeout=60)  # a new "main": new id, same number of sub-cgroups
        new_id = pod.containers["main"].container_id
        new_cpu = cpuacct_seconds(pod.container_dirs()["cpuacct"])
        probe.sample()
        report = probe.cut_report()
        pod.close()
        probe.buffer.close()
    (p,) = [p for p in report.pods if p.uid == pod.uid]
    got = {c.container_id: c.cpu_core_seconds for c in p.containers}
    print(f"\nold {got.get(old_id)} vs {old_cpu:.4f}; new {got.get(new_id)} vs {new_cpu:.4f}")
    assert set(got) == {old_id, new_id}
    assert got[old_id] == pytest.approx(old_cpu, rel=0.02)
    assert got[new_id] == pytest.approx(new_cpu, rel=0.02)
