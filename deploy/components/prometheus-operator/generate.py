"""Write prometheusrule.yaml from rules/kopeck.rules.yaml (the one source of the alerts).

    python deploy/components/prometheus-operator/generate.py          # rewrite
    python deploy/components/prometheus-operator/generate.py --check  # exit 1 when stale

promtool checks and unit-tests the source file; the PrometheusRule carries the same groups
for clusters with the Prometheus Operator. tests/unit/test_prometheus_rules.py fails when
the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "rules" / "kopeck.rules.yaml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from rules/kopeck.rules.yaml by generate.py: edit that file, then run\n"
    "#   python deploy/components/prometheus-operator/generate.py\n"
    "# Prometheus selects PrometheusRules by label (spec.ruleSelector): add the labels\n"
    "# your Prometheus expects (e.g. release: <helm release>) in an overlay.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, as written by hand."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule object carrying `groups`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kopeck",
            "namespace": "kopeck-system",
            "labels": {"app.kubernetes.io/name": "kopeck-operator",
                       "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": groups},
    }


def render(source: Path = SOURCE) -> str:
    """The text prometheusrule.yaml must have."""
    groups = yaml.safe_load(source.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=1000)
    return HEADER + body


def main(argv: list[str]) -> int:
    """Rewrite the PrometheusRule, or with --check say whether it is stale."""
    text = render()
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python {Path(__file__)}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
