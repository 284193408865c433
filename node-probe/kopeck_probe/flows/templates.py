"""Templates and their compiled record layouts (NetFlow v9, RFC 3954; IPFIX, RFC 7011).

A fixed-length template compiles once into a numpy structured dtype over the whole record
(big-endian fields at their offsets, ``itemsize`` = record length), so a data set of any
number of records decodes with one ``np.frombuffer`` and one conversion per wanted column,
never a Python loop per record or field. Templates with IPFIX variable-length fields take
a per-record path that yields the same columns.

Only the information elements kopeck needs are named in the dtype; every other field,
enterprise-specific ones included, is skipped by its offset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

VARLEN = 0xFFFF
"""IPFIX field length announcing a variable-length field (RFC 7011 §7)."""
MAX_TEMPLATE_FIELDS = 256
"""Fields per template we accept (a datagram could announce 16,377); pmacct caps too."""
REVERSE_PEN = 29305
"""Enterprise number of IPFIX reverse information elements (RFC 5103)."""

U64Array = npt.NDArray[np.uint64]

# IE number -> raw column name (first occurrence in a template wins).
# Counters and addresses are standard IANA IPFIX numbers, the same in NetFlow v9.
_FLOW_IES: dict[int, str] = {
    1: "bytes",  # octetDeltaCount / IN_BYTES
    2: "packets",  # packetDeltaCount / IN_PKTS
    8: "src4",  # sourceIPv4Address
    12: "dst4",  # destinationIPv4Address
    27: "src6",  # sourceIPv6Address
    28: "dst6",  # destinationIPv6Address
    153: "end_ms",  # flowEndMilliseconds
    152: "start_ms",  # flowStartMilliseconds
    151: "end_s",  # flowEndSeconds
    150: "start_s",  # flowStartSeconds
    155: "end_ntp",  # flowEndMicroseconds (NTP format)
    157: "end_ntp_ns",  # flowEndNanoseconds (NTP format)
    21: "end_up",  # LAST_SWITCHED / flowEndSysUpTime (ms)
    22: "start_up",  # FIRST_SWITCHED / flowStartSysUpTime (ms)
    159: "end_delta_us",  # flowEndDeltaMicroseconds (before export time)
    34: "sampling",  # SAMPLING_INTERVAL (v9 options)
    50: "sampling",  # FLOW_SAMPLER_RANDOM_INTERVAL (v9 options)
    305: "sampling_interval",  # samplingPacketInterval
    306: "sampling_space",  # samplingPacketSpace
    160: "init_ms",  # systemInitTimeMilliseconds (options)
}
_REVERSE_IES: dict[int, str] = {1: "rbytes", 2: "rpackets"}
_ADDRESS_LENGTHS = {"src4": 4, "dst4": 4, "src6": 16, "dst6": 16}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field specifier of a template: information element, length, enterprise."""

    ie: int
    length: int
    enterprise: int = 0


@dataclass(frozen=True, slots=True)
class Template:
    """A (data or options) template as announced by an exporter."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    scope_count: int = 0
    """Number of scope fields of an options template."""
    is_options: bool = False
    """Options templates describe exporter metadata (sampling, clocks), not flows."""

    @property
    def record_length(self) -> int | None:
        """Bytes per record, or None when a field has variable length."""
        if any(f.length == VARLEN for f in self.fields):
            return None
        return sum(f.length for f in self.fields)

    @property
    def min_record_length(self) -> int:
        """Smallest possible record: fixed fields plus one length octet per variable field."""
        return sum(1 if f.length == VARLEN else f.length for f in self.fields)


@dataclass(frozen=True, slots=True)
class Column:
    """Where one wanted field sits in a record."""

    name: str
    index: int
    """Position among the template's fields."""
    offset: int | None
    """Byte offset in a fixed-length record (None after a variable-length field)."""
    length: int


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """A template compiled for decoding; shared by all identical templates."""

    template: Template
    columns: tuple[Column, ...]
    dtype: np.dtype[np.void] | None
    """Structured dtype over a whole record; None for variable-length templates."""
    names: frozenset[str] = field(default_factory=frozenset)
    record_length: int | None = None
    """Bytes per record (None: variable), precomputed for the per-datagram path."""
    is_options: bool = False


def _wanted(spec: FieldSpec) -> str | None:
    if spec.enterprise == REVERSE_PEN:
        if not (1 <= spec.length <= 8 or spec.length == VARLEN):
            return None  # a "counter" of 9+ fixed octets is not one we can hold
        return _REVERSE_IES.get(spec.ie)
    if spec.enterprise:
        return None
    name = _FLOW_IES.get(spec.ie)
    if name is None:
        return None
    want = _ADDRESS_LENGTHS.get(name)
    if want is not None and spec.length != want:
        return None  # an address of the wrong size is not an address we can read
    if want is None and not (1 <= spec.length <= 8 or spec.length == VARLEN):
        return None  # unsigned integers: reduced-size encoding allows 1..8 octets
    # (a counter sent variable-length is read when its value has at most 8 octets, as
    # reverse counters are; longer is a bad record — never a silent 0)
    return name


