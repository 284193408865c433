"""Allocation objects: checkpoints of the accumulators, restore at start, freezing at period end.

A report is acknowledged only after the records it changed are written here, so the probe
keeps (and resends) anything an operator crash could lose; the per-record `folded` marks
make those resends exactly-once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from kopeck.accounting.ledger import (
    Accumulator,
    WorkloadKey,
    allocation_name,
    from_status,
    status_patch,
)
from kopeck.accounting.periods import PeriodKind, PeriodWindow, as_utc, period_at
from kopeck.api.allocation import ADJUSTMENT_LABEL, PERIOD_LABEL, WORKLOAD_KIND_LABEL
from kopeck.api.common import API_VERSION
from kopeck.operator.kube import ApiError, resource_path
from kopeck.operator.state import AccKey, State
from kopeck.rightsizing.history import WorkloadHistory

log = logging.getLogger("kopeck.allocations")
PLURAL = "allocations"
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_WEEK = re.compile(r"^\d{4}-W\d{2}$")


class FlushError(Exception):
    """A checkpoint could not be written; unacknowledged reports will be resent."""


class StaleRecord(Exception):
    """The stored Allocation changed since this replica read it: another replica wrote it.
    The record was reloaded; what was folded here since is dropped and will be resent."""


def allocation_body(acc: Accumulator) -> dict[str, Any]:
    """The Allocation object (without status) for an accumulator."""
    key = acc.key
    ref: dict[str, Any] = {"apiVersion": key.api_version or "v1", "kind": key.kind, "name": key.name}
    if key.kind not in ("Namespace", "Node"):
        ref["namespace"] = key.namespace
    spec: dict[str, Any] = {
        "workloadRef": ref,
        "period": {
            "name": acc.period.name,
            "start": acc.period.start.isoformat().replace("+00:00", "Z"),
            "end": acc.period.end.isoformat().replace("+00:00", "Z"),
        },
    }
    if acc.policy:
        spec["policyRef"] = {"name": acc.policy}
    labels = {PERIOD_LABEL: acc.period.name, WORKLOAD_KIND_LABEL: key.kind}
    if acc.adjustment:
        spec["adjustment"] = True
        labels[ADJUSTMENT_LABEL] = "true"
    return {
        "apiVersion": API_VERSION,
        "kind": "Allocation",
        "metadata": {
            "name": allocation_name(key, acc.record),
            "namespace": key.namespace,
            "labels": labels,
        },
        "spec": spec,
    }


def window_from_spec(period: dict[str, Any]) -> PeriodWindow | None:
    """The PeriodWindow an Allocation's spec.period names."""
    name = str(period.get("name", ""))
    try:
        start = as_utc(dt.datetime.fromisoformat(str(period["start"]).replace("Z", "+00:00")))
    except (KeyError, ValueError):
        return None
    kind: PeriodKind = (
        "Monthly" if _MONTH.match(name) else "Weekly" if _WEEK.match(name) else "Daily"
    )
    window = period_at(kind, start)
    return window if window.name == name else None


