"""Prometheus metrics of the operator and the plain-HTTP /healthz and /metrics endpoint.

Two sets of names. kopeck's own (`kopeck_*`): counters and gauges of reports, admissions,
budgets, anomalies, and the health of the ledger (last report per node, known sequence
gaps). And the OpenCost exporter's names (`node_total_hourly_cost`, `node_cpu_hourly_cost`,
`container_cpu_allocation`, `pod_pvc_allocation`, ...), with OpenCost's labels and meaning,
so that dashboards and alerts written for OpenCost work on kopeck unchanged
(docs/metrics.md has the table).

The OpenCost series are a snapshot of the last report of each node: its prices (from the
rates the fold used) and each container's allocation, max(request, usage). Only the
leading replica exports them, so a join `on(instance)` never sees two series per node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kopeck.accounting.prices import GIB, HOUR, REGION_LABEL, NodeFacts, Rates, rates_for_node
from kopeck.accounting.seqs import SeqSet
from kopeck.operator.workloads import pvc_bytes

if TYPE_CHECKING:
    from kopeck.api.report import PodUsage, ProbeReport
    from kopeck.operator.state import PodInfo

log = logging.getLogger("kopeck.metrics")
REGISTRY = CollectorRegistry()
REPORTS = Counter(
    "kopeck_reports_total", "Probe reports by outcome", ["result"], registry=REGISTRY
)
NODE_COST = Counter(
    "kopeck_node_cost", "Node cost folded from reports, and how much of it pods were charged"
    " for compute (the rest is idle): conservation is checked against Allocations",
    ["node", "currency", "part"], registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "kopeck_ingest_seconds", "Time from receiving a report to its acknowledgement",
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
ADMISSIONS = Counter(
    "kopeck_admissions_total", "Admission reviews by verdict", ["verdict"], registry=REGISTRY
)
ADMISSION_SECONDS = Histogram(
    "kopeck_admission_seconds", "Time to answer one AdmissionReview inside the operator",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ANOMALIES = Counter(
    "kopeck_spend_anomalies_total", "Spend-rate anomalies detected", ["scope"],
    registry=REGISTRY,
)
ANOMALOUS = Gauge(
    "kopeck_spend_anomalous", "1 while a namespace or workload spends anomalously",
    ["policy", "subject"], registry=REGISTRY,
)
SPENT = Gauge("kopeck_policy_spent", "Spend this period", ["policy", "currency"],
              registry=REGISTRY)
FORECAST = Gauge("kopeck_policy_forecast", "Forecast spend at period end",
                 ["policy", "currency"], registry=REGISTRY)
BUDGET = Gauge("kopeck_policy_budget", "Budget amount", ["policy", "currency"],
               registry=REGISTRY)
ACTIVE = Gauge("kopeck_operator_active", "1 when this replica leads", registry=REGISTRY)
DROPPED_REPORTS = Counter(
    "kopeck_ledger_dropped_reports",
    "Reports a node-probe declared dropped from its full buffer (they never arrive; settled, "
    "not counted in kopeck_ledger_seq_gaps) that no record holds",
    ["node"], registry=REGISTRY,
)
THRESHOLD_EVENTS = Counter(
    "kopeck_threshold_events",
    "Threshold crossings reported by node-probes (each also an Event on the pod's workload)",
    ["kind"], registry=REGISTRY,
)
TLS_HANDSHAKES = Gauge(
    "kopeck_webhook_tls_handshakes", "TLS handshakes the webhook server accepted (by kind)",
    ["kind"], registry=REGISTRY,
)

STALE_SECONDS = 900.0
"""A node's OpenCost series go once its probe has not reported for this long."""
PROVIDER_ID_LABEL = "provider_id"
ARCH_LABEL = "kubernetes.io/arch"
LEGACY_REGION_LABEL = "failure-domain.beta.kubernetes.io/region"
NODE_LABELS = ("instance", "node", "instance_type", "region", "provider_id", "arch")
"""OpenCost's label names of its node price series (pkg/costmodel/metrics.go)."""
CONTAINER_LABELS = ("namespace", "pod", "container", "instance", "node")
"""OpenCost's label names of its container allocation series."""
PVC_LABELS = ("namespace", "pod", "persistentvolumeclaim", "persistentvolume")
"""OpenCost's label names of pod_pvc_allocation."""


