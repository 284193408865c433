"""Sets of report sequence numbers as sorted ranges: which reports a record already holds.

Each Allocation keeps, per (node, bootId), the ranges of `seq` folded into it. A resent
report is folded only into the records that do not hold it yet, which makes ingest
exactly-once per record even when a checkpoint of many records was cut short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_RANGES = 32


@dataclass
class SeqSet:
    """Inclusive ranges [lo, hi], sorted, disjoint and not adjacent."""

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and any(lo <= seq <= hi for lo, hi in self.ranges)

    def add(self, seq: int) -> bool:
        """Add seq; False when it was already present."""
        if seq in self:
            return False
        self.add_range(seq, seq)
        return True

    def add_range(self, lo: int, hi: int) -> None:
        """Add [lo, hi]; beyond MAX_RANGES the oldest gap is closed to bound the record."""
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (lo, hi)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        while len(merged) > MAX_RANGES:
            merged[0:2] = [(merged[0][0], merged[1][1])]
        self.ranges = merged

    def update(self, other: SeqSet) -> None:
        """Union with another set."""
        for lo, hi in other.ranges:
            self.add_range(lo, hi)

    @property
    def highest(self) -> int:
        """The highest seq held (-1 when empty)."""
        return self.ranges[-1][1] if self.ranges else -1

    def encode(self) -> str:
        """Compact text for status: '0-41,43-50'."""
        return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.ranges)

    @classmethod
    def decode(cls, text: str) -> SeqSet:
        """Parse `encode`'s text; unreadable parts are skipped (status is not trusted input)."""
        out = cls()
        for raw in text.split(","):
            lo_s, _, hi_s = raw.strip().partition("-")
            try:
                lo = int(lo_s)
                hi = int(hi_s) if hi_s else lo
            except ValueError:
                continue
            if 0 <= lo <= hi:
                out.add_range(lo, hi)
        return out
