"""The eBPF counters (per socket cgroup id) as the probe core's ``CgroupNetworkSource``.

The ids are v2 cgroup inodes, so they map to pods directly through
``Attributor.pod_inodes()`` (pod and container cgroups). The kernel's totals are
unclassified per direction; flows give the same bytes by class (never add the two).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from kopeck_probe.attribution import NetCounters
from kopeck_probe.cgroups import Hierarchies
from kopeck_probe.ebpf import Counters, EbpfReader, bpf_stats, total_cost
from kopeck_probe.ebpf.cost import ProgramCost

log = logging.getLogger(__name__)

KUBEPODS_DIRS = ("kubepods.slice", "kubepods")
"""The pods' parent cgroup under the systemd and the cgroupfs driver."""


def kubepods_v2_dirs(cgroup_base: Path, prefix: str = "") -> list[Path]:
    """The v2 directories the eBPF programs attach at (whichever driver's layout exists)."""
    h = Hierarchies.detect(cgroup_base)
    if h.unified is None:
        return []
    root = h.unified / prefix.strip("/") if prefix.strip("/") else h.unified
    return [root / d for d in KUBEPODS_DIRS if (root / d).is_dir()]


def net_counters(c: Counters) -> NetCounters:
    """A reader's counters in the attribution's terms."""
    return NetCounters(c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets)


class EbpfNetworkSource:
    """The eBPF counters of every pod cgroup, keyed by v2 cgroup id (a CgroupNetworkSource).

    Attaches at the kubepods directory of each driver layout present. When none exists
    yet (probe started before the kubelet made it), it attaches on the first read that
    finds one; a refusal then is logged once and retried every ``retry_s``.
    """

    source: Literal["ebpf", "veth"] = "ebpf"

    def __init__(
        self,
        cgroup_base: Path,
        prefix: str = "",
        *,
        max_entries: int = 8192,
        opener: Callable[[Path], EbpfReader] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        self.cgroup_base, self.prefix = cgroup_base, prefix
        self._open = opener or (lambda p: EbpfReader(p, max_entries=max_entries))
        self.readers: list[EbpfReader] = []
        self.retry_s = retry_s
        self._next_try = 0.0
        self._warned = False
        self._lock = threading.Lock()
        self.cgroups_counted = 0
        self.missed = (0, 0)
        self.cost: ProgramCost | None = None
        """The programs' cost over the last sampled window (see sample_cost_forever)."""
        self.cost_total = ProgramCost(0, 0)
        """Sum of every sampled window: runs and run time the kernel measured."""
        if Hierarchies.detect(cgroup_base).unified is None:
            raise OSError(
                errno.EOPNOTSUPP, f"no cgroup v2 hierarchy under {cgroup_base} to attach at"
            )
        self.attach()  # raises OSError (BpfError) when the kernel refuses: caller falls back

    def attach(self) -> bool:
        """Attach at each kubepods dir not yet covered; False when none exists yet."""
        with self._lock:
            have = {r.cgroup_parent for r in self.readers}
            for d in kubepods_v2_dirs(self.cgroup_base, self.prefix):
                if d not in have:
                    self.readers.append(self._open(d))
            if not self.readers and not self._warned:
                log.warning(
                    "no kubepods cgroup under %s (prefix %r) yet: eBPF counters attach when "
                    "it appears",
                    self.cgroup_base,
                    self.prefix,
                )
                self._warned = True
            return bool(self.readers)

    def read(self) -> Mapping[int, NetCounters]:
        """Cumulative counters by cgroup id, over every attached reader."""
        if not self.readers and time.monotonic() >= self._next_try:
            # Looking for the directory is a stat per read; only a refusal waits retry_s.
            try:
                self.attach()
            except OSError:
                self._next_try = time.monotonic() + self.retry_s
                log.exception("attaching eBPF counters failed; retrying in %.0fs", self.retry_s)
        out: dict[int, NetCounters] = {}
        missed_b = missed_p = 0
        for r in self.readers:
            out.update((k, net_counters(c)) for k, c in r.read().items())
            b, p = r.missed()
            missed_b, missed_p = missed_b + b, missed_p + p
        self.cgroups_counted = len(out)
        self.missed = (missed_b, missed_p)
        return out

    def sample_cost(self, window_s: float) -> ProgramCost:
        """Turn the kernel's BPF run-time stats on for window_s and measure the programs."""

        def now() -> ProgramCost:
            return total_cost(s for r in list(self.readers) for s in r.run_stats())

        with bpf_stats():
            before = now()
            time.sleep(window_s)
            after = now()
        cost = after - before
        if cost.run_cnt:
            self.cost = cost
        self.cost_total = ProgramCost(
            self.cost_total.run_time_ns + cost.run_time_ns, self.cost_total.run_cnt + cost.run_cnt
        )
        return cost

    def sample_cost_forever(self, stop: threading.Event, every_s: float, window_s: float) -> None:
        """Measure the programs' cost for window_s every every_s (stats cost two clock reads
        per run, so they are on only during the windows)."""
        while not stop.wait(max(0.0, every_s - window_s)):
            if not self.readers:
                continue
            try:
                self.sample_cost(min(window_s, every_s))
            except (OSError, RuntimeError) as exc:  # BpfError; RuntimeError: closed at exit
                if not stop.is_set():
                    log.warning("cannot measure the eBPF programs' cost: %s", exc)
                return

    def close(self) -> None:
        """Detach and close every reader."""
        with self._lock:
            for r in self.readers:
                r.close()
            self.readers.clear()
