"""CostPolicy status and Events, idle detection and the audit sweep, on the real apiserver."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)

pytestmark = pytest.mark.cluster
PERIOD = period_at("Monthly", dt.datetime.now(dt.UTC)).name


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    extra = ["--status-interval", "1", "--probe-interval", "1", "--idle-after", "2"]
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op"),
                          extra=extra) as proc:
        yield proc


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"not within {timeout}s: {what}")


def one_pod(cluster: ClusterHandle, namespace: str, name: str, cpu: str = "1") -> dict[str, Any]:
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(name, namespace, cpu=cpu))

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", f"app={name}", "-o", "json").stdout)["items"]
        return items

    return dict(eventually(pods, 30, f"a pod of {name}")[0])


def policy(cluster: ClusterHandle, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.kubectl("get", "cpol", name, "-o", "json").stdout)
    return data


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or []}


def test_thresholds_raise_one_event_each_and_conditions(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    token = probe_token(cluster.kubectl, op)
    # 1 core-second costs 1 USD: a report with 30 core-s spends 30 USD
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="100", enforcement="Warn",
        cpu_core_hour="3600", memory_gib_hour="0"))
    pod = one_pod(cluster, namespace, "burner")
    node, boot, start = "kt-thresholds", uuid.uuid4().hex, dt.datetime.now(dt.UTC)
    uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]

    def post(seq: int) -> None:
        body = report(node=node, boot_id=boot, seq=seq, end=start + dt.timedelta(seconds=5 * seq),
                      pods=[pod_usage(uid, namespace, name, cpu_core_seconds=30,
                                      working_set=2**20)])
        assert op.post(body, token)[0] == 200

    def crossed(expected: list[int]) -> bool:
        return bool(policy(cluster, namespace).get("status", {}).get("thresholdsCrossed")
                    == expected)

    post(1)
    post(2)  # 60 USD: 50%
    try:
        eventually(lambda: crossed([50]), 10, "threshold 50 announced")
    except BaseException:
        print(cluster.kubectl("get", "alloc", "-A").stdout)
        print(policy(cluster, namespace).get("status"))
        print([m for m in op.metrics().splitlines() if m.startswith("kopeck_")])
        raise
    post(3)  # 90 USD: 80%
    post(3)  # a duplicate spends nothing
    eventually(lambda: crossed([50, 80]), 10, "threshold 80 announced")
    cond = conditions(policy(cluster, namespace))
    assert cond["BudgetWarning"]["status"] == "True"
    assert cond["BudgetExceeded"]["status"] == "False"
    assert cond["Ready"]["observedGeneration"] == policy(cluster, namespace)["metadata"]["generation"]
    post(4)  # 120 USD
    eventually(lambda: crossed([50, 80, 100]), 10, "threshold 100 announced")
    st = policy(cluster, namespace)["status"]
    assert st["spent"] == "120.000000" and st["remaining"] == "-20.000000"
    assert conditions(policy(cluster, namespace))["BudgetExceeded"]["status"] == "True"
    time.sleep(2)  # further status rounds must not repeat the Events

    def events() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(cluster.kubectl(
            "get", "events", "-n", "default", "-o", "json",
            f"--field-selector=involvedObject.name={namespace},reason=BudgetThreshold",
        ).stdout)["items"]
        return items

    msgs = [e["message"] for e in eventually(lambda: len(events()) >= 3 and events(), 10,
                                              "three BudgetThreshold events")]
    assert len(msgs) == 3
    for t in (50, 80, 100):
        assert sum(f"({t}% threshold)" in m for m in msgs) == 1


def test_silent_node_is_named_in_a_condition_and_an_event(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    token = probe_token(cluster.kubectl, op)
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(namespace, namespace, amount=None))
    node = f"kt-silent-{uuid.uuid4().hex[:4]}"
    body = report(node=node, boot_id="b", seq=1, end=dt.datetime.now(dt.UTC))
    assert op.post(body, token)[0] == 200

    def silent() -> bool:
        cond = conditions(policy(cluster, namespace)).get("ProbesReporting", {})
        return cond.get("status") == "False" and node in cond.get("message", "")

    eventually(silent, 15, f"ProbesReporting=False naming {node}")
    assert node in policy(cluster, namespace)["status"]["silentNodes"]
    events = json.loads(cluster.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        f"--field-selector=involvedObject.name={namespace},reason=ProbeSilent").stdout)["items"]
    assert any(node in e["message"] for e in events)


def test_idle_workload_gets_the_idle_condition_with_its_cost(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    token = probe_token(cluster.kubectl, op)
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(namespace, namespace, amount=None))
    pod = one_pod(cluster, namespace, "sleepy", cpu="2")
    boot = uuid.uuid4().hex
    for seq in range(1, 4):
        body = report(node="kt-idle", boot_id=boot, seq=seq, end=dt.datetime.now(dt.UTC),
                      pods=[pod_usage(pod["metadata"]["uid"], namespace, pod["metadata"]["name"],
                                      cpu_core_seconds=0.01, working_set=2**20)])
        assert op.post(body, token)[0] == 200
        time.sleep(1)

    def idle() -> dict[str, Any] | None:
        alloc = json.loads(cluster.kubectl("get", "alloc", "-n", namespace,
                                           f"deployment-sleepy-{PERIOD}", "-o", "json").stdout)
        cond = conditions(alloc).get("Idle")
        return cond if cond and cond["status"] == "True" else None

    cond = eventually(idle, 15, "Idle condition")
    assert "CPU under 5% of its request" in cond["message"] and "USD" in cond["message"]


def test_audit_sweep_closes_records_of_deleted_workloads(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    token = probe_token(cluster.kubectl, op)
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(namespace, namespace, amount=None))
    pod = one_pod(cluster, namespace, "shortlived")
    body = report(node="kt-audit", boot_id=uuid.uuid4().hex, seq=1, end=dt.datetime.now(dt.UTC),
                  pods=[pod_usage(pod["metadata"]["uid"], namespace, pod["metadata"]["name"],
                                  cpu_core_seconds=1, working_set=2**20)])
    assert op.post(body, token)[0] == 200
    cluster.kubectl("delete", "deployment", "shortlived", "-n", namespace)

    def closed() -> bool:
        alloc = json.loads(cluster.kubectl("get", "alloc", "-n", namespace,
                                           f"deployment-shortlived-{PERIOD}", "-o", "json").stdout)
        return bool(alloc["status"]["phase"] == "Closed"
                    and conditions(alloc).get("WorkloadGone", {}).get("status") == "True")

    eventually(closed, 30, "record closed by the audit sweep")
