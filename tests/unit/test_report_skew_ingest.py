"""Version skew and wall-clock trouble must not make ingest refuse a probe's report: a
field from the next minor version, a backwards clock step and a stall of over an hour
are all accepted (200) and the usage in them is folded."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from kopeck.api.report import MAX_INTERVAL, SCHEMA_VERSION, ProbeReport, ReportAck
from kopeck.operator.state import State
from tests.support.ingest import Client, FakeKube, body, post, run

END = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)


def stamp(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_unknown_fields_of_a_newer_probe_are_ignored() -> None:
    raw: dict[str, Any] = {**body(1), "schemaVersion": SCHEMA_VERSION + 1, "gpuSeconds": 3}
    raw["pods"][0]["pressureStallSeconds"] = 0.5
    raw["pods"][0]["containers"] = [{"name": "c", "cpuCoreSeconds": 1,
                                     "memoryWorkingSetBytes": 1, "newCounter": 1}]
    r = ProbeReport.model_validate(raw)
    assert r.schema_version == SCHEMA_VERSION + 1 and r.pods[0].containers[0].name == "c"
    assert ProbeReport.model_validate(body(1)).schema_version == 1  # older probes: default
    assert ReportAck.model_validate({"accepted": True, "retryAfter": 3}).accepted


def test_backwards_clock_step_keeps_the_report() -> None:
    raw = {**body(1), "intervalStart": stamp(END), "intervalEnd": stamp(END - dt.timedelta(seconds=30)),
           "elapsedSeconds": 5.0}
    r = ProbeReport.model_validate(raw)
    assert r.interval_end == END - dt.timedelta(seconds=30)
    assert r.interval_end - r.interval_start == dt.timedelta(seconds=5)
    assert r.clock_step_seconds == 30.0
    # validating the stored report again changes nothing
    again = ProbeReport.model_validate_json(r.model_dump_json(by_alias=True))
    assert again == r


def test_stall_over_an_hour_keeps_the_report_and_the_time() -> None:
    raw = {**body(1), "intervalStart": stamp(END - dt.timedelta(hours=3)),
           "intervalEnd": stamp(END)}
    r = ProbeReport.model_validate(raw)
    assert r.interval_end - r.interval_start == MAX_INTERVAL
    assert r.stalled_seconds == 2 * 3600.0


def test_garbage_interval_is_still_refused() -> None:
    raw = {**body(1), "intervalStart": stamp(END), "intervalEnd": "2000-01-01T00:00:00Z"}
    with pytest.raises(ValidationError, match="not a clock step"):
        ProbeReport.model_validate(raw)


def test_ingest_accepts_skewed_reports() -> None:
    async def scenario(client: Client, state: State, kube: FakeKube) -> None:
        newer = {**body(1), "schemaVersion": SCHEMA_VERSION + 1, "someNewField": {"x": 1}}
        stepped = {**body(2), "intervalStart": stamp(END + dt.timedelta(seconds=10)),
                   "intervalEnd": stamp(END + dt.timedelta(seconds=4))}
        stalled = {**body(3), "intervalStart": stamp(END - dt.timedelta(hours=2))}
        for payload in (newer, stepped, stalled):
            code, answer = await post(client, payload, "good")
            assert code == 200, answer
            assert answer["accepted"] is True and not answer.get("duplicate")
        assert state.seen["n1/b"].ranges == [(1, 3)]

    run(scenario)
