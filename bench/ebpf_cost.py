"""What kopeck's eBPF counters cost: kernel time per packet, and the probe's time per read.

Per packet: the kernel's own run_time_ns / run_cnt of both programs (bpf stats enabled
for the measurement only), under two loads between two pod sandboxes: TCP bulk (GSO skbs,
one program run per up-to-64 KiB skb) and small UDP datagrams (one run per packet, the
worst case per byte). Kepler publishes 0.1-3 us per event for its eBPF probes.

Per read: wall time of EbpfReader.read() with 1,000 live container cgroups (created here),
two keys each, as a probe on a full node would see every interval.

Writes bench/results/ebpf_cost.json. Needs root. Usage: .venv/bin/python bench/ebpf_cost.py
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kopeck.localcluster.sandbox import PodSandbox, SandboxHost
from kopeck_probe.ebpf import EbpfReader, sample_cost
from kopeck_probe.ebpf import syscall as sc
from kopeck_probe.ebpf.program import EGRESS, INGRESS, VALUE, pack_key

RESULTS = Path(__file__).resolve().parent / "results" / "ebpf_cost.json"
CGROUPS = 1000
WINDOW_S = 3.0


def _listening(pod: PodSandbox) -> None:
    assert pod.netns is not None
    for _ in range(200):
        out = subprocess.run(
            ["ip", "netns", "exec", pod.netns, "ss", "-Hltun", "sport = :5201"],
            capture_output=True,
            text=True,
        ).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise TimeoutError("iperf3 server did not start")


def per_packet(host: SandboxHost, client_args: list[str]) -> dict[str, Any]:
    """ns per program run while iperf3 runs client_args between two pods."""
    a = host.pod(network=True)
    b = host.pod(network=True)
    try:
        with EbpfReader(host.pods_parent_v2()) as reader:
            srv = b.run(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
            try:
                _listening(b)
                cli = a.run(
                    ["iperf3", "-c", str(b.ip), "-t", str(WINDOW_S + 2), *client_args],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(0.5)
                cost = sample_cost(reader.run_stats, WINDOW_S)
                cli.wait(timeout=60)
            finally:
                if srv.poll() is None:
                    os.killpg(srv.pid, signal.SIGKILL)
                    srv.wait()
    finally:
        a.close()
        b.close()
    return {
        "iperf3": client_args,
        "program_runs": cost.run_cnt,
        "run_time_ns": cost.run_time_ns,
        "ns_per_packet": round(cost.ns_per_packet or 0.0, 1),
        "runs_per_second": round(cost.run_cnt / WINDOW_S),
    }


def read_cost(n: int) -> dict[str, Any]:
    """Median wall time of read() with n live container cgroups, two keys each."""
    root = (
        Path("/sys/fs/cgroup/unified") / f"kopeck-bench-ebpf-{os.getpid()}-{secrets.token_hex(3)}"
    )
    made: list[Path] = []
    root.mkdir()
    made.append(root)
    try:
        ids: list[int] = []
        for i in range(n):
            pod = root / f"pod{i}"
            ctr = pod / "ctr"
            pod.mkdir()
            made.append(pod)
            ctr.mkdir()
            made.append(ctr)
            ids.append(ctr.stat().st_ino)
        with EbpfReader(root, max_entries=2 * n + 16) as reader:
            value = VALUE.pack(1500, 1) * reader.ncpus
            for cid in ids:
                for direction in (INGRESS, EGRESS):
                    sc.map_update(reader.counts_map_fd, pack_key(cid, direction), value)
            reader.read()  # the first read walks the tree once
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                out = reader.read()
                times.append(time.perf_counter() - t0)
            assert len(out) == n
    finally:
        for d in reversed(made):
            d.rmdir()
    return {
        "cgroups": n,
        "map_keys": 2 * n,
        "read_ms_median": round(statistics.median(times) * 1000, 2),
        "read_ms_max": round(max(times) * 1000, 2),
    }


def main() -> int:
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with SandboxHost(driver="systemd") as host:
        tcp = per_packet(host, ["-w", "128K", "-b", "2G"])
        udp = per_packet(host, ["-u", "-b", "20M", "-l", "64"])
    result = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "program": "kopeck cgroup_skb counter (per-CPU hash, atomic adds), ingress+egress",
        "tcp_bulk": tcp,
        "udp_64B": udp,
        "read": read_cost(CGROUPS),
        "reference": "Kepler: 0.1-3 us per eBPF event",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
