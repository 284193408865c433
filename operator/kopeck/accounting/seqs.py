"""Sets of report sequence numbers as sorted ranges: which reports a record already holds.

Each Allocation keeps, per (node, bootId), the ranges of `seq` folded into it. A resent
report is folded only into the records that do not hold it yet, which makes ingest
exactly-once per record even when a checkpoint of many records was cut short.

A seq is never marked as held because of a bound on the record: a gap stays open until
the report arrives, or until it is older than the probe's replay horizon (a probe holds at
most `REPLAY_HORIZON_REPORTS` unacknowledged reports, so once seq H is seen no seq at or
below H minus the horizon can ever be sent again). Only those settled seqs are compacted
into a floor, written as ``..F`` in the encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kopeck.api.report import REPLAY_HORIZON_REPORTS

MAX_RANGES = 32
"""Open ranges above which a record counts as fragmented (surfaced, never forced closed)."""


@dataclass
class SeqSet:
    """Settled seqs up to `floor`, then inclusive ranges [lo, hi] above it, sorted, disjoint
    and not adjacent."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    floor: int = -1
    """Every seq at or below this is settled: folded in, or past the replay horizon."""
    horizon: int = REPLAY_HORIZON_REPORTS
    """Seqs at or below highest minus this can no longer arrive (the probe's buffer bound)."""

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        return seq <= self.floor or any(lo <= seq <= hi for lo, hi in self.ranges)

    def add(self, seq: int) -> bool:
        """Add seq; False when it was already present."""
        if seq in self:
            return False
        self.add_range(seq, seq)
        return True

    def add_range(self, lo: int, hi: int) -> None:
        """Add [lo, hi] exactly; then settle what the replay horizon has passed."""
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (lo, hi)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.ranges = merged
        self.settle(self.highest - self.horizon)

    def settle(self, low_water: int) -> None:
        """Mark every seq at or below low_water as settled; call only with a bound the
        caller knows no report can arrive below (the probe's buffer bound)."""
        floor = max(self.floor, low_water)
        if floor < 0:
            return
        kept: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if a <= floor + 1:
                floor = max(floor, b)
            else:
                kept.append((a, b))
        self.floor, self.ranges = floor, kept

    def update(self, other: SeqSet) -> None:
        """Union with another set."""
        self.settle(other.floor)
        for lo, hi in other.ranges:
            self.add_range(lo, hi)

    @property
    def highest(self) -> int:
        """The highest seq held (-1 when empty)."""
        return self.ranges[-1][1] if self.ranges else self.floor

    @property
    def fragmented(self) -> bool:
        """More open gaps than a record should carry: worth a condition or a metric."""
        return len(self.ranges) > MAX_RANGES

    def encode(self) -> str:
        """Compact text for status: '..40,43-50' (..F = everything up to F settled)."""
        parts = [f"..{self.floor}"] if self.floor >= 0 else []
        parts += [f"{a}-{b}" if a != b else str(a) for a, b in self.ranges]
        return ",".join(parts)

    @classmethod
    def decode(cls, text: str, horizon: int = REPLAY_HORIZON_REPORTS) -> SeqSet:
        """Parse `encode`'s text; unreadable parts are skipped (status is not trusted input)."""
        out = cls(horizon=horizon)
        for raw in text.split(","):
            raw = raw.strip()
            if raw.startswith(".."):
                try:
                    floor = int(raw[2:])
                except ValueError:
                    continue
                if floor >= 0:
                    out.settle(floor)
                continue
            lo_s, _, hi_s = raw.partition("-")
            try:
                lo = int(lo_s)
                hi = int(hi_s) if hi_s else lo
            except ValueError:
                continue
            if 0 <= lo <= hi:
                out.add_range(lo, hi)
        return out
