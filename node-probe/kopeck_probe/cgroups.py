"""Read pod and container cgroups as the kubelet lays them out, on cgroup v1, v2 or both.

This module only does I/O and parsing: it finds pod cgroups under the configured parent
(systemd or cgroupfs driver) and reads the kernel's cumulative counters. Turning counters
into charges is attribution.py's job. Reads use raw os.open/os.read: with 1,000 pods at
1 Hz every microsecond per file shows in the probe's own cost.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Qos = Literal["guaranteed", "burstable", "besteffort"]
Driver = Literal["systemd", "cgroupfs"]

CGROUP_BASE = Path("/sys/fs/cgroup")
# v1 limits at or above this mean "no limit" (the kernel writes PAGE_COUNTER_MAX * page size).
V1_UNLIMITED = 1 << 62
_VANISHED = (errno.ENOENT, errno.ENODEV, errno.ESRCH)

_SYSTEMD_POD = re.compile(r"^kubepods(?:-(burstable|besteffort))?-pod([0-9a-fA-F_]+)\.slice$")
_SYSTEMD_QOS = re.compile(r"^kubepods-(burstable|besteffort)\.slice$")
_SYSTEMD_CONTAINER = re.compile(r"^(?:[a-z0-9]+-)*?([0-9a-fA-F]{12,})\.scope$")
_CGROUPFS_POD = re.compile(r"^pod([0-9a-fA-F-]+)$")


@dataclass(frozen=True)
class Hierarchies:
    """Where the counters live: a v1 mount per controller and/or the v2 tree."""

    unified: Path | None = None
    cpuacct: Path | None = None
    cpu: Path | None = None
    memory: Path | None = None
    blkio: Path | None = None
    unified_controllers: frozenset[str] = frozenset()
    pure_v2: bool = False

    @classmethod
    def detect(cls, base: Path = CGROUP_BASE) -> Hierarchies:
        """Find v2 at the base (pure v2) or base/unified (hybrid) and each v1 controller."""
        if (base / "cgroup.controllers").exists():
            return cls(unified=base, unified_controllers=_controllers(base), pure_v2=True)
        unified = base / "unified"
        has_v2 = (unified / "cgroup.procs").exists()

        def v1(*names: str, probe: str) -> Path | None:
            for name in names:
                if (base / name / probe).exists():
                    return base / name
            return None

        return cls(
            unified=unified if has_v2 else None,
            cpuacct=v1("cpuacct", "cpu,cpuacct", "cpuacct,cpu", probe="cpuacct.usage"),
            cpu=v1("cpu", "cpu,cpuacct", "cpuacct,cpu", probe="cpu.cfs_quota_us"),
            memory=v1("memory", probe="memory.usage_in_bytes"),
            blkio=v1("blkio", probe="blkio.throttle.io_service_bytes"),
            unified_controllers=_controllers(unified) if has_v2 else frozenset(),
        )

    def walk_root(self) -> Path:
        """The hierarchy whose tree is walked to find pods (every layout has it)."""
        # v1 cpuacct directories hold a dozen control files; v2 ones up to ~70: walk the
        # one that is cheapest to list.
        for root in (self.cpuacct, self.unified, self.memory):
            if root is not None:
                return root
        raise RuntimeError(
            "no cgroup hierarchy found: mount cgroup v2 or the v1 cpuacct controller"
        )


def _controllers(root: Path) -> frozenset[str]:
    try:
        return frozenset((root / "cgroup.controllers").read_text().split())
    except OSError:
        return frozenset()


@dataclass(frozen=True)
class ContainerCgroup:
    """A container's cgroup: its runtime id and path relative to each hierarchy root."""

    container_id: str
    relpath: str


@dataclass(frozen=True)
class PodCgroup:
    """A pod's cgroup and its containers, found by walking the kubepods tree."""

    uid: str
    qos: Qos
    relpath: str
    containers: tuple[ContainerCgroup, ...] = ()


def parse_pod_dirname(name: str, driver: Driver) -> str | None:
    """The pod UID a kubelet encoded in a pod cgroup's name, or None if it is not a pod."""
    if driver == "systemd":
        m = _SYSTEMD_POD.match(name)
        return m.group(2).replace("_", "-") if m else None
    m = _CGROUPFS_POD.match(name)
    return m.group(1) if m else None


