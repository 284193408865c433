"""A real Prometheus (the Debian package) on loopback, and promtool, for tests.

`running_prometheus` writes a temporary config (static targets, honor_labels, extra target
labels, rule files), starts /usr/bin/prometheus on a free loopback port, waits for
/-/ready, and ends that process by its pid and removes its directory afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kopeck.localcluster.cluster import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@dataclass
class Prometheus:
    """A running Prometheus: its URL, process and directory."""

    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def log_tail(self) -> str:
        """The end of Prometheus's log, for failure messages."""
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def scrape_config(
    targets: dict[str, str], *, labels: dict[str, str] | None = None,
    honor_labels: bool = True, interval: str = "1s", rule_files: Sequence[Path] = (),
) -> dict[str, Any]:
    """A prometheus.yml: one job per target, every `interval`, rules evaluated as often."""
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "honor_labels": honor_labels,
             "static_configs": [{"targets": [target], "labels": dict(labels or {})}]}
            for job, target in targets.items()
        ],
    }  # fmt: skip


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], timeout: float = 30.0) -> Iterator[Prometheus]:
    """Prometheus with `config` on a loopback port; stopped by pid and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="kopeck-test-prom-"))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, workdir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready:\n{prom.log_tail()}")
            time.sleep(0.2)
        yield prom
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the completed process (the caller checks returncode and output)."""
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
