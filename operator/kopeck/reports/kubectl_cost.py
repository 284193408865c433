"""`kubectl kopeck namespace|deployment|controller|label`: `kubectl cost`'s verbs and flags.

Each verb is `kopeck report` with the grouping preset and kubectl cost's flag meanings:
the monthly rate by default and window totals with `--historical`; `--window` names the
time range (today, yesterday, week, lastweek, month, lastmonth, current, all, or a period
name such as 2026-11). `translate` turns the flags into `kopeck report` arguments, and the
verb prints exactly what `kopeck report` prints for them (`--print-report-args` shows them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Callable

from kopeck.accounting.periods import PeriodKind, period_at
from kopeck.reports import cmd as report_cmd
from kopeck.reports.records import ReportError

WINDOWS: dict[str, tuple[PeriodKind, int]] = {
    "today": ("Daily", 0), "1d": ("Daily", 0), "yesterday": ("Daily", -1),
    "week": ("Weekly", 0), "lastweek": ("Weekly", -1),
    "month": ("Monthly", 0), "lastmonth": ("Monthly", -1),
}
"""kubectl cost's named windows -> (period kind, offset in periods from now)."""

VERBS: dict[str, tuple[str, str]] = {
    "namespace": ("namespace", "cost by namespace (kubectl cost namespace)"),
    "deployment": ("deployment", "cost by Deployment; other workloads as __unallocated__ "
                                 "(kubectl cost deployment)"),
    "controller": ("workload", "cost by controller: every workload kind "
                               "(kubectl cost controller)"),
    "label": ("label", "cost by the value of one label (kubectl cost label -l KEY)"),
}


def window_period(window: str, now: dt.datetime) -> str | None:
    """The `--period` value for a kubectl-cost window; None means the current periods."""
    if window in ("", "current"):
        return None
    if window == "all":
        return "all"
    named = WINDOWS.get(window)
    if named is None:
        return window  # a period name; `select` says which ones exist when it is unknown
    kind, offset = named
    p = period_at(kind, now)
    if offset:
        p = period_at(kind, p.start - dt.timedelta(seconds=1))
    return p.name


def translate(verb: str, args: argparse.Namespace, now: dt.datetime) -> list[str]:
    """`kopeck report` arguments equivalent to this verb and its flags."""
    by = VERBS[verb][0]
    if by == "label":
        by = f"label:{args.label}"
    out = ["--by", by, "--window", "period" if args.historical else "month",
           "-o", args.output]
    period = window_period(args.window, now)
    if period is not None:
        out += ["--period", period]
    if args.namespace and not args.all_namespaces:
        out += ["-n", args.namespace]
    for flag, value in (("--kubeconfig", args.kubeconfig), ("--context", args.context)):
        if value:
            out += [flag, value]
    if args.from_file is not None:
        out += ["--from-file", str(args.from_file)]
    if args.no_idle:
        out.append("--no-idle")
    if args.show_all_resources:
        out.append("--show-all-resources")
    return out


def arguments_for(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    """add_arguments for one verb."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--window", default="current",
                            help="time range: today, yesterday, week, lastweek, month, "
                                 "lastmonth, current (default: the periods in progress), "
                                 "all, or a period name (2026-11, 2026-W47, 2026-11-23)")
        parser.add_argument("--historical", action="store_true",
                            help="totals of the window instead of the projected monthly rate "
                                 "(730 h) that is the default, as in kubectl cost")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("-n", "--namespace", help="only this namespace")
        scope.add_argument("-A", "--all-namespaces", action="store_true",
                           help="every namespace (the default)")
        parser.add_argument("-o", "--output", choices=["table", "csv", "json"],
                            default="table", help="table (default), csv or json")
        parser.add_argument("--show-all-resources", action="store_true",
                            help="table: GPU and STORAGE columns even when zero (CPU, "
                                 "memory, network and idle are always shown)")
        parser.add_argument("--no-idle", action="store_true",
                            help="leave out the __idle__ row (unallocated node cost)")
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, "
                                                 "~/.kube/config, then in-cluster)")
        parser.add_argument("--context", help="kubeconfig context")
        parser.add_argument("--from-file", metavar="FILE",
                            help="read a `kubectl get alloc,cpol,ns -A -o json` dump instead")
        parser.add_argument("--print-report-args", action="store_true",
                            help="print the equivalent `kopeck report` arguments and exit")
        if verb == "label":
            parser.add_argument("-l", "--label", required=True, metavar="KEY",
                                help="the label whose values are the rows, e.g. team or app "
                                     "(read from the Allocation, then its namespace)")
        parser.set_defaults(_verb=verb)

    return add_arguments


def run(args: argparse.Namespace) -> int:
    """Run `kopeck report` with the translated arguments."""
    if re.fullmatch(r"[0-9]+[smhdw]", args.window) and args.window not in WINDOWS:
        print(f"kubectl kopeck {args._verb}: --window {args.window}: kopeck bills whole "
              "periods, not rolling durations; use today, yesterday, week, lastweek, month, "
              "lastmonth, all, or a period name such as 2026-11", file=sys.stderr)
        return 1
    argv = translate(args._verb, args, dt.datetime.now(dt.UTC))
    if args.print_report_args:
        print(" ".join(["kopeck", "report", *argv]))
        return 0
    parser = argparse.ArgumentParser(prog="kopeck report")
    report_cmd.add_arguments(parser)
    try:
        parsed = parser.parse_args(argv)
    except SystemExit as exc:  # cannot happen for translated flags; keep the code if it does
        raise ReportError(f"internal: report arguments {argv} refused") from exc
    result: int = report_cmd.run(parsed)
    if result:
        print(f"(as `kopeck report {' '.join(argv)}`)", file=sys.stderr)
    return result
