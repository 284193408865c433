"""`kopeck probe` as a process, end to end on the real kernel.

The real entry point (`.venv/bin/kopeck probe`) runs against two pod sandboxes
(kopeck.localcluster.sandbox: kubelet-layout cgroups, a netns with a veth on a bridge, a
"pause" process holding the netns) and pushes its reports over HTTPS to a small receiver
started here (self-signed certificate, bearer token; the operator's ingest is tested on
its own in tests/cluster). stress-ng burns CPU in one pod, iperf3 moves a known payload
between them, softflowd exports flows from the bridge to the probe's collector. Then:

- each pod's CPU summed over the received reports is within 2% of the pod cgroup's own
  cpuacct.usage over the probe's life;
- the unclassified bytes (source ebpf, or veth in the fallback run) match iperf3 within
  1% once headers are taken off (L3: IPv4 + TCP with timestamps; veth adds Ethernet);
- the flow-sourced bytes (source flows, class intraZone: both pods on this node) of the
  sending and the receiving pod match the eBPF counts within 2%: both count L3 bytes;
- /metrics shows both pods, their bytes by source, and the eBPF program's cost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from kopeck.api.report import ProbeReport, ReportAck
from kopeck.localcluster.sandbox import PodSandbox, SandboxHost
from tests.support.sandboxes import wait_listening

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

if os.geteuid() != 0:
    pytest.skip("needs root (cgroups, netns, BPF)", allow_module_level=True)
for tool in ("iperf3", "stress-ng", "softflowd"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed", allow_module_level=True)

KOPECK = Path(sys.executable).parent / "kopeck"
PAYLOAD = 40 * 1024 * 1024
L3_HEADER = 20 + 32  # IPv4 + TCP with the timestamp option
L2_HEADER = 14
TOKEN = "e2e-token"


# -- the receiver -------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the probe's --ca-file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kopeck-e2e-ingest")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Receiver:
    """An HTTPS ingest that keeps every report (by key) and acknowledges it."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = self_signed(tmp)
        self.reports: dict[tuple[str, str, int], ProbeReport] = {}
        self.unauthorised = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    receiver.unauthorised += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                report = ProbeReport.model_validate_json(body)
                duplicate = report.key in receiver.reports
                receiver.reports[report.key] = report
                out = ReportAck(accepted=True, duplicate=duplicate).model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/v1/reports"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- helpers ------------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as sample name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """End a process this test started, by its pid."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ProbeProcess:
    """`kopeck probe` started as a process on the sandboxes' prefix."""

    def __init__(
        self, host: SandboxHost, receiver: Receiver, tmp: Path, network: str, *extra: str
    ) -> None:
        token = tmp / "token"
        token.write_text(TOKEN)
        self.metrics_port = free_port()
        self.log = tmp / f"probe-{network}.log"
        argv = [
            str(KOPECK), "probe",
            "--node-name", "e2e-node",
            "--prefix", host.prefix,
            "--no-watch",
            "--report-interval", "1",
            "--ingest-url", receiver.url,
            "--ca-file", str(receiver.cert),
            "--token-file", str(token),
            "--wal", str(tmp / f"wal-{network}.db"),
            "--metrics-port", str(self.metrics_port),
            "--metrics-addr", "127.0.0.1",
            "--network", network,
            "--ebpf-cost-every", "2",
            "--ebpf-cost-window", "1.5",
            *extra,
        ]  # fmt: skip
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_cycles(self, n: int = 2, timeout: float = 30) -> None:
        """Until /metrics answers and the probe has sampled n times (its first look)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError):
                cycles = scrape(self.metrics_port).get("kopeck_probe_cycles_total", [])
                if cycles and cycles[0][1] >= n:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"probe not sampling: {self.log.read_text()}")

    def stop(self) -> int:
        stop(self.proc)
        self._out.close()
        print(self.log.read_text()[-3000:])
        return int(self.proc.returncode)


def kernel_cpu_ns(pod: PodSandbox) -> int:
    dirs = pod.cgroup_dirs()
    if "cpuacct" in dirs:
        return int((dirs["cpuacct"] / "cpuacct.usage").read_text())
    stat = dict(line.split() for line in (dirs["unified"] / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) * 1000




def iperf3(client: PodSandbox, server: PodSandbox) -> tuple[int, int]:
    """client -> server, PAYLOAD bytes paced at 100 Mbit/s; (sent, received) by iperf3."""
    srv = server.run(["iperf3", "-s", "-1", "-J"])
    try:
        wait_listening(server)
        argv = ["iperf3", "-c", str(server.ip), "-n", str(PAYLOAD), "-w", "32K", "-b", "100M"]
        res = client.exec([*argv, "-J"], timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        out, _ = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()
    sent = int(json.loads(res.stdout)["end"]["sum_sent"]["bytes"])
    received = int(json.loads(out)["end"]["sum_received"]["bytes"])
    return sent, received


def net(
    reports: list[ProbeReport], uid: str, source: str, direction: str
) -> tuple[int, int, set[str]]:
    """(bytes, packets, classes) a pod was charged by one source in one direction."""
    b = p = 0
    classes: set[str] = set()
    for r in reports:
        for pod in r.pods:
            if pod.uid != uid:
                continue
            for n in pod.network:
                if n.source == source and n.direction == direction:
                    b, p = b + n.bytes, p + n.packets
                    classes.add(n.traffic_class)
    return b, p, classes


def within(got: float, want: float, rel: float, what: str) -> None:
    err = (got - want) / want
    fmt = ".0f" if want > 1000 else ".4f"
    print(f"{what}: {got:{fmt}} vs {want:{fmt}}: {err:+.4%}")
    assert abs(err) <= rel, f"{what}: {got} vs {want}, error {err:+.3%} > {rel:.1%}"


@pytest.fixture
def two_pods() -> Iterator[tuple[SandboxHost, PodSandbox, PodSandbox]]:
    """Two networked pods, each with a pause process holding its netns (as a runtime's)."""
    with SandboxHost(driver="systemd", subnet="10.252.7.0/24") as host:
        a = host.pod(network=True, name="client")
        b = host.pod(network=True, name="server")
        for p in (a, b):
            p.run(["sleep", "600"], container="pause")
            p.container_dirs("main")
        yield host, a, b


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path)
    try:
        yield r
    finally:
        r.close()


