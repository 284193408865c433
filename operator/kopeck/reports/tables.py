"""Aligned text tables in the style of `kubectl cost`: boxed, numbers right-aligned, a total.

Columns for GPU and storage appear only when some row has such cost (or when asked), and a CURRENCY column
only when rows of more than one currency are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from kopeck.reports.aggregate import GroupBy, Row, Window, totals
from kopeck.reports.records import COMPONENTS, ZERO


def money_places(rows: Sequence[Row]) -> int:
    """Decimal places that keep the largest figure readable and the small ones visible."""
    biggest = max((abs(r.total) for r in rows), default=ZERO)
    return 2 if biggest >= 10 else 4 if biggest >= Decimal("0.01") else 6


def fmt_money(value: Decimal, places: int) -> str:
    """Fixed decimals, no exponent."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def fmt_percent(value: float | None) -> str:
    """43.2%, or '-' when nothing was requested."""
    return "-" if value is None else f"{value * 100:.1f}%"


def table(
    rows: Sequence[Row], by: GroupBy, window: Window, heading: str = "",
    all_columns: bool = False,
) -> str:
    """The report as text: a heading line, a boxed table, and one TOTAL line per currency.

    `all_columns` shows GPU and STORAGE even when no row has such cost."""
    shown = [c for c in COMPONENTS
             if all_columns or c in ("cpu", "memory", "network", "idle")
             or any(r.cost[c] for r in rows)]
    currencies = sorted({r.currency for r in rows})
    places = money_places(rows)
    money_head = "MONTHLY RATE" if window == "month" else "TOTAL"
    head = [*by.columns, *(["CURRENCY"] if len(currencies) > 1 else []),
            *(c.upper() for c in shown), money_head, "CPU EFF", "MEM EFF", "EFFICIENCY"]
    nkey = len(by.columns) + (1 if len(currencies) > 1 else 0)

    def cells(row: Row, key: tuple[str, ...]) -> list[str]:
        return [
            *key, *([row.currency] if len(currencies) > 1 else []),
            *(fmt_money(row.cost[c], places) for c in shown),
            fmt_money(row.total, places),
            fmt_percent(row.cpu_efficiency), fmt_percent(row.memory_efficiency),
            fmt_percent(row.efficiency),
        ]

    body = [cells(r, r.key) for r in rows]
    pad = ("",) * (len(by.columns) - 1)
    foot = [cells(t, ("TOTAL", *pad)) for t in totals(rows)]
    widths = [max(len(line[i]) for line in [head, *body, *foot]) for i in range(len(head))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        parts = [
            f" {v.ljust(w)} " if i < nkey else f" {v.rjust(w)} "
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "|" + "|".join(parts) + "|"

    out = [heading] if heading else []
    out += [rule, line(head), rule, *(line(b) for b in body), rule, *(line(f) for f in foot), rule]
    if len(currencies) == 1:
        out.append(f"money in {currencies[0]}")
    return "\n".join(out) + "\n"
