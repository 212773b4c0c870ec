"""The safe `where` language (SPEC 3.2): `Expression`, `event_env`, `NAMES`.

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
"""

from __future__ import annotations

import ast
import functools
import io
import keyword
import operator as op
import re
import threading
import tokenize
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import simpleeval

from triggerd.errors import ExpressionError
from triggerd.language.globs import compile_glob, glob_match
from triggerd.language.regex import Compiled, RegexError, compile_re2
from triggerd.model import Event

__all__ = ["FUNCTIONS", "METHODS", "NAMES", "Expression", "event_env"]

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

# --------------------------------------------------------------------------------------------
# Positions


class _Source:
    """The expression text as parsed: wrapped in parentheses (so it may span lines).

    All AST and token positions are in the wrapped text; `column` maps them back to a 1-based
    column in the user's text (counted from its start, newlines included).
    """

    __slots__ = ("lines", "starts", "text", "wrapped")

    def __init__(self, text: str) -> None:
        # Same length, so every offset stays valid; Python would treat a lone \r as a newline.
        normal = text.replace("\r\n", " \n").replace("\r", "\n")
        self.text = text
        self.wrapped = "(" + normal + "\n)"
        self.lines = self.wrapped.split("\n")
        starts, offset = [], -1  # the wrapper's "(" is at offset -1 of the user's text
        for line in self.lines:
            starts.append(offset)
            offset += len(line) + 1
        self.starts = starts

    def column(self, lineno: int, char_col: int) -> int:
        if lineno >= len(self.lines):  # the wrapper's closing line: the end of the text
            return len(self.text) + 1
        return max(self.starts[lineno - 1] + char_col, 0) + 1

    def char_col(self, lineno: int, byte_col: int) -> int:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        return len(line.encode()[:byte_col].decode("utf-8", "ignore"))

    def byte_col(self, lineno: int, char_col: int) -> int:
        return len(self.lines[lineno - 1][:char_col].encode())

    def node_column(self, node: ast.AST) -> int | None:
        lineno: int | None = getattr(node, "lineno", None)
        col: int | None = getattr(node, "col_offset", None)
        if lineno is None or col is None:
            return None
        return self.column(lineno, self.char_col(lineno, col))

    def segment(self, node: ast.AST) -> str:
        try:
            text = ast.get_source_segment(self.wrapped, node)
        except Exception:  # pragma: no cover - positions are always set by the parser
            text = None
        text = " ".join((text or "the expression").split())
        return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# Evaluation


class _Failure(Exception):
    def __init__(self, message: str, node: ast.AST) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


