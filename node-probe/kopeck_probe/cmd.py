"""`kopeck probe`: run the node-probe on this node (the DaemonSet's entry point)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from kopeck_probe.config import SA_TOKEN, ProbeConfig

log = logging.getLogger("kopeck_probe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kopeck probe` (each maps to a ProbeConfig field)."""
    a = parser.add_argument
    a(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="this node's name (default: $NODE_NAME, else the host name)",
    )
    a("--cgroup-base", type=Path, default=Path("/sys/fs/cgroup"), help="cgroup mount base")
    a("--prefix", default="", help="parent of kubepods(.slice) under each hierarchy root")
    a("--sample-interval", type=float, default=1.0, help="seconds between cgroup reads")
    a("--report-interval", type=float, default=5.0, help="seconds between reports (>= 1)")
    a(
        "--ingest-url",
        default=os.environ.get("KOPECK_INGEST_URL"),
        help="operator ingest URL, e.g. https://kopeck-operator.kopeck.svc:8443/v1/reports",
    )
    a("--token-file", type=Path, default=SA_TOKEN, help="bearer token file (ServiceAccount token)")
    a("--ca-file", type=Path, default=None, help="CA bundle for the operator's certificate")
    a(
        "--wal",
        type=Path,
        default=Path("/var/lib/kopeck/probe.db"),
        help="write-ahead buffer (SQLite)",
    )
    a("--wal-max-reports", type=int, default=17_280, help="buffer bound; overflow drops oldest")
    a("--metrics-port", type=int, default=9102, help="port of /metrics (0: off)")
    a("--metrics-addr", default="0.0.0.0", help="address of /metrics")
    a("--no-watch", action="store_true", help="do not watch Pods (report by UID only)")
    a("--kubeconfig", default=None, help="kubeconfig for the Pod watch (default: in-cluster)")
    a("--log-level", default="INFO", help="logging level")


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    """Validate flags into a ProbeConfig (raises ValidationError with the field named)."""
    return ProbeConfig(
        node_name=args.node_name,
        cgroup_base=args.cgroup_base,
        prefix=args.prefix,
        sample_interval_s=args.sample_interval,
        report_interval_s=args.report_interval,
        ingest_url=args.ingest_url,
        token_path=args.token_file,
        ca_file=args.ca_file,
        wal_path=args.wal,
        wal_max_reports=args.wal_max_reports,
        metrics_port=args.metrics_port or None,
        metrics_addr=args.metrics_addr,
        watch_pods=not args.no_watch,
        kubeconfig=args.kubeconfig,
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; the last report is buffered (and pushed) before exit."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = config_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            log.error(
                "kopeck probe: %s: %s", ".".join(str(x) for x in err["loc"]) or "flags", err["msg"]
            )
        return 2
    from kopeck_probe.metrics import serve
    from kopeck_probe.pods import PodDirectory, PodWatcher
    from kopeck_probe.probe import Probe
    from kopeck_probe.push import HttpsTransport

    transport = None
    if cfg.ingest_url:
        try:
            transport = HttpsTransport(cfg.ingest_url, cfg.token_path, cfg.ca_file)
        except ValueError as exc:
            log.error("kopeck probe: %s", exc)
            return 2
    else:
        log.warning("no --ingest-url: reports are buffered in %s but not sent", cfg.wal_path)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("signal %d: stopping after the current cycle", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    directory = PodDirectory()
    probe = Probe(cfg, transport=transport, directory=directory)
    if cfg.metrics_port:
        serve(probe.metrics, cfg.metrics_port, cfg.metrics_addr)
    if cfg.watch_pods:
        watcher = PodWatcher(directory, cfg.node_name, cfg.kubeconfig)
        threading.Thread(target=watcher.run, args=(stop,), name="pod-watch", daemon=True).start()
    log.info(
        "probing node %s: cgroups under %s/%s, sample %.1fs, report %.1fs",
        cfg.node_name,
        cfg.cgroup_base,
        cfg.prefix or "",
        cfg.sample_interval_s,
        cfg.report_interval_s,
    )
    probe.run(stop)
    return 0
