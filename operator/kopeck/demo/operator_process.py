"""Run `kopeck operator` as a real process (the demo, tests, benchmarks) and talk to it.

The demo and the tests start the operator exactly as a user would (a subprocess with flags),
so they exercise TLS, TokenReview, kopf peering and process death for real. Each instance
gets free ports, its own certificate folder and its own webhook configuration name.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
            sys.executable,
            "-m",
            "kopeck.operator.cmd",
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            self.namespace,
            "--bind",
            "127.0.0.1",
            "--ingest-port",
            str(self.ingest_port),
            "--webhook-port",
            str(self.webhook_port),
            "--health-port",
            str(self.health_port),
            "--cert-dir",
            str(self.cert_dir),
            "--probe-service-accounts",
            self.probe_accounts,
            "--webhook-config",
            self.webhook_config,
            # probe_token's plain tokens; tests of the node binding pass the product defaults
            "--probe-audience",
            "",
            "--no-require-node-binding",
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
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}: {self.log_tail()}"
                )
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
            if h is not None and bool(h.get("active")) == active and (h.get("ready") or not active):
                return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError(f"operator not {'active' if active else 'standby'} in {timeout}s")

    def post(
        self, body: bytes | dict[str, Any], token: str | None, timeout: float = 30.0
    ) -> tuple[int, dict[str, Any]]:
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
