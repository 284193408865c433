"""A short, seeded slice of bench/fuzz_flows.py: hostile datagrams never raise, never break
the template budgets, and never cost the honest exporter a record. The same harness must
catch bugs planted in the decoder, so a green run means something."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kopeck_probe.flows import decoder as decoder_module
from kopeck_probe.flows.templates import RecordError

FUZZ = Path(__file__).resolve().parents[2] / "bench" / "fuzz_flows.py"


def load_fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fuzz_flows", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz_flows"] = module
    spec.loader.exec_module(module)
    return module


FZ = load_fuzz()


def test_seeded_slice_is_clean_and_covers_the_hostile_paths() -> None:
    rep, d = FZ.run(20261202, cases=2500)
    assert (rep.exceptions, rep.budget_violations, rep.oracle_violations) == (0, 0, 0), rep.failures
    assert rep.clean_records > 10_000
    assert "undecodable_records" not in d.drops  # a flush failure reached from the wire
    assert 0 < rep.max_state_bytes <= FZ.BOUNDS["max_template_bytes"]
    assert {f"mutation_{m}" for m in FZ.MUTATIONS} <= set(rep.stats)
    hit = {r for r, n in d.drops.items() if n}
    must = {
        "bad_record", "bad_set_length", "bad_template", "bad_version", "length_mismatch",
        "length_past_end", "reserved_set", "sampling_saturated", "set_past_end",
        "stream_evicted", "template_bytes_limit", "template_limit",
        "template_too_many_fields", "truncated_header", "unknown_template", "zero_length_field",
    }  # fmt: skip
    assert must <= hit


def test_harness_catches_a_decoder_that_loses_honest_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> object:
        raise RecordError("planted: every variable-length set is dropped")

    monkeypatch.setattr(decoder_module, "walk_variable", broken)
    rep, _ = FZ.run(5, cases=300)
    assert rep.oracle_violations > 0


def test_harness_catches_a_template_budget_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module.Decoder, "_release", lambda self, exporter, layouts: None)
    rep, _ = FZ.run(5, cases=300)
    assert rep.budget_violations > 0


def test_harness_catches_a_raising_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    real = decoder_module.compile_layout

    def fragile(template: object) -> object:
        if len(template.fields) > 200:  # type: ignore[attr-defined]
            raise ValueError("planted")
        return real(template)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder_module, "compile_layout", fragile)
    rep, _ = FZ.run(5, cases=600)
    assert rep.exceptions > 0
