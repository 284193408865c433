"""The ledger under faults: for every scenario the money and core-seconds in the Allocation
equal the ground truth of the reports sent, to the micro-unit: nothing lost, nothing doubled.

The sender behaves as the probe's write-ahead buffer does (tests/support/resender.py): a
report is sent again until a 200 ack, so the ground truth is every report generated.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)
from tests.support.resender import Resender
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.cluster
MI = 2**20
CPU_PER_POD = Decimal("0.2")  # core-seconds per pod per 5 s report
# One pod-interval: max(0.5 requested, 0.04 used) core x 5 s at 36/core-h, and 256Mi
# requested (128Mi used) x 5 s at 4.5/GiB-h.
POD_INTERVAL = Decimal("2.5") * 36 / 3600 + Decimal("1.25") * Decimal("4.5") / 3600


def _pods(cluster: ClusterHandle, namespace: str) -> list[dict[str, Any]]:
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="1000000", enforcement="Audit",
        cpu_core_hour="36", memory_gib_hour="4.5"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "web", namespace, replicas=2, cpu="500m", memory="256Mi"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items: list[dict[str, Any]] = json.loads(cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
        if len(items) >= 2:
            return items[:2]
        time.sleep(0.3)
    pytest.fail(f"the Deployment's pods were not created in {namespace}")


class Scenario:
    """Known reports for one workload, and the ledger's figures compared with them."""

    def __init__(self, cluster: ClusterHandle, namespace: str, op: OperatorProcess) -> None:
        self.cluster, self.namespace, self.op = cluster, namespace, op
        self.pods = _pods(cluster, namespace)
        self.node = f"fault-node-{uuid.uuid4().hex[:6]}"
        self.boot = uuid.uuid4().hex
        # Well inside the current period, so no report crosses a boundary by accident.
        self.start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
        self.period = period_at("Monthly", self.start).name
        self.sender = Resender(lambda: op.ingest_url, op.ca_file, probe_token(cluster.kubectl, op))

    def body(self, seq: int) -> dict[str, Any]:
        return report(node=self.node, boot_id=self.boot, seq=seq,
                      end=self.start + dt.timedelta(seconds=5 * seq), pods=[
            pod_usage(p["metadata"]["uid"], self.namespace, p["metadata"]["name"],
                      cpu_core_seconds=float(CPU_PER_POD), working_set=128 * MI, pod=p)
            for p in self.pods])  # fmt: skip

    def ledger(self) -> tuple[Decimal, Decimal]:
        """(core-seconds, money) in the workload's Allocation as stored."""
        out = self.cluster.kubectl("get", "alloc", "-n", self.namespace,
                                   f"deployment-web-{self.period}", "-o", "json", check=False)
        if out.returncode:
            return Decimal(0), Decimal(0)
        st = json.loads(out.stdout).get("status", {})
        return (Decimal(str(st.get("usage", {}).get("cpuCoreSeconds", 0))),
                Decimal(str(st.get("cost", {}).get("total", 0))))

    def outcome(self, name: str, reports: int) -> dict[str, Any]:
        want_cpu = CPU_PER_POD * 2 * reports
        want_usd = (POD_INTERVAL * 2 * reports).quantize(Decimal("1e-12"))
        got_cpu, got_usd = self.ledger()
        got_cpu = got_cpu.quantize(Decimal("1e-9"))
        row = {
            "name": name,
            "lost_core_seconds": float(max(Decimal(0), want_cpu - got_cpu)),
            "doubled_core_seconds": float(max(Decimal(0), got_cpu - want_cpu)),
            "lost_usd": float(max(Decimal(0), want_usd - got_usd)),
            "doubled_usd": float(max(Decimal(0), got_usd - want_usd)),
        }
        row["passed"] = got_cpu == want_cpu and abs(got_usd - want_usd) < Decimal("0.000001")
        return row


