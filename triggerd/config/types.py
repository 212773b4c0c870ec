"""Value types shared by every options model: durations, sizes, names, strict base model."""

from __future__ import annotations

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

from triggerd.language.units import (
    DURATION_PATTERN,
    format_duration,
    parse_duration,
    parse_size,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


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

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              use_attribute_docstrings=True)  # descriptions in the schema


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
    return {name for _where, name in secret_env_options(roots)}


def secret_env_options(root: Any, where: str = "") -> list[tuple[str, str]]:
    """(dotted option path, variable name) of every option under `root` naming a secret
    variable (see `secret_env_names`), e.g. ("backends.hook.secret_env", "HOOK_SECRET")."""
    found: list[tuple[str, str]] = []

    def at(path: str, key: object) -> str:
        return f"{path}.{key}" if path else str(key)

    def walk(value: Any, path: str) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                item = getattr(value, name)
                if (name == "env" or name.endswith("_env")) and isinstance(item, str):
                    found.append((at(path, name), item))
                else:
                    walk(item, at(path, name))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, at(path, key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(root, where)
    return found