class _Evaluator(simpleeval.SimpleEval):  # type: ignore[misc]
    """simpleeval with only the node types the checker lets through.

    Names come from `env`; attribute access and subscripts are key/index lookups on plain data
    (never `getattr`); calls go to `FUNCTIONS` and `METHODS` only. Any failure becomes a
    `_Failure` located at the innermost node that failed. simpleeval's per-node
    `_check_disallowed_items` scan is skipped: it walks every container (the whole payload on
    each `payload` lookup), and nothing it looks for (modules, `eval`...) is reachable here.
    """

    def __init__(self) -> None:
        super().__init__(operators=dict(_OPERATORS),
                         functions={name: f.fn for name, f in FUNCTIONS.items()}, names={})
        self.nodes = {
            ast.Constant: self._eval_constant,
            ast.Name: self._eval_name,
            ast.UnaryOp: self._eval_unaryop,
            ast.BinOp: self._eval_binop,
            ast.BoolOp: self._eval_boolop,
            ast.Compare: self._eval_compare,
            ast.Attribute: self._eval_attribute,
            ast.Subscript: self._eval_subscript,
            ast.Slice: self._eval_slice,
            ast.Call: self._eval_call,
            ast.List: self._eval_list,
            ast.Tuple: self._eval_tuple,
        }
        self.env: Mapping[str, Any] = {}
        self.source = _Source("")
        self.work = 0

    def _eval(self, node: ast.AST) -> Any:
        self.work += 1
        if self.work > MAX_WORK:
            self._over_budget(node)
        try:
            handler = self.nodes.get(type(node))
            if handler is None:
                raise _Failure(f"{type(node).__name__} is not allowed", node)
            return handler(node)
        except _Failure:
            raise
        except Exception as exc:
            raise _Failure(self._explain(exc, node), node) from exc

    def _over_budget(self, node: ast.AST) -> NoReturn:
        raise _Failure(f"too much work (over the budget of {MAX_WORK} units) "
                       f"in `{self.source.segment(node)}`", node)

    def _charge(self, units: int, node: ast.AST) -> None:
        """Count `units` of work against the budget, before the work is done."""
        self.work += units
        if self.work > MAX_WORK:
            self._over_budget(node)

    def _made(self, value: Any, node: ast.AST) -> Any:
        """A value an operation built: refused past the bounds, charged for its size."""
        if isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                raise simpleeval.IterableTooLong("result too long")
        elif isinstance(value, list | tuple) and len(value) > MAX_ITEMS:
            raise simpleeval.IterableTooLong("result too long")
        self._charge(_weight(value), node)
        return value

    def _eval_binop(self, node: ast.BinOp) -> Any:
        left = self._eval(node.left)
        right = self._eval(node.right)
        self._charge(_weight(left) + _weight(right), node)
        return self._made(self.operators[type(node.op)](left, right), node)

    def _eval_unaryop(self, node: ast.UnaryOp) -> Any:
        return self.operators[type(node.op)](self._eval(node.operand))

    def _explain(self, exc: Exception, node: ast.AST) -> str:
        where = f"in `{self.source.segment(node)}`"
        if isinstance(exc, _Refused):
            return f"{exc} {where}"
        if isinstance(exc, ExpressionError):  # a glob pattern computed at evaluation
            return f"{exc.message} {where}"
        if isinstance(exc, ZeroDivisionError):
            return f"division by zero {where}"
        if isinstance(exc, simpleeval.NumberTooHigh | OverflowError):
            return f"number too large {where}"
        if isinstance(exc, simpleeval.IterableTooLong):
            return (f"result too long (limit {MAX_STRING_LENGTH} characters, {MAX_ITEMS} items) "
                    f"{where}")
        if isinstance(exc, RegexError):
            return f"bad regex {where}: {exc}"
        if isinstance(exc, RecursionError):
            return "expression nested too deeply"
        if isinstance(exc, MemoryError):
            return f"out of memory {where}"
        return f"cannot evaluate `{self.source.segment(node)}`: {exc}"

    def _eval_name(self, node: ast.Name) -> Any:
        try:
            return self.env[node.id]
        except KeyError:
            raise _Failure(f"no value for {node.id}", node) from None

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        obj = self._eval(node.value)
        if isinstance(obj, Mapping):
            try:
                return obj[node.attr]
            except KeyError:
                raise _Failure(f"no field {self.source.segment(node)}", node) from None
        raise _Failure(f"no field {self.source.segment(node)}: "
                       f"{self.source.segment(node.value)} is {_type_name(obj)}, "
                       "not an object", node)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        obj = self._eval(node.value)
        key = self._eval(node.slice)
        if isinstance(obj, Mapping):
            try:
                return obj[key]
            except KeyError:
                raise _Failure(f"no field {self.source.segment(node)}", node) from None
        if isinstance(obj, list | tuple | str) and isinstance(key, int | slice):
            if isinstance(key, slice):
                self._charge(_weight(obj), node)
            try:
                return obj[key]
            except IndexError:
                raise _Failure(f"no item {self.source.segment(node)}: "
                               f"{self.source.segment(node.value)} has {len(obj)}",
                               node) from None
        raise _Failure(f"cannot look up {_type_name(key)} in {_type_name(obj)} "
                       f"in `{self.source.segment(node)}`", node)

    def _eval_compare(self, node: ast.Compare) -> bool:
        left = self._eval(node.left)
        for operation, comparator in zip(node.ops, node.comparators, strict=True):
            right = self._eval(comparator)
            self._charge(_glob_cost(left, right) if isinstance(operation, _GlobMatch)
                         else _weight(left) + _weight(right), node)
            try:
                ok = self.operators[type(operation)](left, right)
            except TypeError:
                text = _OP_TEXT[type(operation)]
                where = f"in `{self.source.segment(node)}`"
                if isinstance(operation, ast.In | ast.NotIn):
                    message = f"cannot look for {_type_name(left)} in {_type_name(right)} {where}"
                else:
                    message = (f"cannot compare {_type_name(left)} with {_type_name(right)} "
                               f"using '{text}' {where}")
                raise _Failure(message, node) from None
            if not ok:
                return False
            left = right
        return True

    def _eval_call(self, node: ast.Call) -> Any:
        func = node.func
        if isinstance(func, ast.Attribute):
            obj = self._eval(func.value)
            if not isinstance(obj, str):
                raise _Failure(f"{func.attr}() works on strings, but "
                               f"{self.source.segment(func.value)} is {_type_name(obj)}", node)
            args = [self._eval(a) for a in node.args]
            self._charge(len(obj) + sum(_weight(a) for a in args), node)
            return self._made(METHODS[func.attr].fn(obj, *args), node)
        if not isinstance(func, ast.Name):  # pragma: no cover - the checker allows nothing else
            raise _Failure("only the listed functions can be called", node)
        args = [self._eval(a) for a in node.args]
        if func.id == "regex":
            self._charge(_regex_cost(*args), node)
        elif func.id == "matches":
            self._charge(_glob_cost(*args), node)
        elif func.id != "len":  # len is O(1)
            self._charge(sum(_weight(a) for a in args), node)
        return self._made(FUNCTIONS[func.id].fn(*args), node)

    def _eval_list(self, node: ast.List) -> list[Any]:
        return self._made([self._eval(e) for e in node.elts], node)  # type: ignore[no-any-return]

    def _eval_tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return self._made(tuple(self._eval(e) for e in node.elts), node)  # type: ignore[no-any-return]


