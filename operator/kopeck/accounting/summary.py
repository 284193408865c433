"""Human-readable figures for kubectl's printer columns; money formatting for status.

Status money is written as plain decimal strings at micro-unit precision: Decimal's own
str() would switch to exponent notation for small amounts, which the CRD pattern refuses.
"""

from __future__ import annotations

from decimal import Decimal

MICRO = Decimal("0.000001")
CENT = Decimal("0.01")


def micro(value: Decimal) -> Decimal:
    """Money rounded to micro-units: its str() is always plain digits."""
    return value.quantize(MICRO)


def money_text(value: Decimal, currency: str) -> str:
    """12.34 USD; amounts under one unit keep four significant decimals (0.0042 USD)."""
    if abs(value) >= 1 or value == 0:
        return f"{value.quantize(CENT):f} {currency}"
    return f"{value.quantize(MICRO).normalize():f} {currency}"


def core_hours_text(core_seconds: float) -> str:
    """1.25 core-h."""
    return f"{core_seconds / 3600:.3g} core-h" if core_seconds else "0 core-h"


def gib_hours_text(byte_seconds: float) -> str:
    """3.10 GiB-h."""
    return f"{byte_seconds / 3600 / 2**30:.3g} GiB-h" if byte_seconds else "0 GiB-h"


def bytes_text(n: int) -> str:
    """512 MiB; binary units like kubectl."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def percent_text(fraction: float | None) -> str:
    """43%, or '-' when there is nothing to compare with."""
    return "-" if fraction is None else f"{fraction * 100:.0f}%"
