"""The flow reader against a real exporter and a reference collector, on the real kernel.

softflowd captures on the bridge that three pod sandboxes' veths are enslaved to and
exports each datagram to two destinations at once (``-n a,b``): kopeck's collector and
nfcapd (nfdump). iperf3 moves known payloads between the pods. Then:

- kopeck's per-pod tx and rx byte and packet totals equal nfdump's decoding of the very
  same export exactly (both decode the same records; anything else is a decoder bug);
- kopeck decodes as many records as nfdump stored, with no datagram dropped;
- pod-to-pod traffic on one node is intra-zone;
- the flow bytes of the pod sending (iperf3 client) and of the pod receiving match the
  eBPF counters (cgroup_skb, L3 bytes) within 2% when the kernel allows BPF (softflowd's
  pcap also sees L3 packets as the kernel builds them, one GSO skb per capture).

Run for NetFlow v9 and for IPFIX.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from kopeck.localcluster.sandbox import PodSandbox, SandboxHost
from kopeck_probe.flows.classify import Location, NodePlacement, Topology
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector
from kopeck_probe.flows.podmap import PodIPMap
from tests.support.sandboxes import wait_listening

pytestmark = pytest.mark.node

if os.geteuid() != 0:
    pytest.skip("needs root (netns, bridge, packet capture)", allow_module_level=True)
for tool in ("softflowd", "nfcapd", "nfdump", "iperf3"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed", allow_module_level=True)

PAYLOAD = 8 * 1024 * 1024


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """End a process this test started, by its pid."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def wait_udp_bound(port: int, timeout: float = 10) -> None:
    hexport = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hexport in Path("/proc/net/udp").read_text():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing bound UDP port {port}")




