"""Budget enforcement at admission through the real apiserver and the registered webhook."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from kopeck.localcluster.handle import ClusterHandle
from tests.support.budget import apply_policy, delete_policy, per_deployment
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    running_operator,
)

pytestmark = pytest.mark.cluster
@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig,
                          tmp_path_factory.mktemp("op")) as proc:
        yield proc


def test_over_budget_deployment_refused_with_message(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 5), enforcement="Deny")
    try:
        res = cluster.kubectl(
            "apply", "-f", "-", input=deployment_manifest("big", namespace, replicas=8),
            check=False,
        )
        assert res.returncode != 0
        msg = res.stderr
        assert "denied the request" in msg
        assert f"deployment {namespace}/big would add" in msg
        assert f"CostPolicy {namespace} has spent 0.00 USD of its" in msg
        monthly = Decimal("0.0405") * 730 * 8
        assert f"{monthly.quantize(Decimal('0.01'))} USD/month" in msg
        assert cluster.kubectl("get", "deploy", "big", "-n", namespace, check=False).returncode
        # a deployment that fits is admitted and reserves its projected spend
        ok = cluster.kubectl("apply", "-f", "-",
                             input=deployment_manifest("small", namespace, replicas=2))
        assert "created" in ok.stdout
        status = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)["status"]
        assert [r["key"] for r in status["reservations"]] == [f"{namespace}/Deployment/small"]
        assert abs(Decimal(status["reserved"]) - per * 2) < Decimal("0.01")
        # deleting the workload releases its reservation
        cluster.kubectl("delete", "deployment", "small", "-n", namespace)
        status = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
        assert not status["status"].get("reservations")
    finally:
        delete_policy(cluster, namespace)


def test_scale_past_budget_refused(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 4), enforcement="Deny")
    try:
        cluster.kubectl("apply", "-f", "-", input=deployment_manifest("web", namespace, replicas=2))
        res = cluster.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=6",
                              check=False)
        assert res.returncode != 0, res.stdout
        assert "denied the request" in res.stderr
        assert f"deployment {namespace}/web would add" in res.stderr
        spec = json.loads(cluster.kubectl("get", "deploy", "web", "-n", namespace,
                                          "-o", "json").stdout)["spec"]
        assert spec["replicas"] == 2
        # scaling down is always allowed
        cluster.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=1")
    finally:
        delete_policy(cluster, namespace)


def test_warn_mode_prints_the_warning(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per), enforcement="Warn")
    try:
        res = cluster.kubectl("apply", "-f", "-",
                              input=deployment_manifest("warned", namespace, replicas=3))
        assert "created" in res.stdout
        assert "Warning: kopeck: deployment" in res.stderr
        assert f"CostPolicy {namespace} has spent" in res.stderr
    finally:
        delete_policy(cluster, namespace)


def test_audit_mode_admits_and_records_an_event(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per), enforcement="Audit")
    try:
        res = cluster.kubectl("apply", "-f", "-",
                              input=deployment_manifest("audited", namespace, replicas=3))
        assert "created" in res.stdout and "Warning" not in res.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = json.loads(cluster.kubectl(
                "get", "events", "-n", "default", "-o", "json",
                f"--field-selector=involvedObject.name={namespace},reason=BudgetAudit",
            ).stdout)["items"]
            if any(f"{namespace}/audited" in e["message"] for e in events):
                break
            time.sleep(0.3)
        else:
            pytest.fail("no BudgetAudit event recorded")
    finally:
        delete_policy(cluster, namespace)


def test_server_side_dry_run_is_judged_but_reserves_nothing(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 3), enforcement="Deny")
    try:
        refused = cluster.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                                  input=deployment_manifest("dry", namespace, replicas=5))
        assert refused.returncode != 0 and "would add" in refused.stderr
        for i in range(5):  # five dry-runs of two replicas each: none reserves
            cluster.kubectl("apply", "--dry-run=server", "-f", "-",
                            input=deployment_manifest(f"dry{i}", namespace, replicas=2))
        status = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
        assert not status.get("status", {}).get("reservations")
    finally:
        delete_policy(cluster, namespace)


def test_failure_policy_comes_from_the_policy(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    apply_policy(cluster, op, namespace, namespace, amount="1000",
                 extra_spec={"budget": {"amount": 1000, "failurePolicy": "Fail"}})
    try:
        hooks = json.loads(cluster.kubectl("get", "validatingwebhookconfiguration",
                                           op.webhook_config, "-o", "json").stdout)["webhooks"]
        mine = next(h for h in hooks if h["name"] == f"{namespace}.budget.cost.kopeck.io")
        assert mine["failurePolicy"] == "Fail"
        assert mine["clientConfig"]["url"].endswith(f"/budget/{namespace}")
        assert mine["clientConfig"]["caBundle"]
        assert mine["sideEffects"] == "NoneOnDryRun"
    finally:
        delete_policy(cluster, namespace)


def test_fifty_concurrent_creates_fit_ten(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    """50 concurrent creates against a budget that fits 10: at most 10 admitted."""
    from kubernetes import client

    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * Decimal("10.5")))
    api = client.AppsV1Api(cluster.api_client())

    def create(i: int) -> tuple[bool, str]:
        body = json.loads(deployment_manifest(f"c{i:02d}", namespace))
        try:
            api.create_namespaced_deployment(namespace, body)
            return True, ""
        except client.ApiException as exc:
            return False, str(exc.body)

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(create, range(50)))
        admitted = [r for r in results if r[0]]
        denied = [r for r in results if not r[0]]
        assert len(admitted) == 10, [d[1][:200] for d in denied[:3]]
        assert all("would add" in d[1] and "budget" in d[1] for d in denied), denied[0][1]
        names = json.loads(cluster.kubectl("get", "deploy", "-n", namespace, "-o", "json")
                           .stdout)["items"]
        assert len([d for d in names if d["metadata"]["name"].startswith("c")]) == 10
        status = json.loads(cluster.kubectl("get", "cpol", namespace, "-o", "json").stdout)
        assert len(status["status"]["reservations"]) == 10
    finally:
        delete_policy(cluster, namespace)


def test_operator_log_has_no_tracebacks(op: OperatorProcess) -> None:
    """Runs last in the module: nothing above crashed a handler."""
    assert "Traceback" not in Path(op.log_path or "").read_text(errors="replace")