_local = threading.local()


def _run(node: ast.AST, env: Mapping[str, Any], source: _Source) -> Any:
    """Evaluate a checked node with this thread's evaluator; raise only ExpressionError."""
    ev: _Evaluator | None = getattr(_local, "evaluator", None)
    if ev is None:
        ev = _local.evaluator = _Evaluator()
    saved = ev.env, ev.source, ev.work
    ev.env, ev.source, ev.work = env, source, 0
    try:
        return ev._eval(node)
    except _Failure as failure:
        raise ExpressionError(failure.message,
                              column=source.node_column(failure.node)) from failure.__cause__
    except Exception as exc:  # pragma: no cover - _eval wraps everything; belt and braces
        raise ExpressionError(f"cannot evaluate: {exc}") from exc
    finally:
        ev.env, ev.source, ev.work = saved


# --------------------------------------------------------------------------------------------
# Compilation


# an odd number of backslashes, then a digit: an octal escape in a string literal
_OCTAL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\[1-7]")
_OPERAND_KEYWORDS = frozenset({"True", "False", "None"})
_MATCHES_REPLACEMENT = "   ==  "  # same length as "matches", so every column stays put


def _is_operand_name(tok: tokenize.TokenInfo) -> bool:
    return tok.type == tokenize.NAME and (not keyword.iskeyword(tok.string)
                                          or tok.string in _OPERAND_KEYWORDS)


def _ends_operand(tok: tokenize.TokenInfo) -> bool:
    return (_is_operand_name(tok) or tok.type in (tokenize.NUMBER, tokenize.STRING)
            or (tok.type == tokenize.OP and tok.string in (")", "]", "}")))


def _starts_operand(tok: tokenize.TokenInfo) -> bool:
    return (_is_operand_name(tok) or tok.type in (tokenize.NUMBER, tokenize.STRING)
            or (tok.type == tokenize.OP and tok.string in ("(", "[", "{")))


_INSIGNIFICANT = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER})


def _scan(source: _Source) -> tuple[str, list[tuple[int, int]]]:
    """Rewrite infix `matches` to a comparison operator; check brackets; refuse `@`.

    Works on tokens, so `matches` inside strings is untouched. Returns the wrapped text to parse
    and the (line, byte column) of every rewritten `matches`, for `_Checker` to find the
    comparison operators that mean glob matching.
    """
    wrapped = source.wrapped
    last_line = len(source.lines)
    tokens: list[tokenize.TokenInfo] = []
    stack: list[tokenize.TokenInfo] = []

    def fail(message: str, tok: tokenize.TokenInfo) -> NoReturn:
        raise ExpressionError(message, column=source.column(*tok.start))

    try:
        for tok in tokenize.generate_tokens(io.StringIO(wrapped).readline):
            if tok.type in _INSIGNIFICANT:
                continue
            tokens.append(tok)
            if tok.type != tokenize.OP:
                continue
            if tok.string in ("(", "[", "{"):
                stack.append(tok)
            elif tok.string in (")", "]", "}"):
                if tok.start[0] == last_line:  # the wrapper's own ")"
                    if len(stack) > 1:
                        fail(f"'{stack[1].string}' was never closed", stack[1])
                elif len(stack) <= 1:
                    fail(f"unmatched '{tok.string}'", tok)
                if stack:
                    stack.pop()
            elif tok.string in ("@", "@="):
                fail(f"'{tok.string}' is not an operator here (use matches for globs)", tok)
    except (tokenize.TokenError, SyntaxError):
        pass  # let the parser describe it

    spans: list[tuple[int, int]] = []
    for i in range(1, len(tokens) - 1):
        tok = tokens[i]
        if (tok.type == tokenize.NAME and tok.string == "matches"
                and _ends_operand(tokens[i - 1]) and _starts_operand(tokens[i + 1])):
            spans.append(tok.start)
    if not spans:
        return wrapped, []
    text = wrapped
    for line, col in spans:
        offset = source.starts[line - 1] + 1 + col
        text = text[:offset] + _MATCHES_REPLACEMENT + text[offset + len("matches"):]
    return text, [(line, source.byte_col(line, col)) for line, col in spans]


