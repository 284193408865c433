"""Decoded flows -> cumulative bytes and packets per pod, traffic class and direction.

Vectorised over a batch: addresses are made unique first, so pod lookups and
classification run once per distinct address, not once per record; sums are exact
integers. A flow whose source is a pod of this node is that pod's ``tx``, classified by
the destination; a flow whose destination is a pod of this node is its ``rx``, classified
by the source (both, for pod-to-pod traffic on this node, which is intra-zone). Flows
with no pod of this node at either end are counted apart as unattributed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kopeck.api.report import Direction, TrafficClass
from kopeck_probe.flows.classify import CLASSES, Topology, classify
from kopeck_probe.flows.decoder import FlowBatch
from kopeck_probe.flows.podmap import Lease, PodIPMap, Words, from_words, owner_at

INTRA = CLASSES.index("intraZone")
UNCLASSIFIED = CLASSES.index("unclassified")
_NC = len(CLASSES)
_EXACT_FLOAT = 2**53


@dataclass(slots=True)
class Traffic:
    """A cumulative byte and packet count."""

    bytes: int = 0
    packets: int = 0


@dataclass(slots=True)
class PodFlowTotals:
    """One pod's cumulative flow counters by (class, direction), since the collector started."""

    pod: str
    by_class: dict[tuple[TrafficClass, Direction], Traffic] = field(default_factory=dict)

    def add(self, cls: TrafficClass, direction: Direction, octets: int, packets: int) -> None:
        """Add to one counter."""
        t = self.by_class.setdefault((cls, direction), Traffic())
        t.bytes += octets
        t.packets += packets

    @property
    def bytes(self) -> int:
        """All bytes, any class and direction."""
        return sum(t.bytes for t in self.by_class.values())

    def copy(self) -> PodFlowTotals:
        """A snapshot that later updates do not change."""
        return PodFlowTotals(
            self.pod, {k: Traffic(v.bytes, v.packets) for k, v in self.by_class.items()}
        )


def _unique_words(
    hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]
) -> tuple[list[Words], npt.NDArray[np.intp]]:
    if not hi.any():
        ulo, inverse = np.unique(lo, return_inverse=True)
        return [(0, int(v)) for v in ulo], inverse.reshape(-1)
    pairs = np.stack([hi, lo], axis=1)
    upairs, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return [(int(a), int(b)) for a, b in upairs], inverse.reshape(-1)


