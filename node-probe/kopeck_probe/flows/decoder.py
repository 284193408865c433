"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) datagrams -> columns of flow records.

The decoder is pure: it takes datagrams (bytes) with the exporter's address and keeps the
per-stream state the protocols need — templates and options templates scoped per
(exporter, version, source id / observation domain), the sequence number expected next,
the exporter's clock and sampling from options data. No socket, no clock of its own.

Per datagram it only walks set headers and appends each data set's bytes to a pending
batch of its template; :meth:`Decoder.flush` then decodes every template's batch with one
``np.frombuffer`` (see :mod:`.templates`). This keeps the per-datagram Python cost to a
few microseconds, whatever the number of records.

A malformed datagram (header or set framing) is dropped whole and counted by reason; a bad
template record, or a data set whose template is unknown, drops only that set (counted).
Nothing raises: the collector must survive anything on the wire. A data set that cannot
be decoded at flush time costs only itself (the batch is retried set by set).

Memory is bounded in bytes, not only in counts: templates of at most
``MAX_TEMPLATE_FIELDS`` fields, an estimated template budget per exporter address and in
total, and streams kept least-recently-used, each exporter within its own quota (a stream
holding no template goes first), so a flood from one source evicts its own streams.

A record whose template has only one address is kept, the absent end as "::" (nfdump
shows 0.0.0.0): a source-only record is the source's egress, a destination-only one the
destination's ingress. Sampled-up counters saturate at 2**64 - 1 (``saturated_records``).
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kopeck_probe.flows.templates import (
    MAX_TEMPLATE_FIELDS,
    VARLEN,
    FieldSpec,
    RecordError,
    RecordLayout,
    Template,
    U64Array,
    compile_layout,
    decode_fixed,
    template_cost_bytes,
    walk_variable,
)

MASK32 = 0xFFFFFFFF
NTP_UNIX_OFFSET_S = 2_208_988_800
V4_MAPPED = np.uint64(0x0000_FFFF_0000_0000)

_V9_HEADER = struct.Struct("!HHIIII")
_IPFIX_HEADER = struct.Struct("!HHIII")
_SET_HEADER = struct.Struct("!HH")
_FIELD = struct.Struct("!HH")
_V9_OPTIONS = struct.Struct("!HHH")

StreamKey = tuple[str, int, int]
"""(exporter address, version 9 or 10, source id / observation domain id)."""

DROP_REASONS: dict[str, tuple[str, str]] = {
    # reason: (what one count is, why)
    "truncated_header": ("datagram", "shorter than its version's header"),
    "bad_version": ("datagram", "neither NetFlow v9 nor IPFIX"),
    "length_past_end": ("datagram", "IPFIX length longer than the datagram"),
    "length_mismatch": ("datagram", "IPFIX length shorter than the datagram"),
    "truncated_set": ("datagram", "bytes after the last set too short for a set header"),
    "bad_set_length": ("datagram", "a set length below 4"),
    "set_past_end": ("datagram", "a set running past the end of the message"),
    "reserved_set": ("set", "set id reserved by the RFC (neither template nor data)"),
    "unknown_template": ("set", "data set of a template this stream has not announced"),
    "bad_record": ("set", "variable-length record running past its set, or an integer > 8 octets"),
    "bad_template": ("template", "template record malformed (id < 256, no fields, bad scope)"),
    "zero_length_field": ("template", "template with a field of length 0"),
    "template_too_many_fields": ("template", "more fields than the template field bound"),
    "template_limit": ("template", "stream already holds its maximum number of templates"),
    "template_bytes_limit": ("template", "exporter or total template byte budget exhausted"),
    "withdraw_unknown": ("template", "withdrawal of a template never announced"),
    "stream_evicted": ("stream", "least recently used stream forgotten to make room"),
    "bad_sampling": ("record", "options record announcing sampling 1-in-0"),
    "no_addresses": ("record", "flow record whose template has no address"),
    "undecodable_records": ("record", "records of a data set that failed to decode"),
    "sampling_saturated": ("record", "record kept, sampled-up counter saturated at 2**64-1"),
}
"""Every reason the decoder drops, refuses or degrades something, with what is counted."""


