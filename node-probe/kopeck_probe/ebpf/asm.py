"""A tiny eBPF assembler: the handful of instructions kopeck's counter program needs.

Assembling in Python means the node needs no clang, no kernel headers and no bcc: the
program is built from this encoder at load time. Encodings follow the kernel's
Documentation/bpf/standardization/instruction-set.rst; tests check them against clang's
own BPF assembler.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Literal

# Instruction classes.
LD: Final = 0x00
LDX: Final = 0x01
ST: Final = 0x02
STX: Final = 0x03
ALU: Final = 0x04
JMP: Final = 0x05
ALU64: Final = 0x07

# Sizes (load/store) and modes.
SIZE_CODES: Final = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
IMM: Final = 0x00
MEM: Final = 0x60
ATOMIC: Final = 0xC0

# Operand source.
K: Final = 0x00
X: Final = 0x08

# ALU operations.
ADD: Final = 0x00
MOV: Final = 0xB0

# Jump operations.
JA: Final = 0x00
JEQ: Final = 0x10
JNE: Final = 0x50
CALL: Final = 0x80
EXIT: Final = 0x90

PSEUDO_MAP_FD: Final = 1

Size = Literal["w", "h", "b", "dw"]

_INSN = struct.Struct("<BBhi")


class AsmError(ValueError):
    """A program that cannot be encoded (bad register, unknown label, offset overflow)."""


@dataclass(frozen=True)
class Insn:
    """One 8-byte eBPF instruction slot."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        """The little-endian wire form the kernel expects (struct bpf_insn)."""
        for reg in (self.dst, self.src):
            if not 0 <= reg <= 10:
                raise AsmError(f"register r{reg} does not exist (r0..r10)")
        if not -(2**15) <= self.off < 2**15:
            raise AsmError(f"offset {self.off} does not fit in 16 bits")
        imm = self.imm
        if not -(2**31) <= imm < 2**32:
            raise AsmError(f"immediate {imm} does not fit in 32 bits")
        if imm >= 2**31:
            imm -= 2**32
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, imm)


@dataclass
class _Jump:
    index: int
    label: str


@dataclass
class Assembler:
    """Builds a program instruction by instruction; jumps name labels resolved at the end."""

    insns: list[Insn] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    _jumps: list[_Jump] = field(default_factory=list)

    # -- moves and arithmetic ------------------------------------------------------------
    def mov64_reg(self, dst: int, src: int) -> Assembler:
        """dst = src (64-bit)."""
        return self._emit(Insn(ALU64 | MOV | X, dst, src))

    def mov64_imm(self, dst: int, imm: int) -> Assembler:
        """dst = imm (sign-extended to 64 bits)."""
        return self._emit(Insn(ALU64 | MOV | K, dst, 0, 0, imm))

    def add64_imm(self, dst: int, imm: int) -> Assembler:
        """dst += imm (64-bit)."""
        return self._emit(Insn(ALU64 | ADD | K, dst, 0, 0, imm))

    def ld_map_fd(self, dst: int, map_fd: int) -> Assembler:
        """dst = map (a two-slot ld_imm64 the verifier rewrites to the map's address)."""
        self._emit(Insn(LD | SIZE_CODES["dw"] | IMM, dst, PSEUDO_MAP_FD, 0, map_fd))
        return self._emit(Insn(0))

    # -- memory --------------------------------------------------------------------------
    def ldx(self, size: Size, dst: int, src: int, off: int) -> Assembler:
        """dst = *(size *)(src + off)."""
        return self._emit(Insn(LDX | SIZE_CODES[size] | MEM, dst, src, off))

    def stx(self, size: Size, dst: int, off: int, src: int) -> Assembler:
        """*(size *)(dst + off) = src."""
        return self._emit(Insn(STX | SIZE_CODES[size] | MEM, dst, src, off))

    def st_imm(self, size: Size, dst: int, off: int, imm: int) -> Assembler:
        """*(size *)(dst + off) = imm."""
        return self._emit(Insn(ST | SIZE_CODES[size] | MEM, dst, 0, off, imm))

    def atomic_add64(self, dst: int, off: int, src: int) -> Assembler:
        """lock *(u64 *)(dst + off) += src (no fetch)."""
        return self._emit(Insn(STX | SIZE_CODES["dw"] | ATOMIC, dst, src, off, ADD))

    # -- control flow --------------------------------------------------------------------
    def call(self, helper_id: int) -> Assembler:
        """Call a kernel helper by number; r1-r5 are arguments, r0 the result."""
        return self._emit(Insn(JMP | CALL, 0, 0, 0, helper_id))

    def exit(self) -> Assembler:
        """Return r0."""
        return self._emit(Insn(JMP | EXIT))

    def ja(self, label: str) -> Assembler:
        """goto label."""
        return self._jump(Insn(JMP | JA), label)

    def jeq_imm(self, reg: int, imm: int, label: str) -> Assembler:
        """if reg == imm goto label."""
        return self._jump(Insn(JMP | JEQ | K, reg, 0, 0, imm), label)

    def jne_imm(self, reg: int, imm: int, label: str) -> Assembler:
        """if reg != imm goto label."""
        return self._jump(Insn(JMP | JNE | K, reg, 0, 0, imm), label)

    def label(self, name: str) -> Assembler:
        """Mark the next instruction as a jump target."""
        if name in self.labels:
            raise AsmError(f"label {name!r} defined twice")
        self.labels[name] = len(self.insns)
        return self

    # -- output --------------------------------------------------------------------------
    def resolved(self) -> list[Insn]:
        """Instructions with every jump offset filled in (off = target - (index + 1))."""
        out = list(self.insns)
        for j in self._jumps:
            if j.label not in self.labels:
                raise AsmError(f"jump to undefined label {j.label!r}")
            target = self.labels[j.label]
            if target >= len(out):
                raise AsmError(f"label {j.label!r} marks no instruction")
            old = out[j.index]
            out[j.index] = Insn(old.code, old.dst, old.src, target - (j.index + 1), old.imm)
        return out

    def assemble(self) -> bytes:
        """The program as the bytes BPF_PROG_LOAD takes."""
        return b"".join(i.encode() for i in self.resolved())

    def _emit(self, insn: Insn) -> Assembler:
        self.insns.append(insn)
        return self

    def _jump(self, insn: Insn, label: str) -> Assembler:
        self._jumps.append(_Jump(len(self.insns), label))
        return self._emit(insn)
