"""The shape both network readers return, so the probe's core need not know which one ran."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

# eBPF: the socket's cgroup v2 id (== os.stat(cgroup_dir).st_ino).
# veth fallback: the host-side interface name of the pod's veth.
CounterKey = int | str
ReaderKind = Literal["ebpf", "veth"]


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative traffic of one pod (or container cgroup), from the pod's point of view.

    tx = sent by the pod, rx = received by the pod. eBPF counts L3 bytes (IP header onward,
    one packet per skb, so a GSO/GRO batch counts once); veth counts L2 frames (plus 14
    bytes of Ethernet header each). Both are cumulative: the probe's core takes deltas and
    treats a decrease as a reset.
    """

    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    rx_packets: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.tx_bytes + other.tx_bytes,
            self.rx_bytes + other.rx_bytes,
            self.tx_packets + other.tx_packets,
            self.rx_packets + other.rx_packets,
        )


@runtime_checkable
class NetCounterReader(Protocol):
    """A source of cumulative per-pod network counters (eBPF or the veth fallback)."""

    @property
    def kind(self) -> ReaderKind:
        """Which reader this is, for logs and the probe's health metrics."""
        ...

    def read(self) -> Mapping[int, Counters] | Mapping[str, Counters]:
        """Cumulative counters now: int cgroup ids for "ebpf", str veth names for "veth"."""
        ...

    def close(self) -> None:
        """Release everything (detach programs, close fds and sockets). Idempotent."""
        ...