class Checkpointer:
    """Batches dirty accumulators into status writes; reports wait for their batch."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.generation = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()
        self._written: dict[AccKey, int] = {}
        """Record -> the generation up to which it is durable."""
        self._refused: dict[AccKey, int] = {}
        """Record -> the generation of its last failed write (it stays dirty)."""
        self._reloaded: dict[AccKey, int] = {}
        """Record -> the generation when it was last reloaded from the apiserver: folds up to
        it were dropped, so they are never durable (their reports are resent)."""
        self.writes = 0
        self.flush_seconds = 0.0

    def bump(self) -> int:
        """Note new dirty state; a report waits for the flush of this generation (wait_durable)."""
        self.generation += 1
        self._wake.set()
        return self.generation

    def held_by_reload(self, needs: Mapping[AccKey, int],
                       holds: Callable[[AccKey], bool]) -> dict[AccKey, int]:
        """`needs` less the records reloaded since that hold the report: a reloaded record is
        what the apiserver stores, so a report it holds is durable there (a write applied
        whose answer was lost, then a conflict). A report folded again after the reload
        has newer needs of its own."""
        return {k: g for k, g in needs.items()
                if not (g <= self._reloaded.get(k, -1) and holds(k))}

    def is_durable(self, needs: Mapping[AccKey, int]) -> bool:
        """Whether every record was written at or after the generation it needs."""
        return all(self._written.get(k, 0) >= g > self._reloaded.get(k, -1)
                   for k, g in needs.items())

    async def wait_durable(self, generation: int, needs: Mapping[AccKey, int],
                           timeout: float = 20.0) -> None:
        """Wait until what a report changed is durable; FlushError if a write failed.

        needs: record -> the generation whose flush makes its change durable. Per record, so a record the apiserver refuses holds back
        only the reports that changed it; only flushes from `generation` on count as failed.
        """
        def settled() -> bool:
            return all(self._written.get(k, 0) >= g or self._refused.get(k, -1) >= generation
                       for k, g in needs.items())

        async def _cond() -> None:
            async with self._done:
                await self._done.wait_for(settled)
        await asyncio.wait_for(_cond(), timeout)
        if not self.is_durable(needs):
            raise FlushError("checkpoint failed; the report will be resent")

    async def run(self) -> None:
        """The flush loop (one per operator)."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.state.settings.checkpoint_interval)
            self._wake.clear()
            generation = self.generation
            try:
                ok = await self.flush(generation)
            except Exception:  # the loop must outlive any fault; the records stayed dirty
                log.exception("checkpoint flush failed")
                ok = False
            async with self._done:
                if not ok:
                    self._wake.set()  # retry soon
                self._done.notify_all()
            if not ok:
                await asyncio.sleep(1.0)

    async def flush(self, generation: int = 0) -> bool:
        """Write every dirty record; failed ones stay dirty. True when all succeeded.

        The dirty set is taken before the first await, so everything folded up to
        `generation` is in this flush (or in an earlier one)."""
        state = self.state
        keys, state.dirty = state.dirty, set()
        if not keys:
            return True
        started = time.monotonic()
        snapshot: list[tuple[AccKey, Accumulator, dict[str, Any]]] = []
        for akey in keys:
            acc = state.accs.get(akey)
            if acc is None:
                continue
            hist = state.histories.get(acc.key)
            if hist is not None and hist.containers and acc.key.kind not in ("Namespace", "Node"):
                acc.extra["histograms"] = hist.to_checkpoint()
            snapshot.append((akey, acc, status_patch(acc)))
        sem = asyncio.Semaphore(16)
        written: set[AccKey] = {k for k in keys if k not in state.accs}  # nothing to write

        async def write(akey: AccKey, acc: Accumulator, status: dict[str, Any]) -> None:
            async with sem:
                await self.write(acc, status)
                written.add(akey)

        try:
            results = await asyncio.gather(*(write(*item) for item in snapshot),
                                           return_exceptions=True)
            for (akey, _, _), res in zip(snapshot, results, strict=True):
                if isinstance(res, ApiError) and res.status in (403, 404, 422):
                    # refused for good (namespace gone, RBAC, schema): keep the record and
                    # keep it dirty; never ack it, never overwrite it with less later
                    log.error("checkpoint of %s/%s refused: %s", akey[0].ref, akey[1], res)
                    state.counters["checkpoint_refused"] += 1
                elif isinstance(res, BaseException):
                    log.warning("checkpoint of %s/%s failed: %r", akey[0].ref, akey[1], res)
        finally:  # on every path (any exception, cancellation) unwritten records stay dirty
            state.dirty |= keys - written
            for k in written:
                self._written[k] = max(self._written.get(k, 0), generation)
            for k in keys - written:
                self._refused[k] = max(self._refused.get(k, -1), generation)
            if len(self._written) > 2 * len(state.accs) + 1024:  # records gone from memory
                self._written = {k: g for k, g in self._written.items() if k in state.accs}
                self._refused = {k: g for k, g in self._refused.items() if k in state.accs}
            state.counters["checkpoint_writes"] += len(snapshot) - len(keys - written)
            state.counters["checkpoint_failures"] += len(keys) - len(written)
            self.flush_seconds += time.monotonic() - started
        return not keys - written

    async def write(self, acc: Accumulator, status: dict[str, Any]) -> None:
        """Create the Allocation if needed, then write its status, conditional on the
        resourceVersion this replica last saw (StaleRecord if another replica wrote since)."""
        akey: AccKey = (acc.key, acc.period.name)
        body = allocation_body(acc)
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        path = resource_path(API_VERSION, PLURAL, ns, name, "status")
        version = self.state.ledger_versions.get(akey)
        if version is None:
            version = await self._create(akey, acc, body)
        try:
            done = await self.state.kube.merge_patch(
                path, {"metadata": {"resourceVersion": version}, "status": status})
        except ApiError as exc:
            if exc.conflict:
                await self.reload(akey)
                raise StaleRecord(f"allocation {ns}/{name} changed since this replica last "
                                  "wrote it (another replica, or a write whose answer was "
                                  "lost)") from exc
            if not exc.not_found:
                raise
            # deleted behind our back: recreate it with everything we hold
            self.state.ledger_versions.pop(akey, None)
            version = await self._create(akey, acc, body)
            done = await self.state.kube.merge_patch(
                path, {"metadata": {"resourceVersion": version}, "status": status})
        self.state.ledger_versions[akey] = str((done.get("metadata") or {})["resourceVersion"])
        self.writes += 1

    async def _create(self, akey: AccKey, acc: Accumulator, body: dict[str, Any]) -> str:
        """Create the Allocation (and, for node records, the operator's namespace); its
        resourceVersion. StaleRecord when it exists already: another replica made it."""
        kube = self.state.kube
        collection = resource_path(API_VERSION, PLURAL, body["metadata"]["namespace"])
        try:
            try:
                created = await kube.create(collection, body)
            except ApiError as exc:
                if not (exc.not_found and acc.key.kind == "Node"):
                    raise
                await self._ensure_namespace(body["metadata"]["namespace"])
                created = await kube.create(collection, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            await self.reload(akey)
            raise StaleRecord(f"allocation {collection}/{body['metadata']['name']} exists "
                              "already (written by another replica)") from exc
        return str(created["metadata"]["resourceVersion"])

    async def reload(self, akey: AccKey) -> None:
        """Replace this replica's copy of a record with the stored one.

        Reports folded into the dropped copy fail their wait (not durable) and are resent;
        the in-memory seen-marks go, so the resends are folded again wherever the stored
        record does not hold them (each record's own marks decide)."""
        state = self.state
        key, period = akey
        current = state.accs.get(akey)
        name = allocation_name(key, period)
        item = await state.kube.get_or_none(
            resource_path(API_VERSION, PLURAL, key.namespace, name))
        self._reloaded[akey] = self.generation
        self._refused[akey] = max(self._refused.get(akey, -1), self.generation)
        state.seen.clear()
        if item is None:
            state.ledger_versions.pop(akey, None)
            return
        loaded = _load(item)
        if loaded is None:
            raise FlushError(f"allocation {key.namespace}/{name} has an unreadable status")
        _, acc, hist = loaded
        acc.policy = acc.policy or (current.policy if current else None)
        state.accs[akey] = acc
        state.ledger_versions[akey] = str(item["metadata"]["resourceVersion"])
        if hist is not None:
            state.histories[key] = hist
        log.warning("allocation %s/%s changed since this replica last wrote it: reloaded",
                    key.namespace, name)

    async def _ensure_namespace(self, ns: str) -> None:
        try:
            await self.state.kube.create(
                "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns}}
            )
        except ApiError as exc:
            if not exc.conflict:
                raise


def _load(item: Mapping[str, Any]) -> tuple[AccKey, Accumulator, WorkloadHistory | None] | None:
    """An Allocation as stored: its record key, accumulator and recommender history."""
    spec = item.get("spec") or {}
    ref = spec.get("workloadRef") or {}
    window = window_from_spec(spec.get("period") or {})
    if window is None:
        return None
    ns = item["metadata"]["namespace"]
    key = WorkloadKey(ns, str(ref.get("kind", "")), str(ref.get("name", "")),
                      str(ref.get("apiVersion", "v1")))
    policy = (spec.get("policyRef") or {}).get("name")
    try:
        acc = from_status(key, window, item.get("status"), policy)
    except ValueError as exc:
        log.warning("allocation %s/%s has an unreadable status: %s", ns,
                    item["metadata"]["name"], exc)
        return None
    acc.adjustment = bool(spec.get("adjustment"))
    hist = acc.extra.get("histograms")
    return (key, acc.record), acc, WorkloadHistory.from_checkpoint(hist) if hist else None


async def restore(state: State) -> int:
    """Load every Allocation of the current and previous periods into accumulators."""
    listing = await state.kube.get(resource_path(API_VERSION, PLURAL))
    now = dt.datetime.now(dt.UTC)
    restored = 0
    for item in listing.get("items") or []:
        loaded = _load(item)
        if loaded is None:
            continue
        akey, acc, hist = loaded
        if acc.period.end < now - dt.timedelta(days=40):
            continue
        state.accs[akey] = acc
        state.ledger_versions[akey] = str(item["metadata"]["resourceVersion"])
        if hist is not None and akey[0] not in state.histories:
            state.histories[akey[0]] = hist
        restored += 1
    return restored


def close_ended(state: State, now: dt.datetime) -> list[AccKey]:
    """Make records final whose period ended more than the grace ago (a closed record of a
    workload gone mid-period included); drop long-final ones from memory."""
    grace = dt.timedelta(seconds=state.settings.close_grace)
    forget = dt.timedelta(days=40)
    closed = []
    for akey, acc in list(state.accs.items()):
        if acc.final or acc.adjustment:
            if acc.period.end + forget < now and akey not in state.dirty:
                del state.accs[akey]
                state.ledger_versions.pop(akey, None)
            continue
        if acc.period.end + grace <= now:
            acc.closed = acc.final = True
            state.dirty.add(akey)
            closed.append(akey)
    return closed


async def prime(state: State) -> None:
    """Fill the caches by listing, so that nothing is judged or priced before the watches
    have delivered policies, namespaces, nodes and pods."""
    from kopeck.operator.costpolicies import remember
    from kopeck.operator.nodes import node_facts
    from kopeck.operator.pods import register_pod

    policies = await state.kube.get(resource_path(API_VERSION, "costpolicies"))
    for item in policies.get("items") or []:
        remember(state, item)
    for item in (await state.kube.get("/api/v1/namespaces")).get("items") or []:
        meta = item.get("metadata") or {}
        state.namespaces[str(meta.get("name"))] = dict(meta.get("labels") or {})
    for item in (await state.kube.get("/api/v1/nodes")).get("items") or []:
        facts = node_facts(item)
        state.nodes[facts.name] = facts
    for item in (await state.kube.get("/api/v1/pods")).get("items") or []:
        await register_pod(state, item)
    state.ready = True