def deliver_all(sc: Scenario, seqs: range, fault: Callable[[], None] | None = None,
                deadline_s: float = 60.0) -> None:
    """Deliver every report (in order, as the probe does) while fault() runs beside."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def faults() -> None:
        while not stop.is_set() and fault is not None:
            try:
                fault()
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=faults, daemon=True)
    thread.start()
    try:
        for seq in seqs:
            sc.sender.deliver(sc.body(seq), deadline_s=deadline_s)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors


@pytest.fixture
def proxied_operator(cluster: ClusterHandle, apiserver_proxy: tuple[TcpProxy, Path],
                     tmp_path: Path) -> Iterator[tuple[OperatorProcess, TcpProxy]]:
    proxy, kubeconfig = apiserver_proxy
    with running_operator(cluster.kubectl, kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"]) as op:
        yield op, proxy


def _check(row: dict[str, Any], op: OperatorProcess) -> None:
    assert row["passed"], f"{row}\n{op.log_tail()}"


def test_connections_to_the_apiserver_cut_at_random(
    cluster: ClusterHandle, namespace: str, proxied_operator: tuple[OperatorProcess, TcpProxy],
    fault_results: list[dict[str, Any]],
) -> None:
    op, proxy = proxied_operator
    sc = Scenario(cluster, namespace, op)
    rng = random.Random(20261202)

    proxy.latency_s = 0.05  # answers in flight long enough to be cut in the middle

    def cut() -> None:
        time.sleep(rng.uniform(0.1, 0.6))
        proxy.cut(graceful=rng.random() < 0.5)  # RST, or FIN (ServerDisconnectedError)

    try:
        deliver_all(sc, range(1, 31), cut)
    finally:
        row = sc.outcome("apiserver-connections-cut", 30)
        fault_results.append(row)
    assert proxy.cuts > 0
    _check(row, op)


def test_apiserver_connections_blackholed_at_random(
    cluster: ClusterHandle, namespace: str, proxied_operator: tuple[OperatorProcess, TcpProxy],
    fault_results: list[dict[str, Any]],
) -> None:
    """Connections that stop answering without closing (a dead load balancer or NAT entry):
    the operator gives up on them and carries on, and the probe's resends get their acks
    in time."""
    op, proxy = proxied_operator
    sc = Scenario(cluster, namespace, op)
    rng = random.Random(20261203)

    def blackhole() -> None:
        time.sleep(rng.uniform(1.0, 4.0))
        proxy.blackhole()

    started = time.monotonic()
    try:
        deliver_all(sc, range(1, 21), blackhole, deadline_s=30.0)
    finally:
        row = sc.outcome("apiserver-connections-blackholed", 20)
        row["seconds"] = round(time.monotonic() - started, 1)
        fault_results.append(row)
    assert proxy.blackholed > 0
    _check(row, op)


def test_apiserver_unreachable_for_5s_in_the_middle(
    cluster: ClusterHandle, namespace: str, proxied_operator: tuple[OperatorProcess, TcpProxy],
    fault_results: list[dict[str, Any]],
) -> None:
    op, proxy = proxied_operator
    sc = Scenario(cluster, namespace, op)
    deliver_all(sc, range(1, 6))
    done = threading.Event()

    def outage() -> None:
        if done.is_set():
            time.sleep(0.2)
            return
        time.sleep(0.5)
        proxy.down()
        time.sleep(5)
        proxy.up()
        done.set()

    try:
        deliver_all(sc, range(6, 21), outage)
    finally:
        row = sc.outcome("apiserver-unreachable-5s", 20)
        fault_results.append(row)
    _check(row, op)


def test_operator_sigkill_during_flushes(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"]) as op:
        sc = Scenario(cluster, namespace, op)
        rng = random.Random(7)
        kills = {"n": 0}

        def crash() -> None:
            if kills["n"] >= 3:
                time.sleep(0.2)
                return
            time.sleep(rng.uniform(0.3, 1.5))
            op.kill()
            kills["n"] += 1
            op.start(timeout=60)

        try:
            deliver_all(sc, range(1, 26), crash, deadline_s=180)
        finally:
            row = sc.outcome("operator-sigkill-during-flush", 25)
            fault_results.append(row)
        assert kills["n"] >= 1
        _check(row, op)


def test_a_resend_racing_its_first_send_then_a_crash(
    cluster: ClusterHandle, namespace: str, apiserver_proxy: tuple[TcpProxy, Path],
    tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """The probe resends a report whose first send still waits for its checkpoint (a slow
    apiserver); the first ack to come back makes the probe delete it, and the operator
    crashes at once: what that ack promised must be in the ledger."""
    proxy, kubeconfig = apiserver_proxy
    with running_operator(cluster.kubectl, kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"]) as op:
        sc = Scenario(cluster, namespace, op)
        proxy.latency_s = 0.3
        try:
            for seq in range(1, 9):
                body = sc.body(seq)
                first: list[tuple[int, dict[str, Any]]] = []
                got = threading.Event()

                def send(body: dict[str, Any] = body, first: list[Any] = first,
                         got: threading.Event = got) -> None:
                    answer = sc.sender.post_once(body)
                    if answer[0] == 200 and not got.is_set():
                        first.append(answer)
                        got.set()

                senders = [threading.Thread(target=send, daemon=True) for _ in range(2)]
                for t in senders:
                    t.start()
                    time.sleep(0.05)
                if got.wait(30):
                    op.kill()  # the probe has deleted the report: it is the ledger's now
                for t in senders:
                    t.join(timeout=35)
                if op.proc is None or op.proc.poll() is not None:
                    op.start(timeout=60)
                if not first:  # neither send was acknowledged: the probe keeps it and resends
                    sc.sender.deliver(body)
        finally:
            proxy.latency_s = 0.0
            row = sc.outcome("resend-racing-first-send-then-crash", 8)
            fault_results.append(row)
        _check(row, op)


def test_leader_handoffs_under_load(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """Two replicas with peering while reports flow: the active one is SIGKILLed, the standby
    takes over; the killed one comes back with the higher priority and takes the lead back
    from a replica whose flushes are still in flight (the stale-writer case); then the other
    is restarted (a rolling restart). The probe posts to whichever replica says it leads."""
    peering = f"kopeck-{uuid.uuid4().hex[:6]}"
    common = ["--peering", peering, "--peering-lifetime", "5", "--status-interval", "1"]
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=[*common, "--priority", "100"]) as a:
        def replica(priority: int) -> OperatorProcess:
            """Another replica of the same deployment: same namespace, certificate, config."""
            return OperatorProcess(
                kubeconfig=a.kubeconfig, workdir=a.workdir, namespace=a.namespace,
                probe_accounts=a.probe_accounts, webhook_config=a.webhook_config,
                extra=[*common, "--priority", str(priority)])  # fmt: skip

        replicas = [a]
        try:
            b = replica(50)
            b.start(timeout=60)
            replicas.append(b)

            def leader_url() -> str:
                for r in reversed(replicas):
                    h = r.health()
                    if h is not None and h.get("active") and h.get("ready"):
                        return r.ingest_url
                return replicas[-1].ingest_url

            sc = Scenario(cluster, namespace, a)
            sc.sender = Resender(leader_url, a.ca_file, probe_token(cluster.kubectl, a))
            steps: list[str] = []

            def rollout() -> None:
                if len(steps) == 4:
                    time.sleep(0.2)
                    return
                time.sleep(2.0)
                a.kill()
                b.wait_active(True, timeout=30)
                steps.append("killed the leader; the standby leads")
                time.sleep(2.0)
                a2 = replica(100)
                a2.start(timeout=60)
                replicas.append(a2)
                a2.wait_active(True, timeout=30)
                steps.append("the higher-priority replica is back and leads")
                time.sleep(2.0)
                b.stop()
                steps.append("the other replica stopped (SIGTERM)")
                b2 = replica(50)
                b2.start(timeout=60)
                replicas.append(b2)
                steps.append("and is back on standby")

            try:
                deliver_all(sc, range(1, 61), rollout, deadline_s=60)
            finally:
                row = sc.outcome("leader-handoffs-under-load", 60)
                fault_results.append(row)
            assert len(steps) == 4, steps
            _check(row, replicas[-2])
        finally:
            for r in replicas[1:]:
                r.stop()
            cluster.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found",
                            check=False)
