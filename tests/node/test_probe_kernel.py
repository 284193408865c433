"""The probe on the real kernel: pods in kubelet-layout cgroups (kopeck.localcluster.sandbox)
running real stress-ng / python, compared with the kernel's own accounting.

CPU figures are compared with the pod cgroup's own counters (cpuacct.usage, cpu.stat) and
with the process tree's own rusage (wait4), never with wall time: the machine is shared, and
stress-ng's duty cycle is wall-time based, so what it burns depends on what else runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kopeck.api.report import ProbeReport
from kopeck.localcluster.kubelet import write_limits
from kopeck.localcluster.kubelet_spec import CgroupLimits as KubeletLimits
from kopeck.localcluster.sandbox import PodSandbox, SandboxHost
from kopeck_probe.cgroups import boot_id
from kopeck_probe.config import ProbeConfig
from kopeck_probe.probe import Probe
from kopeck_probe.push import ReportBuffer

pytestmark = pytest.mark.node

MiB = 1 << 20


def kernel_cpu_seconds(pod: PodSandbox) -> float:
    """The pod cgroup's CPU time as the kernel accounts it (v1 cpuacct, else v2 cpu.stat)."""
    dirs = pod.cgroup_dirs()
    if "cpuacct" in dirs:
        return int((dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
    stat = dict(line.split() for line in (dirs["unified"] / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


def all_reports(probe: Probe) -> list[ProbeReport]:
    return [ProbeReport.model_validate_json(p.body) for p in probe.buffer.pending(limit=100_000)]


def charged(reports: list[ProbeReport], uid: str) -> float:
    return sum(p.cpu_core_seconds for r in reports for p in r.pods if p.uid == uid)


class Running:
    """A Probe running its real loop on a thread (1 s samples), stopped on exit."""

    def __init__(self, host: SandboxHost, tmp: Path, report_s: float = 5.0) -> None:
        cfg = ProbeConfig(
            node_name="node-test",
            cgroup_base=host.cgroup_base,
            prefix=host.prefix,
            sample_interval_s=1.0,
            report_interval_s=report_s,
            wal_path=tmp / "wal.db",
            metrics_port=None,
            watch_pods=False,
        )
        self.probe = Probe(cfg)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reports: list[ProbeReport] = []

    def _run(self) -> None:
        orig = self.probe.buffer.close
        self.probe.buffer.close = lambda: None  # type: ignore[method-assign]
        try:
            self.probe.run(self.stop)
        finally:
            self.reports = all_reports(self.probe)
            orig()

    def __enter__(self) -> Running:
        self.thread.start()
        time.sleep(1.5)  # first look taken before any pod exists
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture(params=["systemd", "cgroupfs"])
def host(request: pytest.FixtureRequest) -> Iterator[SandboxHost]:
    with SandboxHost(driver=request.param, network=False) as h:
        yield h


def favour(host: SandboxHost, pod: PodSandbox) -> None:
    """Give the pod's cgroups a large CPU weight (as a kubelet turns requests into shares) so
    other work on this shared 2-core machine does not eat into the 50% duty cycle stress-ng
    aims at: its --cpu-load busy/sleep slices are wall-time based."""
    root = host.root_dir("cpu")
    d = pod.cgroup_dirs()["cpu"]
    chain = [d, *[p for p in d.parents if p.is_relative_to(root)]]
    for cg in chain:
        (cg / "cpu.shares").write_text("262144")


def test_cpu_matches_kernel_accounting(host: SandboxHost, tmp_path: Path) -> None:
    with Running(host, tmp_path) as run:
        pod = host.pod(qos="burstable", network=False)
        if "cpu" in host.layout:
            favour(host, pod)
        proc = pod.run(["stress-ng", "--cpu", "1", "--cpu-load", "50", "--timeout", "20s", "-q"])
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0
        rusage = usage.ru_utime + usage.ru_stime
        time.sleep(1.5)
        kernel = kernel_cpu_seconds(pod)
        pod.close()
        time.sleep(2.5)
    got = charged(run.reports, pod.uid)
    print(
        f"\n[{host.driver}] probe {got:.4f} core-s, kernel {kernel:.4f} core-s, "
        f"error {100 * (got - kernel) / kernel:+.3f}% ; rusage {rusage:.4f} core-s "
        f"({100 * (got - rusage) / rusage:+.3f}%) ; vs stress-ng's 10 core-s aim "
        f"{100 * (got - 10) / 10:+.2f}%"
    )
    assert got == pytest.approx(kernel, rel=0.02)
    assert got == pytest.approx(rusage, rel=0.02)
    assert got > 5.0, "stress-ng ran far below its 50% duty cycle: the comparison means little"
    ended = [p for r in run.reports for p in r.pods if p.uid == pod.uid and p.ended]
    assert len(ended) == 1


def test_memory_working_set(tmp_path: Path) -> None:
    size = 200 * MiB
    script = (
        "import sys, time\n"
        "sys.stdin.readline()\n"
        f"b = bytes([1]) * {size}\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    with SandboxHost(driver="systemd", network=False) as host:
        cfg = ProbeConfig(
            node_name="n",
            cgroup_base=host.cgroup_base,
            prefix=host.prefix,
            wal_path=tmp_path / "w.db",
            metrics_port=None,
            watch_pods=False,
        )
        probe = Probe(cfg)
        pod = host.pod(network=False, memory_limit_bytes=1024 * MiB)
        proc = pod.run(["python3", "-c", script], stdin=subprocess.PIPE)
        time.sleep(1.0)
        probe.sample()
        base = probe.cut_report().pods[0].memory_working_set_bytes
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"held"
        probe.sample()
        held = probe.cut_report().pods[0].memory_working_set_bytes
        rss_kib = next(
            int(line.split()[1])
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        pod.close()
        probe.buffer.close()
    print(
        f"\nworking set {held / MiB:.1f} MiB (before {base / MiB:.1f}); "
        f"delta {(held - base) / MiB:.1f} MiB vs {size / MiB:.0f} MiB: "
        f"{100 * (held - base - size) / size:+.2f}% ; process RSS {rss_kib / 1024:.1f} MiB: "
        f"{100 * (held - rss_kib * 1024) / (rss_kib * 1024):+.2f}%"
    )
    assert held - base == pytest.approx(size, rel=0.05)
    assert held == pytest.approx(rss_kib * 1024, rel=0.05)


def test_short_lived_pod_is_charged(tmp_path: Path) -> None:
    with SandboxHost(driver="cgroupfs", network=False) as host, Running(host, tmp_path) as run:
        pod = host.pod(qos="besteffort", network=False)
        proc = pod.run(["stress-ng", "--cpu", "1", "--cpu-load", "60", "--timeout", "3s", "-q"])
        proc.wait(timeout=30)
        kernel = kernel_cpu_seconds(pod)
        pod.close()  # cgroup removed about 3 s after it was made
        time.sleep(1.5)
    got = charged(run.reports, pod.uid)
    print(f"\nshort-lived pod: probe {got:.3f} core-s, kernel {kernel:.3f} core-s")
    assert any(p.ended for r in run.reports for p in r.pods if p.uid == pod.uid)
    # charged up to its last read: at most one sample period (1 s at 60%) short
    assert kernel - 0.65 <= got <= kernel + 1e-6
    assert got > 0.5 * kernel


def test_counters_of_a_recreated_pod_cgroup_are_not_negative(tmp_path: Path) -> None:
    with SandboxHost(driver="systemd", network=False) as host:
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
        pod.exec(["stress-ng", "--cpu", "1", "--cpu-ops", "3000", "-q"], timeout=60)
        probe.sample()
        first = kernel_cpu_seconds(pod)
        uid = pod.uid
        pod.close()
        again = host.pod(network=False, uid=uid)  # same path, new cgroup, counter from 0
        again.exec(["true"], timeout=30)
        probe.sample()
        second = kernel_cpu_seconds(again)
        report = probe.cut_report()
        again.close()
        probe.buffer.close()
    (p,) = [p for p in report.pods if p.uid == uid]
    assert p.cpu_core_seconds == pytest.approx(first + second, rel=0.01)


# -- pods born while the probe starts --------------------------------------------------------
#
# A probe with no saved state leaves alone what its first look finds (that history was
# charged before it). A pod born after the probe process started but before that first look
# (the probe imports, loads eBPF, connects) is not history: it must be charged from zero.

KOPECK = Path(sys.executable).parent / "kopeck"


def kernel_cpu_ns(dirs: dict[str, Path]) -> int:
    return int((dirs["cpuacct"] / "cpuacct.usage").read_text())


def mini_kubelet_pod(host: SandboxHost, argv: list[str]) -> PodSandbox:
    """What the mini-kubelet does for a pod: the pod cgroup, the container cgroup with its
    limits (shares from a 100m request), then the process at once."""
    pod = host.pod(qos="burstable", network=False)
    write_limits(pod.container_dirs("main"), KubeletLimits(cpu_shares=102))
    pod.run(argv)
    return pod


def test_pod_born_while_the_probe_process_starts_is_charged_from_zero(tmp_path: Path) -> None:
    with SandboxHost(driver="systemd", network=False) as host:
        if "cpuacct" not in host.layout:
            pytest.skip("compares with v1 cpuacct")
        assert not host.root_dir("cpuacct").exists()  # no kubepods tree when the probe starts
        wal = tmp_path / "wal.db"
        log = (tmp_path / "probe.log").open("wb")
        argv = [
            str(KOPECK), "probe", "--node-name", "n", "--prefix", host.prefix,
            "--report-interval", "1", "--wal", str(wal), "--metrics-port", "0",
            "--no-watch", "--network", "off",
        ]  # fmt: skip
        probe = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            # at once: the probe is still starting when the pod's first second is spent
            pod = mini_kubelet_pod(host, STRESS_3S)
            assert pod.containers["main"].procs[0].wait(timeout=60) == 0
            kernel_pod = kernel_cpu_ns(pod.cgroup_dirs())
            kernel_ctr = kernel_cpu_ns(pod.container_dirs())
            cid = pod.containers["main"].container_id
            time.sleep(2.5)  # read at rest by the probe
        finally:
            if probe.poll() is None:
                probe.send_signal(signal.SIGTERM)
            assert probe.wait(timeout=30) == 0
            log.close()
        buf = ReportBuffer(wal, boot_id())
        reports = [ProbeReport.model_validate_json(p.body) for p in buf.pending(limit=100_000)]
        buf.close()
    assert_charged_as_kernel(reports, pod.uid, cid, kernel_pod, kernel_ctr)


def test_pod_born_before_the_first_look_of_an_in_process_probe(tmp_path: Path) -> None:
    with SandboxHost(driver="cgroupfs", network=False) as host:
        if "cpuacct" not in host.layout:
            pytest.skip("compares with v1 cpuacct")
        run = Running(host, tmp_path, report_s=1.0)  # made (started) before the pod
        pod = mini_kubelet_pod(host, STRESS_3S)
        time.sleep(0.5)  # the pod has used CPU when the probe first looks
        with run:
            assert pod.containers["main"].procs[0].wait(timeout=60) == 0
            kernel_pod = kernel_cpu_ns(pod.cgroup_dirs())
            kernel_ctr = kernel_cpu_ns(pod.container_dirs())
            cid = pod.containers["main"].container_id
            time.sleep(1.5)
    assert_charged_as_kernel(run.reports, pod.uid, cid, kernel_pod, kernel_ctr)


STRESS_3S = ["sh", "-c", "stress-ng --cpu 1 --cpu-load 50 --timeout 3s -q"]


def assert_charged_as_kernel(
    reports: list[ProbeReport], uid: str, cid: str, kernel_pod_ns: int, kernel_ctr_ns: int
) -> None:
    got = charged(reports, uid)
    got_ctr = sum(
        c.cpu_core_seconds
        for r in reports
        for p in r.pods
        if p.uid == uid
        for c in p.containers
        if c.container_id == cid
    )
    print(
        f"\npod: probe {got:.4f} core-s, kernel {kernel_pod_ns / 1e9:.4f}; "
        f"container: probe {got_ctr:.4f}, kernel {kernel_ctr_ns / 1e9:.4f}"
    )
    assert kernel_pod_ns > 0.5e9, "stress-ng barely ran"
    assert got == pytest.approx(kernel_pod_ns / 1e9, rel=0.01)
    assert got_ctr == pytest.approx(kernel_ctr_ns / 1e9, rel=0.01)
