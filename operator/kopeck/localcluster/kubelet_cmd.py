"""Run the mini-kubelet from a shell: ``python -m kopeck.localcluster.kubelet_cmd``.

Follows the sub-command convention (``add_arguments``/``run``) so that cli.py can route
``kopeck kubelet`` here; until then the module runs on its own. It prints the cgroup prefix
and driver the node-probe must be given, then serves until SIGINT/SIGTERM and cleans up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from kopeck.localcluster.kubelet import NodeSettings, default_node_name, run_forever
from kopeck.localcluster.kubelet_status import Backoff


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the mini-kubelet: where the cluster is and how the Node presents itself."""
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig of the cluster to join (default: $KUBECONFIG)",
    )
    parser.add_argument("--node-name", default=default_node_name(), help="Node name")
    parser.add_argument("--driver", choices=("systemd", "cgroupfs"), default="systemd")
    parser.add_argument("--cgroup-prefix", default=None, help="default: a unique one")
    parser.add_argument("--subnet", default="10.252.0.0/16", help="pod IPs come from here")
    parser.add_argument("--instance-type", default="kopeck-local")
    parser.add_argument("--zone", default="local-1a")
    parser.add_argument("--region", default="local-1")
    parser.add_argument("--cpu-factor", default=None, help="label cost.kopeck.io/cpu-factor")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="extra Node label"
    )
    parser.add_argument("--keep-node", action="store_true", help="leave the Node on exit")
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Join the cluster as a Node until interrupted; 2 when the options are unusable."""
    from kubernetes import config

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not args.kubeconfig:
        print("kopeck kubelet: no kubeconfig: pass --kubeconfig or set KUBECONFIG", file=sys.stderr)
        return 2
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"kopeck kubelet: --label {item!r}: write KEY=VALUE", file=sys.stderr)
            return 2
        labels[key] = value
    settings = NodeSettings(
        name=args.node_name,
        instance_type=args.instance_type,
        zone=args.zone,
        region=args.region,
        cpu_factor=args.cpu_factor,
        labels=labels,
    )
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    run_forever(
        api,
        settings=settings,
        driver=args.driver,
        cgroup_prefix=args.cgroup_prefix,
        subnet=args.subnet,
        backoff=Backoff(),
        delete_node_on_stop=not args.keep_node,
        on_ready=lambda k: print(
            f"node {k.node_name} ready: cgroup prefix {k.cgroup_prefix}, driver {k.driver}",
            flush=True,
        ),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kopeck-kubelet", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
