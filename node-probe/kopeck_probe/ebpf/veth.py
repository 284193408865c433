"""Fallback network counters: the host-side veth of each pod, read over netlink.

Used when the kernel refuses BPF. Every CNI that gives pods a veth pair leaves the host
end in the root network namespace, and its interface counters are the pod's traffic
mirrored: what the host end receives the pod sent (host rx = pod tx) and the other way
round. One RTM_GETLINK dump per read, through a netlink socket kept open (no fork).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute

from .counters import Counters, ReaderKind


def pod_counters_from_host_stats(stats: Mapping[str, int]) -> Counters:
    """The pod's view of a host-side veth's IFLA_STATS64 (rx and tx swap sides)."""
    return Counters(
        tx_bytes=int(stats.get("rx_bytes", 0)),
        rx_bytes=int(stats.get("tx_bytes", 0)),
        tx_packets=int(stats.get("rx_packets", 0)),
        rx_packets=int(stats.get("tx_packets", 0)),
    )


def _kind(msg: Any) -> str | None:
    kind = msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    return None if kind is None else str(kind)


class VethReader:
    """Cumulative pod counters keyed by host-side veth name; a NetCounterReader."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names: frozenset[str] | None = None if names is None else frozenset(names)
        self._ipr: IPRoute | None = IPRoute()

    @property
    def kind(self) -> ReaderKind:
        """This reader is the veth fallback."""
        return "veth"

    def _links(self) -> list[Any]:
        if self._ipr is None:
            raise RuntimeError("veth reader is closed")
        return list(self._ipr.get_links())

    def read(self) -> dict[str, Counters]:
        """Every host-side veth (or only `names`) -> the pod's cumulative Counters."""
        out: dict[str, Counters] = {}
        for msg in self._links():
            name = msg.get("IFLA_IFNAME")
            if name is None or _kind(msg) != "veth":
                continue
            if self.names is not None and name not in self.names:
                continue
            stats = msg.get("IFLA_STATS64") or msg.get("IFLA_STATS")
            if stats is not None:
                out[str(name)] = pod_counters_from_host_stats(stats)
        return out

    def host_veths_of_netns(self, netns: str | Path) -> list[str]:
        """Host-side veth names whose peer lives in a pod's netns (a /proc/<pid>/ns/net or
        /run/netns path): how the probe maps interfaces to pods without entering the netns."""
        if self._ipr is None:
            raise RuntimeError("veth reader is closed")
        fd = os.open(netns, os.O_RDONLY)
        try:
            reply = self._ipr.get_netnsid(fd=fd)
        finally:
            os.close(fd)
        nsid = reply.get("nsid") if isinstance(reply, Mapping) else None
        if nsid is None or nsid < 0:
            return []
        return sorted(
            str(msg.get("IFLA_IFNAME"))
            for msg in self._links()
            if _kind(msg) == "veth" and msg.get("IFLA_LINK_NETNSID") == nsid
        )

    def close(self) -> None:
        """Close the netlink socket; idempotent."""
        if self._ipr is not None:
            with contextlib.suppress(OSError):
                self._ipr.close()
            self._ipr = None

    def __enter__(self) -> VethReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
