"""Budget policies for admission tests: apply one and wait until the apiserver calls the
webhook for it, and what one Deployment adds to the month in the webhook's arithmetic."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

import pytest

from kopeck.accounting.budget import PodShape, project_change
from kopeck.accounting.periods import period_at
from kopeck.accounting.prices import NodeFacts, rates_for_node
from kopeck.api.costpolicy import Pricing
from kopeck.demo.operator_process import OperatorProcess
from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import deployment_manifest, policy_manifest

RATES = rates_for_node(
    Pricing.model_validate({"rateCard": {"cpuCoreHour": "0.036", "memoryGiBHour": "0.0045"}}),
    NodeFacts("admission"),
)


def per_deployment(cpu: str = "1", memory_gib: int = 1, replicas: int = 1) -> Decimal:
    """What one such Deployment adds to the rest of this month (the webhook's arithmetic)."""
    now = dt.datetime.now(dt.UTC)
    p = project_change(
        old=None, old_replicas=0,
        new=PodShape(cpu_cores=Decimal(cpu), memory_bytes=Decimal(memory_gib * 2**30)),
        new_replicas=replicas, rates=RATES, window=period_at("Monthly", now), now=now,
        amount=Decimal(1), spent=Decimal(0), reserved=Decimal(0),
    )
    return p.added_to_period_end


def apply_policy(cluster: ClusterHandle, op: OperatorProcess, name: str, namespace: str,
                 **kw: Any) -> None:
    """Create the policy and wait until the apiserver calls our webhook for it."""
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(name, namespace, **kw))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "validatingwebhookconfiguration", op.webhook_config,
                              "-o", "json", check=False)
        if out.returncode == 0:
            hooks = [w["name"] for w in json.loads(out.stdout).get("webhooks") or []]
            if f"{name}.budget.cost.kopeck.io" in hooks:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"webhook for {name} not registered: {op.log_tail()}")
    # the apiserver picks configurations up asynchronously: wait until a huge change is judged
    probe = deployment_manifest("kopeck-probe", namespace, replicas=10_000)
    while time.monotonic() < deadline + 10:
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=probe, check=False)
        if "kopeck" in res.stderr or "kopeck" in res.stdout:
            return
        time.sleep(0.3)
    pytest.fail(f"webhook for {name} never judged a request: {op.log_tail()}")


def delete_policy(cluster: ClusterHandle, name: str) -> None:
    cluster.kubectl("delete", "costpolicy", name, "--ignore-not-found", check=False)
