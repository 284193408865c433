"""kube-score, the linter platform teams run on manifests, on `kubectl kustomize deploy/base`:
no CRITICAL finding unless the object says why it does not apply (a `kube-score/ignore`
annotation plus `kube-score.kopeck.io/<check>` holding the reason), every ignore still
needed, and the linter really catching what the base fixed.

kube-score is built from the Go module proxy by scripts/build_tools.py (called by
scripts/setup.sh; a first call here builds it, about 40 s); kubectl is the one built with
the control plane."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.localcluster.build import ensure_binaries
from kopeck.localcluster.versions import KUBERNETES_VERSION

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
IGNORE = "kube-score/ignore"
REASON_PREFIX = "kube-score.kopeck.io/"
CRITICAL = 1
WARNING = 5
K8S_MINOR = ".".join(KUBERNETES_VERSION.split(".")[:2])  # v1.35: checks as for our apiserver


@pytest.fixture(scope="module")
def kube_score() -> Path:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tools.py"), "--path", "kube-score"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.strip())


@pytest.fixture(scope="module")
def rendered() -> str:
    kubectl = shutil.which("kubectl") or str(
        ensure_binaries(kube_names=["kubectl"], with_etcd=False).kubectl
    )
    run = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def score(kube_score: Path, manifests: str, *flags: str) -> list[dict[str, Any]]:
    run = subprocess.run(
        [str(kube_score), "score", "-o", "json", f"--kubernetes-version={K8S_MINOR}", *flags, "-"],
        input=manifests, capture_output=True, text=True,
    )  # fmt: skip
    # exit 1 means "a CRITICAL finding", which the tests judge themselves; other codes fail
    assert run.returncode in (0, 1) and run.stdout.startswith("["), run.stderr
    return list(json.loads(run.stdout))


def findings(objects: list[dict[str, Any]], grade: int) -> set[tuple[str, str]]:
    """(object, check id) of every not-skipped check at this grade or worse."""
    return {
        (o["object_name"], c["check"]["id"])
        for o in objects
        for c in o["checks"]
        if not c["skipped"] and c["grade"] <= grade
    }


def describe(objects: list[dict[str, Any]], grade: int) -> str:
    return "\n".join(
        f"{o['object_name']}: {c['check']['id']}: "
        + "; ".join(m["summary"] for m in c.get("comments") or [])
        for o in objects
        for c in o["checks"]
        if not c["skipped"] and c["grade"] <= grade
    )


def _workloads(manifests: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests) if d and "template" in d.get("spec", {})]


def test_the_cached_kube_score_is_the_pinned_release(kube_score: Path) -> None:
    """The cache is keyed by version; the binary there says it is that version (set by the
    build's -ldflags), so a stale or foreign binary at the path fails here."""
    assert kube_score.parent.parent.name == "v1.20.0"
    run = subprocess.run([str(kube_score), "version"], capture_output=True, text=True)
    assert run.returncode == 0 and "kube-score version: v1.20.0," in run.stdout, run.stdout


def test_no_critical_finding_on_the_base(kube_score: Path, rendered: str) -> None:
    objects = score(kube_score, rendered)
    kinds = {o["type_meta"]["kind"] for o in objects}
    assert {"Deployment", "DaemonSet", "NetworkPolicy", "PodDisruptionBudget"} <= kinds, kinds
    assert not findings(objects, CRITICAL), "kube-score CRITICAL:\n" + describe(objects, CRITICAL)


def test_every_ignore_has_a_reason_and_is_needed(kube_score: Path, rendered: str) -> None:
    """An ignored check names its reason beside it, kube-score honours the annotation, and
    without the annotation the check really fails (no stale ignores)."""
    ignored: set[tuple[str, str]] = set()
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        metas = [doc["metadata"]]
        if "template" in doc.get("spec", {}):
            metas.append(doc["spec"]["template"].get("metadata") or {})
        for meta in metas:
            notes = meta.get("annotations") or {}
            for check in filter(None, (c.strip() for c in notes.get(IGNORE, "").split(","))):
                reason = notes.get(REASON_PREFIX + check, "")
                assert len(reason.split()) >= 10, (
                    f"{doc['kind']} {doc['metadata']['name']} ignores kube-score check {check} "
                    f"without a reason: add annotation {REASON_PREFIX}{check}"
                )
                key = f"{doc['kind']}/{doc['apiVersion']}/{doc['metadata'].get('namespace', '')}"
                ignored.add((f"{key}/{doc['metadata']['name']}", check))
    assert ignored, "the base ignores nothing: then drop this test's ignore branch"
    honoured = score(kube_score, rendered)
    skipped = {(o["object_name"], c["check"]["id"]) for o in honoured for c in o["checks"]
               if c["skipped"]}  # fmt: skip
    assert ignored <= skipped, f"kube-score did not skip {sorted(ignored - skipped)}"
    bare = score(kube_score, rendered, "--disable-ignore-checks-annotations")
    stale = ignored - findings(bare, WARNING)
    assert not stale, f"ignored checks that pass anyway (drop the ignore): {sorted(stale)}"


def test_kube_score_catches_what_the_base_fixed(kube_score: Path, rendered: str) -> None:
    """The same base without its NetworkPolicies, PodDisruptionBudget, ephemeral-storage and
    the probe's readinessProbe gets exactly those CRITICAL findings back: the passing test
    above is the fix, not a linter that sees nothing."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    stripped = []
    for doc in copy.deepcopy(docs):
        if doc["kind"] in ("NetworkPolicy", "PodDisruptionBudget"):
            continue
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for part in ("requests", "limits"):
                c["resources"][part].pop("ephemeral-storage", None)
            if doc["kind"] == "DaemonSet":
                c.pop("readinessProbe", None)
        stripped.append(doc)
    objects = score(kube_score, yaml.safe_dump_all(stripped))
    got = findings(objects, CRITICAL)
    op = "Deployment/apps/v1/kopeck-system/kopeck-operator"
    probe = "DaemonSet/apps/v1/kopeck-system/kopeck-node-probe"
    assert got == {
        (op, "pod-networkpolicy"),
        (op, "deployment-has-poddisruptionbudget"),
        (op, "container-ephemeral-storage-request-and-limit"),
        (probe, "pod-networkpolicy"),
        (probe, "container-ephemeral-storage-request-and-limit"),
        (probe, "pod-probes"),
    }, describe(objects, CRITICAL)
    assert len(_workloads(rendered)) == 2
