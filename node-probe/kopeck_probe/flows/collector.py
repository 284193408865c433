"""The flow collector: UDP 2055 -> allow-list -> decoder -> per-pod counters.

One thread receives datagrams; only allow-listed exporters get past the first check
(default: this node's own addresses and loopback — the exporter runs on the node). An
address can be narrowed to some observation domains (IPFIX) / source ids (v9): any
hostNetwork pod shares the node's address, so the domain tells the node's exporter from
such a pod's — but it is not authentication (anyone who can send to the port can write
any domain); keep the listener on the exporter's address, not 0.0.0.0, where you can.
Records are decoded in batches (every ``flush_records`` records or ``flush_interval_s``)
and folded into cumulative per-pod counters that the probe core reads with
:meth:`FlowCollector.totals`. Anything wrong with a datagram is counted; nothing stops
the receive loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from kopeck_probe.flows.classify import Topology
from kopeck_probe.flows.decoder import DROP_REASONS, Decoder, StreamStats
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.flows.tally import PodFlowTotals, Tally, Traffic
from kopeck_probe.flows.templates import MAX_TEMPLATE_FIELDS

log = logging.getLogger(__name__)

DEFAULT_PORT = 2055
MAX_DATAGRAM = 65535
DRAIN_BATCH = 256
"""Datagrams taken per lock hold when the socket has a backlog."""


COLLECTOR_DROP_REASONS: dict[str, tuple[str, str]] = {
    "exporter_not_allowed": ("datagram", "source address not on the allow-list"),
    "domain_not_allowed": (
        "datagram",
        "observation domain / source id not allowed for the address",
    ),
    "internal_error": ("datagram", "a decoder or tally bug hit this datagram or batch"),
}
ALL_DROP_REASONS: dict[str, tuple[str, str]] = {**DROP_REASONS, **COLLECTOR_DROP_REASONS}
"""Every reason counted in ``CollectorStats.drops`` (``kopeck_probe_flow_drops_total``)."""

_DOMAIN_V9 = struct.Struct("!16xI")
_DOMAIN_IPFIX = struct.Struct("!12xI")


def header_domain(data: bytes) -> int | None:
    """The v9 source id / IPFIX observation domain of a datagram; None if it has no header."""
    if len(data) >= 4 and data[0] == 0:
        if data[1] == 9 and len(data) >= _DOMAIN_V9.size:
            return int(_DOMAIN_V9.unpack_from(data)[0])
        if data[1] == 10 and len(data) >= _DOMAIN_IPFIX.size:
            return int(_DOMAIN_IPFIX.unpack_from(data)[0])
    return None


def local_addresses() -> frozenset[str]:
    """This node's own addresses plus loopback: the default exporter allow-list."""
    found = {"127.0.0.1", "::1"}
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                addr = msg.get_attr("IFA_ADDRESS")
                if addr:
                    found.add(str(addr).split("%")[0])
    except Exception as exc:  # no netlink (tests in odd sandboxes): loopback only
        log.warning("cannot list this node's addresses (%s); allowing loopback only", exc)
    return frozenset(found)


def _normalise(address: str) -> str:
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """Settings of the collector (defaults fit one node)."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    allowed_exporters: frozenset[str] | None = None
    """Exporter addresses accepted from any domain; None: this node's addresses and loopback
    (unless ``allowed_domains`` names some)."""
    allowed_domains: Mapping[str, frozenset[int]] | None = None
    """Addresses accepted only from these observation domains / v9 source ids."""
    max_streams: int = 64
    """Cap on (exporter, version, domain) streams kept."""
    max_templates_per_stream: int = 256
    """Cap on templates per stream; more are a template flood (counted, ignored)."""
    max_streams_per_exporter: int = 16
    """One exporter's share of streams; beyond it, its least recently used stream goes."""
    max_template_bytes_per_exporter: int = 1 << 20
    max_template_bytes: int = 8 << 20
    """Template memory bounds (estimated), per exporter address and in total."""
    max_fields_per_template: int = MAX_TEMPLATE_FIELDS
    """Template field bound; longer templates are refused (``template_too_many_fields``)."""
    flush_records: int = 32768
    flush_interval_s: float = 0.25
    receive_buffer_bytes: int = 8 << 20


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """The collector's health for /metrics."""

    datagrams: int
    """Datagrams received, allowed or not."""
    not_allowed: int
    """Datagrams from exporters (or domains) not on the allow-list (dropped unread)."""
    records: int
    """Flow data records decoded."""
    drops: dict[str, int]
    """Dropped or refused datagrams, sets, templates, streams and records by reason (see
    ``ALL_DROP_REASONS`` for what each counts); only reasons that happened."""
    streams: list[StreamStats]
    unattributed: Traffic
    """Bytes and packets of flows with no pod of this node at either end."""
    records_without_addresses: int
    internal_errors: int
    saturated_records: int = 0
    """Records whose sampled-up counters saturated at 2**64 - 1."""


@dataclass(slots=True)
class _Counters:
    datagrams: int = 0
    not_allowed: int = 0
    internal_errors: int = 0
    not_allowed_by_source: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    """The collector's own drop reasons (COLLECTOR_DROP_REASONS)."""


