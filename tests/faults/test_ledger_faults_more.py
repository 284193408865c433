"""More of the ledger under faults: RBAC revoked, skewed probe clocks at a period boundary,
a partition across midnight, a pod deleted while the operator is down, control-plane
restarts. As in test_ledger_faults.py, the money and core-seconds of the workload's records
equal the ground truth of the reports sent, to the micro-unit, after recovery.

Reports here may straddle a period boundary, so the ground truth is kept per period: each
report's share of a period is the fraction of its interval inside it (what the operator's
timestamps say; it has no other clock for the probe). A period that is final when its late
usage arrives holds it in its adjustment record (`<record>-adjustment`): a period's
figures are its record plus its adjustment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kopeck.accounting.periods import PeriodKind, period_at, split_interval
from kopeck.localcluster.cluster import LocalCluster
from kopeck.localcluster.handle import ClusterHandle
from tests.faults.test_ledger_faults import CPU_PER_POD, MI, POD_INTERVAL, Scenario, deliver_all
from tests.support.operator import (
    OperatorProcess,
    deployment_manifest,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)
from tests.support.operator_rbac import operator_access
from tests.support.resender import Resender
from tests.support.restarts import restart_component
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.cluster
ADJ = "-adjustment"


def _stop(op: OperatorProcess, grace_s: float = 8.0) -> float:
    """SIGTERM, SIGKILL after grace_s (an operator sometimes takes 20 s and more to exit on
    SIGTERM, which the suite's time cannot afford); the seconds it took."""
    t0 = time.monotonic()
    op.stop(timeout=grace_s)
    return round(time.monotonic() - t0, 1)


def _check(row: dict[str, Any], op: OperatorProcess, where: str = "") -> None:
    """Stop the operator (its exit time goes in the row), then the ledger's verdict."""
    if "operator_exit_seconds" not in row:
        row["operator_exit_seconds"] = _stop(op)
    assert row["passed"], f"{row}\n{where}\n{op.log_tail()}"


def _records(cluster: ClusterHandle, namespace: str) -> str:
    """Every Allocation in the namespace with its core-seconds and money (for failures)."""
    items = json.loads(cluster.kubectl("get", "alloc", "-n", namespace, "-o", "json").stdout)
    return "records: " + ", ".join(
        f"{i['metadata']['name']}={(i.get('status') or {}).get('usage', {}).get('cpuCoreSeconds')}"
        f"cs/{(i.get('status') or {}).get('cost', {}).get('total')}"
        for i in items["items"])


def _workload(cluster: ClusterHandle, namespace: str, period: PeriodKind) -> list[dict[str, Any]]:
    """The policy (budget period `period`) and the Deployment's two pods."""
    cluster.kubectl("apply", "-f", "-", input=policy_manifest(
        namespace, namespace, amount="1000000", enforcement="Audit", period=period,
        cpu_core_hour="36", memory_gib_hour="4.5"))
    cluster.kubectl("apply", "-f", "-", input=deployment_manifest(
        "web", namespace, replicas=2, cpu="500m", memory="256Mi"))

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
        return items[:2] if len(items) >= 2 else []

    return eventually(pods, timeout=30, what=f"the Deployment's pods in {namespace}", every=0.3)


def _stored(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "alloc", "-n", namespace, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _served(cluster: ClusterHandle, namespace: str, name: str, timeout: float = 30) -> str:
    """Wait until the record can be read again (a restarted apiserver serves custom
    resources a moment after /readyz); what kubectl said last."""
    last: list[str] = [""]

    def get() -> bool:
        out = cluster.kubectl("get", "alloc", "-n", namespace, name, "-o", "name", check=False)
        last[0] = (out.stdout + out.stderr).strip()
        return out.returncode == 0

    with contextlib.suppress(TimeoutError):  # then the outcome says what is missing
        eventually(get, timeout=timeout, what=f"allocation {namespace}/{name} readable",
                   every=0.5)
    return f"kubectl get alloc {name}: {last[0]}"


class Periods:
    """Reports of the Deployment's two pods over any intervals (of any length), and the
    ground truth per period of what was acknowledged."""

    def __init__(self, cluster: ClusterHandle, namespace: str, op: OperatorProcess,
                 kind: PeriodKind = "Monthly") -> None:
        self.cluster, self.namespace, self.kind = cluster, namespace, kind
        self.pods = _workload(cluster, namespace, kind)
        self.sender = Resender(lambda: op.ingest_url, op.ca_file, probe_token(cluster.kubectl, op))
        self.want: dict[str, list[Decimal]] = {}
        """period name -> [core-seconds, money] acknowledged for it."""

    def body(self, node: str, boot: str, seq: int, end: dt.datetime,
             seconds: int = 5) -> dict[str, Any]:
        cpu = float(CPU_PER_POD * seconds / 5)
        return report(node=node, boot_id=boot, seq=seq, end=end, seconds=seconds, pods=[
            pod_usage(p["metadata"]["uid"], self.namespace, p["metadata"]["name"],
                      cpu_core_seconds=cpu, working_set=128 * MI, seconds=seconds,
                      pod=p)
            for p in self.pods])  # fmt: skip

    def count(self, body: dict[str, Any]) -> None:
        """Add an acknowledged report to the ground truth, split over its periods."""
        start = dt.datetime.fromisoformat(body["intervalStart"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(body["intervalEnd"].replace("Z", "+00:00"))
        seconds = Decimal(int((end - start).total_seconds()))
        for window, frac in split_interval(self.kind, start, end):
            got = self.want.setdefault(window.name, [Decimal(0), Decimal(0)])
            got[0] += CPU_PER_POD * seconds / 5 * 2 * frac
            got[1] += POD_INTERVAL * seconds / 5 * 2 * frac

    def deliver(self, body: dict[str, Any], deadline_s: float = 60.0) -> None:
        """Send until acknowledged (the probe's rule), then count it."""
        self.sender.deliver(body, deadline_s=deadline_s)
        self.count(body)

    def record(self, period: str) -> dict[str, Any] | None:
        return _stored(self.cluster, self.namespace, f"deployment-web-{period}")

    def ledger(self, period: str) -> tuple[Decimal, Decimal, Decimal]:
        """(core-seconds, money) of the period's record plus its adjustment record, and
        the core-seconds in the adjustment alone."""
        cpu = usd = adj = Decimal(0)
        for name in (period, period + ADJ):
            item = self.record(name)
            st = (item or {}).get("status", {})
            c = Decimal(str(st.get("usage", {}).get("cpuCoreSeconds", 0)))
            cpu += c
            usd += Decimal(str(st.get("cost", {}).get("total", 0)))
            if name.endswith(ADJ):
                adj = c
        return cpu, usd, adj

    def outcome(self, name: str, started: float) -> dict[str, Any]:
        row: dict[str, Any] = {"name": name, "lost_core_seconds": 0.0,
                               "doubled_core_seconds": 0.0, "lost_usd": 0.0,
                               "doubled_usd": 0.0}
        passed = bool(self.want)
        adjusted = Decimal(0)
        for period, (want_cpu, want_usd) in sorted(self.want.items()):
            got_cpu, got_usd, adj = self.ledger(period)
            adjusted += adj
            want_cpu, got_cpu = want_cpu.quantize(Decimal("1e-9")), got_cpu.quantize(Decimal("1e-9"))
            want_usd = want_usd.quantize(Decimal("1e-12"))
            row["lost_core_seconds"] += float(max(Decimal(0), want_cpu - got_cpu))
            row["doubled_core_seconds"] += float(max(Decimal(0), got_cpu - want_cpu))
            row["lost_usd"] += float(max(Decimal(0), want_usd - got_usd))
            row["doubled_usd"] += float(max(Decimal(0), got_usd - want_usd))
            passed = passed and got_cpu == want_cpu and abs(got_usd - want_usd) < Decimal("1e-6")
        row["passed"] = passed
        row["periods"] = sorted(self.want)
        row["adjustment_core_seconds"] = float(adjusted)
        row["seconds"] = round(time.monotonic() - started, 1)
        return row

    def wait_final(self, period: str, timeout: float = 40.0) -> None:
        """Until the period's record is final (the audit sweep froze it)."""
        eventually(lambda: ((self.record(period) or {}).get("status") or {}).get("final"),
                   timeout=timeout, what=f"deployment-web-{period} final", every=0.5)


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# 1 -------------------------------------------------------------------------------------

def test_status_writes_refused_while_the_operator_rbac_is_revoked(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """The operator runs as a ServiceAccount under the shipped ClusterRole; its binding is
    removed for 5 s mid-stream (every write refused with 403) and restored."""
    started = time.monotonic()
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"], start=False) as op, \
            operator_access(cluster.kubectl, cluster.kubeconfig, op.namespace,
                            op.webhook_config, tmp_path) as access:
        op.kubeconfig = access.kubeconfig
        op.start(timeout=60)
        sc = Scenario(cluster, namespace, op)
        deliver_all(sc, range(1, 6))
        done = threading.Event()
        seen: dict[str, Any] = {}

        def revoke() -> None:
            if done.is_set():
                time.sleep(0.2)
                return
            time.sleep(0.5)
            access.revoke()
            eventually(lambda: not access.allowed("patch", "allocations.cost.kopeck.io",
                                                  namespace, subresource="status"),
                       timeout=10, what="the binding's removal in effect", every=0.2)
            attempts = sc.sender.attempts
            time.sleep(5)
            seen["attempts_while_revoked"] = sc.sender.attempts - attempts
            access.restore()
            eventually(lambda: access.allowed("patch", "allocations.cost.kopeck.io",
                                              namespace, subresource="status"),
                       timeout=10, what="the binding back in effect", every=0.2)
            done.set()

        try:
            deliver_all(sc, range(6, 21), revoke)
        finally:
            row = sc.outcome("operator-rbac-revoked-5s", 20)
            row["seconds"] = round(time.monotonic() - started, 1)
            fault_results.append(row)
            access.restore()  # a failed fault() may have left it revoked
        row["operator_exit_seconds"] = _stop(op)  # before the role and binding go
        assert done.is_set()
        # the refusals were seen: the reports sent while revoked were not acknowledged
        assert seen["attempts_while_revoked"] >= 3, seen
        assert sc.sender.attempts >= len(sc.sender.acks) + 3, (sc.sender.attempts,
                                                                len(sc.sender.acks))
        _check(row, op)


# 2 -------------------------------------------------------------------------------------

def test_probe_clocks_2min_behind_and_ahead_across_a_month_boundary(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """Two probes, one clock 2 minutes behind, one 2 minutes ahead, report 20 s intervals
    that straddle the start of the current month (a past boundary, so the previous month
    is final when most of them arrive), then their latest intervals, which end 2 minutes
    before and after the operator's clock: all accepted. A third, 6 minutes ahead, is
    refused (422) and not counted (its probe keeps it)."""
    started = time.monotonic()
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1",
                                 "--checkpoint-interval", "0.1"]) as op:
        sc = Periods(cluster, namespace, op, "Monthly")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        # a boundary at least 10 min old: the previous month is final (60 s grace) at once
        boundary = period_at("Monthly", now - dt.timedelta(minutes=10)).start
        previous = period_at("Monthly", boundary - dt.timedelta(seconds=1)).name
        probes = {  # node -> (boot, first interval end relative to the boundary, clock skew)
            f"behind-{uuid.uuid4().hex[:5]}": (uuid.uuid4().hex, -38, -120),
            f"ahead-{uuid.uuid4().hex[:5]}": (uuid.uuid4().hex, -22, +120),
        }
        streams: dict[str, list[dict[str, Any]]] = {}
        for node, (boot, first, skew) in probes.items():
            ends = [boundary + dt.timedelta(seconds=first + 20 * k) for k in range(6)]
            clock = now + dt.timedelta(seconds=skew)
            ends += [clock - dt.timedelta(seconds=20 * k) for k in (2, 1, 0)]
            streams[node] = [sc.body(node, boot, seq, end, seconds=20)
                             for seq, end in enumerate(ends, start=1)]
        straddling = [b for s in streams.values() for b in s
                      if _utc(b["intervalStart"]) < boundary < _utc(b["intervalEnd"])]
        assert len(straddling) == 2

        try:
            for stream in streams.values():  # the previous month's first reports
                for body in stream[:2]:
                    sc.deliver(body)
            sc.wait_final(previous)
            for stream in streams.values():  # the rest: late for it
                for body in stream[2:]:
                    sc.deliver(body)
            far = sc.body(f"far-{uuid.uuid4().hex[:5]}", uuid.uuid4().hex, 1,
                          dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6), seconds=20)
            refused = sc.sender.post_once(far)
        finally:
            row = sc.outcome("probe-clocks-skewed-2min-across-month-boundary", started)
            fault_results.append(row)
        assert refused[0] == 422, refused
        assert previous in row["periods"] and len(row["periods"]) >= 2, row
        assert row["adjustment_core_seconds"] > 0, row  # late usage went to the adjustment
        _check(row, op)


# 3 -------------------------------------------------------------------------------------

def test_a_probe_partitioned_across_midnight_delivers_its_buffer_in_order(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """Daily periods: a probe loses the operator (a partition between them) before a UTC
    midnight and gets it back after; the reports it buffered meanwhile, spanning the
    midnight, are delivered afterwards in order. The earlier day is final by then: its late
    share lands in its adjustment record."""
    started = time.monotonic()
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1",
                                 "--checkpoint-interval", "0.1"]) as op, \
            TcpProxy("127.0.0.1", op.ingest_port) as link:
        sc = Periods(cluster, namespace, op, "Daily")
        sc.sender.url = lambda: f"https://127.0.0.1:{link.port}/v1/reports"
        # the last midnight at least 10 min ago: the day before is final (60 s grace) at once
        midnight = period_at("Daily", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)).start
        day_before = period_at("Daily", midnight - dt.timedelta(seconds=1)).name
        node, boot = f"part-{uuid.uuid4().hex[:5]}", uuid.uuid4().hex
        ends = [midnight + dt.timedelta(seconds=-95 + 20 * k) for k in range(10)]  # 5 s over
        bodies = [sc.body(node, boot, seq, end, seconds=20)
                  for seq, end in enumerate(ends, start=1)]
        buffered = bodies[2:]
        assert _utc(buffered[0]["intervalEnd"]) < midnight < _utc(buffered[-1]["intervalEnd"])
        try:
            for body in bodies[:2]:
                sc.deliver(body)
            sc.wait_final(day_before)
            link.down()
            attempts = sc.sender.attempts
            probe = threading.Thread(target=lambda: [sc.deliver(b) for b in buffered],
                                     daemon=True)
            probe.start()  # the probe keeps trying its oldest report, the rest wait
            time.sleep(5)
            cut_off = sc.sender.attempts - attempts
            acked_during = len(sc.sender.acks)
            link.up()
            probe.join(timeout=60)
        finally:
            row = sc.outcome("probe-partitioned-across-midnight", started)
            fault_results.append(row)
        assert not probe.is_alive()
        assert cut_off >= 3 and acked_during == 2, (cut_off, acked_during)
        assert row["periods"] == [day_before, period_at("Daily", midnight).name], row
        last = ((sc.record(period_at("Daily", midnight).name) or {}).get("status")
                or {}).get("lastReport") or {}
        assert last.get("seq") == len(bodies), last  # the buffer's newest report came last
        assert row["adjustment_core_seconds"] > 0, row
        _check(row, op)


