"""deploy/ against a real kube-apiserver: every object of the base passes a server-side
dry-run, the RBAC gives each ServiceAccount what its code calls and nothing broad (checked
with `kubectl auth can-i --as`), and the operator really runs on its own account's token:
peering, status writes, Allocations, TokenReviews and its webhook configuration, with no
403 in its log."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import OperatorProcess, policy_manifest, report

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NS = "kopeck-system"
OPERATOR = f"system:serviceaccount:{NS}:kopeck-operator"
PROBE = f"system:serviceaccount:{NS}:kopeck-node-probe"
WEBHOOK_CONFIG = "kopeck.cost.kopeck.io"
PROBE_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}


def render(cluster: ClusterHandle, path: Path) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(path)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def base(cluster: ClusterHandle) -> list[dict[str, Any]]:
    return render(cluster, REPO / "deploy" / "base")


@pytest.fixture(scope="module")
def system_namespace(cluster: ClusterHandle) -> Iterator[str]:
    """kopeck-system for real (namespaced objects cannot be dry-run into a namespace that
    does not exist); removed afterwards when this module made it."""
    made = cluster.kubectl("get", "namespace", NS, check=False).returncode != 0
    if made:
        cluster.kubectl("apply", "-f", str(REPO / "deploy" / "base" / "namespace.yaml"))
    try:
        yield NS
    finally:
        if made:
            cluster.kubectl("delete", "namespace", NS, "--timeout=60s", check=False)


@pytest.fixture(scope="module")
def rbac(cluster: ClusterHandle, system_namespace: str) -> Iterator[None]:
    """The ServiceAccounts, ClusterRoles and bindings of the base, applied for real (and
    kopf's peering CRD, kept: kubectl names a resource for `auth can-i` by discovery)."""
    crd = REPO / "deploy" / "base" / "crds" / "clusterkopfpeering.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/clusterkopfpeerings.kopf.dev")  # fmt: skip
    files = [str(REPO / "deploy" / "base" / f) for f in ("rbac-operator.yaml", "rbac-probe.yaml")]
    args = [a for f in files for a in ("-f", f)]
    cluster.kubectl("apply", *args)
    try:
        yield
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", *args, check=False)


def can(cluster: ClusterHandle, who: str, *args: str) -> bool:
    run = cluster.kubectl("auth", "can-i", f"--as={who}", *args, check=False)
    assert run.stdout.strip() in ("yes", "no"), run.stdout + run.stderr
    return run.returncode == 0


# ---- rendering and server-side dry-run -------------------------------------------------


