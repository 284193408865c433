"""Structured fuzzing of the flow decoder: hostile datagrams must cost nothing but themselves.

Every case is a few datagrams fed to one long-lived :class:`Decoder` (so state — streams,
templates, budgets — piles up across cases the way it does in a collector), then a flush:

- **hostile** datagrams from a handful of attacker addresses: valid NetFlow v9 / IPFIX
  messages built with ``flows.craft`` (templates of random shape, options templates with
  sampling and clocks, data sets, padding, enterprise and variable-length fields,
  withdrawals, template storms, huge templates, many domains), then mutated — bit flips,
  interesting bytes, truncation, extension, header/set/field-count/field-length lies,
  set-id confusion, splicing, version swaps;
- **clean** datagrams from one honest exporter, of random shapes too, whose records carry
  addresses no hostile datagram uses; some clean datagrams have one data set in the middle
  corrupted (payload flips, unknown template id) while the sets around it stay intact.

Checked after every datagram and flush:

- nothing raises (``exceptions``);
- the template budgets hold: bytes held per exporter <= its budget, in all <= the total,
  and the bytes tracked equal the bytes of the templates actually held; streams, streams
  per exporter, templates per stream and fields per template within their bounds
  (``budget_violations``);
- the honest exporter's records — every intact set — decode to exactly the octets and
  packets it encoded, per (source, destination) (``oracle_violations``);
- no queued set fails to decode at flush (``undecodable_records``: the per-set retry
  contains such a failure, but reaching it from the wire is a decoder bug).

No fuzzing library is needed (hypothesis / atheris are not dependencies): the generator is
seeded, so a case is reproduced from ``--seed`` and its number.

    .venv/bin/python bench/fuzz_flows.py [--seconds 300 | --cases N] [--seed 1] \
        [--out bench/results/fuzz_flows.json] [--crash-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "node-probe")]

from kopeck_probe.flows import craft  # noqa: E402
from kopeck_probe.flows.decoder import Decoder, FlowBatch  # noqa: E402
from kopeck_probe.flows.templates import VARLEN, template_cost_bytes  # noqa: E402

CLEAN = "192.0.2.1"
HOSTILE = ("203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5")
REVERSE_PEN = 29305
INTERESTING_16 = (0, 1, 2, 3, 4, 5, 8, 255, 256, 257, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
BOUNDS = {
    "max_streams": 16,
    "max_templates_per_stream": 32,
    "max_streams_per_exporter": 4,
    "max_fields_per_template": 256,
    "max_template_bytes_per_exporter": 64 << 10,
    "max_template_bytes": 256 << 10,
}
"""Small enough that the hostile exporters hit every bound within a few hundred cases."""
POOL = 256
REFRESH = 0.2
"""Seed pools: a fifth of the cases regenerate one hostile and one honest seed."""

Field = craft.Field
Key = tuple[int, int, int, int]
"""(src_hi, src_lo, dst_hi, dst_lo) as the decoder's FlowBatch words."""
V4_MAPPED = 0x0000_FFFF_0000_0000


# ---------------------------------------------------------------------- shapes and records
@dataclass
class Shape:
    """A template and how to fill its records; roles name what each field carries."""

    tid: int
    fields: list[Field]
    roles: list[str | None]
    ipfix: bool

    @property
    def biflow(self) -> bool:
        return "rbytes" in self.roles


FILLERS: tuple[Field, ...] = (
    (7, 2), (11, 2), (4, 1), (6, 1), (5, 1), (10, 4), (14, 4), (152, 8), (153, 8),
    (21, 4), (22, 4), (150, 4), (151, 4), (61, 1), (89, 4), (136, 1),
)  # fmt: skip