# 4 -------------------------------------------------------------------------------------

def test_a_pod_deleted_while_the_operator_is_down(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, fault_results: list[dict[str, Any]],
) -> None:
    """The operator stops; meanwhile the Deployment is deleted with its pods. The probe's
    buffered reports of those pods (from before the delete) arrive after the restart: they
    count in the Deployment's record, which the audit sweep then closes. (They went to
    bare-Pod records priced without requests until reports carried each pod's controller,
    pod-template-hash and requests.)"""
    started = time.monotonic()
    with running_operator(cluster.kubectl, cluster.kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"]) as op:
        sc = Scenario(cluster, namespace, op)
        deliver_all(sc, range(1, 6))
        _stop(op)
        cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=true")
        eventually(lambda: not json.loads(cluster.kubectl(
            "get", "pods", "-n", namespace, "-o", "json").stdout)["items"],
            timeout=30, what="the Deployment's pods gone", every=0.3)
        op.start(timeout=60)
        name = f"deployment-web-{sc.period}"
        try:
            deliver_all(sc, range(6, 11))  # buffered while the operator was down
            eventually(lambda: ((_stored(cluster, namespace, name) or {}).get("status")
                                or {}).get("phase") == "Closed",
                       timeout=40, what=f"{name} closed by the audit sweep", every=0.5)
        finally:
            row = sc.outcome("pod-deleted-while-operator-down", 10)
            row["seconds"] = round(time.monotonic() - started, 1)
            fault_results.append(row)
        _check(row, op, _records(cluster, namespace))


# 5 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_restart_in_the_middle_of_flushes(
    component: str, cluster: ClusterHandle, local_cluster: LocalCluster | None,
    namespace: str, apiserver_proxy: tuple[TcpProxy, Path], tmp_path: Path,
    fault_results: list[dict[str, Any]],
) -> None:
    """The apiserver (or etcd) is stopped (SIGTERM; SIGKILL after 3 s, as a short grace
    period would: on SIGTERM the apiserver drains for 20 s and more) and started again while
    reports flow and their checkpoints are in flight (a slow apiserver keeps a flush open
    when it goes). On a
    cluster the suite did not start (KOPECK_TEST_KUBECONFIG) the restart is played by the
    proxy: connections cut and refused for as long."""
    started = time.monotonic()
    proxy, kubeconfig = apiserver_proxy
    with running_operator(cluster.kubectl, kubeconfig, tmp_path / "op",
                          extra=["--status-interval", "1"]) as op:
        sc = Scenario(cluster, namespace, op)
        deliver_all(sc, range(1, 4))
        errors: list[BaseException] = []

        def deliver() -> None:
            try:
                deliver_all(sc, range(4, 16), deadline_s=90)
            except BaseException as exc:
                errors.append(exc)

        # The restart runs here, in the main thread: the control plane's processes die with
        # the thread that started them (PR_SET_PDEATHSIG), so deliver_all's fault thread
        # would take the restarted apiserver down with it when it ends.
        proxy.latency_s = 0.2  # a flush is in flight when the restart comes
        probe = threading.Thread(target=deliver, daemon=True)
        probe.start()
        took = -1.0
        phases: dict[str, float] = {}
        try:
            time.sleep(0.7)
            t0 = time.monotonic()
            if local_cluster is not None:
                stop_s, start_s = restart_component(local_cluster, component, timeout=3)
                phases = {"stop_seconds": round(stop_s, 1), "start_seconds": round(start_s, 1)}
            else:
                proxy.down()
                time.sleep(5)
                proxy.up()
            took = time.monotonic() - t0
            probe.join(timeout=120)
        finally:
            proxy.latency_s = 0.0
            readable = _served(cluster, namespace, f"deployment-web-{sc.period}")
            row = sc.outcome(f"{component}-restart-during-flush", 15)
            row["seconds"] = round(time.monotonic() - started, 1)
            row["restart_seconds"] = round(took, 1)
            row.update(phases)
            fault_results.append(row)
        assert not probe.is_alive() and not errors, errors
        _check(row, op, readable)
