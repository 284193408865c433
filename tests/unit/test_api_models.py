"""The API models' wire form: what the apiserver stores must validate against the CRDs."""

from __future__ import annotations

import re
from decimal import Decimal

from kopeck.api.allocation import Cost
from kopeck.api.common import MONEY_STRING_PATTERN


def test_money_is_written_in_plain_digits_that_the_crd_pattern_accepts() -> None:
    wire = Cost(total=Decimal("1E-7"), cpu=Decimal("12.50"), memory=Decimal("3E+2")).to_wire()
    assert wire["total"] == "0.0000001" and wire["cpu"] == "12.50" and wire["memory"] == "300"
    for key in ("cpu", "memory", "gpu", "network", "storage", "idle", "total"):
        assert re.fullmatch(MONEY_STRING_PATTERN, wire[key]), wire[key]
