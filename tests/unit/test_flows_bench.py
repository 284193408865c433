"""A tiny run of the flow benchmark's own parts, so the benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from kopeck_probe.flows.decoder import Decoder

BENCH = Path(__file__).resolve().parents[2] / "bench" / "flows.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_flows", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_flows"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_datagrams_decode_and_decode_only_runs() -> None:
    bench = load_bench()
    datagrams = bench.make_datagrams(1000)
    d = Decoder()
    assert all(d.feed(x, "127.0.0.1") for x in datagrams)
    assert len(d.flush()) == 1000
    assert [(s.sequence_gaps, s.records) for s in d.stream_stats()] == [(0, 1000)]
    figures = bench.decode_only(datagrams, repeat=1)
    assert figures["records_per_s"] > 0 and figures["with_pod_tally_records_per_s"] > 0
