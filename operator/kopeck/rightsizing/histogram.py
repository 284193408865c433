"""Decaying usage histograms with exponential buckets, as the VPA recommender keeps them.

Why this shape: a histogram answers any percentile in constant space, exponential buckets
give the same relative precision (5%) for a 10m sidecar and a 64-core batch job, and the
exponential decay (24 h half-life) lets recent usage outweigh last week's without keeping
every sample. The checkpoint is sparse and normalised like VPA's HistogramCheckpoint, so a
container's history fits in a few hundred bytes of Allocation status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

HALF_LIFE_SECONDS = 24 * 3600.0
"""VPA's default decay half-life."""
MAX_DECAY_EXPONENT = 100
"""Renormalise once a weight would grow past 2**100 (VPA's limit)."""
MAX_CHECKPOINT_WEIGHT = 10_000
"""The heaviest bucket is stored as this integer; the others relative to it (VPA)."""
_TOTAL_WEIGHT_DIGITS = 9
"""Significant digits of the total weight kept in a checkpoint."""


@dataclass(frozen=True)
class ExponentialBuckets:
    """Bucket i starts at first * (ratio**i - 1) / (ratio - 1); the last is open-ended."""

    first_bucket_size: float
    ratio: float
    max_value: float

    @cached_property
    def num_buckets(self) -> int:
        """How many buckets cover [0, max_value]."""
        return (
            math.ceil(
                math.log(self.max_value * (self.ratio - 1) / self.first_bucket_size + 1)
                / math.log(self.ratio)
            )
            + 1
        )

    def bucket_start(self, bucket: int) -> float:
        """The smallest value that falls in a bucket."""
        if bucket <= 0:
            return 0.0
        return self.first_bucket_size * (self.ratio**bucket - 1) / (self.ratio - 1)

    def find_bucket(self, value: float) -> int:
        """The bucket a value falls in (values past max_value land in the last bucket)."""
        if value < self.first_bucket_size:
            return 0
        bucket = int(
            math.log(value * (self.ratio - 1) / self.first_bucket_size + 1) / math.log(self.ratio)
        )
        # Guard against floating point putting a bucket boundary one bucket too high.
        if bucket > 0 and value < self.bucket_start(bucket):
            bucket -= 1
        elif value >= self.bucket_start(bucket + 1):
            bucket += 1
        return min(bucket, self.num_buckets - 1)


CPU_BUCKETS = ExponentialBuckets(first_bucket_size=0.01, ratio=1.05, max_value=1000.0)
"""Cores: 10 millicores first bucket, 5% growth, up to 1000 cores (VPA)."""
MEMORY_BUCKETS = ExponentialBuckets(first_bucket_size=1e7, ratio=1.05, max_value=1e12)
"""Bytes: 10 MB first bucket, 5% growth, up to 1 TB (VPA)."""


