"""OpenCost's dashboards and alert-worthy series on kopeck: a real Prometheus scrapes the
real operator, and the PromQL of OpenCost's Grafana dashboards returns kopeck's ledger.

The operator runs against the local control plane; a Node object (instance type, region,
arch, providerID) stands for a node whose probe posts reports through the real ingest
endpoint; a CostPolicy prices it with a price book (1.20/h split 8:1 CPU:GiB, so 0.20 per
core-hour and 0.025 per GiB-hour on 4 cores and 16 GiB) and storage at 0.73 per GiB-month.
Three pods (two of a Deployment, one bare pod mounting a 10 GiB claim bound to a
PersistentVolume; its phase is set to Running, there is no kubelet) request 500m / 256Mi
and use less, so OpenCost's allocation max(request, usage) is the request and kopeck
charges the request too. Prometheus (the Debian package) scrapes /metrics every second with
honor_labels, as OpenCost's own scrape config asks, and a `cluster` target label, and it
evaluates kopeck's alerting rules (deploy/components/prometheus-operator/rules).

The queries are OpenCost's, verbatim (tests/support/opencost_queries.py says where from).
Their hourly or monthly (x730) rates, times the hours the reports covered, must equal the
ledger: the namespace-total Allocation's cpu + memory + gpu cost and its storage cost, the
CostPolicy's spent, and the node's cost (its pods' compute + the node Allocation's idle).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from tests.support import opencost_queries as oc
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)
from tests.support.prometheus import PROMETHEUS, Prometheus, running_prometheus, scrape_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "components" / "prometheus-operator" / "rules" / "kopeck.rules.yaml"
MI = 2**20
CLUSTER = "kopeck-e2e"
JOB = "kopeck-operator"
INSTANCE_TYPE = "kt.large"
BOOK_PRICE = Decimal("1.2")
CPU_CORE_HOUR = Decimal("0.2")  # 1.2 / (8 x 4 cores + 16 GiB) x 8
RAM_GIB_HOUR = Decimal("0.025")
REPORTS = 6
SECONDS = 5
HOURS = Decimal(REPORTS * SECONDS) / 3600
POD_HOURLY = Decimal("0.5") * CPU_CORE_HOUR + Decimal("0.25") * RAM_GIB_HOUR
STORAGE_GIB_MONTH = Decimal("0.73")
CLAIM_GIB = 10
STORAGE_HOURLY = CLAIM_GIB * STORAGE_GIB_MONTH / 730
BUDGET = Decimal("0.003")
"""Spent after the reports is (3 x POD_HOURLY + STORAGE_HOURLY) x HOURS = 0.00274: 91%."""


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op"),
                          extra=["--status-interval", "1", "--probe-interval", "1"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def node(cluster: ClusterHandle) -> Iterator[str]:
    """A Node object (no kubelet) with the labels and providerID OpenCost's series carry."""
    name = f"kt-oc-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "node.kubernetes.io/instance-type": INSTANCE_TYPE,
            "topology.kubernetes.io/region": "eu-test-1", "kubernetes.io/arch": "amd64"}},
        "spec": {"providerID": f"kopeck://test/{name}"},
    }))  # fmt: skip
    yield name
    cluster.kubectl("delete", "node", name, "--ignore-not-found", check=False)


@pytest.fixture
def volume(cluster: ClusterHandle) -> Iterator[str]:
    """A PersistentVolume of CLAIM_GIB (hostPath; nothing ever mounts it)."""
    name = f"kt-oc-pv-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": f"{CLAIM_GIB}Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": f"/nonexistent/{name}"}},
    }))  # fmt: skip
    yield name
    cluster.kubectl("delete", "pv", name, "--ignore-not-found", "--wait=false", check=False)


