"""The bpf() system call through ctypes: maps, program load, attach, stats, object info.

No libbpf and no forked helper: every read is a few syscalls from the probe's own process.
Layouts of `union bpf_attr` follow include/uapi/linux/bpf.h; each command passes only the
bytes it uses (the kernel requires any tail it does not know to be zero).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass
from typing import Final

# Commands (enum bpf_cmd).
MAP_CREATE: Final = 0
MAP_LOOKUP_ELEM: Final = 1
MAP_UPDATE_ELEM: Final = 2
MAP_DELETE_ELEM: Final = 3
MAP_GET_NEXT_KEY: Final = 4
PROG_LOAD: Final = 5
PROG_ATTACH: Final = 8
PROG_DETACH: Final = 9
PROG_QUERY: Final = 16
OBJ_GET_INFO_BY_FD: Final = 15
MAP_LOOKUP_AND_DELETE_ELEM: Final = 21
MAP_LOOKUP_BATCH: Final = 24
LINK_CREATE: Final = 28
ENABLE_STATS: Final = 32

# Map types, program types, attach types, flags.
MAP_TYPE_HASH: Final = 1
MAP_TYPE_PERCPU_HASH: Final = 5
MAP_TYPE_PERCPU_ARRAY: Final = 6
PROG_TYPE_CGROUP_SKB: Final = 8
CGROUP_INET_INGRESS: Final = 0
CGROUP_INET_EGRESS: Final = 1
F_ALLOW_MULTI: Final = 2
STATS_RUN_TIME: Final = 0
ANY: Final = 0
NOEXIST: Final = 1

# Helper function numbers (enum bpf_func_id).
FUNC_MAP_LOOKUP_ELEM: Final = 1
FUNC_MAP_UPDATE_ELEM: Final = 2
FUNC_SKB_CGROUP_ID: Final = 79

# Offsets in struct bpf_prog_info.
PROG_INFO_SIZE: Final = 232
PROG_INFO_ID_OFF: Final = 4
PROG_INFO_RUN_TIME_NS_OFF: Final = 192
PROG_INFO_RUN_CNT_OFF: Final = 200

ENOTSUPP: Final = 524  # the kernel-internal "not supported" some commands leak to user space

_SYSCALL_NR: Final = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "s390x": 351,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() call the kernel refused; `log` holds the verifier's explanation if any."""

    def __init__(self, err: int, what: str, log: str = "") -> None:
        message = f"bpf {what}: {os.strerror(err) if err != ENOTSUPP else 'not supported'}"
        if log:
            message += f"\nverifier log:\n{log}"
        super().__init__(err, message)
        self.what = what
        self.log = log

    def __str__(self) -> str:
        return str(self.args[1])


def _nr() -> int:
    machine = platform.machine()
    if machine not in _SYSCALL_NR:
        raise BpfError(errno.ENOSYS, f"syscall number unknown on {machine}")
    return _SYSCALL_NR[machine]


def bpf(cmd: int, attr: bytes | bytearray | ctypes.Array[ctypes.c_char], what: str) -> int:
    """Issue one bpf() call; returns its non-negative result or raises BpfError."""
    buf = (
        attr
        if isinstance(attr, ctypes.Array)
        else ctypes.create_string_buffer(bytes(attr), len(attr))
    )
    ret = _libc.syscall(ctypes.c_long(_nr()), ctypes.c_long(cmd), buf, ctypes.c_uint(len(buf)))
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return int(ret)


def addr(buf: ctypes.Array[ctypes.c_char] | ctypes.Array[ctypes.c_ubyte]) -> int:
    """User-space address of a ctypes buffer, as bpf_attr's __aligned_u64 pointers take it."""
    return ctypes.addressof(buf)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    """Create a map and return its fd."""
    attr = struct.pack(
        "<7I16s", map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15]
    )
    return bpf(MAP_CREATE, attr.ljust(48, b"\0"), f"map create {name!r}")


