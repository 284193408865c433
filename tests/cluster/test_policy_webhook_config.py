"""The webhook configuration the operator builds is accepted by the real apiserver even when
one policy's selector is unusable: that policy is left out, the others are enforced."""

from __future__ import annotations

import json

from kopeck.accounting.matching import NamedPolicy
from kopeck.api.costpolicy import SelectorRequirement
from kopeck.localcluster.handle import ClusterHandle
from kopeck.operator import costpolicies
from kopeck.operator.costpolicies import remember
from kopeck.operator.kube import Credentials, Kube
from kopeck.operator.settings import Settings
from kopeck.operator.state import PolicyEntry, State
from kopeck.operator.webhook import desired_webhooks
from kopeck.operator.workloads import OwnerResolver
from tests.support.operator import policy_manifest


def test_broken_policy_does_not_make_the_configuration_fail(cluster: ClusterHandle) -> None:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    state = State(Settings(namespace="ops"), kube, OwnerResolver(kube))
    remember(state, json.loads(policy_manifest("good-deny", "shop", enforcement="Deny")))
    remember(state, json.loads(policy_manifest("broken", "lab")))
    spec = state.policies["broken"].named.spec
    sel = spec.scope.namespace_selector.model_copy(update={"match_expressions": [
        SelectorRequirement.model_construct(key="team", operator="In", values=[])]})
    bad = spec.model_copy(update={"scope": spec.scope.model_copy(
        update={"namespace_selector": sel})})
    state.policies["broken"] = PolicyEntry(NamedPolicy("broken", bad, 1))
    costpolicies.not_enforced.clear()
    hooks = desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kopeck-isolation-test"},
        "webhooks": hooks,
    }
    try:
        out = cluster.kubectl("apply", "-f", "-", input=json.dumps(config), check=False)
        assert out.returncode == 0, out.stderr
        stored = json.loads(cluster.kubectl(
            "get", "validatingwebhookconfiguration", "kopeck-isolation-test", "-o", "json"
        ).stdout)
        assert [w["name"] for w in stored["webhooks"]] == ["good-deny.budget.cost.kopeck.io"]
        assert "matchExpressions[0].values" in costpolicies.not_enforced["broken"]
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", "kopeck-isolation-test",
                        "--ignore-not-found")
