"""Operator pieces without a cluster: settings, leadership rule, conditions, webhook config."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from decimal import Decimal

import pytest

from kopeck.accounting.budget import Projection
from kopeck.accounting.ledger import WorkloadKey
from kopeck.operator.conditions import condition_true, set_condition
from kopeck.operator.costpolicies import remember
from kopeck.operator.kube import Credentials, Kube, resource_path
from kopeck.operator.leader import is_leader
from kopeck.operator.settings import Settings
from kopeck.operator.state import State
from kopeck.operator.tls import ensure_serving_cert
from kopeck.operator.webhook import deny_message, desired_webhooks
from kopeck.operator.workloads import OwnerResolver
from tests.support.operator import policy_manifest

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)


def test_settings_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOPECK_INGEST_PORT", "9999")
    monkeypatch.setenv("KOPECK_SHARE_IDLE", "true")
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    s = Settings.from_args(parser.parse_args(["--probe-service-accounts", "a:p, b:q"]))
    assert s.ingest_port == 9999 and s.share_idle is True
    assert s.probe_accounts == {"system:serviceaccount:a:p", "system:serviceaccount:b:q"}
    assert Settings.from_args(parser.parse_args(["--no-share-idle"])).share_idle is False


def test_leadership_follows_kopf_rule() -> None:
    fresh = NOW.isoformat()
    stale = (NOW - dt.timedelta(seconds=120)).isoformat()
    me = {"priority": 10, "lifetime": 60, "lastseen": fresh}
    assert is_leader({"me": me}, "me", 10, NOW)
    assert not is_leader({"me": me, "hi": {"priority": 20, "lifetime": 60, "lastseen": fresh}},
                         "me", 10, NOW)
    assert not is_leader({"me": me, "tie": {"priority": 10, "lifetime": 60, "lastseen": fresh}},
                         "me", 10, NOW)
    assert is_leader({"me": me, "dead": {"priority": 99, "lifetime": 60, "lastseen": stale}},
                     "me", 10, NOW)
    assert not is_leader({}, "me", 10, NOW)  # not registered yet


def test_conditions_move_transition_time_only_on_change() -> None:
    conds: list[dict[str, object]] = []
    assert set_condition(conds, "Ready", True, "Ok", "fine", NOW, 3)
    later = NOW + dt.timedelta(minutes=5)
    assert not set_condition(conds, "Ready", True, "Ok", "still fine", later, 4)
    assert conds[0]["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert conds[0]["observedGeneration"] == 4 and conds[0]["message"] == "still fine"
    assert set_condition(conds, "Ready", False, "Broken", "no", later)
    assert not condition_true(conds, "Ready")


def test_webhook_per_policy_with_its_selector_and_failure_policy() -> None:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    state = State(Settings(namespace="ops"), kube, OwnerResolver(kube))
    body = json.loads(policy_manifest("team-a", "shop"))
    body["spec"]["budget"]["failurePolicy"] = "Fail"
    remember(state, body)
    remember(state, json.loads(policy_manifest("free", "lab", amount=None)))
    hooks = {h["name"]: h for h in desired_webhooks(state, "https://127.0.0.1:9443", "Q0E=")}
    a = hooks["team-a.budget.cost.kopeck.io"]
    assert a["failurePolicy"] == "Fail" and hooks["free.budget.cost.kopeck.io"]["failurePolicy"] == "Ignore"
    assert a["clientConfig"] == {"url": "https://127.0.0.1:9443/budget/team-a", "caBundle": "Q0E="}
    assert a["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "shop"}
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", "ops"]} in a["namespaceSelector"]["matchExpressions"]
    resources = {r for rule in a["rules"] for r in rule["resources"]}
    assert {"deployments", "statefulsets", "daemonsets", "jobs", "cronjobs", "pods",
            "deployments/scale", "statefulsets/scale"} <= resources
    assert a["sideEffects"] == "NoneOnDryRun"


def test_webhook_names_the_service_in_front_of_it_when_configured() -> None:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    settings = Settings(namespace="kopeck-system",
                        webhook_service="kopeck-system/kopeck-operator:9443")
    state = State(settings, kube, OwnerResolver(kube))
    remember(state, json.loads(policy_manifest("team-a", "shop")))
    (hook,) = desired_webhooks(state, "https://ignored:1", "Q0E=")
    assert hook["clientConfig"] == {
        "service": {"namespace": "kopeck-system", "name": "kopeck-operator", "port": 9443,
                    "path": "/budget/team-a"},
        "caBundle": "Q0E=",
    }
    for bad in ("kopeck-operator", "ns/", "ns/name:https"):
        with pytest.raises(ValueError, match="namespace/name"):
            Settings(webhook_service=bad).webhook_service_ref()


def test_deny_message_names_workload_cost_policy_spent_and_budget() -> None:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    state = State(Settings(), kube, OwnerResolver(kube))
    remember(state, json.loads(policy_manifest("team-a", "shop")))
    state_policy = state.policies["team-a"].named
    p = Projection(Decimal(1), Decimal("12.5"), Decimal("29.566"), Decimal("80"), Decimal(0),
                   Decimal("5"), Decimal("100"))
    msg = deny_message(WorkloadKey("shop", "Deployment", "web"), state_policy, p, "2026-11", "USD")
    for part in ("deployment shop/web", "29.57 USD/month", "CostPolicy team-a",
                 "spent 80.00 USD", "100.00 USD budget", "spec.budget.amount"):
        assert part in msg


def test_serving_cert_is_generated_once(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    cert = ensure_serving_cert(d, ["127.0.0.1", "localhost"])
    first = cert.cert_file.read_bytes()
    ctx = cert.server_context()
    assert ctx.minimum_version.name == "TLSv1_2"
    assert ensure_serving_cert(d, ["127.0.0.1"]).cert_file.read_bytes() == first
    assert b"BEGIN CERTIFICATE" in cert.ca_pem


def test_resource_paths() -> None:
    assert resource_path("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert resource_path("cost.kopeck.io/v1alpha1", "costpolicies", None, "x", "status") == (
        "/apis/cost.kopeck.io/v1alpha1/costpolicies/x/status"
    )


def test_token_kubeconfig_and_loader_variants(tmp_path: object) -> None:
    from pathlib import Path

    import yaml

    from kopeck.operator.kube import bearer_token

    assert bearer_token({"BearerToken": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer xyz"}) == "xyz"
    assert bearer_token({"authorization": "raw"}) == "raw"
    assert bearer_token({}) is None
    kubeconfig = Path(str(tmp_path)) / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443/",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "tok.en"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }))
    creds = Credentials.load(str(kubeconfig))
    assert creds.token == "tok.en" and creds.server == "https://127.0.0.1:6443"
    assert creds.current_token() == "tok.en"
    rotating = Path(str(tmp_path)) / "token"
    rotating.write_text("new-token\n")
    from dataclasses import replace

    assert replace(creds, token_file=str(rotating)).current_token() == "new-token"
