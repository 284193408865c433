"""Attribution math: deltas, resets, re-created cgroups, ended pods, memory integration,
thresholds and the network seam — all from recorded inputs, no I/O."""

from __future__ import annotations

import pytest

from kopeck_probe.attribution import (
    Attributor,
    ContainerObservation,
    NetCounters,
    NetworkAttributor,
    PodObservation,
    PodResources,
    ThresholdTracker,
    counter_delta,
    counter_deltas,
    merge_resources,
    threshold_conditions,
)
from kopeck_probe.cgroups import CgroupLimits, CgroupStats

S = 1_000_000_000


def obs(
    cpu_s: float,
    ws: int = 0,
    inode: int = 7,
    uid: str = "u1",
    io: tuple[int, int] | None = None,
    containers: tuple[ContainerObservation, ...] = (),
) -> PodObservation:
    stats = CgroupStats(inode, int(cpu_s * S), ws, *(io or (None, None)))
    return PodObservation(uid, "burstable", f"rel/{uid}", stats, containers)


def test_counter_delta() -> None:
    assert counter_delta(None, 5) == 5
    assert counter_delta(3, 5) == 2
    assert counter_delta(9, 4) == 4  # went down: restarted from zero, never negative


def test_counters_that_restart_together_reset_together() -> None:
    assert counter_deltas(None, (5, 6)) == (5, 6)
    assert counter_deltas((1, 2), (5, 6)) == (4, 4)
    # bytes went down though packets did not: the whole entry was re-made
    assert counter_deltas((100, 2), (40, 3)) == (40, 3)


def test_first_look_baselines_later_pods_from_zero() -> None:
    a = Attributor()
    a.observe(0, [obs(100.0)])  # existed before the probe: its past is not ours
    a.observe(1, [obs(100.5), obs(0.2, uid="u2", inode=8)])
    got = {p.uid: p.usage.cpu_ns / S for p in a.cut()}
    assert got == pytest.approx({"u1": 0.5, "u2": 0.2})


def test_first_look_charges_from_zero_what_was_born_since_the_probe_started() -> None:
    a = Attributor()
    assert a.first_look
    ctr = ContainerObservation("c2", "rel/u2/c2", CgroupStats(9, int(0.3 * S), 0))
    born = obs(0.3, uid="u2", inode=8, containers=(ctr,))
    born.born_since_start = ctr.born_since_start = True  # arrived while the probe started
    a.observe(0, [obs(100.0), born])
    assert not a.first_look
    a.observe(1, [obs(100.5), obs(0.4, uid="u2", inode=8)])
    got = {p.uid: p.usage.cpu_ns / S for p in a.cut()}
    assert got == pytest.approx({"u1": 0.5, "u2": 0.4})


def test_counter_reset_is_not_negative() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(10.0)])
    a.observe(1, [obs(11.0)])
    a.observe(2, [obs(0.3)])  # reset (e.g. cpuacct.usage written to 0)
    a.observe(3, [obs(0.8)])
    (p,) = a.cut()
    assert p.usage.cpu_ns / S == pytest.approx(10.0 + 1.0 + 0.3 + 0.5)


def test_recreated_cgroup_charged_from_zero_even_if_counter_is_higher() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(1.0, inode=7)])
    a.observe(1, [obs(2.0, inode=99)])  # same path, new cgroup
    (p,) = a.cut()
    assert p.usage.cpu_ns / S == pytest.approx(1.0 + 2.0)


def test_ended_pod_charged_to_last_read_then_forgotten() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(0.5, ws=100)])
    a.observe(1, [obs(1.5, ws=300)])
    a.observe(2, [])
    (p,) = a.cut()
    assert p.ended and p.usage.cpu_ns / S == pytest.approx(1.5)
    assert p.usage.memory_byte_seconds == pytest.approx(200.0)
    assert a.cut() == []


def test_unreadable_pod_is_not_ended() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(0.5)])
    a.observe(1, [PodObservation("u1", "burstable", "rel/u1", None, unreadable=True)])
    a.observe(2, [obs(1.0)])
    (p,) = a.cut()
    assert not p.ended and p.usage.cpu_ns / S == pytest.approx(1.0)


def test_memory_integration_and_peak_across_intervals() -> None:
    a = Attributor(baselines={})
    for t, ws in [(0, 100), (1, 300), (2, 100)]:
        a.observe(t, [obs(0, ws=ws)])
    (p,) = a.cut()
    assert p.usage.memory_byte_seconds == pytest.approx(200 + 200)
    assert p.usage.memory_peak_bytes == 300 and p.usage.memory_last_bytes == 100
    assert p.usage.seconds == pytest.approx(2.0)
    a.observe(3, [obs(0, ws=50)])
    (p,) = a.cut()
    assert p.usage.memory_byte_seconds == pytest.approx(75.0)
    assert p.usage.memory_peak_bytes == 100  # the level at the interval's start counts


