"""Budget enforcement at admission: kopf validating handlers, the server, and its registration.

For every create/update/delete of a Deployment, StatefulSet, DaemonSet, Job, CronJob or
Pod, and every change of a scale subresource, the webhook projects the period's spend with
the change (requests x replicas x rates x time left, on top of the spend forecast and the
reservations of earlier admissions) and applies the policy's enforcement: Deny refuses,
Warn admits with admission warnings, Audit admits and records an Event.

Admitting an increase under Deny reserves the projected spend in the policy's status with
an optimistic-concurrency write (resourceVersion), so concurrent admissions cannot
overspend together. Server-side dry-run requests are judged the same but reserve nothing.

The operator manages the ValidatingWebhookConfiguration: one webhook per CostPolicy, with
the policy's namespace selector and failurePolicy (default Ignore, so a dead webhook never
blocks the cluster), all pointing at this server with the policy's name in the URL path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp.web
import kopf

from kopeck.accounting.budget import PodShape, Projection, project_change, run_rate
from kopeck.accounting.ledger import WorkloadKey
from kopeck.accounting.matching import NamedPolicy
from kopeck.accounting.periods import period_at
from kopeck.accounting.prices import GIB, HOUR, NodeFacts, Rates, rates_for_node
from kopeck.accounting.summary import money_text
from kopeck.api.allocation import Proposal
from kopeck.api.common import API_VERSION, LabelSelector
from kopeck.api.costpolicy import (
    POLICY_NAME_MAX,
    CostPolicySpec,
    Reservation,
    label_key_problem,
    label_value_problem,
)
from kopeck.operator import metrics
from kopeck.operator.conditions import post_event
from kopeck.operator.costpolicies import PLURAL as POLICY_PLURAL
from kopeck.operator.costpolicies import not_enforced, policy_spent
from kopeck.operator.kube import ApiError, resource_path
from kopeck.operator.state import State, period_kind, spawn, utcnow
from kopeck.operator.workloads import (
    KINDS,
    container_resources,
    controller_ref,
    pod_shape,
    replicas_of,
    template_of,
)
from kopeck.rightsizing.admission import WorkloadName, admission_warnings
from kopeck.rightsizing.gates import policy_gate

log = logging.getLogger("kopeck.webhook")
HOOK_ID = "budget"
POLICY_HEADER = "X-Kopeck-Policy"
WORKLOADS: list[tuple[str, str, str]] = [
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "daemonsets"),
    ("apps", "v1", "replicasets"),
    ("", "v1", "replicationcontrollers"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
    ("", "v1", "pods"),
]
SCALABLE: list[tuple[str, str, str]] = [
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "replicasets"),
    ("", "v1", "replicationcontrollers"),
]
RESIZABLE: list[tuple[str, str, str]] = [("", "v1", "pods")]
"""In-place resize (the pods/resize subresource) raises a running pod's requests."""
PLURAL_KIND = {
    "deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet",
    "jobs": "Job", "cronjobs": "CronJob", "pods": "Pod", "replicasets": "ReplicaSet",
    "replicationcontrollers": "ReplicationController",
}
MADE_BY: dict[str, tuple[str, ...]] = {
    "Pod": ("ReplicaSet", "ReplicationController", "StatefulSet", "DaemonSet", "Job"),
    "ReplicaSet": ("Deployment",),
}
"""Objects judged through their controller (when a controller made them): the kinds of
controller that count. Anything else is judged itself, whatever its ownerReferences say."""
CONTROLLER_USER = "system:kube-controller-manager"
CONTROLLER_ACCOUNTS = "system:serviceaccount:kube-system:"
"""Who the built-in controllers act as (their own ServiceAccounts, or the controller
manager's identity without --use-service-account-credentials)."""


def made_by_controller(kind: str, meta: Mapping[str, Any], userinfo: Mapping[str, Any]) -> bool:
    """A pod (or ReplicaSet) a built-in controller made for a workload that was judged: its
    controller reference names a judged kind and the request comes from a controller. A
    user's object naming a controller of its own is judged like a bare one."""
    ref = controller_ref(meta)
    user = str(userinfo.get("username") or "")
    return (ref is not None and str(ref.get("kind")) in MADE_BY.get(kind, ())
            and (user == CONTROLLER_USER or user.startswith(CONTROLLER_ACCOUNTS)))
_locks: dict[str, asyncio.Lock] = {}


