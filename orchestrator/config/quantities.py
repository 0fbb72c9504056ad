"""Sizes ("10G") and durations ("1m30s"): parsing and their canonical spelling.

Pure functions. Sizes are binary (K = 1024), as qemu-img reads them; durations use Go's
spelling, as docker compose does.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*([0-9]+)\s*([kmgtKMGT]?)(?:[iI]?[bB])?\s*$")
_UNITS = "KMGT"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|us|µs|h|m|s)")
_DURATION_FACTORS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}

SIZE_PATTERN = r"^[1-9][0-9]*[KMGT]?$"
DURATION_PATTERN = r"^(0s|([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: an int is bytes, a string a number with an optional K/M/G/T suffix."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value}")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"expected a size such as 512M or 10G, got {value!r}")
    number = int(m.group(1))
    unit = m.group(2).upper()
    size: int = number * 1024 ** (_UNITS.index(unit) + 1 if unit else 0)
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size`` bytes: 10737418240 -> "10G"."""
    for exponent in range(len(_UNITS), 0, -1):
        factor = 1024**exponent
        if size % factor == 0:
            return f"{size // factor}{_UNITS[exponent - 1]}"
    return str(size)


def canonical_size(value: str | int) -> str:
    return format_size(parse_size(value))


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds, or Go's "1h2m3s", "1.5s", "500ms"."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    text = value.strip()
    if text in ("0", "0s"):
        return 0.0
    total, pos = 0.0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 30s, 1m30s or 500ms, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """Go's spelling, to the millisecond: 90 -> "1m30s", 0.5 -> "500ms"."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs:
        out += f"{secs}s"
    if ms:
        out += f"{ms}ms"
    return out


def canonical_duration(value: str | int | float) -> str:
    return format_duration(parse_duration(value))
