"""The probe's settings, validated once at start so a bad flag fails with a clear message."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kopeck.api.report import REPLAY_HORIZON_REPORTS, TrafficClass

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SA_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
TRAFFIC_CLASSES: tuple[TrafficClass, ...] = (
    "intraZone",
    "crossZone",
    "crossRegion",
    "internet",
    "unclassified",
)


def _network(value: str, flag: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{flag} {value!r} is not a CIDR (e.g. 10.0.0.0/16)") from exc


def parse_listen(value: str, default_port: int = 2055) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT', ':PORT' or 'HOST' -> (host, port); no host = 0.0.0.0."""
    v = value.strip()
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        port = rest.lstrip(":")
    elif v.count(":") == 1:
        host, _, port = v.partition(":")
    else:  # a bare host name or IPv6 address
        host, port = v, ""
    p = int(port) if port else default_port
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} out of range")
    if host:
        ipaddress.ip_address(host)
    return host or "0.0.0.0", p


MAX_ALLOW_ADDRESSES = 4096
MAX_DOMAIN = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class ExporterAllowList:
    """--flows-allow as the collector checks it: addresses accepted from any observation
    domain, and addresses accepted only from some domains (IPFIX observation domain id,
    NetFlow v9 source id)."""

    any_domain: frozenset[str]
    domains: Mapping[str, frozenset[int]]


def exporter_allow_list(values: tuple[str, ...]) -> ExporterAllowList:
    """--flows-allow 'ADDRESS|CIDR[@DOMAIN]' entries (CIDRs expanded, up to a bound). An
    address listed without a domain is accepted from every domain."""
    anyd: set[str] = set()
    domains: dict[str, set[int]] = {}
    total = 0
    for v in values:
        where, at, dom = v.strip().partition("@")
        domain: int | None = None
        if at:
            if not dom.strip().isdigit() or int(dom) > MAX_DOMAIN:
                raise ValueError(
                    f"--flows-allow {v!r}: observation domain {dom!r} is not an integer "
                    f"0..{MAX_DOMAIN}; use ADDRESS[@DOMAIN], e.g. 10.0.0.5@1"
                )
            domain = int(dom)
        net = _network(where, "--flows-allow")
        total += net.num_addresses
        if net.num_addresses > MAX_ALLOW_ADDRESSES or total > MAX_ALLOW_ADDRESSES:
            raise ValueError(
                f"--flows-allow {v!r} holds {net.num_addresses} addresses; list the "
                f"exporters (at most {MAX_ALLOW_ADDRESSES} addresses)"
            )
        for a in net:
            if net.num_addresses != 1 and a in _ends(net):
                continue
            if domain is None:
                anyd.add(str(a))
            else:
                domains.setdefault(str(a), set()).add(domain)
    return ExporterAllowList(
        frozenset(anyd),
        {a: frozenset(d) for a, d in domains.items() if a not in anyd},
    )


def allowed_exporters(values: tuple[str, ...]) -> frozenset[str]:
    """--flows-allow addresses accepted from any observation domain (see exporter_allow_list)."""
    return exporter_allow_list(values).any_domain


