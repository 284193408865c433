"""Which CostPolicy governs a workload: label selectors, priority, and ties broken by name.

The same function answers for the ingest path, the status writer and the admission
webhook, so a workload is never priced by one policy and enforced by another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kopeck.api.common import LabelSelector
from kopeck.api.costpolicy import CostPolicySpec


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; None and the empty selector match everything."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or []:
        values = set(req.values or [])
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class NamedPolicy:
    """A policy's name with its parsed spec (and generation, for status conventions)."""

    name: str
    spec: CostPolicySpec
    generation: int = 0


def policy_applies(
    policy: NamedPolicy, namespace_labels: Mapping[str, str], workload_labels: Mapping[str, str]
) -> bool:
    """True when the policy's namespace selector and optional workload selector both match."""
    scope = policy.spec.scope
    return selector_matches(scope.namespace_selector, namespace_labels) and selector_matches(
        scope.selector, workload_labels
    )


def choose_policy(
    policies: Iterable[NamedPolicy],
    namespace_labels: Mapping[str, str],
    workload_labels: Mapping[str, str],
) -> NamedPolicy | None:
    """The highest-priority matching policy; among equals the name first in sort order."""
    matching = [p for p in policies if policy_applies(p, namespace_labels, workload_labels)]
    if not matching:
        return None
    return min(matching, key=lambda p: (-p.spec.scope.priority, p.name))


def namespace_in_scope(policy: NamedPolicy, namespace_labels: Mapping[str, str]) -> bool:
    """True when the policy's namespace selector matches (whatever its workload selector)."""
    return selector_matches(policy.spec.scope.namespace_selector, namespace_labels)
