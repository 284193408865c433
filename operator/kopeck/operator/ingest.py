"""The HTTPS ingest endpoint for probe reports: authenticate, validate, fold, checkpoint, ack.

Only a pod-bound ServiceAccount token of an allowed probe account, for kopeck's audience
and the report's node, is accepted (probe_auth; the token is never logged or kept). A malformed body gets
400, a duplicate (node, bootId, seq) an ack with duplicate=true, and nothing a client
sends can crash the server: unexpected errors are counted and answered with 500.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kopeck.accounting.ledger import NODE_KIND, allocation_name
from kopeck.accounting.periods import period_at
from kopeck.api.common import API_VERSION
from kopeck.api.report import ProbeReport, ReportAck
from kopeck.operator import metrics
from kopeck.operator.allocations import Checkpointer, FlushError
from kopeck.operator.anomalies import Hit
from kopeck.operator.conditions import post_event, set_condition
from kopeck.operator.fold import (
    LEDGER_COMPLETE,
    REPORTS_DROPPED,
    DropPlan,
    count_seqs,
    fold_report,
    resolve_pod,
)
from kopeck.operator.kube import ApiError
from kopeck.operator.pods import fetch_pod, pod_from_report
from kopeck.operator.probe_auth import ProbeAuthenticator, Refusal
from kopeck.operator.state import AccKey, State, period_kind, spawn, utcnow

log = logging.getLogger("kopeck.ingest")
INGEST_PATH = "/v1/reports"
MAX_BODY_BYTES = 64 * 2**20
MAX_INTERVAL = dt.timedelta(hours=1)
RATE_WINDOW_SECONDS = 300.0
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
"""How far past the operator's clock a report may end: a node clock a few minutes ahead
is accepted (its usage lands in the period its timestamps name); beyond this the report
is refused, and the probe keeps it and offers it again later."""
ACK_WAIT_SECONDS = 8.0
"""How long a report waits for its checkpoint before a 503: under the probe's 10 s push
timeout, so the probe hears "resend later" rather than timing out on its own."""
"""Spend rates (for forecasts and admission) are measured over this trailing window."""


class Ingest:
    """The report endpoint and what happens after a report is folded."""

    def __init__(
        self,
        state: State,
        checkpointer: Checkpointer,
        on_hits: Callable[[list[Hit]], Awaitable[None]] | None = None,
        reviewer: ProbeAuthenticator | None = None,
    ) -> None:
        self.state = state
        self.checkpointer = checkpointer
        self.reviewer = reviewer or ProbeAuthenticator(state)
        self.on_hits = on_hits
        self._folded_at: dict[tuple[str, str, int], dict[AccKey, int]] = {}
        """(node, bootId, seq) -> record -> the generation whose flush makes its fold durable."""

    def app(self) -> web.Application:
        """The aiohttp application (served over TLS by `serve`)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes([web.post(INGEST_PATH, self.handle), web.post("/", self.handle)])
        return app

    async def serve(self, host: str, port: int, ssl_context: Any) -> web.AppRunner:
        """Listen on host:port with TLS."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        return runner

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/reports."""
        started = time.monotonic()
        try:
            return await self._handle(request)
        except Exception:  # never crash on a client's input; say so and count it
            log.exception("ingest failed unexpectedly")
            metrics.REPORTS.labels("error").inc()
            return _error(500, "internal error; the report will be resent")
        finally:
            metrics.INGEST_SECONDS.observe(time.monotonic() - started)

    async def _handle(self, request: web.Request) -> web.Response:
        state = self.state
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            metrics.REPORTS.labels("unauthorized").inc()
            return _error(401, "a ServiceAccount bearer token is required", challenge=True)
        try:
            probe = await self.reviewer.authenticate(auth[7:].strip())
        except (TimeoutError, ApiError, OSError) as exc:
            log.warning("TokenReview failed: %s", exc)
            metrics.REPORTS.labels("error").inc()
            return _error(503, "cannot verify the token now; retry")
        if isinstance(probe, Refusal):
            return _refuse(probe)
        if not state.active:
            metrics.REPORTS.labels("inactive").inc()
            return _error(503, "this operator replica is on standby; retry", retry_after=1)
        if not state.ready:
            metrics.REPORTS.labels("warming").inc()
            return _error(503, "the operator is starting; retry", retry_after=1)
        try:
            raw = await request.read()
            report = ProbeReport.model_validate_json(raw)
        except (ValidationError, ValueError) as exc:
            metrics.REPORTS.labels("malformed").inc()
            return _error(400, f"malformed report: {_short(exc)}")
        if report.interval_end < report.interval_start or (
            report.interval_end - report.interval_start > MAX_INTERVAL
        ):
            metrics.REPORTS.labels("malformed").inc()
            return _error(400, "malformed report: intervalEnd must follow intervalStart "
                               "by at most 1h")
        if (refusal := self.reviewer.node_refusal(probe, report.node)) is not None:
            return _refuse(refusal)
        now = utcnow()
        if report.interval_end > now + FUTURE_TOLERANCE:
            ahead = (report.interval_end - now).total_seconds()
            metrics.REPORTS.labels("future").inc()
            return _error(422, f"report {report.node}/{report.boot_id}/{report.seq}: "
                               f"intervalEnd {report.interval_end.isoformat()} is {ahead:.0f}s "
                               "ahead of the operator's clock (at most "
                               f"{FUTURE_TOLERANCE.total_seconds():.0f}s): check the node's "
                               "clock; the probe keeps the report and offers it again")
        await self._learn_pods(report)
        result = fold_report(state, report, now)
        state.node_seen[report.node] = time.time()
        generation = self.checkpointer.bump() if result.touched else None
        needs = dict.fromkeys(result.touched, generation or 0)
        mark = (report.node, report.boot_id, report.seq)
        first = self._folded_at.get(mark)
        if first is not None:
            first = self.checkpointer.held_by_reload(
                first, lambda k: (acc := state.accs.get(k)) is not None and acc.holds(*mark))
        if first is not None and not self.checkpointer.is_durable(first):
            # a resend: acked only once the write that first folded it is durable
            if generation is None:
                generation = self.checkpointer.bump()  # a flush (a retry) from now on
            needs = {**first, **needs}
        if result.touched:
            if len(self._folded_at) > 100_000:
                self._folded_at = {m: f for m, f in self._folded_at.items()
                                   if not self.checkpointer.is_durable(f)}
            self._folded_at[mark] = needs
        if not result.duplicate:
            node_cost = metrics.NODE_COST.labels(report.node, result.currency, "total")
            node_cost.inc(float(result.node_cost))
            metrics.NODE_COST.labels(report.node, result.currency, "allocated").inc(
                float(result.node_allocated))
            metrics.observe_report(state, report, result)
            state.counters["reports"] += 1
            state.counters["pods"] += len(report.pods)
            self._rates(result.spend_by_policy, report.interval_end)
            hits = self._anomalies(result, report.interval_end)
            if hits and self.on_hits is not None:
                await self.on_hits(hits)
            self._dropped(result.dropped, now)
            self._thresholds(report, now)
        if generation is not None:
            try:
                await self.checkpointer.wait_durable(generation, needs, ACK_WAIT_SECONDS)
            except (TimeoutError, FlushError):
                metrics.REPORTS.labels("unsaved").inc()
                return _error(503, "could not checkpoint; resend later", retry_after=1)
        metrics.REPORTS.labels("duplicate" if result.duplicate else "accepted").inc()
        ack = ReportAck(accepted=True, duplicate=result.duplicate)
        return web.json_response(ack.to_wire())

    async def _learn_pods(self, report: ProbeReport) -> None:
        """Fetch pods the watch has not delivered yet, so their first report is priced."""
        missing = [p for p in report.pods
                   if resolve_pod(self.state, p) is None and p.namespace and p.name]
        if missing:
            asked = missing[:200]
            found = await asyncio.gather(*(fetch_pod(self.state, p.namespace or "", p.name or "")
                                           for p in asked))
            for pod, info in zip(asked, found, strict=True):
                if info is None:  # gone from the apiserver: what the report says of it
                    await pod_from_report(self.state, pod, report.node)

    def _dropped(self, plans: list[DropPlan], now: dt.datetime) -> None:
        """Count the reports a probe declared dropped and say so on the node's record."""
        for plan in plans:
            lost = count_seqs(plan.missing)
            metrics.DROPPED_REPORTS.labels(plan.node).inc(lost)
            span = (f"between {_when(plan.after)} and {_when(plan.before)}"
                    if plan.after is not None else f"before {_when(plan.before)}")
            log.warning("node %s boot %s: %d reports (seq %s) dropped by its probe's buffer",
                        plan.node, plan.boot_id, lost, plan.missing.encode())
            for wk, record in plan.records:
                if wk.kind != NODE_KIND:
                    continue
                involved = {"apiVersion": API_VERSION, "kind": "Allocation",
                            "name": allocation_name(wk, record), "namespace": wk.namespace}
                spawn(post_event(
                    self.state.kube, involved, REPORTS_DROPPED,
                    f"node {plan.node} boot {plan.boot_id}: reports seq {plan.missing.encode()} "
                    f"({lost}) were dropped from the node-probe's full buffer and will never "
                    f"arrive; the hole lies {span}; {len(plan.records)} Allocations are marked "
                    f"{LEDGER_COMPLETE}=False (check the probe's buffer size and why it could "
                    "not reach the operator)", type_="Warning", now=now))

    def _thresholds(self, report: ProbeReport, now: dt.datetime) -> None:
        """A probe's threshold crossings become Events on the pod's workload (counted)."""
        for event in report.events:
            metrics.THRESHOLD_EVENTS.labels(event.kind).inc()
            info = self.state.pods.get(event.pod_uid)
            if info is None:
                log.info("threshold event %s for unknown pod %s on node %s", event.kind,
                         event.pod_uid, report.node)
                continue
            wk = info.workload.key
            involved = {"apiVersion": wk.api_version or "v1", "kind": wk.kind, "name": wk.name,
                        "namespace": wk.namespace}
            what = _THRESHOLD_TEXT[event.kind].format(value=event.value,
                                                      threshold=event.threshold)
            spawn(post_event(
                self.state.kube, involved, f"Pod{event.kind}",
                f"pod {info.namespace}/{info.name} on node {report.node}: {what} "
                "(node-probe threshold event)",
                type_="Normal" if event.kind == "Idle" else "Warning", now=now))

    def _rates(self, spend_by_policy: dict[str, Decimal], end: dt.datetime) -> None:
        """Each policy's spend per second over the last minutes, summed over all nodes."""
        rate_window = RATE_WINDOW_SECONDS
        now_s = end.timestamp()
        for policy, spend in spend_by_policy.items():
            log_ = self.state.spend_log.setdefault(policy, deque())
            log_.append((now_s, spend))
        for policy, log_ in self.state.spend_log.items():
            while log_ and log_[0][0] < now_s - rate_window:
                log_.popleft()
            if not log_:
                self.state.spend_rates.pop(policy, None)
                continue
            span = max(self.state.settings.probe_interval, now_s - log_[0][0]
                       + self.state.settings.probe_interval)
            total = sum((s for _, s in log_), Decimal(0))
            self.state.spend_rates[policy] = total / Decimal(repr(span))

    def _anomalies(self, result: Any, at: dt.datetime) -> list[Hit]:
        book = self.state.anomaly
        if book is None:
            return []
        hits: list[Hit] = []
        by_policy: dict[str, dict[Any, Decimal]] = {}
        for wk, spend in result.spend_by_workload.items():
            name = result.policy_by_workload.get(wk)
            if name is not None:
                by_policy.setdefault(name, {})[wk] = spend
        for name, spends in by_policy.items():
            entry = self.state.policies.get(name)
            if entry is None or entry.invalid:
                continue
            hits += book.observe(entry.named, at, result.seconds, spends)
            # mark workload records
            for wk in spends:
                policy = entry.named
                window_name = None
                for akey in result.touched:
                    if akey[0] == wk:
                        window_name = akey[1]
                if window_name is None:
                    continue
                acc = self.state.accs[(wk, window_name)]
                conds = acc.extra.setdefault("conditions", [])
                msg = next((h.anomaly.message for h in hits
                            if h.workload == wk and h.policy == policy.name), None)
                changed = set_condition(
                    conds, "Anomalous", msg is not None,
                    "SpendRateAnomaly" if msg else "SpendRateNormal",
                    msg or "spend rate within the baseline", at,
                )
                if changed:
                    self.state.dirty.add((wk, window_name))
        return hits