def parse_container_dirname(name: str, driver: Driver) -> str | None:
    """The runtime container id in a container cgroup's name (conmon scopes are skipped)."""
    if driver == "systemd":
        if "conmon" in name:
            return None
        m = _SYSTEMD_CONTAINER.match(name)
        return m.group(1) if m else None
    return name if name and not name.startswith(".") else None


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        if exc.errno in _VANISHED:
            return []
        raise


def _child_cgroups(path: str) -> list[str]:
    """Sub-cgroups of a pod cgroup: control files (with a dot, not .scope) are skipped
    by name before asking the directory entry, as there are many more of them."""
    try:
        with os.scandir(path) as it:
            return [
                e.name
                for e in it
                if ("." not in e.name or e.name.endswith(".scope"))
                and e.is_dir(follow_symlinks=False)
            ]
    except OSError as exc:
        if exc.errno in _VANISHED:
            return []
        raise


def discover(root: Path, prefix: str = "") -> list[PodCgroup]:
    """Every pod cgroup (both drivers' layouts) under root/prefix, with its containers."""
    pods: list[PodCgroup] = []
    base = os.path.join(str(root), prefix.strip("/")) if prefix.strip("/") else str(root)
    rel_base = prefix.strip("/")

    def rel(*parts: str) -> str:
        return "/".join(p for p in (rel_base, *parts) if p)

    # systemd driver
    top = "kubepods.slice"
    if os.path.isdir(os.path.join(base, top)):
        for name in _subdirs(os.path.join(base, top)):
            qm = _SYSTEMD_QOS.match(name)
            if qm:
                qos: Qos = qm.group(1)  # type: ignore[assignment]
                for pname in _subdirs(os.path.join(base, top, name)):
                    uid = parse_pod_dirname(pname, "systemd")
                    if uid:
                        pods.append(_pod(base, rel(top, name, pname), uid, qos, "systemd"))
                continue
            uid = parse_pod_dirname(name, "systemd")
            if uid:
                pods.append(_pod(base, rel(top, name), uid, "guaranteed", "systemd"))
    # cgroupfs driver
    top = "kubepods"
    if os.path.isdir(os.path.join(base, top)):
        for name in _subdirs(os.path.join(base, top)):
            if name in ("burstable", "besteffort"):
                for pname in _subdirs(os.path.join(base, top, name)):
                    uid = parse_pod_dirname(pname, "cgroupfs")
                    if uid:
                        pods.append(_pod(base, rel(top, name, pname), uid, name, "cgroupfs"))  # type: ignore[arg-type]
                continue
            uid = parse_pod_dirname(name, "cgroupfs")
            if uid:
                pods.append(_pod(base, rel(top, name), uid, "guaranteed", "cgroupfs"))
    return pods