def _parse(text: str, source: _Source) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "\d" in a regex literal: not an error here
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        message = exc.msg or "invalid syntax"
        if exc.lineno is None:
            raise ExpressionError(f"syntax error: {message}") from None
        if exc.lineno >= len(source.lines):
            raise ExpressionError("syntax error: the expression is incomplete",
                                  column=len(source.text) + 1) from None
        column = source.column(exc.lineno, max((exc.offset or 1) - 1, 0))
        raise ExpressionError(f"syntax error: {message}", column=column) from None
    except (RecursionError, MemoryError):
        raise ExpressionError("expression nested too deeply", column=1) from None
    except ValueError as exc:  # null bytes on some Python versions
        raise ExpressionError(f"syntax error: {exc}") from None


_FORBIDDEN: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not supported; use and/or",
    ast.Dict: "dict literals are not supported",
    ast.Set: "set literals are not supported",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}

_BIN_OPS = frozenset({ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow})
_UNARY_OPS = frozenset({ast.Not, ast.USub, ast.UAdd})
_LITERAL_TYPES = (bool, int, float, str)


def _arity(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"at least {lo} argument{'s' if lo != 1 else ''}"
    if lo == hi:
        return "no arguments" if lo == 0 else f"{lo} argument{'s' if lo != 1 else ''}"
    if hi == lo + 1:
        return f"{lo} or {hi} arguments"
    return f"{lo} to {hi} arguments"


def _is_identity_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool))


