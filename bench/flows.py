"""Flow decoding: kopeck vs nfcapd (nfdump) vs the PyPI ``netflow`` package, in one run.

The same pre-built IPFIX datagrams (a typical 13-field template, 45 octets per record,
25 records per datagram, template refreshed every 1,000 datagrams, 200 pod addresses
talking to pods elsewhere and to the internet) are replayed over loopback UDP to each
collector in turn.

Fairness on a 2-core machine: the replaying sender is pinned to CPU 0 and each collector
to CPU 1, all with a 4 MiB receive buffer. The sender is paced (bursts of 16 datagrams on
a fixed schedule) at the offered rate, so loss means "this collector cannot keep up at
that rate", not "the sender starved it". Figures per collector:

- ``records_per_s_one_core``: records it decoded / CPU seconds it used (its own rusage
  while receiving), i.e. throughput per core independent of the offered rate;
- ``loss``: 1 - records decoded / records sent at the offered rate;
- kopeck's records are counted after the whole path (decode, pod lookup, traffic class,
  per-pod sums); nfcapd's by ``nfdump -I`` on the file it wrote; netflow's by its parser.

``kopeck_decode_only`` is the decoder alone on the same datagrams in memory (no socket),
with and without the per-pod tally.

    .venv/bin/python bench/flows.py [--records 2000000] [--rate 1000000] [--out bench/results/flows.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "node-probe")]

from kopeck_probe.flows import craft  # noqa: E402
from kopeck_probe.flows.classify import Location, NodePlacement, Topology, parse_cidrs  # noqa: E402
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector  # noqa: E402
from kopeck_probe.flows.decoder import Decoder  # noqa: E402
from kopeck_probe.flows.podmap import PodIPMap  # noqa: E402
from kopeck_probe.flows.tally import Tally  # noqa: E402

RECORDS_PER_DATAGRAM = 25
RCVBUF = 4 << 20
SENDER_CPU = 0
COLLECTOR_CPU = 1
IDLE_S = 1.0
POD_NET = ipaddress.ip_network("10.1.1.0/24")
T0_MS = 1_700_000_000_000


def pod_ips(n: int = 200) -> list[str]:
    return [str(POD_NET[i + 2]) for i in range(n)]


def topology() -> Topology:
    a = ipaddress.ip_address
    return Topology(
        local=NodePlacement("n1", Location("z1", "r1"), (a("192.168.1.10"),), (POD_NET,)),
        nodes=(
            NodePlacement("n2", Location("z2", "r1"), (), parse_cidrs(["10.1.2.0/24"])),
            NodePlacement("n3", Location("z9", "r2"), (), parse_cidrs(["10.1.3.0/24"])),
        ),
    )


def pods_map() -> PodIPMap:
    pods = PodIPMap()
    for i, ip in enumerate(pod_ips()):
        pods.assign(ip, f"pod-{i}", since=0)
    return pods


def make_datagrams(records: int, seed: int = 7) -> list[bytes]:
    """IPFIX messages as a busy node's exporter would send them."""
    rng = random.Random(seed)
    local = [int(ipaddress.ip_address(ip)) for ip in pod_ips()]
    remote = [int(ipaddress.ip_address(f"10.1.{rng.choice((1, 2, 3))}.{rng.randrange(2, 250)}"))
              for _ in range(300)]  # fmt: skip
    remote += [rng.randrange(0x0B000000, 0xDF000000) for _ in range(700)]  # internet
    template = craft.set_(2, craft.template_record(256, craft.TYPICAL_FIELDS, ipfix=True))
    out: list[bytes] = []
    seq = 0
    for k in range((records + RECORDS_PER_DATAGRAM - 1) // RECORDS_PER_DATAGRAM):
        recs = []
        for _ in range(RECORDS_PER_DATAGRAM):
            src, dst = rng.choice(local), rng.choice(remote)
            if rng.random() < 0.5:
                src, dst = dst, src
            packets = rng.randrange(1, 2000)
            start = T0_MS + k * 10
            recs.append(
                craft.typical_record(
                    src, dst, rng.randrange(1024, 65535), 443, packets * rng.randrange(40, 1500),
                    packets, start, start + rng.randrange(0, 60_000),
                )
            )  # fmt: skip
        sets = [template] if k % 1000 == 0 else []
        sets.append(craft.set_(256, b"".join(recs)))
        out.append(craft.ipfix(sets, seq=seq, domain=1, export_s=T0_MS // 1000 + k // 100))
        seq += RECORDS_PER_DATAGRAM
    return out


# ---------------------------------------------------------------------- collectors (children)
def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def serve_kopeck() -> dict[str, Any]:
    cfg = CollectorConfig(
        host="127.0.0.1", port=0, allowed_exporters=frozenset({"127.0.0.1"}),
        receive_buffer_bytes=RCVBUF,
    )  # fmt: skip
    col = FlowCollector(pods_map(), topology(), cfg)
    col.start()
    print(f"READY {col.address[1]}", flush=True)
    cpu0 = cpu_s()
    seen, last_change = 0, time.monotonic()
    while True:
        time.sleep(0.1)
        n = col.stats().datagrams
        if n != seen:
            seen, last_change = n, time.monotonic()
        elif seen and time.monotonic() - last_change > IDLE_S:
            break
    col.stop()  # flushes: every record decoded, looked up, classified and summed
    st = col.stats()
    attributed = sum(t.bytes for t in col.tally.totals.values())
    return {
        "records": st.records, "datagrams": st.datagrams, "cpu_s": cpu_s() - cpu0,
        "drops": st.drops, "attributed_bytes": attributed,
    }  # fmt: skip


def serve_netflow() -> dict[str, Any]:
    from netflow.utils import parse_packet

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(IDLE_S)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    templates: dict[str, Any] = {"netflow": {}, "ipfix": {}}
    records = datagrams = errors = 0
    cpu0 = None
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            if datagrams:
                break
            continue
        if cpu0 is None:
            cpu0 = cpu_s()
        datagrams += 1
        try:
            records += len(parse_packet(data, templates).flows)
        except Exception:
            errors += 1
    return {
        "records": records, "datagrams": datagrams, "errors": errors,
        "cpu_s": cpu_s() - (cpu0 or 0.0),
    }  # fmt: skip


# ---------------------------------------------------------------------- parent
def pin(cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})


def replay(datagrams: list[bytes], port: int, rate_dg_s: float) -> float:
    """Send every datagram at the paced rate; returns the wall time it took."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    burst = 16
    interval = burst / rate_dg_s
    t0 = time.perf_counter()
    next_t = t0
    send = sock.send
    for i in range(0, len(datagrams), burst):
        for d in datagrams[i : i + burst]:
            with contextlib.suppress(OSError):  # ENOBUFS: counted as loss by the receiver
                send(d)
        next_t += interval
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    wall = time.perf_counter() - t0
    sock.close()
    return wall


def run_python_child(mode: str, datagrams: list[bytes], rate: float) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: pin(COLLECTOR_CPU),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "READY", line
        wall = replay(datagrams, int(line[1]), rate)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["send_wall_s"] = wall
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_nfcapd(datagrams: list[bytes], rate: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kopeck-bench-nfcapd-"))
    port = free_port()
    proc = subprocess.Popen(
        ["nfcapd", "-w", str(workdir), "-p", str(port), "-b", "127.0.0.1", "-t", "3600",
         "-B", str(RCVBUF)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: pin(COLLECTOR_CPU),
    )  # fmt: skip
    try:
        hexport = f":{port:04X} "
        deadline = time.monotonic() + 10
        while hexport not in Path("/proc/net/udp").read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("nfcapd did not start")
            time.sleep(0.05)
        cpu0 = proc_cpu_s(proc.pid)
        wall = replay(datagrams, port, rate)
        last, stable = proc_cpu_s(proc.pid), time.monotonic()
        while time.monotonic() - stable < IDLE_S:  # wait until it stops working
            time.sleep(0.1)
            now = proc_cpu_s(proc.pid)
            if now != last:
                last, stable = now, time.monotonic()
        cpu = last - cpu0
        proc.send_signal(signal.SIGTERM)  # writes and closes its file
        proc.wait(timeout=60)
        info = subprocess.run(
            ["nfdump", "-I", "-R", str(workdir)], capture_output=True, text=True, check=True
        ).stdout
        flows = int(next(ln.split(":")[1] for ln in info.splitlines() if ln.startswith("Flows:")))
        return {"records": flows, "cpu_s": cpu, "send_wall_s": wall}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def decode_only(datagrams: list[bytes], repeat: int = 3) -> dict[str, float]:
    """kopeck's decoder (and tally) in memory, best of ``repeat``, in process CPU time."""
    best_decode = best_tally = 0.0
    for _ in range(repeat):
        d = Decoder()
        t0 = time.process_time()
        for dg in datagrams:
            d.feed(dg, "127.0.0.1")
        batch = d.flush()
        t1 = time.process_time()
        Tally(pods_map(), topology()).add(batch)
        t2 = time.process_time()
        best_decode = max(best_decode, len(batch) / (t1 - t0))
        best_tally = max(best_tally, len(batch) / (t2 - t0))
    return {"records_per_s": round(best_decode), "with_pod_tally_records_per_s": round(best_tally)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["kopeck", "netflow"], help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument(
        "--rates", default="250000,1000000", help="offered records/s, comma-separated; the "
        "last one gives the headline loss"
    )  # fmt: skip
    parser.add_argument("--collectors", default="kopeck,nfcapd,netflow")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flows.json")
    args = parser.parse_args()
    if args.serve:
        result = serve_kopeck() if args.serve == "kopeck" else serve_netflow()
        print(json.dumps(result), flush=True)
        return 0

    datagrams = make_datagrams(args.records)
    sent = len(datagrams) * RECORDS_PER_DATAGRAM
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {
        "dataset": {
            "format": "IPFIX", "template_fields": len(craft.TYPICAL_FIELDS),
            "record_octets": 45, "records_per_datagram": RECORDS_PER_DATAGRAM,
            "datagrams": len(datagrams), "records": sent,
            "datagram_octets": len(datagrams[1]),
        },
        "offered_records_per_s": rates,
        "pacing": f"sender pinned to CPU {SENDER_CPU}, bursts of 16 datagrams on a fixed "
                  f"schedule at each offered rate; collectors pinned to CPU {COLLECTOR_CPU}; "
                  "SO_RCVBUF 4 MiB each",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "loadavg_at_start": os.getloadavg()[0]},
    }  # fmt: skip
    pin(SENDER_CPU)
    for name in args.collectors.split(","):
        if name == "nfcapd" and shutil.which("nfcapd") is None:
            continue
        runs = []
        for rate in rates:
            rate_dg = rate / RECORDS_PER_DATAGRAM
            if name == "nfcapd":
                r = run_nfcapd(datagrams, rate_dg)
            else:
                r = run_python_child(name, datagrams, rate_dg)
            r["offered_records_per_s"] = rate
            r["achieved_offer_records_per_s"] = round(sent / r["send_wall_s"])
            r["records_per_s_one_core"] = round(r["records"] / r["cpu_s"]) if r["cpu_s"] else None
            r["loss"] = round(1 - r["records"] / sent, 6)
            runs.append(r)
            print(name, json.dumps(r), flush=True)
        cpu = sum(r["cpu_s"] for r in runs)
        results[name] = {
            "records_per_s_one_core": round(sum(r["records"] for r in runs) / cpu) if cpu else None,
            "loss": runs[-1]["loss"],
            "loss_at_offered_records_per_s": rates[-1],
            "runs": runs,
        }
    pin(COLLECTOR_CPU)
    results["kopeck_decode_only"] = decode_only(datagrams)
    print("kopeck_decode_only", json.dumps(results["kopeck_decode_only"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
