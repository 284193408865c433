"""The fault suite's shared pieces: an operator whose apiserver connections run through a
TcpProxy, workloads with known pods, and bench/results/faults.json written every run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.localcluster.handle import ClusterHandle
from tests.support.tcpproxy import TcpProxy

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"


@pytest.fixture(scope="session")
def fault_results() -> Iterator[list[dict[str, Any]]]:
    """Each scenario appends its outcome; written to bench/results/faults.json at the end."""
    scenarios: list[dict[str, Any]] = []
    yield scenarios
    if scenarios:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = {"scenarios": scenarios, "all_passed": all(s["passed"] for s in scenarios)}
        RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


@pytest.fixture
def apiserver_proxy(cluster: ClusterHandle, tmp_path: Path) -> Iterator[tuple[TcpProxy, Path]]:
    """A proxy in front of the apiserver and a kubeconfig that goes through it."""
    doc: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx_name = doc["current-context"]
    ctx = next(c for c in doc["contexts"] if c["name"] == ctx_name)["context"]
    entry = next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    host_port = entry["server"].removeprefix("https://")
    host, _, port = host_port.rpartition(":")
    for c in doc["clusters"]:  # relative paths stay valid from the copy's folder
        ca = c["cluster"].get("certificate-authority")
        if ca:
            c["cluster"]["certificate-authority"] = str((cluster.kubeconfig.parent / ca).resolve())
    for u in doc.get("users", []):
        for k in ("client-certificate", "client-key", "tokenFile"):
            if u["user"].get(k):
                u["user"][k] = str((cluster.kubeconfig.parent / u["user"][k]).resolve())
    with TcpProxy(host, int(port)) as proxy:
        entry["server"] = f"https://127.0.0.1:{proxy.port}"
        path = tmp_path / "proxied.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        yield proxy, path
