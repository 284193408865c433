"""Folding reports into records: attribution, exactly-once marks, idle, period splits."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from kopeck.accounting.budget import PodShape
from kopeck.accounting.ledger import WorkloadKey, from_status, status_patch
from kopeck.api.report import ProbeReport
from kopeck.operator.costpolicies import remember
from kopeck.operator.fold import fold_report
from kopeck.operator.kube import Credentials, Kube
from kopeck.operator.settings import Settings
from kopeck.operator.state import PodInfo, State
from kopeck.operator.workloads import OwnerResolver, Workload
from tests.support.operator import pod_usage, policy_manifest, report

UTC = dt.UTC
T = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
WEB = WorkloadKey("shop", "Deployment", "web", "apps/v1")


def make_state(share_idle: bool = False) -> State:
    kube = Kube(Credentials("https://127.0.0.1:1", None))
    state = State(Settings(share_idle=share_idle), kube, OwnerResolver(kube))
    remember(state, json.loads(policy_manifest("team", "shop", amount="100",
                                               cpu_core_hour="36", memory_gib_hour="4.5")))
    state.namespaces["shop"] = {"kubernetes.io/metadata.name": "shop"}
    for i in range(3):
        state.pods[f"u{i}"] = PodInfo(
            f"u{i}", "shop", f"web-{i}", "n1", Workload(WEB),
            PodShape(cpu_cores=Decimal("0.5"), memory_bytes=Decimal(2**28)),
        )
    return state


def rep(seq: int, end: dt.datetime = T, pods: int = 3, boot: str = "b") -> ProbeReport:
    return ProbeReport.model_validate(report(
        node="n1", boot_id=boot, seq=seq, end=end,
        pods=[pod_usage(f"u{i}", "shop", f"web-{i}", cpu_core_seconds=0.2,
                        working_set=2**27) for i in range(pods)],
    ))


POD = Decimal("2.5") * 36 / 3600 + Decimal("1.25") * Decimal("4.5") / 3600


def test_fold_prices_and_marks_each_record_once() -> None:
    state = make_state()
    r = fold_report(state, rep(1), T)
    assert not r.duplicate and len(r.touched) == 3  # workload, namespace total, node idle
    acc = state.accs[(WEB, "2026-11")]
    assert acc.total == 3 * POD
    assert acc.policy == "team" and acc.pods_seen == 3
    assert fold_report(state, rep(1), T).duplicate
    assert acc.total == 3 * POD


def test_conservation_pods_plus_idle_is_the_node_cost() -> None:
    for share in (False, True):
        state = make_state(share_idle=share)
        fold_report(state, rep(1), T)
        records = {k[0].kind: a for k, a in state.accs.items()}
        node_cost = (4 * Decimal(36) + 16 * Decimal("4.5")) * 5 / 3600
        pods = records["Deployment"].cost_cpu + records["Deployment"].cost_memory
        shared = records["Deployment"].cost_idle
        idle = records["Node"].cost_idle if "Node" in records else Decimal(0)
        assert abs(pods + shared + idle - node_cost) < Decimal("1e-11")
        if share:
            assert "Node" not in records and shared > 0


def test_restart_replays_only_into_records_missing_the_report() -> None:
    """A checkpoint cut short: the namespace total was written, the workload was not."""
    state = make_state()
    fold_report(state, rep(1), T)
    fold_report(state, rep(2, T + dt.timedelta(seconds=5)), T)
    saved = {k: status_patch(a) for k, a in state.accs.items()}
    # crash: a new process restores the total with report 3, the workload without it
    fold_report(state, rep(3, T + dt.timedelta(seconds=10)), T)
    total_key = (WorkloadKey("shop", "Namespace", "shop", "v1"), "2026-11")
    saved[total_key] = status_patch(state.accs[total_key])
    fresh = make_state()
    for (key, period), status in saved.items():
        fresh.accs[(key, period)] = from_status(key, state.accs[(key, period)].period, status,
                                                "team")
    r = fold_report(fresh, rep(3, T + dt.timedelta(seconds=10)), T)
    assert not r.duplicate
    assert fresh.accs[(WEB, "2026-11")].total == 9 * POD
    assert fresh.accs[total_key].total == 9 * POD  # not counted twice


def test_interval_across_month_end_is_split() -> None:
    state = make_state()
    fold_report(state, rep(1, dt.datetime(2026, 12, 1, 0, 0, 2, tzinfo=UTC)), T)
    nov, dec = state.accs[(WEB, "2026-11")], state.accs[(WEB, "2026-12")]
    assert nov.total + dec.total == 3 * POD
    assert nov.cpu_core_seconds == Decimal("0.6") * Decimal("0.6")
    assert dec.requested_cpu_core_seconds == Decimal("7.5") * Decimal("0.4")


def test_unknown_pod_is_charged_by_name_and_closed_periods_are_frozen() -> None:
    state = make_state()
    body = report(node="n1", boot_id="b", seq=1, end=T, pods=[
        pod_usage("zz", "shop", "stray", cpu_core_seconds=1, working_set=2**20)])
    r = fold_report(state, ProbeReport.model_validate(body), T)
    assert r.unattributed == 1
    stray = state.accs[(WorkloadKey("shop", "Pod", "stray", "v1"), "2026-11")]
    assert stray.cpu_core_seconds == 1
    assert (WEB, "2026-11") not in state.accs
    fold_report(state, rep(2), T)
    frozen = state.accs[(WEB, "2026-11")]
    frozen.closed = frozen.final = True
    late = fold_report(state, rep(3), dt.datetime(2026, 12, 2, tzinfo=UTC))
    assert late.late == 1  # the final workload record refused it: an adjustment took it
    assert state.accs[(WEB, "2026-11")].total == 3 * POD
    assert state.accs[(WEB, "2026-11-adjustment")].total == 3 * POD


def test_late_usage_lands_in_the_adjustment_record_exactly_once() -> None:
    """A report for a final period changes nothing in the final record: its usage goes to
    the period's adjustment record, once; a resend of a report the final record already
    holds goes nowhere."""
    state = make_state()
    fold_report(state, rep(1), T)
    final = {k: a for k, a in state.accs.items()}
    for acc in final.values():
        acc.closed = acc.final = True
    before = {k: status_patch(a) for k, a in final.items()}
    later = dt.datetime(2026, 12, 20, tzinfo=UTC)
    r = fold_report(state, rep(2, T + dt.timedelta(seconds=5)), later)
    assert not r.duplicate and r.late == 3  # workload, namespace total, node idle
    assert {k: status_patch(a) for k, a in final.items()} == before
    adjustments = {k: a for k, a in state.accs.items() if a.adjustment}
    assert {k[1] for k in adjustments} == {"2026-11-adjustment"}
    assert set(r.touched) == set(adjustments)
    assert state.accs[(WEB, "2026-11-adjustment")].total == 3 * POD
    assert fold_report(state, rep(2, T + dt.timedelta(seconds=5)), later).duplicate
    state.seen.clear()  # a restarted operator: only the records' own marks decide
    again = fold_report(state, rep(2, T + dt.timedelta(seconds=5)), later)
    assert again.duplicate and not again.touched
    resent = fold_report(state, rep(1), later)  # held by the final records themselves
    assert resent.duplicate and not resent.touched
    assert state.accs[(WEB, "2026-11-adjustment")].total == 3 * POD


def test_a_record_closed_for_a_gone_workload_reopens_within_its_period() -> None:
    state = make_state()
    fold_report(state, rep(1), T)
    state.accs[(WEB, "2026-11")].closed = True  # the audit sweep: workload gone
    r = fold_report(state, rep(2, T + dt.timedelta(seconds=5)), T)
    assert r.late == 0 and not state.accs[(WEB, "2026-11")].closed
    assert state.accs[(WEB, "2026-11")].total == 6 * POD
    assert (WEB, "2026-11-adjustment") not in state.accs
