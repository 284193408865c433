"""The `kopeck` command: one entry point, one sub-command per job.

Each sub-command lives in the module that does the job; this file only routes to it, so
that `kopeck probe` on a node never imports the operator's dependencies and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
}


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
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen sub-command; its return value is the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args._run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
