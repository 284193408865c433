"""Flows -> pods by IP at flow time, classified by topology; collector allow-list on loopback."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import numpy as np
import pytest

from kopeck_probe.flows import craft as c
from kopeck_probe.flows.classify import (
    Location,
    NodePlacement,
    Topology,
    between,
    classify,
    parse_cidrs,
)
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector
from kopeck_probe.flows.decoder import FlowBatch
from kopeck_probe.flows.podmap import PodIPMap, to_words
from kopeck_probe.flows.tally import Tally, Traffic

A = ipaddress.ip_address
LOCAL = NodePlacement(
    "n1", Location("z1", "r1"), (A("192.168.1.10"),), parse_cidrs(["10.1.1.0/24"])
)
TOPO = Topology(
    local=LOCAL,
    nodes=(
        NodePlacement(
            "n2", Location("z1", "r1"), (A("192.168.1.11"),), parse_cidrs(["10.1.2.0/24"])
        ),
        NodePlacement(
            "n3", Location("z2", "r1"), (A("192.168.2.10"),), parse_cidrs(["10.1.3.0/24"])
        ),
        NodePlacement(
            "n4", Location("z9", "r2"), (A("192.168.9.10"),), parse_cidrs(["10.1.9.0/24"])
        ),
    ),
    cidr_locations=((ipaddress.ip_network("172.16.2.0/24"), Location("z2", "r1")),),
    cidr_classes=((ipaddress.ip_network("52.94.0.0/16"), "crossRegion"),),
)


def test_between_locations() -> None:
    assert between(Location("a", "r"), Location("a", "r")) == "intraZone"
    assert between(Location("a", "r"), Location("b", "r")) == "crossZone"
    assert between(Location("a", "r"), Location("c", "s")) == "crossRegion"
    assert between(Location(None, "r"), Location(None, "s")) == "crossRegion"
    assert between(Location(None, "r"), Location("b", "r")) == "unclassified"
    assert Location.from_labels({"topology.kubernetes.io/zone": "z"}) == Location("z", None)


def test_classify_order() -> None:
    assert classify(TOPO, A("10.1.1.7")) == "intraZone"  # own pod CIDR
    assert classify(TOPO, A("10.1.2.7")) == "intraZone"  # same-zone node's pods
    assert classify(TOPO, A("192.168.2.10")) == "crossZone"  # other zone's node address
    assert classify(TOPO, A("172.16.2.5")) == "crossZone"  # configured CIDR location
    assert classify(TOPO, A("10.1.9.1")) == "crossRegion"
    assert classify(TOPO, A("52.94.3.3")) == "crossRegion"  # configured class wins
    assert classify(TOPO, A("8.8.8.8")) == "internet"
    assert classify(TOPO, A("2606:4700::1111")) == "internet"
    assert classify(TOPO, A("10.200.0.1")) == "unclassified"  # private, unknown
    assert classify(TOPO, A("127.0.0.1")) == "intraZone"
    assert classify(TOPO, A("::ffff:8.8.4.4")) == "internet"


def batch(rows: list[tuple[str, str, int, int, float]]) -> FlowBatch:
    src = [to_words(r[0]) for r in rows]
    dst = [to_words(r[1]) for r in rows]
    u = np.uint64
    return FlowBatch(
        np.array([s[0] for s in src], dtype=u),
        np.array([s[1] for s in src], dtype=u),
        np.array([d[0] for d in dst], dtype=u),
        np.array([d[1] for d in dst], dtype=u),
        np.array([r[2] for r in rows], dtype=u),
        np.array([r[3] for r in rows], dtype=u),
        np.array([r[4] for r in rows], dtype=np.float64),
    )


def snapshot(t: Tally) -> dict[str, dict[tuple[str, str], tuple[int, int]]]:
    return {
        pod: {k: (v.bytes, v.packets) for k, v in totals.by_class.items()}
        for pod, totals in t.totals.items()
    }


def test_flows_to_pods_by_class_and_direction() -> None:
    pods = PodIPMap()
    pods.assign("10.1.1.2", "pod-a", since=0)
    pods.assign("10.1.1.3", "pod-b", since=0)
    t = Tally(pods, TOPO)
    t.add(
        batch(
            [
                ("10.1.1.2", "10.1.1.3", 1000, 10, 50),  # a -> b on this node
                ("10.1.1.2", "8.8.8.8", 300, 3, 50),
                ("8.8.8.8", "10.1.1.2", 700, 7, 50),
                ("10.1.1.2", "10.1.3.4", 20, 1, 50),
                ("10.1.1.2", "10.1.3.4", 22, 1, 51),
                ("192.168.9.10", "10.1.1.3", 5, 1, 50),
                ("10.9.9.9", "10.9.9.8", 99, 9, 50),  # no pod of this node
            ]
        )
    )
    assert snapshot(t) == {
        "pod-a": {
            ("intraZone", "tx"): (1000, 10),
            ("internet", "tx"): (300, 3),
            ("internet", "rx"): (700, 7),
            ("crossZone", "tx"): (42, 2),
        },
        "pod-b": {("intraZone", "rx"): (1000, 10), ("crossRegion", "rx"): (5, 1)},
    }
    assert t.unattributed == Traffic(99, 9)
    t.add(batch([("10.1.1.2", "8.8.8.8", 1, 1, 60)]))  # cumulative
    assert t.totals["pod-a"].by_class["internet", "tx"] == Traffic(301, 4)


def test_reused_ip_is_charged_to_the_pod_holding_it_at_flow_time() -> None:
    pods = PodIPMap(slack_s=1.0)
    pods.assign("10.1.1.5", "old", since=0)
    pods.release("10.1.1.5", "old", until=100)
    pods.assign("10.1.1.5", "new", since=100)
    t = Tally(pods, TOPO)
    t.add(
        batch(
            [
                ("10.1.1.5", "8.8.8.8", 10, 1, 50),
                ("10.1.1.5", "8.8.8.8", 20, 1, 99.5),
                ("10.1.1.5", "8.8.8.8", 40, 1, 150),
                ("10.1.1.5", "8.8.8.8", 80, 1, 100.2),
            ]
        )
    )
    assert t.totals["old"].by_class["internet", "tx"].bytes == 30
    assert t.totals["new"].by_class["internet", "tx"].bytes == 120
    # slack: a record 0.5 s before the only lease still belongs to it, 5 s before does not
    pods2 = PodIPMap(slack_s=1.0)
    pods2.assign("10.1.1.6", "p", since=200)
    t2 = Tally(pods2, TOPO)
    t2.add(batch([("10.1.1.6", "8.8.8.8", 1, 1, 199.5), ("10.1.1.6", "8.8.8.8", 2, 1, 195)]))
    assert t2.totals["p"].bytes == 1
    assert t2.unattributed.bytes == 2
    pods.prune(now=100 + 3600 + 1)
    assert pods.owner("10.1.1.5", 50) is None
    assert pods.owner("10.1.1.5", 5000) == "new"


def test_sums_stay_exact_beyond_float_precision() -> None:
    pods = PodIPMap()
    pods.assign("10.1.1.2", "p", since=0)
    t = Tally(pods, TOPO)
    big = 2**60 + 1
    t.add(batch([("10.1.1.2", "8.8.8.8", big, 1, 1), ("10.1.1.2", "8.8.8.8", 1, 1, 1)]))
    assert t.totals["p"].by_class["internet", "tx"].bytes == big + 1


def _send(sock: socket.socket, port: int, data: bytes) -> None:
    sock.sendto(data, ("127.0.0.1", port))


def test_collector_allow_list_and_bad_input_over_loopback() -> None:
    pods = PodIPMap()
    pods.assign("10.0.0.1", "pod-a", since=0)
    cfg = CollectorConfig(host="127.0.0.1", port=0, allowed_exporters=frozenset({"127.0.0.1"}))
    tpl = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))
    rec = c.set_(256, c.typical_record(0x0A000001, 0x08080808, 1, 2, 1234, 2, 0, 1_000))
    with (
        FlowCollector(pods, TOPO, cfg) as col,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
    ):
        port = col.address[1]
        good.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.2", 0))  # loopback, but not on the allow-list
        _send(stranger, port, c.ipfix([tpl, rec], seq=0))
        _send(good, port, b"\x00\x0a\x00")
        _send(good, port, c.ipfix([tpl, rec], seq=0)[:-3])
        _send(good, port, c.ipfix([tpl, rec], seq=0))
        _send(good, port, struct.pack("!HH", 10, 9999) + b"\0" * 12)
        _send(good, port, c.ipfix([rec], seq=1))
        deadline = time.monotonic() + 5
        while col.stats().datagrams < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        totals = col.totals()
        stats = col.stats()
    assert stats.datagrams == 6
    assert stats.not_allowed == 1
    assert stats.drops == {"truncated_header": 1, "length_past_end": 2, "exporter_not_allowed": 1}
    assert totals["pod-a"].by_class["internet", "tx"].bytes == 2 * 1234
    assert stats.records == 2


def test_ipv6_pods_and_mixed_batches() -> None:
    pods = PodIPMap()
    pods.assign("fd00:1::5", "pod6", since=0)
    pods.assign("10.1.1.2", "pod4", since=0)
    t = Tally(pods, TOPO)
    t.add(
        batch(
            [
                ("fd00:1::5", "2606:4700::1111", 100, 1, 5),
                ("fd99::1", "fd00:1::5", 7, 1, 5),
                ("10.1.1.2", "8.8.8.8", 3, 1, 5),
            ]
        )
    )
    assert snapshot(t) == {
        "pod6": {("internet", "tx"): (100, 1), ("unclassified", "rx"): (7, 1)},
        "pod4": {("internet", "tx"): (3, 1)},
    }


def test_a_decoder_bug_is_counted_and_the_collector_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = PodIPMap()
    pods.assign("10.0.0.1", "pod-a", since=0)
    cfg = CollectorConfig(host="127.0.0.1", port=0, allowed_exporters=frozenset({"127.0.0.1"}))
    tpl = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))
    rec = c.set_(256, c.typical_record(0x0A000001, 0x08080808, 1, 2, 10, 1, 0, 1_000))
    with (
        FlowCollector(pods, TOPO, cfg) as col,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        real_feed = col.decoder.feed
        calls = {"n": 0}

        def flaky(data: bytes, exporter: str) -> bool:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("injected decoder bug")
            return real_feed(data, exporter)

        monkeypatch.setattr(col.decoder, "feed", flaky)
        for seq in range(3):
            _send(sender, col.address[1], c.ipfix([tpl, rec], seq=seq))
        deadline = time.monotonic() + 5
        while col.stats().datagrams < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        totals = col.totals()
        stats = col.stats()
    assert stats.internal_errors == 1
    assert totals["pod-a"].by_class["internet", "tx"].bytes == 20