def random_shape(rng: random.Random, tid: int, *, ipfix: bool) -> Shape:
    """A flow template with both addresses, octets and packets among random other fields."""
    v6 = rng.random() < 0.3
    fields: list[Field] = [(27, 16) if v6 else (8, 4), (28, 16) if rng.random() < 0.3 else (12, 4)]
    roles: list[str | None] = ["src6" if v6 else "src4", "dst6" if fields[1][0] == 28 else "dst4"]
    for role, ie in (("bytes", 1), ("packets", 2)):
        widths = (8, 8, 4, 4, 2, 3, 5, 6, 7, 1, VARLEN) if ipfix else (8, 8, 4, 4, 2, 3, 5, 6, 7, 1)
        fields.append((ie, rng.choice(widths)))
        roles.append(role)
    for _ in range(rng.randrange(0, 10)):
        r = rng.random()
        if ipfix and r < 0.15:
            pen = rng.randrange(1, 2**32)
            if pen == REVERSE_PEN:
                pen += 1
            fields.append((rng.randrange(1, 0x8000), rng.randrange(1, 17), pen))
        elif ipfix and r < 0.3:
            pen = rng.choice((0, 0, rng.randrange(1, 2**32)))
            if pen == REVERSE_PEN:
                pen += 1
            fields.append((82, VARLEN) if not pen else (rng.randrange(1, 0x8000), VARLEN, pen))
        else:
            fields.append(rng.choice(FILLERS))
        roles.append(None)
    if ipfix and rng.random() < 0.2:  # RFC 5103 biflow
        width = VARLEN if rng.random() < 0.3 else 8
        fields += [(1, width, REVERSE_PEN), (2, width, REVERSE_PEN)]
        roles += ["rbytes", "rpackets"]
    order = list(range(len(fields)))
    rng.shuffle(order)
    return Shape(tid, [fields[i] for i in order], [roles[i] for i in order], ipfix)


