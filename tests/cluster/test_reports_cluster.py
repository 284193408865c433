"""`kopeck report` and `kopeck export` against the real apiserver, on Allocations made by hand.

Objects are created, then given a status through the status subresource (as the operator
writes it), and the commands run as subprocesses with --kubeconfig, as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.localcluster.handle import ClusterHandle

pytestmark = pytest.mark.cluster
KOPECK = Path(sys.executable).with_name("kopeck")
PERIOD = {"name": "2025-03", "start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}
D = Decimal


def allocation(namespace: str, kind: str, name: str) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": "apps/v1" if kind != "Namespace" else "v1",
                           "kind": kind, "name": name}
    if kind != "Namespace":
        ref["namespace"] = namespace
    obj_name = (f"namespace-total-{PERIOD['name']}" if kind == "Namespace"
                else f"{kind.lower()}-{name}-{PERIOD['name']}")
    return {
        "apiVersion": "cost.kopeck.io/v1alpha1", "kind": "Allocation",
        "metadata": {"name": obj_name, "namespace": namespace,
                     "labels": {"cost.kopeck.io/period": PERIOD["name"],
                                "cost.kopeck.io/workload-kind": kind}},
        "spec": {"workloadRef": ref, "period": PERIOD},
    }


def status(cpu: str, memory: str, network: str, cpu_s: float, req_cpu_s: float) -> dict[str, Any]:
    total = D(cpu) + D(memory) + D(network)
    return {"status": {
        "phase": "Closed",
        "usage": {"cpuCoreSeconds": cpu_s, "memoryByteSeconds": 3.6e12,
                  "networkBytes": {"internet": 2**30}},
        "requests": {"cpuCoreSeconds": req_cpu_s, "memoryByteSeconds": 7.2e12},
        "cost": {"currency": "EUR", "cpu": cpu, "memory": memory, "network": network,
                 "gpu": "0", "storage": "0", "idle": "0", "total": str(total)},
        "lastReport": {"node": "n1", "seq": 7, "time": "2025-03-31T23:59:00Z"},
    }}


def kopeck(cluster: ClusterHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KOPECK), *args, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_report_and_focus_export_from_the_apiserver(cluster: ClusterHandle, namespace: str) -> None:
    records = [
        ("Deployment", "web", status("1.250000", "0.500000", "0.090000", 3600.0, 7200.0)),
        ("StatefulSet", "db", status("2.000000", "1.100000", "0", 7000.0, 7200.0)),
        ("Namespace", namespace, status("3.250000", "1.600000", "0.090000", 10600.0, 14400.0)),
    ]
    for kind, name, st in records:
        body = allocation(namespace, kind, name)
        cluster.kubectl("create", "-f", "-", input=json.dumps(body))
        cluster.kubectl("patch", "allocation", body["metadata"]["name"], "-n", namespace,
                        "--subresource=status", "--type=merge", "-p", json.dumps(st))
    label = f"kt-team-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("label", "namespace", namespace, f"team={label}")

    proc = kopeck(cluster, "report", "-n", namespace, "--period", "2025-03", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["namespace"]: r for r in doc["rows"]}
    assert D(rows[namespace]["total_cost"]) == D("4.94")
    assert D(rows[namespace]["cpu_cost"]) == D("3.25")
    assert rows[namespace]["currency"] == "EUR"

    proc = kopeck(cluster, "report", "-n", namespace, "--period", "2025-03", "--by", "workload")
    assert proc.returncode == 0, proc.stderr
    assert "deployment/web" in proc.stdout and "statefulset/db" in proc.stdout
    assert "money in EUR" in proc.stdout

    proc = kopeck(cluster, "report", "-n", namespace, "--period", "2025-03", "--by",
                  "label:team", "-o", "csv")
    assert proc.returncode == 0, proc.stderr
    (line,) = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert line["label_value"] == label, "namespace labels are read from the cluster"
    assert D(line["total_cost"]) == D("4.94")

    proc = kopeck(cluster, "export", "--format", "focus", "-n", namespace, "--period", "2025-03")
    assert proc.returncode == 0, proc.stderr
    focus = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert {(f["ResourceName"], f["x_KopeckComponent"]) for f in focus} == {
        ("web", "cpu"), ("web", "memory"), ("web", "network"), ("db", "cpu"), ("db", "memory"),
        ("db", "network"),  # free traffic is still usage: a row with BilledCost 0
    }
    assert sum((D(f["BilledCost"]) for f in focus), D(0)) == D("4.94")
    assert {f["BillingCurrency"] for f in focus} == {"EUR"}
    assert {f["SubAccountId"] for f in focus} == {namespace}
    assert {f["ChargePeriodStart"] for f in focus} == {"2025-03-01T00:00:00Z"}
    assert {f["ChargePeriodEnd"] for f in focus} == {"2025-04-01T00:00:00Z"}

    proc = kopeck(cluster, "report", "-n", namespace, "--period", "1999-01")
    assert proc.returncode == 1 and "periods on record are" in proc.stderr
    assert "2025-03" in proc.stderr


def test_report_names_the_fix_when_the_kubeconfig_is_wrong(tmp_path: Path) -> None:
    bogus = tmp_path / "missing-kubeconfig"
    proc = subprocess.run([str(KOPECK), "report", "--kubeconfig", str(bogus)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "--kubeconfig" in proc.stderr and "Traceback" not in proc.stderr