class PolicyRoutingWebhookServer(kopf.WebhookServer):
    """kopf's WebhookServer, with URLs /<handler-id>/<policy> for per-policy webhooks.

    The policy name travels to the handler in the headers mapping kopf already passes, so
    when several policies' webhooks match one request only the winning policy's acts.
    """

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        started = time.perf_counter()
        headers = dict(request.headers)
        hook, _, policy = request.match_info.get("id", "").partition("/")
        headers[POLICY_HEADER] = policy
        try:
            data = json.loads(await request.text())
            response = await fn(data, webhook=hook or None, headers=headers, sslpeer=None)
            answer = aiohttp.web.json_response(response)
            metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)
            return answer
        except json.JSONDecodeError as exc:
            metrics.ADMISSIONS.labels("malformed").inc()
            raise aiohttp.web.HTTPBadRequest(reason="malformed AdmissionReview") from exc
        except Exception as exc:  # an AdmissionReview we cannot read: 400, never a crash
            metrics.ADMISSIONS.labels("malformed").inc()
            raise aiohttp.web.HTTPBadRequest(reason=str(exc)[:200] or "bad request") from exc


def admission_rates(state: State, policy: NamedPolicy) -> Rates | None:
    """Rates to project a change with: the rate card, else the mean over known nodes."""
    pricing = policy.spec.pricing
    if pricing.rate_card is not None and not pricing.node_overrides:
        return rates_for_node(pricing, NodeFacts("admission"))
    rated = [rates_for_node(pricing, n) for n in state.nodes.values() if n.cpu_cores > 0]
    if not rated:
        return rates_for_node(pricing, NodeFacts("admission")) if pricing.rate_card else None
    k = Decimal(len(rated))
    return Rates(
        currency=pricing.currency,
        cpu_core_second=sum((r.cpu_core_second for r in rated), Decimal(0)) / k,
        memory_byte_second=sum((r.memory_byte_second for r in rated), Decimal(0)) / k,
        gpu_second=sum((r.gpu_second for r in rated), Decimal(0)) / k,
    )


def committed_rate(state: State, policy: NamedPolicy, now: dt.datetime) -> Decimal:
    """Current spend per second of what already runs under the policy."""
    rate = state.spend_rates.get(policy.name)
    if rate is not None:
        return rate
    window = period_at(period_kind(policy), now)
    return run_rate(policy_spent(state, policy.name, window), window, now)


def deny_message(
    workload: WorkloadKey, policy: NamedPolicy, p: Projection, period: str, currency: str
) -> str:
    """The message a user sees: workload, added monthly cost, policy, spent, budget."""
    return (
        f"kopeck: {workload.kind.lower()} {workload.namespace}/{workload.name} would add "
        f"{money_text(p.added_monthly, currency)}/month "
        f"({money_text(p.added_to_period_end, currency)} to the end of {period}); "
        f"CostPolicy {policy.name} has spent {money_text(p.spent, currency)} of its "
        f"{money_text(p.amount, currency)} budget (reserved {money_text(p.reserved, currency)}, "
        f"projected {money_text(p.projected, currency)}). Lower requests or replicas, or "
        f"raise spec.budget.amount of CostPolicy {policy.name}"
    )


def change_digest(old: Any, old_replicas: int, new: Any, new_replicas: int) -> str:
    """What an admitted change is, as a short digest of the workload's old and new shape and
    replicas: the same change admitted twice (a retried patch) is reserved once."""
    text = f"{old!r}|{old_replicas}|{new!r}|{new_replicas}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_pods(old: PodShape | None, old_replicas: int, new: PodShape, new_replicas: int) -> int:
    """Pods an admitted change creates: the added replicas, or every replica when the pod
    template's requests changed (a rollout replaces them all) or the workload is new."""
    if old is None or old != new:
        return new_replicas
    return max(0, new_replicas - old_replicas)


def _reserved_total(status: Mapping[str, Any], now: dt.datetime) -> tuple[Decimal, list[dict[str, Any]]]:
    live = []
    total = Decimal(0)
    for r in status.get("reservations") or []:
        try:
            expires = dt.datetime.fromisoformat(str(r.get("expires")).replace("Z", "+00:00"))
            amount = Decimal(str(r.get("amount")))
        except (ValueError, ArithmeticError):
            continue
        if expires > now:
            live.append(dict(r))
            total += amount
    return total, live


