"""The eBPF counters and the veth fallback on the real kernel, against iperf3's own totals.

Two pod sandboxes (own netns, veth on a bridge, kubelet-layout cgroups); an iperf3 server in
one and a client in the other moving 50 MiB, once client->server and once reversed (-R),
so that each pod's tx and rx each carry a known payload once.

What is compared: iperf3 reports TCP payload bytes. The cgroup_skb hook sees skb->len, the
L3 packet from the IP header on, once per skb (a TSO/GSO skb of up to 64 KiB has a single
IP+TCP header). With TCP timestamps on (the Linux default) every data segment and every
pure ACK carries exactly 20 (IPv4) + 32 (TCP with timestamp option) = 52 header bytes, so
    payload = counted_bytes - 52 * counted_packets
is exact for all packets but the handful of SYN/FIN ones with more options (about 8 bytes
each). That payload must match iperf3's total within 1%, per pod and direction. The control
connection iperf3 opens beside the data one adds a few KB (0.01%). The veth fallback sees L2
frames, so it subtracts 14 more (Ethernet) per frame, and also sees ARP/ND, a few hundred bytes.
iperf3 itself is exact only up to its socket buffers (see WINDOW).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kopeck.localcluster.sandbox import PodSandbox, SandboxHost
from kopeck_probe.ebpf import (
    AttachMode,
    BpfError,
    Counters,
    EbpfReader,
    NetCounterReader,
    VethReader,
    bpf_stats,
    open_net_reader,
    sample_cost,
    total_cost,
)
from kopeck_probe.ebpf import syscall as sc
from kopeck_probe.ebpf.asm import Assembler
from tests.support.sandboxes import wait_listening

pytestmark = pytest.mark.node

PAYLOAD = 50 * 1024 * 1024
L3_HEADER = 20 + 32  # IPv4 + TCP with the timestamp option
L2_HEADER = 14
TOLERANCE = 0.01
# iperf3 -n ends the test as soon as the sender's last write returns: what is still in the
# socket buffers then is either delivered but not in iperf3's sum_received, or (when the
# server closes with unread data and resets the connection) in sum_sent but never sent.
# The kernel's counts are right either way; small buffers keep iperf3's own error far
# below 1% of the transfer (measured: at most ~0.5% with 128K, ~0.1% with 32K).
WINDOW = "32K"

if os.geteuid() != 0:
    pytest.skip("needs root (cgroups, netns, BPF)", allow_module_level=True)


def cgroup_ids_under(path: Path) -> set[int]:
    """The v2 ids (inodes) of a pod's cgroup and everything below it (its containers)."""
    ids = {path.stat().st_ino}
    for root, dirs, _ in os.walk(path):
        ids.update(Path(root, d).stat().st_ino for d in dirs)
    return ids


def bpftool_cgroup_show(path: Path) -> str:
    return subprocess.run(
        ["bpftool", "cgroup", "show", str(path)], capture_output=True, text=True, check=True
    ).stdout


@dataclass
class Transfer:
    """One iperf3 run: payload bytes each side saw, from iperf3's JSON."""

    sent: int
    received: int




