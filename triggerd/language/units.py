"""Units of the config language: durations (`500ms`, `30s`, `2m`, `6h`, `7d`, `1w`) and sizes
(`512KiB`, `1GiB`, `10MB`), parsed and formatted."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h|d|w)$"


def parse_duration(value: Any) -> timedelta:
    """'500ms', '30s', '2m', '6h', '7d', '1w' -> timedelta; bare numbers are refused."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"invalid duration {value!r} (write it like 500ms, 30s, 2m, 6h or 7d)")


def format_duration(value: timedelta) -> str:
    total = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    if total < 1:
        return f"{round(total * 1000)}ms"
    return f"{total:g}s"


def parse_size(value: Any) -> int:
    """'512KiB', '1GiB', '10MB', 1024 -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"invalid size {value!r} (write it like 512KiB, 1GiB or 10MB)")