@dataclass
class _Ask:
    """One admission waiting for its reservation: what reserve() was called with."""

    key: str
    project: Any
    now: dt.datetime
    done: asyncio.Future[Projection]
    change: str = ""
    """Digest of the change admitted ('' when it has none): the same change twice is one."""
    new_pods: int = 0
    """Pods the change creates (see Reservation.new_pods)."""


MAX_CHANGES = 32
"""Changes remembered per reservation (the CRD's bound)."""
_asks: dict[str, list[_Ask]] = {}
_written: dict[str, Mapping[str, Any]] = {}
"""Policy name -> the object our last reservation write returned: the next burst decides on
it without a read; its resourceVersion precondition fails (and we read) if anyone wrote since."""


async def reserve(
    state: State, policy: NamedPolicy, key: str, project: Any, now: dt.datetime,
    change: str = "", new_pods: int = 0,
) -> Projection:
    """Project against the freshest policy status and reserve, retrying on conflicts.

    `project(reserved) -> Projection`. Returns the projection that was decided on; when it
    is over budget nothing was written.

    Admissions of one policy are decided one after the other in arrival order, each seeing
    the reservations of those before it; the ones that arrive while a status write is in
    flight are decided together and written with one write (group commit), on the object
    our previous write returned (its resourceVersion is the write's precondition, so a
    decision never stands on a stale status), else on a fresh read.
    """
    lock = _locks.setdefault(policy.name, asyncio.Lock())
    waiting = _asks.setdefault(policy.name, [])
    ask = _Ask(key, project, now, asyncio.get_running_loop().create_future(), change, new_pods)
    waiting.append(ask)
    try:
        async with lock:
            if not ask.done.done():
                batch = waiting[:]
                waiting.clear()
                try:
                    await _reserve_together(state, policy, batch)
                except asyncio.CancelledError:  # the others are decided by the next holder
                    waiting[:0] = [a for a in batch if a is not ask and not a.done.done()]
                    raise
                except Exception as exc:
                    for other in batch:
                        if not other.done.done():
                            other.done.set_exception(exc)
    except asyncio.CancelledError:
        if ask in waiting:
            waiting.remove(ask)
        raise
    return ask.done.result()


async def _reserve_together(state: State, policy: NamedPolicy, batch: list[_Ask]) -> None:
    """Decide `batch` in order on one view of the policy status, then write it once."""
    path = resource_path(API_VERSION, POLICY_PLURAL, None, policy.name)
    cached = _written.pop(policy.name, None)
    for _ in range(25):
        obj = cached if cached is not None else await state.kube.get(path)
        live: list[dict[str, Any]] = list((obj.get("status") or {}).get("reservations") or [])
        decided: list[tuple[_Ask, Projection]] = []
        written = 0
        for ask in batch:
            reserved, live = _reserved_total({"reservations": live}, ask.now)
            mine = next((r for r in live if r.get("key") == ask.key), None)
            changes: dict[str, str] = dict((mine or {}).get("changes") or {})
            if ask.change and ask.change in changes:
                # the same change admitted again: decided as the first time, not added
                decided.append((ask, ask.project(reserved - Decimal(changes[ask.change]))))
                continue
            p: Projection = ask.project(reserved)
            decided.append((ask, p))
            if p.over_budget or p.added_to_period_end <= 0:
                continue
            added = p.added_to_period_end.quantize(Decimal("0.000001"))
            amount = added + (Decimal(str(mine["amount"])) if mine else Decimal(0))
            if ask.change:
                changes[ask.change] = str(added)
                while len(changes) > MAX_CHANGES:  # the oldest go; their money stays
                    changes.pop(next(iter(changes)))
            live = [r for r in live if r.get("key") != ask.key]
            expires = (ask.now + dt.timedelta(seconds=state.settings.reservation_ttl)
                       ).replace(microsecond=0)
            since = (mine or {}).get("since") or ask.now.replace(microsecond=0)
            pods = int((mine or {}).get("newPods") or 0) + ask.new_pods
            entry = Reservation(key=ask.key, amount=amount, expires=expires, since=since,
                                new_pods=pods,
                                changes={k: Decimal(v) for k, v in changes.items()} or None)
            live.append(entry.model_dump(mode="json", by_alias=True, exclude_none=True))
            written += 1
        if not written and cached is not None:
            cached = None  # nothing to write proves nothing: decide again on a fresh read
            continue
        cached = None
        if written:
            total = sum((Decimal(str(r["amount"])) for r in live), Decimal(0))
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {"reservations": live, "reserved": str(total)},
            }
            try:
                got = await state.kube.merge_patch(path + "/status", body)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                state.counters["reservation_conflicts"] += 1
                continue
            if isinstance(got, Mapping) and (got.get("metadata") or {}).get("resourceVersion"):
                _written[policy.name] = got
            state.counters["reservations"] += written
        for ask, p in decided:
            ask.done.set_result(p)
        return
    raise kopf.AdmissionError(
        f"kopeck: CostPolicy {policy.name} is being changed by many admissions at once; "
        "retry", code=409,
    )


