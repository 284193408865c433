"""One unusable CostPolicy must not switch off the others: webhook entries are checked one by
one, a refused entry is left out with Ready=False, and a status that cannot be computed sets
a condition instead of stopping the loop or flooding the log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

import pytest

from kopeck.accounting.matching import NamedPolicy
from kopeck.api.costpolicy import SelectorRequirement
from kopeck.operator import costpolicies
from kopeck.operator.costpolicies import compute_status, remember, write_status
from kopeck.operator.kube import ApiError, Credentials, Kube
from kopeck.operator.settings import Settings
from kopeck.operator.state import PolicyEntry, State
from kopeck.operator.webhook import desired_webhooks, refused_by_server, refused_policy
from kopeck.operator.workloads import OwnerResolver
from tests.support.operator import policy_manifest

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)


def _state() -> State:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    return State(Settings(namespace="ops"), kube, OwnerResolver(kube))


def _broken(state: State, name: str) -> None:
    """A policy whose selector slipped past validation (e.g. stored before the schema)."""
    good = json.loads(policy_manifest(name, "lab"))
    remember(state, good)
    spec = state.policies[name].named.spec
    bad_sel = spec.scope.namespace_selector.model_copy(update={"match_expressions": [
        SelectorRequirement.model_construct(key="team", operator="In", values=[])
    ]})
    bad_spec = spec.model_copy(update={"scope": spec.scope.model_copy(
        update={"namespace_selector": bad_sel})})
    entry = state.policies[name]
    state.policies[name] = PolicyEntry(NamedPolicy(name, bad_spec, 1), entry.status)


@pytest.fixture(autouse=True)
def _clean() -> None:
    costpolicies.not_enforced.clear()
    refused_by_server.clear()
    costpolicies._logged_errors.clear()


def test_broken_selector_is_left_out_and_the_others_stay() -> None:
    state = _state()
    remember(state, json.loads(policy_manifest("good", "shop")))
    _broken(state, "broken")
    hooks = [h["name"] for h in desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")]
    assert hooks == ["good.budget.cost.kopeck.io"]
    why = costpolicies.not_enforced["broken"]
    assert "spec.scope.namespaceSelector.matchExpressions[0].values" in why
    assert "non-empty for operator In" in why
    status, events = compute_status(state, state.policies["broken"], NOW, NOW.timestamp())
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NotEnforced"
    assert "matchExpressions[0].values" in ready["message"]
    assert [e[0] for e in events if e[0] == "NotEnforced"] == ["NotEnforced"]
    good, _ = compute_status(state, state.policies["good"], NOW, NOW.timestamp())
    assert next(c for c in good["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_entry_the_apiserver_refuses_is_found_and_left_out_until_changed() -> None:
    state = _state()
    for name in ("a", "b", "c"):
        remember(state, json.loads(policy_manifest(name, name)))
    hooks = desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")
    exc = ApiError(422, {"message": 'ValidatingWebhookConfiguration "kopeck" is invalid: '
                         "webhooks[1].namespaceSelector.matchExpressions[0].values: Required"},
                   "PUT x")
    assert refused_policy(hooks, exc) == "b"
    refused_by_server["b"] = (state.policies["b"].named.generation, str(exc))
    names = [h["name"] for h in desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")]
    assert names == ["a.budget.cost.kopeck.io", "c.budget.cost.kopeck.io"]
    assert "webhooks[1]" in costpolicies.not_enforced["b"]
    changed = json.loads(policy_manifest("b", "b"))
    changed["metadata"]["generation"] = 7
    remember(state, changed)
    names = [h["name"] for h in desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")]
    assert "b.budget.cost.kopeck.io" in names and "b" not in costpolicies.not_enforced


class _Kube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((path, body))
        return {"status": body["status"], "metadata": {"resourceVersion": "2", "uid": "u"}}


def test_status_error_sets_a_condition_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state()
    remember(state, json.loads(policy_manifest("flaky", "shop")))
    fake = _Kube()
    state.kube = fake  # type: ignore[assignment]

    def boom(*_: Any) -> Any:
        raise ArithmeticError("decimal overflow in forecast")

    monkeypatch.setattr(costpolicies, "forecast", boom)
    caplog.set_level(logging.ERROR, "kopeck.costpolicies")
    for _ in range(3):
        asyncio.run(write_status(state, state.policies["flaky"], NOW))
    ready = next(c for c in fake.patches[0][1]["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "StatusError"
    assert "decimal overflow in forecast" in ready["message"]
    assert len(fake.patches) == 1, "an unchanged failed status is not rewritten"
    assert sum("flaky" in r.getMessage() for r in caplog.records) == 1
