"""Builders and helpers for tests and benchmarks that talk to a real operator process.

Reports and manifests in wire form, a running operator as a context manager, probe tokens,
kubectl bound to a kubeconfig. Kept under tests/: the product package carries none of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kopeck.api.report import PodUsage
from kopeck.demo.operator_process import OperatorProcess
from kopeck_probe.pods import pod_meta


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
    uid: str,
    namespace: str,
    name: str,
    *,
    cpu_core_seconds: float,
    working_set: int,
    seconds: float = 5.0,
    internet_bytes: int = 0,
    container: str = "app",
    pod: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One PodUsage entry of a report; with the Pod object, also what the probe takes from
    it (controller, pod-template-hash, requests), through the probe's own pod_meta."""
    out: dict[str, Any] = {
        "uid": uid,
        "namespace": namespace,
        "name": name,
        "cpuCoreSeconds": cpu_core_seconds,
        "memoryWorkingSetBytes": working_set,
        "memoryByteSeconds": working_set * seconds,
        "seconds": seconds,
        "containers": [
            {
                "name": container,
                "cpuCoreSeconds": cpu_core_seconds,
                "memoryWorkingSetBytes": working_set,
            }
        ],
    }
    if internet_bytes:
        out["network"] = [{"trafficClass": "internet", "direction": "tx", "bytes": internet_bytes}]
    if pod is not None:
        labels = pod_meta(pod).labels()
        out.update(PodUsage(uid=uid, cpu_core_seconds=0, memory_working_set_bytes=0,
                            owner=labels.owner, template_hash=labels.template_hash,
                            requests=labels.requests).model_dump(
            mode="json", by_alias=True, exclude_none=True,
            include={"owner", "template_hash", "requests"}))
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
        "scope": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        "pricing": {
            "rateCard": {
                "cpuCoreHour": float(cpu_core_hour),
                "memoryGiBHour": float(memory_gib_hour),
            }
        },
    }
    if amount is not None:
        spec["budget"] = {"amount": float(amount), "period": period, "enforcement": enforcement}
    spec.update(extra_spec or {})
    return json.dumps(
        {
            "apiVersion": "cost.kopeck.io/v1alpha1",
            "kind": "CostPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def deployment_manifest(
    name: str,
    namespace: str,
    *,
    replicas: int = 1,
    cpu: str = "1",
    memory: str = "1Gi",
    labels: dict[str, str] | None = None,
) -> str:
    """A Deployment with one container and the given requests, as JSON text."""
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": {"cpu": cpu, "memory": memory}},
                            }
                        ]
                    },
                },
            },
        }
    )


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@contextlib.contextmanager
def running_operator(
    kubectl: Kubectl,
    kubeconfig: Path,
    workdir: Path,
    extra: list[str] | None = None,
    namespace: str | None = None,
    start: bool = True,
) -> Iterator[OperatorProcess]:
    """An operator with its own namespace and probe ServiceAccount; cleaned up afterwards."""
    suffix = uuid.uuid4().hex[:6]
    ns = namespace or f"kopeck-op-{suffix}"
    if kubectl("get", "namespace", ns, check=False).returncode != 0:
        kubectl("create", "namespace", ns)
    kubectl("create", "serviceaccount", "probe", "-n", ns, check=False)
    op = OperatorProcess(
        kubeconfig=kubeconfig,
        workdir=workdir,
        namespace=ns,
        probe_accounts=f"{ns}:probe",
        webhook_config=f"kopeck-{suffix}.cost.kopeck.io",
        extra=list(extra or []),
    )
    try:
        if start:
            op.start()
        yield op
    finally:
        op.stop()
        kubectl(
            "delete",
            "validatingwebhookconfiguration",
            op.webhook_config,
            "--ignore-not-found",
            check=False,
        )
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def probe_token(kubectl: Kubectl, op: OperatorProcess, account: str = "probe") -> str:
    """A fresh token of the operator's probe ServiceAccount (TokenRequest)."""
    out: str = kubectl("create", "token", account, "-n", op.namespace).stdout.strip()
    return out


def kubectl_for(kubeconfig: Path) -> Kubectl:
    """A kubectl(*args, input=, check=) for one kubeconfig (benchmarks, scripts)."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))

    def kubectl(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=120
        )
        if check and proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    return kubectl


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