async def release(state: State, policy: NamedPolicy, key: str) -> None:
    """Drop a deleted workload's reservation (optimistic, best effort)."""
    entry = state.policies.get(policy.name)
    if entry is None or not any(r.get("key") == key for r in entry.status.get("reservations") or []):
        return
    path = resource_path(API_VERSION, POLICY_PLURAL, None, policy.name)
    for _ in range(10):
        obj = await state.kube.get(path)
        res = [r for r in (obj.get("status") or {}).get("reservations") or [] if r.get("key") != key]
        total = sum((Decimal(str(r.get("amount", 0))) for r in res), Decimal(0))
        try:
            await state.kube.merge_patch(path + "/status", {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {"reservations": res, "reserved": str(total)},
            })
            return
        except ApiError as exc:
            if not exc.conflict:
                return


async def _scale_target(
    state: State, plural: str, namespace: str, name: str
) -> Mapping[str, Any] | None:
    api = KINDS[PLURAL_KIND[plural]][0]
    return await state.kube.get_or_none(resource_path(api, plural, namespace, name))


async def judge(
    *,
    state: State,
    plural: str,
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    operation: str,
    subresource: str | None,
    dryrun: bool,
    warnings: list[str],
    headers: Mapping[str, str],
    userinfo: Mapping[str, Any] | None = None,
) -> None:
    """The admission decision; raises kopf.AdmissionError to deny."""
    userinfo = userinfo or {}
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    name = str(meta.get("name") or "")
    kind = PLURAL_KIND.get(plural, plural)
    now = utcnow()
    if subresource == "scale":
        target = await _scale_target(state, plural, namespace, name)
        if target is None:
            return
        labels = dict((target.get("metadata") or {}).get("labels") or {})
        spec = template_of(kind, target) or {}
        shape = pod_shape(spec)
        new_replicas = int(((new or {}).get("spec") or {}).get("replicas") or 0)
        old_replicas = int(((old or {}).get("spec") or {}).get("replicas") or 0) if old else (
            replicas_of(kind, target)
        )
        old_shape: PodShape | None = shape
        containers = container_resources(spec)
    else:
        labels = dict(meta.get("labels") or {})
        if subresource != "resize" and made_by_controller(kind, meta, userinfo):
            return  # judged through its controller (a resize changes this pod alone)
        spec = template_of(kind, new or body) or {}
        shape = pod_shape(spec)
        nodes = max(1, len(state.nodes))
        new_replicas = replicas_of(kind, new or body, nodes)
        old_spec = template_of(kind, old) if old else None
        old_shape = pod_shape(old_spec) if old_spec is not None else None
        old_replicas = replicas_of(kind, old, nodes) if old else 0
        containers = container_resources(spec)
    policy = state.policy_for(namespace, labels)
    routed = headers.get(POLICY_HEADER)
    if policy is None or (routed and routed != policy.name):
        return  # another policy's webhook, or no policy: not ours to judge
    workload = WorkloadKey(namespace, kind, name, KINDS.get(kind, ("v1", ""))[0])
    if operation == "DELETE":
        if not dryrun:
            await release(state, policy, workload.ref)
        return
    pspec = policy.spec
    currency = pspec.pricing.currency
    rates = admission_rates(state, policy)
    window = period_at(period_kind(policy), now)
    if rates is not None and pspec.rightsizing.mode == "Propose" and subresource is None:
        gate = policy_gate(pspec, "Rightsizing", now, namespace, labels)
        acc = state.accs.get((workload, window.name))
        raw = acc.extra.get("proposal") if acc else None
        if raw and not gate.suspended:
            try:
                proposal = Proposal.model_validate(raw)
                warnings.extend(admission_warnings(
                    WorkloadName(kind, namespace, name), containers, proposal,
                    replicas=max(1, new_replicas),
                    cpu_core_hour=rates.cpu_core_second * HOUR,
                    memory_gib_hour=rates.memory_byte_second * HOUR * GIB,
                    currency=currency,
                ))
            except ValueError:
                pass
    budget = pspec.budget
    if budget is None or rates is None:
        metrics.ADMISSIONS.labels("allowed").inc()
        return
    gate = policy_gate(pspec, "Enforcement", now, namespace, labels)
    if gate.suspended:
        metrics.ADMISSIONS.labels("suspended").inc()
        return
    spent = policy_spent(state, policy.name, window)
    committed = committed_rate(state, policy, now)

    def project(reserved: Decimal) -> Projection:
        return project_change(
            old=old_shape, old_replicas=old_replicas, new=shape, new_replicas=new_replicas,
            rates=rates, window=window, now=now, amount=budget.amount, spent=spent,
            reserved=reserved, committed_rate_per_second=committed,
        )

    entry = state.policies.get(policy.name)
    cached_reserved, _ = _reserved_total(entry.status if entry else {}, now)
    p = project(cached_reserved)
    if p.added_to_period_end <= 0:
        metrics.ADMISSIONS.labels("allowed").inc()
        return
    enforcement = budget.enforcement
    if enforcement == "Deny" and not dryrun and not p.over_budget:
        p = await reserve(state, policy, workload.ref, project, now,
                          change=change_digest(old_shape, old_replicas, shape, new_replicas),
                          new_pods=new_pods(old_shape, old_replicas, shape, new_replicas))
    if not p.over_budget:
        metrics.ADMISSIONS.labels("allowed").inc()
        return
    message = deny_message(workload, policy, p, window.name, currency)
    if enforcement == "Deny":
        metrics.ADMISSIONS.labels("denied").inc()
        raise kopf.AdmissionError(message, code=403)
    if enforcement == "Warn":
        metrics.ADMISSIONS.labels("warned").inc()
        warnings.append(message[:256] if len(message) <= 256 else message[:253] + "...")
        return
    metrics.ADMISSIONS.labels("audited").inc()
    if not dryrun:
        involved = {"apiVersion": API_VERSION, "kind": "CostPolicy", "name": policy.name}
        spawn(post_event(state.kube, involved, "BudgetAudit", message, type_="Warning", now=now))


