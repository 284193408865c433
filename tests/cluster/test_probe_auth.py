"""Probe reports are bound to the sender's node: kopeck's audience, a pod-bound token."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import pytest

from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import OperatorProcess, probe_token, report, running_operator

pytestmark = pytest.mark.cluster
AUDIENCE = "kopeck-ingest"


@pytest.fixture(scope="module")
def op(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op"),
                          extra=["--probe-audience", AUDIENCE, "--require-node-binding",
                                 "--token-cache-seconds", "0"]) as proc:
        yield proc


def make_node(cluster: ClusterHandle) -> str:
    name = f"pa-node-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    return name


def make_pod(cluster: ClusterHandle, op: OperatorProcess, node: str) -> str:
    name = f"probe-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": op.namespace},
        "spec": {"nodeName": node, "serviceAccountName": "probe",
                 "containers": [{"name": "p", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    return name


def bound_token(cluster: ClusterHandle, op: OperatorProcess, pod: str) -> str:
    out: str = cluster.kubectl(
        "create", "token", "probe", "-n", op.namespace, "--audience", AUDIENCE,
        "--bound-object-kind", "Pod", "--bound-object-name", pod).stdout.strip()
    return out


def body(node: str) -> dict[str, object]:
    return report(node=node, boot_id=uuid.uuid4().hex, seq=1, end=dt.datetime.now(dt.UTC))


@pytest.fixture(scope="module")
def nodes(cluster: ClusterHandle) -> Iterator[tuple[str, str]]:
    a, b = make_node(cluster), make_node(cluster)
    yield a, b
    cluster.kubectl("delete", "node", a, b, "--ignore-not-found", check=False)


def test_a_pod_bound_token_reports_for_its_own_node(
    cluster: ClusterHandle, op: OperatorProcess, nodes: tuple[str, str]
) -> None:
    token = bound_token(cluster, op, make_pod(cluster, op, nodes[0]))
    status, ack = op.post(body(nodes[0]), token)
    assert (status, ack.get("accepted")) == (200, True), (ack, op.log_tail())


def test_a_report_for_another_node_is_forbidden(
    cluster: ClusterHandle, op: OperatorProcess, nodes: tuple[str, str]
) -> None:
    token = bound_token(cluster, op, make_pod(cluster, op, nodes[0]))
    status, ack = op.post(body(nodes[1]), token)
    assert status == 403, ack
    assert nodes[0] in ack["error"] and nodes[1] in ack["error"]


def test_an_apiserver_audience_token_is_refused(
    cluster: ClusterHandle, op: OperatorProcess, nodes: tuple[str, str]
) -> None:
    status, ack = op.post(body(nodes[0]), probe_token(cluster.kubectl, op))
    assert status in (401, 403), ack


def test_an_unbound_token_of_kopecks_audience_is_refused(
    cluster: ClusterHandle, op: OperatorProcess, nodes: tuple[str, str]
) -> None:
    token = cluster.kubectl("create", "token", "probe", "-n", op.namespace,
                            "--audience", AUDIENCE).stdout.strip()
    status, ack = op.post(body(nodes[0]), token)
    assert status == 403 and "not bound" in ack["error"], ack


def test_the_token_of_a_deleted_pod_is_refused(
    cluster: ClusterHandle, op: OperatorProcess, nodes: tuple[str, str]
) -> None:
    pod = make_pod(cluster, op, nodes[0])
    token = bound_token(cluster, op, pod)
    cluster.kubectl("delete", "pod", pod, "-n", op.namespace, "--grace-period=0", "--force",
                    "--wait=true")
    status, ack = op.post(body(nodes[0]), token)
    assert status in (401, 403), ack