# ---- pure: what one report says in OpenCost's terms -----------------------------------


@dataclass(frozen=True)
class NodePrice:
    """OpenCost's node price series of one node: per core-hour, per GiB-hour, per GPU-hour."""

    node: str
    instance_type: str
    region: str
    provider_id: str
    arch: str
    cpu_per_core_hour: Decimal
    ram_per_gib_hour: Decimal
    gpu_per_gpu_hour: Decimal
    gpus: int
    total_per_hour: Decimal | None
    """The whole node per hour; None when neither a book price nor the capacity is known."""

    def labels(self) -> list[str]:
        """Values of NODE_LABELS (OpenCost sets instance to the node name)."""
        return [self.node, self.node, self.instance_type, self.region, self.provider_id,
                self.arch]


@dataclass(frozen=True)
class ContainerAllocation:
    """OpenCost's allocation of one container: max(request, usage) of cores, bytes, GPUs."""

    namespace: str
    pod: str
    container: str
    node: str
    cpu_cores: Decimal
    memory_bytes: Decimal
    gpus: Decimal

    def labels(self) -> list[str]:
        """Values of CONTAINER_LABELS."""
        return [self.namespace, self.pod, self.container, self.node, self.node]


def node_price(facts: NodeFacts, rates: Rates, provider_id: str = "") -> NodePrice:
    """The node's prices per hour as OpenCost exports them, from the rates kopeck priced the
    node's interval with (so `node_total_hourly_cost` x hours is the node's cost folded)."""
    region = facts.labels.get(REGION_LABEL) or facts.labels.get(LEGACY_REGION_LABEL, "")
    capacity_known = facts.cpu_cores > 0 or rates.node_second is not None
    total = rates.node_cost_per_second(facts) * HOUR if capacity_known else None
    return NodePrice(
        node=facts.name, instance_type=facts.instance_type or "", region=region,
        provider_id=provider_id, arch=facts.labels.get(ARCH_LABEL, ""),
        cpu_per_core_hour=rates.cpu_core_second * HOUR,
        ram_per_gib_hour=rates.memory_byte_second * HOUR * GIB,
        gpu_per_gpu_hour=rates.gpu_second * HOUR, gpus=facts.gpus, total_per_hour=total,
    )  # fmt: skip


def container_allocations(
    node: str, pods: Iterable[tuple[PodUsage, PodInfo | None]]
) -> list[ContainerAllocation]:
    """Each container's max(request, usage) over the report's interval, OpenCost's
    allocation: cores (core-seconds / seconds), working-set bytes, GPUs by request.

    kopeck knows a pod's GPUs, not a container's: they go to the pod's first container by
    name, so sums by pod, namespace and node are right. A report without per-container
    figures gives a one-container pod the pod's usage, others their requests alone."""
    out: list[ContainerAllocation] = []
    for pod, info in pods:
        namespace = info.namespace if info else pod.namespace
        name = info.name if info else pod.name
        if not namespace or not name:
            continue
        seconds = Decimal(repr(pod.seconds)) if pod.seconds > 0 else Decimal(0)
        used: dict[str, tuple[Decimal, Decimal]] = {
            c.name: (Decimal(repr(c.cpu_core_seconds)) / seconds if seconds else Decimal(0),
                     Decimal(c.memory_working_set_bytes))
            for c in pod.containers
        }  # fmt: skip
        requests = info.containers if info else {}
        names = sorted(set(used) | set(requests))
        if not pod.containers and len(names) == 1:
            used[names[0]] = (
                Decimal(repr(pod.cpu_core_seconds)) / seconds if seconds else Decimal(0),
                Decimal(pod.memory_working_set_bytes),
            )
        gpus = info.shape.gpus if info else Decimal(0)
        for i, cname in enumerate(names):
            req = requests.get(cname)
            cpu_used, mem_used = used.get(cname, (Decimal(0), Decimal(0)))
            cpu_req = req.cpu_cores if req and req.cpu_cores is not None else Decimal(0)
            mem_req = Decimal(req.memory_bytes) if req and req.memory_bytes is not None else (
                Decimal(0))
            out.append(ContainerAllocation(
                namespace, name, cname, node, max(cpu_req, cpu_used), max(mem_req, mem_used),
                gpus if i == 0 else Decimal(0),
            ))
    return out


