"""Load the counter program, attach it once at the pods' parent cgroup, read its map.

One program per direction is attached at the kubepods directory of the cgroup v2 tree with
BPF_F_ALLOW_MULTI semantics, so it runs for every socket of every pod below it and leaves
any other program there alone. By default the attachment is a bpf_link: if the probe is
killed, the kernel detaches the programs when the link fds close, and a restarted probe
never stacks a second copy on top of a leftover one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np

from . import syscall as sc
from .cost import ProgramCost, total_cost
from .counters import Counters, ReaderKind
from .program import (
    EGRESS,
    INGRESS,
    KEY,
    LICENSE,
    MISSED_KEY,
    VALUE,
    counter_program,
    pack_key,
    sum_percpu,
)

log = logging.getLogger(__name__)

AttachMode = Literal["link", "prog_attach"]
DEFAULT_MAX_ENTRIES = 8192  # two keys per container cgroup: room for ~4,000 containers

_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, sc.ENOTSUPP)


@dataclass
class CgroupIndex:
    """cgroup v2 id -> directory for the tree below one root, refreshed only when needed.

    The id bpf_skb_cgroup_id returns is the cgroup directory's inode number. A key whose
    directory is gone belongs to a removed cgroup: the reader reports it one last time and
    deletes it, so the map stays bounded by the live cgroups.
    """

    root: Path
    paths: dict[int, Path] = field(default_factory=dict)

    def refresh(self) -> None:
        """Walk the tree (os.scandir: the inode comes with the directory entry)."""
        found: dict[int, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            found[self.root.stat().st_ino] = self.root
        stack = [self.root]
        while stack:
            d = stack.pop()
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(d) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        found[entry.inode()] = Path(entry.path)
                        stack.append(Path(entry.path))
        self.paths = found

    def alive(self, cgroup_id: int) -> bool:
        """True if the cgroup still has its directory (one stat for a known id)."""
        path = self.paths.get(cgroup_id)
        if path is None:
            return False
        try:
            return path.stat().st_ino == cgroup_id
        except FileNotFoundError:
            return False


class EbpfReader:
    """Per-cgroup byte and packet counters from a cgroup_skb program; a NetCounterReader."""

    def __init__(
        self,
        cgroup_parent: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        attach: AttachMode = "link",
        prune_every: int = 12,
    ) -> None:
        self.cgroup_parent = Path(cgroup_parent)
        self.max_entries = max_entries
        self.attach_mode: AttachMode = attach
        self.index = CgroupIndex(self.cgroup_parent)
        self.ncpus = sc.possible_cpus()
        self._value_size = VALUE.size * self.ncpus
        self._fds: list[int] = []
        self._cgroup_fd = -1
        self._counts_fd = -1
        self._missed_fd = -1
        self.prog_fds: dict[int, int] = {}
        self._links: list[int] = []
        self._attached: list[tuple[int, int]] = []  # (prog fd, attach type) for prog_attach
        self._batch = True
        self._reads = 0
        self._gone: dict[int, Path] = {}
        self.prune_every = max(1, prune_every)
        self._lookup_and_delete = True
        self.closed = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @property
    def kind(self) -> ReaderKind:
        """This reader is the eBPF one."""
        return "ebpf"

    def _own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _open(self) -> None:
        self._cgroup_fd = self._own(os.open(self.cgroup_parent, os.O_RDONLY | os.O_DIRECTORY))
        self._counts_fd = self._own(
            sc.map_create(
                sc.MAP_TYPE_PERCPU_HASH, KEY.size, VALUE.size, self.max_entries, "kopeck_counts"
            )
        )
        self._missed_fd = self._own(
            sc.map_create(sc.MAP_TYPE_PERCPU_ARRAY, MISSED_KEY.size, VALUE.size, 1, "kopeck_missed")
        )
        for direction, attach_type, name in (
            (INGRESS, sc.CGROUP_INET_INGRESS, "kopeck_ingress"),
            (EGRESS, sc.CGROUP_INET_EGRESS, "kopeck_egress"),
        ):
            insns = counter_program(self._counts_fd, self._missed_fd, direction)
            prog_fd = self._own(
                sc.prog_load(
                    sc.PROG_TYPE_CGROUP_SKB, insns, LICENSE, name, expected_attach_type=attach_type
                )
            )
            self.prog_fds[attach_type] = prog_fd
            if self.attach_mode == "link":
                self._links.append(self._own(sc.link_create(prog_fd, self._cgroup_fd, attach_type)))
            else:
                sc.prog_attach(self._cgroup_fd, prog_fd, attach_type, sc.F_ALLOW_MULTI)
                self._attached.append((prog_fd, attach_type))
        self.index.refresh()
        log.info(
            "eBPF counters attached at %s (%s, %d possible CPUs, max %d entries)",
            self.cgroup_parent,
            self.attach_mode,
            self.ncpus,
            self.max_entries,
        )

    # -- reading -------------------------------------------------------------------------
    def _snapshot(self) -> tuple[bytes, bytes]:
        if self._batch:
            try:
                return sc.map_lookup_batch(self._counts_fd, KEY.size, self._value_size)
            except sc.BpfError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self._batch = False
        keys: list[bytes] = []
        values: list[bytes] = []
        for key in sc.map_keys(self._counts_fd, KEY.size):
            value = sc.map_lookup(self._counts_fd, key, self._value_size)
            if value is not None:
                keys.append(key)
                values.append(value)
        return b"".join(keys), b"".join(values)

    def _final(self, key: bytes) -> bytes | None:
        """Read and drop the key of a removed cgroup, atomically where the kernel can."""
        if self._lookup_and_delete:
            try:
                return sc.map_lookup_and_delete(self._counts_fd, key, self._value_size)
            except sc.BpfError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self._lookup_and_delete = False
        value = sc.map_lookup(self._counts_fd, key, self._value_size)
        sc.map_delete(self._counts_fd, key)
        return value

    def read_raw(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(cgroup id, direction) -> cumulative (bytes, packets); removed cgroups one last time.

        A key whose cgroup directory is gone is read and deleted atomically, so the map
        holds only live cgroups. Unknown ids are checked at once (after a walk of the
        tree); known ones every `prune_every` reads, one stat each.
        """
        self._check_open()
        kraw, vraw = self._snapshot()
        keys = np.frombuffer(kraw, dtype="<u8").reshape(-1, 2)
        sums = np.frombuffer(vraw, dtype="<u8").reshape(-1, self.ncpus, 2).sum(axis=1)
        ids: list[int] = keys[:, 0].tolist()
        out: dict[tuple[int, int], tuple[int, int]] = {
            (i, d): (b, p)
            for i, d, b, p in zip(
                ids, keys[:, 1].tolist(), sums[:, 0].tolist(), sums[:, 1].tolist(), strict=True
            )
        }
        id_set = set(ids)
        unknown = id_set - self.index.paths.keys()
        if unknown:
            self.index.refresh()  # a new container: learn its directory while it exists
            unknown -= self.index.paths.keys()
        self._reads += 1
        stale = set(unknown)
        if self._reads % self.prune_every == 0:
            stale |= {i for i in id_set - unknown if not self.index.alive(i)}
        for cgroup_id, direction in [k for k in out if k[0] in stale]:
            final = self._final(pack_key(cgroup_id, direction))
            if final is not None:
                out[(cgroup_id, direction)] = sum_percpu(final, self.ncpus)
        # keep the removed cgroups' paths until the next read, so their last counts map to a pod
        self._gone = {i: self.index.paths.pop(i) for i in stale if i in self.index.paths}
        return out

    def read(self) -> dict[int, Counters]:
        """Cumulative Counters per socket cgroup id (a container's, or the pod's own)."""
        tx: dict[int, tuple[int, int]] = {}
        rx: dict[int, tuple[int, int]] = {}
        for (cgroup_id, direction), value in self.read_raw().items():
            (tx if direction == EGRESS else rx)[cgroup_id] = value
        none = (0, 0)
        return {
            i: Counters(
                tx.get(i, none)[0], rx.get(i, none)[0], tx.get(i, none)[1], rx.get(i, none)[1]
            )
            for i in tx.keys() | rx.keys()
        }

    @property
    def counts_map_fd(self) -> int:
        """The counts map's fd, for inspection (bpftool-like tools, benchmarks seeding keys)."""
        self._check_open()
        return self._counts_fd

    def cgroup_path(self, cgroup_id: int) -> Path | None:
        """The directory of a cgroup id in the last read, also of one removed since (whose
        final counts that read returned); None for an id never seen while it existed."""
        return self.index.paths.get(cgroup_id) or self._gone.get(cgroup_id)

    def missed(self) -> tuple[int, int]:
        """(bytes, packets) not counted per cgroup because the map was full."""
        self._check_open()
        value = sc.map_lookup(self._missed_fd, MISSED_KEY.pack(0), self._value_size)
        return (0, 0) if value is None else sum_percpu(value, self.ncpus)

    def map_size(self) -> int:
        """Number of keys in the map now (for the probe's health metrics)."""
        self._check_open()
        return len(sc.map_keys(self._counts_fd, KEY.size))

    def run_stats(self) -> list[sc.ProgRunStats]:
        """The kernel's run_time_ns / run_cnt of both programs (non-zero while stats are on)."""
        self._check_open()
        return [sc.prog_run_stats(fd) for fd in self.prog_fds.values()]

    def cost(self) -> ProgramCost:
        """Both programs' cumulative run time and run count (see cost.sample_cost)."""
        return total_cost(self.run_stats())

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"eBPF reader on {self.cgroup_parent} is closed")

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        """Detach both programs and close every fd; safe to call twice and after a failed open."""
        if self.closed:
            return
        self.closed = True
        for prog_fd, attach_type in self._attached:
            try:
                sc.prog_detach(self._cgroup_fd, prog_fd, attach_type)
            except OSError:
                log.exception("detaching eBPF program from %s", self.cgroup_parent)
        self._attached.clear()
        for fd in reversed(self._fds):  # links first: closing a link fd detaches it
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._links.clear()
        self.prog_fds.clear()

    def __enter__(self) -> EbpfReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()
