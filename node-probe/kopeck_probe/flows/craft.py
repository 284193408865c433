"""Build NetFlow v9 and IPFIX datagrams byte by byte, for tests and the benchmark.

Deliberately independent of the decoder (struct only, no shared tables) so that a test
crafting a datagram checks the decoder against the RFC layouts, not against itself.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Field = tuple[int, int] | tuple[int, int, int]
"""(ie, length) or (ie, length, enterprise number)."""


def field_specs(fields: Sequence[Field], *, ipfix: bool) -> bytes:
    """Field specifiers; IPFIX enterprise fields get the E bit and their 4-octet PEN."""
    out = b""
    for f in fields:
        ie, length = f[0], f[1]
        pen = f[2] if len(f) == 3 else 0
        if pen:
            if not ipfix:
                raise ValueError("NetFlow v9 has no enterprise fields")
            out += struct.pack("!HHI", ie | 0x8000, length, pen)
        else:
            out += struct.pack("!HH", ie, length)
    return out


def pad4(body: bytes) -> bytes:
    """Pad a set body to a 4-octet boundary (the padding RFC 3954 §5.3 / 7011 §3.3.1 allow)."""
    return body + b"\0" * (-len(body) % 4)


def set_(set_id: int, body: bytes, *, pad: bool = False) -> bytes:
    """A set (IPFIX) / flowset (v9): id, length, body."""
    if pad:
        body = pad4(body)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def template_record(template_id: int, fields: Sequence[Field], *, ipfix: bool) -> bytes:
    """A template record."""
    return struct.pack("!HH", template_id, len(fields)) + field_specs(fields, ipfix=ipfix)


def ipfix_options_template_record(
    template_id: int, scope: Sequence[Field], options: Sequence[Field]
) -> bytes:
    """An IPFIX options template record (scope fields first)."""
    fields = [*scope, *options]
    return struct.pack("!HHH", template_id, len(fields), len(scope)) + field_specs(
        fields, ipfix=True
    )


def v9_options_template_record(
    template_id: int, scope: Sequence[Field], options: Sequence[Field]
) -> bytes:
    """A NetFlow v9 options template record (lengths in octets)."""
    return (
        struct.pack("!HHH", template_id, 4 * len(scope), 4 * len(options))
        + field_specs(scope, ipfix=False)
        + field_specs(options, ipfix=False)
    )


def withdrawal(template_id: int) -> bytes:
    """An IPFIX template withdrawal record (field count 0)."""
    return struct.pack("!HH", template_id, 0)


def varlen(value: bytes) -> bytes:
    """An IPFIX variable-length field: 1-octet length, or 255 + 2-octet length."""
    if len(value) < 255:
        return bytes([len(value)]) + value
    return b"\xff" + struct.pack("!H", len(value)) + value


def ipfix(sets: Sequence[bytes], *, seq: int, domain: int = 0, export_s: int = 0) -> bytes:
    """An IPFIX message (version 10) around sets."""
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, seq, domain) + body


def v9(
    sets: Sequence[bytes],
    *,
    seq: int,
    source_id: int = 0,
    unix_s: int = 0,
    uptime_ms: int = 0,
    count: int = 0,
) -> bytes:
    """A NetFlow v9 export packet around flowsets."""
    return struct.pack("!HHIIII", 9, count, uptime_ms, unix_s, seq, source_id) + b"".join(sets)


# A typical IPFIX flow template (softflowd-like, 13 fields, 45 octets per record).
TYPICAL_FIELDS: tuple[Field, ...] = (
    (8, 4),  # sourceIPv4Address
    (12, 4),  # destinationIPv4Address
    (7, 2),  # sourceTransportPort
    (11, 2),  # destinationTransportPort
    (4, 1),  # protocolIdentifier
    (6, 1),  # tcpControlBits
    (5, 1),  # ipClassOfService
    (10, 4),  # ingressInterface
    (14, 4),  # egressInterface
    (1, 8),  # octetDeltaCount
    (2, 8),  # packetDeltaCount
    (152, 8),  # flowStartMilliseconds
    (153, 8),  # flowEndMilliseconds
)


def typical_record(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    octets: int,
    packets: int,
    start_ms: int,
    end_ms: int,
) -> bytes:
    """One record of TYPICAL_FIELDS."""
    return struct.pack(
        "!IIHHBBBIIQQQQ",
        src,
        dst,
        sport,
        dport,
        6,
        0x18,
        0,
        1,
        2,
        octets,
        packets,
        start_ms,
        end_ms,
    )
