"""Pure parts of the network readers: layouts, per-CPU sums, swaps, cost, stale-key index."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kopeck_probe.ebpf import CgroupIndex, Counters, NetCounterReader, ProgramCost, total_cost
from kopeck_probe.ebpf.cost import bpf_stats
from kopeck_probe.ebpf.program import VALUE, pack_key, sum_percpu, unpack_key
from kopeck_probe.ebpf.syscall import BpfError, ProgRunStats, parse_cpu_list
from kopeck_probe.ebpf.veth import VethReader, pod_counters_from_host_stats


@pytest.mark.parametrize(("text", "n"), [("0\n", 1), ("0-1\n", 2), ("0-3,5,7-8", 7), ("0-63", 64)])
def test_parse_cpu_list(text: str, n: int) -> None:
    assert parse_cpu_list(text) == n


def test_parse_cpu_list_empty() -> None:
    with pytest.raises(ValueError):
        parse_cpu_list("\n")


def test_key_roundtrip() -> None:
    raw = pack_key(2**40 + 7, 1)
    assert len(raw) == 16
    assert unpack_key(raw) == (2**40 + 7, 1)


def test_sum_percpu() -> None:
    raw = VALUE.pack(100, 2) + VALUE.pack(0, 0) + VALUE.pack(1500, 1)
    assert sum_percpu(raw, 3) == (1600, 3)


def test_host_veth_stats_swap_to_pod_view() -> None:
    stats = {"rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2, "multicast": 9}
    assert pod_counters_from_host_stats(stats) == Counters(
        tx_bytes=10, rx_bytes=20, tx_packets=1, rx_packets=2
    )


def test_counters_add() -> None:
    assert Counters(1, 2, 3, 4) + Counters(10, 20, 30, 40) == Counters(11, 22, 33, 44)


def test_program_cost() -> None:
    cost = total_cost(
        [
            ProgRunStats(1, run_time_ns=3000, run_cnt=10),
            ProgRunStats(2, run_time_ns=1000, run_cnt=10),
        ]
    )
    assert cost == ProgramCost(4000, 20)
    assert cost.ns_per_packet == 200.0
    assert ProgramCost(0, 0).ns_per_packet is None
    assert (cost - ProgramCost(1000, 10)).ns_per_packet == 300.0


def test_bpf_stats_sysctl_restores_previous_value(tmp_path: Path) -> None:
    sysctl = tmp_path / "bpf_stats_enabled"
    sysctl.write_text("0\n")
    with bpf_stats("sysctl", sysctl=sysctl) as method:
        assert method == "sysctl"
        assert sysctl.read_text() == "1"
    assert sysctl.read_text() == "0"
    with pytest.raises(RuntimeError), bpf_stats("sysctl", sysctl=sysctl):
        raise RuntimeError("measurement failed")
    assert sysctl.read_text() == "0"


def test_bpf_error_carries_verifier_log() -> None:
    e = BpfError(errno.EACCES, "program load 'x'", "0: (b7) r0 = 1\nR0 !read_ok")
    assert e.errno == errno.EACCES
    assert "verifier log" in str(e) and "R0 !read_ok" in str(e)


def test_cgroup_index_tracks_removal_and_creation(tmp_path: Path) -> None:
    (tmp_path / "pod1" / "ctr").mkdir(parents=True)
    (tmp_path / "pod1" / "file").write_text("x")
    idx = CgroupIndex(tmp_path)
    idx.refresh()
    ctr = (tmp_path / "pod1" / "ctr").stat().st_ino
    assert set(idx.paths) == {
        tmp_path.stat().st_ino,
        (tmp_path / "pod1").stat().st_ino,
        ctr,
    }
    assert idx.alive(ctr)
    (tmp_path / "pod1" / "ctr").rmdir()
    assert not idx.alive(ctr)
    assert not idx.alive(12345678901)


def test_readers_satisfy_protocol() -> None:
    with VethReader(names=[]) as veth:
        assert isinstance(veth, NetCounterReader)
        assert veth.kind == "veth"
        assert veth.read() == {}
