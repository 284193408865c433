"""The adapters between the network readers and the probe core, and the probe's flags."""

from __future__ import annotations

import argparse
import ipaddress
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from kopeck_probe import cmd, ebpf_source
from kopeck_probe.attribution import NetCounters, NetworkAttributor
from kopeck_probe.config import (
    allowed_exporters,
    parse_classed_cidr,
    parse_listen,
    parse_located_cidr,
)
from kopeck_probe.ebpf import Counters
from kopeck_probe.ebpf.cost import ProgramCost
from kopeck_probe.ebpf_source import EbpfNetworkSource
from kopeck_probe.flows import craft as c
from kopeck_probe.flows.classify import classify
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.flows.source import FlowSource, build_topology
from kopeck_probe.netns import PodNet, PodNetns, parse_fib_trie_local, parse_if_inet6
from kopeck_probe.network_health import NetworkHealth
from kopeck_probe.veth_source import VethNetworkSource


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(["--node-name", "n1", *argv])


# -- flags ----------------------------------------------------------------------------


def test_defaults_keep_the_core_behaviour() -> None:
    cfg = cmd.config_from_args(args())
    assert cfg.network == "ebpf" and cfg.flows_listen == "" and cfg.flows_allow is None
    assert cfg.report_interval_s == 5.0 and cfg.watch_pods


def test_network_flags_reach_the_config() -> None:
    cfg = cmd.config_from_args(
        args(
            "--network", "veth", "--flows-listen", "127.0.0.1:9995",
            "--flows-allow", "127.0.0.1,10.0.0.0/30", "--zone", "z1", "--region", "r1",
            "--pod-cidr", "10.244.1.0/24", "--node-cidr", "10.0.0.0/16=z2,10.1.0.0/16",
            "--internal-cidr", "10.96.0.0/12", "--internal-cidr", "100.64.0.0/10=crossRegion",
        )
    )  # fmt: skip
    assert cfg.network == "veth" and cfg.flows_listen == "127.0.0.1:9995"
    assert cfg.flows_allow == ("127.0.0.1", "10.0.0.0/30")
    assert cfg.node_cidrs == ("10.0.0.0/16=z2", "10.1.0.0/16")
    assert cfg.internal_cidrs == ("10.96.0.0/12", "100.64.0.0/10=crossRegion")


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--flows-listen", "127.0.0.1:99999", "flows_listen"),
        ("--flows-listen", "nohost:1", "flows_listen"),
        ("--flows-allow", "10.0.0.0/8", "flows_allow"),
        ("--pod-cidr", "10.0.0.0/33", "pod_cidrs"),
        ("--internal-cidr", "10.0.0.0/8=cheap", "internal_cidrs"),
        ("--node-cidr", "zone-a", "node_cidrs"),
    ],
)
def test_bad_network_flags_name_the_field(flag: str, value: str, says: str) -> None:
    with pytest.raises(ValidationError) as exc:
        cmd.config_from_args(args(flag, value))
    assert says in str(exc.value)


def test_parsers() -> None:
    assert parse_listen("0.0.0.0:2055") == ("0.0.0.0", 2055)
    assert parse_listen(":9995") == ("0.0.0.0", 9995)
    assert parse_listen("[::1]:2055") == ("::1", 2055)
    assert parse_listen("::") == ("::", 2055)
    assert parse_located_cidr("10.0.0.0/16=z2/r2") == ("10.0.0.0/16", "z2", "r2")
    assert parse_located_cidr("10.0.0.0/16") == ("10.0.0.0/16", None, None)
    assert parse_classed_cidr("10.96.0.0/12") == ("10.96.0.0/12", "intraZone")
    assert allowed_exporters(("10.0.0.0/30", "127.0.0.1")) == {
        "10.0.0.1",
        "10.0.0.2",
        "127.0.0.1",
    }


def test_topology_from_flags_classifies() -> None:
    topo = build_topology(
        "n1", "z1", "r1",
        pod_cidrs=["10.244.1.0/24"],
        node_cidrs=["10.0.0.0/16", "10.1.0.0/16=z2", "10.2.0.0/16=z9/r9"],
        internal_cidrs=["10.96.0.0/12=intraZone", "100.64.0.0/10=internet"],
        node_addresses=["127.0.0.1", "192.168.5.5"],
    )  # fmt: skip

    def cls(ip: str) -> str:
        return classify(topo, ipaddress.ip_address(ip))

    assert cls("10.244.1.7") == "intraZone"
    assert cls("192.168.5.5") == "intraZone"
    assert cls("10.0.3.3") == "intraZone"
    assert cls("10.1.3.3") == "crossZone"
    assert cls("10.2.3.3") == "crossRegion"
    assert cls("10.96.0.10") == "intraZone"
    assert cls("100.64.1.1") == "internet"
    assert cls("8.8.8.8") == "internet"
    assert cls("172.16.0.1") == "unclassified"


