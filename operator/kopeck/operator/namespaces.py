"""Namespaces: their labels, which CostPolicy namespace selectors read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kopeck.operator.state import State


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    """Keep the namespace-label cache current."""
    state: State = memo.state
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    if event.get("type") == "DELETED":
        state.namespaces.pop(name, None)
    else:
        state.namespaces[name] = dict(meta.get("labels") or {})
