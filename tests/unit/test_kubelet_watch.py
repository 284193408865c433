"""The mini-kubelet's pod watch without a cluster: 410 Gone leads to a relist, relist finds gone pods.

A real apiserver rarely expires a watch within a test run, so the recovery path is driven
here with recorded watch lines; the cluster tests cover the ordinary path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from kopeck.localcluster.kubelet import (
    IPAllocator,
    MiniKubelet,
    NodeSettings,
    enable_v2_controllers,
    write_limits,
)
from kopeck.localcluster.kubelet_spec import CgroupLimits


class FakeResponse:
    def __init__(self, lines: list[dict[str, Any]] | None = None, data: Any = None) -> None:
        self.body = b"".join(json.dumps(x).encode() + b"\n" for x in lines or [])
        self.data = json.dumps(data).encode() if data is not None else b""
        self.closed = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield self.body

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


def pod(uid: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"p-{uid}", "namespace": "ns", "resourceVersion": rv}}


class FakeCore:
    def __init__(self, watch_lines: list[dict[str, Any]], listing: list[dict[str, Any]]) -> None:
        self.watch_lines = watch_lines
        self.listing = listing
        self.calls: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **kw: Any) -> FakeResponse:
        self.calls.append(kw)
        if kw.get("watch"):
            return FakeResponse(lines=self.watch_lines)
        return FakeResponse(data={"metadata": {"resourceVersion": "100"}, "items": self.listing})


@pytest.fixture
def kubelet(tmp_path: Path) -> MiniKubelet:
    settings = NodeSettings(name="n1", cpu_cores=2, memory_bytes=2**30)
    return MiniKubelet(ApiClient(), settings=settings, log_dir=tmp_path)


def test_watch_forwards_events_follows_bookmarks_and_stops_on_410(kubelet: MiniKubelet) -> None:
    core = FakeCore(
        [
            {"type": "ADDED", "object": pod("a", "101")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
            {"type": "MODIFIED", "object": pod("a", "160")},
        ],
        [],
    )
    kubelet.core = core
    assert kubelet._watch_once("100") == "160"
    call = core.calls[0]
    assert call["field_selector"] == "spec.nodeName=n1"
    assert call["resource_version"] == "100" and call["allow_watch_bookmarks"] is True
    events = [kubelet._queue.get_nowait()[0] for _ in range(2)]
    assert events == ["ADDED", "MODIFIED"]
    core.watch_lines = [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]
    assert kubelet._watch_once("160") is None  # the caller relists


def test_relist_marks_pods_missing_from_the_list_as_gone(kubelet: MiniKubelet) -> None:
    kubelet._apply("ADDED", pod("a", "1"))
    kubelet._apply("ADDED", pod("b", "2"))
    core = FakeCore([], [pod("b", "3"), pod("c", "4")])
    kubelet.core = core
    assert kubelet._relist() == "100"
    etype, items = kubelet._queue.get_nowait()
    kubelet._apply(etype, items)
    assert kubelet.workers["a"].gone
    assert (
        not kubelet.workers["b"].gone
        and kubelet.workers["b"].pod["metadata"]["resourceVersion"] == "3"
    )
    assert "c" in kubelet.workers and kubelet.synced.is_set()


def test_pods_finished_before_start_are_not_rerun(kubelet: MiniKubelet) -> None:
    done = pod("d", "5")
    done["status"] = {"phase": "Succeeded"}
    kubelet._apply("ADDED", done)
    worker = kubelet.workers["d"]
    kubelet._sync_pod(worker)
    assert worker.sandbox is None and worker.plan is None and worker.posted is None


def test_ip_allocator_skips_gateway_and_reuses_addresses() -> None:
    ips = IPAllocator("10.9.0.0/29")
    got = [ips.take() for _ in range(5)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(RuntimeError, match="exhausted"):
        ips.take()
    ips.give_back("10.9.0.4")
    assert ips.take() == "10.9.0.4"


def test_v2_controllers_are_delegated_from_root_to_pod(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = root / "prefix" / "kubepods.slice" / "kubepods-podx.slice"
    leaf.mkdir(parents=True)
    for d in (root, root / "prefix", root / "prefix" / "kubepods.slice", leaf):
        (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (d / "cgroup.subtree_control").write_text("cpu\n" if d == root else "")
    assert enable_v2_controllers(root, leaf) == []
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +io"
    assert (leaf / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +io"
    (tmp_path / "hybrid").mkdir()
    (tmp_path / "hybrid" / "cgroup.controllers").write_text("")
    (tmp_path / "hybrid" / "cgroup.subtree_control").write_text("")
    assert enable_v2_controllers(tmp_path / "hybrid", tmp_path / "hybrid") == []
    assert (tmp_path / "hybrid" / "cgroup.subtree_control").read_text() == ""


def test_write_limits_only_where_the_hierarchy_has_the_file(tmp_path: Path) -> None:
    cpu, mem, uni = (tmp_path / n for n in ("cpu", "memory", "unified"))
    for d, files in (
        (cpu, ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us")),
        (mem, ("memory.limit_in_bytes",)),
        (uni, ("cpu.max", "memory.max")),
    ):
        d.mkdir()
        for f in files:
            (d / f).write_text("")
    limits = CgroupLimits(cpu_quota_us=25_000, cpu_shares=256, memory_limit_bytes=2**26)
    assert write_limits({"cpu": cpu, "memory": mem, "unified": uni}, limits) == []
    assert (cpu / "cpu.cfs_quota_us").read_text() == "25000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.shares").read_text() == "256"
    assert (mem / "memory.limit_in_bytes").read_text() == str(2**26)
    assert (uni / "cpu.max").read_text() == "25000 100000"
    assert (uni / "memory.max").read_text() == str(2**26)
    assert not (uni / "cpu.weight").exists()
