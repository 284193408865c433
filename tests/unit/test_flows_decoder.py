"""NetFlow v9 / IPFIX decoding on crafted datagrams: layouts, state, and hostile input."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from kopeck_probe.flows import craft as c
from kopeck_probe.flows.decoder import Decoder, FlowBatch
from kopeck_probe.flows.podmap import from_words

EXP = "127.0.0.1"
T0_MS = 1_700_000_000_000


def typical_set(n: int, *, base: int = 0, tid: int = 256) -> bytes:
    recs = b"".join(
        c.typical_record(
            0x0A000001 + i,
            0x0A000101,
            1000 + i,
            80,
            100 * (base + i) + 1,
            base + i + 1,
            T0_MS,
            T0_MS + 1000 * (base + i),
        )
        for i in range(n)
    )
    return c.set_(tid, recs)


TPL = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))


def addrs(batch: FlowBatch) -> list[tuple[str, str]]:
    return [
        (
            str(from_words(int(batch.src_hi[i]), int(batch.src_lo[i]))),
            str(from_words(int(batch.dst_hi[i]), int(batch.dst_lo[i]))),
        )
        for i in range(len(batch))
    ]


def test_ipfix_typical_template_decodes_every_field_we_use() -> None:
    d = Decoder()
    assert d.feed(c.ipfix([TPL, typical_set(25)], seq=0, domain=7), EXP)
    b = d.flush()
    assert len(b) == 25
    assert b.bytes.tolist() == [100 * i + 1 for i in range(25)]
    assert b.packets.tolist() == [i + 1 for i in range(25)]
    assert addrs(b)[3] == ("10.0.0.4", "10.0.1.1")
    assert b.time_s.tolist() == [(T0_MS + 1000 * i) / 1000 for i in range(25)]
    assert d.drops == {}


def test_batches_across_datagrams_keep_order_and_values() -> None:
    d = Decoder()
    d.feed(c.ipfix([TPL, typical_set(20)], seq=0), EXP)
    for k in range(1, 50):
        d.feed(c.ipfix([typical_set(20, base=20 * k)], seq=20 * k), EXP)
    assert d.pending_records == 1000
    b = d.flush()
    assert b.packets.tolist() == list(range(1, 1001))
    assert d.flush().bytes.size == 0  # flushed once


def test_v9_uptime_times_and_reduced_size_counters() -> None:
    fields = [(8, 4), (12, 4), (1, 3), (2, 6), (22, 4), (21, 4), (4, 1)]
    tpl = c.set_(0, c.template_record(300, fields, ipfix=False))
    rec = struct.pack("!II", 0xC0A80001, 0x08080808)
    rec += (0x123456).to_bytes(3, "big") + (7).to_bytes(6, "big")
    rec += struct.pack("!IIB", 5_000, 9_000, 17)
    data = c.set_(300, rec, pad=True)  # 24 bytes + 3 padding -> still one record
    d = Decoder()
    assert d.feed(c.v9([tpl, data], seq=0, unix_s=1_700_000_000, uptime_ms=10_000), EXP)
    b = d.flush()
    assert b.bytes.tolist() == [0x123456]
    assert b.packets.tolist() == [7]
    # LAST_SWITCHED 9000 ms of uptime, header says uptime 10000 at unix 1.7e9
    assert b.time_s.tolist() == [1_700_000_000 - 1.0]
    assert addrs(b) == [("192.168.0.1", "8.8.8.8")]


def test_v9_uptime_wraparound() -> None:
    fields = [(8, 4), (12, 4), (1, 4), (21, 4)]
    tpl = c.set_(0, c.template_record(300, fields, ipfix=False))
    rec = struct.pack("!IIII", 1, 2, 10, 0xFFFF_FC18)  # 1000 ms before the uptime wrapped
    d = Decoder()
    d.feed(c.v9([tpl, c.set_(300, rec)], seq=0, unix_s=2_000_000_000, uptime_ms=1000), EXP)
    assert d.flush().time_s.tolist() == [2_000_000_000 - 2.0]


def test_ipv6_and_enterprise_and_ntp_fields() -> None:
    fields: list[c.Field] = [
        (27, 16),
        (5, 4, 9),
        (28, 16),
        (1, 8),
        (7, 0xFFFF, 12345),
        (2, 4),
        (155, 8),
    ]
    tpl = c.set_(2, c.template_record(400, fields, ipfix=True))
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    ntp = ((1_700_000_000 + 2_208_988_800) << 32) | (1 << 31)  # .5 s
    rec = src + b"\xde\xad\xbe\xef" + dst + struct.pack("!Q", 999)
    rec += c.varlen(b"x" * 300) + struct.pack("!IQ", 3, ntp)
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(400, rec + rec)], seq=0), EXP)
    b = d.flush()
    assert addrs(b) == [("2001:db8::1", "2001:db8::2")] * 2
    assert b.bytes.tolist() == [999, 999]
    assert b.packets.tolist() == [3, 3]
    assert b.time_s.tolist() == [1_700_000_000.5] * 2


def test_variable_length_fields_short_long_empty_and_padding() -> None:
    fields = [(8, 4), (96, 0xFFFF), (12, 4), (1, 4), (95, 0xFFFF)]
    tpl = c.set_(2, c.template_record(401, fields, ipfix=True))
    recs = [
        struct.pack("!I", 1) + c.varlen(b"") + struct.pack("!II", 2, 10) + c.varlen(b"abc"),
        struct.pack("!I", 3) + c.varlen(b"y" * 1000) + struct.pack("!II", 4, 20) + c.varlen(b""),
    ]
    body = b"".join(recs) + b"\0\0"  # padding shorter than the smallest record
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(401, body)], seq=0, export_s=1_700_000_000), EXP)
    b = d.flush()
    assert b.bytes.tolist() == [10, 20]
    assert [s for s, _ in addrs(b)] == ["0.0.0.1", "0.0.0.3"]
    assert b.time_s.tolist() == [1_700_000_000.0] * 2  # no time field: export time
    assert d.drops == {}


def test_variable_length_record_past_end_drops_that_set_only() -> None:
    fields = [(8, 4), (12, 4), (1, 4), (96, 0xFFFF)]
    tpl = c.set_(2, c.template_record(402, fields, ipfix=True))
    bad = struct.pack("!III", 1, 2, 3) + b"\x20" + b"short"
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(402, bad), typical_set(0)], seq=0), EXP)
    assert d.drops["bad_record"] == 1
    assert len(d.flush()) == 0


def test_options_template_sets_init_time_and_sampling() -> None:
    opt = c.set_(
        3, c.ipfix_options_template_record(500, [(149, 4)], [(160, 8), (305, 4), (306, 4)])
    )
    fields = [(8, 4), (12, 4), (1, 4), (2, 4), (21, 4)]
    tpl = c.set_(2, c.template_record(256, fields, ipfix=True))
    opt_data = c.set_(500, struct.pack("!IQII", 0, T0_MS, 1, 9))  # 1 in 10 sampled
    rec = c.set_(256, struct.pack("!IIIII", 1, 2, 100, 1, 5000))
    d = Decoder()
    assert d.feed(c.ipfix([opt, tpl, opt_data, rec], seq=0), EXP)
    b = d.flush()
    assert b.time_s.tolist() == [(T0_MS + 5000) / 1000]
    assert b.bytes.tolist() == [1000]
    assert b.packets.tolist() == [10]


def test_v9_options_template_sampling() -> None:
    opt = c.set_(1, c.v9_options_template_record(257, [(1, 4)], [(34, 4), (35, 1)]), pad=True)
    fields = [(8, 4), (12, 4), (1, 4), (2, 4)]
    tpl = c.set_(0, c.template_record(256, fields, ipfix=False))
    d = Decoder()
    assert d.feed(c.v9([opt, tpl, c.set_(257, struct.pack("!IIB", 0, 4, 1), pad=True)], seq=0), EXP)
    assert d.feed(c.v9([c.set_(256, struct.pack("!IIII", 1, 2, 50, 2))], seq=1), EXP)
    b = d.flush()
    assert (b.bytes.tolist(), b.packets.tolist()) == ([200], [8])
    assert d.drops == {}


def test_withdrawal_single_all_and_options() -> None:
    d = Decoder()
    opt = c.set_(3, c.ipfix_options_template_record(500, [(149, 4)], [(160, 8)]))
    d.feed(c.ipfix([TPL, opt], seq=0), EXP)
    (stream,) = d.streams.values()
    assert set(stream.templates) == {256, 500}
    d.feed(c.ipfix([c.set_(3, c.withdrawal(3))], seq=0), EXP)  # all options templates
    assert set(stream.templates) == {256}
    d.feed(c.ipfix([c.set_(2, c.withdrawal(256))], seq=0), EXP)
    assert stream.templates == {}
    d.feed(c.ipfix([typical_set(3)], seq=0), EXP)
    assert d.drops["unknown_template"] == 1
    d.feed(c.ipfix([TPL], seq=0), EXP)
    d.feed(c.ipfix([c.set_(2, c.withdrawal(2))], seq=0), EXP)  # all data templates
    assert stream.templates == {}
    assert len(d.flush()) == 0


def test_template_refresh_with_new_definition_keeps_pending_records_right() -> None:
    d = Decoder()
    d.feed(c.ipfix([TPL, typical_set(2)], seq=0), EXP)
    fields = [(1, 4), (8, 4), (12, 4)]
    new = c.set_(2, c.template_record(256, fields, ipfix=True))
    d.feed(c.ipfix([new, c.set_(256, struct.pack("!III", 77, 1, 2))], seq=2), EXP)
    b = d.flush()
    assert sorted(b.bytes.tolist()) == [1, 77, 101]


def test_templates_are_scoped_per_exporter_and_domain() -> None:
    short = c.set_(2, c.template_record(256, [(8, 4), (12, 4), (1, 4)], ipfix=True))
    d = Decoder()
    d.feed(c.ipfix([TPL], seq=0, domain=1), EXP)
    d.feed(c.ipfix([short], seq=0, domain=2), EXP)
    d.feed(c.ipfix([short], seq=0, domain=1), "10.0.0.9")
    d.feed(c.ipfix([typical_set(1)], seq=0, domain=1), EXP)
    d.feed(c.ipfix([c.set_(256, struct.pack("!III", 1, 2, 55))], seq=0, domain=2), EXP)
    d.feed(c.ipfix([c.set_(256, struct.pack("!III", 1, 2, 66))], seq=0, domain=1), "10.0.0.9")
    d.feed(c.ipfix([c.set_(256, struct.pack("!III", 1, 2, 66))], seq=0, domain=3), EXP)
    assert sorted(d.flush().bytes.tolist()) == [1, 55, 66]
    assert d.drops["unknown_template"] == 1


def test_sequence_gaps_v9_count_packets_ipfix_count_records() -> None:
    fields = [(8, 4), (12, 4), (1, 4)]
    v9tpl = c.set_(0, c.template_record(256, fields, ipfix=False))
    rec3 = c.set_(256, struct.pack("!III", 1, 2, 3) * 3)
    d = Decoder()
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 lost
        d.feed(c.v9([v9tpl, rec3], seq=seq, source_id=4), EXP)
    for seq in (0, 3, 6, 15, 18):  # two messages of 3 records lost (9..14)
        d.feed(c.ipfix([TPL, typical_set(3)], seq=seq, domain=4), EXP)
    stats = {(s.version, s.domain): s for s in d.stream_stats()}
    assert (stats[9, 4].sequence_gaps, stats[9, 4].missing) == (1, 2)
    assert (stats[10, 4].sequence_gaps, stats[10, 4].missing) == (1, 6)
    # a wrap of the 32-bit counter is not a gap
    d.feed(c.v9([rec3], seq=0xFFFF_FFFF, source_id=5), EXP)
    d.feed(c.v9([rec3], seq=0, source_id=5), EXP)
    s5 = next(s for s in d.stream_stats() if s.domain == 5)
    assert (s5.sequence_gaps, s5.missing) == (0, 0)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\x00", "truncated_header"),
        (b"\x00\x0a\x00\x10", "truncated_header"),
        (c.v9([], seq=0)[:19], "truncated_header"),
        (b"\x00\x05" + b"\0" * 30, "bad_version"),
        (c.ipfix([TPL], seq=0)[:-4], "length_past_end"),
        (c.ipfix([TPL], seq=0) + b"\0\0\0\0", "length_mismatch"),
        (c.v9([struct.pack("!HH", 256, 2)], seq=0), "bad_set_length"),
        (c.v9([struct.pack("!HH", 256, 200) + b"\0" * 10], seq=0), "set_past_end"),
        (c.v9([typical_set(1) + b"\0\0"], seq=0), "truncated_set"),
    ],
)
def test_malformed_datagram_is_counted_dropped_and_decoding_goes_on(
    datagram: bytes, reason: str
) -> None:
    d = Decoder()
    assert not d.feed(datagram, EXP)
    assert d.drops == {reason: 1}
    assert d.feed(c.ipfix([TPL, typical_set(4)], seq=0), EXP)
    assert len(d.flush()) == 4


def test_malformed_datagram_installs_nothing() -> None:
    d = Decoder()
    bad = c.ipfix([TPL, struct.pack("!HH", 256, 4000)], seq=0)  # second set past the end
    bad = bad[:2] + struct.pack("!H", len(bad)) + bad[4:]
    assert not d.feed(bad, EXP)
    assert d.drops == {"set_past_end": 1}
    d.feed(c.ipfix([typical_set(1)], seq=0), EXP)
    assert d.drops["unknown_template"] == 1


def test_unknown_template_drops_only_its_set() -> None:
    d = Decoder()
    assert d.feed(c.ipfix([TPL, typical_set(2, tid=999), typical_set(3)], seq=0), EXP)
    assert d.drops == {"unknown_template": 1}
    assert len(d.flush()) == 3


def test_zero_length_fields_and_bad_templates_are_refused() -> None:
    d = Decoder()
    zero = c.set_(2, c.template_record(300, [(8, 4), (1, 0)], ipfix=True))
    d.feed(c.ipfix([zero], seq=0), EXP)
    d.feed(c.v9([c.set_(0, c.template_record(300, [(1, 0)], ipfix=False))], seq=0), EXP)
    d.feed(c.v9([c.set_(0, struct.pack("!HH", 300, 0))], seq=1), EXP)  # v9: no withdrawal
    d.feed(c.ipfix([c.set_(2, c.template_record(100, [(1, 4)], ipfix=True))], seq=0), EXP)
    opt_bad_scope = c.set_(3, struct.pack("!HHH", 501, 1, 0) + struct.pack("!HH", 1, 4))
    d.feed(c.ipfix([opt_bad_scope], seq=0), EXP)
    d.feed(c.ipfix([c.set_(2, struct.pack("!HH", 302, 5) + b"\0" * 8)], seq=0), EXP)
    assert d.drops == {"zero_length_field": 2, "bad_template": 4}
    assert all(not s.templates for s in d.streams.values())


def test_template_and_stream_floods_stay_bounded() -> None:
    d = Decoder(max_streams=4, max_templates_per_stream=16)
    for tid in range(256, 256 + 100):
        d.feed(
            c.ipfix([c.set_(2, c.template_record(tid, c.TYPICAL_FIELDS, ipfix=True))], seq=0), EXP
        )
    (stream,) = d.streams.values()
    assert len(stream.templates) == 16
    assert d.drops["template_limit"] == 84
    assert d.feed(c.ipfix([TPL, typical_set(2)], seq=0), EXP)  # refresh of a known id: fine
    for domain in range(1, 10):
        d.feed(c.ipfix([TPL], seq=0, domain=domain), EXP)
    assert len(d.streams) == 4
    assert d.drops["stream_evicted"] == 6  # LRU eviction replaced refusal ("stream_limit")
    assert len(d.flush()) == 2


def test_biflow_reverse_counters() -> None:
    fields: list[c.Field] = [(8, 4), (12, 4), (1, 8), (2, 8), (1, 8, 29305), (2, 8, 29305)]
    tpl = c.set_(2, c.template_record(256, fields, ipfix=True))
    rec = struct.pack("!IIQQQQ", 1, 2, 100, 1, 5000, 4)
    d = Decoder()
    d.feed(c.ipfix([tpl, c.set_(256, rec)], seq=0), EXP)
    b = d.flush()
    assert list(zip(addrs(b), b.bytes.tolist(), strict=True)) == [
        (("0.0.0.1", "0.0.0.2"), 100),
        (("0.0.0.2", "0.0.0.1"), 5000),
    ]


def test_records_without_addresses_are_counted_not_decoded() -> None:
    tpl = c.set_(2, c.template_record(256, [(1, 4), (2, 4)], ipfix=True))
    d = Decoder()
    d.feed(c.ipfix([tpl, c.set_(256, struct.pack("!II", 1, 1) * 4)], seq=0), EXP)
    assert len(d.flush()) == 0
    assert d.records_without_addresses == 4


def test_fuzzed_datagrams_never_raise() -> None:
    rng = random.Random(1234)
    good = [
        c.ipfix([TPL, typical_set(5)], seq=0),
        c.v9(
            [c.set_(0, c.template_record(256, c.TYPICAL_FIELDS, ipfix=False)), typical_set(5)],
            seq=0,
        ),
        c.ipfix(
            [c.set_(2, c.template_record(401, [(8, 4), (96, 0xFFFF), (12, 4)], ipfix=True))],
            seq=0,
        ),
    ]
    d = Decoder(max_streams=8, max_templates_per_stream=8)
    for _ in range(5000):
        buf = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            elif op < 0.75:
                del buf[rng.randrange(len(buf) + 1) :]
            else:
                buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        d.feed(bytes(buf), rng.choice([EXP, "10.0.0.1"]))
        if rng.random() < 0.05:
            d.flush()
    d.flush()
    assert len(d.streams) <= 8
    assert all(len(s.templates) <= 8 for s in d.streams.values())
    assert d.feed(c.ipfix([TPL, typical_set(5)], seq=0, domain=77), "10.0.0.1") in (True, False)
    assert isinstance(d.flush().bytes, np.ndarray)


def test_dual_stack_template_takes_the_family_each_record_fills() -> None:
    fields: list[c.Field] = [(8, 4), (12, 4), (27, 16), (28, 16), (1, 8), (2, 8)]
    tpl = c.set_(2, c.template_record(256, fields, ipfix=True))
    v6a = bytes.fromhex("fd000005000000000000000000000001")
    v6b = bytes.fromhex("fd000005000000000000000000000002")
    r4 = struct.pack("!II", 0x0A050101, 0x0A050102) + b"\0" * 32 + struct.pack("!QQ", 100, 1)
    r6 = b"\0" * 8 + v6a + v6b + struct.pack("!QQ", 200, 2)
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(256, r4 + r6)], seq=0), EXP)
    b = d.flush()
    assert list(zip(addrs(b), b.bytes.tolist(), strict=True)) == [
        (("10.5.1.1", "10.5.1.2"), 100),
        (("fd00:5::1", "fd00:5::2"), 200),  # was 0.0.0.0 -> 0.0.0.0 (v4 field always won)
    ]


def test_counter_sent_variable_length_is_read_not_zero() -> None:
    fields: list[c.Field] = [(8, 4), (12, 4), (1, 0xFFFF), (2, 8)]
    tpl = c.set_(2, c.template_record(256, fields, ipfix=True))
    ok = struct.pack("!II", 1, 2) + c.varlen((1234).to_bytes(2, "big")) + struct.pack("!Q", 3)
    long = struct.pack("!II", 1, 2) + c.varlen(b"\1" * 9) + struct.pack("!Q", 3)
    d = Decoder()
    assert d.feed(c.ipfix([tpl, c.set_(256, ok)], seq=0), EXP)
    assert d.feed(c.ipfix([c.set_(256, long)], seq=1), EXP)
    b = d.flush()
    assert (b.bytes.tolist(), b.packets.tolist()) == ([1234], [3])  # was 0 bytes, silently
    assert d.drops == {"bad_record": 1}
