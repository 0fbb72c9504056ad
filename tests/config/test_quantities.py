"""Sizes and durations."""

from __future__ import annotations

import pytest

from orchestrator.config.quantities import (
    canonical_duration,
    canonical_size,
    format_duration,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        (512, 512),
        ("512K", 512 * 1024),
        ("10G", 10 * 1024**3),
        ("10g", 10 * 1024**3),
        ("10GB", 10 * 1024**3),
        ("10GiB", 10 * 1024**3),
        ("2T", 2 * 1024**4),
        (" 64 M ", 64 * 1024**2),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1G", "10X", "0", 0, -5, "1 0G"])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("1024M", "1G"), ("1536M", "1536M"), ("20G", "20G"), (1024, "1K"), (1000, "1000")],
)
def test_canonical_size(given: str | int, canonical: str) -> None:
    assert canonical_size(given) == canonical


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2h3m4s", 7384.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10", "10 s", "1x", "m1", "-1s", -1, "1s1"])
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (3600, "1h"), (0.5, "500ms"), (61.25, "1m1s250ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_canonical_duration() -> None:
    assert canonical_duration("90s") == "1m30s"
    assert canonical_duration(120) == "2m"