def test_base_renders_every_part(base: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in base}
    for want in [
        ("Namespace", NS),
        ("CustomResourceDefinition", "costpolicies.cost.kopeck.io"),
        ("CustomResourceDefinition", "allocations.cost.kopeck.io"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("ServiceAccount", "kopeck-operator"),
        ("ServiceAccount", "kopeck-node-probe"),
        ("ClusterRole", "kopeck-operator"),
        ("ClusterRole", "kopeck-node-probe"),
        ("ClusterRoleBinding", "kopeck-operator"),
        ("ClusterRoleBinding", "kopeck-node-probe"),
        ("Deployment", "kopeck-operator"),
        ("DaemonSet", "kopeck-node-probe"),
        ("Service", "kopeck-operator"),
        ("Service", "kopeck-operator-metrics"),
        ("Service", "kopeck-node-probe-metrics"),
        ("ConfigMap", "kopeck-grafana-dashboard"),
        ("PodDisruptionBudget", "kopeck-operator"),
        ("NetworkPolicy", "kopeck-operator-webhook"),
        ("NetworkPolicy", "kopeck-operator-ingest"),
        ("NetworkPolicy", "kopeck-operator-metrics"),
        ("NetworkPolicy", "kopeck-node-probe"),
    ]:
        assert want in kinds, f"{want} missing from deploy/base"
    deployment = next(d for d in base if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    cm = next(d for d in base if d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(cm["data"]["kopeck.json"])
    assert not any(d["kind"] == "Secret" for d in base), "no secret material in deploy/"


def test_base_is_accepted_by_the_apiserver(
    cluster: ClusterHandle, base: list[dict[str, Any]], system_namespace: str
) -> None:
    run = cluster.kubectl(
        "apply", "-k", str(REPO / "deploy" / "base"), "--dry-run=server", "-o", "name",
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    accepted = set(run.stdout.split())
    assert len(accepted) == len(base), (sorted(accepted), run.stderr)


def test_kind_overlay_is_accepted_and_narrows_the_address_rules(
    cluster: ClusterHandle, system_namespace: str
) -> None:
    """The kind overlay passes the same server-side dry-run, and its webhook and ingest
    NetworkPolicies admit kind's node network instead of every address."""
    kind = render(cluster, REPO / "deploy" / "overlays" / "kind")
    run = cluster.kubectl(
        "apply", "-k", str(REPO / "deploy" / "overlays" / "kind"), "--dry-run=server",
        "-o", "name", check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(set(run.stdout.split())) == len(kind), run.stdout
    for name in ("kopeck-operator-webhook", "kopeck-operator-ingest"):
        (pol,) = [d for d in kind if (d["kind"], d["metadata"]["name"]) == ("NetworkPolicy", name)]
        cidrs = {p["ipBlock"]["cidr"] for r in pol["spec"]["ingress"] for p in r["from"]
                 if "ipBlock" in p}  # fmt: skip
        assert cidrs == {"172.16.0.0/12", "fc00:f853:ccd:e793::/64"}, (name, cidrs)


def test_overlays_and_components_render(cluster: ClusterHandle, tmp_path: Path) -> None:
    kind = render(cluster, REPO / "deploy" / "overlays" / "kind")
    images = {c["image"] for d in kind if d["kind"] in ("Deployment", "DaemonSet")
              for c in d["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {"kopeck:dev"}
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    components = REPO / "deploy" / "components"

    def rel(path: Path) -> str:  # kustomize refuses absolute paths
        return os.path.relpath(path, overlay)

    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(REPO / "deploy" / "base")],
        "components": [rel(components / "prometheus-operator"), rel(components / "cert-manager")],
    }))  # fmt: skip
    docs = render(cluster, overlay)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert len(monitors) == 2
    for m in monitors:  # each selects a metrics Service that has the named port
        sel = m["spec"]["selector"]["matchLabels"]
        hits = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert len(hits) == 1, m["metadata"]["name"]
        ports = {p["name"] for p in hits[0]["spec"]["ports"]}
        assert {e["port"] for e in m["spec"]["endpoints"]} <= ports
    cert = next(d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"]
                == "kopeck-operator-tls")  # fmt: skip
    op = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KOPECK_ADVERTISE_HOST"] in cert["spec"]["dnsNames"]


# ---- static checks over the rendered manifests -----------------------------------------


def test_rbac_rules_have_no_wildcards_or_broad_bindings(base: list[dict[str, Any]]) -> None:
    roles = [d for d in base if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: {rule}"
            assert "secrets" not in rule.get("resources", []), role["metadata"]["name"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    for binding in (d for d in base if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["roleRef"]["name"].startswith("kopeck-"), binding["roleRef"]


def _pod_spec(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return dict(next(d for d in docs if d["kind"] == kind)["spec"]["template"]["spec"])


def test_pod_security(base: list[dict[str, Any]]) -> None:
    op = _pod_spec(base, "Deployment")
    assert not op.get("hostPID") and not op.get("hostNetwork")
    assert op["securityContext"]["runAsNonRoot"] is True
    for c in op["containers"]:
        sc = c["securityContext"]
        assert sc.get("privileged") is not True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
    probe = _pod_spec(base, "DaemonSet")
    for c in probe["containers"]:
        sc = c["securityContext"]
        assert sc.get("privileged") is not True, "the probe is not privileged"
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        added = sc["capabilities"]["add"]
        assert isinstance(added, list) and set(added) == PROBE_CAPS, added
        assert "SYS_ADMIN" not in added
    mounts = {v["name"]: v for v in probe["volumes"]}
    host_paths = {v["hostPath"]["path"] for v in mounts.values() if "hostPath" in v}
    assert host_paths == {"/sys/fs/cgroup", "/var/lib/kopeck"}
    cgroup = next(m for m in probe["containers"][0]["volumeMounts"] if m["name"] == "cgroup")
    assert cgroup["readOnly"] is True
    secret_items = [v["secret"] for v in mounts.values() if "secret" in v]
    assert secret_items and all(s.get("items") == [{"key": "ca.crt", "path": "ca.crt"}]
                                for s in secret_items), "the probe mounts only the CA"  # fmt: skip
    for spec in (op, probe):
        for c in spec["containers"]:
            res = c["resources"]
            wanted = {"cpu", "memory", "ephemeral-storage"}
            assert wanted <= res["requests"].keys() <= res["limits"].keys(), c["name"]
            assert not c["image"].endswith(":latest") and ":" in c["image"]


# ---- RBAC, proven by the apiserver -----------------------------------------------------


OPERATOR_CAN = [
    ("get", "costpolicies.cost.kopeck.io"),
    ("list", "costpolicies.cost.kopeck.io"),
    ("watch", "costpolicies.cost.kopeck.io"),
    ("patch", "costpolicies.cost.kopeck.io", "--subresource=status"),
    ("list", "allocations.cost.kopeck.io", "--all-namespaces"),
    ("create", "allocations.cost.kopeck.io", "-n", "team-a"),
    ("patch", "allocations.cost.kopeck.io", "--subresource=status", "-n", "team-a"),
    ("list", "pods", "--all-namespaces"),
    ("watch", "pods", "--all-namespaces"),
    ("get", "pods", "-n", "team-a"),
    ("list", "nodes"),
    ("watch", "nodes"),
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("get", "persistentvolumeclaims", "-n", "team-a"),
    ("get", "deployments.apps", "-n", "team-a"),
    ("get", "replicasets.apps", "-n", "team-a"),
    ("get", "replicationcontrollers", "-n", "team-a"),
    ("get", "statefulsets.apps", "-n", "team-a"),
    ("get", "daemonsets.apps", "-n", "team-a"),
    ("get", "jobs.batch", "-n", "team-a"),
    ("get", "cronjobs.batch", "-n", "team-a"),
    ("create", "events", "-n", "team-a"),
    ("create", "tokenreviews.authentication.k8s.io"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("get", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{WEBHOOK_CONFIG}"),
    ("update", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{WEBHOOK_CONFIG}"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io/clusterkopfpeerings.kopf.dev"),
    ("list", "clusterkopfpeerings.kopf.dev"),
    ("watch", "clusterkopfpeerings.kopf.dev"),
    ("create", "clusterkopfpeerings.kopf.dev"),
    ("get", "clusterkopfpeerings.kopf.dev/kopeck"),
    ("patch", "clusterkopfpeerings.kopf.dev/kopeck"),
]
OPERATOR_CANNOT = [
    ("*", "*"),
    ("get", "secrets", "-n", NS),
    ("list", "secrets", "--all-namespaces"),
    ("watch", "secrets", "--all-namespaces"),
    ("create", "pods", "-n", "team-a"),
    ("delete", "pods", "-n", "team-a"),
    ("patch", "pods", "-n", "team-a"),
    ("create", "pods/exec", "-n", "team-a"),
    ("update", "deployments.apps", "-n", "team-a"),
    ("patch", "deployments.apps", "--subresource=scale", "-n", "team-a"),
    ("patch", "costpolicies.cost.kopeck.io"),
    ("delete", "costpolicies.cost.kopeck.io"),
    ("delete", "allocations.cost.kopeck.io", "-n", "team-a"),
    ("patch", "nodes"),
    ("create", "namespaces"),
    ("delete", "namespaces"),
    ("get", "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-else"),
    ("update", "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-else"),
    ("delete", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{WEBHOOK_CONFIG}"),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io/costpolicies.cost.kopeck.io"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io/costpolicies.cost.kopeck.io"),
    ("patch", "clusterkopfpeerings.kopf.dev/other"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token", "-n", NS),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts", "-n", NS),
    ("create", "subjectaccessreviews.authorization.k8s.io"),
]
PROBE_CAN = [
    ("list", "pods", "--all-namespaces"),
    ("watch", "pods", "--all-namespaces"),
]
PROBE_CANNOT = [
    ("*", "*"),
    ("get", "secrets", "-n", NS),
    ("list", "secrets", "--all-namespaces"),
    ("get", "pods", "-n", "team-a"),
    ("create", "pods", "-n", "team-a"),
    ("patch", "pods", "-n", "team-a"),
    ("create", "pods/exec", "-n", "team-a"),
    ("list", "nodes"),
    ("get", "costpolicies.cost.kopeck.io"),
    ("patch", "costpolicies.cost.kopeck.io"),
    ("patch", "costpolicies.cost.kopeck.io", "--subresource=status"),
    ("create", "allocations.cost.kopeck.io", "-n", "team-a"),
    ("patch", "allocations.cost.kopeck.io", "--subresource=status", "-n", "team-a"),
    ("create", "events", "-n", "team-a"),
    ("create", "tokenreviews.authentication.k8s.io"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("patch", "clusterkopfpeerings.kopf.dev/kopeck"),
    ("create", "serviceaccounts/token", "-n", NS),
]


def test_rbac_operator(cluster: ClusterHandle, rbac: None) -> None:
    missing = [" ".join(c) for c in OPERATOR_CAN if not can(cluster, OPERATOR, *c)]
    assert not missing, f"the operator lacks: {missing}"
    broad = [" ".join(c) for c in OPERATOR_CANNOT if can(cluster, OPERATOR, *c)]
    assert not broad, f"the operator may: {broad}"


def test_rbac_probe(cluster: ClusterHandle, rbac: None) -> None:
    missing = [" ".join(c) for c in PROBE_CAN if not can(cluster, PROBE, *c)]
    assert not missing, f"the probe lacks: {missing}"
    broad = [" ".join(c) for c in PROBE_CANNOT if can(cluster, PROBE, *c)]
    assert not broad, f"the probe may: {broad}"


def test_can_i_would_catch_a_broad_account(cluster: ClusterHandle, rbac: None) -> None:
    """The refusals above come from the RBAC, not from the check: system:masters may."""
    admin = ["--as-group=system:masters"]
    assert can(cluster, "kt-admin", *admin, "*", "*")
    assert can(cluster, "kt-admin", *admin, "get", "secrets", "-n", NS)


# ---- the operator on its own account ---------------------------------------------------


def _kubeconfig_for_token(cluster: ClusterHandle, token: str, path: Path) -> Path:
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def test_operator_credentials_carry_the_service_account_token(
    cluster: ClusterHandle, rbac: None, tmp_path: Path
) -> None:
    from kopeck.operator.kube import Credentials

    token = cluster.kubectl("create", "token", "kopeck-operator", "-n", NS,
                            "--duration=10m").stdout.strip()  # fmt: skip
    kubeconfig = _kubeconfig_for_token(cluster, token, tmp_path / "operator.kubeconfig")
    assert Credentials.load(str(kubeconfig)).token == token


def test_operator_runs_on_its_service_account(
    cluster: ClusterHandle, rbac: None, tmp_path: Path, namespace: str
) -> None:
    """The base's peering name, webhook configuration name and namespace, the operator's own
    token: everything the active replica does succeeds, and nothing is refused."""
    token = cluster.kubectl("create", "token", "kopeck-operator", "-n", NS,
                            "--duration=1h").stdout.strip()  # fmt: skip
    kubeconfig = _kubeconfig_for_token(cluster, token, tmp_path / "operator.kubeconfig")
    policy = f"kt-deploy-{uuid.uuid4().hex[:6]}"
    op = OperatorProcess(
        kubeconfig=kubeconfig, workdir=tmp_path, namespace=NS,
        probe_accounts=f"{NS}:kopeck-node-probe", webhook_config=WEBHOOK_CONFIG,
        extra=["--peering", "kopeck", "--priority", "100", "--peering-lifetime", "10",
               "--status-interval", "1"],
    )  # fmt: skip
    try:
        cluster.kubectl("apply", "-f", "-", input=policy_manifest(policy, namespace))
        op.start()
        try:
            op.wait_active(timeout=60)
        except TimeoutError as exc:
            raise AssertionError(op.log_tail()) from exc
        # the webhook configuration is created under its fixed name, with our policy
        hooks = _wait(lambda: _webhooks(cluster), lambda h: any(policy in n for n in h), 30)
        assert hooks
        # a probe report, sent with the probe account's token: TokenReview, Allocation
        probe_token = cluster.kubectl("create", "token", "kopeck-node-probe", "-n", NS,
                                      "--duration=10m").stdout.strip()  # fmt: skip
        node = f"kt-deploy-node-{uuid.uuid4().hex[:6]}"
        status, answer = op.post(
            report(node=node, boot_id=uuid.uuid4().hex, seq=1, end=dt.datetime.now(dt.UTC)),
            probe_token,
        )
        assert status == 200 and answer.get("accepted"), (status, answer, op.log_tail())
        allocs = _wait(
            lambda: json.loads(cluster.kubectl("get", "allocations.cost.kopeck.io", "-n", NS,
                                               "-o", "json").stdout)["items"],
            lambda items: any(node in json.dumps(i) for i in items), 30,
        )  # fmt: skip
        assert allocs, op.log_tail()
        # the policy's status is written (status subresource patch)
        st = _wait(
            lambda: json.loads(cluster.kubectl("get", "costpolicies.cost.kopeck.io", policy,
                                               "-o", "json").stdout).get("status") or {},
            lambda s: bool(s.get("conditions")), 30,
        )  # fmt: skip
        assert st.get("conditions"), op.log_tail()
        # a second policy makes the operator replace its configuration (update)
        second = f"{policy}-b"
        cluster.kubectl("apply", "-f", "-", input=policy_manifest(second, namespace))
        hooks = _wait(lambda: _webhooks(cluster), lambda h: any(second in n for n in h), 30)
        assert any(second in n for n in hooks), op.log_tail()
        peering = json.loads(cluster.kubectl("get", "clusterkopfpeerings.kopf.dev", "kopeck",
                                             "-o", "json").stdout)  # fmt: skip
        assert peering.get("status"), "kopf keeps its peers in the peering status"
    finally:
        op.stop()
        for name in (policy, f"{policy}-b"):
            cluster.kubectl("delete", "costpolicies.cost.kopeck.io", name, "--ignore-not-found",
                            check=False)  # fmt: skip
        cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG,
                        "--ignore-not-found", check=False)  # fmt: skip
        cluster.kubectl("delete", "clusterkopfpeerings.kopf.dev", "kopeck", "--ignore-not-found",
                        check=False)  # fmt: skip
    log = op.log_path.read_text(errors="replace") if op.log_path else ""
    # HTTP 403 as a number of its own (a random port such as 40323 is not a refusal)
    refused = [ln for ln in log.splitlines() if re.search(r"\b403\b", ln) or "orbidden" in ln]
    assert not refused, "\n".join(refused[:20])


def _webhooks(cluster: ClusterHandle) -> list[str]:
    run = cluster.kubectl("get", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "-o", "json",
                          check=False)  # fmt: skip
    if run.returncode:
        return []
    return [w["name"] for w in json.loads(run.stdout).get("webhooks") or []]


def _wait(fetch: Any, ok: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.3)
        value = fetch()
    return value


def test_tls_secret_recipe(cluster: ClusterHandle, system_namespace: str, tmp_path: Path) -> None:
    """The README's no-cert-manager recipe makes a Secret the apiserver accepts, with the
    keys the Deployment and DaemonSet mount."""
    from kopeck.operator.tls import ensure_serving_cert

    names = ["kopeck-operator.kopeck-system.svc", "kopeck-operator.kopeck-system.svc.cluster.local"]
    ensure_serving_cert(tmp_path / "tls", names)
    run = cluster.kubectl(
        "create", "secret", "generic", "kopeck-operator-tls", "-n", NS,
        f"--from-file={tmp_path / 'tls'}", "--dry-run=server", "-o", "json",
    )  # fmt: skip
    data = json.loads(run.stdout)["data"]
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls" / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(names)
