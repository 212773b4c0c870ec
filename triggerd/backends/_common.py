"""What several backends share: data templates, and reading outside systems' answers.
(Secrets from the environment: `triggerd.plugin.read_secret`.)

Data templates
    A YAML value (mapping, list, scalar) whose string leaves are `Template`s. Rendering walks
    the parsed structure and substitutes each leaf on its own, so a value from an event can
    never change the structure around it (no JSON or YAML is ever built by pasting text).
    With `typed=True` a leaf that is exactly one field (`"{params.epochs}"`, `"{events}"`)
    keeps the type of its value (number, list, mapping); other leaves render to strings.
    Keys are literal. `allowed` restricts which fields may appear (checked at build time).

Answers of outside systems
    `retry_after` reads an HTTP `Retry-After` header as RFC 9110 section 10.2.3 defines it, and
    `MAX_RESPONSE` bounds how much of any answer a backend reads into memory.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from triggerd.plugin import (
    ExpressionError,
    PermanentDispatchError,
    Template,
    TriggerContext,
    lookup,
)

_SINGLE_FIELD = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}")
_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only (str.isdigit also takes "²")
RETRY_AFTER_MAX = 3600.0  # seconds: a longer hint is cut to this (and then to max_backoff)
MAX_RESPONSE = 1024 * 1024  # bytes of an answer read at most; the rest is never buffered


def template_values(ctx: TriggerContext, attempt: int) -> dict[str, Any]:
    """What templates of a backend may refer to: the trigger context plus `attempt`."""
    return {**ctx.to_dict(), "attempt": attempt}


class DataTemplate:
    """A parsed YAML value whose string leaves are templates; see the module docstring."""

    def __init__(self, value: Any, *, typed: bool,
                 allowed: Callable[[str], bool] | None = None) -> None:
        self.typed = typed
        self._allowed = allowed
        self._tree = self._compile(value, "")

    def _compile(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                template = Template(value)
            except ExpressionError as exc:
                raise ValueError(f"{path or 'value'}: {exc} (write a literal brace as {{{{ or "
                                 "}}}})") from None
            for name in template.fields:
                if self._allowed is not None and not self._allowed(name):
                    raise ValueError(f"{path or 'value'}: field {{{name}}} is not allowed here")
            return template
        if isinstance(value, Mapping):
            return {str(k): self._compile(v, f"{path}.{k}" if path else str(k))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._compile(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def render(self, env: Mapping[str, Any]) -> Any:
        """The value with every template leaf rendered; a missing field raises
        ExpressionError."""
        return self._render(self._tree, env)

    def _render(self, node: Any, env: Mapping[str, Any]) -> Any:
        if isinstance(node, Template):
            if self.typed and (m := _SINGLE_FIELD.fullmatch(node.text)):
                return lookup(env, tuple(m.group(1).split(".")))
            return node.render(env)
        if isinstance(node, dict):
            return {k: self._render(v, env) for k, v in node.items()}
        if isinstance(node, list):
            return [self._render(v, env) for v in node]
        return node


def render_or_fail(template: DataTemplate, env: Mapping[str, Any], where: str) -> Any:
    """Render at dispatch time: a field without a value fails the job permanently."""
    try:
        return template.render(env)
    except ExpressionError as exc:
        raise PermanentDispatchError(f"template {where}: {exc.message}") from exc


def first_bytes(data: bytes, limit: int) -> str:
    """The first `limit` bytes of a response, as text for a job detail."""
    text = data[:limit].decode("utf-8", "replace")
    return text + (" [...]" if len(data) > limit else "")


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds (RFC 9110 section 10.2.3), or None when it says nothing usable.

    Either delta-seconds (ASCII digits) or an HTTP-date: IMF-fixdate, or the obsolete RFC 850
    and asctime forms (what `email.utils.parsedate_to_datetime` reads; a date without a zone
    is taken as UTC). A date in the past means "now" (0). Anything else (a negative or
    fractional number, garbage, an impossible date) is ignored: None, never an exception.
    Every hint is capped at `RETRY_AFTER_MAX`, so a hostile or broken server cannot schedule
    a retry years out; the dispatcher caps it again at the rule's `retry.max_backoff`."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(int(value[:12])), RETRY_AFTER_MAX)  # 12 digits: already over the cap
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    except OverflowError:
        return RETRY_AFTER_MAX
    return min(max(0.0, seconds), RETRY_AFTER_MAX)


def loads_json(data: bytes) -> Any:
    """`data` parsed as JSON, or None when it is not JSON (invalid UTF-8, bad syntax, nested
    too deep for the parser: a RecursionError): an answer never raises here."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