def _ends(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[object]:
    """Network and broadcast addresses of an IPv4 range (never an exporter's)."""
    if net.version == 4 and net.prefixlen < 31:
        return {net.network_address, net.broadcast_address}
    return set()


def parse_located_cidr(value: str) -> tuple[str, str | None, str | None]:
    """--node-cidr 'CIDR[=ZONE[/REGION]]' -> (cidr, zone, region)."""
    cidr, _, where = value.partition("=")
    _network(cidr, "--node-cidr")
    zone, _, region = where.partition("/")
    return cidr.strip(), zone.strip() or None, region.strip() or None


def parse_classed_cidr(value: str) -> tuple[str, TrafficClass]:
    """--internal-cidr 'CIDR[=CLASS]' -> (cidr, class); the class defaults to intraZone."""
    cidr, _, cls = value.partition("=")
    _network(cidr, "--internal-cidr")
    name = cls.strip() or "intraZone"
    for known in TRAFFIC_CLASSES:
        if name == known:
            return cidr.strip(), known
    raise ValueError(
        f"--internal-cidr {value!r}: unknown traffic class {name!r} "
        f"(one of {', '.join(TRAFFIC_CLASSES)})"
    )


FLOWS_MAX_TEMPLATE_FIELDS = 256
"""The decoder's hard bound on fields per template (flows.templates.MAX_TEMPLATE_FIELDS)."""
MIN_TEMPLATE_BUDGET_BYTES = 1024
"""Below this, not even a one-field template fits (each costs 512 + 64 per field)."""

_SIZE = re.compile(r"^\s*(\d+)\s*(|k|ki|kib|m|mi|mib|g|gi|gib)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# setting -> (lowest, highest, what it means); flags are --flows-x-y, env KOPECK_FLOWS_X_Y
FLOW_LIMITS: dict[str, tuple[int, int, str]] = {
    "flows_max_streams": (1, 4096, "streams (exporter, version, domain) kept in all"),
    "flows_streams_per_exporter": (1, 4096, "streams one exporter address may hold"),
    "flows_templates_per_stream": (1, 65279, "templates one stream may hold"),
    "flows_template_fields": (1, FLOWS_MAX_TEMPLATE_FIELDS, "fields per template"),
    "flows_template_bytes_per_exporter": (
        MIN_TEMPLATE_BUDGET_BYTES,
        1 << 30,
        "template memory per exporter address (bytes)",
    ),
    "flows_template_bytes": (MIN_TEMPLATE_BUDGET_BYTES, 1 << 32, "template memory in all (bytes)"),
}
FLOW_ENV_SETTINGS = ("flows_listen", "flows_allow", *FLOW_LIMITS)
"""Collector settings also read from KOPECK_<NAME> when not given (e.g. KOPECK_FLOWS_LISTEN)."""


def flow_flag(name: str) -> str:
    """The flag and environment variable that set a collector setting, for error messages."""
    return f"--{name.replace('_', '-')} (KOPECK_{name.upper()})"


def parse_size(value: object, setting: str) -> int:
    """An integer, or a size with a binary unit ('512Ki', '8Mi', '1GiB'), as bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{flow_flag(setting)}: {value!r} is not a number")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if m is None:
        raise ValueError(
            f"{flow_flag(setting)}: {value!r} is not a number (bytes, or with Ki/Mi/Gi, e.g. 8Mi)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)[:1].lower()]


class ProbeConfig(BaseModel):
    """Settings of one node-probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_name: str = Field(min_length=1)
    """This node's name (the DaemonSet passes spec.nodeName)."""
    cgroup_base: Path = Path("/sys/fs/cgroup")
    """Where cgroup hierarchies are mounted."""
    prefix: str = ""
    """Parent under each hierarchy root holding kubepods(.slice); '' on a real node."""
    sample_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often cgroups are read (bounds what a short-lived pod can lose)."""
    report_interval_s: float = Field(default=5.0, ge=1, le=3600)
    """How often a report is cut and pushed when no threshold is crossed."""
    limits_every_cycles: int = Field(default=10, ge=1)
    """Re-read cgroup limits every this many cycles (new pods are read at once)."""
    ingest_url: str | None = None
    """The operator's ingest endpoint (https://.../v1/reports); None = buffer only."""
    token_path: Path | None = SA_TOKEN
    """Bearer token file sent with each report (the ServiceAccount token)."""
    ca_file: Path | None = None
    """CA bundle to verify the operator's certificate (default: system store)."""
    wal_path: Path = Path("/var/lib/kopeck/probe.db")
    """SQLite write-ahead buffer of unacknowledged reports."""
    wal_max_reports: int = Field(default=17_280, ge=1, le=REPLAY_HORIZON_REPORTS)
    """Buffer bound (default: one day at 5 s); overflow drops the oldest and records a Gap."""
    metrics_port: int | None = Field(default=9102, ge=0, le=65535)
    """Port of /metrics (None: do not serve)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""
    high_fraction: float = Field(default=0.9, gt=0, le=1)
    """Push at once when CPU or memory goes above this fraction of the limit."""
    idle_fraction: float = Field(default=0.05, ge=0, lt=1)
    """Push at once when CPU and memory both go below this fraction of the request."""
    watch_pods: bool = True
    """Watch this node's Pods on the API server for names and requests."""
    kubeconfig: str | None = None
    """Kubeconfig for the watch (default: in-cluster, then ~/.kube/config)."""

    network: Literal["ebpf", "veth", "off"] = "ebpf"
    """Per-pod byte counters: eBPF (falls back to veth with one warning), veth, or none."""
    ebpf_cost_every_s: float = Field(default=60.0, ge=0)
    """Measure the eBPF programs' own cost every this many seconds (0: never)."""
    ebpf_cost_window_s: float = Field(default=5.0, gt=0)
    """Length of each cost measurement (kernel BPF stats are on only during it)."""
    flows_listen: str = ""
    """HOST:PORT of the NetFlow v9 / IPFIX collector ('' = no flow collector)."""
    flows_allow: tuple[str, ...] | None = None
    """Exporters accepted, ADDRESS|CIDR[@DOMAIN] (None: this node's addresses and loopback
    from any domain). With @DOMAIN only that IPFIX observation domain / v9 source id."""
    flows_max_streams: int = 64
    """Streams (exporter, version, observation domain) the collector keeps in all (LRU)."""
    flows_streams_per_exporter: int = 16
    """Streams one exporter address may hold; beyond, its least recently used one goes."""
    flows_templates_per_stream: int = 256
    """Templates one stream may hold; more are refused (template_limit)."""
    flows_template_fields: int = FLOWS_MAX_TEMPLATE_FIELDS
    """Fields per template; longer templates are refused (template_too_many_fields)."""
    flows_template_bytes_per_exporter: int = 1 << 20
    """Template memory (estimated) one exporter address may hold."""
    flows_template_bytes: int = 8 << 20
    """Template memory (estimated) of all exporters together."""
    zone: str | None = None
    """This node's topology.kubernetes.io/zone, for classifying flows."""
    region: str | None = None
    """This node's topology.kubernetes.io/region, for classifying flows."""
    pod_cidrs: tuple[str, ...] = ()
    """This node's pod CIDRs."""
    node_cidrs: tuple[str, ...] = ()
    """CIDR[=ZONE[/REGION]] ranges of nodes (or their pods) with their place (default: here)."""
    internal_cidrs: tuple[str, ...] = ()
    """CIDR[=CLASS] ranges whose traffic has a fixed class (default intraZone)."""

    @field_validator("flows_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            try:
                parse_listen(v)
            except ValueError as exc:
                raise ValueError(f"--flows-listen {v!r}: {exc}; use HOST:PORT") from exc
        return v

    @model_validator(mode="before")
    @classmethod
    def _flows_env(cls, data: Any) -> Any:
        """Collector settings not given take KOPECK_FLOWS_* from the environment."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in FLOW_ENV_SETTINGS:
            env = os.environ.get(f"KOPECK_{name.upper()}")
            if name not in out and env is not None:
                if name == "flows_allow":
                    out[name] = tuple(x.strip() for x in env.split(",") if x.strip())
                else:
                    out[name] = env
        return out

    @field_validator("flows_allow")
    @classmethod
    def _allow(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            exporter_allow_list(v)
        return v

    @field_validator(*FLOW_LIMITS, mode="before")
    @classmethod
    def _flow_limit(cls, v: object, info: ValidationInfo) -> int:
        name = str(info.field_name)
        low, high, what = FLOW_LIMITS[name]
        n = parse_size(v, name)
        if not low <= n <= high:
            raise ValueError(f"{flow_flag(name)}: {v!r} {what} is outside {low}..{high}")
        return n

    @field_validator("pod_cidrs")
    @classmethod
    def _pod_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            _network(item, "--pod-cidr")
        return v

    @field_validator("node_cidrs")
    @classmethod
    def _node_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            parse_located_cidr(item)
        return v

    @field_validator("internal_cidrs")
    @classmethod
    def _internal_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            parse_classed_cidr(item)
        return v

    @model_validator(mode="after")
    def _flow_limits_agree(self) -> ProbeConfig:
        if self.flows_streams_per_exporter > self.flows_max_streams:
            raise ValueError(
                f"{flow_flag('flows_streams_per_exporter')} {self.flows_streams_per_exporter} "
                f"is more than {flow_flag('flows_max_streams')} {self.flows_max_streams}: "
                "lower the first or raise the second"
            )
        if self.flows_template_bytes_per_exporter > self.flows_template_bytes:
            raise ValueError(
                f"{flow_flag('flows_template_bytes_per_exporter')} "
                f"{self.flows_template_bytes_per_exporter} is more than "
                f"{flow_flag('flows_template_bytes')} {self.flows_template_bytes}: "
                "lower the first or raise the second"
            )
        return self

    @model_validator(mode="after")
    def _intervals(self) -> ProbeConfig:
        if self.sample_interval_s > self.report_interval_s:
            raise ValueError(
                f"sample interval {self.sample_interval_s}s is longer than the report "
                f"interval {self.report_interval_s}s: lower --sample-interval"
            )
        return self
