"""Where did the bytes go? Traffic classes from topology, as pure functions.

Prices differ by an order of magnitude between traffic that stays in a zone, crosses
zones, crosses regions or leaves for the internet, so each remote address is placed:

1. a configured ``cidr_classes`` entry names the class outright (longest prefix wins);
2. otherwise the address is located — a node's own address, a node's pod CIDR, or a
   configured ``cidr_locations`` entry (longest prefix wins) — and its zone and region,
   from the ``topology.kubernetes.io/zone|region`` labels, are compared with this node's;
3. loopback and link-local addresses never leave the node: intra-zone;
4. any other globally routable address is the internet; any other private address is
   ``unclassified`` (we do not guess a price for a place we cannot name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kopeck.api.report import TrafficClass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
CLASSES: tuple[TrafficClass, ...] = (
    "intraZone",
    "crossZone",
    "crossRegion",
    "internet",
    "unclassified",
)


@dataclass(frozen=True, slots=True)
class Location:
    """A zone and region; either may be unknown."""

    zone: str | None = None
    region: str | None = None

    @staticmethod
    def from_labels(labels: Mapping[str, str]) -> Location:
        """A node's location from its well-known topology labels."""
        return Location(labels.get(ZONE_LABEL) or None, labels.get(REGION_LABEL) or None)


@dataclass(frozen=True, slots=True)
class NodePlacement:
    """A node's location, addresses and pod CIDRs (from the Node object)."""

    name: str
    location: Location
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything classification needs: this node, the other nodes, configured CIDRs."""

    local: NodePlacement
    nodes: tuple[NodePlacement, ...] = ()
    cidr_locations: tuple[tuple[IPNetwork, Location], ...] = ()
    cidr_classes: tuple[tuple[IPNetwork, TrafficClass], ...] = ()
    _placed: tuple[tuple[IPNetwork, Location], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        placed: list[tuple[IPNetwork, Location]] = list(self.cidr_locations)
        for node in (self.local, *self.nodes):
            placed += [(ipaddress.ip_network(a), node.location) for a in node.addresses]
            placed += [(net, node.location) for net in node.pod_cidrs]
        placed.sort(key=lambda item: -item[0].prefixlen)
        object.__setattr__(self, "_placed", tuple(placed))

    def locate(self, ip: IPAddress) -> Location | None:
        """The location of an address, by longest prefix; None when unknown."""
        for net, loc in self._placed:
            if ip.version == net.version and ip in net:
                return loc
        return None


def between(local: Location, remote: Location) -> TrafficClass:
    """The class of traffic between two locations (unknown labels give no guess)."""
    if local.region and remote.region and local.region != remote.region:
        return "crossRegion"
    if local.zone and remote.zone:
        return "intraZone" if local.zone == remote.zone else "crossZone"
    return "unclassified"  # e.g. same region, zone unknown: intra or cross, we cannot say


def classify(topology: Topology, ip: IPAddress) -> TrafficClass:
    """The class of traffic between this node and ``ip`` (see the module doc for the order)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    best: tuple[int, TrafficClass] | None = None
    for net, cls in topology.cidr_classes:
        if ip.version == net.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, cls)
    if best is not None:
        return best[1]
    loc = topology.locate(ip)
    if loc is not None:
        return between(topology.local.location, loc)
    if ip.is_loopback or ip.is_link_local:
        return "intraZone"
    if ip.is_global:
        return "internet"
    return "unclassified"


def parse_cidrs(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings from configuration (host bits allowed, as users write them)."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())