def template_cost_bytes(template: Template) -> int:
    """Estimated memory of a kept template and its layout (objects, dtype), for budgets."""
    return 512 + 64 * len(template.fields)


@functools.lru_cache(maxsize=1024)
def compile_layout(template: Template) -> RecordLayout:
    """Compile a template once (cached by its definition, so refreshes cost nothing).

    The cache holds at most 1024 layouts of at most MAX_TEMPLATE_FIELDS fields each."""
    if len(template.fields) > MAX_TEMPLATE_FIELDS:
        raise ValueError(f"template {template.template_id}: more than {MAX_TEMPLATE_FIELDS} fields")
    columns: list[Column] = []
    seen: set[str] = set()
    offset: int | None = 0
    for index, spec in enumerate(template.fields):
        name = _wanted(spec)
        if name is not None and name not in seen:
            seen.add(name)
            columns.append(Column(name, index, offset, spec.length))
        if spec.length == VARLEN or offset is None:
            offset = None
        else:
            offset += spec.length
    dtype: np.dtype[np.void] | None = None
    record_length = template.record_length
    if record_length is not None and record_length > 0:
        names: list[str] = []
        formats: list[object] = []
        offsets: list[int] = []
        for col in columns:
            assert col.offset is not None
            if col.length == 16:
                names += [f"{col.name}_hi", f"{col.name}_lo"]
                formats += [">u8", ">u8"]
                offsets += [col.offset, col.offset + 8]
            elif col.length in (1, 2, 4, 8):
                names.append(col.name)
                formats.append(f">u{col.length}")
                offsets.append(col.offset)
            else:
                names.append(col.name)
                formats.append(("u1", (col.length,)))
                offsets.append(col.offset)
        dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": record_length}
        )
    return RecordLayout(
        template,
        tuple(columns),
        dtype,
        frozenset(c.name for c in columns),
        record_length,
        template.is_options,
    )


def _as_u64(column: npt.NDArray[np.generic]) -> U64Array:
    """A big-endian field view as native uint64 (odd sizes combined octet by octet)."""
    if column.ndim == 2:  # ('u1', (n,)) for 3-, 5-, 6-, 7-octet integers
        out = np.zeros(column.shape[0], dtype=np.uint64)
        for i in range(column.shape[1]):
            out = (out << np.uint64(8)) | column[:, i].astype(np.uint64)
        return out
    return column.astype(np.uint64)


def decode_fixed(layout: RecordLayout, buf: bytes | memoryview, count: int) -> dict[str, U64Array]:
    """Decode ``count`` consecutive records of a fixed-length template in one step."""
    assert layout.dtype is not None
    records = np.frombuffer(buf, dtype=layout.dtype, count=count)
    out: dict[str, U64Array] = {}
    for col in layout.columns:
        if col.length == 16:
            out[f"{col.name}_hi"] = records[f"{col.name}_hi"].astype(np.uint64)
            out[f"{col.name}_lo"] = records[f"{col.name}_lo"].astype(np.uint64)
        else:
            out[col.name] = _as_u64(records[col.name])
    return out


class RecordError(ValueError):
    """A variable-length record runs past the end of its set."""


def walk_variable(
    layout: RecordLayout, data: bytes | memoryview, start: int, end: int
) -> tuple[dict[str, list[int]], int]:
    """Decode the records of a variable-length template between ``start`` and ``end``.

    Returns the wanted columns as lists and the number of records; trailing bytes shorter
    than the template's smallest record are padding (RFC 7011 §3.3.1).
    """
    wanted = {c.index: c for c in layout.columns}
    cols: dict[str, list[int]] = {}
    for col in layout.columns:
        if col.length == 16:
            cols[f"{col.name}_hi"] = []
            cols[f"{col.name}_lo"] = []
        else:
            cols[col.name] = []
    fields = layout.template.fields
    minimum = max(1, layout.template.min_record_length)
    pos = start
    count = 0
    while end - pos >= minimum:
        for index, spec in enumerate(fields):
            length = spec.length
            if length == VARLEN:
                if pos >= end:
                    raise RecordError("variable-length field past the end of the set")
                length = data[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > end:
                        raise RecordError("variable-length field past the end of the set")
                    length = (data[pos] << 8) | data[pos + 1]
                    pos += 2
            if pos + length > end:
                raise RecordError("field past the end of the set")
            hit = wanted.get(index)
            if hit is not None:
                if hit.length != 16 and length > 8:
                    raise RecordError("integer field longer than 8 octets")
                if hit.length == 16:
                    cols[f"{hit.name}_hi"].append(int.from_bytes(data[pos : pos + 8], "big"))
                    cols[f"{hit.name}_lo"].append(int.from_bytes(data[pos + 8 : pos + 16], "big"))
                else:
                    cols[hit.name].append(int.from_bytes(data[pos : pos + length], "big"))
            pos += length
        count += 1
    return cols, count