class Tally:
    """Cumulative per-pod flow counters, fed batch by batch."""

    def __init__(self, pods: PodIPMap, topology: Topology) -> None:
        self.pods = pods
        self.topology = topology
        self.totals: dict[str, PodFlowTotals] = {}
        self.unattributed = Traffic()
        self._class_cache: dict[Words, int] = {}
        self._leases: tuple[int, dict[Words, list[Lease]]] = (-1, {})

    def set_topology(self, topology: Topology) -> None:
        """New nodes, labels or CIDRs: classify afresh from now on."""
        self.topology = topology
        self._class_cache.clear()

    def _class_of(self, words: Words) -> int:
        if words == (0, 0):  # a one-sided record's absent end ("::"): no place to price
            return UNCLASSIFIED
        idx = self._class_cache.get(words)
        if idx is None:
            if len(self._class_cache) > 65536:
                self._class_cache.clear()
            idx = CLASSES.index(classify(self.topology, from_words(*words)))
            self._class_cache[words] = idx
        return idx

    def _owners(
        self,
        uniq: list[Words],
        inverse: npt.NDArray[np.intp],
        time_s: npt.NDArray[np.float64],
        pod_ids: dict[str, int],
    ) -> npt.NDArray[np.int64]:
        """Per record: the index of the pod holding the address at flow time, or -1."""
        out = np.full(inverse.shape[0], -1, dtype=np.int64)
        slack = self.pods.slack_s
        # one lease per address (the common case): vectorised over the records
        lo = np.full(len(uniq), np.inf)
        hi = np.full(len(uniq), -np.inf)
        ids = np.full(len(uniq), -1, dtype=np.int64)
        several: dict[int, list[Lease]] = {}
        if self._leases[0] != self.pods.version:
            self._leases = self.pods.snapshot()
        by_words = self._leases[1]
        for k, words in enumerate(uniq):
            leases = by_words.get(words)
            if not leases:
                continue
            if len(leases) == 1:
                lease = leases[0]
                lo[k], hi[k] = lease.start - slack, lease.end + slack
                ids[k] = pod_ids.setdefault(lease.pod, len(pod_ids))
            elif leases:
                several[k] = leases
        inside = (time_s >= lo[inverse]) & (time_s < hi[inverse])
        out = np.where(inside, ids[inverse], -1)
        if several:  # reused addresses: record by record
            todo = np.isin(inverse, np.fromiter(several, np.int64, len(several)))
            for row in np.flatnonzero(todo):
                pod = owner_at(several[int(inverse[row])], float(time_s[row]), slack)
                out[row] = -1 if pod is None else pod_ids.setdefault(pod, len(pod_ids))
        return out

    def add(self, batch: FlowBatch) -> None:
        """Fold one decoded batch into the cumulative counters."""
        n = len(batch)
        if n == 0:
            return
        pod_ids: dict[str, int] = {}
        usrc, isrc = _unique_words(batch.src_hi, batch.src_lo)
        udst, idst = _unique_words(batch.dst_hi, batch.dst_lo)
        src_pod = self._owners(usrc, isrc, batch.time_s, pod_ids)
        dst_pod = self._owners(udst, idst, batch.time_s, pod_ids)
        src_cls = np.fromiter((self._class_of(w) for w in usrc), np.int64, len(usrc))[isrc]
        dst_cls = np.fromiter((self._class_of(w) for w in udst), np.int64, len(udst))[idst]
        # the far end is a pod of this node: the traffic never left the node
        src_cls = np.where(src_pod >= 0, INTRA, src_cls)
        dst_cls = np.where(dst_pod >= 0, INTRA, dst_cls)
        names = list(pod_ids)
        self._fold(names, "tx", src_pod, dst_cls, batch)
        self._fold(names, "rx", dst_pod, src_cls, batch)
        none = (src_pod < 0) & (dst_pod < 0)
        if none.any():
            self.unattributed.bytes += int(batch.bytes[none].sum())
            self.unattributed.packets += int(batch.packets[none].sum())

    def _fold(
        self,
        names: list[str],
        direction: Direction,
        pod: npt.NDArray[np.int64],
        cls: npt.NDArray[np.int64],
        batch: FlowBatch,
    ) -> None:
        mine = pod >= 0
        if not mine.any():
            return
        keys = pod[mine] * _NC + cls[mine]
        size = len(names) * _NC
        octets = _sum_by(keys, batch.bytes[mine], size)
        packets = _sum_by(keys, batch.packets[mine], size)
        nz = np.flatnonzero((octets > 0) | (packets > 0))
        for key, o, n in zip(nz.tolist(), octets[nz].tolist(), packets[nz].tolist(), strict=True):
            p, c = divmod(key, _NC)
            totals = self.totals.get(names[p])
            if totals is None:
                totals = self.totals[names[p]] = PodFlowTotals(names[p])
            totals.add(CLASSES[c], direction, o, n)

    def forget(self, pod: str) -> None:
        """Drop a pod's counters once its final values were reported (bounded memory)."""
        self.totals.pop(pod, None)


def _sum_by(
    keys: npt.NDArray[np.int64], values: npt.NDArray[np.uint64], size: int
) -> npt.NDArray[np.uint64]:
    """Exact integer sums per key (float bincount only where it cannot round)."""
    if float(values.sum(dtype=np.float64)) < _EXACT_FLOAT:
        return np.bincount(keys, weights=values.astype(np.float64), minlength=size).astype(
            np.uint64
        )
    if float(values.sum(dtype=np.float64)) < 2.0**63:
        out = np.zeros(size, dtype=np.uint64)
        np.add.at(out, keys, values)
        return out
    # saturated (sampled-up) counters: uint64 sums would wrap; Python ints do not
    exact = np.zeros(size, dtype=object)
    np.add.at(exact, keys, values.astype(object))
    return exact
