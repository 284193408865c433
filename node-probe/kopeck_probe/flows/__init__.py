"""Flow records (NetFlow v9 / IPFIX) from an exporter on the node -> per-pod network bytes.

Entry points for the probe core:

- :class:`PodIPMap` — feed it pod IPs with time ranges (``assign`` / ``release``);
- :class:`Topology` — this node, other nodes and configured CIDRs, for classification;
- :class:`FlowCollector` — UDP 2055 collector; ``totals()`` gives cumulative
  :class:`PodFlowTotals` per pod key, ``stats()`` its health.
"""

from kopeck_probe.flows.classify import Location, NodePlacement, Topology, classify
from kopeck_probe.flows.collector import CollectorConfig, CollectorStats, FlowCollector
from kopeck_probe.flows.decoder import Decoder, FlowBatch, StreamStats
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.flows.tally import PodFlowTotals, Tally, Traffic

__all__ = [
    "CollectorConfig",
    "CollectorStats",
    "Decoder",
    "FlowBatch",
    "FlowCollector",
    "Location",
    "NodePlacement",
    "PodFlowTotals",
    "PodIPMap",
    "StreamStats",
    "Tally",
    "Topology",
    "Traffic",
    "classify",
]