class FlowCollector:
    """NetFlow v9 / IPFIX collector feeding per-pod flow counters."""

    def __init__(
        self, pods: PodIPMap, topology: Topology, config: CollectorConfig | None = None
    ) -> None:
        self.config = config or CollectorConfig()
        cfg = self.config
        domains = cfg.allowed_domains or {}
        allowed = cfg.allowed_exporters
        if allowed is None:
            allowed = frozenset() if domains else local_addresses()
        self.allowed = frozenset(_normalise(a) for a in allowed)
        """Addresses accepted from any observation domain."""
        self.allowed_domains = {
            _normalise(a): frozenset(d)
            for a, d in domains.items()
            if _normalise(a) not in self.allowed
        }
        """Addresses accepted only from these observation domains / v9 source ids."""
        self.decoder = Decoder(
            cfg.max_streams,
            cfg.max_templates_per_stream,
            max_streams_per_exporter=cfg.max_streams_per_exporter,
            max_template_bytes_per_exporter=cfg.max_template_bytes_per_exporter,
            max_template_bytes=cfg.max_template_bytes,
            max_fields_per_template=cfg.max_fields_per_template,
        )
        self.tally = Tally(pods, topology)
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ pure-ish core
    def handle(self, data: bytes, source: str) -> bool:
        """Take one datagram from ``source``; False when it was refused or dropped."""
        with self._lock:
            ok = self._handle_locked(data, source)
            if (
                self.decoder.pending_records >= self.config.flush_records
                or time.monotonic() - self._last_flush >= self.config.flush_interval_s
            ):
                self._flush_guarded()
            return ok

    def _handle_locked(self, data: bytes, source: str) -> bool:
        c = self._counters
        c.datagrams += 1
        if source not in self.allowed:
            source = _normalise(source)
            if source not in self.allowed:
                domains = self.allowed_domains.get(source)
                if domains is None:
                    return self._refuse("exporter_not_allowed", source)
                domain = header_domain(data)
                if domain is not None and domain not in domains:
                    return self._refuse("domain_not_allowed", source)
        try:
            return self.decoder.feed(data, source)
        except Exception:  # a decoder bug must not stop the collector: count, go on
            c.internal_errors += 1
            c.drops["internal_error"] += 1
            log.exception("flow datagram from %s could not be handled", source)
            return False

    def _refuse(self, reason: str, source: str) -> bool:
        c = self._counters
        c.not_allowed += 1
        c.drops[reason] += 1
        if len(c.not_allowed_by_source) < 1024:
            c.not_allowed_by_source[source] += 1
        return False

    def _flush_guarded(self) -> None:
        try:
            self._flush_locked()
        except Exception:
            self._counters.internal_errors += 1
            self._counters.drops["internal_error"] += 1
            log.exception("flow batch could not be counted")

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        batch = self.decoder.flush()
        self.tally.add(batch)

    def flush(self) -> None:
        """Decode and count everything received so far."""
        with self._lock:
            self._flush_guarded()

    def totals(self) -> dict[str, PodFlowTotals]:
        """Cumulative per-pod counters (a snapshot; flushes first so nothing waits)."""
        self.flush()
        with self._lock:
            return {k: v.copy() for k, v in self.tally.totals.items()}

    def forget(self, pod: str) -> None:
        """Drop an ended pod's counters after its last report."""
        with self._lock:
            self.tally.forget(pod)

    def set_topology(self, topology: Topology) -> None:
        """Node labels, nodes or configured CIDRs changed."""
        with self._lock:
            self.tally.set_topology(topology)

    def stats(self) -> CollectorStats:
        """Counters for /metrics."""
        with self._lock:
            d = self.decoder
            return CollectorStats(
                datagrams=self._counters.datagrams,
                not_allowed=self._counters.not_allowed,
                records=d.records,
                drops={k: v for k, v in (d.drops + self._counters.drops).items() if v},
                streams=d.stream_stats(),
                unattributed=Traffic(
                    self.tally.unattributed.bytes, self.tally.unattributed.packets
                ),
                records_without_addresses=d.records_without_addresses,
                internal_errors=self._counters.internal_errors,
                saturated_records=d.saturated_records,
            )

    # ------------------------------------------------------------------ socket
    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        if self._sock is None:
            raise RuntimeError("collector not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind the UDP socket and start the receive thread."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.receive_buffer_bytes)
        sock.bind((self.config.host, self.config.port))
        sock.settimeout(self.config.flush_interval_s)
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="kopeck-flows", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """Block for one datagram, then drain what is queued under one lock hold."""
        sock = self._sock
        assert sock is not None
        recv = sock.recvfrom
        dontwait = socket.MSG_DONTWAIT
        while not self._stopping.is_set():
            try:
                data, addr = recv(MAX_DATAGRAM)
            except TimeoutError:
                self.flush()
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                with self._lock:
                    self._counters.internal_errors += 1
                    self._counters.drops["internal_error"] += 1
                continue
            with self._lock:
                self._handle_locked(data, addr[0])
                for _ in range(DRAIN_BATCH):
                    try:
                        data, addr = recv(MAX_DATAGRAM, dontwait)
                    except OSError:  # BlockingIOError: nothing queued
                        break
                    self._handle_locked(data, addr[0])
                if (
                    self.decoder.pending_records >= self.config.flush_records
                    or time.monotonic() - self._last_flush >= self.config.flush_interval_s
                ):
                    self._flush_guarded()

    def stop(self) -> None:
        """Stop receiving, close the socket, count what was pending."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.flush()

    def __enter__(self) -> FlowCollector:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
