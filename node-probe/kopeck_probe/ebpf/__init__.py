"""Per-pod network counters: an eBPF cgroup_skb program, or host-side veth counters.

`open_net_reader` is what the probe calls: it attaches the eBPF counters at the pods'
parent cgroup and, if the kernel refuses BPF, says so once and returns the veth reader.
Both return `Counters` (cumulative, pod's point of view) behind `NetCounterReader`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .cost import ProgramCost, bpf_stats, sample_cost, total_cost
from .counters import CounterKey, Counters, NetCounterReader, ReaderKind
from .reader import DEFAULT_MAX_ENTRIES, AttachMode, CgroupIndex, EbpfReader
from .syscall import BpfError
from .veth import VethReader

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "AttachMode",
    "BpfError",
    "CgroupIndex",
    "CounterKey",
    "Counters",
    "EbpfReader",
    "NetCounterReader",
    "ProgramCost",
    "ReaderKind",
    "VethReader",
    "bpf_stats",
    "open_net_reader",
    "sample_cost",
    "total_cost",
]

log = logging.getLogger(__name__)
_warned = False


def open_net_reader(
    cgroup_parent: Path,
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    attach: AttachMode = "link",
    ebpf: bool = True,
) -> NetCounterReader:
    """The eBPF reader at cgroup_parent (the v2 kubepods dir), else the veth fallback."""
    global _warned
    if ebpf:
        try:
            return EbpfReader(cgroup_parent, max_entries=max_entries, attach=attach)
        except OSError as e:  # BpfError (EPERM, ENOSYS, verifier) or the cgroup dir itself
            if not _warned:
                log.warning(
                    "eBPF network counters unavailable at %s, using host-side veth counters "
                    "instead (L2 bytes, pods without a veth are not seen): %s",
                    cgroup_parent,
                    e,
                )
                _warned = True
    return VethReader()
