"""Run `kopeck operator` as a real process for tests and benchmarks, and talk to it.

Tests start the operator exactly as a user would (a subprocess with flags), so they
exercise TLS, TokenReview, kopf peering and process death for real. Each instance gets
free ports, its own certificate folder and its own webhook configuration name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kopeck.localcluster.cluster import free_port


@dataclass
class OperatorProcess:
    """One `kopeck operator` subprocess bound to 127.0.0.1."""

    kubeconfig: Path
    workdir: Path
    namespace: str
    probe_accounts: str
    webhook_config: str
    extra: list[str] = field(default_factory=list)
    ingest_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def cert_dir(self) -> Path:
        """Where the operator keeps (or generated) its serving certificate."""
        return self.workdir / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA the probe must trust."""
        return self.cert_dir / "ca.crt"

    @property
    def ingest_url(self) -> str:
        """The report endpoint."""
        return f"https://127.0.0.1:{self.ingest_port}/v1/reports"

    def argv(self) -> list[str]:
        """The command line (what `make demo` runs, with these ports)."""
        return [
            sys.executable, "-m", "kopeck.operator.cmd",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--bind", "127.0.0.1",
            "--ingest-port", str(self.ingest_port),
            "--webhook-port", str(self.webhook_port),
            "--health-port", str(self.health_port),
            "--cert-dir", str(self.cert_dir),
            "--probe-service-accounts", self.probe_accounts,
            "--webhook-config", self.webhook_config,
            # probe_token's plain tokens; tests of the node binding pass the product defaults
            "--probe-audience", "", "--no-require-node-binding",
            *self.extra,
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until /healthz answers and the ingest port accepts TLS."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"operator-{self.health_port}.log"
        log = self.log_path.open("ab")
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"  # a killed operator leaves its whole log
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}: {self.log_tail()}")
            h = self.health()
            if h is not None and self.ca_file.exists() and (h.get("ready") or not h.get("active")):
                return  # caches primed (or a standby replica, which primes when it leads)
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy in {timeout}s: {self.log_tail()}")

    def health(self) -> dict[str, Any] | None:
        """/healthz as a dict, or None while it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        """The /metrics text."""
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text: str = r.read().decode()
            return text

    def wait_active(self, active: bool = True, timeout: float = 30.0) -> float:
        """Wait until /healthz says active (or standby); returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            h = self.health()
            if h is not None and bool(h.get("active")) == active and (
                h.get("ready") or not active
            ):
                return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError(f"operator not {'active' if active else 'standby'} in {timeout}s")

    def post(self, body: bytes | dict[str, Any], token: str | None,
             timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """POST a report; (HTTP status, JSON answer)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(self.ingest_url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"{}")
            except ValueError:
                return exc.code, {"raw": raw.decode(errors="replace")}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the process (SIGKILL after the timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator's log, for failure messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def report(
    *,
    node: str,
    boot_id: str,
    seq: int,
    end: dt.datetime,
    seconds: float = 5.0,
    pods: list[dict[str, Any]] | None = None,
    cpu_cores: float = 4.0,
    memory_bytes: int = 16 * 2**30,
) -> dict[str, Any]:
    """A ProbeReport as JSON (wire form), as the node-probe would send it."""
    start = end - dt.timedelta(seconds=seconds)
    return {
        "node": node,
        "bootId": boot_id,
        "seq": seq,
        "intervalStart": start.isoformat().replace("+00:00", "Z"),
        "intervalEnd": end.isoformat().replace("+00:00", "Z"),
        "nodeInfo": {"cpuCores": cpu_cores, "memoryBytes": memory_bytes},
        "pods": pods or [],
    }


def pod_usage(
    uid: str, namespace: str, name: str, *, cpu_core_seconds: float, working_set: int,
    seconds: float = 5.0, internet_bytes: int = 0, container: str = "app",
) -> dict[str, Any]:
    """One PodUsage entry of a report."""
    out: dict[str, Any] = {
        "uid": uid, "namespace": namespace, "name": name,
        "cpuCoreSeconds": cpu_core_seconds, "memoryWorkingSetBytes": working_set,
        "memoryByteSeconds": working_set * seconds, "seconds": seconds,
        "containers": [{"name": container, "cpuCoreSeconds": cpu_core_seconds,
                        "memoryWorkingSetBytes": working_set}],
    }
    if internet_bytes:
        out["network"] = [{"trafficClass": "internet", "direction": "tx",
                           "bytes": internet_bytes}]
    return out


def policy_manifest(
    name: str,
    namespace: str,
    *,
    amount: str | None = "100",
    enforcement: str = "Deny",
    period: str = "Monthly",
    cpu_core_hour: str = "0.036",
    memory_gib_hour: str = "0.0045",
    extra_spec: dict[str, Any] | None = None,
) -> str:
    """A CostPolicy selecting exactly one namespace, as JSON text for kubectl apply."""
    spec: dict[str, Any] = {
        "scope": {"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        "pricing": {"rateCard": {"cpuCoreHour": float(cpu_core_hour),
                                 "memoryGiBHour": float(memory_gib_hour)}},
    }
    if amount is not None:
        spec["budget"] = {"amount": float(amount), "period": period, "enforcement": enforcement}
    spec.update(extra_spec or {})
    return json.dumps({"apiVersion": "cost.kopeck.io/v1alpha1", "kind": "CostPolicy",
                       "metadata": {"name": name}, "spec": spec})


def deployment_manifest(
    name: str, namespace: str, *, replicas: int = 1, cpu: str = "1", memory: str = "1Gi",
    labels: dict[str, str] | None = None,
) -> str:
    """A Deployment with one container and the given requests, as JSON text."""
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}},
                }]},
            },
        },
    })


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@contextlib.contextmanager
def running_operator(
    kubectl: Kubectl, kubeconfig: Path, workdir: Path, extra: list[str] | None = None,
    namespace: str | None = None, start: bool = True,
) -> Iterator[OperatorProcess]:
    """An operator with its own namespace and probe ServiceAccount; cleaned up afterwards."""
    suffix = uuid.uuid4().hex[:6]
    ns = namespace or f"kopeck-op-{suffix}"
    if kubectl("get", "namespace", ns, check=False).returncode != 0:
        kubectl("create", "namespace", ns)
    kubectl("create", "serviceaccount", "probe", "-n", ns, check=False)
    op = OperatorProcess(
        kubeconfig=kubeconfig, workdir=workdir, namespace=ns, probe_accounts=f"{ns}:probe",
        webhook_config=f"kopeck-{suffix}.cost.kopeck.io", extra=list(extra or []),
    )
    try:
        if start:
            op.start()
        yield op
    finally:
        op.stop()
        kubectl("delete", "validatingwebhookconfiguration", op.webhook_config,
                "--ignore-not-found", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def probe_token(kubectl: Kubectl, op: OperatorProcess, account: str = "probe") -> str:
    """A fresh token of the operator's probe ServiceAccount (TokenRequest)."""
    out: str = kubectl("create", "token", account, "-n", op.namespace).stdout.strip()
    return out


def kubectl_for(kubeconfig: Path) -> Kubectl:
    """A kubectl(*args, input=, check=) for one kubeconfig (benchmarks, scripts)."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))

    def kubectl(*args: str, input: str | None = None, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                              env=env, timeout=120)
        if check and proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    return kubectl


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
