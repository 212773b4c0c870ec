"""The `where` language's names, limits, functions, methods and operators, each bounded
(see `triggerd.language.expr` for the contract)."""

from __future__ import annotations

import ast
import functools
import operator as op
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import simpleeval

from triggerd.errors import ExpressionError
from triggerd.language.globs import compile_glob, glob_match
from triggerd.language.regex import Compiled, RegexError, compile_re2
from triggerd.model import Event

_NAME_ORDER = ("kind", "subject", "source", "id", "fingerprint", "payload", "value", "size",
               "path")
NAMES: frozenset[str] = frozenset(_NAME_ORDER)
"""The top-level names an expression may use; `event_env` provides them for an event."""

_ALIASES: dict[str, bool | None] = {"true": True, "false": False, "null": None}

MAX_TEXT_LENGTH = 4000
MAX_DEPTH = 100
MAX_PATTERN_LENGTH = 200
REGEX_MAX_MEM = 1 << 20  # RE2's memory for one regex() pattern: larger ones are refused
MAX_INT_BITS = 16384
MAX_ROUND_DIGITS = 100
MAX_STRING_LENGTH: int = simpleeval.MAX_STRING_LENGTH
MAX_ITEMS = 100_000
MAX_WORK = 1_000_000


def event_env(event: Event) -> dict[str, Any]:
    """The names an expression may use for `event` (see `NAMES`)."""
    payload = event.payload
    return {
        "kind": event.kind,
        "subject": event.subject,
        "source": event.source,
        "id": event.id,
        "fingerprint": event.fingerprint,
        "payload": payload,
        "value": payload.get("value"),
        "size": payload.get("size"),
        "path": payload.get("path"),
    }


# --------------------------------------------------------------------------------------------
# Functions, methods and operators


class _Refused(Exception):
    """A function refused its arguments; the message is for the user."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _matches(text: Any, pattern: Any) -> bool:
    if not isinstance(text, str) or not isinstance(pattern, str):
        raise _Refused(f"matches needs two strings, got {_type_name(text)} and "
                       f"{_type_name(pattern)}")
    return glob_match(text, pattern)


@functools.lru_cache(maxsize=512)
def _compile_regex(pattern: str) -> Compiled:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _Refused(f"regex pattern longer than {MAX_PATTERN_LENGTH} characters")
    return compile_re2(pattern, max_mem=REGEX_MAX_MEM)


def _regex(text: Any, pattern: Any) -> bool:
    if not isinstance(text, str) or not isinstance(pattern, str):
        raise _Refused(f"regex needs two strings, got {_type_name(text)} and "
                       f"{_type_name(pattern)}")
    return _compile_regex(pattern).search(text) is not None


def _regex_cost(text: Any, pattern: Any) -> int:
    """What a regex search costs in work units: RE2 is linear in the text, and each
    character costs up to the size of the pattern's program (measured: ~1 ns a character
    and instruction once the automaton outgrows its cache; bench/expr.py)."""
    if not isinstance(text, str) or not isinstance(pattern, str):
        return 1
    try:
        size = _compile_regex(pattern).size
    except (_Refused, RegexError):
        return 1  # the call itself says what is wrong
    return len(text) * (2 + size // 2) + len(pattern)


def _glob_cost(text: Any, pattern: Any) -> int:
    """What a glob match costs in work units: as a regex (`_regex_cost`), by its program."""
    if not isinstance(text, str) or not isinstance(pattern, str):
        return 1
    try:
        size = compile_glob(pattern).size
    except ExpressionError:
        return 1  # the call itself says what is wrong
    return len(text) * (2 + size // 2) + len(pattern)


def _repr_fits(value: Any, limit: int) -> bool:
    """Would `str(value)` of a list or object be at most `limit` characters? Walks no further
    than the limit, so a huge or deeply nested value costs no more than a small one."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if len(v) > limit:
                return False
            total += len(repr(v))
        elif isinstance(v, list | tuple):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, Mapping):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 2
        else:
            total += 24  # floats, booleans, null
        if total > limit:
            return False
    return True


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | Mapping) and not _repr_fits(value, MAX_STRING_LENGTH):
        raise simpleeval.IterableTooLong("str() result too long")
    return str(value)


