"""Network bytes by class: eBPF totals and flow classes are one traffic, counted once."""

from __future__ import annotations

from kopeck.accounting.network import bytes_by_class
from kopeck.api.report import NetworkUsage


def u(cls: str, direction: str, n: int, source: str) -> NetworkUsage:
    return NetworkUsage(traffic_class=cls, direction=direction, bytes=n, source=source)


def test_ebpf_alone_is_unclassified() -> None:
    assert bytes_by_class([u("unclassified", "tx", 1000, "ebpf"),
                           u("unclassified", "rx", 50, "ebpf")]) == {"unclassified": 1050}


def test_flows_classify_the_ebpf_total_without_adding_to_it() -> None:
    got = bytes_by_class([
        u("unclassified", "tx", 1000, "ebpf"),
        u("internet", "tx", 600, "flows"),
        u("crossZone", "tx", 300, "flows"),
        u("unclassified", "rx", 200, "ebpf"),
        u("intraZone", "rx", 200, "flows"),
    ])
    assert got == {"internet": 600, "crossZone": 300, "unclassified": 100, "intraZone": 200}
    assert sum(got.values()) == 1200  # the eBPF totals, each byte once


def test_flows_alone_and_flows_above_the_measured_total() -> None:
    assert bytes_by_class([u("internet", "tx", 70, "flows")]) == {"internet": 70}
    got = bytes_by_class([u("unclassified", "tx", 100, "veth"), u("internet", "tx", 120, "flows")])
    assert got == {"internet": 120}  # never a negative remainder


def test_measured_bytes_keep_their_class_when_no_flow_classifies_them() -> None:
    got = bytes_by_class([u("internet", "tx", 500, "ebpf"), u("unclassified", "rx", 20, "ebpf")])
    assert got == {"internet": 500, "unclassified": 20}
