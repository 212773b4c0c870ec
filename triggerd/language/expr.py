"""The safe `where` language: `Expression`, `event_env`, `NAMES`.

An expression is a Python expression over the event, checked when it is compiled and evaluated
by `simpleeval` over the checked syntax tree. The contract:

- Names: the event fields in `NAMES` (`kind`, `subject`, `source`, `id`, `fingerprint`,
  `payload`, and the shorthands `value`, `size`, `path` for `payload.value`, `payload.size`,
  `payload.path`; see `event_env`), the literals `true`/`false`/`null` (aliases of
  `True`/`False`/`None`) and the functions below. Any other name is a compile-time error.
- Operators: comparisons (chained too), `and`/`or`/`not`, `in`/`not in`, `is`/`is not` (only
  against `None`/`true`/`false`), `+ - * / // % **` and unary `-`/`+`, and glob matching
  `text matches "**/*.parquet"` (infix, with the precedence of a comparison).
- Literals: strings, numbers, booleans, null, lists and tuples. Subscripts `payload['x']`,
  `path[-8:]`; `a.b` on an object (dict) is key lookup, never Python attribute access.
- Calls: only `len int float str abs min max round matches(text, glob) regex(text, pattern)`
  and the string methods `startswith endswith lower upper strip lstrip rstrip split replace
  count find isdigit`, positional arguments only. `regex` is a search with RE2 (linear time;
  no backreferences or lookaround: `triggerd.language.regex`); patterns are cached and limited
  to 200 characters. Globs follow `triggerd.language.globs`.
- Refused when compiled, with `ExpressionError(message, column)` (1-based, counted in the
  expression text): syntax errors, unknown names, functions and methods, names starting with
  `_`, lambdas, comprehensions, f-strings, `:=`, `*` unpacking, dict/set displays, conditional
  expressions, keyword arguments, bit operators, `@`, `%` formatting of strings, expressions
  longer than 4000 characters or nested deeper than 100 levels. Operations on literals only
  are computed once at compile time, so `9**9**9` or `1/0` are refused there.
- `evaluate` raises only `ExpressionError` (missing field: "no field value.score"; wrong types:
  "cannot compare null with a number using '>' ..."; division by zero; a number or string
  that would grow too large: powers, products and `replace` are bounded by simpleeval's
  MAX_POWER / MAX_STRING_LENGTH and a 16384-bit integer limit). Nothing can reach a Python
  object that is not plain data: there is no `getattr` on event values at all.
- Bounds: every value an evaluation creates is bounded (strings, and `str()` of a list or
  an object, to `MAX_STRING_LENGTH` characters; lists to `MAX_ITEMS` items), and one
  evaluation has a work budget (`MAX_WORK` units: one per node, plus the length of every
  string, list or object an operation or call reads or builds, and for `regex` the text's
  length times (2 + half the size of the pattern's RE2 program), charged before the call;
  a glob `matches` likewise).
  An evaluation over budget fails with "too much work", like any other evaluation error:
  the event does not match and the rule's error count grows. The budget bounds the dearest
  accepted evaluation to milliseconds (`bench/expr.py` measures the worst cases).

Expressions are compiled once and are safe to evaluate from several threads.

The implementation, one module each: `_expr_calls` (names, limits, functions, methods,
operators and their costs), `_expr_check` (tokens, parse, the checker) and `_expr_eval` (the
bounded evaluator and positions in the text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triggerd.errors import ExpressionError
from triggerd.language._expr_calls import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_PATTERN_LENGTH,
    MAX_ROUND_DIGITS,
    MAX_STRING_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_WORK,
    METHODS,
    NAMES,
    REGEX_MAX_MEM,
    event_env,
)
from triggerd.language._expr_check import (
    _Checker,
    _parse,
    _scan,
)
from triggerd.language._expr_eval import (
    _run,
    _Source,
)

__all__ = ["FUNCTIONS", "MAX_DEPTH", "MAX_INT_BITS", "MAX_ITEMS", "MAX_PATTERN_LENGTH",
           "MAX_ROUND_DIGITS", "MAX_STRING_LENGTH", "MAX_TEXT_LENGTH", "MAX_WORK", "METHODS",
           "NAMES", "REGEX_MAX_MEM", "Expression", "event_env"]


class Expression:
    """A compiled `where` expression; see the module docstring for the language.

    Construction checks everything it can and raises `ExpressionError` with a 1-based column.
    `names` is the set of event names (from `NAMES`) the expression uses.
    """

    __slots__ = ("_source", "_tree", "names", "text")

    text: str
    names: frozenset[str]

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ExpressionError(f"an expression must be a string, not {type(text).__name__}")
        self.text = text
        if not text.strip():
            raise ExpressionError("empty expression", column=1)
        if len(text) > MAX_TEXT_LENGTH:
            raise ExpressionError(f"expression longer than {MAX_TEXT_LENGTH} characters",
                                  column=MAX_TEXT_LENGTH + 1)
        source = _Source(text)
        rewritten, globs = _scan(source)
        tree = _parse(rewritten, source)
        checker = _Checker(source, globs)
        self._tree = checker.check(tree.body, 1)
        if checker.globs:  # pragma: no cover - a rewritten `matches` always parses as ==
            line, col = checker.globs[0]
            raise ExpressionError("'matches' must stand between a text and a glob pattern",
                                  column=source.column(line, source.char_col(line, col)))
        self._source = source
        self.names = frozenset(checker.names)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """The value of the expression for `env` (see `event_env`); raises ExpressionError."""
        return _run(self._tree, env, self._source)

    def test(self, env: Mapping[str, Any]) -> bool:
        """`bool(evaluate(env))`: does the event match? Raises ExpressionError."""
        return bool(_run(self._tree, env, self._source))

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"
