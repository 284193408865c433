"""Hostile and odd input to the flow decoder: isolation, memory bounds, floods, sampling,
one-sided templates. Every datagram is crafted with :mod:`kopeck_probe.flows.craft`."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from kopeck_probe.flows import craft as c
from kopeck_probe.flows.classify import Location, NodePlacement, Topology, parse_cidrs
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector
from kopeck_probe.flows.decoder import Decoder, FlowBatch
from kopeck_probe.flows.podmap import PodIPMap, from_words
from kopeck_probe.flows.tally import Tally
from kopeck_probe.flows.templates import compile_layout

EXP = "127.0.0.1"
OTHER = "10.0.0.1"
T0_MS = 1_700_000_000_000
U64_MAX = 2**64 - 1
TPL = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))


def typical_set(n: int, *, tid: int = 256) -> bytes:
    recs = b"".join(
        c.typical_record(0x0A000001 + i, 0x0A000101, 1000 + i, 80, 100 + i, 1, T0_MS, T0_MS)
        for i in range(n)
    )
    return c.set_(tid, recs)


def addrs(batch: FlowBatch) -> list[tuple[str, str]]:
    return [
        (
            str(from_words(int(batch.src_hi[i]), int(batch.src_lo[i]))),
            str(from_words(int(batch.dst_hi[i]), int(batch.dst_lo[i]))),
        )
        for i in range(len(batch))
    ]


# ---------------------------------------------------------------- 1: per-datagram isolation
REV_FIELDS: list[c.Field] = [(8, 4), (12, 4), (1, 8), (1, 0xFFFF, 29305)]
REV_TPL = c.set_(2, c.template_record(300, REV_FIELDS, ipfix=True))


def rev_record(src: int, octets: int, reverse: bytes) -> bytes:
    return struct.pack("!IIQ", src, 2, octets) + c.varlen(reverse)


def test_oversized_reverse_counter_costs_only_its_own_datagram() -> None:
    d = Decoder()
    assert d.feed(c.ipfix([TPL, typical_set(3)], seq=0), OTHER)
    good = c.set_(300, rev_record(1, 10, (5).to_bytes(2, "big")))
    assert d.feed(c.ipfix([REV_TPL, good], seq=0), EXP)
    bad = c.set_(300, rev_record(3, 30, b"\x01" * 9))  # 9 octets: no unsigned64 holds it
    d.feed(c.ipfix([bad], seq=1), EXP)
    assert d.feed(c.ipfix([c.set_(300, rev_record(4, 40, b"\x07"))], seq=2), EXP)
    b = d.flush()  # raised OverflowError and lost every queued record before the fix
    assert sorted(b.bytes.tolist()) == [5, 7, 10, 40, 100, 101, 102]
    assert d.drops["bad_record"] == 1
    assert d.pending_records == 0


def test_a_failing_batch_is_retried_per_datagram() -> None:
    d = Decoder()
    for seq in range(3):
        assert d.feed(c.ipfix([TPL, typical_set(2)], seq=2 * seq), EXP)
    # corrupt the middle datagram's queued payload the way a decoder bug would
    (pending,) = d._pending.values()
    pending.views[1] = memoryview(b"\0" * 7)
    b = d.flush()
    assert len(b) == 4
    assert d.drops["undecodable_records"] == 2


# ---------------------------------------------------------------- 2: memory
def test_template_field_count_is_capped() -> None:
    d = Decoder()
    huge = [(1000 + i, 4) for i in range(4000)] + [(8, 4), (12, 4), (1, 4)]
    before = compile_layout.cache_info().currsize
    d.feed(c.ipfix([c.set_(2, c.template_record(400, huge, ipfix=True))], seq=0), EXP)
    assert all(not s.templates for s in d.streams.values())
    assert d.drops["template_too_many_fields"] == 1
    assert compile_layout.cache_info().currsize == before


def test_oversized_template_is_refused_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-field work for a template past the bound; v9 skips to the next template."""
    from kopeck_probe.flows import decoder as decoder_module

    made: list[int] = []
    real = decoder_module.FieldSpec

    def counting(*args: int) -> object:
        made.append(1)
        return real(*args)

    monkeypatch.setattr(decoder_module, "FieldSpec", counting)
    huge = [(1000 + i, 1) for i in range(16000)]
    d = Decoder()
    d.feed(c.ipfix([c.set_(2, c.template_record(400, huge, ipfix=True))], seq=0), EXP)
    small = c.template_record(257, [(8, 4), (12, 4), (1, 4)], ipfix=False)
    v9_set = c.set_(0, c.template_record(401, huge[:300], ipfix=False) + small)
    d.feed(c.v9([v9_set, c.set_(257, struct.pack("!III", 1, 2, 77))], seq=0), EXP)
    assert d.drops == {"template_too_many_fields": 2}
    assert len(made) == 3  # only the small template's fields were parsed
    assert d.flush().bytes.tolist() == [77]


