"""`kopeck export`: one CSV line per Allocation, or FinOps FOCUS rows per cost component."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from kopeck.reports.aggregate import select
from kopeck.reports.cmd import add_source_arguments, load
from kopeck.reports.csvout import records_csv
from kopeck.reports.focus import FocusContext, focus_csv, focus_rows
from kopeck.reports.records import ReportError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kopeck export`."""
    add_source_arguments(parser)
    parser.set_defaults(period="all")
    parser.add_argument("--format", choices=["csv", "focus"], default="focus",
                        help="csv: one line per Allocation; focus: FinOps FOCUS 1.0 rows "
                             "(default)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write here instead of standard output")
    parser.add_argument("--billing-account", default="kubernetes",
                        help="FOCUS BillingAccountId/Name, e.g. the cluster's name")


def run(args: argparse.Namespace) -> int:
    """Write the export; every period on record unless --period narrows it."""
    try:
        data = load(args)
        sel = select(data, args.period, args.namespace)
        if args.format == "focus":
            ctx = FocusContext(billing_account=args.billing_account)
            text = focus_csv(focus_rows(data, sel.records, ctx, dt.datetime.now(dt.UTC)))
        else:
            text = records_csv(sel.records)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
            lines = text.count("\n") - 1
            print(f"wrote {args.output} ({lines} rows)", file=sys.stderr)
    except ReportError as exc:
        print(f"kopeck export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kopeck export: -o {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
