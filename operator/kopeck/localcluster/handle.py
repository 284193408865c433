"""A handle on a running cluster: its kubeconfig, kubectl and a Python client.

Tests, ``kopeck demo`` and other components talk to the local control plane and to an
existing cluster (kind, via KOPECK_TEST_KUBECONFIG) through this one interface.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; the message carries its stderr, which names the object and field."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class ClusterHandle:
    """How to reach one cluster; nothing here starts or stops it."""

    kubeconfig: Path
    server: str
    ca_file: Path | None
    kubectl_path: Path
    kube_cache_dir: Path | None = None
    """kubectl's discovery cache; per cluster, since a port reused by a new cluster would
    otherwise be answered from the old cluster's cached discovery."""

    def env(self) -> dict[str, str]:
        """The process environment with KUBECONFIG pointing at this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.kube_cache_dir is not None:
            env["KUBECACHEDIR"] = str(self.kube_cache_dir)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster, in text mode, capturing stdout and stderr."""
        argv = [str(self.kubectl_path), *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def apply(self, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """kubectl apply -f - with ``manifest`` (YAML text); raises with stderr on failure."""
        return self.kubectl("apply", "-f", "-", *extra, input=manifest)

    def wait_established(self, crd_names: Sequence[str], timeout: float = 60.0) -> None:
        """Wait until the apiserver serves these CRDs.

        Polled rather than `kubectl wait`, which fails outright when it looks before the
        apiserver has written the CRD's first condition (seen right after an apply)."""
        query = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        while True:
            pending = [n for n in crd_names if self.kubectl(
                "get", "crd", n, "-o", f"jsonpath={query}", check=False).stdout.strip() != "True"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not Established within {timeout:.0f}s: {pending}")
            time.sleep(0.2)

    def api_client(self) -> ApiClient:
        """A kubernetes.client.ApiClient for this cluster (a new one per call)."""
        from kubernetes import config

        client: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return client

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: Path, kubectl_path: Path, ca_dir: Path | None = None
    ) -> ClusterHandle:
        """A handle on the current context of an existing kubeconfig.

        A CA given inline (certificate-authority-data) is written to ``ca_dir`` so that
        clients needing a file get one; without ``ca_dir`` ca_file stays None.
        """
        doc: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
        current = doc.get("current-context")
        contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
        clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
        if not current or current not in contexts:
            raise ValueError(f"{kubeconfig}: no current-context; set one with kubectl config")
        cluster = clusters[contexts[current]["cluster"]]
        ca_file: Path | None = None
        if cluster.get("certificate-authority"):
            ca_file = (kubeconfig.parent / cluster["certificate-authority"]).resolve()
        elif cluster.get("certificate-authority-data") and ca_dir is not None:
            ca_dir.mkdir(parents=True, exist_ok=True)
            ca_file = ca_dir / "ca.crt"
            ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return cls(
            kubeconfig=kubeconfig.resolve(),
            server=str(cluster["server"]),
            ca_file=ca_file,
            kubectl_path=kubectl_path,
        )
