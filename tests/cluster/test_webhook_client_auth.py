"""The admission webhook answers the apiserver only: mutual TLS with --webhook-client-ca.

The local control plane presents a client certificate to webhooks (AdmissionConfiguration
-> kubeConfigFile); the operator trusts only that certificate's CA. A pod in the cluster
that can reach the webhook port, with the right server CA and a well-formed AdmissionReview,
must neither reserve budget nor release someone else's reservation.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kopeck.localcluster.certs import CertificateAuthority
from kopeck.localcluster.cluster import LocalCluster
from kopeck.localcluster.handle import ClusterHandle
from tests.support.budget import apply_policy, delete_policy, per_deployment
from tests.support.operator import OperatorProcess, deployment_manifest, running_operator

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def op(
    cluster: ClusterHandle,
    local_cluster: LocalCluster | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    if local_cluster is None:
        pytest.skip("needs the local control plane's webhook client CA")
    extra = ["--webhook-client-ca", str(local_cluster.webhook_client_ca_file)]
    with running_operator(cluster.kubectl, cluster.kubeconfig,
                          tmp_path_factory.mktemp("op-mtls"), extra=extra) as proc:
        yield proc


def hook_url(cluster: ClusterHandle, op: OperatorProcess, policy: str) -> str:
    """The URL the apiserver calls for this policy, from the registered configuration."""
    hooks = json.loads(cluster.kubectl("get", "validatingwebhookconfiguration",
                                       op.webhook_config, "-o", "json").stdout)["webhooks"]
    mine = next(h for h in hooks if h["name"] == f"{policy}.budget.cost.kopeck.io")
    url: str = mine["clientConfig"]["url"]
    return url


def review(namespace: str, name: str, operation: str, replicas: int = 1) -> dict[str, Any]:
    """An AdmissionReview as the apiserver would send it for a Deployment."""
    obj = json.loads(deployment_manifest(name, namespace, replicas=replicas))
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": name, "namespace": namespace, "operation": operation,
            "userInfo": {"username": "system:serviceaccount:default:forger"},
            "object": obj if operation != "DELETE" else None,
            "oldObject": obj if operation == "DELETE" else None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def post(url: str, body: dict[str, Any], ctx: ssl.SSLContext) -> dict[str, Any]:
    """POST an AdmissionReview; the JSON answer (raises on TLS refusal)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def refused(url: str, body: dict[str, Any], ctx: ssl.SSLContext) -> bool:
    """True when the server ends the TLS handshake (or the connection) without answering."""
    try:
        post(url, body, ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        return bool(exc)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ssl.SSLError | ConnectionError | OSError)
    return False


def reservations(cluster: ClusterHandle, policy: str) -> list[str]:
    status = json.loads(cluster.kubectl("get", "cpol", policy, "-o", "json").stdout)
    return [r["key"] for r in (status.get("status") or {}).get("reservations") or []]


def test_apiserver_still_reaches_the_webhook(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 3), enforcement="Deny")
    try:
        res = cluster.kubectl("apply", "-f", "-", check=False,
                              input=deployment_manifest("big", namespace, replicas=5))
        assert res.returncode != 0 and "denied the request" in res.stderr, res.stderr
        assert f"deployment {namespace}/big would add" in res.stderr
        cluster.kubectl("apply", "-f", "-", input=deployment_manifest("ok", namespace))
        assert reservations(cluster, namespace) == [f"{namespace}/Deployment/ok"]
    finally:
        delete_policy(cluster, namespace)


def test_caller_without_client_cert_can_neither_reserve_nor_release(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str
) -> None:
    per = per_deployment()
    apply_policy(cluster, op, namespace, namespace, amount=str(per * 3), enforcement="Deny")
    try:
        cluster.kubectl("apply", "-f", "-", input=deployment_manifest("real", namespace))
        before = reservations(cluster, namespace)
        assert before == [f"{namespace}/Deployment/real"]
        url = hook_url(cluster, op, namespace)
        plain = ssl.create_default_context(cafile=str(op.ca_file))  # a pod: right CA, no cert
        assert refused(url, review(namespace, "forged", "CREATE"), plain)
        assert refused(url, review(namespace, "real", "DELETE"), plain)
        time.sleep(3)  # longer than the checkpoint and status intervals
        assert reservations(cluster, namespace) == before
    finally:
        delete_policy(cluster, namespace)


def test_client_cert_from_another_ca_is_refused(
    cluster: ClusterHandle, op: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    apply_policy(cluster, op, namespace, namespace, amount=str(per_deployment() * 3))
    try:
        rogue_ca = CertificateAuthority.create_or_load(tmp_path, "rogue-ca", "rogue-ca")
        pair = rogue_ca.issue(tmp_path, "rogue", "kube-apiserver-webhook-client")
        ctx = ssl.create_default_context(cafile=str(op.ca_file))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        url = hook_url(cluster, op, namespace)
        assert refused(url, review(namespace, "rogue", "CREATE"), ctx)
        time.sleep(3)
        assert reservations(cluster, namespace) == []
    finally:
        delete_policy(cluster, namespace)


def test_operator_log_has_no_tracebacks(op: OperatorProcess) -> None:
    assert "Traceback" not in Path(op.log_path or "").read_text(errors="replace")
