"""What `kopeck demo` does on a running stack: policies, workloads, and the moments to show.

Each moment is a function that acts like a user (kubectl) and returns what the user saw,
so the end-to-end test asserts on the same output the demo prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kopeck.demo.stack import Stack

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"

PAYMENTS = "payments"  # governed by examples/team-budget-deny.yaml (Deny, 1,200 USD/month)
SHOP = "shop"  # governed by the demo's fast policy below
DEMO_POLICY = "demo-shop"


def demo_policy() -> dict[str, Any]:
    """A policy tuned so that proposals and anomalies show within a minute, not a day."""
    return {
        "apiVersion": "cost.kopeck.io/v1alpha1",
        "kind": "CostPolicy",
        "metadata": {"name": DEMO_POLICY},
        "spec": {
            "scope": {"namespaceSelector": {"matchLabels": {"kopeck.io/demo": "shop"}},
                      "priority": 900},
            "pricing": {"currency": "USD",
                        "rateCard": {"cpuCoreHour": 0.031611, "memoryGiBHour": 0.004237,
                                     "network": {"intraZonePerGiB": 0.01,
                                                 "internetPerGiB": 0.09}}},
            "budget": {"amount": 40, "period": "Daily", "thresholds": [50, 80, 100],
                       "enforcement": "Warn"},
            "rightsizing": {"mode": "Propose", "minSamples": 5, "cpuPercentile": 95,
                            "memoryHeadroomPercent": 15},
            "anomaly": {"enabled": True, "sensitivity": "High", "warmUpSamples": 5},
        },
    }  # fmt: skip


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A Namespace manifest."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def deployment(
    name: str, ns: str, command: list[str], *, replicas: int = 1, cpu: str = "100m",
    memory: str = "64Mi", labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment whose container runs `command` on the node (the image is not pulled)."""
    meta_labels = {"app": name, "app.kubernetes.io/component": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": meta_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": meta_labels},
                "spec": {"containers": [{
                    "name": "main", "image": "docker.io/library/debian:12-slim",
                    "command": command,
                    "resources": {"requests": {"cpu": cpu, "memory": memory}},
                }]},
            },
        },
    }  # fmt: skip


def as_json(obj: dict[str, Any]) -> str:
    """Manifest text for `kubectl apply -f -`."""
    return json.dumps(obj)


@dataclass
class Seen:
    """What a user saw at one moment: the command and its output."""

    command: str
    stdout: str
    stderr: str
    returncode: int


def kubectl(stack: Stack, *args: str, manifest: dict[str, Any] | None = None) -> Seen:
    """Run kubectl as the user would, keeping stdout, stderr (warnings) and the exit code."""
    proc = stack.kube.kubectl(*args, input=as_json(manifest) if manifest else None, check=False)
    return Seen("kubectl " + " ".join(args), proc.stdout, proc.stderr, proc.returncode)


def apply_examples(stack: Stack) -> list[Seen]:
    """Apply every example CostPolicy and the demo's own policy."""
    seen = [kubectl(stack, "apply", "-f", str(p)) for p in sorted(EXAMPLES.glob("*.yaml"))]
    seen.append(kubectl(stack, "apply", "-f", "-", manifest=demo_policy()))
    return seen


def start_workloads(stack: Stack) -> None:
    """Namespaces and workloads with known loads: CPU, memory, network, an idle frontend."""
    for ns, labels in ((PAYMENTS, {"team": "payments"}),
                       (SHOP, {"kopeck.io/demo": "shop", "tier": "web"})):
        kubectl(stack, "apply", "-f", "-", manifest=namespace(ns, labels))
    wait_default_sa(stack, PAYMENTS)
    wait_default_sa(stack, SHOP)
    workloads = [
        deployment("api", PAYMENTS, ["stress-ng", "--cpu", "1", "--cpu-load", "25"],
                   replicas=2, cpu="250m", memory="128Mi"),
        deployment("cache", PAYMENTS, ["stress-ng", "--vm", "1", "--vm-bytes", "96M",
                                       "--vm-keep", "--vm-hang", "0"],
                   cpu="100m", memory="256Mi"),
        # Asks for a whole core and 1 GiB, uses almost nothing: rightsizing shows it.
        deployment("frontend", SHOP, ["stress-ng", "--cpu", "1", "--cpu-load", "2"],
                   cpu="1", memory="1Gi"),
        deployment("search", SHOP, ["iperf3", "-s"], cpu="100m", memory="64Mi"),
    ]
    for w in workloads:
        seen = kubectl(stack, "apply", "-f", "-", manifest=w)
        if seen.returncode:
            raise RuntimeError(f"{seen.command}: {seen.stderr}")


