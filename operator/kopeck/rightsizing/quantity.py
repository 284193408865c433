"""Kubernetes quantities and durations, parsed exactly and written the way kubectl shows them.

Requests in specs and proposals are quantity strings ("250m", "1.5", "512Mi", "1G"); the
recommender works in Decimal cores and integer bytes, so every conversion goes through here.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<bin>[KMGTPE]i)|(?P<exp>[eE][+-]?[0-9]+)|(?P<dec>[numkMGTPE]))?$"
)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION_UNIT_SECONDS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
    "w": Decimal(604800),
}

MILLICORE = Decimal("0.001")
MI = 2**20
GI = 2**30


class QuantityError(ValueError):
    """A quantity or duration string that Kubernetes would not accept."""


def parse_quantity(text: str | int | float | Decimal) -> Decimal:
    """The exact value of a Kubernetes quantity; int/float inputs are YAML numbers."""
    if isinstance(text, bool):
        raise QuantityError(f"quantity {text!r} is a boolean, not a number")
    if isinstance(text, int | Decimal):
        return Decimal(text)
    if isinstance(text, float):
        return Decimal(repr(text))
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise QuantityError(
            f"quantity {text!r} is not valid: write e.g. '250m', '1.5', '512Mi' or '1G'"
        )
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise QuantityError(f"quantity {text!r} is not a number") from exc
    if match["bin"]:
        return number * _BINARY[match["bin"]]
    if match["exp"]:
        return number * Decimal(10) ** int(match["exp"][1:])
    return number * _DECIMAL[match["dec"] or ""]


def parse_cpu(text: str | int | float | Decimal) -> Decimal:
    """CPU cores of a quantity ("250m" -> 0.25)."""
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"CPU quantity {text!r} is negative")
    return value


def parse_memory(text: str | int | float | Decimal) -> int:
    """Bytes of a memory quantity, rounded up as Kubernetes does ("1.5Ki" -> 1536)."""
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"memory quantity {text!r} is negative")
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def format_cpu(cores: Decimal | float) -> str:
    """A CPU quantity rounded up to whole millicores: 0.25 -> "250m", 2 -> "2"."""
    millicores = int((Decimal(str(cores)) / MILLICORE).to_integral_value(rounding=ROUND_CEILING))
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"


def format_memory(num_bytes: int) -> str:
    """A memory quantity in the largest binary unit that keeps it exact: "512Mi", "2Gi"."""
    if num_bytes < 0:
        raise QuantityError(f"memory {num_bytes} bytes is negative")
    if num_bytes == 0:
        return "0"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if num_bytes % unit == 0:
            return f"{num_bytes // unit}{suffix}"
    return str(num_bytes)


def round_up_cpu(cores: Decimal) -> Decimal:
    """Cores rounded up to a whole millicore, the finest CPU request Kubernetes keeps."""
    return (cores / MILLICORE).to_integral_value(rounding=ROUND_CEILING) * MILLICORE


def round_up_memory(num_bytes: float | int | Decimal, unit: int = MI) -> int:
    """Bytes rounded up to a whole unit (MiB by default), so proposals read cleanly."""
    units = (Decimal(str(num_bytes)) / unit).to_integral_value(rounding=ROUND_CEILING)
    return int(units) * unit


def parse_duration(text: str) -> dt.timedelta:
    """A duration such as "168h", "7d" or "1h30m" (the API's Duration pattern)."""
    pos = 0
    total = Decimal(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match[1]) * _DURATION_UNIT_SECONDS[match[2]]
        pos = match.end()
    if pos != len(text) or not text:
        raise QuantityError(f"duration {text!r} is not valid: write e.g. '168h', '7d' or '90m'")
    return dt.timedelta(seconds=float(total))
