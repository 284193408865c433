"""Policy matching: namespace selector, workload selector, priority, ties by name."""

from __future__ import annotations

from kopeck.accounting.matching import NamedPolicy, choose_policy, selector_matches
from kopeck.api.common import LabelSelector
from kopeck.api.costpolicy import CostPolicySpec


def _policy(name: str, prio: int, ns: dict[str, str], sel: dict[str, str] | None = None) -> NamedPolicy:
    scope: dict[str, object] = {"namespaceSelector": {"matchLabels": ns}, "priority": prio}
    if sel:
        scope["selector"] = {"matchLabels": sel}
    spec = CostPolicySpec.model_validate(
        {"scope": scope, "pricing": {"rateCard": {"cpuCoreHour": 1, "memoryGiBHour": 1}}}
    )
    return NamedPolicy(name, spec)


def test_selector_semantics() -> None:
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "NotIn", "values": ["batch"]},
            ],
        }
    )
    assert selector_matches(sel, {"team": "a", "env": "prod"})
    assert not selector_matches(sel, {"team": "a", "env": "dev"})
    assert not selector_matches(sel, {"team": "a", "env": "prod", "legacy": "1"})
    assert not selector_matches(sel, {"team": "a", "env": "prod", "tier": "batch"})
    assert selector_matches(LabelSelector(), {})
    assert selector_matches(None, {"x": "y"})


def test_priority_then_name() -> None:
    ns = {"team": "a"}
    broad = _policy("zz-broad", 10, {})
    team_b = _policy("b-team", 50, {"team": "a"})
    team_a = _policy("a-team", 50, {"team": "a"})
    batch = _policy("batch", 100, {"team": "a"}, {"tier": "batch"})
    policies = [broad, team_b, team_a, batch]
    assert choose_policy(policies, ns, {}) is team_a
    assert choose_policy(policies, ns, {"tier": "batch"}) is batch
    assert choose_policy(policies, {"team": "c"}, {}) is broad
    assert choose_policy([team_a], {"team": "c"}, {}) is None
