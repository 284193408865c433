"""The per-cgroup byte counter: kopeck's cgroup_skb program, written with our assembler.

This module is the program's source. In C it reads:

    struct key { __u64 cgroup_id; __u64 direction; };      /* 0 ingress, 1 egress */
    struct val { __u64 bytes; __u64 packets; };
    PERCPU_HASH(counts, struct key, struct val);           /* per CPU: no shared cache line */
    PERCPU_ARRAY(missed, __u32, struct val, 1);            /* packets the full map could not hold */

    int count(struct __sk_buff *skb) {
        __u64 len = skb->len;                              /* L3: IP header onward */
        struct key k = { bpf_skb_cgroup_id(skb), DIRECTION };
        struct val *v = bpf_map_lookup_elem(&counts, &k);
        if (!v) {
            struct val init = { len, 1 };
            if (bpf_map_update_elem(&counts, &k, &init, BPF_NOEXIST) == 0) return 1;
            v = bpf_map_lookup_elem(&counts, &k);          /* another CPU inserted it first */
            if (!v) { __u32 z = 0; v = bpf_map_lookup_elem(&missed, &z); if (!v) return 1; }
        }
        __sync_fetch_and_add(&v->bytes, len);              /* atomic: a softirq or a preempting */
        __sync_fetch_and_add(&v->packets, 1);              /* task may run us on the same CPU  */
        return 1;                                          /* always allow: we only count */
    }

`bpf_skb_cgroup_id` is the cgroup of the socket that owns the packet, which is the pod's
container even at ingress (where the current task is whatever ran the softirq). The same
instructions are loaded twice, with DIRECTION 0 for ingress and 1 for egress.
"""

from __future__ import annotations

import struct
from typing import Final

from .asm import Assembler
from .syscall import FUNC_MAP_LOOKUP_ELEM, FUNC_MAP_UPDATE_ELEM, FUNC_SKB_CGROUP_ID, NOEXIST

INGRESS: Final = 0
EGRESS: Final = 1

KEY = struct.Struct("<QQ")  # cgroup id, direction
VALUE = struct.Struct("<QQ")  # bytes, packets
MISSED_KEY = struct.Struct("<I")

LICENSE: Final = "Apache-2.0"  # no GPL-only helper is used

SKB_LEN_OFF: Final = 0  # offsetof(struct __sk_buff, len)

# Stack layout (r10 is the read-only frame pointer).
_KEY_OFF: Final = -16  # struct key: -16 cgroup id, -8 direction
_INIT_OFF: Final = -32  # struct val for the insert: -32 bytes, -24 packets
_ZERO_OFF: Final = -36  # u32 index 0 of `missed`


def _add_and_allow(a: Assembler, label: str) -> None:
    a.label(label)
    a.atomic_add64(0, 0, 7)
    a.mov64_imm(1, 1)
    a.atomic_add64(0, 8, 1)
    a.ja("allow")


def counter_program(counts_fd: int, missed_fd: int, direction: int) -> bytes:
    """The program's instructions for one direction, with the two map fds baked in."""
    if direction not in (INGRESS, EGRESS):
        raise ValueError(
            f"direction must be {INGRESS} (ingress) or {EGRESS} (egress), not {direction}"
        )
    a = Assembler()
    a.mov64_reg(6, 1)  # r6 = skb
    a.ldx("w", 7, 6, SKB_LEN_OFF)  # r7 = skb->len
    a.call(FUNC_SKB_CGROUP_ID)  # r1 is still skb
    a.stx("dw", 10, _KEY_OFF, 0)
    a.mov64_imm(1, direction)
    a.stx("dw", 10, _KEY_OFF + 8, 1)

    a.ld_map_fd(1, counts_fd)
    a.mov64_reg(2, 10)
    a.add64_imm(2, _KEY_OFF)
    a.call(FUNC_MAP_LOOKUP_ELEM)
    a.jne_imm(0, 0, "add")

    a.stx("dw", 10, _INIT_OFF, 7)
    a.mov64_imm(1, 1)
    a.stx("dw", 10, _INIT_OFF + 8, 1)
    a.ld_map_fd(1, counts_fd)
    a.mov64_reg(2, 10)
    a.add64_imm(2, _KEY_OFF)
    a.mov64_reg(3, 10)
    a.add64_imm(3, _INIT_OFF)
    a.mov64_imm(4, NOEXIST)
    a.call(FUNC_MAP_UPDATE_ELEM)
    a.jeq_imm(0, 0, "allow")

    a.ld_map_fd(1, counts_fd)
    a.mov64_reg(2, 10)
    a.add64_imm(2, _KEY_OFF)
    a.call(FUNC_MAP_LOOKUP_ELEM)
    a.jne_imm(0, 0, "add_late")

    a.mov64_imm(1, 0)
    a.stx("w", 10, _ZERO_OFF, 1)
    a.ld_map_fd(1, missed_fd)
    a.mov64_reg(2, 10)
    a.add64_imm(2, _ZERO_OFF)
    a.call(FUNC_MAP_LOOKUP_ELEM)
    a.jne_imm(0, 0, "add_missed")
    a.ja("allow")

    _add_and_allow(a, "add")
    _add_and_allow(a, "add_late")
    _add_and_allow(a, "add_missed")

    a.label("allow")
    a.mov64_imm(0, 1)
    a.exit()
    return a.assemble()


def pack_key(cgroup_id: int, direction: int) -> bytes:
    """A map key as the program writes it."""
    return KEY.pack(cgroup_id, direction)


def unpack_key(raw: bytes) -> tuple[int, int]:
    """(cgroup id, direction) of a map key."""
    cgroup_id, direction = KEY.unpack(raw)
    return int(cgroup_id), int(direction)


def sum_percpu(raw: bytes, ncpus: int) -> tuple[int, int]:
    """(bytes, packets) summed over the per-CPU slots of one value."""
    total_bytes = total_packets = 0
    for cpu in range(ncpus):
        b, p = VALUE.unpack_from(raw, cpu * VALUE.size)
        total_bytes += b
        total_packets += p
    return total_bytes, total_packets
