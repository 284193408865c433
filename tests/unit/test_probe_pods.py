"""Pod metadata mapping (what the watcher folds in) and /metrics rendering."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import generate_latest

from kopeck.api.report import ContainerUsage, NetworkUsage, PodUsage
from kopeck_probe.attribution import PodResources
from kopeck_probe.metrics import ProbeMetrics, registry_with
from kopeck_probe.pods import PodDirectory, parse_quantity, pod_meta


def pod(uid: str = "u-1", ip: str | None = "10.0.0.5", **res: Any) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": "shop", "name": "cart-0"},
        "spec": {
            "nodeName": "node-a",
            "containers": [
                {"name": "app", "resources": res.get("app", {})},
                {"name": "sidecar", "resources": res.get("sidecar", {})},
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "containerStatuses": [
                {"name": "app", "containerID": "containerd://" + "a" * 64},
                {"name": "sidecar", "containerID": "cri-o://" + "b" * 64},
            ],
        },
    }


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("250m", "0.250"),
        ("1", "1"),
        ("512Mi", str(512 * 2**20)),
        ("1G", "1000000000"),
        ("1.5Gi", str(int(1.5 * 2**30))),
        ("100k", "100000"),
        (2, "2"),
    ],
)
def test_parse_quantity(q: str | int, expected: str) -> None:
    assert parse_quantity(q) == Decimal(expected)


def test_pod_meta_sums_requests_and_maps_container_ids() -> None:
    m = pod(
        app={
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        sidecar={"requests": {"cpu": "50m"}, "limits": {"memory": "64Mi"}},
    )
    meta = pod_meta(m)
    assert (meta.uid, meta.namespace, meta.name, meta.ip) == ("u-1", "shop", "cart-0", "10.0.0.5")
    assert meta.container_names == {"a" * 64: "app", "b" * 64: "sidecar"}
    assert meta.resources == PodResources(
        cpu_request_cores=pytest.approx(0.3),  # type: ignore[arg-type]
        memory_request_bytes=128 * 2**20,
        cpu_limit_cores=None,  # the sidecar has no CPU limit: the pod is unbounded
        memory_limit_bytes=320 * 2**20,
    )


def test_limits_only_default_requests() -> None:
    meta = pod_meta(pod(app={"limits": {"cpu": "2"}}, sidecar={"limits": {"cpu": "1"}}))
    assert meta.resources.cpu_limit_cores == 3.0 and meta.resources.cpu_request_cores == 3.0


def test_directory_events_and_ip_index() -> None:
    d = PodDirectory()
    d.apply("ADDED", pod("u-1", "10.0.0.5"))
    d.apply("ADDED", pod("u-2", None))
    assert d.uid_by_ip() == {"10.0.0.5": "u-1"}
    d.apply("DELETED", pod("u-1", "10.0.0.5"))
    assert d.get("u-1") is not None and d.uid_by_ip() == {}  # names kept for the last report
    d.forget_deleted(live_uids={"u-2"})
    assert d.get("u-1") is None and d.get("u-2") is not None
    d.replace([pod("u-3")])
    assert set(d.snapshot()) == {"u-3"}
    d.apply("MODIFIED", {"kind": "Status", "code": 410})  # no uid: ignored
    assert set(d.snapshot()) == {"u-3"}


def test_metrics_exposition() -> None:
    m = ProbeMetrics()
    usage = PodUsage(
        uid="u-1",
        namespace="shop",
        name="cart-0",
        cpu_core_seconds=1.5,
        memory_working_set_bytes=1000,
        memory_byte_seconds=5000.0,
        network=[NetworkUsage(traffic_class="unclassified", direction="tx", bytes=42)],
        containers=[
            ContainerUsage(
                name="app",
                container_id="a" * 64,
                cpu_core_seconds=1.25,
                memory_working_set_bytes=900,
                io_write_bytes=7,
            )
        ],
    )
    m.fold([usage])
    m.fold([usage.model_copy(update={"cpu_core_seconds": 0.5, "memory_working_set_bytes": 800})])
    m.health.cgroup_reads = 12
    m.health.push_failures = 3
    text = generate_latest(registry_with(m)).decode()
    assert 'kopeck_pod_cpu_seconds_total{namespace="shop",pod="cart-0",uid="u-1"} 2.0' in text
    assert (
        'kopeck_pod_memory_working_set_bytes{namespace="shop",pod="cart-0",uid="u-1"} 800.0' in text
    )
    assert (
        'kopeck_container_cpu_seconds_total{container="app",namespace="shop",pod="cart-0",uid="u-1"} 2.5'
        in text
    )
    assert (
        'kopeck_pod_network_bytes_total{class="unclassified",direction="tx",namespace="shop",pod="cart-0",source="ebpf",uid="u-1"} 84.0'
        in text
    )
    assert "kopeck_probe_cgroup_reads_total 12.0" in text
    assert "kopeck_probe_push_failures_total 3.0" in text
    m.fold([usage.model_copy(update={"ended": True})])
    assert "cart-0" not in generate_latest(registry_with(m)).decode()


def test_container_series_waits_for_the_name_and_keeps_what_came_before() -> None:
    """A container first seen before the runtime named it gets no series of its own.

    An id-labelled series that later becomes a name-labelled one splits a workload's history
    in two (Prometheus then sees a container named after an id); its seconds belong to the
    named series."""
    m = ProbeMetrics()

    def usage(name: str, cpu: float) -> PodUsage:
        return PodUsage(
            uid="u-1", namespace="shop", name="cart-0", cpu_core_seconds=cpu,
            memory_working_set_bytes=1, memory_byte_seconds=1.0,
            containers=[ContainerUsage(name=name, container_id="c" * 64,
                                       cpu_core_seconds=cpu, memory_working_set_bytes=1)],
        )  # fmt: skip

    m.fold([usage("", 1.0)])
    text = generate_latest(registry_with(m)).decode()
    assert "kopeck_container_cpu_seconds_total{" not in text
    assert 'container="cccccccccccc"' not in text
    m.fold([usage("app", 0.5)])
    text = generate_latest(registry_with(m)).decode()
    assert 'container="cccccccccccc"' not in text
    assert (
        'kopeck_container_cpu_seconds_total{container="app",namespace="shop",pod="cart-0",uid="u-1"} 1.5'
        in text
    )


def test_the_report_carries_the_pods_controller_template_hash_and_requests() -> None:
    """What the operator needs to charge a pod the apiserver no longer has."""
    obj = pod(app={"requests": {"cpu": "250m", "memory": "64Mi"}})
    obj["metadata"]["labels"] = {"pod-template-hash": "5f6d"}
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "n"},  # not a controller
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-5f6d", "uid": "rs",
         "controller": True},
    ]
    labels = pod_meta(obj).labels()
    assert labels.owner is not None
    assert (labels.owner.kind, labels.owner.name, labels.owner.uid) == ("ReplicaSet",
                                                                         "cart-5f6d", "rs")
    assert labels.template_hash == "5f6d"
    assert labels.requests is not None and labels.requests.cpu_cores == 0.25
    assert labels.requests.memory_bytes == 64 * 2**20
    bare = pod_meta(pod()).labels()
    assert bare.owner is None and bare.template_hash is None and bare.requests is None
