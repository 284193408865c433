"""cgroup discovery and reading against fake hierarchies in a tmp dir (both layouts, v1 and v2),
plus the probe loop driven over the same fake trees with a fake clock."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kopeck_probe import cgroups
from kopeck_probe.cgroups import CgroupReader, CgroupVanished, Hierarchies
from kopeck_probe.config import ProbeConfig
from kopeck_probe.probe import Probe

UID = "0f1e2d3c-4b5a-4697-a887-766554433221"
CID = "ab" * 32

V1_MEMSTAT = """cache 100
rss 200
inactive_file 1
total_cache 4096
total_rss 8192
total_inactive_file {inactive}
total_active_file 10
"""


class FakeTree:
    """A cgroup mount base with a hybrid (v1 cpuacct/cpu/memory/blkio + v2) or pure v2 layout."""

    def __init__(self, base: Path, pure_v2: bool = False) -> None:
        self.base = base
        self.pure_v2 = pure_v2
        if pure_v2:
            (base / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
            (base / "cgroup.controllers").write_text("cpu io memory pids\n")
            (base / "cgroup.procs").write_text("")
            self.hiers = {"unified": base}
        else:
            self.hiers = {
                "unified": base / "unified",
                "cpuacct": base / "cpuacct",
                "cpu": base / "cpu",
                "memory": base / "memory",
                "blkio": base / "blkio",
            }
            for h in self.hiers.values():
                h.mkdir(parents=True)
                (h / "cgroup.procs").write_text("")
            (self.hiers["unified"] / "cgroup.controllers").write_text("hugetlb\n")
            (self.hiers["cpuacct"] / "cpuacct.usage").write_text("0\n")
            (self.hiers["cpu"] / "cpu.cfs_quota_us").write_text("-1\n")
            (self.hiers["memory"] / "memory.usage_in_bytes").write_text("0\n")
            (self.hiers["blkio"] / "blkio.throttle.io_service_bytes").write_text("Total 0\n")

    def make(
        self,
        rel: str,
        cpu_ns: int = 0,
        usage: int = 0,
        inactive: int = 0,
        io: tuple[int, int] = (0, 0),
        cpu_quota: float | None = None,
        mem_limit: int | None = None,
    ) -> None:
        """Create (or update) a cgroup at rel in every hierarchy with these counters."""
        for name, root in self.hiers.items():
            d = root / rel
            d.mkdir(parents=True, exist_ok=True)
            if self.pure_v2:
                (d / "cpu.stat").write_text(f"usage_usec {cpu_ns // 1000}\nuser_usec 0\n")
                (d / "memory.current").write_text(f"{usage}\n")
                (d / "memory.stat").write_text(f"anon 5\ninactive_file {inactive}\nactive_file 3\n")
                (d / "io.stat").write_text(
                    f"8:0 rbytes={io[0]} wbytes={io[1]} rios=1 wios=1\n" if any(io) else ""
                )
                (d / "cpu.max").write_text(
                    "max 100000\n" if cpu_quota is None else f"{int(cpu_quota * 100000)} 100000\n"
                )
                (d / "memory.max").write_text("max\n" if mem_limit is None else f"{mem_limit}\n")
            elif name == "cpuacct":
                (d / "cpuacct.usage").write_text(f"{cpu_ns}\n")
            elif name == "cpu":
                (d / "cpu.cfs_quota_us").write_text(
                    "-1\n" if cpu_quota is None else f"{int(cpu_quota * 100000)}\n"
                )
                (d / "cpu.cfs_period_us").write_text("100000\n")
            elif name == "memory":
                (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
                (d / "memory.stat").write_text(V1_MEMSTAT.format(inactive=inactive))
                (d / "memory.limit_in_bytes").write_text(
                    f"{mem_limit if mem_limit is not None else 9223372036854771712}\n"
                )
            elif name == "blkio":
                (d / "blkio.throttle.io_service_bytes").write_text(
                    f"8:0 Read {io[0]}\n8:0 Write {io[1]}\n8:0 Sync 0\n8:0 Total {sum(io)}\n"
                    f"8:16 Read 0\n8:16 Write 0\nTotal {sum(io)}\n"
                )

    def remove(self, rel: str) -> None:
        """rm -r the cgroup in every hierarchy (the fake allows what the kernel would not)."""
        import shutil

        for root in self.hiers.values():
            shutil.rmtree(root / rel, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["hybrid", "pure-v2"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path / "cg", pure_v2=request.param)


def systemd_pod(qos: str, uid: str = UID, prefix: str = "pfx") -> str:
    esc = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"{prefix}/kubepods.slice/kubepods-pod{esc}.slice"
    return f"{prefix}/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{esc}.slice"


def cgroupfs_pod(qos: str, uid: str = UID, prefix: str = "pfx") -> str:
    if qos == "guaranteed":
        return f"{prefix}/kubepods/pod{uid}"
    return f"{prefix}/kubepods/{qos}/pod{uid}"


def test_detect_hybrid_and_pure_v2(tree: FakeTree) -> None:
    h = Hierarchies.detect(tree.base)
    if tree.pure_v2:
        assert h.pure_v2 and h.unified == tree.base and h.cpuacct is None
        assert "memory" in h.unified_controllers
    else:
        assert h.unified == tree.base / "unified" and h.cpuacct == tree.base / "cpuacct"
        assert h.memory == tree.base / "memory" and h.unified_controllers == {"hugetlb"}


@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_discover_both_layouts(tree: FakeTree, driver: str, qos: str) -> None:
    pod = systemd_pod(qos) if driver == "systemd" else cgroupfs_pod(qos)
    ctr = f"cri-containerd-{CID}.scope" if driver == "systemd" else CID
    tree.make(pod)
    tree.make(f"{pod}/{ctr}")
    if driver == "systemd":
        tree.make(f"{pod}/crio-conmon-{CID}.scope")  # not a container
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    pods = reader.discover()
    assert [(p.uid, p.qos, p.relpath) for p in pods] == [(UID, qos, pod)]
    assert [(c.container_id, c.relpath) for c in pods[0].containers] == [(CID, f"{pod}/{ctr}")]


def test_discover_ignores_other_prefixes_and_non_pods(tree: FakeTree) -> None:
    tree.make(systemd_pod("burstable", prefix="other"))
    tree.make("pfx/kubepods.slice/kubepods-burstable.slice/not-a-pod.slice")
    tree.make("pfx/kubepods/burstable/podnothex!")
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    assert reader.discover() == []


@pytest.mark.parametrize(
    ("name", "driver", "expected"),
    [
        ("kubepods-burstable-pod1234_abcd.slice", "systemd", "1234-abcd"),
        ("kubepods-pod1234_abcd.slice", "systemd", "1234-abcd"),
        ("kubepods-besteffort.slice", "systemd", None),
        ("pod1234-abcd", "cgroupfs", "1234-abcd"),
        ("burstable", "cgroupfs", None),
    ],
)
def test_parse_pod_dirname(name: str, driver: cgroups.Driver, expected: str | None) -> None:
    assert cgroups.parse_pod_dirname(name, driver) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"cri-containerd-{CID}.scope", CID),
        (f"crio-{CID}.scope", CID),
        (f"docker-{CID}.scope", CID),
        (f"crio-conmon-{CID}.scope", None),
        ("init.scope", None),
    ],
)
def test_parse_systemd_container(name: str, expected: str | None) -> None:
    assert cgroups.parse_container_dirname(name, "systemd") == expected


def test_read_counters_and_working_set(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod, cpu_ns=2_500_000_000, usage=10_000, inactive=3_000, io=(700, 900))
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    s = reader.read(pod, reader.inode(pod))
    assert s.cpu_usage_ns == 2_500_000_000
    assert s.memory_working_set_bytes == 7_000
    assert (s.io_read_bytes, s.io_write_bytes) == (700, 900)
    assert s.inode == (tree.hiers["unified"] / pod).stat().st_ino
    assert reader.reads == 1 and reader.errors == 0


def test_working_set_never_negative() -> None:
    assert cgroups.working_set(100, 300) == 0


def test_limits(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod, cpu_quota=1.5, mem_limit=256 << 20)
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    lim = reader.limits(pod)
    assert lim.cpu_limit_cores == pytest.approx(1.5)
    assert lim.memory_limit_bytes == 256 << 20
    tree.make(pod)  # unlimited
    assert reader.limits(pod) == cgroups.CgroupLimits(None, None)


def test_vanished_cgroup_raises_vanished(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod)
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    ino = reader.inode(pod)
    tree.remove(pod)
    with pytest.raises(CgroupVanished):
        reader.read(pod, ino)
    assert reader.errors == 0


def test_garbage_counter_is_an_error(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod)
    f = (
        (tree.hiers["cpuacct"] / pod / "cpuacct.usage")
        if not tree.pure_v2
        else (tree.base / pod / "cpu.stat")
    )
    f.write_text("garbage\n")
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    with pytest.raises((ValueError, KeyError)):
        reader.read(pod, 1)
    assert reader.errors == 1


def test_working_set_between_memory_stat_reads(tree: FakeTree) -> None:
    """Light reads correct usage with the last memory.stat's inactive_file; a full read,
    a move of usage past the slack, or the read count brings a fresh memory.stat."""
    pod = systemd_pod("burstable")
    tree.make(pod, usage=10_000, inactive=3_000)
    reader = CgroupReader(
        Hierarchies.detect(tree.base),
        prefix="pfx",
        memory_stat_slack_bytes=1_000,
        memory_stat_every_reads=3,
    )
    ino = reader.inode(pod)
    assert reader.read(pod, ino, memory_stat=False).memory_working_set_bytes == 7_000
    assert reader.memory_stat_reads == 1  # the first read always has one
    tree.make(pod, usage=10_500, inactive=1_000)  # rotation: usage moved less than the slack
    assert reader.read(pod, ino, memory_stat=False).memory_working_set_bytes == 7_500
    assert reader.read(pod, ino, memory_stat=False).memory_working_set_bytes == 7_500
    assert reader.memory_stat_reads == 1
    # every third read after the last one has it
    assert reader.read(pod, ino, memory_stat=False).memory_working_set_bytes == 9_500
    assert reader.memory_stat_reads == 2
    tree.make(pod, usage=12_000, inactive=500)  # moved past the slack: read at once
    assert reader.read(pod, ino, memory_stat=False).memory_working_set_bytes == 11_500
    tree.make(pod, usage=12_100, inactive=100)
    assert reader.read(pod, ino, memory_stat=True).memory_working_set_bytes == 12_000
    assert reader.memory_stat_reads == 4


def test_io_only_when_asked(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod, io=(700, 900))
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    s = reader.read(pod, 1, with_io=False)
    assert (s.io_read_bytes, s.io_write_bytes) == (None, None)
    s = reader.read(pod, 1)
    assert (s.io_read_bytes, s.io_write_bytes) == (700, 900)


def test_containers_listed_again_when_the_pod_directory_changes(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    a, b = "ab" * 32, "cd" * 32
    tree.make(pod)
    tree.make(f"{pod}/cri-containerd-{a}.scope")
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    (p,) = reader.discover()
    assert [c.container_id for c in p.containers] == [a]
    (again,) = reader.discover()
    walked = tree.base / pod if tree.pure_v2 else tree.hiers["cpuacct"] / pod
    if walked.stat().st_nlink > 2:
        # (on file systems whose directories count their subdirectories, as cgroupfs does)
        assert again is p  # nothing changed: nothing parsed, the same object
    tree.make(f"{pod}/cri-containerd-{b}.scope")  # one more sub-cgroup: the link count moves
    (p,) = reader.discover()
    assert sorted(c.container_id for c in p.containers) == [a, b]
    # Replaced one for one, the count stays: the probe asks for a relist when a read of
    # the old one fails (the kernel says ENODEV; the fake tree cannot).
    tree.remove(f"{pod}/cri-containerd-{a}.scope")
    tree.remove(f"{pod}/cri-containerd-{b}.scope")
    tree.make(f"{pod}/cri-containerd-{'ef' * 32}.scope")
    tree.make(f"{pod}/cri-containerd-{'0a' * 32}.scope")
    fresh = reader.relist(p)
    assert sorted(c.container_id for c in fresh.containers) == ["0a" * 32, "ef" * 32]
    (p,) = reader.discover()
    assert p is fresh


def test_every_pod_is_listed_again_within_relist_every_looks(tree: FakeTree) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod)
    reader = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    first = reader.discover()[0]
    relisted = [reader.discover()[0] is not first for _ in range(cgroups.RELIST_EVERY)]
    assert any(relisted)


def test_past_the_descriptor_budget_files_are_opened_per_read(
    tree: FakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = systemd_pod("burstable")
    tree.make(pod, cpu_ns=5000, usage=10_000, inactive=3_000, mem_limit=1 << 30)
    tree.make(f"{pod}/cri-containerd-{CID}.scope")

    def check(reader: CgroupReader) -> None:
        (p,) = reader.discover()
        assert [c.container_id for c in p.containers] == [CID]
        s = reader.read(pod, 1)
        assert (s.cpu_usage_ns, s.memory_working_set_bytes) == (5000, 7_000)
        assert reader.limits(pod).memory_limit_bytes == 1 << 30

    kept = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    check(kept)
    assert kept.open_files() > 0
    kept.release()
    assert kept.open_files() == 0
    monkeypatch.setattr(cgroups, "FD_RESERVE", 1 << 40)  # no descriptor may stay open
    none = CgroupReader(Hierarchies.detect(tree.base), prefix="pfx")
    check(none)
    check(none)
    assert none.open_files() == 0


def test_parsers() -> None:
    assert cgroups.parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3\n8:16 rbytes=10 wbytes=20\n") == (
        11,
        22,
    )
    assert cgroups.parse_cpu_max("max 100000") is None
    assert cgroups.parse_cpu_max("50000 100000") == 0.5
    assert cgroups.parse_flat_keyed("a 1\nb x\nc 3\n") == {"a": 1, "c": 3}


# -- the probe loop over a fake tree -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def probe_env(tmp_path: Path) -> Iterator[tuple[FakeTree, Probe, FakeClock]]:
    tree = FakeTree(tmp_path / "cg")
    clock = FakeClock()
    cfg = ProbeConfig(
        node_name="node-a",
        cgroup_base=tree.base,
        prefix="pfx",
        wal_path=tmp_path / "wal.db",
        metrics_port=None,
        watch_pods=False,
    )
    probe = Probe(cfg, boot_id="boot-1", clock=clock)
    yield tree, probe, clock
    probe.buffer.close()


def test_probe_charges_new_pod_from_zero_and_short_lived_pod(
    probe_env: tuple[FakeTree, Probe, FakeClock],
) -> None:
    tree, probe, clock = probe_env
    probe.sample()  # first look: nothing yet
    pod = systemd_pod("burstable")
    ctr = f"{pod}/cri-containerd-{CID}.scope"
    for i, cpu in enumerate((300_000_000, 1_300_000_000, 2_300_000_000)):
        tree.make(pod, cpu_ns=cpu, usage=1000 * (i + 1))
        tree.make(ctr, cpu_ns=cpu - 100_000_000)
        clock.t += 1
        probe.sample()
    tree.remove(pod)  # gone after 3 s, before the report
    clock.t += 1
    probe.sample()
    report = probe.cut_report()
    (p,) = report.pods
    assert p.uid == UID and p.ended
    assert p.cpu_core_seconds == pytest.approx(2.3)
    assert p.containers[0].cpu_core_seconds == pytest.approx(2.2)
    assert p.memory_byte_seconds == pytest.approx(1500 + 2500)
    assert p.memory_peak_bytes == 3000
    # the next report no longer lists it
    clock.t += 1
    probe.sample()
    assert probe.cut_report().pods == []


def test_probe_threshold_push_on_rising_edge(probe_env: tuple[FakeTree, Probe, FakeClock]) -> None:
    tree, probe, clock = probe_env
    pod = systemd_pod("burstable")
    tree.make(pod, cpu_ns=0, usage=10, cpu_quota=1.0, mem_limit=1000)
    probe.sample()
    tree.make(pod, cpu_ns=500_000_000, usage=950, cpu_quota=1.0, mem_limit=1000)
    clock.t += 1
    events = probe.sample()
    assert [(e.kind, round(e.value, 2)) for e in events] == [("MemoryHigh", 0.95)]
    tree.make(pod, cpu_ns=1_450_000_000, usage=960, cpu_quota=1.0, mem_limit=1000)
    clock.t += 1
    events = probe.sample()
    assert [e.kind for e in events] == ["CpuHigh"]  # memory already high: no new event
    report = probe.cut_report("threshold", events)
    assert report.trigger == "threshold" and report.events[0].kind == "CpuHigh"


def test_probe_restart_resumes_from_saved_counters(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "cg")
    pod = systemd_pod("burstable")
    clock = FakeClock()
    cfg = ProbeConfig(
        node_name="n",
        cgroup_base=tree.base,
        prefix="pfx",
        wal_path=tmp_path / "w.db",
        metrics_port=None,
        watch_pods=False,
    )
    tree.make(pod, cpu_ns=5_000_000_000)  # existed before the first start: not ours to charge
    p1 = Probe(cfg, boot_id="b", clock=clock)
    p1.sample()
    tree.make(pod, cpu_ns=6_000_000_000)
    clock.t += 1
    p1.sample()
    r1 = p1.cut_report()
    assert r1.pods[0].cpu_core_seconds == pytest.approx(1.0)
    tree.make(pod, cpu_ns=7_000_000_000)  # used while the probe was down (or unreported)
    p1.buffer.close()
    p2 = Probe(cfg, boot_id="b", clock=clock)
    tree.make(pod, cpu_ns=7_500_000_000)
    new_pod = systemd_pod("besteffort", uid="11111111-2222-4333-a444-555555555555")
    tree.make(new_pod, cpu_ns=400_000_000)  # born while the probe was down
    clock.t += 1
    p2.sample()
    r2 = p2.cut_report()
    got = {p.uid: p.cpu_core_seconds for p in r2.pods}
    assert got[UID] == pytest.approx(1.5)
    assert got["11111111-2222-4333-a444-555555555555"] == pytest.approx(0.4)
    assert r2.seq == r1.seq + 1
    p2.buffer.close()


def test_light_cycles_read_no_memory_stat_and_full_ones_do(
    probe_env: tuple[FakeTree, Probe, FakeClock],
) -> None:
    tree, probe, clock = probe_env
    pod = systemd_pod("burstable")
    tree.make(pod, usage=50_000, inactive=10_000)
    tree.make(f"{pod}/cri-containerd-{CID}.scope", usage=40_000, inactive=10_000, io=(5, 6))
    probe.sample()
    reads = probe.reader.memory_stat_reads
    assert reads == 2
    tree.make(pod, usage=50_000, inactive=2_000)  # file pages rotated, usage the same
    clock.t += 1
    probe.sample(full=False)
    assert probe.reader.memory_stat_reads == reads  # one pod, no memory.stat, no container
    assert probe.attributor.working_sets()[UID] == 40_000  # bounded: the rotation is missed
    tree.make(f"{pod}/cri-containerd-{CID}.scope", usage=40_000, inactive=10_000, io=(15, 6))
    clock.t += 1
    probe.sample()  # a report cycle reads it: the working set is exact again
    assert probe.attributor.working_sets()[UID] == 48_000
    report = probe.cut_report()
    assert report.pods[0].memory_working_set_bytes == 48_000
    assert report.pods[0].memory_peak_bytes == 48_000
    assert report.pods[0].containers[0].io_read_bytes == 10


# -- the first look: what was born since the probe started ---------------------------------


def test_process_start_ticks() -> None:
    me = cgroups.process_start_ticks()
    assert me is not None and me == cgroups.process_start_ticks(os.getpid())
    now_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")
    assert 0 < me <= now_ticks
    init = cgroups.process_start_ticks(1)
    assert init is not None and init <= me
    assert cgroups.process_start_ticks(2**22 + 1) is None  # above pid_max: no such process


def test_first_look_charges_from_zero_what_was_born_since_the_probe_started(
    tree: FakeTree, tmp_path: Path
) -> None:
    """Pod processes stand in as: pid 1 (started at boot, before the probe) and this test's
    own process (started when the probe did)."""
    old = systemd_pod("burstable")
    new_uid, quiet_uid = "11111111-2222-4333-a444-555555555555", "21111111-2222-4333-a444-5"
    new = systemd_pod("besteffort", uid=new_uid)
    quiet = systemd_pod("besteffort", uid=quiet_uid)
    tree.make(old, cpu_ns=5_000_000_000)
    tree.make(f"{old}/cri-containerd-{CID}.scope", cpu_ns=4_000_000_000)
    tree.make(f"{old}/cri-containerd-{'cd' * 32}.scope", cpu_ns=300_000_000)  # restarted since
    tree.make(new, cpu_ns=400_000_000)
    tree.make(f"{new}/cri-containerd-{'ef' * 32}.scope", cpu_ns=400_000_000)
    tree.make(quiet, cpu_ns=200_000_000)  # no process left: nothing tells when it was born
    walk = Hierarchies.detect(tree.base).walk_root()
    (walk / old / f"cri-containerd-{CID}.scope" / "cgroup.procs").write_text("1\n")
    (walk / old / f"cri-containerd-{'cd' * 32}.scope" / "cgroup.procs").write_text(
        f"{os.getpid()}\n"
    )
    (walk / new / f"cri-containerd-{'ef' * 32}.scope" / "cgroup.procs").write_text(
        f"{os.getpid()}\n999999999\n"  # one gone meanwhile
    )
    cfg = ProbeConfig(
        node_name="n",
        cgroup_base=tree.base,
        prefix="pfx",
        wal_path=tmp_path / "w.db",
        metrics_port=None,
        watch_pods=False,
    )
    clock = FakeClock()
    probe = Probe(cfg, boot_id="b", clock=clock, started_ticks=cgroups.process_start_ticks())
    assert probe.reader.oldest_task_start(old) == cgroups.process_start_ticks(1)
    assert probe.reader.oldest_task_start(quiet) is None
    probe.sample()
    tree.make(old, cpu_ns=6_000_000_000)
    tree.make(new, cpu_ns=900_000_000)
    clock.t += 1
    probe.sample()
    report = probe.cut_report()
    probe.buffer.close()
    got = {p.uid: p.cpu_core_seconds for p in report.pods}
    assert got == pytest.approx({UID: 1.0, new_uid: 0.9, quiet_uid: 0.0})
    ctrs = {c.container_id: c.cpu_core_seconds for p in report.pods for c in p.containers}
    assert ctrs == pytest.approx({CID: 0.0, "cd" * 32: 0.3, "ef" * 32: 0.4})


def test_a_wall_clock_step_backwards_keeps_the_interval_by_the_monotonic_clock(
    probe_env: tuple[FakeTree, Probe, FakeClock],
) -> None:
    _tree, probe, clock = probe_env
    probe.sample()
    clock.t += 5
    probe.sample()
    # the wall clock is 30 s behind where the interval started (NTP stepped it back)
    probe._interval_start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    report = probe.cut_report()
    assert report.elapsed_seconds == pytest.approx(5)
    assert report.clock_step_seconds == pytest.approx(30, abs=1)
    length = (report.interval_end - report.interval_start).total_seconds()
    assert length == pytest.approx(5)
    ordinary = probe.cut_report()  # no step: nothing new on the wire for older operators
    assert ordinary.elapsed_seconds is None
