"""Every reason the flow collector drops or refuses something shows on /metrics.

Each case feeds crafted datagrams (flows/craft.py) to a collector, renders its metrics the
way the probe serves them (NetworkHealth in a registry) and reads
``kopeck_probe_flow_drops_total{reason}``; the table of cases must cover every reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kopeck_probe.flows import craft as c
from kopeck_probe.flows.classify import Location, NodePlacement, Topology
from kopeck_probe.flows.collector import ALL_DROP_REASONS, CollectorConfig, FlowCollector
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.flows.source import FlowSource
from kopeck_probe.network_health import NetworkHealth

EXP = "127.0.0.1"
NARROW = "10.9.0.1"  # allowed from observation domain 7 only
T0_MS = 1_700_000_000_000
TPL = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))
TOPO = Topology(local=NodePlacement("n1", Location("z1", "r1"), (), ()))
CONFIG = CollectorConfig(
    allowed_exporters=frozenset({EXP}),
    allowed_domains={NARROW: frozenset({7})},
    max_streams=4,
    max_streams_per_exporter=2,
    max_templates_per_stream=2,
    max_fields_per_template=16,
    max_template_bytes_per_exporter=4096,
    max_template_bytes=8192,
)


def typical_set(n: int, *, tid: int = 256) -> bytes:
    recs = b"".join(
        c.typical_record(0x0A000001 + i, 0x0A000101, 1000 + i, 80, 100 + i, 1, T0_MS, T0_MS)
        for i in range(n)
    )
    return c.set_(tid, recs)


def template(tid: int, n_fields: int) -> bytes:
    fields = [(8, 4), (12, 4), (1, 8)] + [(1000 + i, 2) for i in range(n_fields - 3)]
    return c.set_(2, c.template_record(tid, fields, ipfix=True))


VAR_TPL = c.set_(2, c.template_record(300, [(8, 4), (12, 4), (1, 0xFFFF)], ipfix=True))
V9_SAMPLING = c.set_(1, c.v9_options_template_record(257, [(1, 4)], [(34, 4)]))
IPFIX_SAMPLING = c.set_(3, c.ipfix_options_template_record(500, [(149, 4)], [(34, 8)]))
PLAIN = c.set_(2, c.template_record(257, [(8, 4), (12, 4), (1, 8), (2, 8)], ipfix=True))

Feed = list[tuple[bytes, str]]


def corrupt_queued(col: FlowCollector) -> None:
    """What a decoder bug would do: a queued payload no longer matches its layout."""
    (pending,) = col.decoder._pending.values()
    pending.views[0] = memoryview(b"\0" * 7)


def raising_decoder(col: FlowCollector) -> None:
    def boom(data: bytes, exporter: str) -> bool:
        raise RuntimeError("decoder bug")

    col.decoder.feed = boom  # type: ignore[method-assign]


# reason -> (datagrams with their source, expected count, optional sabotage before flush)
CASES: dict[str, tuple[Feed, int, Callable[[FlowCollector], None] | None]] = {
    "truncated_header": ([(b"\x00\x09", EXP), (c.v9([], seq=0)[:19], EXP)], 2, None),
    "bad_version": ([(b"\x00\x05" + b"\0" * 30, EXP)], 1, None),
    "length_past_end": ([(c.ipfix([TPL], seq=0)[:-4], EXP)], 1, None),
    "length_mismatch": ([(c.ipfix([TPL], seq=0) + b"\0" * 4, EXP)], 1, None),
    "truncated_set": ([(c.v9([typical_set(1) + b"\0\0"], seq=0), EXP)], 1, None),
    "bad_set_length": ([(c.v9([struct.pack("!HH", 256, 2)], seq=0), EXP)], 1, None),
    "set_past_end": ([(c.v9([struct.pack("!HH", 256, 200) + b"\0" * 10], seq=0), EXP)], 1, None),
    "reserved_set": ([(c.ipfix([c.set_(5, b"\0" * 4), c.set_(7, b"")], seq=0), EXP)], 2, None),
    "unknown_template": ([(c.ipfix([typical_set(2, tid=999)], seq=0), EXP)], 1, None),
    "bad_record": (
        [
            (
                c.ipfix([VAR_TPL, c.set_(300, struct.pack("!IIB", 1, 2, 20) + b"\1" * 3)], seq=0),
                EXP,
            )
        ],
        1,
        None,
    ),
    "bad_template": (
        [(c.ipfix([c.set_(2, c.template_record(100, [(1, 4)], ipfix=True))], seq=0), EXP)],
        1,
        None,
    ),
    "zero_length_field": (
        [(c.ipfix([c.set_(2, c.template_record(300, [(8, 4), (1, 0)], ipfix=True))], seq=0), EXP)],
        1,
        None,
    ),
    "template_too_many_fields": ([(c.ipfix([template(256, 17)], seq=0), EXP)], 1, None),
    "template_limit": (
        [(c.ipfix([template(256, 3), template(257, 3), template(258, 3)], seq=0), EXP)],
        1,
        None,
    ),
    "template_bytes_limit": (
        [
            (c.ipfix([template(256, 16), template(257, 16)], seq=0, domain=1), EXP),
            (c.ipfix([template(256, 16)], seq=0, domain=2), EXP),
        ],
        1,
        None,
    ),
    "withdraw_unknown": ([(c.ipfix([c.set_(2, c.withdrawal(300))], seq=0), EXP)], 1, None),
    "stream_evicted": ([(c.ipfix([], seq=0, domain=d), EXP) for d in range(4)], 2, None),
    "bad_sampling": (
        [(c.v9([V9_SAMPLING, c.set_(257, struct.pack("!II", 0, 0))], seq=0), EXP)],
        1,
        None,
    ),
    "no_addresses": (
        [
            (
                c.ipfix(
                    [
                        c.set_(2, c.template_record(256, [(1, 4), (2, 4)], ipfix=True)),
                        c.set_(256, struct.pack("!II", 1, 1) * 3),
                    ],
                    seq=0,
                ),
                EXP,
            )
        ],
        3,
        None,
    ),
    "undecodable_records": ([(c.ipfix([TPL, typical_set(2)], seq=0), EXP)], 2, corrupt_queued),
    "sampling_saturated": (
        [
            (
                c.ipfix(
                    [
                        IPFIX_SAMPLING,
                        PLAIN,
                        c.set_(500, struct.pack("!IQ", 0, 2**64 - 1)),
                        c.set_(257, struct.pack("!IIQQ", 1, 2, 10, 1) * 2),
                    ],
                    seq=0,
                ),
                EXP,
            )
        ],
        2,
        None,
    ),
    "exporter_not_allowed": (
        [(c.ipfix([TPL], seq=0), "192.0.2.9"), (c.ipfix([TPL], seq=0), "::ffff:192.0.2.9")],
        2,
        None,
    ),
    "domain_not_allowed": (
        [(c.ipfix([TPL], seq=0, domain=8), NARROW), (c.v9([], seq=0, source_id=9), NARROW)],
        2,
        None,
    ),
    "internal_error": ([], 1, raising_decoder),
}


def drops_on_metrics(col: FlowCollector) -> dict[str, float]:
    reg = CollectorRegistry()
    reg.register(NetworkHealth(None, FlowSource(col, PodIPMap())))
    text = generate_latest(reg).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kopeck_probe_flow_drops_total":
                out[s.labels["reason"]] = s.value
    return out


def test_every_reason_has_a_crafted_case() -> None:
    assert set(CASES) == set(ALL_DROP_REASONS)


@pytest.mark.parametrize("reason", sorted(CASES))
def test_drop_reason_is_counted_on_metrics(reason: str) -> None:
    feed, expected, sabotage = CASES[reason]
    col = FlowCollector(PodIPMap(), TOPO, CONFIG)
    if sabotage is raising_decoder:
        sabotage(col)
        col.handle(c.ipfix([TPL], seq=0), EXP)
    else:
        for data, source in feed:
            col.handle(data, source)
        if sabotage is not None:
            sabotage(col)
    col.flush()
    assert drops_on_metrics(col) == {reason: expected}


def test_narrowed_exporter_is_decoded_from_its_own_domain() -> None:
    col = FlowCollector(PodIPMap(), TOPO, CONFIG)
    assert col.handle(c.ipfix([TPL, typical_set(3)], seq=0, domain=7), NARROW)
    assert not col.handle(c.ipfix([TPL, typical_set(3)], seq=0, domain=8), NARROW)
    col.flush()
    stats = col.stats()
    assert stats.records == 3
    assert stats.not_allowed == 1
    assert [(s.exporter, s.domain) for s in stats.streams] == [(NARROW, 7)]