def _many_templates(base: int, count: int, n_fields: int) -> bytes:
    fields: list[c.Field] = [(8, 4), (12, 4), (1, 4)] + [(1000 + i, 2) for i in range(n_fields - 3)]
    return c.set_(
        2, b"".join(c.template_record(t, fields, ipfix=True) for t in range(base, base + count))
    )


def test_template_memory_is_bounded_in_bytes_per_exporter_and_in_total() -> None:
    d = Decoder()
    for domain in range(16):
        for base in range(256, 512, 64):
            d.feed(c.ipfix([_many_templates(base, 64, 120)], seq=0, domain=domain), EXP)
    held = d.template_bytes_by_exporter()
    assert held[EXP] <= d.max_template_bytes_per_exporter
    assert d.drops["template_bytes_limit"] > 0
    # another exporter still gets its templates in
    assert d.feed(c.ipfix([TPL, typical_set(2)], seq=0), OTHER)
    assert len(d.flush()) == 2
    for k in range(40):
        d.feed(c.ipfix([_many_templates(256, 64, 120)], seq=0), f"10.1.0.{k}")
    assert sum(d.template_bytes_by_exporter().values()) <= d.max_template_bytes


def test_idle_streams_are_evicted_lru_instead_of_refusing_new_ones() -> None:
    d = Decoder(max_streams=4)
    for k in range(4):
        assert d.feed(c.ipfix([TPL], seq=0), f"10.2.0.{k}")
    assert d.feed(c.ipfix([typical_set(1)], seq=0), "10.2.0.0")  # 10.2.0.0 is recent again
    assert d.feed(c.ipfix([TPL, typical_set(3)], seq=0), "10.2.0.9")  # refused before
    assert len(d.streams) == 4
    assert ("10.2.0.1", 10, 0) not in d.streams  # the least recently used went
    assert ("10.2.0.0", 10, 0) in d.streams
    assert d.drops["stream_evicted"] == 1
    assert len(d.flush()) == 4


# ---------------------------------------------------------------- 3: stream floods
def test_empty_datagram_flood_does_not_lock_out_other_exporters() -> None:
    d = Decoder()
    for domain in range(64):
        d.feed(c.ipfix([], seq=0, domain=domain), EXP)
    assert d.feed(c.ipfix([TPL, typical_set(3)], seq=0), OTHER)
    assert len(d.flush()) == 3


def test_flood_from_one_exporter_keeps_its_own_live_stream() -> None:
    d = Decoder()
    assert d.feed(c.ipfix([TPL, typical_set(1)], seq=0), EXP)
    assert d.feed(c.ipfix([TPL, typical_set(1)], seq=0), OTHER)
    for domain in range(1, 2000):
        d.feed(c.ipfix([], seq=0, domain=domain), EXP)
    assert sum(1 for k in d.streams if k[0] == EXP) <= d.max_streams_per_exporter
    assert d.feed(c.ipfix([typical_set(2)], seq=1), EXP)  # template survived the flood
    assert d.feed(c.ipfix([typical_set(2)], seq=1), OTHER)
    assert len(d.flush()) == 6
    assert d.drops["unknown_template"] == 0


# ---------------------------------------------------------------- 4: sampling
SAMPLING_OPT = c.set_(3, c.ipfix_options_template_record(500, [(149, 4)], [(34, 8)]))
PLAIN = c.set_(2, c.template_record(256, [(8, 4), (12, 4), (1, 8), (2, 8)], ipfix=True))


def sampled(rate: int, octets: int, packets: int) -> FlowBatch:
    d = Decoder()
    opt_data = c.set_(500, struct.pack("!IQ", 0, rate))
    rec = c.set_(256, struct.pack("!IIQQ", 1, 2, octets, packets))
    assert d.feed(c.ipfix([SAMPLING_OPT, PLAIN, opt_data, rec], seq=0), EXP)
    b = d.flush()
    d_flags = d.saturated_records
    assert d_flags >= 0
    sampled.last = d  # type: ignore[attr-defined]
    return b


def test_sampling_products_saturate_and_are_flagged() -> None:
    b = sampled(U64_MAX, 1000, 3)  # wrapped to 0 bytes before
    d: Decoder = sampled.last  # type: ignore[attr-defined]
    assert b.bytes.tolist() == [U64_MAX]
    assert b.packets.tolist() == [U64_MAX]
    assert d.saturated_records == 1


def test_sampling_rates_stay_exact_integers() -> None:
    rate = 2**53 + 1
    b = sampled(rate, 100, 1)  # 2**53 * 100 through float64 before
    d: Decoder = sampled.last  # type: ignore[attr-defined]
    assert b.bytes.tolist() == [100 * rate]
    assert b.packets.tolist() == [rate]
    assert d.saturated_records == 0


def test_big_counter_times_rate_saturates() -> None:
    b = sampled(1 << 20, 1 << 50, 1)
    d: Decoder = sampled.last  # type: ignore[attr-defined]
    assert b.bytes.tolist() == [U64_MAX]
    assert b.packets.tolist() == [1 << 20]
    assert d.saturated_records == 1


