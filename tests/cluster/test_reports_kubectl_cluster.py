"""`kubectl kopeck` through the real kubectl, on an Allocation the real operator folded.

The operator prices two probe reports of a Deployment's pod (usage under the CPU request
in one, over it in the other); then, with the operator stopped so nothing rewrites the
status, kubectl finds `kubectl-kopeck` on PATH: its report is byte for byte `kopeck report`,
explain-bill's lines add up to the Allocation's cost, and a tampered status is a mismatch
with a non-zero exit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
D = Decimal


def run(cluster: ClusterHandle, argv: list[str], env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    base = cluster.env()
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"  # where kubectl-kopeck is
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**base, **(env or {})})


def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"not within {timeout}s: {what}")


def test_kubectl_kopeck_on_an_operator_allocation(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    kubectl = str(cluster.kubectl_path)
    policy = namespace
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        policy, namespace, amount=None, cpu_core_hour="0.036", memory_gib_hour="0.0045"))
    cluster.kubectl("label", "namespace", namespace, "team=kt-plugin")
    try:
        cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
            "web", namespace, cpu="1", memory="1Gi"))

        def pods() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = json.loads(cluster.kubectl(
                "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
            return items

        pod = eventually(pods, 60, "a pod of deployment web")[0]
        uid, pod_name = pod["metadata"]["uid"], pod["metadata"]["name"]
        period = period_at("Monthly", dt.datetime.now(dt.UTC)).name
        alloc_name = f"deployment-web-{period}"

        def alloc() -> dict[str, Any] | None:
            proc = cluster.kubectl("get", "alloc", alloc_name, "-n", namespace, "-o", "json",
                                   check=False)
            if proc.returncode:
                return None
            obj: dict[str, Any] = json.loads(proc.stdout)
            last = (obj.get("status") or {}).get("lastReport") or {}
            return obj if last.get("seq") == 2 else None

        with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                              extra=["--status-interval", "1"]) as op:
            token = probe_token(cluster.kubectl, op)
            node, boot = f"kt-plugin-{uuid.uuid4().hex[:4]}", uuid.uuid4().hex
            start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
            for seq, cpu_s in ((1, 2.0), (2, 8.0)):  # 5 s at 1 core requested: under, over
                body = report(node=node, boot_id=boot, seq=seq,
                              end=start + dt.timedelta(seconds=5 * seq),
                              pods=[pod_usage(uid, namespace, pod_name, cpu_core_seconds=cpu_s,
                                              working_set=256 * 2**20, internet_bytes=2**20)])
                assert op.post(body, token)[0] == 200
            obj = eventually(alloc, 30, f"Allocation {alloc_name} with both reports")
        # the operator is stopped: the status stays as it wrote it
        status = obj["status"]
        total = D(status["cost"]["total"])
        assert total > 0 and D(status["cost"]["network"]) > 0

        kc = ["--kubeconfig", str(cluster.kubeconfig)]
        for args in (
            ["-n", namespace],
            ["-n", namespace, "--by", "workload", "-o", "json"],
            ["-n", namespace, "--by", "deployment", "-o", "csv", "--window", "month"],
            ["--by", "label:team", "-n", namespace, "--show-all-resources"],
            ["-A", "--by", "namespace", "--period", period, "-o", "json"],
        ):
            plugin = run(cluster, [kubectl, "kopeck", "report", *args, *kc])
            own = run(cluster, [str(BIN / "kopeck"), "report", *args, *kc])
            assert plugin.returncode == 0 and own.returncode == 0, (plugin.stderr, own.stderr)
            assert plugin.stdout == own.stdout, args
            assert plugin.stdout.strip()
        plugin = run(cluster, [kubectl, "kopeck", "export", "--format", "csv", "-n", namespace])
        own = run(cluster, [str(BIN / "kopeck"), "export", "--format", "csv", "-n", namespace])
        assert plugin.returncode == 0 and plugin.stdout == own.stdout and alloc_name in own.stdout
        doc = json.loads(run(cluster, [kubectl, "kopeck", "report", "-n", namespace, "-o",
                                       "json", *kc]).stdout)
        assert D(doc["totals"][0]["total_cost"]) == total

        # KUBECONFIG (set by cluster.env()) and --context are honoured like kubectl's own
        ctx = cluster.kubectl("config", "current-context").stdout.strip()
        by_env = run(cluster, [kubectl, "kopeck", "namespace", "-n", namespace, "--historical",
                               "--context", ctx])
        assert by_env.returncode == 0, by_env.stderr
        assert by_env.stdout == run(cluster, [str(BIN / "kopeck"), "report", "-n", namespace,
                                              *kc]).stdout
        bad = run(cluster, [kubectl, "kopeck", "report", "--context", "no-such-context"])
        assert bad.returncode == 1 and "--context no-such-context" in bad.stderr
        assert "Traceback" not in bad.stderr

        # explain-bill: the lines add up to the Allocation's cost
        proc = run(cluster, [kubectl, "kopeck", "explain-bill", "deployment/web", "-n",
                             namespace, "-o", "json"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (bill,) = json.loads(proc.stdout)["allocations"]
        assert bill["name"] == alloc_name and bill["ok"]
        assert sum(D(ln["amount"]) for ln in bill["lines"]) == D(bill["explainedTotal"])
        assert D(bill["statusTotal"]) == total
        assert abs(D(bill["explainedTotal"]) - total) <= D(bill["tolerance"])
        lines = {ln["component"]: ln for ln in bill["lines"]}
        assert lines["cpu"]["check"] == "bounded", "usage over the request in one interval"
        assert lines["memory"]["check"] == "recomputed"
        assert lines["network"]["check"] == "recomputed"
        assert bill["intervals"] == [{"node": node, "boot_id": boot, "seqs": "1-2",
                                      "reports": 2}]
        assert [p["name"] for p in bill["podsNow"]] == [pod_name]
        text = run(cluster, [kubectl, "kopeck", "explain-bill", "deploy/web", "-n", namespace])
        assert text.returncode == 0 and f"now: {pod_name}" in text.stdout
        assert "0.036 USD/core-h" in text.stdout

        proc = run(cluster, [kubectl, "kopeck", "explain-bill", f"namespace/{namespace}",
                             "-o", "json"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (ns_bill,) = json.loads(proc.stdout)["allocations"]
        assert [p["name"] for p in ns_bill["parts"]] == [alloc_name]
        assert D(ns_bill["parts"][0]["total"]) == D(ns_bill["statusTotal"]) == total

        # a forged status: more CPU money, and a total made to match it
        forged = {k: format(D(v) * (10 if k == "cpu" else 1), "f")
                  for k, v in status["cost"].items() if k != "currency"}
        forged["total"] = format(total + D(status["cost"]["cpu"]) * 9, "f")
        cluster.kubectl("patch", "allocation", alloc_name, "-n", namespace,
                        "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"cost": forged}}))
        proc = run(cluster, [kubectl, "kopeck", "explain-bill", "deployment/web", "-n",
                             namespace])
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"Allocation {namespace}/{alloc_name}: status.cost.cpu" in proc.stderr
        assert "MISMATCH" in proc.stdout
        assert "the status was written by kubectl-patch" in proc.stderr, "managedFields name it"
        assert "written by kopeck-operator at" in text.stdout
        proc = run(cluster, [kubectl, "kopeck", "explain-bill", f"ns/{namespace}"])
        assert proc.returncode == 1 and "1 workload records" in proc.stderr
        missing = run(cluster, [kubectl, "kopeck", "explain-bill", "deployment/nope", "-n",
                                namespace])
        assert missing.returncode == 2 and "deployment/web" in missing.stderr
    finally:
        cluster.kubectl("delete", "cpol", policy, "--ignore-not-found", check=False)
