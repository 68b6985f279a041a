"""Operator-facing scalar formats: durations (``250ms``, ``2s``, ``1h30m``), percentages and sizes."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(text: str) -> timedelta:
    """Parse ``250ms``, ``2s``, ``1.5m``, ``1h30m`` or ``7d`` into a timedelta.

    Raises ValueError with the accepted forms when ``text`` is not a duration.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration; use a number with a unit, e.g. 250ms, 2s, 5m, 1h")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(
            f"invalid duration {text!r}; use a number with a unit (ms, s, m, h, d), e.g. 250ms, 2s, 1h30m"
        )
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the shortest exact form ``parse_duration`` reads back."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def parse_percent(value: str | int | float) -> float:
    """Parse ``20%`` / ``20`` / ``0.5%`` into a fraction in [0, 1]; raises ValueError outside it."""
    if isinstance(value, bool):
        raise ValueError("expected a percentage such as 20%")
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"invalid percentage {value!r}; write e.g. 20%") from None
    elif isinstance(value, int | float):
        number = float(value)
    else:  # a list, a mapping, null from YAML: a clear error, not a TypeError (it crashed the loader)
        raise ValueError(f"expected a percentage such as 20%, not {type(value).__name__}")
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"percentage {value!r} is outside 0%..100%")
    return number / 100.0


def parse_size(value: str | int) -> int:
    """Parse ``1MiB`` / ``512KB`` / ``2048`` into bytes; raises ValueError for other text."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):  # 1.5, a list, null: a clear error, not an AttributeError
        raise ValueError(f"expected a size such as 1MiB, not {type(value).__name__} {value!r}")
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"invalid size {value!r}; write e.g. 4096, 64KiB, 1MiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