@dataclass(frozen=True)
class PvcAllocation:
    """OpenCost's pod_pvc_allocation: a claim's bytes, shared evenly by the pods mounting it."""

    namespace: str
    pod: str
    claim: str
    volume: str
    bytes: Decimal

    def labels(self) -> list[str]:
        """Values of PVC_LABELS."""
        return [self.namespace, self.pod, self.claim, self.volume]


def pvc_allocations(
    pods: Iterable[PodInfo], claims: Mapping[tuple[str, str], tuple[str, Decimal]]
) -> list[PvcAllocation]:
    """Each running pod's share of each claim it mounts: the claim's size (bound capacity,
    else request) divided by the number of running pods mounting it, as OpenCost divides
    by timesClaimed. Claims not bound to a volume yet have no series (OpenCost skips them)."""
    running = [p for p in pods if p.deleted_at is None and p.phase == "Running" and p.claims]
    times: dict[tuple[str, str], int] = {}
    for pod in running:
        for claim in set(pod.claims):
            times[(pod.namespace, claim)] = times.get((pod.namespace, claim), 0) + 1
    out: list[PvcAllocation] = []
    for pod in running:
        for claim in sorted(set(pod.claims)):
            volume, size = claims.get((pod.namespace, claim), ("", Decimal(0)))
            if volume:
                out.append(PvcAllocation(pod.namespace, pod.name, claim, volume,
                                         size / times[(pod.namespace, claim)]))
    return out


def volume_prices(state: Any) -> dict[str, Decimal]:
    """Per GiB-hour price of each volume a running pod mounts: the storage rate of that pod's
    CostPolicy on its node (what kopeck charges the pod for the claim), as pv_hourly_cost."""
    prices: dict[str, Decimal] = {}
    for info in state.pods.values():
        if info.deleted_at is not None or info.phase != "Running" or not info.claims:
            continue
        policy = state.policy_for(info.namespace, info.workload.labels)
        if policy is None:
            continue
        facts = state.nodes.get(info.node or "") or NodeFacts(info.node or "")
        rate = rates_for_node(policy.spec.pricing, facts).storage_byte_second * HOUR * GIB
        for claim in info.claims:
            volume = OPENCOST.claims.get((info.namespace, claim), ("", Decimal(0)))[0]
            if volume:
                prices[volume] = rate
    return prices


def known_gaps(seqs: SeqSet) -> int:
    """Report sequence numbers missing between ones already folded: reports a probe has not
    delivered yet (a resend closes the gap; one past the replay horizon is lost for good).
    Seqs below the first one seen are not counted: an operator that just started never saw
    them."""
    gaps, prev = 0, seqs.floor if seqs.floor >= 0 else None
    for lo, hi in seqs.ranges:
        if prev is not None:
            gaps += lo - prev - 1
        prev = hi
    return gaps


def gaps_by_node(seen: Mapping[str, SeqSet]) -> dict[str, int]:
    """Known gaps summed over each node's boots (keys of State.seen are node/bootId)."""
    out: dict[str, int] = {}
    for mark, seqs in seen.items():
        node = mark.split("/", 1)[0]
        out[node] = out.get(node, 0) + known_gaps(seqs)
    return out


# ---- the snapshot the ingest feeds and /metrics reads ---------------------------------