def _handler(plural: str) -> Any:
    async def handler(
        body: Mapping[str, Any], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
        operation: str, subresource: str | None, dryrun: bool, warnings: list[str],
        headers: Mapping[str, str], memo: Any, userinfo: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        started = time.monotonic()
        try:
            await judge(
                state=memo.state, plural=plural, body=body, old=old, new=new,
                operation=operation, subresource=subresource, dryrun=dryrun,
                warnings=warnings, headers=headers, userinfo=userinfo,
            )
        finally:
            memo.state.counters["admissions"] += 1
            memo.state.counters["admission_ms"] += int((time.monotonic() - started) * 1000)
    handler.__name__ = f"budget_{plural}"
    return handler


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    """Register the validating handlers (all under one handler id, routed by resource)."""
    for group, version, plural in WORKLOADS:
        kopf.on.validate(
            group, version, plural, id=HOOK_ID, operations=["CREATE", "UPDATE", "DELETE"],
            registry=registry,
        )(_handler(plural))
    for group, version, plural in SCALABLE:
        kopf.on.validate(
            group, version, plural, id=HOOK_ID, subresource="scale", operations=["UPDATE"],
            registry=registry,
        )(_handler(plural))
    for group, version, plural in RESIZABLE:
        kopf.on.validate(
            group, version, plural, id=HOOK_ID, subresource="resize", operations=["UPDATE"],
            registry=registry,
        )(_handler(plural))


def _selector(sel: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel is None:
        return out
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        out["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": e.values} if e.values else {})}
            for e in sel.match_expressions
        ]
    return out


def selector_problem(field: str, sel: Mapping[str, Any]) -> str | None:
    """Why the apiserver would refuse this selector in a webhook configuration, or None."""
    for key, value in (sel.get("matchLabels") or {}).items():
        problem = label_key_problem(str(key)) or label_value_problem(str(value))
        if problem:
            return f"{field}.matchLabels: {problem}"
    for i, req in enumerate(sel.get("matchExpressions") or []):
        where = f"{field}.matchExpressions[{i}]"
        op, values = req.get("operator"), req.get("values") or []
        problem = label_key_problem(str(req.get("key", "")))
        if problem:
            return f"{where}.key: {problem}"
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return f"{where}.operator: {op!r} is not In, NotIn, Exists or DoesNotExist"
        if op in ("In", "NotIn") and not values:
            return f"{where}.values: must be non-empty for operator {op}"
        if op in ("Exists", "DoesNotExist") and values:
            return f"{where}.values: must be left out for operator {op}"
        for v in values:
            problem = label_value_problem(str(v))
            if problem:
                return f"{where}.values: {problem}"
    return None


