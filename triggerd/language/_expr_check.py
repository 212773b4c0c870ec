"""Compiling a `where` expression: tokens, parse, and the checker that refuses what the
language does not have."""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
import warnings
from typing import NoReturn

from triggerd.errors import ExpressionError
from triggerd.language._expr_calls import (
    _ALIASES,
    _NAME_ORDER,
    _OP_TEXT,
    FUNCTIONS,
    MAX_DEPTH,
    METHODS,
    NAMES,
    _compile_regex,
    _GlobMatch,
    _Refused,
)
from triggerd.language._expr_eval import (
    _run,
    _Source,
)
from triggerd.language.globs import compile_glob
from triggerd.language.regex import RegexError

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