def _elem_attr(map_fd: int, key: ctypes.Array[ctypes.c_char], value: int, flags: int) -> bytes:
    return struct.pack("<IIQQQ", map_fd, 0, addr(key), value, flags)


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under key (all CPUs' slots for a per-CPU map), or None if absent."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    try:
        bpf(MAP_LOOKUP_ELEM, _elem_attr(map_fd, kbuf, addr(vbuf), 0), "map lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def map_lookup_and_delete(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """Read and remove one element atomically, so no increment between the two is lost."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    try:
        bpf(
            MAP_LOOKUP_AND_DELETE_ELEM,
            _elem_attr(map_fd, kbuf, addr(vbuf), 0),
            "map lookup-and-delete",
        )
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    """Store value under key."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    bpf(MAP_UPDATE_ELEM, _elem_attr(map_fd, kbuf, addr(vbuf), flags), "map update")


def map_delete(map_fd: int, key: bytes) -> bool:
    """Remove key; False if it was not there."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(MAP_DELETE_ELEM, struct.pack("<IIQ", map_fd, 0, addr(kbuf)), "map delete")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key, walked with MAP_GET_NEXT_KEY (the fallback where batch lookup is missing)."""
    keys: list[bytes] = []
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    first = True
    while True:
        attr = struct.pack("<IIQQ", map_fd, 0, 0 if first else addr(cur), addr(nxt))
        try:
            bpf(MAP_GET_NEXT_KEY, attr, "map get-next-key")
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return keys
            raise
        keys.append(nxt.raw)
        ctypes.memmove(cur, nxt, key_size)
        first = False


def map_lookup_batch(
    map_fd: int, key_size: int, value_size: int, chunk: int = 1024
) -> tuple[bytes, bytes]:
    """Every key and value, concatenated, in a few BPF_MAP_LOOKUP_BATCH calls instead of two
    syscalls per key; the caller slices (or numpy-views) them by key_size and value_size."""
    keys_out: list[bytes] = []
    values_out: list[bytes] = []
    in_batch = ctypes.create_string_buffer(8)
    out_batch = ctypes.create_string_buffer(8)
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    first = True
    while True:
        attr = ctypes.create_string_buffer(
            struct.pack(
                "<QQQQIIQQ",
                0 if first else addr(in_batch),
                addr(out_batch),
                addr(keys),
                addr(values),
                chunk,
                map_fd,
                0,
                0,
            ),
            56,
        )
        done = False
        try:
            bpf(MAP_LOOKUP_BATCH, attr, "map lookup-batch")
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True
        count = struct.unpack_from("<I", attr.raw, 32)[0]
        keys_out.append(keys.raw[: count * key_size])
        values_out.append(values.raw[: count * value_size])
        if done:
            return b"".join(keys_out), b"".join(values_out)
        ctypes.memmove(in_batch, out_batch, 8)
        first = False


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str,
    name: str,
    expected_attach_type: int = 0,
    log_size: int = 1 << 20,
) -> int:
    """Load a program and return its fd; on refusal the error carries the verifier log."""
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lbuf = ctypes.create_string_buffer(license.encode() + b"\0")

    def attempt(log_level: int, logbuf: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack(
            "<IIQQIIQII16sII",
            prog_type,
            len(insns) // 8,
            addr(ibuf),
            addr(lbuf),
            log_level,
            len(logbuf) if logbuf is not None else 0,
            addr(logbuf) if logbuf is not None else 0,
            0,
            0,
            name.encode()[:15],
            0,
            expected_attach_type,
        )
        return bpf(PROG_LOAD, attr, f"program load {name!r}")

    try:
        return attempt(0, None)
    except BpfError as first:
        if first.errno in (errno.EPERM, errno.ENOSYS):
            raise
        logbuf = ctypes.create_string_buffer(log_size)
        try:
            return attempt(1, logbuf)  # loads now only if the first failure was transient
        except BpfError as e:
            log = logbuf.value.decode(errors="replace").strip()
            raise BpfError(e.errno or errno.EINVAL, e.what, log) from None


def prog_attach(cgroup_fd: int, prog_fd: int, attach_type: int, flags: int = F_ALLOW_MULTI) -> None:
    """Attach a program to a cgroup (legacy attachment: stays until detached)."""
    attr = struct.pack("<IIIII", cgroup_fd, prog_fd, attach_type, flags, 0)
    bpf(PROG_ATTACH, attr, "program attach")


def prog_detach(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    """Detach one multi-attached program from a cgroup."""
    attr = struct.pack("<IIIII", cgroup_fd, prog_fd, attach_type, 0, 0)
    bpf(PROG_DETACH, attr, "program detach")


def link_create(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Attach through a bpf_link: the attachment ends when the last fd to the link closes,
    so a killed probe leaves nothing attached."""
    attr = struct.pack("<IIII", prog_fd, cgroup_fd, attach_type, 0).ljust(32, b"\0")
    return bpf(LINK_CREATE, attr, "link create")


def prog_query(cgroup_fd: int, attach_type: int, max_ids: int = 64) -> list[int]:
    """Ids of programs attached to a cgroup for one attach type (effective=False)."""
    ids = (ctypes.c_uint32 * max_ids)()
    attr = ctypes.create_string_buffer(
        struct.pack("<IIIIQI", cgroup_fd, attach_type, 0, 0, ctypes.addressof(ids), max_ids), 32
    )
    bpf(PROG_QUERY, attr, "program query")
    count = struct.unpack_from("<I", attr.raw, 24)[0]
    return [int(ids[i]) for i in range(min(count, max_ids))]


@dataclass(frozen=True)
class ProgRunStats:
    """What the kernel measured of one program while stats were enabled."""

    prog_id: int
    run_time_ns: int
    run_cnt: int


def prog_run_stats(prog_fd: int) -> ProgRunStats:
    """run_time_ns and run_cnt of a program from BPF_OBJ_GET_INFO_BY_FD."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog_fd, PROG_INFO_SIZE, addr(info)), "prog info")
    raw = info.raw
    return ProgRunStats(
        prog_id=struct.unpack_from("<I", raw, PROG_INFO_ID_OFF)[0],
        run_time_ns=struct.unpack_from("<Q", raw, PROG_INFO_RUN_TIME_NS_OFF)[0],
        run_cnt=struct.unpack_from("<Q", raw, PROG_INFO_RUN_CNT_OFF)[0],
    )


def enable_stats() -> int:
    """Turn on run-time stats for as long as the returned fd stays open (BPF_ENABLE_STATS)."""
    return bpf(ENABLE_STATS, struct.pack("<I", STATS_RUN_TIME), "enable stats")


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs: per-CPU map values hold one slot for each."""
    with open(path) as fh:
        return parse_cpu_list(fh.read())


def parse_cpu_list(text: str) -> int:
    """Count CPUs in the kernel's list format ("0-3,5,7-8"): one per-CPU slot for each."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    if count <= 0:
        raise ValueError(f"empty CPU list {text!r}")
    return count