def iperf3(client: PodSandbox, server: PodSandbox, *, reverse: bool = False) -> None:
    srv = server.run(["iperf3", "-s", "-1"])
    try:
        wait_listening(server)
        argv = ["iperf3", "-c", str(server.ip), "-n", str(PAYLOAD), "-w", "64K", "-b", "400M"]
        res = client.exec([*argv, "-R"] if reverse else argv, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        srv.wait(timeout=20)
    finally:
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()


def nfdump_flows(flowdir: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["nfdump", "-R", str(flowdir), "-o", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # with -q, nfdump prints one JSON object per flow, without the enclosing array
    decoder = json.JSONDecoder()
    flows: list[dict[str, object]] = []
    pos = 0
    text = out.strip().lstrip("[")
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,]":
            pos += 1
        if pos >= len(text):
            return flows
        obj, pos = decoder.raw_decode(text, pos)
        flows.append(obj)


def cgroup_ids_under(path: Path) -> set[int]:
    ids = {path.stat().st_ino}
    for root, dirs, _ in os.walk(path):
        ids.update(Path(root, d).stat().st_ino for d in dirs)
    return ids


@pytest.mark.parametrize("version", [9, 10], ids=["netflow-v9", "ipfix"])
def test_softflowd_export_per_pod_matches_nfdump_and_ebpf(version: int, tmp_path: Path) -> None:
    flowdir = tmp_path / "nfcapd"
    flowdir.mkdir()
    nf_port = free_udp_port()
    pods = PodIPMap()
    topology = Topology(NodePlacement("node-a", Location("zone-a", "region-1")))
    config = CollectorConfig(
        host="127.0.0.1", port=0, allowed_exporters=frozenset({"127.0.0.1"}), flush_interval_s=0.1
    )
    ebpf_before: dict[str, tuple[int, int]] = {}
    ebpf_after: dict[str, tuple[int, int]] = {}
    with (
        SandboxHost(driver="systemd", subnet="10.253.9.0/24") as host,
        FlowCollector(pods, topology, config) as collector,
        started(
            ["nfcapd", "-w", str(flowdir), "-p", str(nf_port), "-b", "127.0.0.1", "-t", "3600"]
        ) as nfcapd,
    ):
        since = time.time()
        a, b, c = (host.pod(network=True, name=n) for n in ("client", "server", "other"))
        for p in (a, b, c):
            assert p.ip is not None
            pods.assign(p.ip, p.uid, since=since)
            p.container_dirs()
        wait_udp_bound(nf_port)
        ebpf = None
        try:
            from kopeck_probe.ebpf import EbpfReader

            ebpf = EbpfReader(host.pods_parent_v2())
        except (ImportError, OSError) as exc:
            print(f"eBPF comparison skipped: {exc}")
        assert host.bridge is not None
        port = collector.address[1]
        softflowd = subprocess.Popen(
            [
                "softflowd", "-d", "-i", host.bridge, "-v", str(version),
                "-n", f"127.0.0.1:{port},127.0.0.1:{nf_port}",
                "-t", "maxlife=2", "-t", "expint=1",
                "-p", str(tmp_path / "softflowd.pid"), "-c", str(tmp_path / "softflowd.ctl"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(1.0)  # capture open
            assert softflowd.poll() is None, softflowd.stdout.read() if softflowd.stdout else ""
            keys = {p.uid: cgroup_ids_under(p.cgroup_dirs()["unified"]) for p in (a, b, c)}

            def ebpf_bytes() -> dict[str, tuple[int, int]]:
                assert ebpf is not None
                counts = ebpf.read()
                return {
                    uid: (
                        sum(counts[k].tx_bytes for k in ks if k in counts),
                        sum(counts[k].rx_bytes for k in ks if k in counts),
                    )
                    for uid, ks in keys.items()
                }

            if ebpf is not None:
                ebpf_before = ebpf_bytes()
            iperf3(a, b)
            iperf3(c, b, reverse=True)
            assert c.ip is not None
            c.exec(["ping", "-c", "3", "-i", "0.2", a.ip or ""], timeout=10)
            if ebpf is not None:
                ebpf_after = ebpf_bytes()
            time.sleep(3)  # maxlife/expint expire every flow
        finally:
            stop(softflowd)  # SIGTERM: softflowd exports what it still holds, then exits
            if ebpf is not None:
                ebpf.close()
        time.sleep(1.0)
        stop(nfcapd)  # closes and renames its file
        totals = collector.totals()
        stats = collector.stats()
        uids = {p.uid: p.ip for p in (a, b, c)}

    flows = nfdump_flows(flowdir)
    info = subprocess.run(["nfdump", "-I", "-R", str(flowdir)], capture_output=True, text=True)
    print("nfdump -I:", " ".join(info.stdout.split()))
    assert flows, "nfcapd stored no flows"
    ip_of = {ip: uid for uid, ip in uids.items()}
    ref: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for f in flows:
        src = str(f.get("src4_addr") or f.get("src6_addr"))
        dst = str(f.get("dst4_addr") or f.get("dst6_addr"))
        nbytes, npkts = int(str(f["in_bytes"])), int(str(f["in_packets"]))
        if src in ip_of:
            ref[ip_of[src], "tx"][0] += nbytes
            ref[ip_of[src], "tx"][1] += npkts
        if dst in ip_of:
            ref[ip_of[dst], "rx"][0] += nbytes
            ref[ip_of[dst], "rx"][1] += npkts

    ours: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for uid, t in totals.items():
        for (cls, direction), traffic in t.by_class.items():
            assert cls == "intraZone", (uid, cls)  # all three pods on this node
            ours[uid, direction][0] += traffic.bytes
            ours[uid, direction][1] += traffic.packets
    print(f"v{version}: nfdump {len(flows)} flows, kopeck {stats.records} records")
    print(f"stats: drops={stats.drops} streams={stats.streams}")
    for key in sorted(ref):
        print(key, "nfdump", ref[key], "kopeck", ours.get(key))
    assert dict(ours) == dict(ref)
    # real traffic went through (softflowd's capture may miss a few packets: see below)
    assert ref[b.uid, "rx"][0] > 0.9 * PAYLOAD and ref[b.uid, "tx"][0] > 0.9 * PAYLOAD
    assert stats.records == len(flows)
    assert stats.drops == {}
    assert stats.not_allowed == 0

    if version == 9:  # v9 counts export packets: none lost on loopback
        assert [(st.sequence_gaps, st.missing) for st in stats.streams] == [(0, 0)]
    # softflowd's IPFIX sequence numbers include the current message's flow records (RFC
    # 7011 counts those *before* it); nfdump reports "Sequence failures" for them too.

    if ebpf_after:
        for uid in uids:
            for i, way in enumerate(("tx", "rx")):
                counted = ebpf_after[uid][i] - ebpf_before[uid][i]
                print(f"{uid[:8]} {way}: flows {ours[uid, way][0]} eBPF {counted}")
        # a -> b, client sending: within 2%. (The reversed transfer, server sending, was
        # seen ~2% short by softflowd's capture on the bridge in every run: reported.)
        for uid, i, direction in ((a.uid, 0, "tx"), (b.uid, 1, "rx")):
            counted = ebpf_after[uid][i] - ebpf_before[uid][i]
            assert abs(ours[uid, direction][0] - counted) <= 0.02 * counted, (uid, direction)
