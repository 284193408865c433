"""Figures people would rather look at than read, and one self-contained HTML page.

- spend over time: stacked bars of each period's cost by namespace (the operator keeps per
  period totals, the ledger, not a finer time series), unallocated idle in grey;
- budget burn: per CostPolicy, spent so far and the forecast to the period's end against
  the budget line and its alert thresholds;
- requested vs used: CPU core-hours and memory GiB-hours of the most expensive workloads.

Figures are drawn on Agg canvases (no pyplot state, no display); the HTML page inlines
them as base64 PNG data URIs, so it opens anywhere without other files or the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import matplotlib.dates as mdates
from matplotlib.figure import Figure

from kopeck.reports.aggregate import (
    IDLE_KEY,
    Burn,
    GroupBy,
    PeriodSpend,
    RequestUse,
    Row,
    Window,
    totals,
)
from kopeck.reports.records import COMPONENTS
from kopeck.reports.tables import fmt_money, fmt_percent, money_places

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)
IDLE_COLOR = "#9e9e9e"
REQUESTED_COLOR = "#aec7e8"
USED_COLOR = "#1f4e9c"
BUDGET_COLOR = "#d62728"
SPENT_COLOR = "#1f77b4"
FORECAST_COLOR = "#ff7f0e"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def key_colors(keys: Sequence[str]) -> dict[str, str]:
    """A stable color per namespace (in the order given), grey for idle."""
    colors: dict[str, str] = {}
    i = 0
    for k in keys:
        if k in colors:
            continue
        if k == IDLE_KEY:
            colors[k] = IDLE_COLOR
        else:
            colors[k] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def main_currency(points: Sequence[PeriodSpend]) -> str | None:
    """The currency holding the most money: one chart cannot add currencies together."""
    by: dict[str, Decimal] = {}
    for p in points:
        by[p.currency] = by.get(p.currency, Decimal(0)) + abs(p.total)
    return max(sorted(by), key=lambda c: by[c]) if by else None


def legend_label(key: str) -> str:
    """matplotlib hides labels starting with "_", so __idle__ gets a readable name."""
    return "idle (unallocated nodes)" if key == IDLE_KEY else key


def spend_figure(points: Sequence[PeriodSpend]) -> Figure:
    """Stacked bars: one bar per period, one segment per namespace; one panel per period
    kind (Monthly, Weekly, Daily), since a day's bar next to a month's says little."""
    currency = main_currency(points)
    points = [p for p in points if p.currency == currency]
    kinds = [k for k in ("Monthly", "Weekly", "Daily") if any(p.kind == k for p in points)]
    keys = sorted({p.key for p in points}, key=lambda k: (k == IDLE_KEY, k))
    colors = key_colors(keys)
    widest = max(len({p.period for p in points if p.kind == k}) for k in kinds)
    fig = Figure(figsize=(max(6.0, 1.1 * widest + 3.5), 0.4 + 3.8 * len(kinds)), dpi=100)
    for n, kind in enumerate(kinds):
        ax = fig.add_subplot(len(kinds), 1, n + 1)
        mine = [p for p in points if p.kind == kind]
        periods = list(dict.fromkeys(p.period for p in mine))
        value = {(p.period, p.key): float(p.total) for p in mine}
        bottom = [0.0] * len(periods)
        for key in keys:
            heights = [value.get((period, key), 0.0) for period in periods]
            if not any(heights):
                continue
            ax.bar(periods, heights, bottom=bottom, color=colors[key], label=legend_label(key),
                   edgecolor="white", linewidth=0.6)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for x, top in enumerate(bottom):
            ax.annotate(f"{top:,.2f}", (x, top), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_title(f"Spend by namespace, {kind.lower()} periods")
        ax.set_ylabel(f"cost ({currency})")
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _m(value: Decimal) -> str:
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _days(t: dt.datetime) -> float:
    """matplotlib's date number: days since its default epoch, 1970-01-01 UTC."""
    return (t - EPOCH).total_seconds() / 86400