def _round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(number)
    if isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise _Refused(f"round() to more than {MAX_ROUND_DIGITS} digits")
    return round(number, ndigits)


def _replace(text: str, old: Any, new: Any, count: Any = -1) -> str:
    if not isinstance(old, str) or not isinstance(new, str) or not isinstance(count, int):
        raise _Refused("replace needs two strings (and optionally a count)")
    n = text.count(old)
    if count >= 0:
        n = min(n, count)
    growth = n * (len(new) - len(old))
    if growth > 0 and len(text) + growth > simpleeval.MAX_STRING_LENGTH:
        raise simpleeval.IterableTooLong("replace result too long")
    return text.replace(old, new, count)


@dataclass(frozen=True, slots=True)
class _Callable:
    fn: Callable[..., Any]
    min_args: int
    max_args: int | None


FUNCTIONS: dict[str, _Callable] = {
    "len": _Callable(len, 1, 1),
    "int": _Callable(int, 1, 2),
    "float": _Callable(float, 1, 1),
    "str": _Callable(_str, 1, 1),
    "abs": _Callable(abs, 1, 1),
    "min": _Callable(min, 1, None),
    "max": _Callable(max, 1, None),
    "round": _Callable(_round, 1, 2),
    "matches": _Callable(_matches, 2, 2),
    "regex": _Callable(_regex, 2, 2),
}
"""The functions an expression may call, with their argument counts."""

METHODS: dict[str, _Callable] = {
    "startswith": _Callable(str.startswith, 1, 3),
    "endswith": _Callable(str.endswith, 1, 3),
    "lower": _Callable(str.lower, 0, 0),
    "upper": _Callable(str.upper, 0, 0),
    "strip": _Callable(str.strip, 0, 1),
    "lstrip": _Callable(str.lstrip, 0, 1),
    "rstrip": _Callable(str.rstrip, 0, 1),
    "split": _Callable(str.split, 0, 2),
    "replace": _Callable(_replace, 2, 3),
    "count": _Callable(str.count, 1, 3),
    "find": _Callable(str.find, 1, 3),
    "isdigit": _Callable(str.isdigit, 0, 0),
}
"""The string methods an expression may call (on strings only), with their argument counts."""


def _weight(value: Any) -> int:
    """The work units of reading or building `value`: its length, or 1."""
    if isinstance(value, str | list | tuple | Mapping):
        return max(len(value), 1)
    return 1


def _int_bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _mult(a: Any, b: Any) -> Any:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        raise _Refused("lists cannot be repeated with '*'")
    if isinstance(a, int) and isinstance(b, int) and _int_bits(a) + _int_bits(b) > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh("product too large")
    return simpleeval.safe_mult(a, b)


def _power(a: Any, b: Any) -> Any:
    if (isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1
            and _int_bits(a) * b > MAX_INT_BITS):
        raise simpleeval.NumberTooHigh("power too large")
    result = simpleeval.safe_power(a, b)
    if isinstance(result, complex):
        raise _Refused("the result is not a real number")
    return result


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        raise _Refused("'%' formatting of strings is not supported")
    return a % b


class _GlobMatch(ast.cmpop):
    """The comparison operator `matches` is rewritten to (see `_scan`)."""


_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: simpleeval.safe_add,
    ast.Sub: op.sub,
    ast.Mult: _mult,
    ast.Div: op.truediv,
    ast.FloorDiv: op.floordiv,
    ast.Mod: _mod,
    ast.Pow: _power,
    ast.Not: op.not_,
    ast.USub: op.neg,
    ast.UAdd: op.pos,
    ast.Eq: op.eq,
    ast.NotEq: op.ne,
    ast.Lt: op.lt,
    ast.LtE: op.le,
    ast.Gt: op.gt,
    ast.GtE: op.ge,
    ast.In: lambda x, y: x in y,
    ast.NotIn: lambda x, y: x not in y,
    ast.Is: op.is_,
    ast.IsNot: op.is_not,
    _GlobMatch: _matches,
}

_OP_TEXT: dict[type[ast.AST], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
    ast.Pow: "**", ast.MatMult: "@", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^",
    ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~", ast.Not: "not", ast.USub: "-",
    ast.UAdd: "+", ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
    ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
    _GlobMatch: "matches",
}
