"""The collector's settings in the probe config: listen address, bounds, allow-list by
(address, observation domain), environment, and errors that name the setting."""

from __future__ import annotations

import socket
import time

import pytest
from pydantic import ValidationError

from kopeck_probe.config import (
    FLOWS_MAX_TEMPLATE_FIELDS,
    ProbeConfig,
    exporter_allow_list,
)
from kopeck_probe.flows import craft as c
from kopeck_probe.flows.classify import Location, NodePlacement, Topology
from kopeck_probe.flows.collector import CollectorConfig, FlowCollector
from kopeck_probe.flows.podmap import PodIPMap
from kopeck_probe.flows.source import collector_config
from kopeck_probe.flows.templates import MAX_TEMPLATE_FIELDS

TOPO = Topology(local=NodePlacement("n1", Location("z1", "r1"), (), ()))
TPL = c.set_(2, c.template_record(256, c.TYPICAL_FIELDS, ipfix=True))
REC = c.set_(256, c.typical_record(0x0A000001, 0x08080808, 1, 2, 1234, 2, 0, 1_000))


def cfg(**kw: object) -> ProbeConfig:
    return ProbeConfig(node_name="n1", **kw)  # type: ignore[arg-type]


def test_config_field_bound_is_the_decoders() -> None:
    assert FLOWS_MAX_TEMPLATE_FIELDS == MAX_TEMPLATE_FIELDS


def test_defaults_are_the_collectors_and_port_2055() -> None:
    got = collector_config("127.0.0.1", None, cfg())
    want = CollectorConfig(host="127.0.0.1")
    assert got == want
    assert got.port == 2055 and got.allowed_exporters is None


def test_settings_reach_the_decoder_and_bound_it() -> None:
    p = cfg(
        flows_max_streams=8,
        flows_streams_per_exporter=2,
        flows_templates_per_stream=3,
        flows_template_fields=8,
        flows_template_bytes_per_exporter="4Ki",
        flows_template_bytes="16KiB",
    )
    col = FlowCollector(PodIPMap(), TOPO, collector_config(":0", ["127.0.0.1"], p))
    d = col.decoder
    assert (d.max_streams, d.max_streams_per_exporter, d.max_templates, d.max_fields) == (
        8,
        2,
        3,
        8,
    )
    assert (d.max_template_bytes_per_exporter, d.max_template_bytes) == (4096, 16384)
    assert col.handle(c.ipfix([TPL, REC], seq=0), "127.0.0.1")  # 13 fields > 8: refused
    col.flush()
    assert col.stats().drops == {"template_too_many_fields": 1, "unknown_template": 1}


def test_environment_fills_settings_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOPECK_FLOWS_TEMPLATE_BYTES", "2Mi")
    monkeypatch.setenv("KOPECK_FLOWS_STREAMS_PER_EXPORTER", "4")
    monkeypatch.setenv("KOPECK_FLOWS_ALLOW", "10.0.0.1@3, 10.0.0.2")
    p = cfg(flows_streams_per_exporter=5)
    assert p.flows_template_bytes == 2 << 20
    assert p.flows_streams_per_exporter == 5  # given beats the environment
    assert p.flows_allow == ("10.0.0.1@3", "10.0.0.2")


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"flows_template_bytes": "8 parsecs"}, "--flows-template-bytes (KOPECK_FLOWS_TEMPLATE_BYTES)"),
        ({"flows_template_bytes_per_exporter": 100}, "--flows-template-bytes-per-exporter"),
        ({"flows_template_fields": 1000}, "--flows-template-fields (KOPECK_FLOWS_TEMPLATE_FIELDS)"),
        ({"flows_max_streams": 0}, "--flows-max-streams"),
        ({"flows_templates_per_stream": True}, "--flows-templates-per-stream"),
        ({"flows_streams_per_exporter": 65, "flows_max_streams": 64}, "is more than --flows-max-streams"),
        ({"flows_template_bytes_per_exporter": "16Mi"}, "is more than --flows-template-bytes"),
        ({"flows_allow": ("10.0.0.1@x",)}, "--flows-allow '10.0.0.1@x': observation domain"),
        ({"flows_allow": ("10.0.0.1@4294967296",)}, "observation domain"),
        ({"flows_allow": ("10.0.0.0/8@1",)}, "at most 4096 addresses"),
        ({"flows_listen": "127.0.0.1:70000"}, "--flows-listen"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_setting(kw: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError) as exc:
        cfg(**kw)
    assert says in str(exc.value)


def test_bad_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOPECK_FLOWS_TEMPLATE_FIELDS", "lots")
    with pytest.raises(ValidationError) as exc:
        cfg()
    assert "KOPECK_FLOWS_TEMPLATE_FIELDS" in str(exc.value)


def test_allow_list_entries_by_domain() -> None:
    a = exporter_allow_list(("10.0.0.1@3", "10.0.0.1@4", "10.0.0.2", "10.0.0.2@9", "10.0.1.0/30@1"))
    assert a.any_domain == {"10.0.0.2"}
    assert a.domains == {
        "10.0.0.1": {3, 4},
        "10.0.1.1": {1},
        "10.0.1.2": {1},
    }


def test_allow_list_by_domain_over_loopback() -> None:
    """A hostNetwork pod shares the node's address: only the node exporter's domain counts."""
    pods = PodIPMap()
    pods.assign("10.0.0.1", "pod-a", since=0)
    topo = Topology(local=NodePlacement("n1", Location("z1", "r1"), (), ()))
    config = collector_config("127.0.0.1:0", ["127.0.0.1@7", "127.0.0.3"])
    with (
        FlowCollector(pods, topo, config) as col,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
    ):
        port = col.address[1]
        stranger.bind(("127.0.0.2", 0))
        node.sendto(c.ipfix([TPL, REC], seq=0, domain=7), ("127.0.0.1", port))
        node.sendto(c.ipfix([TPL, REC], seq=0, domain=8), ("127.0.0.1", port))
        node.sendto(c.v9([], seq=0, source_id=7), ("127.0.0.1", port))  # v9 source id 7: ok
        stranger.sendto(c.ipfix([TPL, REC], seq=0, domain=7), ("127.0.0.1", port))
        deadline = time.monotonic() + 5
        while col.stats().datagrams < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        totals = col.totals()
        stats = col.stats()
    assert stats.datagrams == 4
    assert stats.drops == {"domain_not_allowed": 1, "exporter_not_allowed": 1}
    assert stats.not_allowed == 2
    assert sorted((s.version, s.domain) for s in stats.streams) == [(9, 7), (10, 7)]
    assert {k: v.bytes for k, v in totals["pod-a"].by_class.items()} == {("internet", "tx"): 1234}