def encode_record(rng: random.Random, shape: Shape, values: dict[str, int]) -> bytes:
    """One record of ``shape``: the given role values, random bytes elsewhere."""
    out = bytearray()
    for f, role in zip(shape.fields, shape.roles, strict=True):
        length = f[1]
        if role is None:
            if length == VARLEN:
                n = rng.choice((0, 1, 3, 16, 40, 254, 255, 300))
                out += craft.varlen(rng.randbytes(n))
            else:
                out += rng.randbytes(length)
            continue
        v = values[role]
        if length == VARLEN:
            n = max(1, (v.bit_length() + 7) // 8)
            out += craft.varlen(v.to_bytes(n, "big"))
        else:
            out += v.to_bytes(length, "big")
    return bytes(out)


def counter_width(shape: Shape, role: str) -> int:
    length = shape.fields[shape.roles.index(role)][1]
    return 8 if length == VARLEN else length


def address_words(role_kind: str, value: int) -> tuple[int, int]:
    if role_kind == "4":
        return 0, V4_MAPPED | value
    return value >> 64, value & (2**64 - 1)


@dataclass
class Expected:
    """What the honest exporter's intact sets must decode to."""

    totals: Counter[Key] = field(default_factory=Counter)
    packets: Counter[Key] = field(default_factory=Counter)
    records: Counter[Key] = field(default_factory=Counter)

    def add(self, key: Key, octets: int, packets: int) -> None:
        self.totals[key] += octets
        self.packets[key] += packets
        self.records[key] += 1

    def merge(self, other: Expected) -> None:
        self.totals.update(other.totals)
        self.packets.update(other.packets)
        self.records.update(other.records)


def records(
    rng: random.Random, shape: Shape, n: int, addr: Callable[[bool], int], expected: Expected | None
) -> bytes:
    """n records of shape; with ``expected``, what they must count is added to it."""
    out = b""
    src_kind = "src4" if "src4" in shape.roles else "src6"
    dst_kind = "dst4" if "dst4" in shape.roles else "dst6"
    for _ in range(n):
        values = {
            src_kind: addr(src_kind.endswith("6")),
            dst_kind: addr(dst_kind.endswith("6")),
        }
        for role in ("bytes", "packets", "rbytes", "rpackets"):
            if role in shape.roles:
                w = counter_width(shape, role)
                values[role] = rng.choice((0, 1, rng.randrange(2 ** (8 * w)), 2 ** (8 * w) - 1))
        out += encode_record(rng, shape, values)
        if expected is not None:
            s = address_words(src_kind[-1], values[src_kind])
            d = address_words(dst_kind[-1], values[dst_kind])
            expected.add((*s, *d), values["bytes"], values["packets"])
            if shape.biflow and (values["rbytes"] or values["rpackets"]):
                expected.add((*d, *s), values["rbytes"], values["rpackets"])
    return out


def template_set(shapes: list[Shape], *, ipfix: bool) -> bytes:
    body = b"".join(craft.template_record(s.tid, s.fields, ipfix=ipfix) for s in shapes)
    return craft.set_(2 if ipfix else 0, body)


def message(rng: random.Random, sets: list[bytes], *, ipfix: bool, domain: int) -> bytes:
    seq = rng.randrange(2**32)
    if ipfix:
        return craft.ipfix(sets, seq=seq, domain=domain, export_s=rng.randrange(2**32))
    return craft.v9(
        sets, seq=seq, source_id=domain, unix_s=rng.randrange(2**32), uptime_ms=rng.randrange(2**32)
    )


# ---------------------------------------------------------------------- honest exporter
def clean_address(rng: random.Random, v6: bool) -> int:
    """198.18.0.0/15 or 2001:db8:c1ea::/48 — never used by the hostile generator."""
    if v6:
        return (0x2001_0DB8_C1EA << 80) | rng.randrange(2**80)
    return 0xC612_0000 | rng.randrange(2**17)


def clean_datagram(rng: random.Random, expected: Expected, stats: Counter[str]) -> bytes:
    """An honest message: its templates, then data sets (some padded); sometimes one data
    set in the middle is corrupted without touching the framing (not expected)."""
    ipfix = rng.random() < 0.7
    shapes = [random_shape(rng, 256 + i, ipfix=ipfix) for i in range(rng.randrange(1, 4))]
    sets = [template_set(shapes, ipfix=ipfix)]
    corrupt_at = rng.randrange(1, 4) if rng.random() < 0.3 else -1
    for i in range(rng.randrange(1, 5)):
        shape = rng.choice(shapes)
        n = rng.randrange(1, 12)
        if i == corrupt_at:
            stats["clean_corrupted_set"] += 1
            body = records(rng, shape, n, lambda v6: rng.randrange(2**128 if v6 else 2**32), None)
            if rng.random() < 0.5:
                body = flip_bits(rng, body, rng.randrange(1, 16))
                tid = shape.tid
            else:
                tid = rng.randrange(300, 0x10000)  # a template this exporter never sent
            sets.append(craft.set_(tid, body))
        else:
            sets.append(
                craft.set_(
                    shape.tid,
                    records(rng, shape, n, lambda v6: clean_address(rng, v6), expected),
                    pad=rng.random() < 0.5,
                )
            )
    return message(rng, sets, ipfix=ipfix, domain=rng.randrange(3))


# ---------------------------------------------------------------------- hostile seeds
def hostile_address(rng: random.Random, v6: bool) -> int:
    if v6:
        return (0xFD00 << 112) | rng.randrange(2**112)
    return 0x0A00_0000 | rng.randrange(2**24)


def options_sets(rng: random.Random, ipfix: bool, tid: int) -> list[bytes]:
    """An options template (sampling and/or clock) and a data set of it."""
    if ipfix:
        kind = rng.choice(("rate", "interval", "init"))
        if kind == "rate":
            opts: list[Field] = [(34, rng.choice((1, 2, 4, 8)))]
        elif kind == "interval":
            opts = [(305, 4), (306, 4)]
        else:
            opts = [(160, 8)]
        scope: list[Field] = [(149, 4)]
        tpl = craft.set_(3, craft.ipfix_options_template_record(tid, scope, opts))
    else:
        opts = [(rng.choice((34, 50)), rng.choice((1, 2, 4)))]
        scope = [(1, 4)]
        tpl = craft.set_(1, craft.v9_options_template_record(tid, scope, opts))
    body = b""
    for _ in range(rng.randrange(1, 3)):
        body += rng.randbytes(4)
        for _, length in opts:
            body += rng.choice((0, 1, 2, 100, 2**64 - 1, rng.randrange(2**64))).to_bytes(8, "big")[
                -length:
            ]
    return [tpl, craft.set_(tid, body, pad=rng.random() < 0.3)]


def hostile_seed(rng: random.Random, stats: Counter[str]) -> list[bytes]:
    """One or more valid messages of the attacker, before mutation."""
    ipfix = rng.random() < 0.6
    r = rng.random()
    domain = rng.randrange(8)
    if r < 0.08:  # template redefinition storm: the same ids, new shapes, every message
        stats["seed_redefinition_storm"] += 1
        out = []
        for _ in range(rng.randrange(2, 6)):
            shapes = [
                random_shape(rng, 256 + rng.randrange(40), ipfix=ipfix)
                for _ in range(rng.randrange(5, 40))
            ]
            out.append(
                message(rng, [template_set(shapes, ipfix=ipfix)], ipfix=ipfix, domain=domain)
            )
        return out
    if r < 0.12:  # observation-domain storm
        stats["seed_domain_storm"] += 1
        shape = random_shape(rng, 256, ipfix=ipfix)
        return [
            message(
                rng, [template_set([shape], ipfix=ipfix)], ipfix=ipfix, domain=rng.randrange(2**32)
            )
            for _ in range(rng.randrange(4, 12))
        ]
    if r < 0.16:  # templates near, at and past the field bound
        stats["seed_huge_template"] += 1
        n = rng.choice((255, 256, 257, 300, 1000, 16000))
        fields: list[Field] = [(8, 4), (12, 4), (1, 8)] + [
            (1000 + i % 30000, 1) for i in range(n - 3)
        ]
        body = craft.template_record(256 + rng.randrange(100), fields, ipfix=ipfix)
        return [
            message(rng, [craft.set_(2 if ipfix else 0, body)], ipfix=ipfix, domain=domain)[:65535]
        ]
    stats["seed_mixed"] += 1
    shapes = [
        random_shape(rng, 256 + rng.randrange(64), ipfix=ipfix) for _ in range(rng.randrange(1, 4))
    ]
    sets: list[bytes] = [template_set(shapes, ipfix=ipfix)]
    if rng.random() < 0.4:
        sets += options_sets(rng, ipfix, 256 + rng.randrange(64, 128))
    for _ in range(rng.randrange(0, 5)):
        shape = rng.choice(shapes)
        sets.append(
            craft.set_(
                shape.tid,
                records(
                    rng, shape, rng.randrange(0, 20), lambda v6: hostile_address(rng, v6), None
                ),
                pad=rng.random() < 0.4,
            )
        )
    if ipfix and rng.random() < 0.15:
        tid = rng.choice((2, 3, rng.randrange(256, 320), rng.randrange(0, 256)))
        sets.append(craft.set_(rng.choice((2, 3)), craft.withdrawal(tid)))
    if rng.random() < 0.1:
        rng.shuffle(sets)
    return [message(rng, sets, ipfix=ipfix, domain=domain)]


# ---------------------------------------------------------------------- mutations
def flip_bits(rng: random.Random, data: bytes, k: int) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(k):
        i = rng.randrange(len(b) * 8)
        b[i >> 3] ^= 1 << (i & 7)
    return bytes(b)


def set_offsets(data: bytes) -> list[int]:
    """Offsets of set headers as the framing says (stops where it breaks)."""
    pos = 20 if data[:2] == b"\x00\x09" else 16
    out = []
    while pos + 4 <= len(data):
        out.append(pos)
        length = struct.unpack_from("!H", data, pos + 2)[0]
        if length < 4:
            break
        pos += length
    return out


def put16(data: bytes, pos: int, value: int) -> bytes:
    if pos + 2 > len(data):
        return data
    return data[:pos] + struct.pack("!H", value & 0xFFFF) + data[pos + 2 :]


def pick16(rng: random.Random, around: int) -> int:
    return rng.choice((*INTERESTING_16, around - 1, around + 1, around + 4, rng.randrange(0x10000)))


def mutate(rng: random.Random, data: bytes, other: bytes, stats: Counter[str]) -> bytes:
    """One mutation of a message (``other``: a second message to splice from)."""
    kind = rng.choice(MUTATIONS)
    stats[f"mutation_{kind}"] += 1
    n = len(data)
    sets = set_offsets(data) if n >= 16 else []
    if kind == "flip":
        return flip_bits(rng, data, rng.randrange(1, 9))
    if kind == "byte" and n:
        i = rng.randrange(n)
        return data[:i] + bytes([rng.choice(INTERESTING_8)]) + data[i + 1 :]
    if kind == "truncate":
        return data[: rng.randrange(n + 1)]
    if kind == "extend":
        return data + rng.choice((b"\0" * rng.randrange(1, 8), rng.randbytes(rng.randrange(1, 64))))
    if kind == "header_length":
        return put16(data, 2, pick16(rng, n))
    if kind == "set_length" and sets:
        pos = rng.choice(sets)
        return put16(data, pos + 2, pick16(rng, struct.unpack_from("!H", data, pos + 2)[0]))
    if kind == "set_id" and sets:
        pos = rng.choice(sets)
        return put16(
            data,
            pos,
            rng.choice(
                (0, 1, 2, 3, 4, 255, 256, 257, rng.randrange(256, 320), rng.randrange(0x10000))
            ),
        )
    if kind == "field_count" and sets:  # a template record's count (or an options scope)
        pos = rng.choice(sets) + 4 + rng.choice((2, 4))
        return put16(
            data,
            pos,
            rng.choice((0, 1, 255, 256, 257, 4096, 16377, 0xFFFF, rng.randrange(0x10000))),
        )
    if kind == "field_length" and sets:
        pos = rng.choice(sets) + 8 + 4 * rng.randrange(8) + 2
        return put16(data, pos, rng.choice((0, 1, 3, 9, 16, 17, 255, 0xFFFE, 0xFFFF)))
    if kind == "varlen_length" and sets:  # a likely variable-length prefix: 255 + lie
        pos = rng.randrange(sets[0], n) if n > sets[0] else 0
        return data[:pos] + b"\xff" + struct.pack("!H", pick16(rng, 8)) + data[pos + 3 :]
    if kind == "splice":
        o_sets = set_offsets(other) if len(other) >= 16 else []
        if o_sets:
            a = rng.choice(o_sets)
            chunk = other[a : a + struct.unpack_from("!H", other, a + 2)[0]]
            at = rng.choice([*sets, n]) if sets else n
            return data[:at] + chunk + data[at:]
    if kind == "version" and n >= 2:
        return data[:1] + bytes([rng.choice((9, 10, 5, 11))]) + data[2:]
    return flip_bits(rng, data, 1)


MUTATIONS = (
    "flip", "flip", "byte", "truncate", "extend", "header_length", "set_length", "set_id",
    "set_id", "field_count", "field_length", "field_length", "varlen_length", "splice",
    "version",
)  # fmt: skip


def fix_ipfix_length(data: bytes) -> bytes:
    """Make the IPFIX header agree with the datagram, so mutations reach the sets."""
    if len(data) >= 16 and data[:2] == b"\x00\x0a":
        return put16(data, 2, len(data))
    return data


# ---------------------------------------------------------------------- invariants
def budget_violations(d: Decoder) -> list[str]:
    """Every bound the decoder promises, checked against the state it actually holds."""
    out = []
    held: Counter[str] = Counter()
    per_exporter: Counter[str] = Counter()
    for key, s in d.streams.items():
        per_exporter[key[0]] += 1
        if len(s.templates) > d.max_templates:
            out.append(f"stream {key}: {len(s.templates)} templates > {d.max_templates}")
        for lay in s.templates.values():
            held[key[0]] += template_cost_bytes(lay.template)
            if len(lay.template.fields) > d.max_fields:
                out.append(f"stream {key}: template of {len(lay.template.fields)} fields")
    tracked = d.template_bytes_by_exporter()
    if {k: v for k, v in held.items() if v} != {k: v for k, v in tracked.items() if v}:
        out.append(f"template bytes tracked {tracked} != held {dict(held)}")
    for exp, b in held.items():
        if b > d.max_template_bytes_per_exporter:
            out.append(f"{exp}: {b} template bytes > {d.max_template_bytes_per_exporter}")
    if sum(held.values()) > d.max_template_bytes:
        out.append(f"{sum(held.values())} template bytes > {d.max_template_bytes}")
    if len(d.streams) > d.max_streams:
        out.append(f"{len(d.streams)} streams > {d.max_streams}")
    for exp, k in per_exporter.items():
        if k > d.max_streams_per_exporter:
            out.append(f"{exp}: {k} streams > {d.max_streams_per_exporter}")
    return out


def batch_totals(batch: FlowBatch, keys: set[Key]) -> Expected:
    """The batch's records whose (source, destination) is one of ``keys``, summed."""
    got = Expected()
    cols = [
        batch.src_hi.tolist(),
        batch.src_lo.tolist(),
        batch.dst_hi.tolist(),
        batch.dst_lo.tolist(),
    ]
    octets, packets = batch.bytes.tolist(), batch.packets.tolist()
    for i, key in enumerate(zip(*cols, strict=True)):
        if key in keys:
            got.add(key, octets[i], packets[i])
    return got


# ---------------------------------------------------------------------- the run
@dataclass
class Report:
    cases: int = 0
    datagrams: int = 0
    exceptions: int = 0
    budget_violations: int = 0
    oracle_violations: int = 0
    clean_records: int = 0
    """Honest records whose octets and packets were checked."""
    max_state_bytes: int = 0
    slowest_ms: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)