# Requests that cannot change a decision never reach the webhook: CEL match conditions,
# evaluated inside the apiserver, mirror judge()'s early returns. A condition is True when the
# request must be judged; every one must hold for the apiserver to call us. A guard that
# cannot be evaluated (a field missing) always lands on "call".
_OPERATION_DELETE = "request.operation == 'DELETE'"
_SCALE = "(has(request.subResource) && request.subResource == 'scale')"
_JUDGED = {"new": "object", "old": "oldObject"}


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cel_labels(obj: str) -> str:
    return f"(has({obj}.metadata.labels) ? {obj}.metadata.labels : {{}})"


def _cel_selector(sel: LabelSelector, labels: str) -> str:
    """CEL true exactly when `selector_matches(sel, labels)` is."""
    terms = []
    for key, value in sorted((sel.match_labels or {}).items()):
        k = _cel_string(key)
        terms.append(f"({k} in {labels} && {labels}[{k}] == {_cel_string(value)})")
    for req in sel.match_expressions or []:
        k = _cel_string(req.key)
        values = "[" + ", ".join(_cel_string(v) for v in req.values or []) + "]"
        has_value = f"({k} in {labels} && {labels}[{k}] in {values})"
        terms.append({
            "In": has_value, "NotIn": f"!{has_value}",
            "Exists": f"({k} in {labels})", "DoesNotExist": f"!({k} in {labels})",
        }[req.operator])
    return " && ".join(terms) or "true"


def _cel_judged_selector(sel: LabelSelector) -> str:
    """The selector over the labels judge() reads: the new object's, the old one on DELETE."""
    return (f"({_OPERATION_DELETE} ? ({_cel_selector(sel, _cel_labels('oldObject'))}) "
            f": ({_cel_selector(sel, _cel_labels('object'))}))")


def _cel_path(obj: str, fields: tuple[str, ...], default: str) -> str:
    """obj.f1...fn when every step exists, else `default`."""
    guards, expr = [], obj
    for f in fields:
        guards.append(f"has({expr}.{f})")
        expr = f"{expr}.{f}"
    return f"({' && '.join(guards)} ? {expr} : {default})"


# resource -> (path of the pod spec, path of the replica count) as template_of() and
# replicas_of() read them; a DaemonSet's count (the nodes) and a Pod's (1) never change in
# an update.
_SHAPE_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "deployments": (("spec", "template", "spec"), ("spec", "replicas")),
    "statefulsets": (("spec", "template", "spec"), ("spec", "replicas")),
    "daemonsets": (("spec", "template", "spec"), None),
    "jobs": (("spec", "template", "spec"), ("spec", "parallelism")),
    "cronjobs": (("spec", "jobTemplate", "spec", "template", "spec"),
                 ("spec", "jobTemplate", "spec", "parallelism")),
    "replicasets": (("spec", "template", "spec"), ("spec", "replicas")),
    "replicationcontrollers": (("spec", "template", "spec"), ("spec", "replicas")),
    "pods": (("spec",), None),
}


def _cel_by_resource(obj: str, pick: Any, other: str) -> str:
    """A ternary over request.resource.resource choosing pick(obj, resource) (else `other`)."""
    expr = other
    for resource in reversed(list(_SHAPE_PATHS)):
        expr = (f"(request.resource.resource == {_cel_string(resource)} ? "
                f"{pick(obj, resource)} : {expr})")
    return expr