def wait_default_sa(stack: Stack, ns: str) -> None:
    """Pods are refused until the namespace's default ServiceAccount exists."""
    stack.wait_for(f"serviceaccount default in {ns}",
                   lambda: kubectl(stack, "get", "sa", "default", "-n", ns).returncode == 0,
                   timeout=30, every=0.3)


def pods(stack: Stack, ns: str, app: str | None = None) -> list[dict[str, Any]]:
    """Pods of a namespace (optionally of one app)."""
    args = ["get", "pods", "-n", ns, "-o", "json"]
    if app:
        args += ["-l", f"app={app}"]
    out = kubectl(stack, *args)
    items: list[dict[str, Any]] = json.loads(out.stdout or "{}").get("items", [])
    return items


def running_ip(stack: Stack, ns: str, app: str) -> str | None:
    """The IP of a Running pod of app, once it has one."""
    for p in pods(stack, ns, app):
        st = p.get("status", {})
        if st.get("phase") == "Running" and st.get("podIP"):
            return str(st["podIP"])
    return None


def start_network_client(stack: Stack) -> None:
    """A client that keeps sending to the search server, so network bytes accrue."""
    ip = None

    def have_ip() -> bool:
        nonlocal ip
        ip = running_ip(stack, SHOP, "search")
        return ip is not None

    stack.wait_for("the search server's pod IP", have_ip, timeout=60)
    loop = f"while true; do iperf3 -c {ip} -t 3 -b 40M >/dev/null 2>&1; sleep 1; done"
    kubectl(stack, "apply", "-f", "-",
            manifest=deployment("indexer", SHOP, ["sh", "-c", loop], cpu="100m"))


def allocations(stack: Stack) -> list[dict[str, Any]]:
    """Every Allocation in the cluster."""
    out = kubectl(stack, "get", "alloc", "-A", "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout or "{}").get("items", [])
    return items


def costs_flowing(stack: Stack) -> bool:
    """True once workload Allocations carry non-zero CPU usage and money."""
    charged = [a for a in allocations(stack)
               if a["spec"]["workloadRef"]["kind"] != "Namespace"
               and float(a.get("status", {}).get("usage", {}).get("cpuCoreSeconds", 0)) > 0
               and float(a.get("status", {}).get("cost", {}).get("total", 0)) > 0]
    return len(charged) >= 3


def over_budget(stack: Stack) -> Seen:
    """A load test that would blow the payments team's monthly budget: refused at admission."""
    big = deployment("checkout-loadtest", PAYMENTS, ["sleep", "3600"], replicas=100,
                     cpu="8", memory="16Gi")
    return kubectl(stack, "apply", "-f", "-", manifest=big)


def proposal_ready(stack: Stack) -> bool:
    """True once the frontend's Allocation carries a rightsizing proposal."""
    for a in allocations(stack):
        ref = a["spec"]["workloadRef"]
        if ref["kind"] == "Deployment" and ref["name"] == "frontend":
            return bool((a.get("status") or {}).get("proposal", {}).get("containers"))
    return False


def reapply_frontend(stack: Stack) -> Seen:
    """Applying the over-requested frontend again: admitted, with the proposal as a warning."""
    again = deployment("frontend", SHOP, ["stress-ng", "--cpu", "1", "--cpu-load", "2"],
                       cpu="1", memory="1Gi", labels={"release": "2"})
    return kubectl(stack, "apply", "-f", "-", manifest=again)


def spike(stack: Stack) -> None:
    """A runaway batch job: busy cores and a large request where the shop spent little.

    The request is what makes the jump certain: cost is max(request, usage), and usage on
    a loaded 2-core machine varies, the request does not."""
    kubectl(stack, "apply", "-f", "-", manifest=deployment(
        "runaway", SHOP, ["stress-ng", "--cpu", "2"], cpu="1500m", memory="2Gi"))


def anomaly_events(stack: Stack) -> list[dict[str, Any]]:
    """SpendAnomaly Events in the shop namespace and on the policy."""
    out = kubectl(stack, "get", "events", "-A", "-o", "json",
                  "--field-selector", "reason=SpendAnomaly")
    items: list[dict[str, Any]] = json.loads(out.stdout or "{}").get("items", [])
    return items


def wait_anomaly(stack: Stack, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The anomaly Events once there are any."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = anomaly_events(stack)
        return bool(found)

    stack.wait_for("a SpendAnomaly Event", seen, timeout=timeout, every=1.0)
    return found
