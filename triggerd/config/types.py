"""Value types shared by every options model: durations, sizes, names, strict base model."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    PrivateAttr,
    WithJsonSchema,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
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


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                    "description": "a duration like 500ms, 30s, 2m, 6h, 7d"}),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?|B)?$"}],
                    "description": "a size like 512KiB, 1GiB, 10MB"}),
]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable, and
    validation errors never echo input values (they may hold secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class InheritsEnvironment(Strict):
    """Options of a plugin whose child processes inherit the daemon's environment.

    The config names secrets by environment variable (`password_env`, `token_env`,
    `secret_env`, ...). The daemon needs them; a child of another component must not see them.
    The loader calls `withholding(names)` with every variable any `*_env` option of the config
    names (`secret_env_names`), and the plugin removes those from what its children inherit.
    Not an option: a config cannot set it, and it does not appear in the schema."""

    _withheld_env: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def withheld_env(self) -> frozenset[str]:
        return self._withheld_env

    def withholding(self, names: Iterable[str]) -> Self:
        copy = self.model_copy()
        copy._withheld_env = frozenset(names)
        return copy


def secret_env_names(*roots: Any) -> set[str]:
    """The environment variables that options anywhere in `roots` (models, and the dicts and
    lists holding them) name as holding a secret: the string value of every field called `env`
    or `*_env` (`password_env`, `token_env`, `secret_env`, an http header's `{env: NAME}`).
    Only model fields count: the keys of a free-form mapping (a command's `env: {NAME: value}`,
    a rule's `params`) name no secret."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                item = getattr(value, name)
                if (name == "env" or name.endswith("_env")) and isinstance(item, str):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for root in roots:
        walk(root)
    return found
