"""`kopeck report`: cost tables by namespace, workload or label, and `--plots DIR` figures."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path

from kopeck.reports.aggregate import (
    GroupBy,
    Row,
    Selection,
    Window,
    aggregate,
    budget_burn,
    parse_group_by,
    period_as_of,
    requested_vs_used,
    select,
    spend_over_time,
    totals,
)
from kopeck.reports.csvout import row_dict, rows_csv
from kopeck.reports.records import Dataset, ReportError, dataset
from kopeck.reports.source import load_cluster, load_file


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the Allocations come from (shared with `kopeck export`)."""
    parser.add_argument("--from-file", type=Path, metavar="FILE",
                        help="read a `kubectl get alloc,cpol[,ns] -A -o json` dump "
                             "('-' for stdin) instead of the cluster")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, "
                                             "~/.kube/config, then in-cluster)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--period", help="billing period name, e.g. 2026-11, 2026-W47, "
                                         "2026-11-23, or 'all' (default: the current ones)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="every namespace (the default; as kubectl's -A)")


def load(args: argparse.Namespace) -> Dataset:
    """The dataset from the file or the cluster the arguments name."""
    if args.from_file is not None:
        return dataset(load_file(args.from_file))
    return dataset(load_cluster(args.kubeconfig, args.context))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kopeck report`."""
    add_source_arguments(parser)
    parser.add_argument("--by", default="namespace",
                        help="namespace (default), workload (alias controller), deployment, "
                             "or label:<key>")
    parser.add_argument("--window", choices=["period", "month"], default="period",
                        help="period: totals of the window; month: rate per 730-hour month")
    parser.add_argument("-o", "--output", choices=["table", "csv", "json"], default="table",
                        help="table (default), csv or json; money as exact decimals in csv "
                             "and json")
    parser.add_argument("--show-all-resources", action="store_true",
                        help="table: show GPU and STORAGE columns even when they are zero")
    parser.add_argument("--no-idle", action="store_true",
                        help="leave out the __idle__ row (unallocated node cost)")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="also write PNG figures and a self-contained report.html to DIR")
    parser.add_argument("--top", type=int, default=12,
                        help="workloads in the requested-vs-used figure (default 12)")


def heading(sel: Selection, window: Window, now: dt.datetime) -> str:
    """What the figures cover: periods, how fresh they are, totals or monthly rate."""
    as_of = period_as_of(sel.records, now)
    phases = {r.period: r.phase for r in sel.records}
    parts = []
    for p in sel.periods:
        state = "closed" if phases.get(p) == "Closed" else (
            f"open, as of {as_of[p].strftime('%Y-%m-%d %H:%M')}Z")
        parts.append(f"{p} ({state})")
    shown = ", ".join(parts[-4:]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
    scope = f" in namespace {sel.namespace}" if sel.namespace else ""
    what = "monthly rate (730 h)" if window == "month" else "window totals"
    late = [r for r in sel.records if r.adjustment]
    if late:
        money = ", ".join(f"{sum((r.total for r in late if r.currency == c), Decimal(0))} {c}"
                          for c in sorted({r.currency for r in late}))
        what += (f"; includes late usage reported after its period was final "
                 f"({len(late)} adjustment record{'s' if len(late) != 1 else ''}, {money})")
    return f"period {shown}{scope}: {what}"


def render(rows: list[Row], by: GroupBy, window: Window, output: str, head: str,
           all_columns: bool = False) -> str:
    """The report in the chosen output format."""
    if output == "csv":
        return rows_csv(rows, by)
    if output == "json":
        return json.dumps({
            "heading": head, "by": by.kind if by.kind != "label" else f"label:{by.label}",
            "window": window, "rows": [row_dict(r, by) for r in rows],
            "totals": [row_dict(t, GroupBy("namespace")) for t in totals(rows)],
        }, indent=2) + "\n"
    from kopeck.reports.tables import table

    return table(rows, by, window, head, all_columns)


def write_plots(
    directory: Path, data: Dataset, sel: Selection, rows: list[Row], by: GroupBy,
    window: Window, head: str, now: dt.datetime, top: int,
) -> list[Path]:
    """PNG files and report.html in `directory`; returns the paths written."""
    from kopeck.reports import plots

    figures = plots.render(
        spend_over_time(data, sel.namespace), budget_burn(data, now),
        requested_vs_used(sel, top),
    )
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in figures.images.items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    page = directory / "report.html"
    page.write_text(plots.html_page(figures, rows, by, window, head, now))
    written.append(page)
    return written


def run(args: argparse.Namespace) -> int:
    """Print the report; with --plots, write the figures too."""
    now = dt.datetime.now(dt.UTC)
    try:
        by = parse_group_by(args.by)
        data = load(args)
        sel = select(data, args.period, args.namespace)
        window: Window = args.window
        rows = aggregate(data, sel, by, window, now, idle=not args.no_idle)
        head = heading(sel, window, now)
        sys.stdout.write(render(rows, by, window, args.output, head,
                                getattr(args, "show_all_resources", False)))
        if args.plots is not None:
            for path in write_plots(args.plots, data, sel, rows, by, window, head, now,
                                    args.top):
                print(f"wrote {path}", file=sys.stderr)
    except ReportError as exc:
        print(f"kopeck report: {exc}", file=sys.stderr)
        return 1
    return 0
