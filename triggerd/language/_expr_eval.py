"""Evaluating a checked `where` expression within its bounds; positions in its text."""

from __future__ import annotations

import ast
import threading
from collections.abc import Mapping
from typing import Any, NoReturn

import simpleeval

from triggerd.errors import ExpressionError
from triggerd.language._expr_calls import (
    _OP_TEXT,
    _OPERATORS,
    FUNCTIONS,
    MAX_ITEMS,
    MAX_STRING_LENGTH,
    MAX_WORK,
    METHODS,
    _glob_cost,
    _GlobMatch,
    _Refused,
    _regex_cost,
    _type_name,
    _weight,
)
from triggerd.language.regex import RegexError

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