# ---------------------------------------------------------------- 5: one-sided templates
A = ipaddress.ip_address
TOPO = Topology(
    local=NodePlacement(
        "n1", Location("z1", "r1"), (A("192.168.1.10"),), parse_cidrs(["10.1.1.0/24"])
    ),
    cidr_classes=((ipaddress.ip_network("::/0"), "internet"),),
)


def test_one_sided_records_are_attributed_like_nfdump() -> None:
    src_only = c.set_(2, c.template_record(256, [(8, 4), (1, 8), (2, 8)], ipfix=True))
    dst_only = c.set_(2, c.template_record(257, [(12, 4), (1, 8), (2, 8)], ipfix=True))
    src6_only = c.set_(2, c.template_record(258, [(27, 16), (1, 4)], ipfix=True))
    pod = 0x0A010102
    recs = [
        c.set_(256, struct.pack("!IQQ", pod, 1000, 10)),
        c.set_(257, struct.pack("!IQQ", pod, 300, 3) + struct.pack("!IQQ", 0x08080808, 5, 1)),
        c.set_(258, ipaddress.IPv6Address("fd00::5").packed + struct.pack("!I", 77)),
    ]
    d = Decoder()
    assert d.feed(c.ipfix([src_only, dst_only, src6_only, *recs], seq=0), EXP)
    b = d.flush()
    assert d.records_without_addresses == 0  # all 4 were dropped before
    assert sorted(zip(addrs(b), b.bytes.tolist(), strict=True)) == [
        (("10.1.1.2", "::"), 1000),
        (("::", "10.1.1.2"), 300),
        (("::", "8.8.8.8"), 5),
        (("fd00::5", "::"), 77),
    ]
    pods = PodIPMap()
    pods.assign("10.1.1.2", "pod-a", since=0)
    pods.assign("fd00::5", "pod-6", since=0)
    t = Tally(pods, TOPO)
    t.add(b)
    got = {
        p: {k: (v.bytes, v.packets) for k, v in tot.by_class.items()} for p, tot in t.totals.items()
    }
    # the missing side is unclassified, even where a configured CIDR (::/0) would match "::"
    assert got == {
        "pod-a": {("unclassified", "tx"): (1000, 10), ("unclassified", "rx"): (300, 3)},
        "pod-6": {("unclassified", "tx"): (77, 0)},
    }
    assert (t.unattributed.bytes, t.unattributed.packets) == (5, 1)


def test_records_with_neither_address_are_still_counted_apart() -> None:
    tpl = c.set_(2, c.template_record(256, [(1, 4), (2, 4)], ipfix=True))
    d = Decoder()
    d.feed(c.ipfix([tpl, c.set_(256, struct.pack("!II", 1, 1) * 4)], seq=0), EXP)
    assert len(d.flush()) == 0
    assert d.records_without_addresses == 4


def test_saturated_counters_do_not_wrap_in_the_tally() -> None:
    d = Decoder()
    opt_data = c.set_(500, struct.pack("!IQ", 0, U64_MAX))
    rec = c.set_(256, struct.pack("!IIQQ", 0x0A010102, 0x08080808, 10, 1) * 2)
    assert d.feed(c.ipfix([SAMPLING_OPT, PLAIN, opt_data, rec], seq=0), EXP)
    pods = PodIPMap()
    pods.assign("10.1.1.2", "pod-a", since=0)
    t = Tally(pods, TOPO)
    t.add(d.flush())
    assert d.saturated_records == 2
    assert t.totals["pod-a"].by_class["internet", "tx"].bytes == 2 * U64_MAX  # wrapped before


def test_collector_passes_the_bounds_and_reports_saturation() -> None:
    cfg = CollectorConfig(
        allowed_exporters=frozenset({EXP}), max_streams_per_exporter=2, max_template_bytes=1 << 16
    )
    col = FlowCollector(PodIPMap(), TOPO, cfg)
    assert col.decoder.max_streams_per_exporter == 2
    assert col.decoder.max_template_bytes == 1 << 16
    opt_data = c.set_(500, struct.pack("!IQ", 0, U64_MAX))
    rec = c.set_(256, struct.pack("!IIQQ", 1, 2, 10, 1))
    assert col.handle(c.ipfix([SAMPLING_OPT, PLAIN, opt_data, rec], seq=0), EXP)
    col.flush()
    assert col.stats().saturated_records == 1


def test_reverse_counter_of_nine_fixed_octets_is_not_a_counter() -> None:
    """Found by bench/fuzz_flows.py: a reverse octet count declared 255 octets long made
    flush overflow (the set was then dropped as undecodable_records)."""
    fields: list[c.Field] = [(8, 4), (12, 4), (1, 8), (82, 0xFFFF), (1, 255, 29305)]
    tpl = c.set_(2, c.template_record(301, fields, ipfix=True))
    rec = struct.pack("!IIQ", 1, 2, 10) + c.varlen(b"eth0") + b"\xff" * 255
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(301, rec)], seq=0), EXP)
    b = d.flush()
    assert b.bytes.tolist() == [10]
    assert d.drops == {}
