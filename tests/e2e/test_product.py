"""The whole product end to end, as `kopeck demo` runs it: real control plane, this machine
as a Node with real pod sandboxes, the operator and the node-probe as processes.

The figures a user sees in `kubectl get alloc` are compared with the kernel's own accounting
and with iperf3's, and the demo's moments (deny, rightsizing warning, anomaly) are checked
on the same output the demo prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kopeck.demo import scenario
from kopeck.demo.stack import Stack, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.node]

E2E_NS = "accuracy"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    lines: list[str] = []
    s = Stack(tmp_path_factory.mktemp("stack"), StackSettings(report_interval_s=1.0),
              say=lines.append)
    with s:
        scenario.apply_examples(s)
        policy = scenario.demo_policy()
        policy["metadata"]["name"] = "accuracy"
        policy["spec"]["scope"] = {"namespaceSelector": {"matchLabels": {"e2e": "accuracy"}}}
        policy["spec"]["anomaly"] = {"enabled": False}
        scenario.kubectl(s, "apply", "-f", "-", manifest=policy)
        scenario.kubectl(s, "apply", "-f", "-",
                         manifest=scenario.namespace(E2E_NS, {"e2e": "accuracy"}))
        scenario.wait_default_sa(s, E2E_NS)
        yield s


def bare_pod(name: str, command: list[str], restart: str = "Never") -> dict[str, Any]:
    """A Pod (no controller) running command on the node."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": E2E_NS, "labels": {"app": name}},
        "spec": {"restartPolicy": restart, "containers": [{
            "name": "main", "image": "docker.io/library/debian:12-slim", "command": command,
            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}},
        }]},
    }  # fmt: skip


def pod_allocation(stack: Stack, pod: str) -> dict[str, Any] | None:
    """The Allocation of a bare Pod."""
    for a in scenario.allocations(stack):
        ref = a["spec"]["workloadRef"]
        if ref["kind"] == "Pod" and ref["name"] == pod and ref.get("namespace") == E2E_NS:
            return a
    return None


def usage(stack: Stack, pod: str) -> dict[str, Any]:
    alloc = pod_allocation(stack, pod)
    return dict((alloc or {}).get("status", {}).get("usage", {}))


def running_uid(stack: Stack, name: str) -> str:
    uid = ""

    def running() -> bool:
        nonlocal uid
        out = scenario.kubectl(stack, "get", "pod", name, "-n", E2E_NS, "-o", "json")
        if out.returncode:
            return False
        body = json.loads(out.stdout)
        uid = body["metadata"]["uid"]
        return bool(body.get("status", {}).get("phase") == "Running")

    stack.wait_for(f"pod {name} Running", running, timeout=60, every=0.5)
    return uid


def pod_cgroup(stack: Stack, uid: str, hierarchy: str) -> Path:
    assert stack.kubelet is not None
    sandbox = stack.kubelet.sandbox(uid)
    assert sandbox is not None, f"no sandbox for pod {uid}"
    return sandbox.cgroup_dirs()[hierarchy]


def test_cpu_core_seconds_match_the_kernel_within_1_percent(stack: Stack) -> None:
    cmd = ["sh", "-c", "stress-ng --cpu 1 --cpu-load 50 --timeout 10s; exec sleep 3600"]
    scenario.kubectl(stack, "apply", "-f", "-", manifest=bare_pod("burn", cmd))
    uid = running_uid(stack, "burn")
    cpuacct = pod_cgroup(stack, uid, "cpuacct") / "cpuacct.usage"
    time.sleep(10)
    stack.wait_for("stress-ng to finish (CPU counter at rest)",
                   lambda: _at_rest(cpuacct), timeout=60, every=0.5)
    kernel_s = int(cpuacct.read_text()) / 1e9
    assert kernel_s > 1.0, "stress-ng barely ran"
    stack.wait_for("the Allocation to catch up with the kernel",
                   lambda: float(usage(stack, "burn").get("cpuCoreSeconds", 0))
                   >= kernel_s * 0.99, timeout=60, every=1)
    charged = float(usage(stack, "burn")["cpuCoreSeconds"])
    assert charged == pytest.approx(kernel_s, rel=0.01), (charged, kernel_s)


def _at_rest(counter: Path) -> bool:
    first = int(counter.read_text())
    time.sleep(1.0)
    return int(counter.read_text()) - first < 20_000_000  # under 2% of a core


