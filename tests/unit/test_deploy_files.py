"""deploy/ files that must follow the code: CRD copies, kopf's peering CRD, the dashboard's
metric names, the settings the manifests pass to the operator and the probe, the
NetworkPolicies against the ports the pods open, and the probe's readiness command run
against the probe's real /metrics."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, start_http_server

from kopeck.api.crdgen import all_crds, render
from kopeck.operator import metrics as operator_metrics
from kopeck.operator.leader import PEERING_CRD
from kopeck.operator.settings import Settings
from kopeck_probe import cmd as probe_cmd
from kopeck_probe.metrics import ProbeMetrics, registry_with

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
CORE_FAMILIES = {
    "kopeck_policy_spent", "kopeck_policy_forecast", "kopeck_policy_budget",
    "kopeck_spend_anomalous", "kopeck_spend_anomalies", "kopeck_admissions",
    "kopeck_admission_seconds", "kopeck_reports", "kopeck_ingest_seconds",
    "kopeck_operator_active", "kopeck_pod_cpu_seconds", "kopeck_pod_memory_working_set_bytes",
    "kopeck_pod_network_bytes", "kopeck_probe_push_lag_seconds", "kopeck_probe_reports_buffered",
    "kopeck_probe_reports_dropped", "kopeck_probe_pushes", "kopeck_probe_push_failures",
    "kopeck_probe_sample_duration_seconds", "kopeck_probe_read_errors",
}  # fmt: skip
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def _docs(path: Path) -> Iterator[dict[str, Any]]:
    yield from (d for d in yaml.safe_load_all(path.read_text()) if d)


def _container(kind: str, name: str) -> dict[str, Any]:
    for path in BASE.glob("*.yaml"):
        for doc in _docs(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return dict(doc["spec"]["template"]["spec"]["containers"][0])
    raise AssertionError(f"no {kind} {name} in deploy/base")


def test_crd_copies_match_the_models() -> None:
    """deploy/base/crds/ is `kopeck crds --dir deploy/base/crds`: stale copies fail here."""
    for name, crd in all_crds().items():
        copy = BASE / "crds" / name
        assert copy.exists(), f"{copy} missing: run `kopeck crds --dir deploy/base/crds`"
        assert copy.read_text() == render(crd), (
            f"{copy} is stale: run `kopeck crds --dir deploy/base/crds` and commit it"
        )
        assert copy.read_text() == (REPO / "crds" / name).read_text()


def test_peering_crd_is_the_one_the_operator_would_create() -> None:
    (doc,) = _docs(BASE / "crds" / "clusterkopfpeering.yaml")
    assert doc == PEERING_CRD


def test_kustomization_lists_every_file() -> None:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = {BASE / r for r in kust["resources"]}
    present = {p for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present


def _exposed_names() -> set[str]:
    regs: list[CollectorRegistry] = [operator_metrics.REGISTRY, registry_with(ProbeMetrics())]
    names: set[str] = set()
    for reg in regs:
        for family in reg.collect():
            for suffix in SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
    return names


def test_dashboard_queries_only_real_metrics() -> None:
    dash = json.loads((BASE / "dashboards" / "kopeck.json").read_text())
    exposed = _exposed_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        used |= set(re.findall(r"\bkopeck_[a-z_]+", expr))
    unknown = used - exposed
    assert not unknown, f"the dashboard queries metrics nobody exposes: {sorted(unknown)}"
    # the figures a user opens the dashboard for are all on it
    shown = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in used}
    missing = CORE_FAMILIES - shown
    assert not missing, sorted(missing)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_operator_env_names_real_settings() -> None:
    """Every KOPECK_* the Deployment sets is a flag of `kopeck operator`."""
    known = {"KOPECK_" + f.upper() for f in Settings.__dataclass_fields__}
    env = {e["name"] for e in _container("Deployment", "kopeck-operator")["env"]}
    assert {e for e in env if e.startswith("KOPECK_")} <= known
    assert {"KOPECK_PEERING", "KOPECK_CERT_DIR", "KOPECK_ADVERTISE_HOST"} <= env


def test_operator_ports_match_settings() -> None:
    ports = {p["name"]: p["containerPort"]
             for p in _container("Deployment", "kopeck-operator")["ports"]}  # fmt: skip
    s = Settings()
    assert ports == {"ingest": s.ingest_port, "webhook": s.webhook_port,
                     "http-metrics": s.health_port}  # fmt: skip


def test_probe_args_parse() -> None:
    """The DaemonSet's arguments are valid `kopeck probe` flags and a valid ProbeConfig."""
    c = _container("DaemonSet", "kopeck-node-probe")
    assert c["args"][0] == "probe"
    parser = argparse.ArgumentParser()
    probe_cmd.add_arguments(parser)
    args = parser.parse_args(c["args"][1:])
    args.node_name = "node-a"
    cfg = probe_cmd.config_from_args(args)
    assert cfg.cgroup_base == Path("/host/sys/fs/cgroup")
    assert str(cfg.wal_path).startswith("/var/lib/kopeck/")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/host/sys/fs/cgroup", "/var/lib/kopeck"} <= mounts
    assert cfg.ca_file is not None and str(cfg.ca_file.parent) in mounts
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["KOPECK_INGEST_URL"]["value"].endswith(":8443/v1/reports")


