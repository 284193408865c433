"""Network bytes by traffic class from the probe's two views of the same packets.

eBPF (or the veth fallback) counts every byte a pod sends and receives but cannot say where
it went; flow records (IPFIX / NetFlow) say where but may miss some (sampling, a late
export). Both see the same traffic, so adding them would charge it twice: the flows
classify, and whatever the exact count holds beyond them stays "unclassified".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

MEASURED_SOURCES = frozenset({"ebpf", "veth"})


class Usage(Protocol):
    """One (class, direction, source) byte count, as in kopeck.api.report.NetworkUsage."""

    @property
    def traffic_class(self) -> str: ...
    @property
    def direction(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def source(self) -> str: ...


def bytes_by_class(usages: Iterable[Usage]) -> dict[str, int]:
    """Bytes per traffic class for one pod and interval, each byte counted once.

    Per direction: with flow records, the classes come from them and the exact eBPF/veth
    total adds what they did not classify as "unclassified" (never negative); without flow
    records, the measured bytes keep the class they were reported with.
    """
    measured: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    classified: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u in usages:
        side = measured if u.source in MEASURED_SOURCES else classified
        side[u.direction][u.traffic_class] += u.bytes
    out: dict[str, int] = defaultdict(int)
    for direction in set(measured) | set(classified):
        flows = classified.get(direction)
        exact = measured.get(direction, {})
        if not flows:
            for cls, n in exact.items():
                out[cls] += n
            continue
        for cls, n in flows.items():
            out[cls] += n
        rest = sum(exact.values()) - sum(flows.values())
        if exact and rest > 0:
            out["unclassified"] += rest
    return {cls: n for cls, n in out.items() if n}