def iperf3(client: PodSandbox, server: PodSandbox, reverse: bool) -> Transfer:
    """Run one transfer of PAYLOAD bytes; reverse=True makes the server send."""
    srv = server.run(["iperf3", "-s", "-1", "-J"])
    try:
        wait_listening(server)
        argv = ["iperf3", "-c", str(server.ip), "-n", str(PAYLOAD), "-w", WINDOW, "-J"]
        if reverse:
            argv.append("-R")
        res = client.exec(argv, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        out, _ = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()
    end: dict[str, Any] = json.loads(res.stdout)["end"]
    server_end: dict[str, Any] = json.loads(out)["end"]
    sent = int(end["sum_sent"]["bytes"])
    received = int(
        server_end["sum_received"]["bytes"] if not reverse else end["sum_received"]["bytes"]
    )
    return Transfer(sent=sent, received=received)


def per_pod(
    reader: NetCounterReader, keys: Mapping[str, set[int] | set[str]]
) -> dict[str, Counters]:
    counts: Mapping[Any, Counters] = reader.read()
    out: dict[str, Counters] = {}
    for pod, pod_keys in keys.items():
        total = Counters()
        for k in pod_keys:
            total = total + counts.get(k, Counters())
        out[pod] = total
    return out


def payload(nbytes: int, packets: int, header: int) -> int:
    return nbytes - header * packets


def assert_close(counted: int, truth: int, what: str) -> None:
    err = abs(counted - truth) / truth
    print(f"{what}: counted payload {counted} vs iperf3 {truth}: {err:.4%}")
    assert err <= TOLERANCE, f"{what}: counted {counted}, iperf3 {truth}, error {err:.3%}"


@pytest.fixture(params=["systemd", "cgroupfs"])
def two_pods(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[SandboxHost, PodSandbox, PodSandbox]]:
    """Two networked pods, in each kubelet cgroup driver's layout."""
    with SandboxHost(driver=request.param) as host:
        a = host.pod(network=True, name="client")
        b = host.pod(network=True, name="server")
        a.container_dirs()  # create the container cgroups before the readers look
        b.container_dirs()
        yield host, a, b


def measure_both_directions(
    reader: NetCounterReader,
    a: PodSandbox,
    b: PodSandbox,
    keys: Mapping[str, set[int] | set[str]],
    header: int,
) -> dict[str, float]:
    """Run a->b then b->a; check each pod's tx and rx payload against iperf3."""
    errors: dict[str, float] = {}
    for reverse in (False, True):
        before = per_pod(reader, keys)
        t = iperf3(a, b, reverse=reverse)
        after = per_pod(reader, keys)
        print(f"iperf3 {'b->a' if reverse else 'a->b'}: sent {t.sent} received {t.received}")
        assert t.sent >= PAYLOAD
        d = {
            p: Counters(
                after[p].tx_bytes - before[p].tx_bytes,
                after[p].rx_bytes - before[p].rx_bytes,
                after[p].tx_packets - before[p].tx_packets,
                after[p].rx_packets - before[p].rx_packets,
            )
            for p in keys
        }
        sender, receiver = ("b", "a") if reverse else ("a", "b")
        tx = d[sender]
        rx = d[receiver]
        assert tx.tx_packets > 0 and rx.rx_packets > 0
        tx_payload = payload(tx.tx_bytes, tx.tx_packets, header)
        rx_payload = payload(rx.rx_bytes, rx.rx_packets, header)
        assert_close(tx_payload, t.sent, f"pod {sender} tx")
        assert_close(rx_payload, t.received, f"pod {receiver} rx")
        errors[f"{sender}_tx"] = (tx_payload - t.sent) / t.sent
        errors[f"{receiver}_rx"] = (rx_payload - t.received) / t.received
        # the ACK direction carries no payload: what is left is small against the transfer
        acks = payload(d[receiver].tx_bytes, d[receiver].tx_packets, header)
        assert abs(acks) < PAYLOAD * TOLERANCE
    return errors


def test_ebpf_counts_match_iperf3_per_pod_and_direction(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    host, a, b = two_pods
    with EbpfReader(host.pods_parent_v2()) as reader:
        keys: dict[str, set[int] | set[str]] = {
            "a": cgroup_ids_under(a.cgroup_dirs()["unified"]),
            "b": cgroup_ids_under(b.cgroup_dirs()["unified"]),
        }
        with bpf_stats():
            cost_before = total_cost(reader.run_stats())
            errors = measure_both_directions(reader, a, b, keys, L3_HEADER)
            cost = total_cost(reader.run_stats()) - cost_before
        assert reader.missed() == (0, 0)
        # the sockets are the containers', not the pod directory's own
        counted = reader.read()
        container_a = a.container_dirs()["unified"].stat().st_ino
        assert counted[container_a].tx_bytes > PAYLOAD
    assert cost.run_cnt > 0 and cost.ns_per_packet is not None
    print(f"eBPF errors {errors}; cost {cost.ns_per_packet:.0f} ns/packet over {cost.run_cnt} runs")
    assert 0 < cost.ns_per_packet < 20_000


def test_veth_fallback_counts_match_iperf3(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    _, a, b = two_pods
    assert a.host_veth and b.host_veth and a.netns
    with VethReader() as reader:
        # the mapping the probe uses: the pod's netns -> the host end of its veth
        assert reader.host_veths_of_netns(f"/run/netns/{a.netns}") == [a.host_veth]
        keys: dict[str, set[int] | set[str]] = {"a": {a.host_veth}, "b": {b.host_veth}}
        errors = measure_both_directions(reader, a, b, keys, L3_HEADER + L2_HEADER)
    print(f"veth errors {errors}")


@pytest.mark.parametrize("mode", ["link", "prog_attach"])
def test_attached_once_multi_and_detach_leaves_nothing(
    mode: AttachMode, two_pods: tuple[SandboxHost, PodSandbox, PodSandbox]
) -> None:
    host, _, _ = two_pods
    parent = host.pods_parent_v2()
    assert bpftool_cgroup_show(parent).strip() == ""
    with EbpfReader(parent, attach=mode) as reader:
        shown = bpftool_cgroup_show(parent)
        assert "kopeck_ingress" in shown and "kopeck_egress" in shown
        assert shown.count("multi") == 2 or mode == "link"
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ids = {t: sc.prog_query(fd, t) for t in (sc.CGROUP_INET_INGRESS, sc.CGROUP_INET_EGRESS)}
        finally:
            os.close(fd)
        assert sorted(len(v) for v in ids.values()) == [1, 1]
        # a second reader stacks beside the first (multi), it does not replace it
        with EbpfReader(parent, attach=mode):
            assert bpftool_cgroup_show(parent).count("kopeck_") == 4
        assert bpftool_cgroup_show(parent).count("kopeck_") == 2
    assert reader.closed
    assert bpftool_cgroup_show(parent).strip() == ""


def test_killed_probe_leaves_nothing_attached(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    """With bpf_link attachment the kernel detaches when the holder dies, even by SIGKILL."""
    host, _, _ = two_pods
    parent = host.pods_parent_v2()
    code = (
        "import sys, time; from pathlib import Path;"
        "from kopeck_probe.ebpf import EbpfReader;"
        f"r = EbpfReader(Path({str(parent)!r})); print('attached', flush=True); time.sleep(60)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"attached"
        assert "kopeck_ingress" in bpftool_cgroup_show(parent)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 5
    while bpftool_cgroup_show(parent).strip() and time.monotonic() < deadline:
        time.sleep(0.05)  # link release is deferred to RCU/workqueue
    assert bpftool_cgroup_show(parent).strip() == ""


def test_removed_cgroup_is_reported_once_then_dropped(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    host, a, b = two_pods
    with EbpfReader(host.pods_parent_v2(), prune_every=1) as reader:
        side = a.container_dirs("side")["unified"]
        side_id = side.stat().st_ino
        srv = b.run(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
        try:
            wait_listening(b)
            res = a.exec(["iperf3", "-c", str(b.ip), "-n", "1M"], container="side")
            assert res.returncode == 0, res.stderr
            srv.wait(timeout=30)
        finally:
            if srv.poll() is None:
                os.killpg(srv.pid, signal.SIGKILL)
                srv.wait()
        live = reader.read()
        assert live[side_id].tx_bytes > 10_000  # iperf3 may reset before all 1M left (see WINDOW)
        a.remove_container("side")
        assert not side.exists()
        final = reader.read()
        assert final[side_id].tx_bytes >= live[side_id].tx_bytes
        assert reader.cgroup_path(side_id) == side  # the last counts still map to the pod
        assert side_id not in reader.read()
        keys = {sc_id for sc_id, _ in reader.read_raw()}
        assert side_id not in keys
        # the per-key walk (kernels without batch lookup) sees the same map
        batch = reader.read_raw()
        reader._batch = False
        assert reader.read_raw() == batch


def test_verifier_refusal_carries_the_log() -> None:
    bad = Assembler().exit().assemble()  # returns r0 without ever setting it
    with pytest.raises(BpfError) as exc:
        sc.prog_load(sc.PROG_TYPE_CGROUP_SKB, bad, "Apache-2.0", "kopeck_bad")
    assert "R0 !read_ok" in str(exc.value)
    assert exc.value.log


def test_refused_attach_falls_back_to_veth_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A v1 cgroup directory cannot take cgroup BPF: the kernel refuses, veth takes over."""
    import kopeck_probe.ebpf as ebpf_pkg

    v1 = Path("/sys/fs/cgroup/memory")
    if not (v1 / "memory.usage_in_bytes").exists():
        pytest.skip("no cgroup v1 memory hierarchy to be refused on")
    ebpf_pkg._warned = False
    with caplog.at_level("WARNING", logger="kopeck_probe.ebpf"):
        first = open_net_reader(v1)
        second = open_net_reader(v1)
    try:
        assert first.kind == "veth" and second.kind == "veth"
        warnings = [r for r in caplog.records if "eBPF network counters unavailable" in r.message]
        assert len(warnings) == 1
    finally:
        first.close()
        second.close()
    with contextlib.closing(open_net_reader(Path("/sys/fs/cgroup/unified"), ebpf=False)) as r:
        assert isinstance(r, VethReader)


def test_full_map_counts_what_it_cannot_hold_as_missed(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    """max_entries is a hard bound: beyond it packets are still counted, in `missed`."""
    host, a, b = two_pods
    with EbpfReader(host.pods_parent_v2(), max_entries=2) as reader:
        t = iperf3(a, b, reverse=False)
        raw = reader.read_raw()
        missed_bytes, missed_packets = reader.missed()
        assert len(raw) == 2 and reader.map_size() == 2
        assert missed_packets > 0
        # four (pod, direction) streams, each at least the payload or only ACKs: all bytes
        # are somewhere, in the two keys or in missed
        total = sum(nbytes for nbytes, _ in raw.values()) + missed_bytes
        assert total >= 2 * t.sent


def test_sample_cost_measures_live_traffic(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox],
) -> None:
    host, a, b = two_pods
    previous = Path("/proc/sys/kernel/bpf_stats_enabled").read_text()
    with EbpfReader(host.pods_parent_v2()) as reader:
        srv = b.run(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
        try:
            wait_listening(b)
            cli = a.run(["iperf3", "-c", str(b.ip), "-t", "3", "-u", "-b", "20M", "-l", "200"])
            cost = sample_cost(reader.run_stats, 1.5, method="sysctl")
            cli.wait(timeout=30)
        finally:
            for p in (srv,):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    assert Path("/proc/sys/kernel/bpf_stats_enabled").read_text() == previous
    assert cost.run_cnt > 1000 and cost.ns_per_packet is not None
    print(f"UDP 200 B: {cost.ns_per_packet:.0f} ns/packet over {cost.run_cnt} runs")
