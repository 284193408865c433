"""`explain-bill <kind>/<name> -n <ns>`: from a workload to its money, line by line.

Reads the workload's Allocation(s), the CostPolicy that priced them, the Nodes their
reports came from and the workload's pods now; `explain` recomputes every line. Exit code 0
when the bill adds up, 1 when a line or the total does not match the status, 2 when there
is nothing to explain (bad target, no such Allocation, no cluster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kopeck.reports.explain import (
    ExplainError,
    bill_dict,
    bill_inputs,
    explain,
    parse_target,
    render_text,
)
from kopeck.reports.records import ReportError
from kopeck.reports.source import context_namespace, load_file, load_for_explain

EXIT_MISMATCH = 1
EXIT_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `explain-bill`."""
    parser.add_argument("target", metavar="KIND/NAME",
                        help="the workload, as kubectl names it: deployment/web, "
                             "statefulset/db, daemonset/x, job/x, cronjob/x, pod/x, "
                             "namespace/shop (the namespace total) or node/n1 (unallocated "
                             "node cost, in the operator's namespace)")
    parser.add_argument("-n", "--namespace",
                        help="namespace of the workload (default: the kubeconfig context's "
                             "namespace, else 'default'; for namespace/NAME: NAME)")
    parser.add_argument("--period",
                        help="billing period name, e.g. 2026-11, 2026-W47, 2026-11-23, or "
                             "'all' (default: the newest period the workload has)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, "
                                             "~/.kube/config, then in-cluster)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--from-file", type=Path, metavar="FILE",
                        help="read a `kubectl get alloc,cpol,nodes,pods,rs,jobs -A -o json` "
                             "dump ('-' for stdin) instead of the cluster")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="text (default) or json (money as exact decimal strings)")


def run(args: argparse.Namespace) -> int:
    """Print the explanation; non-zero when the status does not add up (see module doc)."""
    try:
        kind, name = parse_target(args.target)
        namespace = args.namespace
        if kind == "Namespace" and not namespace:
            namespace = name
        if args.from_file is not None:
            items = load_file(args.from_file)
            namespace = namespace or "default"
        else:
            namespace = namespace or context_namespace(args.kubeconfig, args.context) or "default"
            items = load_for_explain(args.kubeconfig, args.context, namespace,
                                     with_pods=kind not in ("Namespace", "Node"))
        inputs = bill_inputs(items, kind, name, namespace, args.period,
                             with_pods=kind not in ("Namespace", "Node"))
    except (ExplainError, ReportError) as exc:
        print(f"kopeck explain-bill: {exc}", file=sys.stderr)
        return EXIT_ERROR
    bills = [explain(b) for b in inputs]
    if args.output == "json":
        sys.stdout.write(json.dumps({"ok": all(b.ok for b in bills),
                                     "allocations": [bill_dict(b) for b in bills]},
                                    indent=2) + "\n")
    else:
        sys.stdout.write(render_text(bills))
    bad = [p for b in bills for p in b.problems]
    for p in bad:
        print(f"kopeck explain-bill: {p}", file=sys.stderr)
    return EXIT_MISMATCH if bad else 0