def burn_figure(burns: Sequence[Burn]) -> Figure:
    """One panel per budget: spent (solid) and forecast (dashed) against the budget line."""
    n = len(burns)
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(7.0 * cols, 3.6 * rows), dpi=100)
    for i, b in enumerate(burns):
        ax = fig.add_subplot(rows, cols, i + 1)
        start, as_of, end = (_days(t) for t in (b.start, b.as_of, b.end))
        ax.axhline(float(b.budget), color=BUDGET_COLOR, linewidth=2, label=f"budget {_m(b.budget)}")
        for t in b.thresholds:
            if t < 100:
                ax.axhline(float(b.budget) * t / 100, color=BUDGET_COLOR, linewidth=0.8,
                           linestyle=":", alpha=0.6)
                ax.annotate(f"{t}%", (end, float(b.budget) * t / 100), fontsize=7,
                            color=BUDGET_COLOR, va="bottom", ha="right")
        ax.plot([start, as_of], [0.0, float(b.spent)], color=SPENT_COLOR, linewidth=2.5,
                label=f"spent {_m(b.spent)}")
        ax.fill_between([start, as_of], [0.0, float(b.spent)], color=SPENT_COLOR, alpha=0.15)
        ax.plot([as_of, end], [float(b.spent), float(b.forecast)], color=FORECAST_COLOR,
                linewidth=2, linestyle="--", label=f"forecast {_m(b.forecast)}")
        ax.plot([as_of], [float(b.spent)], "o", color=SPENT_COLOR)
        pct = float(b.spent / b.budget * 100) if b.budget else 0.0
        ax.set_title(f"{b.policy}: {b.period}, {pct:.0f}% of budget spent", fontsize=10)
        ax.set_ylabel(f"cost ({b.currency})")
        ax.set_xlim(start, end)
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(
            mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        )
        ax.set_ylim(0, max(float(b.budget), float(b.forecast), float(b.spent)) * 1.15)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def request_figure(items: Sequence[RequestUse]) -> Figure:
    """Paired horizontal bars per workload: requested (light) and used (dark)."""
    labels = [i.key for i in items]
    fig = Figure(figsize=(11.0, 1.2 + 0.45 * max(1, len(items))), dpi=100)
    panels = (
        ("CPU (core-hours)", [i.cpu_requested_core_hours for i in items],
         [i.cpu_used_core_hours for i in items]),
        ("Memory (GiB-hours)", [i.memory_requested_gib_hours for i in items],
         [i.memory_used_gib_hours for i in items]),
    )
    ys = list(range(len(items)))
    for n, (title, req, used) in enumerate(panels):
        ax = fig.add_subplot(1, 2, n + 1)
        ax.barh([y - 0.2 for y in ys], req, height=0.38, color=REQUESTED_COLOR, label="requested")
        ax.barh([y + 0.2 for y in ys], used, height=0.38, color=USED_COLOR, label="used")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels if n == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if n == 1:
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Requested vs used, most expensive workloads")
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass(frozen=True)
class Figures:
    """Rendered figures by file name, in the order the page shows them."""

    images: dict[str, bytes]
    captions: dict[str, str]


def render(
    spend: Sequence[PeriodSpend], burns: Sequence[Burn], requests: Sequence[RequestUse]
) -> Figures:
    """Every figure there is data for, as PNG bytes."""
    images: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    if spend:
        images["spend_by_namespace.png"] = png(spend_figure(spend))
        captions["spend_by_namespace.png"] = "Spend by namespace, per billing period"
    if burns:
        images["budget_burn.png"] = png(burn_figure(burns))
        captions["budget_burn.png"] = "Budget burn: spent and forecast against each budget"
    if requests:
        images["requested_vs_used.png"] = png(request_figure(requests))
        captions["requested_vs_used.png"] = "Requested vs used CPU and memory per workload"
    return Figures(images, captions)


def _table_html(rows: Sequence[Row], by: GroupBy, window: Window) -> str:
    places = money_places(rows)
    head = [*by.columns, "CURRENCY", *(c.upper() for c in COMPONENTS),
            "MONTHLY RATE" if window == "month" else "TOTAL", "EFFICIENCY"]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in [*rows, *totals(rows)]:
        key = [*r.key, *([""] * len(by.columns))][: len(by.columns)]
        cells = [*(f"<td>{html.escape(k)}</td>" for k in key),
                 f"<td>{html.escape(r.currency)}</td>",
                 *(f'<td class="n">{fmt_money(r.cost[c], places)}</td>' for c in COMPONENTS),
                 f'<td class="n">{fmt_money(r.total, places)}</td>',
                 f'<td class="n">{fmt_percent(r.efficiency)}</td>']
        cls = ' class="total"' if r.key == ("TOTAL",) else ""
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem}th{background:#f3f3f3;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.total td{font-weight:600}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}.meta{color:#666;font-size:.85rem}
"""


def html_page(
    figures: Figures,
    rows: Sequence[Row],
    by: GroupBy,
    window: Window,
    heading: str,
    generated: dt.datetime,
) -> str:
    """One HTML file with the table and every figure inlined as a data URI."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>kopeck cost report</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>kopeck cost report</h1>",
        f'<p class="meta">{html.escape(heading)} &middot; generated '
        f"{generated.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%SZ')}</p>",
        f"<h2>Cost by {html.escape(by.kind if by.kind != 'label' else 'label ' + by.label)}</h2>",
        _table_html(rows, by, window),
    ]
    for name, data in figures.images.items():
        caption = html.escape(figures.captions.get(name, name))
        b64 = base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{caption}</h2>",
                  f'<figure><img alt="{caption}" src="data:image/png;base64,{b64}">'
                  f"<figcaption>{html.escape(name)}</figcaption></figure>"]
    if not figures.images:
        parts.append("<p>No figures: there is no data to draw.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