# -- netns addresses ------------------------------------------------------------------

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.251.0.0
        /24 link UNICAST
     |-- 10.251.0.2
        /32 host LOCAL
  +-- 127.0.0.0/8 2 0 2
     +-- 127.0.0.0/31 1 0 0
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.251.0.2
        /32 host LOCAL
"""

IF_INET6 = (
    "00000000000000000000000000000001 01 80 10 80       lo\n"
    "fe800000000000000c2f1bfffe3ad0f4 02 40 20 80     eth0\n"
    "fd000000000000000000000000000007 02 40 00 80     eth0\n"
)


def test_pod_ips_from_proc_net() -> None:
    assert parse_fib_trie_local(FIB_TRIE) == ["10.251.0.2"]
    assert parse_if_inet6(IF_INET6) == ["fd00::7"]


# -- eBPF ------------------------------------------------------------------------------


class FakeEbpf:
    def __init__(self, parent: Path, counts: dict[int, Counters]) -> None:
        self.cgroup_parent = parent
        self.counts = counts
        self.closed = False

    def read(self) -> dict[int, Counters]:
        return dict(self.counts)

    def missed(self) -> tuple[int, int]:
        return (100, 1)

    def close(self) -> None:
        self.closed = True


def fake_v2(tmp: Path, *tops: str) -> Path:
    base = tmp / "cg"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu memory io\n")
    for t in tops:
        (base / "pfx" / t).mkdir(parents=True)
    return base


def test_ebpf_source_attaches_at_each_layout_and_keys_by_cgroup_id(tmp_path: Path) -> None:
    base = fake_v2(tmp_path, "kubepods.slice", "kubepods")
    opened: list[FakeEbpf] = []

    def opener(p: Path) -> FakeEbpf:
        r = FakeEbpf(p, {len(opened) + 10: Counters(5, 6, 1, 1)})
        opened.append(r)
        return r

    src = EbpfNetworkSource(base, "pfx", opener=opener)  # type: ignore[arg-type]
    assert sorted(r.cgroup_parent.name for r in opened) == ["kubepods", "kubepods.slice"]
    assert src.read() == {10: NetCounters(5, 6, 1, 1), 11: NetCounters(5, 6, 1, 1)}
    assert src.missed == (200, 2) and src.cgroups_counted == 2
    src.close()
    assert all(r.closed for r in opened)


def test_ebpf_source_attaches_late_when_kubepods_appears(tmp_path: Path) -> None:
    base = fake_v2(tmp_path)
    src = EbpfNetworkSource(
        base,
        "pfx",
        opener=lambda p: FakeEbpf(p, {7: Counters(1, 2, 3, 4)}),  # type: ignore[arg-type,return-value]
        retry_s=0,
    )
    assert src.readers == [] and src.read() == {}
    (base / "pfx" / "kubepods").mkdir(parents=True)
    assert src.read() == {7: NetCounters(1, 2, 3, 4)}


def test_ebpf_needs_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "cpuacct").mkdir()
    (tmp_path / "cpuacct" / "cpuacct.usage").write_text("0\n")
    with pytest.raises(OSError, match="no cgroup v2"):
        EbpfNetworkSource(tmp_path, opener=lambda p: FakeEbpf(p, {}))  # type: ignore[arg-type,return-value]


def test_ebpf_refused_falls_back_to_veth(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(ebpf_source, "EbpfNetworkSource", refuse)
    cfg = cmd.config_from_args(args("--network", "ebpf"))
    src = cmd.open_network(cfg)
    try:
        assert isinstance(src, VethNetworkSource) and src.source == "veth"
    finally:
        assert src is not None
        src.close()
    assert cmd.open_network(cmd.config_from_args(args("--network", "off"))) is None


# -- veth --------------------------------------------------------------------------------


class FakeVeth:
    def __init__(self) -> None:
        self.counts: dict[str, Counters] = {}
        self.netns_veths: dict[int, list[str]] = {}

    def read(self) -> dict[str, Counters]:
        return dict(self.counts)

    def host_veths_of_netns(self, netns: str) -> list[str]:
        pid = int(netns.split("/")[2])
        return self.netns_veths.get(pid, [])

    def close(self) -> None:
        pass


class FakeNetns:
    """PodNetns with pods given by the test."""

    def __init__(self) -> None:
        self.pods: dict[str, PodNet] = {}
        self.pending: dict[str, PodNet] = {}
        self.lock = threading.Lock()

    def refresh(self, now: float, resolve: Callable[[PodNet], None] | None = None) -> bool:
        for rel, p in list(self.pending.items()):
            self.pods[rel] = self.pending.pop(rel)
            if resolve is not None:
                resolve(p)
        return True


def test_veth_source_keys_by_pod_inode_from_first_read_on() -> None:
    veth, netns = FakeVeth(), FakeNetns()
    t = [0.0]
    src = VethNetworkSource(
        Path("/"),
        reader=veth,  # type: ignore[arg-type]
        netns=netns,  # type: ignore[arg-type]
        clock=lambda: t[0],
    )
    # a pod that was there before the probe: its history is not ours
    veth.counts = {"vethA": Counters(1000, 2000, 10, 20), "other": Counters(1, 1, 1, 1)}
    veth.netns_veths = {101: ["vethA"]}
    netns.pending["podA"] = PodNet("uid-a", "podA", 11, netns_ino=5, pid=101)
    attr = NetworkAttributor("veth")
    attr.observe(src.read(), {"uid-a": [11]})
    veth.counts["vethA"] = Counters(1500, 2100, 15, 21)
    attr.observe(src.read(), {"uid-a": [11]})
    # a pod born later: charged from zero
    t[0] = 100.0
    veth.counts["vethB"] = Counters(300, 400, 3, 4)
    veth.netns_veths[102] = ["vethB"]
    netns.pending["podB"] = PodNet("uid-b", "podB", 12, netns_ino=6, pid=102)
    read = src.read()
    assert read == {11: NetCounters(500, 100, 5, 1), 12: NetCounters(300, 400, 3, 4)}
    attr.observe(read, {"uid-a": [11], "uid-b": [12]})
    out = {uid: [(n.direction, n.bytes, n.packets) for n in u] for uid, u in attr.cut().items()}
    assert out == {
        "uid-a": [("tx", 500, 5), ("rx", 100, 1)],
        "uid-b": [("tx", 300, 3), ("rx", 400, 4)],
    }
    assert src.pods_mapped == 2


def test_pod_netns_skips_the_host_namespace_and_finds_a_pod(tmp_path: Path) -> None:
    base = fake_v2(tmp_path)
    uid = "1234abcd-0000-4000-a000-000000000001"
    pod = base / "pfx" / "kubepods" / "besteffort" / f"pod{uid}"
    (pod / "c1").mkdir(parents=True)
    (pod / "cgroup.procs").write_text("")
    # this process: in the host's namespace, as a host-network pod's would be
    (pod / "c1" / "cgroup.procs").write_text(f"{os.getpid()}\n")
    netns = PodNetns(base, "pfx")
    netns.refresh(0.0)
    assert [p.uid for p in netns.pods.values()] == [uid]
    found = next(iter(netns.pods.values()))
    assert found.inode == pod.stat().st_ino
    assert found.netns_ino is None and found.pid is None


# -- flows -------------------------------------------------------------------------------


def ip4(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def datagram(seq: int, octets: int, end_ms: int) -> bytes:
    tmpl = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))
    rec = c.typical_record(
        ip4("10.251.0.2"), ip4("10.251.0.3"), 40000, 5201, octets, 10, end_ms - 500, end_ms
    )
    return c.ipfix([tmpl, c.set_(256, rec)], seq=seq, export_s=end_ms // 1000)


def test_flow_source_leases_pod_ips_and_reports_deltas_by_class() -> None:
    pods = PodIPMap()
    topo = build_topology("n1", "z1", "r1", pod_cidrs=["10.251.0.0/24"])
    collector = FlowCollector(
        pods, topo, CollectorConfig(port=0, allowed_exporters=frozenset({"127.0.0.1"}))
    )
    ips = {"10.251.0.2": "uid-a", "10.251.0.3": "uid-b"}
    now = [time.time()]
    src = FlowSource(collector, pods, lambda: ips, clock=lambda: now[0], forget_after_s=10)
    src.refresh()
    assert collector.handle(datagram(0, 5000, int(now[0] * 1000)), "127.0.0.1")
    first = src.take()
    got = {
        (u, n.traffic_class, n.direction, n.bytes, n.source) for u, ns in first.items() for n in ns
    }
    assert got == {
        ("uid-a", "intraZone", "tx", 5000, "flows"),
        ("uid-b", "intraZone", "rx", 5000, "flows"),
    }  # fmt: skip
    assert src.take() == {}
    collector.handle(datagram(1, 700, int(now[0] * 1000)), "127.0.0.1")
    assert [n.bytes for n in src.take()["uid-a"]] == [700]
    # a not allow-listed exporter counts nothing
    assert not collector.handle(datagram(2, 900, int(now[0] * 1000)), "10.9.9.9")
    assert src.take() == {}
    # pod b goes; after forget_after_s its counters are dropped, a late flow counts afresh
    del ips["10.251.0.3"]
    now[0] += 1
    src.refresh()
    now[0] += 20
    src.take()
    assert "uid-b" not in collector.totals()
    assert pods.owner("10.251.0.3", now[0]) is None


def test_network_health_renders_ebpf_cost(tmp_path: Path) -> None:
    base = fake_v2(tmp_path, "kubepods")
    src = EbpfNetworkSource(
        base, "pfx", opener=lambda p: FakeEbpf(p, {}),  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    src.cost = ProgramCost(run_time_ns=45_000, run_cnt=100)
    names = {m.name: m for m in NetworkHealth(src, None).collect()}
    assert names["kopeck_probe_ebpf_ns_per_packet"].samples[0].value == 450
    assert names["kopeck_probe_network_source"].samples[0].labels == {"source": "ebpf"}
