"""The eBPF assembler and the counter program, checked against clang's own BPF assembler."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kopeck_probe.ebpf.asm import AsmError, Assembler, Insn
from kopeck_probe.ebpf.program import EGRESS, INGRESS, counter_program

# The counter program in LLVM's BPF assembly, written by hand from the C in program.py.
# Map loads use the literals 5 (counts) and 6 (missed); clang leaves src_reg 0 there where
# we set BPF_PSEUDO_MAP_FD, so that one field is compared apart.
COUNTER_S = """
    r6 = r1
    r7 = *(u32 *)(r6 + 0)
    call 79
    *(u64 *)(r10 - 16) = r0
    r1 = {direction}
    *(u64 *)(r10 - 8) = r1
    r1 = 5 ll
    r2 = r10
    r2 += -16
    call 1
    if r0 != 0 goto .Ladd
    *(u64 *)(r10 - 32) = r7
    r1 = 1
    *(u64 *)(r10 - 24) = r1
    r1 = 5 ll
    r2 = r10
    r2 += -16
    r3 = r10
    r3 += -32
    r4 = 1
    call 2
    if r0 == 0 goto .Lallow
    r1 = 5 ll
    r2 = r10
    r2 += -16
    call 1
    if r0 != 0 goto .Ladd_late
    r1 = 0
    *(u32 *)(r10 - 36) = r1
    r1 = 6 ll
    r2 = r10
    r2 += -36
    call 1
    if r0 != 0 goto .Ladd_missed
    goto .Lallow
.Ladd:
    lock *(u64 *)(r0 + 0) += r7
    r1 = 1
    lock *(u64 *)(r0 + 8) += r1
    goto .Lallow
.Ladd_late:
    lock *(u64 *)(r0 + 0) += r7
    r1 = 1
    lock *(u64 *)(r0 + 8) += r1
    goto .Lallow
.Ladd_missed:
    lock *(u64 *)(r0 + 0) += r7
    r1 = 1
    lock *(u64 *)(r0 + 8) += r1
    goto .Lallow
.Lallow:
    r0 = 1
    exit
"""


def _clang_assemble(source: str, tmp: Path) -> bytes:
    clang = shutil.which("clang") or shutil.which("clang-14")
    objcopy = shutil.which("llvm-objcopy") or shutil.which("llvm-objcopy-14")
    if clang is None or objcopy is None:
        pytest.fail("clang / llvm-objcopy not installed: scripts/setup.sh installs them (make test)")
    (tmp / "p.s").write_text(source)
    subprocess.run(
        [clang, "-target", "bpf", "-c", str(tmp / "p.s"), "-o", str(tmp / "p.o")], check=True
    )
    subprocess.run(
        [objcopy, "-O", "binary", "--only-section=.text", str(tmp / "p.o"), str(tmp / "p.bin")],
        check=True,
    )
    return (tmp / "p.bin").read_bytes()


def _clear_pseudo_src(code: bytes) -> bytes:
    out = bytearray(code)
    for i in range(0, len(out), 8):
        if out[i] == 0x18:  # ld_imm64: keep dst, drop src (BPF_PSEUDO_MAP_FD)
            out[i + 1] &= 0x0F
    return bytes(out)


@pytest.mark.parametrize("direction", [INGRESS, EGRESS])
def test_counter_program_matches_clang(direction: int, tmp_path: Path) -> None:
    ours = counter_program(counts_fd=5, missed_fd=6, direction=direction)
    theirs = _clang_assemble(COUNTER_S.format(direction=direction), tmp_path)
    assert len(ours) == len(theirs)
    assert _clear_pseudo_src(ours) == theirs
    # and the map loads do carry BPF_PSEUDO_MAP_FD in ours
    loads = [ours[i : i + 8] for i in range(0, len(ours), 8) if ours[i] == 0x18]
    assert loads and all(ld[1] >> 4 == 1 for ld in loads)


def test_known_encodings() -> None:
    """Byte patterns from the kernel's instruction-set documentation."""
    a = Assembler()
    a.mov64_imm(0, 1).exit()
    assert a.assemble() == bytes.fromhex("b7000000010000009500000000000000")
    assert Assembler().atomic_add64(0, 8, 1).assemble() == bytes.fromhex("db10080000000000")
    assert Assembler().add64_imm(2, -16).assemble() == bytes.fromhex("07020000f0ffffff")
    ld = Assembler().ld_map_fd(1, 7).assemble()
    assert ld == bytes.fromhex("18110000070000000000000000000000")
    assert Assembler().st_imm("dw", 10, -8, 1).assemble() == bytes.fromhex("7a0af8ff01000000")


def test_jumps_resolve_forward_and_backward_over_wide_insns() -> None:
    a = Assembler()
    a.label("top")
    a.jeq_imm(1, 0, "end")  # skips the two-slot ld_imm64 and the ja
    a.ld_map_fd(2, 3)
    a.ja("top")
    a.label("end")
    a.exit()
    insns = a.resolved()
    assert insns[0].off == 3
    assert insns[3].off == -4


@pytest.mark.parametrize(
    ("insn", "msg"),
    [
        (Insn(0xB7, dst=11), "register"),
        (Insn(0x05, off=2**15), "offset"),
        (Insn(0xB7, imm=2**32), "immediate"),
    ],
)
def test_encoding_limits(insn: Insn, msg: str) -> None:
    with pytest.raises(AsmError, match=msg):
        insn.encode()


def test_imm_accepts_unsigned_32_bit() -> None:
    raw = Insn(0xB7, imm=0xFFFFFFFF).encode()
    assert struct.unpack("<i", raw[4:])[0] == -1


def test_label_errors() -> None:
    a = Assembler().ja("nowhere")
    with pytest.raises(AsmError, match="undefined"):
        a.assemble()
    with pytest.raises(AsmError, match="twice"):
        Assembler().label("x").label("x")
    b = Assembler().ja("end").label("end")
    with pytest.raises(AsmError, match="marks no instruction"):
        b.assemble()


def test_counter_program_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        counter_program(5, 6, 2)


def test_counter_program_always_allows() -> None:
    """Every path ends in r0 = 1; exit, the last two instructions."""
    code = counter_program(5, 6, INGRESS)
    assert code[-16:] == bytes.fromhex("b7000000010000009500000000000000")
    assert code.count(bytes.fromhex("9500000000000000")) == 1
