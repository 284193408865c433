"""`kopeck cluster build | up | down | env | status`: the local control plane from a shell.

Progress goes to stderr and only ``export`` lines to stdout, so that
``eval "$(kopeck cluster up)"`` leaves the shell pointing at the new cluster.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from kopeck.localcluster.build import BuildError, Progress, ensure_binaries
from kopeck.localcluster.cluster import ClusterError, LocalCluster, stop_directory
from kopeck.localcluster.versions import ETCD_VERSION, KUBERNETES_VERSION, cache_root


def default_dir() -> Path:
    """$KOPECK_CLUSTER_DIR, else <cache>/cluster."""
    env = os.environ.get("KOPECK_CLUSTER_DIR")
    return Path(env) if env else cache_root() / "cluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of `kopeck cluster`."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help=f"build etcd {ETCD_VERSION} and Kubernetes {KUBERNETES_VERSION} into the cache",
    )
    build.add_argument("--quiet", action="store_true", help="no progress output")
    up = sub.add_parser("up", help="start etcd, apiserver, controller-manager, scheduler")
    down = sub.add_parser("down", help="stop the cluster started in --dir")
    env = sub.add_parser("env", help="print export lines for KUBECONFIG and PATH")
    status = sub.add_parser("status", help="show the recorded processes and whether they run")
    for p in (up, down, env, status):
        p.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="cluster state directory (default: $KOPECK_CLUSTER_DIR or <cache>/cluster)",
        )
    up.add_argument("--port", type=int, default=0, help="apiserver port (default: a free one)")
    up.add_argument(
        "--bind-address",
        default="127.0.0.1",
        help="address the apiserver listens on (default 127.0.0.1)",
    )
    up.add_argument(
        "--no-build", action="store_true", help="fail instead of building missing binaries"
    )
    up.add_argument(
        "--minimal", action="store_true", help="etcd and kube-apiserver only (no controllers)"
    )


def _exports(cluster: LocalCluster) -> str:
    env = cluster.env()
    return (
        f"export KUBECONFIG={shlex.quote(env['KUBECONFIG'])}\n"
        f'export PATH={shlex.quote(str(cluster.bins.kube_bin))}:"$PATH"\n'
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action; errors are printed plainly with exit status 1."""
    try:
        action: str = args.action
        if action == "build":
            progress = Progress(quiet=args.quiet)
            bins = ensure_binaries(progress=progress)
            missing = bins.missing()
            if not missing:
                _say(f"binaries ready: {bins.kube_bin} and {bins.etcd_bin}")
            return 0 if not missing else 1
        directory = (args.dir or default_dir()).resolve()
        if action == "up":
            return _up(args, directory)
        if action == "down":
            stopped = stop_directory(directory)
            _say(f"stopped {', '.join(stopped)}" if stopped else f"nothing runs in {directory}")
            return 0
        cluster = LocalCluster(directory)
        comps = cluster.attach_state()
        if action == "env":
            if comps is None:
                _say(f"no cluster in {directory}; start one with `kopeck cluster up`")
                return 1
            sys.stdout.write(_exports(cluster))
            return 0
        if comps is None:
            _say(f"no cluster in {directory}")
            return 1
        print(f"server {cluster.server}  kubeconfig {cluster.kubeconfig}")
        for comp in comps:
            print(f"  {comp.name:<24} pid {comp.pid:<8} {'running' if comp.alive() else 'STOPPED'}")
        return 0 if all(c.alive() for c in comps) else 1
    except (BuildError, ClusterError) as err:
        _say(f"kopeck cluster {args.action}: {err}")
        return 1


def _up(args: argparse.Namespace, directory: Path) -> int:
    t0 = time.monotonic()
    cluster = LocalCluster(
        directory,
        port=args.port,
        bind_address=args.bind_address,
        with_controller_manager=not args.minimal,
        with_scheduler=not args.minimal,
        log=lambda msg: _say(f"[{time.monotonic() - t0:6.1f}s] {msg}"),
    )
    if cluster.running():
        _say(f"a cluster already runs in {directory} at {cluster.server}")
        sys.stdout.write(_exports(cluster))
        return 0
    if cluster.bins.missing():
        if args.no_build:
            raise ClusterError(
                "binaries missing: "
                + ", ".join(p.name for p in cluster.bins.missing())
                + "; run `kopeck cluster build`"
            )
        ensure_binaries(progress=Progress())
    cluster.start()
    _say(f"logs in {directory / 'logs'}; stop with: kopeck cluster down --dir {directory}")
    sys.stdout.write(_exports(cluster))
    return 0