def test_io_deltas() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(0, io=(100, 10))])
    a.observe(1, [obs(0, io=(150, 30))])
    (p,) = a.cut()
    assert (p.usage.io_read_bytes, p.usage.io_write_bytes) == (150, 30)


def test_containers_end_independently() -> None:
    def c(cid: str, cpu_s: float) -> ContainerObservation:
        return ContainerObservation(
            cid, f"rel/u1/{cid}", CgroupStats(hash(cid) % 1000, int(cpu_s * S), 0)
        )

    a = Attributor(baselines={})
    a.observe(0, [obs(1.0, containers=(c("a", 0.4), c("b", 0.5)))])
    a.observe(1, [obs(2.0, containers=(c("a", 1.4),))])
    (p,) = a.cut()
    got = {x.container_id: (x.usage.cpu_ns, x.ended) for x in p.containers}
    assert got == {"a": (int(1.4 * S), False), "b": (int(0.5 * S), True)}
    a.observe(2, [obs(2.0, containers=(c("a", 1.4),))])
    assert [x.container_id for x in a.cut()[0].containers] == ["a"]


def test_state_round_trip_resumes_counting() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(1.0)])
    a.cut()
    state = a.state()
    b = Attributor(baselines=state)
    b.observe(5, [obs(4.0), obs(0.25, uid="u9", inode=9)])
    got = {p.uid: p.usage.cpu_ns / S for p in b.cut()}
    assert got == pytest.approx({"u1": 3.0, "u9": 0.25})


def test_cpu_rate() -> None:
    a = Attributor(baselines={})
    a.observe(0, [obs(1.0)])
    a.observe(2, [obs(2.5)])
    assert a.cpu_rates() == pytest.approx({"u1": 0.75})


@pytest.mark.parametrize(
    ("cpu", "ws", "res", "kinds"),
    [
        (0.95, 10, PodResources(cpu_limit_cores=1.0), {"CpuHigh"}),
        (0.85, 10, PodResources(cpu_limit_cores=1.0), set()),
        (0.1, 95, PodResources(memory_limit_bytes=100), {"MemoryHigh"}),
        (0.01, 4, PodResources(cpu_request_cores=1.0, memory_request_bytes=100), {"Idle"}),
        (0.01, 6, PodResources(cpu_request_cores=1.0, memory_request_bytes=100), set()),
        (0.01, 4, PodResources(cpu_request_cores=1.0), set()),  # both requests needed
        (0.5, 10, PodResources(), set()),
    ],
)
def test_threshold_conditions(cpu: float, ws: int, res: PodResources, kinds: set[str]) -> None:
    assert set(threshold_conditions(cpu, ws, res)) == kinds


def test_threshold_tracker_rising_edge() -> None:
    t = ThresholdTracker()
    high = {"CpuHigh": (0.95, 0.9)}
    assert [e.kind for e in t.update("u", high)] == ["CpuHigh"]  # type: ignore[arg-type]
    assert t.update("u", high) == []  # type: ignore[arg-type]
    assert t.update("u", {}) == []
    assert len(t.update("u", high)) == 1  # type: ignore[arg-type]
    t.retain([])
    assert len(t.update("u", high)) == 1  # type: ignore[arg-type]


def test_merge_resources_prefers_metadata_limits() -> None:
    m = merge_resources(PodResources(cpu_request_cores=0.5), CgroupLimits(2.0, 1000))
    assert m == PodResources(0.5, None, 2.0, 1000)
    assert (
        merge_resources(PodResources(cpu_limit_cores=1.0), CgroupLimits(2.0, None)).cpu_limit_cores
        == 1.0
    )


def test_network_attributor_maps_inodes_and_handles_resets() -> None:
    n = NetworkAttributor("ebpf")
    inodes = {"pod-a": [10, 11], "pod-b": [20]}
    n.observe(
        {10: NetCounters(100, 50, 2, 1), 11: NetCounters(10, 0, 1, 0), 30: NetCounters(999)}, inodes
    )
    n.observe(
        {10: NetCounters(150, 60, 3, 2), 11: NetCounters(5, 0, 1, 0), 20: NetCounters(0, 7, 0, 1)},
        inodes,
    )
    out = n.cut()
    a = {u.direction: (u.bytes, u.packets) for u in out["pod-a"]}
    assert a == {"tx": (100 + 10 + 50 + 5, 2 + 1 + 1 + 1), "rx": (60, 2)}
    assert {u.direction: u.bytes for u in out["pod-b"]} == {"tx": 0, "rx": 7}
    assert all(u.source == "ebpf" and u.traffic_class == "unclassified" for u in out["pod-a"])
    assert n.cut() == {}