async def announce(state: State, hits: list[Hit], kick: Callable[[], None]) -> None:
    """Events and metrics for anomalies; wake the status writer for the policy condition."""
    for hit in hits:
        metrics.ANOMALIES.labels(hit.scope).inc()
        metrics.ANOMALOUS.labels(hit.policy, hit.key).set(1)
        if not hit.anomaly.first_in_episode:
            continue
        if hit.workload is not None:
            entry = state.policies.get(hit.policy)
            kind = period_kind(entry.named if entry else None)
            window = period_at(kind, hit.anomaly.at)
            involved = {
                "apiVersion": API_VERSION, "kind": "Allocation",
                "name": allocation_name(hit.workload, window.name),
                "namespace": hit.workload.namespace,
            }
        else:
            involved = {"apiVersion": API_VERSION, "kind": "CostPolicy", "name": hit.policy}
        spawn(post_event(
            state.kube, involved, "SpendAnomaly", hit.anomaly.message, type_="Warning"
        ))
    kick()


_THRESHOLD_TEXT = {
    "CpuHigh": "CPU at {value:.0%} of its limit (threshold {threshold:.0%})",
    "MemoryHigh": "working set at {value:.0%} of its memory limit (threshold {threshold:.0%})",
    "Idle": "CPU and memory at {value:.0%} of its requests (below {threshold:.0%})",
}


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()[:3]
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errs
        )
    return str(exc)[:200]


def _refuse(refusal: Refusal) -> web.Response:
    metrics.REPORTS.labels(refusal.outcome).inc()
    return _error(refusal.status, refusal.reason, challenge=refusal.status == 401,
                  retry_after=refusal.retry_after)


def _error(
    status: int, message: str, *, challenge: bool = False, retry_after: int | None = None
) -> web.Response:
    headers = {}
    if challenge:
        headers["WWW-Authenticate"] = 'Bearer realm="kopeck-ingest"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.json_response({"error": message}, status=status, headers=headers)
