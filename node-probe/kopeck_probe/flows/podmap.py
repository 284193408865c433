"""Which pod held an IP address at a given time.

Flow records arrive seconds to minutes after the packets (exporters flush on timeouts),
and pod IPs are reused as soon as a pod is gone: looking an address up *now* would charge
a new pod for its predecessor's traffic. So each address keeps the time ranges of its
owners, and flows are looked up at their own end time.

The probe core feeds it from pod metadata (this node's pods): ``assign`` with the time the
pod got the address (the pod sandbox's start, not the time the watch event arrived),
``release`` when the pod is gone. Ranges that ended long ago are pruned.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from dataclasses import dataclass

Words = tuple[int, int]
"""An address as two 64-bit words of its IPv6 form (IPv4 as ::ffff:a.b.c.d)."""


def to_words(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Words:
    """The (hi, lo) words used by :class:`~kopeck_probe.flows.decoder.FlowBatch`."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv4Address):
        return 0, 0xFFFF_0000_0000 | int(addr)
    value = int(addr)
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def from_words(hi: int, lo: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address back from its words (IPv4-mapped words give an IPv4Address)."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return ipaddress.IPv4Address(lo & 0xFFFF_FFFF)
    return ipaddress.IPv6Address((hi << 64) | lo)


@dataclass(slots=True)
class Lease:
    """One pod's hold on one address: [start, end)."""

    pod: str
    start: float
    end: float = math.inf


class PodIPMap:
    """Address -> pod over time; thread-safe (the core writes, the collector reads)."""

    def __init__(self, slack_s: float = 1.0, keep_s: float = 3600.0) -> None:
        self.slack_s = slack_s
        """Tolerance for exporter clocks (NetFlow v9 headers carry whole seconds)."""
        self.keep_s = keep_s
        """How long an ended lease is kept for late flow records."""
        self._leases: dict[Words, list[Lease]] = {}
        self._lock = threading.Lock()
        self.version = 0
        """Bumped on every change, so readers may cache a snapshot."""

    def assign(self, ip: str, pod: str, since: float) -> None:
        """``pod`` holds ``ip`` from ``since``; a previous open holder's lease ends there."""
        key = to_words(ip)
        with self._lock:
            leases = self._leases.setdefault(key, [])
            for lease in leases:
                if lease.end == math.inf:
                    if lease.pod == pod:
                        return
                    lease.end = max(lease.start, since)
            leases.append(Lease(pod, since))
            leases.sort(key=lambda lease: lease.start)
            self.version += 1

    def release(self, ip: str, pod: str, until: float) -> None:
        """``pod`` no longer holds ``ip`` from ``until``."""
        key = to_words(ip)
        with self._lock:
            for lease in self._leases.get(key, ()):
                if lease.pod == pod and lease.end == math.inf:
                    lease.end = max(lease.start, until)
                    self.version += 1

    def leases(self, key: Words) -> list[Lease]:
        """A copy of the leases of an address (by words), oldest first."""
        with self._lock:
            return list(self._leases.get(key, ()))

    def snapshot(self) -> tuple[int, dict[Words, list[Lease]]]:
        """The version and a copy of every address's leases (one lock hold per batch)."""
        with self._lock:
            return self.version, {
                k: [Lease(x.pod, x.start, x.end) for x in v] for k, v in self._leases.items()
            }

    def owner(self, ip: str | Words, at: float) -> str | None:
        """The pod holding ``ip`` at time ``at`` (within the clock slack), if any."""
        key = ip if isinstance(ip, tuple) else to_words(ip)
        return owner_at(self.leases(key), at, self.slack_s)

    def prune(self, now: float) -> None:
        """Forget leases that ended more than ``keep_s`` ago (memory stays bounded)."""
        horizon = now - self.keep_s
        with self._lock:
            for key in list(self._leases):
                kept = [lease for lease in self._leases[key] if lease.end >= horizon]
                if kept:
                    self._leases[key] = kept
                else:
                    del self._leases[key]
            self.version += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)


def owner_at(leases: list[Lease], at: float, slack_s: float) -> str | None:
    """The lease holding ``at``; else the nearest one within ``slack_s``."""
    best: tuple[float, str] | None = None
    for lease in leases:
        if lease.start <= at < lease.end:
            return lease.pod
        distance = lease.start - at if at < lease.start else at - lease.end
        if distance <= slack_s and (best is None or distance < best[0]):
            best = (distance, lease.pod)
    return best[1] if best else None