def test_images_carry_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for kind, name in (("Deployment", "kopeck-operator"), ("DaemonSet", "kopeck-node-probe")):
        assert _container(kind, name)["image"] == f"kopeck:{version}"


def _all_docs() -> list[dict[str, Any]]:
    return [d for path in sorted(BASE.glob("*.yaml")) for d in _docs(path)]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the only form used here
    return dict(selector.get("matchLabels", {})).items() <= labels.items()


def test_network_policies_admit_each_port_from_its_callers() -> None:
    """Each port a kopeck pod opens is admitted by a policy selecting that pod, by the named
    port the container declares; metrics only from labelled namespaces, ingest from the
    probe pods, and no policy selects nothing."""
    docs = _all_docs()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    scraper = {"namespaceSelector": {"matchLabels": {"kopeck.io/metrics-scraper": "true"}}}
    probe_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kopeck-node-probe"}}}
    for pol in policies:
        assert pol["metadata"]["namespace"] == "kopeck-system"
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        sel = pol["spec"]["podSelector"]
        assert any(_selects(sel, w["spec"]["template"]["metadata"]["labels"]) for w in workloads)
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        admitted: dict[str, list[dict[str, Any]]] = {}
        for pol in mine:
            for rule in pol["spec"]["ingress"]:
                assert rule["from"], f"{pol['metadata']['name']}: a rule without `from` admits all"
                for port in rule["ports"]:
                    admitted.setdefault(port["port"], []).extend(rule["from"])
        declared = {p["name"] for c in w["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])}  # fmt: skip
        assert set(admitted) == declared, (w["metadata"]["name"], admitted, declared)
        assert admitted["http-metrics"] == [scraper], w["metadata"]["name"]
    op = next(w for w in workloads if w["kind"] == "Deployment")
    op_labels = op["spec"]["template"]["metadata"]["labels"]
    by_port = {r["ports"][0]["port"]: r["from"] for p in policies
               if _selects(p["spec"]["podSelector"], op_labels)
               for r in p["spec"]["ingress"]}  # fmt: skip
    assert probe_pods in by_port["ingest"]
    assert all(set(peer) == {"ipBlock"} for peer in by_port["webhook"]), by_port["webhook"]


def test_pdb_selects_the_operator() -> None:
    docs = _all_docs()
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    op = next(d for d in docs if d["kind"] == "Deployment")
    assert pdb["spec"]["minAvailable"] == 1 and op["spec"]["replicas"] == 2
    assert pdb["spec"]["selector"] == op["spec"]["selector"]


def test_probe_readiness_waits_for_the_first_sampling_cycle() -> None:
    """The DaemonSet's readiness command, run against the probe's own /metrics (the same
    collectors `kopeck probe` serves): not Ready before a cycle, Ready after one."""
    c = _container("DaemonSet", "kopeck-node-probe")
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == "http-metrics"]
    assert f"--metrics-port={port}" in c["args"]
    argv = c["readinessProbe"]["exec"]["command"]
    assert argv[:2] == ["python3", "-c"]
    url = f"http://127.0.0.1:{port}/metrics"
    assert url in argv[2], "the readiness command reads the probe's metrics port"
    metrics = ProbeMetrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry_with(metrics))
    try:
        script = argv[2].replace(url, f"http://127.0.0.1:{server.server_port}/metrics")

        def ready() -> bool:
            run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
            assert run.returncode in (0, 1), run.stderr
            return run.returncode == 0

        assert not ready()
        metrics.health.cycles = 1
        assert ready()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert run.returncode == 1, "no server: not Ready"
