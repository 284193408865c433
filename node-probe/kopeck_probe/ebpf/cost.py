"""What the counter program itself costs, measured by the kernel (run_time_ns / run_cnt).

The kernel only times BPF programs while stats are enabled (it costs two clock reads per
run), so the probe turns stats on for a measurement window and off again afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import syscall as sc

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
StatsMethod = Literal["auto", "fd", "sysctl"]


@dataclass(frozen=True)
class ProgramCost:
    """Time the kernel spent in the programs, and how many packets they saw."""

    run_time_ns: int
    run_cnt: int

    @property
    def ns_per_packet(self) -> float | None:
        """Mean time per program run (one run per skb per direction); None before any run."""
        return self.run_time_ns / self.run_cnt if self.run_cnt else None

    def __sub__(self, other: ProgramCost) -> ProgramCost:
        return ProgramCost(self.run_time_ns - other.run_time_ns, self.run_cnt - other.run_cnt)


def total_cost(stats: Iterable[sc.ProgRunStats]) -> ProgramCost:
    """Sum of both directions' programs: the figure the probe exports as a metric."""
    items = list(stats)
    return ProgramCost(sum(s.run_time_ns for s in items), sum(s.run_cnt for s in items))


@contextlib.contextmanager
def bpf_stats(method: StatsMethod = "auto", sysctl: Path = SYSCTL) -> Iterator[str]:
    """Enable kernel BPF run-time stats for the block, then put things back as they were.

    "fd" holds a BPF_ENABLE_STATS fd (reference-counted by the kernel, released even if we
    crash); "sysctl" writes kernel.bpf_stats_enabled=1 and restores the previous value;
    "auto" tries the fd first. Yields the method used.
    """
    if method in ("auto", "fd"):
        try:
            fd = sc.enable_stats()
        except sc.BpfError as e:
            if method == "fd" or e.errno not in (errno.EINVAL, errno.ENOSYS, sc.ENOTSUPP):
                raise
        else:
            try:
                yield "fd"
            finally:
                os.close(fd)
            return
    previous = sysctl.read_text().strip()
    sysctl.write_text("1")
    try:
        yield "sysctl"
    finally:
        sysctl.write_text(previous)


def sample_cost(
    run_stats: Callable[[], Iterable[sc.ProgRunStats]],
    seconds: float,
    method: StatsMethod = "auto",
) -> ProgramCost:
    """The programs' cost over a window of live traffic: stats on, wait, stats off.

    Stats cost two clock reads per program run, so the probe samples (e.g. 10 s a minute)
    rather than keeping them on; `reader.run_stats` is the usual source.
    """
    with bpf_stats(method):
        before = total_cost(run_stats())
        time.sleep(seconds)
        after = total_cost(run_stats())
    return after - before