class _Checker:
    """Walks the parsed tree: refuses what the language does not have, turns `true`/`false`/
    `null` into constants, marks glob comparisons and computes operations on literals."""

    def __init__(self, source: _Source, globs: list[tuple[int, int]]) -> None:
        self.source = source
        self.globs = list(globs)
        self.names: set[str] = set()

    def fail(self, message: str, node: ast.AST) -> NoReturn:
        raise ExpressionError(message, column=self.source.node_column(node))

    def fail_at_attr(self, message: str, node: ast.Attribute) -> NoReturn:
        lineno = node.end_lineno or node.lineno
        end = self.source.char_col(lineno, node.end_col_offset or node.col_offset)
        raise ExpressionError(message, column=self.source.column(lineno, end - len(node.attr)))

    def check(self, node: ast.expr, depth: int) -> ast.expr:
        if depth > MAX_DEPTH:
            self.fail("expression nested too deeply", node)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            self.attr_name(node)
            node.value = self.check(node.value, depth + 1)
            return node
        if isinstance(node, ast.Subscript):
            node.value = self.check(node.value, depth + 1)
            if isinstance(node.slice, ast.Slice):
                sl = node.slice
                sl.lower = self.check(sl.lower, depth + 1) if sl.lower else None
                sl.upper = self.check(sl.upper, depth + 1) if sl.upper else None
                sl.step = self.check(sl.step, depth + 1) if sl.step else None
            else:
                node.slice = self.check(node.slice, depth + 1)
            return node
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.BoolOp):
            node.values = [self.check(v, depth + 1) for v in node.values]
            return node
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BIN_OPS:
                self.fail(f"operator '{_OP_TEXT.get(type(node.op), '?')}' is not supported",
                          node)
            node.left = self.check(node.left, depth + 1)
            node.right = self.check(node.right, depth + 1)
            if (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                    and isinstance(node.left.value, str)):
                self.fail("'%' formatting of strings is not supported", node)
            if isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant):
                return self.fold(node)
            return node
        if isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY_OPS:
                self.fail(f"operator '{_OP_TEXT.get(type(node.op), '?')}' is not supported",
                          node)
            node.operand = self.check(node.operand, depth + 1)
            if isinstance(node.operand, ast.Constant):
                return self.fold(node)
            return node
        if isinstance(node, ast.List | ast.Tuple):
            node.elts = [self.check(e, depth + 1) for e in node.elts]
            return node
        self.fail(_FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed"), node)

    def constant(self, node: ast.Constant) -> ast.expr:
        if node.value is None or isinstance(node.value, _LITERAL_TYPES):
            return node
        kind = {bytes: "bytes literals", complex: "complex numbers"}.get(
            type(node.value), f"{type(node.value).__name__} literals")
        self.fail(f"{kind} are not supported", node)

    def name(self, node: ast.Name) -> ast.expr:
        if node.id in _ALIASES:
            return ast.copy_location(ast.Constant(_ALIASES[node.id]), node)
        if node.id in NAMES:
            self.names.add(node.id)
            return node
        if node.id in FUNCTIONS:
            self.fail(f"{node.id} is a function: call it, as in {node.id}(...)", node)
        hint = f" (a payload field is payload.{node.id})" if node.id.isidentifier() else ""
        self.fail(f"unknown name '{node.id}'; use {', '.join(_NAME_ORDER)}{hint}", node)

    def attr_name(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.fail_at_attr(f"names starting with '_' are not allowed ('{node.attr}')", node)

    def call(self, node: ast.Call, depth: int) -> ast.expr:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in FUNCTIONS:
                if func.id in NAMES or func.id in _ALIASES:
                    self.fail(f"{func.id} is not a function", func)
                self.fail(f"unknown function '{func.id}'; allowed: {', '.join(FUNCTIONS)}", func)
            spec, what = FUNCTIONS[func.id], func.id
        elif isinstance(func, ast.Attribute):
            self.attr_name(func)
            if func.attr not in METHODS:
                self.fail_at_attr(f"method '{func.attr}' is not allowed; allowed: "
                                  f"{', '.join(METHODS)}", func)
            func.value = self.check(func.value, depth + 1)
            spec, what = METHODS[func.attr], func.attr
        else:
            self.check(func, depth + 1)  # a lambda says so; anything else:
            self.fail("only the listed functions and string methods can be called", node)
        if node.keywords:
            kw = node.keywords[0]
            label = f"{kw.arg}=..." if kw.arg else "**..."
            raise ExpressionError(f"keyword arguments are not supported ({label})",
                                  column=self.source.node_column(kw))
        node.args = [self.check(a, depth + 1) for a in node.args]
        n = len(node.args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            self.fail(f"{what}() takes {_arity(spec.min_args, spec.max_args)}, got {n}", node)
        if isinstance(func, ast.Name) and func.id in ("matches", "regex"):
            self.pattern(func.id, node.args[1])
        return node

    def pattern(self, kind: str, node: ast.expr) -> None:
        """Check a literal glob or regex pattern now rather than at every event."""
        if not isinstance(node, ast.Constant):
            return
        if not isinstance(node.value, str):
            self.fail(f"the {'glob' if kind == 'matches' else 'regex'} pattern must be a string",
                      node)
        if kind == "regex":
            literal = ast.get_source_segment(self.source.wrapped, node) or ""
            if _OCTAL_ESCAPE.search(literal):
                # '\1' in a string is chr(1): written in a regex, a backreference was meant
                self.fail("backreferences are not supported (regex patterns use RE2 syntax, "
                          "which matches in linear time); for the character with code n, "
                          "write \\x0n", node)
        try:
            if kind == "matches":
                compile_glob(node.value)
            else:
                _compile_regex(node.value)
        except ExpressionError as exc:
            self.fail(exc.message, node)
        except _Refused as exc:
            self.fail(str(exc), node)
        except RegexError as exc:
            self.fail(f"bad regex: {exc}", node)

    def compare(self, node: ast.Compare, depth: int) -> ast.expr:
        node.left = self.check(node.left, depth + 1)
        node.comparators = [self.check(c, depth + 1) for c in node.comparators]
        operands = [node.left, *node.comparators]
        for i, operation in enumerate(node.ops):
            before, after = operands[i], operands[i + 1]
            start = (before.end_lineno or before.lineno, before.end_col_offset or 0)
            end = (after.lineno, after.col_offset)
            for pos in self.globs:
                if start <= pos < end and isinstance(operation, ast.Eq):
                    self.globs.remove(pos)
                    node.ops[i] = _GlobMatch()
                    self.pattern("matches", after)
                    break
            if (isinstance(operation, ast.Is | ast.IsNot)
                    and not (_is_identity_literal(before) or _is_identity_literal(after))):
                self.fail("'is' only compares with None, true or false; use == for values",
                          node)
        return node

    def fold(self, node: ast.expr) -> ast.expr:
        """Compute an operation on literals now: a bad one is refused at compile time."""
        value = _run(node, {}, self.source)
        if value is None or isinstance(value, _LITERAL_TYPES):
            return ast.copy_location(ast.Constant(value), node)
        return node  # pragma: no cover - operations on literals give literals


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