def run(
    seed: int,
    *,
    cases: int | None = None,
    seconds: float | None = None,
    crash_dir: Path | None = None,
    progress: Callable[[Report, Decoder], None] | None = None,
    progress_every_s: float = 60.0,
) -> tuple[Report, Decoder]:
    """Fuzz one decoder for ``cases`` cases or ``seconds`` seconds (``progress`` is called
    every ``progress_every_s`` with the figures so far)."""
    rng = random.Random(seed)
    next_progress = time.monotonic() + progress_every_s
    d = Decoder(**BOUNDS)
    rep = Report()
    deadline = None if seconds is None else time.monotonic() + seconds
    previous = b""

    def fail(kind: str, case: int, detail: str, inputs: list[tuple[str, bytes]]) -> None:
        if len(rep.failures) < 20:
            rep.failures.append({"kind": kind, "case": case, "detail": detail[:500]})
        if crash_dir is not None:
            crash_dir.mkdir(parents=True, exist_ok=True)
            for i, (exp, data) in enumerate(inputs):
                (crash_dir / f"{seed}-{case}-{i}-{exp}.bin").write_bytes(data)

    # Seeds are kept in pools and one is regenerated every few cases, so generating valid
    # messages does not dominate the run while their variety keeps growing.
    hostile_pool = [hostile_seed(rng, rep.stats) for _ in range(POOL)]
    clean_pool = []
    for _ in range(POOL):
        e = Expected()
        clean_pool.append((clean_datagram(rng, e, rep.stats), e))
    while (cases is None or rep.cases < cases) and (
        deadline is None or time.monotonic() < deadline
    ):
        case = rep.cases
        rep.cases += 1
        if progress is not None and case % 256 == 0 and time.monotonic() >= next_progress:
            progress(rep, d)
            next_progress = time.monotonic() + progress_every_s
        if rng.random() < REFRESH:
            hostile_pool[rng.randrange(POOL)] = hostile_seed(rng, rep.stats)
            e = Expected()
            clean_pool[rng.randrange(POOL)] = (clean_datagram(rng, e, rep.stats), e)
        expected = Expected()
        feed: list[tuple[str, bytes]] = []
        for _ in range(rng.randrange(1, 4)):
            exporter = rng.choice(HOSTILE)
            for msg in rng.choice(hostile_pool):
                for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
                    msg = mutate(rng, msg, previous, rep.stats)
                if rng.random() < 0.7:
                    msg = fix_ipfix_length(msg)
                previous = msg
                feed.append((exporter, msg))
        for _ in range(rng.randrange(1, 3)):
            msg, e = rng.choice(clean_pool)
            expected.merge(e)
            feed.insert(rng.randrange(len(feed) + 1), (CLEAN, msg))
        for exporter, msg in feed:
            rep.datagrams += 1
            t0 = time.perf_counter()
            try:
                d.feed(msg, exporter)
            except Exception as exc:  # the decoder promised never to raise
                rep.exceptions += 1
                fail("exception", case, f"feed: {exc!r}", feed)
            rep.slowest_ms = max(rep.slowest_ms, (time.perf_counter() - t0) * 1000)
            bad = budget_violations(d)
            if bad:
                rep.budget_violations += 1
                fail("budget", case, "; ".join(bad), feed)
            rep.max_state_bytes = max(
                rep.max_state_bytes, sum(d.template_bytes_by_exporter().values())
            )
        try:
            batch = d.flush()
        except Exception as exc:
            rep.exceptions += 1
            fail("exception", case, f"flush: {exc!r}", feed)
            continue
        rep.clean_records += sum(expected.records.values())
        got = batch_totals(batch, set(expected.records))
        if got != expected:
            rep.oracle_violations += 1
            fail("oracle", case, f"expected {expected} got {got}", feed)
    return rep, d


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="default 60 when no --cases")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz_flows.json")
    parser.add_argument("--crash-dir", type=Path, default=None, help="write failing inputs here")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None or args.cases is not None else 60.0
    rss0 = peak_rss_mib()
    t0 = time.monotonic()
    cpu0 = time.process_time()

    def figures(rep: Report, d: Decoder, complete: bool) -> dict[str, Any]:
        wall = time.monotonic() - t0
        return {
            "complete": complete,
            "cases": rep.cases,
            "seconds": round(wall, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "cases_per_s": round(rep.cases / wall, 1),
            "exceptions": rep.exceptions,
            "budget_violations": rep.budget_violations,
            "oracle_violations": rep.oracle_violations,
            "undecodable_records": d.drops.get("undecodable_records", 0),
            "clean_records_checked": rep.clean_records,
            "max_state_bytes": rep.max_state_bytes,
            "seed": args.seed,
            "inputs": rep.datagrams,
            "crashes": rep.exceptions,
            "slowest_ms": round(rep.slowest_ms, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "peak_rss_mib_before_run": round(rss0, 1),
            "bounds": BOUNDS,
            "drops": dict(sorted(d.drops.items())),
            "generated": dict(sorted(rep.stats.items())),
            "failures": rep.failures,
        }

    def checkpoint(rep: Report, d: Decoder) -> None:
        args.out.write_text(json.dumps(figures(rep, d, False), indent=2) + "\n")

    rep, d = run(
        args.seed, cases=args.cases, seconds=seconds, crash_dir=args.crash_dir, progress=checkpoint
    )
    result = figures(rep, d, True)
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    bad = rep.exceptions or rep.budget_violations or rep.oracle_violations
    return 1 if bad or d.drops.get("undecodable_records") else 0


if __name__ == "__main__":
    sys.exit(main())