@dataclass
class OpenCostBook:
    """Per node: when it last reported, its prices and its containers' allocations."""

    prices: dict[str, NodePrice] = field(default_factory=dict)
    containers: dict[str, list[ContainerAllocation]] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)
    provider_ids: dict[str, str] = field(default_factory=dict)
    """Node name -> spec.providerID, from the node watch."""
    claims: dict[tuple[str, str], tuple[str, Decimal]] = field(default_factory=dict)
    """(namespace, claim) -> (bound volume, bytes), from the pod cache's claim look-ups."""

    def observe(
        self, report: ProbeReport, facts: NodeFacts, rates: Rates,
        pods: Iterable[tuple[PodUsage, PodInfo | None]], now: float,
    ) -> None:
        """Replace a node's snapshot with what its latest report says."""
        node = report.node
        self.prices[node] = node_price(facts, rates, self.provider_ids.get(node, ""))
        self.containers[node] = container_allocations(node, pods)
        self.seen_at[node] = now

    def expire(self, now: float) -> None:
        """Forget nodes whose probe has been silent for STALE_SECONDS."""
        for node in [n for n, t in self.seen_at.items() if now - t > STALE_SECONDS]:
            self.prices.pop(node, None)
            self.containers.pop(node, None)
            self.seen_at.pop(node, None)


OPENCOST = OpenCostBook()


def observe_report(state: Any, report: ProbeReport, result: Any) -> None:
    """Called by the ingest after folding a new report: refresh the node's OpenCost series."""
    from kopeck.operator.fold import resolve_pod

    rates, facts = getattr(result, "node_rates", None), getattr(result, "node_facts", None)
    if rates is None or facts is None:
        return
    try:
        pods = [(p, resolve_pod(state, p)) for p in report.pods]
        OPENCOST.observe(report, facts, rates, pods, time.monotonic())
    except Exception:  # exposition must never fail a report that is already folded
        log.exception("OpenCost series of node %s not updated", report.node)


def note_node(name: str, body: Mapping[str, Any] | None) -> None:
    """Keep a node's spec.providerID for the provider_id label (None: the node is gone)."""
    if body is None:
        OPENCOST.provider_ids.pop(name, None)
        return
    OPENCOST.provider_ids[name] = str((body.get("spec") or {}).get("providerID") or "")


def note_claim(namespace: str, claim: str, pvc: Mapping[str, Any] | None) -> None:
    """Keep a claim's volume and size for pod_pvc_allocation (None: the claim is gone)."""
    if pvc is None:
        OPENCOST.claims.pop((namespace, claim), None)
        return
    volume = str((pvc.get("spec") or {}).get("volumeName") or "")
    OPENCOST.claims[(namespace, claim)] = (volume, pvc_bytes(pvc))