@dataclass(slots=True)
class StreamState:
    """What one (exporter, version, domain) stream has told us so far."""

    key: StreamKey
    templates: dict[int, RecordLayout] = field(default_factory=dict)
    next_seq: int | None = None
    init_ms: float | None = None
    """IPFIX systemInitTimeMilliseconds from options data (for sysUpTime fields)."""
    sampling: int = 1
    """1-in-N packet sampling announced in options data; counts are scaled by it."""
    datagrams: int = 0
    records: int = 0
    sequence_gaps: int = 0
    missing: int = 0
    """Lost export packets (v9) or lost data records (IPFIX), from sequence numbers."""
    sequence_resets: int = 0
    template_changes: int = 0


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A stream's health, for /metrics and the report."""

    exporter: str
    version: int
    domain: int
    datagrams: int
    records: int
    sequence_gaps: int
    missing: int
    """v9: lost export packets; IPFIX: lost data records (what each sequence counts)."""
    sequence_resets: int
    templates: int


@dataclass(frozen=True, slots=True)
class FlowBatch:
    """Decoded flow records as columns. Addresses are IPv6 words (IPv4 as ::ffff:a.b.c.d)."""

    src_hi: U64Array
    src_lo: U64Array
    dst_hi: U64Array
    dst_lo: U64Array
    bytes: U64Array
    packets: U64Array
    time_s: npt.NDArray[np.float64]
    """Flow end time (Unix seconds) as the exporter saw it; export time when not sent."""

    def __len__(self) -> int:
        return int(self.bytes.shape[0])

    @staticmethod
    def empty() -> FlowBatch:
        """A batch of no records."""
        z = np.zeros(0, dtype=np.uint64)
        return FlowBatch(z, z, z, z, z, z, np.zeros(0, dtype=np.float64))

    @staticmethod
    def concat(batches: list[FlowBatch]) -> FlowBatch:
        """Join batches (in order)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return FlowBatch.empty()
        if len(batches) == 1:
            return batches[0]
        return FlowBatch(*(np.concatenate([getattr(b, n) for b in batches]) for n in _BATCH_FIELDS))


_ADDRESS_NAMES = frozenset({"src4", "dst4", "src6", "dst6"})


def _address(
    cols: dict[str, U64Array], names: frozenset[str], side: str, total: int
) -> tuple[U64Array, U64Array]:
    """One side's addresses as IPv6 words; all-zero ("::", ABSENT) when the template has none.

    A dual-stack template (both an IPv4 and an IPv6 field for the side) fills one family
    per record: the IPv6 address is taken where the IPv4 one is 0.0.0.0 and it is not ::
    (nfdump 1.7 reads only the IPv6 field of such templates and loses IPv4 records' side).
    """
    if f"{side}4" in names and f"{side}6" in names:
        v4 = cols[f"{side}4"]
        hi6, lo6 = cols[f"{side}6_hi"], cols[f"{side}6_lo"]
        use6 = (v4 == 0) & ((hi6 | lo6) != 0)
        return np.where(use6, hi6, np.uint64(0)), np.where(use6, lo6, v4 | V4_MAPPED)
    if f"{side}4" in names:
        return np.zeros(total, dtype=np.uint64), cols[f"{side}4"] | V4_MAPPED
    if f"{side}6" in names:
        return cols[f"{side}6_hi"], cols[f"{side}6_lo"]
    zeros = np.zeros(total, dtype=np.uint64)
    return zeros, zeros


def _scale(values: U64Array, factor: U64Array) -> tuple[U64Array, npt.NDArray[np.bool_]]:
    """values * factor, saturating at 2**64 - 1 instead of wrapping; also which saturated."""
    over = values > (np.uint64(2**64 - 1) // factor)
    out = values * factor
    if over.any():
        out = np.where(over, np.uint64(2**64 - 1), out)
    return out, over


_BATCH_FIELDS = ("src_hi", "src_lo", "dst_hi", "dst_lo", "bytes", "packets", "time_s")


@dataclass(slots=True)
class _Pending:
    """Data-set payloads of one layout waiting for the next flush."""

    layout: RecordLayout
    views: list[memoryview] = field(default_factory=list)
    chunks: list[tuple[int, float, int, float, int]] = field(default_factory=list)
    """Per data set: (records, export time s, uptime ref ms, base ms, sampling).

    uptime ref: v9 header sysUptime, -1 for IPFIX (its sysUpTime fields are relative to
    init_ms); base: v9 header Unix time in ms, IPFIX systemInitTimeMilliseconds or NaN."""
    slow: dict[str, list[int]] | None = None
    """Columns of variable-length records, decoded on arrival."""


class Decoder:
    """Stateful NetFlow v9 / IPFIX decoder with bounded memory."""

    def __init__(
        self,
        max_streams: int = 64,
        max_templates_per_stream: int = 256,
        *,
        max_streams_per_exporter: int = 16,
        max_fields_per_template: int = MAX_TEMPLATE_FIELDS,
        max_template_bytes_per_exporter: int = 1 << 20,
        max_template_bytes: int = 8 << 20,
    ) -> None:
        self.max_template_bytes_per_exporter = max_template_bytes_per_exporter
        self.max_template_bytes = max_template_bytes
        """Template memory bounds (estimated by :func:`template_cost_bytes`)."""
        self._template_bytes: Counter[str] = Counter()
        self.max_streams = max_streams
        self.max_templates = max_templates_per_stream
        self.max_streams_per_exporter = min(max_streams_per_exporter, max_streams)
        """One exporter's share of streams: a flood from one source evicts its own."""
        self.max_fields = max_fields_per_template
        self.streams: OrderedDict[StreamKey, StreamState] = OrderedDict()
        """Least recently used first; a datagram moves its stream to the end."""
        self.drops: Counter[str] = Counter()
        """Dropped datagrams, sets or templates, by reason."""
        self.datagrams = 0
        self.records = 0
        """Flow data records accepted (decoded at the next flush)."""
        self.records_without_addresses = 0
        self.saturated_records = 0
        """Records whose sampled-up byte or packet count saturated at 2**64 - 1."""
        self._pending: dict[int, _Pending] = {}
        self._pending_records = 0

    # ------------------------------------------------------------------ datagrams
    def feed(self, data: bytes, exporter: str) -> bool:
        """Take one datagram (an immutable ``bytes``: sets are kept by reference until the
        next flush). Returns False when it was dropped (and counted)."""
        self.datagrams += 1
        n = len(data)
        if n < 4:
            return self._drop("truncated_header")
        version = (data[0] << 8) | data[1]
        if version == 9:
            if n < _V9_HEADER.size:
                return self._drop("truncated_header")
            _, _, sys_uptime, unix_secs, seq, domain = _V9_HEADER.unpack_from(data, 0)
            pos, end = _V9_HEADER.size, n
            export_s = float(unix_secs)
        elif version == 10:
            if n < _IPFIX_HEADER.size:
                return self._drop("truncated_header")
            _, length, export_secs, seq, domain = _IPFIX_HEADER.unpack_from(data, 0)
            if length > n:
                return self._drop("length_past_end")
            if length != n:
                return self._drop("length_mismatch")
            pos, end = _IPFIX_HEADER.size, length
            export_s = float(export_secs)
            sys_uptime = unix_secs = -1
        else:
            return self._drop("bad_version")

        sets: list[tuple[int, int, int]] = []
        while pos < end:
            if end - pos < 4:
                return self._drop("truncated_set")
            set_id, set_len = _SET_HEADER.unpack_from(data, pos)
            if set_len < 4:
                return self._drop("bad_set_length")
            if pos + set_len > end:
                return self._drop("set_past_end")
            sets.append((set_id, pos + 4, pos + set_len))
            pos += set_len

        key = (exporter, version, domain)
        stream = self.streams.get(key)
        if stream is None:
            stream = self._new_stream(key)
        else:
            self.streams.move_to_end(key)
        stream.datagrams += 1

        if version == 9:
            t_set, o_set = 0, 1
            uptime_ref, base_ms = sys_uptime, unix_secs * 1000.0
        else:
            t_set, o_set = 2, 3
            uptime_ref = -1
            base_ms = stream.init_ms if stream.init_ms is not None else float("nan")

        data_records = 0
        counted = True
        for set_id, a, b in sets:
            if set_id >= 256:
                layout = stream.templates.get(set_id)
                if layout is None:
                    self._drop("unknown_template")
                    counted = False
                    continue
                got = self._data_set(stream, layout, data, a, b, export_s, uptime_ref, base_ms)
                if got < 0:
                    counted = False
                    continue
                data_records += got
                if layout.is_options and version == 10:
                    # init time may just have arrived: later sets of this datagram use it
                    base_ms = stream.init_ms if stream.init_ms is not None else float("nan")
            elif set_id == t_set:
                if version == 9:
                    self._v9_templates(stream, data, a, b)
                else:
                    self._ipfix_templates(stream, data, a, b, options=False)
            elif set_id == o_set:
                if version == 9:
                    self._v9_options_templates(stream, data, a, b)
                else:
                    self._ipfix_templates(stream, data, a, b, options=True)
            else:
                self._drop("reserved_set")

        self._sequence(stream, version, seq, data_records if counted else None)
        return True

    def _new_stream(self, key: StreamKey) -> StreamState:
        """Make room (LRU, within the exporter's quota first), then open a stream."""
        own = [k for k in self.streams if k[0] == key[0]]
        if len(own) >= self.max_streams_per_exporter:
            self._evict(own)
        elif len(self.streams) >= self.max_streams:
            self._evict(list(self.streams))
        stream = self.streams[key] = StreamState(key)
        return stream

    def _evict(self, candidates: list[StreamKey]) -> None:
        """Forget the least recently used stream, preferring one that holds no template."""
        victim = next((k for k in candidates if not self.streams[k].templates), candidates[0])
        gone = self.streams.pop(victim)
        self._release(victim[0], gone.templates.values())
        self._drop("stream_evicted")

    def _release(self, exporter: str, layouts: Iterable[RecordLayout]) -> None:
        self._template_bytes[exporter] -= sum(template_cost_bytes(lay.template) for lay in layouts)
        if self._template_bytes[exporter] <= 0:
            del self._template_bytes[exporter]

    def template_bytes_by_exporter(self) -> dict[str, int]:
        """Estimated template memory held per exporter address."""
        return dict(self._template_bytes)

    def _drop(self, reason: str, count: int = 1) -> bool:
        assert reason in DROP_REASONS, reason
        self.drops[reason] += count
        return False

    def _sequence(self, stream: StreamState, version: int, seq: int, records: int | None) -> None:
        """v9 sequence numbers count export packets, IPFIX ones count data records."""
        if stream.next_seq is not None:
            diff = (seq - stream.next_seq) & MASK32
            if diff:
                if diff < 0x8000_0000:
                    stream.sequence_gaps += 1
                    stream.missing += diff
                else:
                    stream.sequence_resets += 1  # restart or reordering: resynchronise
        if version == 9:
            stream.next_seq = (seq + 1) & MASK32
        elif records is not None:
            stream.next_seq = (seq + records) & MASK32
        else:
            stream.next_seq = None  # undecodable sets: we cannot tell what to expect

    # ------------------------------------------------------------------ templates
    def _add_template(self, stream: StreamState, template: Template) -> None:
        if len(template.fields) > self.max_fields:
            self._drop("template_too_many_fields")
            return
        old = stream.templates.get(template.template_id)
        if old is None and len(stream.templates) >= self.max_templates:
            self._drop("template_limit")
            return
        if old is not None and old.template == template:
            return  # refresh
        exporter = stream.key[0]
        cost = template_cost_bytes(template)
        if old is not None:
            cost -= template_cost_bytes(old.template)
        if self._template_bytes[exporter] + cost > self.max_template_bytes_per_exporter:
            self._drop("template_bytes_limit")
            return
        while sum(self._template_bytes.values()) + cost > self.max_template_bytes:
            others = [k for k in self.streams if k[0] != exporter and self.streams[k].templates]
            if not others:
                self._drop("template_bytes_limit")
                return
            self._evict(others)  # least recently used stream of another exporter
        if old is not None:
            stream.template_changes += 1
        self._template_bytes[exporter] += cost
        stream.templates[template.template_id] = compile_layout(template)

    def _fields_v9(self, data: bytes, p: int, count: int) -> tuple[FieldSpec, ...] | None:
        fields = []
        for i in range(count):
            ie, length = _FIELD.unpack_from(data, p + 4 * i)
            if length == 0:
                self._drop("zero_length_field")
                return None
            fields.append(FieldSpec(ie, length))
        return tuple(fields)

    def _v9_templates(self, stream: StreamState, data: bytes, p: int, end: int) -> None:
        while end - p >= 4:
            tid, count = _FIELD.unpack_from(data, p)
            p += 4
            if count == 0 or end - p < 4 * count:
                self._drop("bad_template")
                return
            if count > self.max_fields:  # refused unread: no per-field work for a flood
                self._drop("template_too_many_fields")
                p += 4 * count
                continue
            fields = self._fields_v9(data, p, count)
            p += 4 * count
            if tid < 256:
                self._drop("bad_template")
            elif fields is not None:
                self._add_template(stream, Template(tid, fields))

    def _v9_options_templates(self, stream: StreamState, data: bytes, p: int, end: int) -> None:
        while end - p >= 6:
            tid, scope_len, option_len = _V9_OPTIONS.unpack_from(data, p)
            p += 6
            if scope_len % 4 or option_len % 4 or end - p < scope_len + option_len:
                self._drop("bad_template")
                return
            count = (scope_len + option_len) // 4
            if count == 0:
                self._drop("bad_template")
                return
            if count > self.max_fields:
                self._drop("template_too_many_fields")
                p += 4 * count
                continue
            fields = self._fields_v9(data, p, count)
            p += 4 * count
            if tid < 256:
                self._drop("bad_template")
            elif fields is not None:
                self._add_template(
                    stream, Template(tid, fields, scope_count=scope_len // 4, is_options=True)
                )

    def _ipfix_templates(
        self, stream: StreamState, data: bytes, p: int, end: int, *, options: bool
    ) -> None:
        set_id = 3 if options else 2
        while end - p >= 4:
            tid, count = _FIELD.unpack_from(data, p)
            p += 4
            if count == 0:  # withdrawal (RFC 7011 §8.1)
                self._withdraw(stream, tid, set_id)
                continue
            scope = 0
            if options:
                if end - p < 2:
                    self._drop("bad_template")
                    return
                scope = (data[p] << 8) | data[p + 1]
                p += 2
                if not 1 <= scope <= count:
                    self._drop("bad_template")
                    return
            if count > self.max_fields:
                # refused unread (its length depends on every field's E bit): the rest of
                # the set goes with it, but no per-field work is spent on a flood
                self._drop("template_too_many_fields")
                return
            fields: list[FieldSpec] = []
            for _ in range(count):
                if end - p < 4:
                    self._drop("bad_template")
                    return
                ie, length = _FIELD.unpack_from(data, p)
                p += 4
                enterprise = 0
                if ie & 0x8000:
                    if end - p < 4:
                        self._drop("bad_template")
                        return
                    enterprise = int.from_bytes(data[p : p + 4], "big")
                    ie &= 0x7FFF
                    p += 4
                fields.append(FieldSpec(ie, length, enterprise))
            if tid < 256:
                self._drop("bad_template")
            elif any(f.length == 0 for f in fields):
                self._drop("zero_length_field")
            else:
                self._add_template(
                    stream, Template(tid, tuple(fields), scope_count=scope, is_options=options)
                )

    def _withdraw(self, stream: StreamState, tid: int, set_id: int) -> None:
        if tid == set_id:  # all templates of this kind
            want_options = set_id == 3
            for t in [
                t for t, lay in stream.templates.items() if lay.template.is_options == want_options
            ]:
                self._release(stream.key[0], [stream.templates.pop(t)])
            stream.template_changes += 1
        elif tid >= 256:
            gone = stream.templates.pop(tid, None)
            if gone is None:
                self._drop("withdraw_unknown")
            else:
                self._release(stream.key[0], [gone])
                stream.template_changes += 1
        else:
            self._drop("bad_template")

    # ------------------------------------------------------------------ data
    def _data_set(
        self,
        stream: StreamState,
        layout: RecordLayout,
        data: bytes,
        a: int,
        b: int,
        export_s: float,
        uptime_ref: int,
        base_ms: float,
    ) -> int:
        """Queue (flows) or apply (options) one data set; returns its record count, -1 if bad."""
        length = layout.record_length
        if layout.is_options:
            return self._options_data(stream, layout, data, a, b)
        pending = self._pending.get(id(layout))
        if pending is None:
            pending = self._pending[id(layout)] = _Pending(layout)
        if length is not None:
            count = (b - a) // length
            if count == 0:
                return 0
            pending.views.append(memoryview(data)[a : a + count * length])
        else:
            try:
                cols, count = walk_variable(layout, data, a, b)
            except RecordError:
                self._drop("bad_record")
                return -1
            if count == 0:
                return 0
            if pending.slow is None:
                pending.slow = {name: [] for name in cols}
            for name, values in cols.items():
                pending.slow[name].extend(values)
        pending.chunks.append((count, export_s, uptime_ref, base_ms, stream.sampling))
        stream.records += count
        self.records += count
        self._pending_records += count
        return count

    def _options_data(
        self, stream: StreamState, layout: RecordLayout, data: bytes, a: int, b: int
    ) -> int:
        length = layout.record_length
        cols: dict[str, U64Array] | dict[str, list[int]]
        if length is not None:
            count = (b - a) // length
            cols = decode_fixed(layout, bytes(data[a : a + count * length]), count) if count else {}
        else:
            try:
                cols, count = walk_variable(layout, data, a, b)
            except RecordError:
                self._drop("bad_record")
                return -1
        if count:
            if len(cols.get("init_ms", ())):
                stream.init_ms = float(cols["init_ms"][-1])
            rate: int | None = None
            if len(cols.get("sampling", ())):
                rate = int(cols["sampling"][-1])
            elif len(cols.get("sampling_interval", ())) and len(cols.get("sampling_space", ())):
                interval = int(cols["sampling_interval"][-1])
                space = int(cols["sampling_space"][-1])
                rate = round((interval + space) / interval) if interval else 0
            if rate is not None:
                if rate >= 1:
                    stream.sampling = rate
                else:
                    self._drop("bad_sampling")
        return count

    # ------------------------------------------------------------------ flush
    @property
    def pending_records(self) -> int:
        """Records queued since the last flush."""
        return self._pending_records

    def flush(self) -> FlowBatch:
        """Decode everything queued, in one vectorised step per template."""
        pending, self._pending = self._pending, {}
        self._pending_records = 0
        batches = []
        for p in pending.values():
            try:
                batch = self._decode_pending(p)
            except Exception:  # one bad data set must not cost the others: retry one by one
                batch = FlowBatch.concat(self._decode_each(p))
            if batch is not None:
                batches.append(batch)
        return FlowBatch.concat(batches)

    def _decode_each(self, p: _Pending) -> list[FlowBatch]:
        """Decode a pending batch data set by data set, dropping (and counting) bad ones."""
        out: list[FlowBatch] = []
        start = 0
        for i, chunk in enumerate(p.chunks):
            count = chunk[0]
            one = _Pending(p.layout, chunks=[chunk])
            if p.slow is not None:
                one.slow = {k: v[start : start + count] for k, v in p.slow.items()}
            else:
                one.views = [p.views[i]]
            start += count
            try:
                batch = self._decode_pending(one)
            except Exception:
                self._drop("undecodable_records", count)
                continue
            if batch is not None:
                out.append(batch)
        return out

    def _decode_pending(self, p: _Pending) -> FlowBatch | None:
        layout = p.layout
        meta = np.asarray(p.chunks, dtype=np.float64).reshape(-1, 5)
        counts = meta[:, 0].astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            return None
        names = layout.names
        if not names & _ADDRESS_NAMES:
            self.records_without_addresses += total
            self._drop("no_addresses", total)
            return None
        if p.slow is not None:
            cols = {k: np.asarray(v, dtype=np.uint64) for k, v in p.slow.items()}
        else:
            buf = p.views[0] if len(p.views) == 1 else b"".join(p.views)
            cols = decode_fixed(layout, buf, total)
        export_s = np.repeat(meta[:, 1], counts)
        sampling = np.fromiter((ch[4] for ch in p.chunks), np.uint64, len(p.chunks))

        # a one-sided record keeps its side; the absent one is "::" (nfdump: 0.0.0.0)
        src_hi, src_lo = _address(cols, names, "src", total)
        dst_hi, dst_lo = _address(cols, names, "dst", total)
        zeros = np.zeros(total, dtype=np.uint64)
        octets = cols.get("bytes", zeros)
        packets = cols.get("packets", zeros)
        factor = None
        saturated = np.zeros(total, dtype=np.bool_)
        if (sampling != 1).any():
            factor = np.repeat(sampling, counts)
            octets, o_over = _scale(octets, factor)
            packets, p_over = _scale(packets, factor)
            saturated = o_over | p_over
        time_s = self._times(cols, names, meta, counts, export_s)
        batch = FlowBatch(src_hi, src_lo, dst_hi, dst_lo, octets, packets, time_s)
        if "rbytes" in names or "rpackets" in names:  # RFC 5103 biflow: the reverse half
            rbytes = cols.get("rbytes", zeros)
            rpackets = cols.get("rpackets", zeros)
            if factor is not None:
                rbytes, rb_over = _scale(rbytes, factor)
                rpackets, rp_over = _scale(rpackets, factor)
                saturated = saturated | rb_over | rp_over
            keep = (rbytes > 0) | (rpackets > 0)
            if keep.any():
                reverse = FlowBatch(
                    dst_hi[keep],
                    dst_lo[keep],
                    src_hi[keep],
                    src_lo[keep],
                    rbytes[keep],
                    rpackets[keep],
                    time_s[keep],
                )
                batch = FlowBatch.concat([batch, reverse])
        if factor is not None:
            hit = int(saturated.sum())
            if hit:
                self.saturated_records += hit
                self._drop("sampling_saturated", hit)
        return batch

    @staticmethod
    def _times(
        cols: dict[str, U64Array],
        names: frozenset[str],
        meta: npt.NDArray[np.float64],
        counts: npt.NDArray[np.int64],
        export_s: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        """Flow end time in Unix seconds, from whichever time element the template has."""
        for name in ("end_ms", "start_ms"):
            if name in names:
                return cols[name].astype(np.float64) / 1000.0
        for name in ("end_s", "start_s"):
            if name in names:
                return cols[name].astype(np.float64)
        for name in ("end_ntp", "end_ntp_ns"):
            if name in names:
                v = cols[name]
                secs = (v >> np.uint64(32)).astype(np.float64) - NTP_UNIX_OFFSET_S
                return secs + (v & np.uint64(MASK32)).astype(np.float64) / 2.0**32
        for name in ("end_up", "start_up"):
            if name in names:
                up = cols[name]
                ref = np.repeat(meta[:, 2].astype(np.int64), counts)
                base = np.repeat(meta[:, 3], counts)
                v9_ms = base - ((ref.astype(np.uint64) - up) & np.uint64(MASK32)).astype(np.float64)
                ipfix_ms = base + up.astype(np.float64)
                t_ms = np.where(ref >= 0, v9_ms, ipfix_ms)
                return np.where(np.isnan(t_ms), export_s, t_ms / 1000.0)
        if "end_delta_us" in names:
            return export_s - cols["end_delta_us"].astype(np.float64) / 1e6
        return export_s

    # ------------------------------------------------------------------ health
    def stream_stats(self) -> list[StreamStats]:
        """Per-stream counters (sequence gaps, missing packets/records, templates)."""
        return [
            StreamStats(
                exporter=s.key[0],
                version=s.key[1],
                domain=s.key[2],
                datagrams=s.datagrams,
                records=s.records,
                sequence_gaps=s.sequence_gaps,
                missing=s.missing,
                sequence_resets=s.sequence_resets,
                templates=len(s.templates),
            )
            for s in self.streams.values()
        ]


__all__ = ["VARLEN", "Decoder", "FlowBatch", "StreamKey", "StreamState", "StreamStats"]