# -- tests --------------------------------------------------------------------------------


def test_probe_process_ebpf_and_flows(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox], receiver: Receiver, tmp_path: Path
) -> None:
    host, a, b = two_pods
    assert host.bridge is not None
    flow_port = free_port(socket.SOCK_DGRAM)
    probe = ProbeProcess(
        host, receiver, tmp_path, "ebpf",
        "--flows-listen", f"127.0.0.1:{flow_port}", "--flows-allow", "127.0.0.1",
        "--zone", "zone-a", "--region", "region-1", "--pod-cidr", str(host.subnet),
    )  # fmt: skip
    softflowd: subprocess.Popen[bytes] | None = None
    try:
        probe.wait_cycles()
        cpu0 = {p.uid: kernel_cpu_ns(p) for p in (a, b)}
        softflowd = subprocess.Popen(
            [
                "softflowd", "-d", "-i", host.bridge, "-v", "10",
                "-n", f"127.0.0.1:{flow_port}", "-t", "maxlife=1", "-t", "expint=1",
                "-p", str(tmp_path / "softflowd.pid"), "-c", str(tmp_path / "softflowd.ctl"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        time.sleep(1.0)  # capture open
        assert softflowd.poll() is None
        stress = b.run(["stress-ng", "--cpu", "1", "--cpu-load", "30", "--timeout", "6s", "-q"])
        sent, received = iperf3(a, b)
        assert stress.wait(timeout=60) == 0
        time.sleep(3)  # maxlife/expint: softflowd exports every flow
        stop(softflowd)  # SIGTERM: it exports what it still holds
        time.sleep(2)  # the collector counts it; reports go out every second
        cpu1 = {p.uid: kernel_cpu_ns(p) for p in (a, b)}
        metrics = scrape(probe.metrics_port)
    finally:
        if softflowd is not None:
            stop(softflowd)
        assert probe.stop() == 0
    reports = sorted(receiver.reports.values(), key=lambda r: r.seq)
    assert receiver.unauthorised == 0
    assert reports and [r.seq for r in reports] == list(
        range(reports[0].seq, reports[0].seq + len(reports))
    )
    print(f"{len(reports)} reports; iperf3 sent {sent} received {received}")

    for p in (a, b):
        charged = sum(u.cpu_core_seconds for r in reports for u in r.pods if u.uid == p.uid)
        within(charged, (cpu1[p.uid] - cpu0[p.uid]) / 1e9, 0.02, f"{p.name} CPU s")

    a_tx, a_txp, cls = net(reports, a.uid, "ebpf", "tx")
    b_rx, b_rxp, _ = net(reports, b.uid, "ebpf", "rx")
    assert cls == {"unclassified"}
    within(a_tx - L3_HEADER * a_txp, sent, 0.01, "client tx payload (eBPF)")
    within(b_rx - L3_HEADER * b_rxp, received, 0.01, "server rx payload (eBPF)")

    f_tx, _, f_cls = net(reports, a.uid, "flows", "tx")
    f_rx, _, _ = net(reports, b.uid, "flows", "rx")
    assert f_cls == {"intraZone"}
    within(f_tx, a_tx, 0.02, "client tx bytes, flows vs eBPF")
    within(f_rx, b_rx, 0.02, "server rx bytes, flows vs eBPF")

    uids = {lbl["uid"] for lbl, _ in metrics["kopeck_pod_cpu_seconds_total"]}
    assert {a.uid, b.uid} <= uids
    sources = {
        lbl["source"]
        for lbl, v in metrics["kopeck_pod_network_bytes_total"]
        if lbl["uid"] == a.uid and v > 0
    }
    assert sources == {"ebpf", "flows"}
    assert metrics["kopeck_probe_network_source"][0][0]["source"] == "ebpf"
    assert metrics["kopeck_probe_ebpf_missed_packets_total"][0][1] == 0
    ns = metrics["kopeck_probe_ebpf_ns_per_packet"][0][1]
    runs = metrics["kopeck_probe_ebpf_sampled_runs_total"][0][1]
    print(f"eBPF program cost {ns:.0f} ns/packet over {runs:.0f} sampled runs")
    assert 0 < ns < 20_000 and runs > 100
    assert metrics["kopeck_probe_flow_records_total"][0][1] > 0
    assert metrics["kopeck_probe_flow_not_allowed_total"][0][1] == 0


def test_probe_process_veth_fallback(
    two_pods: tuple[SandboxHost, PodSandbox, PodSandbox], receiver: Receiver, tmp_path: Path
) -> None:
    host, a, b = two_pods
    probe = ProbeProcess(host, receiver, tmp_path, "veth")
    try:
        probe.wait_cycles()
        sent, received = iperf3(a, b)
        time.sleep(2)
        metrics = scrape(probe.metrics_port)
    finally:
        assert probe.stop() == 0
    reports = list(receiver.reports.values())
    header = L3_HEADER + L2_HEADER
    a_tx, a_txp, cls = net(reports, a.uid, "veth", "tx")
    b_rx, b_rxp, _ = net(reports, b.uid, "veth", "rx")
    assert cls == {"unclassified"}
    assert not any(n.source == "ebpf" for r in reports for p in r.pods for n in p.network)
    print(f"iperf3 sent {sent} received {received}")
    within(a_tx - header * a_txp, sent, 0.01, "client tx payload (veth)")
    within(b_rx - header * b_rxp, received, 0.01, "server rx payload (veth)")
    assert metrics["kopeck_probe_network_source"][0][0]["source"] == "veth"
    assert metrics["kopeck_probe_veth_pods_mapped"][0][1] == 2
