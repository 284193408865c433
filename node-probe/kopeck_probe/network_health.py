"""The network sources' own figures on /metrics: eBPF cost and misses, veth mapping, flow drops."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kopeck_probe.ebpf_source import EbpfNetworkSource
from kopeck_probe.flows.source import FlowSource
from kopeck_probe.veth_source import VethNetworkSource


class NetworkHealth(Collector):
    """The network sources' own figures: eBPF cost and misses, veth mapping, flow drops."""

    def __init__(
        self,
        network: EbpfNetworkSource | VethNetworkSource | None,
        flows: FlowSource | None,
    ) -> None:
        self.network = network
        self.flows = flows

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Render the families (prometheus_client calls this on scrape)."""
        n = self.network
        info = GaugeMetricFamily(
            "kopeck_probe_network_source", "Which reader counts pod bytes", labels=["source"]
        )
        info.add_metric([n.source if n else "off"], 1)
        yield info
        if isinstance(n, EbpfNetworkSource):
            yield GaugeMetricFamily(
                "kopeck_probe_ebpf_attached", "eBPF attachment points", value=len(n.readers)
            )
            yield GaugeMetricFamily(
                "kopeck_probe_ebpf_cgroups", "Cgroups in the eBPF map", value=n.cgroups_counted
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_missed_bytes",
                "Bytes not counted per cgroup because the map was full",
                value=n.missed[0],
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_missed_packets",
                "Packets not counted per cgroup because the map was full",
                value=n.missed[1],
            )
            if n.cost is not None and n.cost.ns_per_packet is not None:
                yield GaugeMetricFamily(
                    "kopeck_probe_ebpf_ns_per_packet",
                    "Mean run time of the counter program per packet (last sampled window)",
                    value=n.cost.ns_per_packet,
                )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_sampled_runs",
                "Program runs measured in the cost windows",
                value=n.cost_total.run_cnt,
            )
            yield CounterMetricFamily(
                "kopeck_probe_ebpf_sampled_run_seconds",
                "Program run time measured in the cost windows",
                value=n.cost_total.run_time_ns / 1e9,
            )
        elif isinstance(n, VethNetworkSource):
            yield GaugeMetricFamily(
                "kopeck_probe_veth_pods_mapped", "Pods whose veth is known", value=n.pods_mapped
            )
        if self.flows is not None:
            s = self.flows.collector.stats()
            yield CounterMetricFamily(
                "kopeck_probe_flow_datagrams", "Flow datagrams received", value=s.datagrams
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_not_allowed",
                "Flow datagrams from exporters not on the allow-list",
                value=s.not_allowed,
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_records", "Flow records decoded", value=s.records
            )
            drops = CounterMetricFamily(
                "kopeck_probe_flow_drops", "Flow datagrams, sets, templates, streams and records dropped or refused, by reason", labels=["reason"]
            )
            for reason, count in sorted(s.drops.items()):
                drops.add_metric([reason], count)
            yield drops
            yield CounterMetricFamily(
                "kopeck_probe_flow_saturated_records",
                "Flow records whose sampled octets or packets saturated at 2^64-1",
                value=s.saturated_records,
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_unattributed_bytes",
                "Flow bytes with no pod of this node at either end",
                value=s.unattributed.bytes,
            )
            yield CounterMetricFamily(
                "kopeck_probe_flow_internal_errors",
                "Flow datagrams or batches that hit a collector bug",
                value=s.internal_errors,
            )
