"""The `kopeck` command: one entry point, one sub-command per job.

Each sub-command lives in the module that does the job; this file only routes to it, so
that `kopeck probe` on a node never imports the operator's dependencies and vice versa.
`kubectl-kopeck` (the kubectl plugin: `kubectl kopeck ...`) routes the same way to the
reporting sub-commands and to kubectl cost's verbs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

# name -> (module, help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("kopeck.api.crds_cmd", "write or check crds/*.yaml from the pydantic models"),
    "cluster": ("kopeck.localcluster.cmd", "build and run a local etcd + kube-apiserver"),
    "kubelet": ("kopeck.localcluster.kubelet_cmd", "run this machine as a node of a local cluster"),
    "operator": ("kopeck.operator.cmd", "run the operator (reconcile, ingest, webhook)"),
    "probe": ("kopeck_probe.cmd", "run the node-probe on this node"),
    "demo": ("kopeck.demo", "run the whole product on this machine and show the figures"),
    "report": ("kopeck.reports.cmd", "cost tables by namespace, workload or label"),
    "export": ("kopeck.reports.export_cmd", "CSV or FinOps FOCUS export of Allocations"),
    "explain-bill": ("kopeck.reports.explain_cmd",
                     "a workload's Allocation line by line, recomputed from the policy's rates"),
}

KUBECTL_PLUGIN = "kubectl-kopeck"
"""The plugin's executable name: kubectl runs it for `kubectl kopeck ...`."""
KUBECTL_COMMANDS = ("report", "export", "explain-bill")
"""Sub-commands of `kubectl kopeck` that are the very `kopeck` sub-commands."""


def _add(sub: Any, name: str, help_text: str, add_arguments: Callable[..., None],
         run: Callable[..., int]) -> None:
    sp = sub.add_parser(name, help=help_text, description=help_text)
    add_arguments(sp)
    sp.set_defaults(_run=run)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command whose module is installed."""
    parser = argparse.ArgumentParser(prog="kopeck", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # not built yet in this version
            raise
        _add(sub, name, help_text, module.add_arguments, module.run)
    return parser


def build_kubectl_parser() -> argparse.ArgumentParser:
    """`kubectl kopeck`: report, export and explain-bill exactly as `kopeck` has them, plus
    kubectl cost's verbs (namespace, deployment, controller, label)."""
    from kopeck.reports import kubectl_cost

    parser = argparse.ArgumentParser(
        prog="kubectl kopeck",
        description="kopeck's cost reports as a kubectl plugin, in the manner of kubectl cost",
        epilog="examples: kubectl kopeck namespace --window month; kubectl kopeck deployment "
               "-n shop --historical -o csv; kubectl kopeck label -l team; kubectl kopeck "
               "report --by workload; kubectl kopeck explain-bill deployment/web -n shop",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in KUBECTL_COMMANDS:
        module_name, help_text = COMMANDS[name]
        module = importlib.import_module(module_name)
        _add(sub, name, help_text, module.add_arguments, module.run)
    for verb, (_, help_text) in kubectl_cost.VERBS.items():
        _add(sub, verb, help_text, kubectl_cost.arguments_for(verb), kubectl_cost.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen sub-command; its return value is the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args._run(args)
    return result


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """The `kubectl-kopeck` entry point (kubectl finds it on PATH for `kubectl kopeck`)."""
    args = build_kubectl_parser().parse_args(argv)
    result: int = args._run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