def _cel_same_spend() -> str:
    """CEL true when an UPDATE cannot add spend: what pod_shape() reads is equal in object
    and oldObject (a missing pod spec never is) and the replica count did not grow."""
    def spec(obj: str, resource: str) -> str:
        return _cel_path(obj, _SHAPE_PATHS[resource][0], "{}")

    def count(obj: str, resource: str) -> str:
        path = _SHAPE_PATHS[resource][1]
        return _cel_path(obj, path, "1") if path else "0"

    def each(i: int, field: str, part: str, empty: str) -> str:
        return (f"(has(s[{i}].{field}) ? s[{i}].{field} : []).map(c, "
                f"has(c.{part}) ? c.{part} : {empty})")

    same = [
        "has(s[0].containers) && has(s[1].containers)",
        *(f"{each(0, f, part, empty)} == {each(1, f, part, empty)}"
          for f, part, empty in (("containers", "resources", "{}"),
                                 ("initContainers", "resources", "{}"),
                                 ("initContainers", "restartPolicy", "''"))),
        "(has(s[0].overhead) ? s[0].overhead : {}) == (has(s[1].overhead) ? s[1].overhead : {})",
    ]
    specs = [_cel_by_resource(obj, spec, "{}") for obj in ("object", "oldObject")]
    counts = [_cel_by_resource(obj, count, "0") for obj in ("object", "oldObject")]
    return f"[[{specs[0]}, {specs[1]}]].all(s, {' && '.join(same)}) && {counts[0]} <= {counts[1]}"


def _cel_scale_not_up() -> str:
    counts = []
    for obj in ("object", "oldObject"):
        counts.append(f"(has({obj}.spec) && has({obj}.spec.replicas) ? {obj}.spec.replicas : 0)")
    return f"{counts[0]} <= {counts[1]}"


def _cel_made_by() -> str:
    """CEL true exactly when judge() leaves a request to the controller: made_by_controller()
    of the object it reads, and not a resize."""
    obj = f"({_OPERATION_DELETE} ? oldObject : object)"
    by_resource = []
    for kind, owners in MADE_BY.items():
        plural = next(p for p, k in PLURAL_KIND.items() if k == kind)
        kinds = "[" + ", ".join(_cel_string(o) for o in owners) + "]"
        by_resource.append(
            f"(request.resource.resource == {_cel_string(plural)} && "
            f"has({obj}.metadata.ownerReferences) && {obj}.metadata.ownerReferences.exists(r, "
            f"has(r.controller) && r.controller && r.kind in {kinds}))")
    user = "request.userInfo.username"
    return (f"!(has(request.subResource) && request.subResource == 'resize') && "
            f"({' || '.join(by_resource)}) && "
            f"({user} == {_cel_string(CONTROLLER_USER)} || "
            f"{user}.startsWith({_cel_string(CONTROLLER_ACCOUNTS)}))")


def match_conditions(spec: CostPolicySpec) -> list[dict[str, str]]:
    """The CEL conditions under which a request can change this policy's decision.

    Mirrors judge(): pods with owner references are judged through their controller; a
    workload the policy's selector does not select is another policy's; an exempt workload
    is neither warned nor enforced, but its DELETE still releases a reservation; an UPDATE
    that keeps requests and does not add replicas adds no spend (unless rightsizing
    proposals warn on every change); without a budget only DELETEs (and, under Propose,
    creates and updates) matter.
    """
    out = [{"name": "kopeck-not-made-by-a-controller", "expression": "!(" + _cel_made_by() + ")"}]
    scope = spec.scope.selector
    if scope is not None and not scope.is_empty():
        out.append({"name": "kopeck-selected-by-policy",
                    "expression": f"{_SCALE} || {_cel_judged_selector(scope)}"})
    exemptions = spec.exemptions
    if exemptions is not None and exemptions.namespaces:
        names = "[" + ", ".join(_cel_string(n) for n in exemptions.namespaces) + "]"
        out.append({"name": "kopeck-namespace-not-exempt",
                    "expression": f"{_OPERATION_DELETE} || !(request.namespace in {names})"})
    if exemptions is not None and exemptions.selector is not None and not exemptions.selector.is_empty():
        out.append({"name": "kopeck-workload-not-exempt", "expression": (
            f"{_OPERATION_DELETE} || {_SCALE} || "
            f"!({_cel_selector(exemptions.selector, _cel_labels('object'))})")})
    proposes = spec.rightsizing.mode == "Propose"
    if spec.budget is None:
        out.append({"name": "kopeck-release-or-propose", "expression": (
            f"{_OPERATION_DELETE} || !{_SCALE}" if proposes else _OPERATION_DELETE)})
        return out
    out.append({"name": "kopeck-scale-adds-replicas", "expression": (
        f"!(request.operation == 'UPDATE' && {_SCALE} && {_cel_scale_not_up()})")})
    if not proposes:
        out.append({"name": "kopeck-update-adds-spend", "expression": (
            f"!(request.operation == 'UPDATE' && !{_SCALE} && {_cel_same_spend()})")})
    return out


