"""Where report data comes from: a recorded `kubectl ... -o json` dump or the live cluster.

The only I/O of the reports package besides writing output; both paths return the same
list of object dicts (with `kind` set), which `records.dataset` turns into records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

from kopeck.api.common import GROUP, VERSION
from kopeck.reports.records import ReportError


def load_file(path: Path) -> list[dict[str, Any]]:
    """Objects of a `kubectl get alloc,cpol[,ns] -A -o json` dump (a List, a single object,
    or a JSON array); `-` reads standard input."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise ReportError(f"--from-file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"--from-file {path}: not JSON ({exc.msg} at line {exc.lineno}); "
            "write it with `kubectl get alloc,cpol -A -o json`"
        ) from exc
    items = data if isinstance(data, list) else data.get("items", [data]) if isinstance(
        data, dict) else []
    return [i for i in items if isinstance(i, dict)]


def connect(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A kubernetes ApiClient for --kubeconfig/--context, else KUBECONFIG or ~/.kube/config,
    else the in-cluster service account; ReportError says what to pass when none works."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except (ConfigException, OSError, TypeError) as exc:
        if kubeconfig:
            raise ReportError(f"--kubeconfig {kubeconfig}: {exc}") from exc
        if context:
            raise ReportError(f"--context {context}: {exc}; list the contexts with "
                              "`kubectl config get-contexts`") from exc
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException as exc2:
            raise ReportError(
                "no cluster to read from: pass --kubeconfig, set KUBECONFIG, run in a pod, "
                "or use --from-file with a `kubectl get alloc,cpol -A -o json` dump "
                f"({exc}; {exc2})"
            ) from exc2
    return client.ApiClient()


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The namespace the kubeconfig context names (kubectl's default for -n), if any."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (ConfigException, OSError, TypeError):
        return None
    chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context \
        else active
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else None


def load_cluster(kubeconfig: str | None = None, context: str | None = None) -> list[dict[str, Any]]:
    """Allocations, CostPolicies and Namespaces from the apiserver.

    Configuration: see `connect`. CostPolicies and Namespaces are optional (RBAC may hide
    them).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = connect(kubeconfig, context)
    custom = client.CustomObjectsApi(api)
    items: list[dict[str, Any]] = []
    try:
        allocs = cast(dict[str, Any], custom.list_cluster_custom_object(
            GROUP, VERSION, "allocations"))
    except ApiException as exc:
        if exc.status == 404:
            raise ReportError(
                "the cluster has no Allocation resource: install kopeck's CRDs "
                "(`kubectl apply -f crds/`) and run the operator"
            ) from exc
        raise ReportError(f"listing allocations.{GROUP}: {exc.status} {exc.reason}") from exc
    except Exception as exc:  # urllib3 connection errors have no common public base
        raise ReportError(f"cannot reach the apiserver: {exc}") from exc
    items += [{**i, "kind": "Allocation"} for i in allocs.get("items", [])]
    try:
        pols = cast(dict[str, Any], custom.list_cluster_custom_object(
            GROUP, VERSION, "costpolicies"))
        items += [{**i, "kind": "CostPolicy"} for i in pols.get("items", [])]
    except ApiException:
        pass
    try:
        nss: dict[str, Any] = api.sanitize_for_serialization(
            client.CoreV1Api(api).list_namespace()
        )
        items += [{**i, "kind": "Namespace"} for i in nss.get("items", [])]
    except ApiException:
        pass
    return items


def load_for_explain(
    kubeconfig: str | None, context: str | None, namespace: str, with_pods: bool = True
) -> list[dict[str, Any]]:
    """What explain-bill reads: the namespace's Allocations, every CostPolicy, the Nodes,
    and the namespace's Pods, ReplicaSets and Jobs (to name the workload's pods now).

    Only Allocations are required; the rest is skipped when RBAC hides it.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = connect(kubeconfig, context)
    custom = client.CustomObjectsApi(api)
    try:
        allocs = cast(dict[str, Any], custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "allocations"))
    except ApiException as exc:
        if exc.status == 404:
            raise ReportError(
                "the cluster has no Allocation resource: install kopeck's CRDs "
                "(`kubectl apply -f crds/`) and run the operator"
            ) from exc
        raise ReportError(f"listing allocations.{GROUP} in namespace {namespace}: "
                          f"{exc.status} {exc.reason}") from exc
    except Exception as exc:  # urllib3 connection errors have no common public base
        raise ReportError(f"cannot reach the apiserver: {exc}") from exc
    items: list[dict[str, Any]] = [{**i, "kind": "Allocation"} for i in allocs.get("items", [])]
    try:
        pols = cast(dict[str, Any], custom.list_cluster_custom_object(
            GROUP, VERSION, "costpolicies"))
        items += [{**i, "kind": "CostPolicy"} for i in pols.get("items", [])]
    except ApiException:
        pass
    core = client.CoreV1Api(api)
    lists: list[tuple[str, Any]] = [("Node", core.list_node)]
    if with_pods:
        apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
        lists += [
            ("Pod", lambda: core.list_namespaced_pod(namespace)),
            ("ReplicaSet", lambda: apps.list_namespaced_replica_set(namespace)),
            ("Job", lambda: batch.list_namespaced_job(namespace)),
        ]
    for kind, call in lists:
        try:
            got: dict[str, Any] = api.sanitize_for_serialization(call())
        except ApiException:
            continue
        items += [{**i, "kind": kind} for i in got.get("items", [])]
    return items