def _pod(base: str, relpath: str, uid: str, qos: Qos, driver: Driver) -> PodCgroup:
    del base, driver
    return PodCgroup(uid=uid, qos=qos, relpath=relpath)


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Cumulative counters and the working set of one cgroup at one instant."""

    inode: int
    cpu_usage_ns: int | None
    memory_working_set_bytes: int | None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@dataclass(frozen=True)
class CgroupLimits:
    """Limits the runtime wrote into the cgroup (None = unlimited or unknown)."""

    cpu_limit_cores: float | None
    memory_limit_bytes: int | None


class CgroupVanished(Exception):
    """The cgroup was removed between discovery and the read."""


def working_set(usage_bytes: int, inactive_file_bytes: int) -> int:
    """cAdvisor's working set: usage minus inactive file cache, never below zero."""
    return max(0, usage_bytes - inactive_file_bytes)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse 'key value' lines (memory.stat, cpu.stat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value:
            try:
                out[key] = int(value)
            except ValueError:
                continue
    return out


def parse_blkio_service_bytes(text: str) -> tuple[int, int]:
    """(read, write) bytes summed over devices from blkio.throttle.io_service_bytes (v1)."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
    return read, write


def parse_io_stat(text: str) -> tuple[int, int]:
    """(read, write) bytes summed over devices from io.stat (v2)."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_cpu_max(text: str) -> float | None:
    """Cores allowed by a v2 cpu.max line ('max 100000' = unlimited)."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _VANISHED:
            raise CgroupVanished(path) from exc
        raise
    try:
        return os.read(fd, 65536)
    except OSError as exc:
        if exc.errno in _VANISHED:
            raise CgroupVanished(path) from exc
        raise
    finally:
        os.close(fd)


@dataclass
class CgroupReader:
    """Reads the counters of cgroups given by their path relative to each hierarchy root.

    CPU comes from v1 cpuacct.usage (nanoseconds) when mounted, else v2 cpu.stat; memory
    from the v1 memory controller, else v2 when the memory controller is enabled there;
    I/O from v1 blkio or v2 io.stat where present. Counts its reads and errors for /metrics.
    """

    hier: Hierarchies
    prefix: str = ""
    reads: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        # Open files are kept and re-read with pread: opening a path deep in a cgroup tree
        # costs more than reading it. Keyed by cgroup relpath, closed when it goes away.
        self._fds: dict[str, dict[str, int]] = {}
        self._paths: dict[str, list[tuple[str, str]]] = {}
        h = self.hier
        u = str(h.unified) if h.unified else None
        self._cpu_v1 = str(h.cpuacct) if h.cpuacct else None
        self._cpu_v2 = u if (self._cpu_v1 is None and u) else None
        self._mem_v1 = str(h.memory) if h.memory else None
        self._mem_v2 = (
            u if (self._mem_v1 is None and u and "memory" in h.unified_controllers) else None
        )
        self._io_v1 = str(h.blkio) if h.blkio else None
        self._io_v2 = u if (self._io_v1 is None and u and "io" in h.unified_controllers) else None
        self._inode_root = str(h.unified) if h.unified else str(h.walk_root())
        self._cpu_limit_v1 = str(h.cpu) if h.cpu else None
        self._cpu_limit_v2 = (
            u if (self._cpu_limit_v1 is None and u and "cpu" in h.unified_controllers) else None
        )

    def discover(self, with_containers: bool = True) -> list[PodCgroup]:
        """Pods (and, unless told not to, their containers) under the configured prefix."""
        root = self.hier.walk_root()
        pods = discover(root, self.prefix)
        if not with_containers:
            return pods
        out: list[PodCgroup] = []
        for pod in pods:
            driver: Driver = (
                "systemd" if pod.relpath.split("/")[-1].endswith(".slice") else "cgroupfs"
            )
            containers = []
            for name in _child_cgroups(os.path.join(str(root), pod.relpath)):
                cid = parse_container_dirname(name, driver)
                if cid:
                    containers.append(ContainerCgroup(cid, f"{pod.relpath}/{name}"))
            out.append(PodCgroup(pod.uid, pod.qos, pod.relpath, tuple(containers)))
        return out

    def _pread(self, relpath: str, path: str) -> bytes:
        fds = self._fds.setdefault(relpath, {})
        fd = fds.get(path)
        if fd is not None:
            try:
                return os.pread(fd, 65536, 0)
            except OSError as exc:
                if exc.errno not in _VANISHED:
                    raise
                # Removed (or removed and re-made under the same name): reopen once.
                os.close(fd)
                del fds[path]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _VANISHED:
                raise CgroupVanished(path) from exc
            raise
        fds[path] = fd
        try:
            return os.pread(fd, 65536, 0)
        except OSError as exc:
            if exc.errno in _VANISHED:
                raise CgroupVanished(path) from exc
            raise

    def release(self, live: set[str] | None = None) -> None:
        """Close the files of cgroups not in live (all of them when live is None)."""
        for relpath in [r for r in self._paths if live is None or r not in live]:
            del self._paths[relpath]
        for relpath in [r for r in self._fds if live is None or r not in live]:
            for fd in self._fds.pop(relpath).values():
                os.close(fd)

    def open_files(self) -> int:
        """Files kept open (for /metrics and the file-descriptor budget)."""
        return sum(len(v) for v in self._fds.values())

    def inode(self, relpath: str) -> int:
        """The v2 cgroup id (directory inode) that bpf_skb_cgroup_id reports for it."""
        try:
            return os.stat(os.path.join(self._inode_root, relpath)).st_ino
        except OSError as exc:
            if exc.errno in _VANISHED:
                raise CgroupVanished(relpath) from exc
            raise

    def _files(self, relpath: str, with_io: bool) -> list[tuple[str, str]]:
        files: list[tuple[str, str]] = []
        if self._cpu_v1:
            files.append(("cpu_ns", f"{self._cpu_v1}/{relpath}/cpuacct.usage"))
        elif self._cpu_v2:
            files.append(("cpu_stat", f"{self._cpu_v2}/{relpath}/cpu.stat"))
        if self._mem_v1:
            files.append(("mem_usage", f"{self._mem_v1}/{relpath}/memory.usage_in_bytes"))
            files.append(("mem_stat_v1", f"{self._mem_v1}/{relpath}/memory.stat"))
        elif self._mem_v2:
            files.append(("mem_usage", f"{self._mem_v2}/{relpath}/memory.current"))
            files.append(("mem_stat_v2", f"{self._mem_v2}/{relpath}/memory.stat"))
        if with_io and self._io_v1:
            files.append(("blkio", f"{self._io_v1}/{relpath}/blkio.throttle.io_service_bytes"))
        elif with_io and self._io_v2:
            files.append(("io_stat", f"{self._io_v2}/{relpath}/io.stat"))
        return files

    def read(self, relpath: str, inode: int, with_io: bool = True) -> CgroupStats:
        """Cumulative CPU and I/O counters and the working set of one cgroup, now."""
        self.reads += 1
        files = self._paths.get(relpath)
        if files is None:
            files = self._paths[relpath] = self._files(relpath, with_io)
        cpu: int | None = None
        usage = -1
        ws: int | None = None
        io_r: int | None = None
        io_w: int | None = None
        try:
            for kind, path in files:
                raw = self._pread(relpath, path)
                if kind == "cpu_ns":
                    cpu = int(raw)
                elif kind == "mem_usage":
                    usage = int(raw)
                elif kind == "mem_stat_v1":
                    ws = working_set(usage, _stat_value(raw, b"\ntotal_inactive_file "))
                elif kind == "blkio":
                    io_r, io_w = parse_blkio_service_bytes(raw.decode())
                elif kind == "cpu_stat":
                    cpu = _stat_value(b"\n" + raw, b"\nusage_usec ", required=True) * 1000
                elif kind == "mem_stat_v2":
                    ws = working_set(usage, _stat_value(b"\n" + raw, b"\ninactive_file "))
                elif kind == "io_stat":
                    io_r, io_w = parse_io_stat(raw.decode())
        except CgroupVanished:
            raise
        except (OSError, ValueError, KeyError):
            self.errors += 1
            raise
        return CgroupStats(inode, cpu, ws, io_r, io_w)

    def limits(self, relpath: str) -> CgroupLimits:
        """CPU quota and memory limit of a cgroup (read rarely: they seldom change)."""
        cpu: float | None = None
        mem: int | None = None
        try:
            if self._cpu_limit_v1:
                quota = int(_read(f"{self._cpu_limit_v1}/{relpath}/cpu.cfs_quota_us"))
                if quota > 0:
                    period = int(_read(f"{self._cpu_limit_v1}/{relpath}/cpu.cfs_period_us"))
                    cpu = quota / period
            elif self._cpu_limit_v2:
                cpu = parse_cpu_max(_read(f"{self._cpu_limit_v2}/{relpath}/cpu.max").decode())
            if self._mem_v1:
                lim = int(_read(f"{self._mem_v1}/{relpath}/memory.limit_in_bytes"))
                mem = lim if lim < V1_UNLIMITED else None
            elif self._mem_v2:
                raw = _read(f"{self._mem_v2}/{relpath}/memory.max").strip()
                mem = None if raw == b"max" else int(raw)
        except CgroupVanished:
            raise
        except (OSError, ValueError):
            self.errors += 1
        return CgroupLimits(cpu, mem)


def _stat_value(stat: bytes, key: bytes, required: bool = False) -> int:
    """One value of a memory.stat file, found without parsing the other ~40 lines."""
    i = stat.find(key)
    if i < 0:
        if required:
            raise KeyError(key.decode().strip())
        return 0
    j = stat.find(b"\n", i + len(key))
    return int(stat[i + len(key) : j if j >= 0 else None])


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's boot id: report sequence numbers restart with it."""
    return path.read_text().strip()


def node_capacity() -> tuple[int, int]:
    """(logical CPUs, physical memory bytes) of this node."""
    cpus = os.cpu_count() or 1
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cpus, mem