class StateCollector(Collector):
    """Series computed from the operator's State at scrape time (leader only)."""

    def __init__(self) -> None:
        self.state: Any = None

    def collect(self) -> Iterator[Metric]:
        """Ledger health and the OpenCost series; empty families on a standby."""
        state = self.state
        leading = state is not None and bool(state.active)
        last = GaugeMetricFamily(
            "kopeck_node_last_report_timestamp_seconds",
            "Unix time of the last report folded from each node's probe (nodes that exist)",
            labels=["node"])
        gaps = GaugeMetricFamily(
            "kopeck_ledger_seq_gaps",
            "Report sequence numbers known missing per node (sent after later ones arrived)",
            labels=["node"])
        interval = GaugeMetricFamily(
            "kopeck_probe_interval_seconds", "The probes' push interval the operator expects")
        build = GaugeMetricFamily(
            "opencost_build_info", "OpenCost-compatible build info (kopeck's version), for "
            "dashboards that pick their job from it", labels=["version", "revision"])
        build.add_metric([f"kopeck-{_version()}", ""], 1)
        total = GaugeMetricFamily("node_total_hourly_cost", "Total node cost per hour",
                                  labels=list(NODE_LABELS))
        cpu = GaugeMetricFamily("node_cpu_hourly_cost", "Hourly cost for each cpu on this node",
                                labels=list(NODE_LABELS))
        ram = GaugeMetricFamily("node_ram_hourly_cost",
                                "Hourly cost for each GiB of ram on this node",
                                labels=list(NODE_LABELS))
        gpu = GaugeMetricFamily("node_gpu_hourly_cost", "Hourly cost for each gpu on this node",
                                labels=list(NODE_LABELS))
        gpu_count = GaugeMetricFamily("node_gpu_count", "Count of gpu on this node",
                                      labels=list(NODE_LABELS))
        c_cpu = GaugeMetricFamily("container_cpu_allocation",
                                  "CPU cores allocated: max(request, usage)",
                                  labels=list(CONTAINER_LABELS))
        c_mem = GaugeMetricFamily("container_memory_allocation_bytes",
                                  "Bytes of RAM allocated: max(request, working set)",
                                  labels=list(CONTAINER_LABELS))
        c_gpu = GaugeMetricFamily("container_gpu_allocation", "GPUs allocated (by request)",
                                  labels=list(CONTAINER_LABELS))
        pv = GaugeMetricFamily("pv_hourly_cost", "Cost per GiB per hour of a persistent volume",
                               labels=["volumename", "persistentvolume", "provider_id"])
        pvc = GaugeMetricFamily("pod_pvc_allocation",
                                "Bytes of a PVC attached to a pod (shared evenly by its pods)",
                                labels=list(PVC_LABELS))
        if leading:
            interval.add_metric([], float(state.settings.probe_interval))
            # a node whose Node object is gone (scaled down) is not expected to report
            # again: no series, so its alerts resolve instead of firing for ever
            for node, at in sorted(state.node_seen.items()):
                if node in state.nodes:
                    last.add_metric([node], at)
            for node, count in sorted(gaps_by_node(state.seen).items()):
                if node in state.nodes:
                    gaps.add_metric([node], count)
            OPENCOST.expire(time.monotonic())
            for node, price in sorted(OPENCOST.prices.items()):
                labels = price.labels()
                if price.total_per_hour is not None:
                    total.add_metric(labels, float(price.total_per_hour))
                cpu.add_metric(labels, float(price.cpu_per_core_hour))
                ram.add_metric(labels, float(price.ram_per_gib_hour))
                gpu.add_metric(labels, float(price.gpu_per_gpu_hour))
                gpu_count.add_metric(labels, price.gpus)
                for alloc in OPENCOST.containers.get(node, []):
                    c_cpu.add_metric(alloc.labels(), float(alloc.cpu_cores))
                    c_mem.add_metric(alloc.labels(), float(alloc.memory_bytes))
                    c_gpu.add_metric(alloc.labels(), float(alloc.gpus))
            for share in pvc_allocations(state.pods.values(), OPENCOST.claims):
                pvc.add_metric(share.labels(), float(share.bytes))
            for volume, per_gib_hour in sorted(volume_prices(state).items()):
                pv.add_metric([volume, volume, ""], float(per_gib_hour))
        yield from (last, gaps, interval, build, total, cpu, ram, gpu, gpu_count, c_cpu, c_mem,
                    c_gpu, pv, pvc)


STATE_COLLECTOR = StateCollector()
REGISTRY.register(STATE_COLLECTOR)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kopeck")
    except PackageNotFoundError:
        return "unknown"


def sync_anomalous(active: Mapping[str, Mapping[str, Any]]) -> None:
    """Set kopeck_spend_anomalous to 0 for series no longer anomalous (the ingest only ever
    sets 1), so an alert on it resolves when the spend rate is back to normal."""
    for family in ANOMALOUS.collect():
        for sample in family.samples:
            policy, subject = sample.labels["policy"], sample.labels["subject"]
            if sample.value and subject not in active.get(policy, {}):
                ANOMALOUS.labels(policy, subject).set(0)


async def serve_health(host: str, port: int, state: Any) -> web.AppRunner:
    """Start /healthz (200 while the loop runs; says active or standby) and /metrics."""
    STATE_COLLECTOR.state = state

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "active": bool(state.active), "ready": bool(state.ready)}
        )

    async def metrics(_: web.Request) -> web.Response:
        ACTIVE.set(1 if state.active else 0)
        ctx = getattr(state, "webhook_ssl", None)
        if ctx is not None:  # new connections vs resumed sessions, to explain tail latency
            stats = ctx.session_stats()
            TLS_HANDSHAKES.labels("accepted").set(stats.get("accept_good", 0))
            TLS_HANDSHAKES.labels("resumed").set(stats.get("hits", 0))
        book = getattr(state, "anomaly", None)
        if book is not None:
            sync_anomalous(book.active)
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