def desired_webhooks(state: State, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """One webhook per policy: its namespace selector, its match conditions (requests that
    cannot change its decision stay in the apiserver), its failurePolicy, our URL (or the
    Service in front of us, when one is configured)."""
    service = state.settings.webhook_service_ref()
    hooks = []
    for name, entry in sorted(state.policies.items()):
        if entry.invalid:
            continue
        spec = entry.named.spec
        failure = spec.budget.failure_policy if spec.budget else "Ignore"
        ns_selector = _selector(spec.scope.namespace_selector)
        ns_selector.setdefault("matchExpressions", []).append({
            "key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", state.settings.namespace],
        })
        rules = [
            {"apiGroups": [g], "apiVersions": [v], "resources": [p],
             "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Namespaced"}
            for g, v, p in WORKLOADS
        ] + [
            {"apiGroups": [g], "apiVersions": [v], "resources": [f"{p}/{sub}"],
             "operations": ["UPDATE"], "scope": "Namespaced"}
            for sub, routes in (("scale", SCALABLE), ("resize", RESIZABLE))
            for g, v, p in routes
        ]
        hook_name = f"{name}.budget.cost.kopeck.io"
        problem = selector_problem("spec.scope.namespaceSelector", ns_selector)
        if problem is None and len(hook_name) > 253:
            problem = f"metadata.name: longer than {POLICY_NAME_MAX} characters"
        if problem is not None:
            _exclude(name, problem)
            continue
        refusal = refused_by_server.get(name)
        if refusal is not None and refusal[0] == entry.named.generation:
            _exclude(name, refusal[1])
            continue
        not_enforced.pop(name, None)
        hooks.append({
            "name": hook_name,
            "clientConfig": (
                {"service": {**service, "path": f"/{HOOK_ID}/{name}"}, "caBundle": ca_bundle}
                if service else {"url": f"{url}/{HOOK_ID}/{name}", "caBundle": ca_bundle}
            ),
            "rules": rules,
            "namespaceSelector": ns_selector,
            "matchConditions": match_conditions(spec),
            "failurePolicy": failure,
            "sideEffects": "NoneOnDryRun",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": state.settings.webhook_timeout,
            "admissionReviewVersions": ["v1"],
        })
    return hooks


refused_by_server: dict[str, tuple[int, str]] = {}
"""Policy name -> the apiserver's 422 for its webhook entry (retried when the policy changes)."""


def _exclude(name: str, problem: str) -> None:
    if not_enforced.get(name) != problem:
        log.warning("CostPolicy %s is not enforced: %s", name, problem)
    not_enforced[name] = (
        f"left out of the admission webhook configuration, budget not enforced: {problem}; "
        "fix the policy"
    )


def refused_policy(hooks: list[dict[str, Any]], exc: ApiError) -> str | None:
    """The policy whose entry a 422 names (webhooks[i]...), or None."""
    match = re.search(r"webhooks\[(\d+)\]", str(exc.body) + str(exc))
    if match is None or int(match[1]) >= len(hooks):
        return None
    return str(hooks[int(match[1])]["name"]).removesuffix(".budget.cost.kopeck.io")


async def manage_configuration(state: State, url: str, ca_bundle: str, wake: asyncio.Event) -> None:
    """Keep the ValidatingWebhookConfiguration in line with the policies (active replica)."""
    name = state.settings.webhook_config
    path = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
    last: list[dict[str, Any]] | None = None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=10)
        wake.clear()
        if not state.active:
            last = None
            continue
        hooks = desired_webhooks(state, url, ca_bundle)
        if hooks == last:
            continue
        body: dict[str, Any] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kopeck"}},
            "webhooks": hooks,
        }
        try:
            existing = await state.kube.get_or_none(path)
            if existing is None:
                await state.kube.create(
                    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", body
                )
            else:
                body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await state.kube.request("PUT", path, body=body)
            last = hooks
            log.info("webhook configuration %s: %d policies", name, len(hooks))
        except ApiError as exc:
            bad = refused_policy(hooks, exc) if exc.status == 422 else None
            if bad is not None:  # leave the one bad entry out; the others stay enforced
                entry = state.policies.get(bad)
                refused_by_server[bad] = (entry.named.generation if entry else 0, str(exc)[:500])
                wake.set()
                continue
            log.warning("cannot write webhook configuration %s: %s", name, exc)
            await asyncio.sleep(1)
            wake.set()
        except OSError as exc:
            log.warning("cannot write webhook configuration %s: %s", name, exc)
            await asyncio.sleep(1)
            wake.set()

