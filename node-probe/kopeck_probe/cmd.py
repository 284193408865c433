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
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kopeck_probe.config import FLOW_LIMITS, SA_TOKEN, ProbeConfig

if TYPE_CHECKING:
    from kopeck_probe.ebpf_source import EbpfNetworkSource
    from kopeck_probe.flows.source import FlowSource
    from kopeck_probe.pods import PodDirectory
    from kopeck_probe.push import HttpsTransport
    from kopeck_probe.veth_source import VethNetworkSource

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
    n = parser.add_argument_group(
        "network",
        "Per-pod bytes: the kernel's totals (eBPF, else veth) and, with --flows-listen, the "
        "same traffic by class from a NetFlow/IPFIX exporter. Reports list both, each with "
        "its source: they measure the same bytes and are never added up.",
    )
    n.add_argument(
        "--network",
        choices=("ebpf", "veth", "off"),
        default="ebpf",
        help="pod byte counters: eBPF at the kubepods cgroup (falls back to veth, with one "
        "warning, when the kernel refuses BPF), host-side veth counters, or none",
    )
    n.add_argument(
        "--ebpf-cost-every",
        type=float,
        default=60.0,
        help="seconds between measurements of the eBPF program's own cost (0: never)",
    )
    n.add_argument(
        "--ebpf-cost-window",
        type=float,
        default=5.0,
        help="seconds each cost measurement keeps kernel BPF stats on",
    )
    n.add_argument(
        "--flows-listen",
        default="",
        metavar="HOST:PORT",
        help="NetFlow v9 / IPFIX collector address, e.g. 0.0.0.0:2055 (empty: no collector)",
    )
    n.add_argument(
        "--flows-allow",
        type=_csv,
        action="extend",
        default=None,
        metavar="CIDR,...",
        help="exporters accepted, ADDRESS|CIDR[@DOMAIN] (@DOMAIN: only that IPFIX observation "
        "domain / v9 source id; default: this node's addresses and loopback, any domain)",
    )
    for name, (low, high, what) in FLOW_LIMITS.items():
        n.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar="N",
            help=f"collector bound: {what}, {low}..{high} (sizes take Ki/Mi/Gi; "
            f"env KOPECK_{name.upper()}; default {ProbeConfig.model_fields[name].default})",
        )
    n.add_argument("--zone", default=None, help="this node's topology.kubernetes.io/zone")
    n.add_argument("--region", default=None, help="this node's topology.kubernetes.io/region")
    n.add_argument(
        "--pod-cidr", type=_csv, action="extend", default=[], metavar="CIDR,...",
        help="this node's pod CIDRs",
    )  # fmt: skip
    n.add_argument(
        "--node-cidr", type=_csv, action="extend", default=[], metavar="CIDR[=ZONE[/REGION]],...",
        help="ranges of nodes or their pods and where they are (default: this node's zone)",
    )  # fmt: skip
    n.add_argument(
        "--internal-cidr", type=_csv, action="extend", default=[], metavar="CIDR[=CLASS],...",
        help="ranges whose traffic has a fixed class (intraZone, crossZone, crossRegion, "
        "internet, unclassified; default intraZone), e.g. the service CIDR",
    )  # fmt: skip


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
        network=args.network,
        ebpf_cost_every_s=args.ebpf_cost_every,
        ebpf_cost_window_s=args.ebpf_cost_window,
        flows_listen=args.flows_listen,
        flows_allow=tuple(args.flows_allow) if args.flows_allow is not None else None,
        zone=args.zone or None,
        region=args.region or None,
        pod_cidrs=tuple(args.pod_cidr),
        node_cidrs=tuple(args.node_cidr),
        internal_cidrs=tuple(args.internal_cidr),
        **{k: getattr(args, k) for k in FLOW_LIMITS if getattr(args, k, None) is not None},
    )


def open_network(cfg: ProbeConfig) -> EbpfNetworkSource | VethNetworkSource | None:
    """The configured per-pod byte counters; eBPF refused by the kernel falls back to veth."""
    from kopeck_probe import ebpf_source
    from kopeck_probe.veth_source import VethNetworkSource

    if cfg.network == "off":
        return None
    if cfg.network == "ebpf":
        try:
            return ebpf_source.EbpfNetworkSource(cfg.cgroup_base, cfg.prefix)
        except OSError as exc:
            log.warning(
                "eBPF network counters unavailable (%s): using host-side veth counters instead "
                "(L2 bytes; pods without a veth are not counted); --network veth silences this",
                exc,
            )
    return VethNetworkSource(cfg.cgroup_base, cfg.prefix)


def open_flows(cfg: ProbeConfig, directory: PodDirectory) -> FlowSource | None:
    """The flow collector on --flows-listen, leasing pod IPs from the watch (and, when the
    watch is off, from the pods' own network namespaces)."""
    if not cfg.flows_listen:
        return None
    from kopeck_probe.flows.source import build_topology, node_addresses, open_flow_source
    from kopeck_probe.netns import PodNetns

    topology = build_topology(
        cfg.node_name,
        cfg.zone,
        cfg.region,
        cfg.pod_cidrs,
        cfg.node_cidrs,
        cfg.internal_cidrs,
        node_addresses(),
    )
    netns = None if cfg.watch_pods else PodNetns(cfg.cgroup_base, cfg.prefix)
    return open_flow_source(
        cfg.flows_listen, cfg.flows_allow, topology, directory.uid_by_ip, netns, settings=cfg
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
    from kopeck_probe.pods import PodDirectory
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
    try:
        network = open_network(cfg)
        flows = open_flows(cfg, directory)
    except OSError as exc:  # e.g. the flow port is taken
        log.error("kopeck probe: %s", exc)
        return 2
    try:
        return _run(cfg, transport, directory, network, flows, stop)
    finally:
        if flows is not None:
            flows.stop()
        if network is not None:
            network.close()


def _run(
    cfg: ProbeConfig,
    transport: HttpsTransport | None,
    directory: PodDirectory,
    network: EbpfNetworkSource | VethNetworkSource | None,
    flows: FlowSource | None,
    stop: threading.Event,
) -> int:
    from kopeck_probe.ebpf_source import EbpfNetworkSource
    from kopeck_probe.metrics import serve
    from kopeck_probe.network_health import NetworkHealth
    from kopeck_probe.pods import PodWatcher
    from kopeck_probe.probe import Probe

    probe = Probe(cfg, transport=transport, network=network, flows=flows, directory=directory)
    if cfg.metrics_port:
        serve(probe.metrics, cfg.metrics_port, cfg.metrics_addr, NetworkHealth(network, flows))
    if isinstance(network, EbpfNetworkSource) and cfg.ebpf_cost_every_s > 0:
        threading.Thread(
            target=network.sample_cost_forever,
            args=(stop, cfg.ebpf_cost_every_s, cfg.ebpf_cost_window_s),
            name="ebpf-cost",
            daemon=True,
        ).start()
    if cfg.watch_pods:
        watcher = PodWatcher(directory, cfg.node_name, cfg.kubeconfig)
        threading.Thread(target=watcher.run, args=(stop,), name="pod-watch", daemon=True).start()
    log.info(
        "probing node %s: cgroups under %s/%s, sample %.1fs, report %.1fs, network %s, flows %s",
        cfg.node_name,
        cfg.cgroup_base,
        cfg.prefix or "",
        cfg.sample_interval_s,
        cfg.report_interval_s,
        network.source if network else "off",
        cfg.flows_listen or "off",
    )
    probe.run(stop)
    return 0
