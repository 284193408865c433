"""Turn the pydantic models into CustomResourceDefinitions.

pydantic's JSON schema is close to what the apiserver wants but not structural: it uses
``$ref``/``$defs``, ``anyOf [X, null]`` for optionals, ``title`` everywhere and
``additionalProperties: false``. This module rewrites only those differences, so that the
models stay the single source of truth and ``kopeck crds --check`` catches drift.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import yaml
from pydantic import BaseModel

from kopeck.api.allocation import AllocationSpec, AllocationStatus
from kopeck.api.common import GROUP, VERSION
from kopeck.api.costpolicy import POLICY_NAME_MAX, CostPolicySpec, CostPolicyStatus

_DROP_KEYS = {"title", "additionalProperties"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref (the apiserver does not follow references)."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = copy.deepcopy(defs[name])
            merged.update({k: v for k, v in node.items() if k != "$ref"})
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _coerce_default(value: Any, schema_type: str | None) -> Any:
    """Defaults must validate against their own schema (pydantic writes Decimals as strings)."""
    if schema_type == "string" and isinstance(value, int | float):
        return str(value)
    if schema_type in ("number", "integer") and isinstance(value, str):
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)
    return value


def _structural(node: Any) -> Any:
    """Rewrite one resolved schema node into its structural form."""
    if isinstance(node, list):
        return [_structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    any_of = node.get("anyOf")
    if any_of is not None and not node.get("x-kubernetes-int-or-string"):
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) == 1:
            merged = dict(non_null[0])
            merged.update({k: v for k, v in node.items() if k != "anyOf"})
            merged["nullable"] = True
            return _structural(merged)
    for key, value in node.items():
        if key in _DROP_KEYS and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value)
        elif key == "anyOf":
            # int-or-string: the type lives in the extension, the branches only constrain.
            out[key] = [{k: v for k, v in b.items() if k != "title"} for b in value]
        else:
            out[key] = value
    if "default" in out:
        if out["default"] is None:
            del out["default"]
        else:
            out["default"] = _coerce_default(out["default"], out.get("type"))
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
        out.pop("additionalProperties", None)
    return out


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator only: defaults there would be noise."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def openapi_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    resolved = _resolve(raw, defs)
    result: dict[str, Any] = _structural(resolved)
    return result if defaults else _without_defaults(result)


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    scope: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
    root_rules: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    spec_schema = openapi_schema(spec)
    status_schema = openapi_schema(status, defaults=False)
    spec_schema["description"] = spec.__doc__.strip() if spec.__doc__ else ""
    status_schema["description"] = status.__doc__.strip() if status.__doc__ else ""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kopeck"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            **({"x-kubernetes-validations": root_rules} if root_rules else {}),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def costpolicy_crd() -> dict[str, Any]:
    """The CostPolicy CRD (cluster-scoped)."""
    return _crd(
        kind="CostPolicy",
        plural="costpolicies",
        short="cpol",
        scope="Cluster",
        spec=CostPolicySpec,
        status=CostPolicyStatus,
        description="CostPolicy sets prices, a budget and its enforcement, rightsizing and "
        "anomaly detection for the namespaces it selects.",
        root_rules=[{
            "rule": f"size(self.metadata.name) <= {POLICY_NAME_MAX}",
            "message": f"metadata.name must be at most {POLICY_NAME_MAX} characters: it names "
            "the policy's admission webhook <name>.budget.cost.kopeck.io (at most 253)",
        }],
        columns=[
            {"name": "Budget", "type": "number", "jsonPath": ".spec.budget.amount"},
            {"name": "Period", "type": "string", "jsonPath": ".spec.budget.period"},
            {"name": "Spent", "type": "string", "jsonPath": ".status.spent"},
            {"name": "Forecast", "type": "string", "jsonPath": ".status.forecast"},
            {"name": "Enforcement", "type": "string", "jsonPath": ".spec.budget.enforcement"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def allocation_crd() -> dict[str, Any]:
    """The Allocation CRD (namespaced)."""
    return _crd(
        kind="Allocation",
        plural="allocations",
        short="alloc",
        scope="Namespaced",
        spec=AllocationSpec,
        status=AllocationStatus,
        description="Allocation is the attributed usage and cost of one workload, or of a "
        "namespace in total, over one billing period.",
        columns=[
            {"name": "Period", "type": "string", "jsonPath": ".spec.period.name"},
            {"name": "Kind", "type": "string", "jsonPath": ".spec.workloadRef.kind",
             "priority": 1},
            {"name": "CPU", "type": "string", "jsonPath": ".status.summary.cpu"},
            {"name": "Memory", "type": "string", "jsonPath": ".status.summary.memory"},
            {"name": "Network", "type": "string", "jsonPath": ".status.summary.network"},
            {"name": "Cost", "type": "string", "jsonPath": ".status.summary.cost"},
            {"name": "Efficiency", "type": "string", "jsonPath": ".status.summary.efficiency"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD document, for ``kopeck crds``."""
    return {"costpolicy.yaml": costpolicy_crd(), "allocation.yaml": allocation_crd()}


def render(crd: dict[str, Any]) -> str:
    """YAML text of a CRD, stable so that ``--check`` compares byte for byte."""
    header = "# GENERATED by `kopeck crds` from kopeck.api — do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)
