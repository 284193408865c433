"""Operator replicas' in-process state against a real apiserver, for ledger tests that
drive fold and checkpoint directly (two writers, final records)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import WorkloadKey
from kopeck.api.report import ProbeReport
from kopeck.localcluster.handle import ClusterHandle
from kopeck.operator.costpolicies import remember
from kopeck.operator.kube import Credentials, Kube
from kopeck.operator.settings import Settings
from kopeck.operator.state import PodInfo, State
from kopeck.operator.workloads import OwnerResolver, Workload
from tests.support.operator import pod_usage, policy_manifest, report


def replica(cluster: ClusterHandle, namespace: str) -> State:
    """One operator replica's state: the policy and the pod in its caches."""
    kube = Kube(Credentials.load(str(cluster.kubeconfig)))
    state = State(Settings(namespace=namespace), kube, OwnerResolver(kube))  # node records too
    remember(state, json.loads(policy_manifest("fencing-" + namespace[-6:], namespace,
                                               amount=None)))
    state.namespaces[namespace] = {"kubernetes.io/metadata.name": namespace}
    state.pods["u1"] = PodInfo("u1", namespace, "web-1", "n1",
                               Workload(WorkloadKey(namespace, "Deployment", "web", "apps/v1")),
                               PodShape(Decimal(0), Decimal(0)))
    state.ready = True
    return state


def body(namespace: str, seq: int, start: dt.datetime) -> ProbeReport:
    return ProbeReport.model_validate(report(
        node="n1", boot_id="b", seq=seq, end=start + dt.timedelta(seconds=5 * seq),
        pods=[pod_usage("u1", namespace, "web-1", cpu_core_seconds=1, working_set=2**20)]))