def test_network_bytes_match_iperf3_within_1_percent(stack: Stack) -> None:
    """UDP with a fixed datagram size, so the kernel's L3 bytes are known exactly from
    iperf3's own counts: payload + 28 bytes (IPv4 + UDP headers) per datagram."""
    scenario.kubectl(stack, "apply", "-f", "-", manifest=bare_pod(
        "sink", ["sh", "-c", "iperf3 -s -1 > /dev/null; exec sleep 3600"]))
    running_uid(stack, "sink")
    ip = scenario.running_ip(stack, E2E_NS, "sink")
    assert ip
    time.sleep(1)
    client = (f"iperf3 -c {ip} -u -l 1400 -b 80M -n 30M -J; exec sleep 3600")
    scenario.kubectl(stack, "apply", "-f", "-", manifest=bare_pod("source", ["sh", "-c", client]))
    running_uid(stack, "source")
    report: dict[str, Any] = {}

    def finished() -> bool:
        out = scenario.kubectl(stack, "logs", "source", "-n", E2E_NS)
        try:
            report.update(json.loads(out.stdout))
        except ValueError:
            return False
        return "end" in report

    stack.wait_for("iperf3 to finish", finished, timeout=90, every=1)
    sent = report["end"]["sum"]
    truth = int(sent["bytes"]) + 28 * int(sent["packets"])
    assert truth > 30 * 2**20

    def total(pod: str) -> int:
        nb = usage(stack, pod).get("networkBytes", {})
        return int(sum(int(v) for v in nb.values()))

    stack.wait_for("the client's Allocation to count the bytes",
                   lambda: total("source") >= truth * 0.99, timeout=60, every=1)
    time.sleep(3)  # the control connection's last bytes
    assert total("source") == pytest.approx(truth, rel=0.01), (total("source"), truth)


def test_a_pod_that_lives_3_seconds_is_charged(stack: Stack) -> None:
    scenario.kubectl(stack, "apply", "-f", "-", manifest=bare_pod(
        "blip", ["stress-ng", "--cpu", "1", "--timeout", "3s"]))

    def done() -> bool:
        out = scenario.kubectl(stack, "get", "pod", "blip", "-n", E2E_NS, "-o", "json")
        return out.returncode == 0 and json.loads(out.stdout)["status"].get("phase") in (
            "Succeeded", "Failed")

    stack.wait_for("the 3 s pod to end", done, timeout=60, every=0.5)
    stack.wait_for("the 3 s pod to be charged",
                   lambda: float(usage(stack, "blip").get("cpuCoreSeconds", 0)) > 0.5,
                   timeout=30, every=1)
    alloc = pod_allocation(stack, "blip")
    assert alloc is not None
    assert float(alloc["status"]["cost"]["total"]) > 0


def test_the_demo_moments(stack: Stack) -> None:
    scenario.start_workloads(stack)
    scenario.start_network_client(stack)
    stack.wait_for("Allocations with real figures", lambda: scenario.costs_flowing(stack),
                   timeout=90, every=2)

    refused = scenario.over_budget(stack)
    assert refused.returncode != 0
    for needle in ("checkout-loadtest", "team-payments", "1200", "budget"):
        assert needle in refused.stderr, refused.stderr

    stack.wait_for("a rightsizing proposal", lambda: scenario.proposal_ready(stack),
                   timeout=90, every=2)
    warned = scenario.reapply_frontend(stack)
    assert warned.returncode == 0, warned.stderr
    assert "Warning:" in warned.stderr and "frontend" in warned.stderr, warned.stderr

    scenario.spike(stack)
    events = scenario.wait_anomaly(stack, timeout=90)
    assert any("shop" in e.get("message", "") or e["involvedObject"].get("namespace") == "shop"
               for e in events), events

    table = scenario.kubectl(stack, "get", "alloc", "-A").stdout
    for column in ("PERIOD", "CPU", "MEMORY", "NETWORK", "COST", "EFFICIENCY"):
        assert column in table


def test_conservation_pods_plus_idle_equal_the_node_cost(stack: Stack) -> None:
    """Last in this module: it stops the probe so that no report is in flight, then checks
    that the money in every Allocation (compute of each workload, plus the node's idle
    record) adds up to what the node cost over the reports folded (within 0.1%)."""
    stack.wait_for("some node cost", lambda: _node_cost(stack)["total"] > 0, timeout=30)
    stack._stop_probe()
    time.sleep(3)  # the last report's checkpoint
    node = _node_cost(stack)
    allocs = scenario.allocations(stack)
    compute = sum(
        float(a["status"]["cost"][part])
        for a in allocs if a["spec"]["workloadRef"]["kind"] not in ("Namespace", "Node")
        for part in ("cpu", "memory", "gpu")
    )
    idle = sum(float(a["status"]["cost"]["idle"]) for a in allocs
               if a["spec"]["workloadRef"]["kind"] == "Node")
    assert node["allocated"] == pytest.approx(compute, rel=1e-3), (node, compute)
    assert compute + idle == pytest.approx(node["total"], rel=1e-3), (compute, idle, node)
    assert idle > 0  # an 8-core node running a few small pods is mostly idle


def _node_cost(stack: Stack) -> dict[str, float]:
    assert stack.operator is not None
    out = {"total": 0.0, "allocated": 0.0}
    for line in stack.operator.metrics().splitlines():
        if line.startswith("kopeck_node_cost_total{"):
            labels, value = line.rsplit(" ", 1)
            part = labels.split('part="', 1)[1].split('"', 1)[0]
            out[part] += float(value)
    return out
