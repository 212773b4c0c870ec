"""Templates: `{params.model}`, `{value.model}`, `{payload.dir}` substitute values, nothing else.

A template is literal text with `{dotted.path}` fields; `{{` and `}}` are literal braces. A
field is looked up in a mapping (dict keys, or list indices for all-digit parts). Strings are
inserted as they are, other scalars with `str`, dicts and lists as JSON. There is no format
spec, no attribute access on objects and no evaluation: a value can never become code, and a
value never becomes shell syntax because commands are run from an argv list, never a shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from triggerd.errors import ExpressionError

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


class Template:
    """A compiled template. Construction validates the syntax (raises ExpressionError)."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str | tuple[str, ...]] = []
        buf: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "{":
                if text.startswith("{{", i):
                    buf.append("{")
                    i += 2
                    continue
                end = text.find("}", i + 1)
                if end < 0:
                    raise ExpressionError("unclosed '{' in template", column=i + 1)
                name = text[i + 1:end].strip()
                if not _FIELD.fullmatch(name):
                    field = text[i + 1:end]
                    shown = field if len(field) <= 60 else field[:57] + "..."
                    raise ExpressionError(
                        f"invalid template field {{{shown}}}: use a dotted name "
                        "like {params.model}", column=i + 1)
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(tuple(name.split(".")))
                i = end + 1
            elif c == "}":
                if text.startswith("}}", i):
                    buf.append("}")
                    i += 2
                    continue
                raise ExpressionError("single '}' in template (write '}}' for a brace)",
                                      column=i + 1)
            else:
                buf.append(c)
                i += 1
        if buf:
            parts.append("".join(buf))
        self._parts = parts
        self.fields = [".".join(p) for p in parts if isinstance(p, tuple)]

    @property
    def is_literal(self) -> bool:
        return not self.fields

    def render(self, env: Mapping[str, Any]) -> str:
        """Substitute every field from `env`; a missing field raises ExpressionError."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_to_text(lookup(env, part)))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def lookup(env: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = env
    for i, key in enumerate(path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise ExpressionError(f"no value for {'.'.join(path[:i + 1])}")
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, env: Mapping[str, Any]) -> str:
    """Compile and render in one go (for one-off use; cache `Template` on hot paths)."""
    return Template(text).render(env)