def claimed_pod(cluster: ClusterHandle, namespace: str, volume: str) -> dict[str, Any]:
    """A claim bound to `volume` and a bare pod mounting it, marked Running."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": namespace},
        "spec": {"volumeName": volume, "storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": f"{CLAIM_GIB}Gi"}}},
    }))  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]},
    }))  # fmt: skip
    cluster.kubectl("patch", "pod", "db", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"phase": "Running"}}))
    out = cluster.kubectl("get", "pod", "db", "-n", namespace, "-o", "json")
    pod: dict[str, Any] = json.loads(out.stdout)
    return pod


def pods_of(cluster: ClusterHandle, namespace: str, count: int) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]]:
        out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items if len(items) >= count else []

    return eventually(listed, timeout=30, what=f"{count} pods of web in {namespace}", every=0.3)


def status_of(cluster: ClusterHandle, *args: str) -> dict[str, Any]:
    out = cluster.kubectl("get", *args, "-o", "json", check=False)
    if out.returncode:
        return {}
    status: dict[str, Any] = json.loads(out.stdout).get("status") or {}
    return status


def one_value(prom: Prometheus, expr: str, **match: str) -> float:
    """The value of the single series of `expr` whose labels include `match`."""
    found: list[float] = []

    def answered() -> bool:
        rows = [r for r in prom.query(expr)
                if match.items() <= r["metric"].items()]  # fmt: skip
        found[:] = [float(r["value"][1]) for r in rows]
        return len(rows) == 1

    eventually(answered, timeout=20, what=f"one series of {expr!r} with {match}", every=0.5)
    return found[0]


def close(got: float, want: Decimal, what: str) -> None:
    assert got == pytest.approx(float(want), rel=1e-6), f"{what}: Prometheus {got}, ledger {want}"


def test_opencost_dashboards_on_kopeck_return_the_ledger(
    cluster: ClusterHandle, op: OperatorProcess, node: str, namespace: str, volume: str
) -> None:
    assert Path(PROMETHEUS).exists(), "prometheus missing: apt-get install prometheus"
    pricing = {"currency": "USD",
               "priceBook": {"instanceTypes": {INSTANCE_TYPE: float(BOOK_PRICE)},
                             "cpuToMemoryCostRatio": 8},
               "rateCard": {"cpuCoreHour": float(CPU_CORE_HOUR),
                            "memoryGiBHour": float(RAM_GIB_HOUR),
                            "storageGiBMonth": float(STORAGE_GIB_MONTH)}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount=str(BUDGET), enforcement="Warn",
        extra_spec={"pricing": pricing, "anomaly": {"enabled": False}}))  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "web", namespace, replicas=2, cpu="500m", memory="256Mi"))
    pods = [*pods_of(cluster, namespace, 2), claimed_pod(cluster, namespace, volume)]
    token = probe_token(cluster.kubectl, op)
    boot = uuid.uuid4().hex
    start = dt.datetime.now(dt.UTC)

    def post(seq: int) -> None:
        body = report(node=node, boot_id=boot, seq=seq, seconds=SECONDS,
                      end=start + dt.timedelta(seconds=SECONDS * seq), pods=[
            pod_usage(p["metadata"]["uid"], namespace, p["metadata"]["name"],
                      cpu_core_seconds=0.4, working_set=100 * MI, seconds=SECONDS)
            for p in pods])  # fmt: skip
        got = op.post(body, token)
        assert got == (200, {"accepted": True, "duplicate": False}), op.log_tail()

    for seq in range(1, REPORTS + 1):
        post(seq)

    period = period_at("Monthly", start).name
    total = status_of(cluster, "alloc", "-n", namespace, f"namespace-total-{period}")["cost"]
    ns_compute = Decimal(total["cpu"]) + Decimal(total["memory"]) + Decimal(total["gpu"])
    # money is rounded to 1e-12 per pod-interval and category: 24 roundings here
    assert ns_compute == pytest.approx(3 * POD_HOURLY * HOURS, rel=Decimal("1e-8"))
    ns_storage = Decimal(total["storage"])
    assert ns_storage == pytest.approx(STORAGE_HOURLY * HOURS, rel=Decimal("1e-8"))
    idle = Decimal(status_of(cluster, "alloc", "-n", op.namespace,
                             f"node-{node}-{period}")["cost"]["idle"])
    node_cost = ns_compute + idle  # one namespace on this node
    assert node_cost == pytest.approx(BOOK_PRICE * HOURS, rel=Decimal("1e-8"))

    config = scrape_config({JOB: f"127.0.0.1:{op.health_port}"}, labels={"cluster": CLUSTER},
                           rule_files=[RULES])
    with running_prometheus(config) as prom:
        # the dashboards' $job variable: label_values(opencost_build_info{cluster="$cluster"}, job)
        jobs = eventually(lambda: prom.api("label/job/values",
                                           **{"match[]": f'opencost_build_info{{cluster="{CLUSTER}"}}'}),
                          timeout=20, what="the job of opencost_build_info", every=0.5)
        assert jobs == [JOB]
        fill = {"cluster": CLUSTER, "job": JOB, "namespace": namespace}

        labels = {"instance": node, "node": node, "instance_type": INSTANCE_TYPE,
                  "region": "eu-test-1", "provider_id": f"kopeck://test/{node}", "arch": "amd64"}
        close(one_value(prom, "node_cpu_hourly_cost", **labels), CPU_CORE_HOUR, "cpu price")
        close(one_value(prom, "node_ram_hourly_cost", **labels), RAM_GIB_HOUR, "ram price")

        monthly = one_value(prom, oc.fill(oc.INSTANCE_TYPE_MONTHLY, **fill),
                            instance_type=INSTANCE_TYPE)
        close(monthly / 730 * float(HOURS), node_cost, "Cost by Instance Type x hours")
        monthly = one_value(prom, oc.fill(oc.NODES_MONTHLY_TOTAL, **fill), node=node)
        close(monthly / 730 * float(HOURS), node_cost, "Nodes Monthly Cost x hours")
        close(one_value(prom, oc.DOCS_TOTAL_CLUSTER_MONTHLY) / 730 * float(HOURS), node_cost,
              "docs: Total Cluster Cost x hours")

        monthly = one_value(prom, oc.fill(oc.NAMESPACE_MONTHLY, **fill), namespace=namespace)
        close(monthly / 730 * float(HOURS), ns_compute, "Namespace Monthly Cost x hours")
        hourly = one_value(prom, oc.fill(oc.NAMESPACE_HOURLY, **fill))
        close(hourly * float(HOURS), ns_compute, "Namespace dashboard Hourly Cost x hours")
        hourly = one_value(prom, oc.DOCS_COST_BY_NAMESPACE, namespace=namespace)
        close(hourly * float(HOURS), ns_compute, "docs: Cost by Namespace x hours")

        claim = one_value(prom, "pod_pvc_allocation", namespace=namespace, pod="db",
                          persistentvolumeclaim="data", persistentvolume=volume)
        assert claim == CLAIM_GIB * 2**30
        storage = one_value(prom, oc.DOCS_STORAGE_COST_BY_NAMESPACE, namespace=namespace)
        close(storage * float(HOURS), ns_storage, "docs: Storage Cost x hours")

        spent = eventually(lambda: status_of(cluster, "cpol", namespace).get("spent"),
                           timeout=10, what="CostPolicy status.spent")
        assert float(Decimal(spent)) == pytest.approx((hourly + storage) * float(HOURS),
                                                      abs=1e-6)

        # kopeck's own alerts, evaluated by this Prometheus on the live series
        def pending(alert: str, **match: str) -> bool:
            rows = prom.query(f'ALERTS{{alertname="{alert}"}}')
            return any(match.items() <= r["metric"].items() for r in rows)

        eventually(lambda: pending("KopeckBudgetNearlySpent", policy=namespace), timeout=20,
                   what="KopeckBudgetNearlySpent for the policy at 88.5%", every=0.5)
        assert not pending("KopeckBudgetExceeded", policy=namespace)
        post(REPORTS + 3)  # seqs REPORTS+1 and REPORTS+2 are now known missing
        gaps = one_value(prom, f'kopeck_ledger_seq_gaps{{node="{node}"}} == 2')
        assert gaps == 2
        eventually(lambda: pending("KopeckLedgerGaps", node=node), timeout=20,
                   what="KopeckLedgerGaps for the node", every=0.5)
        post(REPORTS + 1)
        post(REPORTS + 2)  # resent: the gap closes
        one_value(prom, f'kopeck_ledger_seq_gaps{{node="{node}"}} == 0')
        eventually(lambda: not pending("KopeckLedgerGaps", node=node), timeout=20,
                   what="KopeckLedgerGaps resolved", every=0.5)
        # no more reports: after 3 push intervals (1 s each here) the probe counts as silent
        eventually(lambda: pending("KopeckProbeSilent", node=node), timeout=30,
                   what="KopeckProbeSilent for the node", every=0.5)
        assert prom.query(f'ALERTS{{alertname="KopeckProbeSilent",node="{node}"}}')
