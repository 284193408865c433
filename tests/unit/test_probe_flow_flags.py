"""The collector bounds given as `kopeck probe` flags reach the collector."""

from __future__ import annotations

import argparse

from kopeck_probe.cmd import add_arguments, config_from_args
from kopeck_probe.flows.source import collector_config


def test_flow_flags_reach_the_collector() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--node-name", "n1", "--flows-listen", "127.0.0.1:2055",
                              "--flows-max-streams", "20", "--flows-template-bytes", "2Mi",
                              "--flows-allow", "10.0.0.1@7"])
    cfg = config_from_args(args)
    assert cfg.flows_max_streams == 20 and cfg.flows_template_bytes == 2 * 2**20
    collector = collector_config(cfg.flows_listen, cfg.flows_allow, settings=cfg)
    assert collector.max_streams == 20 and collector.max_template_bytes == 2 * 2**20
    assert (collector.host, collector.port) == ("127.0.0.1", 2055)
    for flag in ("--flows-streams-per-exporter", "--flows-template-fields"):
        assert flag in parser.format_help()
