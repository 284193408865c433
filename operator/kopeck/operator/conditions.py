"""Conditions per the Kubernetes API conventions, and Events, for kopeck's resources."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kopeck.operator.kube import ApiError, Kube

log = logging.getLogger("kopeck.events")


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None = None,
) -> bool:
    """Set one condition in place; lastTransitionTime moves only when status changes.

    Returns True when the status flipped (the caller may want an Event then).
    """
    value = status if isinstance(status, str) else ("True" if status else "False")
    for cond in conditions:
        if cond.get("type") == type_:
            flipped = cond.get("status") != value
            if flipped:
                cond["lastTransitionTime"] = _ts(now)
            cond.update(status=value, reason=reason, message=message)
            if generation is not None:
                cond["observedGeneration"] = generation
            return flipped
    cond = {
        "type": type_, "status": value, "reason": reason, "message": message,
        "lastTransitionTime": _ts(now),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    conditions.append(cond)
    return True


def condition_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    """True when the condition is present with status True."""
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions or [])


async def post_event(
    kube: Kube,
    involved: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    now: dt.datetime | None = None,
) -> None:
    """Record a core/v1 Event about an object (cluster-scoped objects: in `default`)."""
    now = now or dt.datetime.now(dt.UTC)
    namespace = involved.get("namespace") or "default"
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "kopeck-", "namespace": namespace},
        "involvedObject": dict(involved),
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "firstTimestamp": _ts(now),
        "lastTimestamp": _ts(now),
        "count": 1,
        "source": {"component": "kopeck-operator"},
        "reportingComponent": "kopeck-operator",
    }
    try:
        await kube.create(f"/api/v1/namespaces/{namespace}/events", body)
    except (ApiError, OSError) as exc:
        log.warning("could not record event %s: %s", reason, exc)