@dataclass
class DecayingHistogram:
    """Sample weights grow by 2**(t/half_life), so a sample one half-life older counts half.

    Weights are relative to ``reference`` (Unix seconds, a multiple of the half-life); the
    reference moves forward before weights overflow, scaling every weight by an exact power
    of two.
    """

    buckets: ExponentialBuckets
    half_life_seconds: float = HALF_LIFE_SECONDS
    reference: float | None = None
    weights: dict[int, float] = field(default_factory=dict)

    @property
    def total_weight(self) -> float:
        """Sum of all (decayed) weights."""
        return sum(self.weights.values())

    def is_empty(self) -> bool:
        """True before any sample with a positive weight."""
        return not any(w > 0 for w in self.weights.values())

    def _decay_factor(self, timestamp: float) -> float:
        if self.reference is None:
            self.reference = self._round_reference(timestamp)
        elif timestamp > self.reference + self.half_life_seconds * MAX_DECAY_EXPONENT:
            self.shift_reference(timestamp)
        assert self.reference is not None
        return math.exp2((timestamp - self.reference) / self.half_life_seconds)

    def _round_reference(self, timestamp: float) -> float:
        return round(timestamp / self.half_life_seconds) * self.half_life_seconds

    def shift_reference(self, timestamp: float) -> None:
        """Move the reference near ``timestamp``; weights scale by an exact power of two."""
        new_reference = self._round_reference(timestamp)
        if self.reference is None:
            self.reference = new_reference
            return
        exponent = round((self.reference - new_reference) / self.half_life_seconds)
        if exponent:
            factor = math.exp2(exponent)
            self.weights = {b: w * factor for b, w in self.weights.items() if w * factor > 0}
        self.reference = new_reference

    def add_sample(self, value: float, weight: float, timestamp: float) -> None:
        """Count ``value`` with ``weight`` (e.g. seconds it lasted) at Unix time ``timestamp``."""
        if weight <= 0 or math.isnan(value):
            return
        bucket = self.buckets.find_bucket(max(value, 0.0))
        self.weights[bucket] = self.weights.get(bucket, 0.0) + weight * self._decay_factor(
            timestamp
        )

    def merge(self, other: DecayingHistogram) -> None:
        """Add another histogram's weights (same buckets and half-life)."""
        if other.reference is None or other.is_empty():
            return
        factor = 1.0
        if self.reference is None:
            self.reference = other.reference
        else:
            factor = math.exp2((other.reference - self.reference) / self.half_life_seconds)
        for bucket, weight in other.weights.items():
            self.weights[bucket] = self.weights.get(bucket, 0.0) + weight * factor

    def percentile(self, fraction: float) -> float:
        """The upper bound of the bucket holding the given fraction of the weight (VPA).

        Returning the bucket's end rather than its start errs on the side of a request
        that is big enough. 0.0 when empty.
        """
        total = self.total_weight
        if total <= 0:
            return 0.0
        threshold = min(max(fraction, 0.0), 1.0) * total
        partial = 0.0
        nonzero = sorted(b for b, w in self.weights.items() if w > 0)
        chosen = nonzero[-1]
        for bucket in nonzero:
            partial += self.weights[bucket]
            if partial >= threshold * (1 - 1e-12):
                chosen = bucket
                break
        if chosen < self.buckets.num_buckets - 1:
            return self.buckets.bucket_start(chosen + 1)
        return self.buckets.bucket_start(chosen)

    def to_checkpoint(self) -> dict[str, Any]:
        """A sparse, compact dict: reference, total weight, buckets scaled to 0..10000.

        Buckets whose scaled weight rounds to 0 are dropped, as VPA does.
        """
        positive = {b: w for b, w in self.weights.items() if w > 0}
        if not positive or self.reference is None:
            return {"ref": int(self.reference or 0), "total": 0, "b": {}}
        heaviest = max(positive.values())
        scale = MAX_CHECKPOINT_WEIGHT / heaviest
        scaled = {b: round(w * scale) for b, w in sorted(positive.items())}
        kept = {str(b): s for b, s in scaled.items() if s > 0}
        total = float(f"{sum(positive.values()):.{_TOTAL_WEIGHT_DIGITS}g}")
        return {"ref": int(self.reference), "total": total, "b": kept}

    @classmethod
    def from_checkpoint(
        cls,
        data: dict[str, Any],
        buckets: ExponentialBuckets,
        half_life_seconds: float = HALF_LIFE_SECONDS,
    ) -> DecayingHistogram:
        """Restore a histogram; the total weight is shared out in the stored proportions."""
        hist = cls(buckets=buckets, half_life_seconds=half_life_seconds)
        raw = data.get("b") or {}
        scaled = {int(b): int(s) for b, s in raw.items() if int(s) > 0}
        total = float(data.get("total") or 0)
        hist.reference = float(data["ref"]) if data.get("ref") is not None else None
        if not scaled or total <= 0:
            return hist
        last = buckets.num_buckets - 1
        ratio = total / sum(scaled.values())
        for bucket, s in scaled.items():
            b = min(max(bucket, 0), last)
            hist.weights[b] = hist.weights.get(b, 0.0) + s * ratio
        return hist
