"""kopeck's CRDs through a real kube-apiserver: examples apply, bad specs are refused with a
message naming the field, printer columns and `kubectl explain` show what users read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kopeck.api.allocation import AllocationStatus
from kopeck.api.costpolicy import Budget, CostPolicySpec
from kopeck.localcluster.handle import ClusterHandle

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

Spec = dict[str, Any]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _assert_subset(want: Any, got: Any, path: str = "spec") -> None:
    """Everything the file says is stored as written (the server may add defaults)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: expected an object, got {got!r}"
        for key, value in want.items():
            assert key in got, f"{path}.{key} missing after the round trip"
            _assert_subset(value, got[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            _assert_subset(w, g, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: stored {got!r}, file says {want!r}"


def test_there_are_enough_examples() -> None:
    """The issue asks for at least four realistic policies."""
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES]
    assert kinds.count("CostPolicy") >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_valid_for_the_models(path: Path) -> None:
    """The operator reads examples with the same models the CRDs come from."""
    CostPolicySpec.model_validate(yaml.safe_load(path.read_text())["spec"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_applies_and_reads_back(cluster: ClusterHandle, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    name = doc["metadata"]["name"]
    try:
        out = cluster.kubectl("apply", "-f", str(path))
        assert "created" in out.stdout or "configured" in out.stdout or "unchanged" in out.stdout
        stored = json.loads(cluster.kubectl("get", "costpolicy", name, "-o", "json").stdout)
        _assert_subset(doc["spec"], stored["spec"])
        CostPolicySpec.model_validate(stored["spec"])
    finally:
        cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found")


def _base_policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cost.kopeck.io/v1alpha1",
        "kind": "CostPolicy",
        "metadata": {"name": name},
        "spec": {
            "scope": {"namespaceSelector": {"matchLabels": {"team": "a"}}},
            "pricing": {"rateCard": {"cpuCoreHour": 0.031611, "memoryGiBHour": 0.004237}},
            "budget": {"amount": 100, "thresholds": [50, 80, 100], "enforcement": "Deny"},
            "rightsizing": {"mode": "Propose"},
        },
    }


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _drop(key: str) -> Callable[[Spec], None]:
    return lambda spec: spec.pop(key)


# (id, mutation of a valid spec, the field the message must name, words it must contain)
INVALID: list[tuple[str, Callable[[Spec], None], str, str]] = [
    ("amount-wrong-type", _set("budget.amount", "lots"), "spec.budget.amount", "type number"),
    ("amount-negative", _set("budget.amount", -5), "spec.budget.amount", "greater than 0"),
    ("amount-zero", _set("budget.amount", 0), "spec.budget.amount", "greater than 0"),
    ("enforcement-unknown", _set("budget.enforcement", "Block"), "spec.budget.enforcement",
     'supported values: "Deny", "Warn", "Audit"'),
    ("period-unknown", _set("budget.period", "Yearly"), "spec.budget.period", "Unsupported"),
    ("thresholds-out-of-order", _set("budget.thresholds", [80, 50]), "spec.budget.thresholds",
     "ascending order"),
    ("threshold-over-100", _set("budget.thresholds", [50, 120]), "spec.budget.thresholds[1]",
     "less than or equal to 100"),
    ("thresholds-not-a-list", _set("budget.thresholds", "50,80"), "spec.budget.thresholds",
     "type array"),
    ("pricing-missing", _drop("pricing"), "spec.pricing", "Required value"),
    ("pricing-without-rates", _set("pricing", {"currency": "USD"}), "spec.pricing",
     "needs a rateCard, a priceBook, or both"),
    ("rate-negative", _set("pricing.rateCard.cpuCoreHour", -0.1),
     "spec.pricing.rateCard.cpuCoreHour", "greater than or equal to 0"),
    ("price-book-empty", _set("pricing.priceBook", {"instanceTypes": {}}),
     "spec.pricing.priceBook.instanceTypes", "at least 1"),
    ("currency-lowercase", _set("pricing.currency", "usd"), "spec.pricing.currency", "should match"),
    ("quantity-bad", _set("rightsizing.minCpu", "lots"), "spec.rightsizing.minCpu", "should match"),
    ("duration-bad", _set("rightsizing.historyWindow", "a week"),
     "spec.rightsizing.historyWindow", "should match"),
    ("percentile-too-low", _set("rightsizing.cpuPercentile", 30),
     "spec.rightsizing.cpuPercentile", "greater than or equal to 50"),
    ("selector-empty", _set("scope.selector", {}), "spec.scope.selector", "must not be empty"),
    ("priority-wrong-type", _set("scope.priority", "high"), "spec.scope.priority", "type integer"),
    ("window-start-after-end", _set("windows", [{"start": "18:00", "end": "09:00"}]),
     "spec.windows[0]", "start must be before end"),
    ("window-bad-time", _set("windows", [{"start": "25:00", "end": "26:00"}]),
     "spec.windows[0].start", "should match"),
    ("window-bad-day", _set("windows", [{"start": "08:00", "end": "09:00", "days": ["Monday"]}]),
     "spec.windows[0].days[0]", '"Mon"'),
    ("unknown-field", _set("budget.limit", 5), "spec.budget.limit", "unknown field"),
]  # fmt: skip

# What the operator could not use (a selector the apiserver refuses in the webhook
# configuration, a number that breaks the arithmetic): refused by the schema AND the models.
UNUSABLE: list[tuple[str, Callable[[Spec], None], str, str]] = [
    ("selector-in-without-values",
     _set("scope.namespaceSelector", {"matchExpressions": [{"key": "team", "operator": "In"}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].values", "non-empty for operator In"),
    ("selector-in-empty-values", _set("scope.namespaceSelector", {
        "matchExpressions": [{"key": "team", "operator": "In", "values": []}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].values", "non-empty for operator In"),
    ("selector-exists-with-values", _set("scope.namespaceSelector", {
        "matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].values", "left out"),
    ("selector-operator-unknown", _set("scope.namespaceSelector", {
        "matchExpressions": [{"key": "team", "operator": "Like", "values": ["a"]}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].operator", "Unsupported"),
    ("selector-key-bad", _set("scope.namespaceSelector", {
        "matchExpressions": [{"key": "bad key!", "operator": "Exists"}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].key", "should match"),
    ("selector-key-prefix-too-long", _set("scope.selector", {
        "matchExpressions": [{"key": "a" * 254 + "/x", "operator": "Exists"}]}),
     "spec.scope.selector.matchExpressions[0].key", "prefix before '/'"),
    ("selector-label-value-too-long",
     _set("scope.namespaceSelector", {"matchLabels": {"team": "a" * 64}}),
     "spec.scope.namespaceSelector.matchLabels.team", "may not be more than 63"),
    ("selector-value-bad", _set("scope.namespaceSelector", {
        "matchExpressions": [{"key": "team", "operator": "In", "values": ["-a-"]}]}),
     "spec.scope.namespaceSelector.matchExpressions[0].values[0]", "should match"),
    ("exemption-namespace-bad", _set("exemptions", {"namespaces": ["Not_A_Namespace"]}),
     "spec.exemptions.namespaces[0]", "should match"),
    ("instance-type-bad", _set("pricing.priceBook", {"instanceTypes": {"m5 large!": 1}}),
     "spec.pricing.priceBook.instanceTypes", "label values"),
    ("amount-huge", _set("budget.amount", 1e300), "spec.budget.amount", "less than or equal to"),
    ("rate-huge", _set("pricing.rateCard.cpuCoreHour", 1e300),
     "spec.pricing.rateCard.cpuCoreHour", "less than or equal to"),
    ("multiplier-huge", _set("anomaly.staticThresholdMultiplier", 1e300),
     "spec.anomaly.staticThresholdMultiplier", "less than or equal to"),
    ("min-samples-huge", _set("rightsizing.minSamples", 10**12),
     "spec.rightsizing.minSamples", "less than or equal to"),
    ("quantity-exponent", _set("rightsizing.minCpu", "1e999999"),
     "spec.rightsizing.minCpu", "should match"),
    ("duration-huge", _set("rightsizing.historyWindow", "99999999999w"),
     "spec.rightsizing.historyWindow", "should match"),
    ("time-zone-bad", _set("windows", [{"start": "08:00", "end": "09:00", "timeZone": "a b"}]),
     "spec.windows[0].timeZone", "should match"),
]  # fmt: skip
INVALID += UNUSABLE


def test_base_policy_is_accepted(cluster: ClusterHandle) -> None:
    """The invalid cases below differ from this accepted one only by their mutation."""
    name = _unique("valid")
    try:
        cluster.apply(yaml.safe_dump(_base_policy(name)))
    finally:
        cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found")


def test_policy_name_too_long_for_its_webhook_is_refused(cluster: ClusterHandle) -> None:
    """<name>.budget.cost.kopeck.io must fit the 253 characters of a webhook name."""
    name = "n" * 232
    out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_base_policy(name)),
                          check=False)
    assert out.returncode != 0, out.stdout
    assert "at most 231 characters" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in UNUSABLE],
)
def test_invalid_policy_is_refused_by_the_models_too(
    mutate: Callable[[Spec], None], field: str, words: str
) -> None:
    """The operator reads specs with the same rules: what the schema refuses, so do they."""
    doc = _base_policy("x")
    mutate(doc["spec"])
    with pytest.raises(ValueError):
        CostPolicySpec.model_validate(doc["spec"])


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in INVALID],
)
def test_invalid_policy_is_refused_naming_the_field(
    cluster: ClusterHandle, mutate: Callable[[Spec], None], field: str, words: str
) -> None:
    name = _unique("invalid")
    doc = _base_policy(name)
    mutate(doc["spec"])
    try:
        out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert out.returncode != 0, f"accepted: {out.stdout}"
        assert field in out.stderr, out.stderr
        assert words in out.stderr, out.stderr
        got = cluster.kubectl("get", "costpolicy", name, "--ignore-not-found", "-o", "name")
        assert got.stdout.strip() == "", "refused object must not exist"
    finally:
        cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found")


def _table(text: str) -> list[dict[str, str]]:
    """Parse kubectl's column output (columns separated by 2+ spaces, blanks kept)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            cells.append(line[start:end].strip())
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def test_allocation_printer_columns(cluster: ClusterHandle, namespace: str) -> None:
    name = "deployment-checkout"
    alloc = {
        "apiVersion": "cost.kopeck.io/v1alpha1",
        "kind": "Allocation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "workloadRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "checkout",
                "namespace": namespace,
            },
            "period": {
                "name": "2026-11",
                "start": "2026-11-01T00:00:00Z",
                "end": "2026-12-01T00:00:00Z",
            },
            "policyRef": {"name": "team-payments"},
        },
    }
    cluster.apply(yaml.safe_dump(alloc))
    status = {
        "phase": "Open",
        "usage": {"cpuCoreSeconds": 7200.5, "memoryByteSeconds": 1.2e13},
        "cost": {"currency": "USD", "cpu": "0.063222", "memory": "0.012", "total": "0.075222"},
        "summary": {
            "cpu": "2.00 core-h",
            "memory": "3.1 GiB-h",
            "network": "12 MiB",
            "cost": "0.08 USD",
            "efficiency": "41%",
        },
    }
    AllocationStatus.model_validate(status)  # what we write is what the operator would write
    cluster.kubectl(
        "patch", "allocation", name, "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip
    out = cluster.kubectl("get", "allocations", "-A")
    header = out.stdout.splitlines()[0].split()
    for column in ("NAMESPACE", "NAME", "PERIOD", "CPU", "MEMORY", "NETWORK", "COST",
                   "EFFICIENCY", "AGE"):  # fmt: skip
        assert column in header, out.stdout
    rows = [r for r in _table(out.stdout) if r["NAMESPACE"] == namespace]
    assert rows == [
        {
            "NAMESPACE": namespace,
            "NAME": name,
            "PERIOD": "2026-11",
            "CPU": "2.00 core-h",
            "MEMORY": "3.1 GiB-h",
            "NETWORK": "12 MiB",
            "COST": "0.08 USD",
            "EFFICIENCY": "41%",
            "AGE": rows[0]["AGE"],
        }
    ], out.stdout
    short = cluster.kubectl("get", "alloc", "-n", namespace, "-o", "wide")
    assert "Deployment" in short.stdout and "Open" in short.stdout, short.stdout
    by_category = cluster.kubectl("get", "kopeck", "-n", namespace)
    assert name in by_category.stdout, by_category.stdout


def test_costpolicy_printer_columns(cluster: ClusterHandle) -> None:
    name = _unique("columns")
    doc = _base_policy(name)
    doc["spec"]["budget"].update({"amount": 1200, "period": "Weekly", "enforcement": "Warn"})
    try:
        cluster.apply(yaml.safe_dump(doc))
        cluster.kubectl(
            "patch", "costpolicy", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"spent": "312.50", "forecast": "1388.10"}}),
        )  # fmt: skip
        out = cluster.kubectl("get", "cpol", name)
        rows = _table(out.stdout)
        assert rows == [
            {
                "NAME": name,
                "BUDGET": "1200",
                "PERIOD": "Weekly",
                "SPENT": "312.50",
                "FORECAST": "1388.10",
                "ENFORCEMENT": "Warn",
                "AGE": rows[0]["AGE"],
            }
        ], out.stdout
    finally:
        cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found")


def test_status_is_a_subresource(cluster: ClusterHandle) -> None:
    """A user editing spec cannot forge status: apply ignores it, only /status writes it."""
    name = _unique("status")
    doc = _base_policy(name)
    doc["status"] = {"spent": "0.01"}
    try:
        cluster.apply(yaml.safe_dump(doc))
        stored = json.loads(cluster.kubectl("get", "cpol", name, "-o", "json").stdout)
        assert "spent" not in stored.get("status", {})
    finally:
        cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found")


def _words(text: str) -> str:
    return " ".join(text.split())


def test_explain_shows_the_model_descriptions(cluster: ClusterHandle) -> None:
    out = _words(cluster.kubectl("explain", "costpolicy.spec.budget").stdout)
    assert "FIELD: budget" in out, out
    for field_name in ("amount", "period", "thresholds", "enforcement", "failure_policy"):
        info = Budget.model_fields[field_name]
        assert info.description, f"Budget.{field_name} has no docstring"
        assert _words(info.description) in out, f"{field_name}: {info.description!r} not in {out}"
    deep = _words(cluster.kubectl("explain", "costpolicy.spec.budget.enforcement").stdout)
    assert "Deny refuses changes" in deep and "Audit" in deep, deep


def test_crds_are_up_to_date_with_the_models() -> None:
    """`kopeck crds --check` fails when crds/ differs from what the models generate."""
    out = subprocess.run(
        [sys.executable, "-m", "kopeck.cli", "crds", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
