"""Quantities and durations: exact parsing, kubectl-style formatting, clear errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from kopeck.rightsizing.quantity import (
    QuantityError,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
    round_up_memory,
)


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("250m", Decimal("0.25")),
        ("1.5", Decimal("1.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        (0.5, Decimal("0.5")),
        ("100u", Decimal("0.0001")),
        ("1e3", Decimal(1000)),
        ("5E-1", Decimal("0.5")),
        (".5", Decimal("0.5")),
        ("1k", Decimal(1000)),
    ],
)
def test_parse_cpu(text: str | int | float, cores: Decimal) -> None:
    assert parse_cpu(text) == cores


@pytest.mark.parametrize(
    ("text", "num_bytes"),
    [
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        ("1Gi", 2**30),
        ("1.5Ki", 1536),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("123M", 123_000_000),
        ("1500m", 2),  # milli-bytes round up, as Kubernetes does
        (1024, 1024),
    ],
)
def test_parse_memory(text: str | int, num_bytes: int) -> None:
    assert parse_memory(text) == num_bytes


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "12Q", "Mi", "1 Gi", "--1", "1e3m"])
def test_bad_quantities_name_the_value(bad: str) -> None:
    with pytest.raises(QuantityError, match="not valid"):
        parse_memory(bad)


def test_negative_requests_refused() -> None:
    with pytest.raises(QuantityError, match="negative"):
        parse_cpu("-1")
    with pytest.raises(QuantityError, match="negative"):
        parse_memory("-1Mi")


@pytest.mark.parametrize(
    ("cores", "text"),
    [
        (Decimal("0.25"), "250m"),
        (Decimal(2), "2"),
        (Decimal("0.0101"), "11m"),  # rounds up to whole millicores
        (Decimal("1.5"), "1500m"),
        (0.1, "100m"),
    ],
)
def test_format_cpu(cores: Decimal | float, text: str) -> None:
    assert format_cpu(cores) == text
    assert parse_cpu(text) >= Decimal(str(cores))


@pytest.mark.parametrize("num_bytes", [512 * 2**20, 2 * 2**30, 1536, 0, 10**9, 7])
def test_format_memory_round_trips(num_bytes: int) -> None:
    assert parse_memory(format_memory(num_bytes)) == num_bytes


def test_format_memory_units() -> None:
    assert format_memory(512 * 2**20) == "512Mi"
    assert format_memory(3 * 2**30) == "3Gi"
    assert format_memory(3 * 2**10) == "3Ki"
    assert format_memory(1000) == "1000"
    assert round_up_memory(100 * 2**20 + 1) == 101 * 2**20


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("168h", dt.timedelta(hours=168)),
        ("7d", dt.timedelta(days=7)),
        ("90m", dt.timedelta(minutes=90)),
        ("1h30m", dt.timedelta(minutes=90)),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("2w", dt.timedelta(weeks=2)),
    ],
)
def test_parse_duration(text: str, delta: dt.timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize("bad", ["", "7", "h", "1h 30m", "1y"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(QuantityError, match="duration"):
        parse_duration(bad)
