"""kopeck's alerting rules: promtool accepts and unit-tests the one source file, the
PrometheusRule carries exactly its groups, and every kopeck_* series a rule reads is one
the operator exports."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import yaml
from prometheus_client import CollectorRegistry

from kopeck.operator import metrics as operator_metrics
from tests.support.prometheus import PROMTOOL, promtool

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "deploy" / "components" / "prometheus-operator"
SOURCE = COMPONENT / "rules" / "kopeck.rules.yaml"
UNIT_TESTS = COMPONENT / "rules" / "kopeck.rules.test.yaml"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kopeck_rules_generate",
                                                  COMPONENT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_is_installed() -> None:
    assert Path(PROMTOOL).exists(), "promtool missing: apt-get install prometheus"


def test_promtool_checks_the_rules() -> None:
    run = promtool("check", "rules", str(SOURCE))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 6 rules found" in run.stdout, run.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    run = promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout, run.stdout


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: an 80% rule moved to 90% fails them."""
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    text = SOURCE.read_text()
    assert text.count(">= 0.8 < 1") == 1
    (tmp_path / SOURCE.name).write_text(text.replace(">= 0.8 < 1", ">= 0.9 < 1"))
    run = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert run.returncode != 0, run.stdout
    assert "KopeckBudgetNearlySpent" in run.stdout + run.stderr


def test_prometheusrule_carries_exactly_the_source_groups() -> None:
    gen = _generator()
    target = COMPONENT / "prometheusrule.yaml"
    assert target.read_text() == gen.render(), (
        "prometheusrule.yaml is stale: run python deploy/components/prometheus-operator/"
        "generate.py")
    rule = yaml.safe_load(target.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(SOURCE.read_text())["groups"]
    kust = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert "prometheusrule.yaml" in kust["resources"]


def test_the_rules_cover_budget_anomaly_silence_and_gaps() -> None:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"]}
    assert alerts == {"KopeckBudgetNearlySpent", "KopeckBudgetExceeded",
                      "KopeckForecastOverBudget", "KopeckSpendAnomalous",
                      "KopeckProbeSilent", "KopeckLedgerGaps"}
    for g in groups:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_rules_read_only_series_the_operator_exports() -> None:
    registry: CollectorRegistry = operator_metrics.REGISTRY
    exposed = {family.name for family in registry.collect()}
    used = set(re.findall(r"\bkopeck_[a-z_]+", SOURCE.read_text()))
    assert used, "no kopeck_* series in the rules"
    assert used <= exposed, sorted(used - exposed)
