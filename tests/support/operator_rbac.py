"""The operator under its real RBAC: a ServiceAccount bound to deploy/base's ClusterRole.

Tests start the operator with the cluster's admin kubeconfig, where RBAC never refuses
anything. A test that needs refusals (a binding removed and restored) runs it with a
ServiceAccount token instead, under a copy of the shipped ClusterRole with a test-unique
name; `revoke()` and `restore()` remove and recreate the binding.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.operator import Kubectl

REPO = Path(__file__).resolve().parents[2]
RBAC_FILE = REPO / "deploy" / "base" / "rbac-operator.yaml"
SHIPPED_WEBHOOK_CONFIG = "kopeck.cost.kopeck.io"


def operator_cluster_role(name: str, webhook_config: str) -> dict[str, Any]:
    """The shipped ClusterRole under another name, its webhook-configuration rule naming
    the one this operator manages (tests give each operator its own)."""
    docs = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    role: dict[str, Any] = next(d for d in docs if d["kind"] == "ClusterRole")
    role["metadata"] = {"name": name, "labels": {"kopeck.io/test": "true"}}
    for rule in role["rules"]:
        names = rule.get("resourceNames")
        if names and SHIPPED_WEBHOOK_CONFIG in names:
            rule["resourceNames"] = [webhook_config if n == SHIPPED_WEBHOOK_CONFIG else n
                                     for n in names]
    return role


def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same server and CA as admin_kubeconfig, authenticating with
    a bearer token only."""
    doc: dict[str, Any] = yaml.safe_load(admin_kubeconfig.read_text())
    ctx_name = doc["current-context"]
    ctx = next(c for c in doc["contexts"] if c["name"] == ctx_name)["context"]
    entry = dict(next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])["cluster"])
    ca = entry.get("certificate-authority")
    if ca:
        entry["certificate-authority"] = str((admin_kubeconfig.parent / ca).resolve())
    out = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": entry}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(out))
    path.chmod(0o600)
    return path


@dataclass
class OperatorAccess:
    """The ServiceAccount, ClusterRole and binding one test operator runs under."""

    kubectl: Kubectl
    namespace: str
    account: str
    role: str
    binding: str
    kubeconfig: Path

    def binding_manifest(self) -> str:
        """The ClusterRoleBinding of the account to the role, as JSON text."""
        return json.dumps({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": self.binding, "labels": {"kopeck.io/test": "true"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": self.role},
            "subjects": [{"kind": "ServiceAccount", "name": self.account,
                          "namespace": self.namespace}],
        })

    def revoke(self) -> None:
        """Remove the binding: from now on the operator's every request is refused (403)."""
        self.kubectl("delete", "clusterrolebinding", self.binding, "--ignore-not-found")

    def restore(self) -> None:
        """Bind the role again."""
        self.kubectl("apply", "-f", "-", input=self.binding_manifest())

    def allowed(self, verb: str, resource: str, namespace: str | None = None,
                subresource: str | None = None) -> bool:
        """What the apiserver's authorizer says now for the account (kubectl auth can-i)."""
        args = ["auth", "can-i", verb, resource,
                f"--as=system:serviceaccount:{self.namespace}:{self.account}"]
        args += ["-n", namespace] if namespace else []
        args += [f"--subresource={subresource}"] if subresource else []
        out = self.kubectl(*args, check=False).stdout.strip()
        return out == "yes"


@contextlib.contextmanager
def operator_access(kubectl: Kubectl, admin_kubeconfig: Path, namespace: str,
                    webhook_config: str, workdir: Path) -> Iterator[OperatorAccess]:
    """A ServiceAccount in namespace bound to a copy of the shipped ClusterRole, and a
    kubeconfig with its token; the role and binding are deleted afterwards (the account
    goes with the namespace)."""
    suffix = uuid.uuid4().hex[:6]
    access = OperatorAccess(
        kubectl=kubectl, namespace=namespace, account="kopeck-operator",
        role=f"kopeck-operator-test-{suffix}", binding=f"kopeck-operator-test-{suffix}",
        kubeconfig=workdir / "operator-sa.kubeconfig",
    )
    kubectl("create", "serviceaccount", access.account, "-n", namespace, check=False)
    try:
        kubectl("apply", "-f", "-",
                input=json.dumps(operator_cluster_role(access.role, webhook_config)))
        access.restore()
        token = kubectl("create", "token", access.account, "-n", namespace,
                        "--duration", "1h").stdout.strip()
        token_kubeconfig(admin_kubeconfig, token, access.kubeconfig)
        yield access
    finally:
        kubectl("delete", "clusterrolebinding", access.binding, "--ignore-not-found",
                check=False)
        kubectl("delete", "clusterrole", access.role, "--ignore-not-found", check=False)
