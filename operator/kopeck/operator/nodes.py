"""Nodes: labels (instance type, zone, cpu factor, price overrides) and capacity for pricing."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import kopf

from kopeck.accounting.prices import NodeFacts
from kopeck.operator import metrics
from kopeck.operator.state import State
from kopeck.rightsizing.quantity import QuantityError, parse_quantity


def _q(value: Any) -> Decimal:
    try:
        return parse_quantity(value) if value is not None else Decimal(0)
    except QuantityError:
        return Decimal(0)


def node_facts(body: Mapping[str, Any]) -> NodeFacts:
    """Pricing facts of a Node object."""
    meta = body.get("metadata") or {}
    capacity = (body.get("status") or {}).get("capacity") or {}
    gpus = sum((_q(v) for k, v in capacity.items() if str(k).endswith("/gpu")), Decimal(0))
    return NodeFacts(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        cpu_cores=_q(capacity.get("cpu")),
        memory_bytes=int(_q(capacity.get("memory"))),
        gpus=int(gpus),
    )


@kopf.on.event("", "v1", "nodes")
async def node_event(event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **_: Any) -> None:
    """Keep the node cache current."""
    state: State = memo.state
    name = str((body.get("metadata") or {}).get("name", ""))
    if event.get("type") == "DELETED":
        state.nodes.pop(name, None)
        metrics.note_node(name, None)
    else:
        state.nodes[name] = node_facts(body)
        metrics.note_node(name, body)
