"""Glob patterns for paths, Kafka keys and schedule names: `compile_glob`, `glob_match`.

The contract (the same wherever triggerd takes a glob: `match.subject`, `patterns`, `ignore`,
the `matches` operator of expressions):

- `*` matches any run of characters except `/`; `?` matches one character except `/`.
- `**` matches any run of characters including `/`; `**/` also matches zero directories, so
  `**/*.parquet` matches `a.parquet` as well as `x/y/a.parquet`, and `a/**/b` matches `a/b`.
- `[abc]`, `[a-z]` match one listed character, `[!abc]` (or `[^abc]`) one character not listed;
  a class never matches `/`. A `]` right after `[` or `[!` is a literal member, so `[]]` matches
  `]`. To match a literal `*`, `?` or `[`, put it in a class: `[*]`, `[?]`, `[[]`.
- Every other character, including spaces, newlines, `$`, `.`, `\\` and `/`, matches itself.
- The whole text must match (not a prefix or a substring); matching is case-sensitive.

An unclosed `[` or a reversed range such as `[z-a]` raises `ExpressionError` with the 1-based
column of the offending `[`; so does a pattern longer than `MAX_GLOB_LENGTH` characters.
Compiled patterns are cached.

Matching runs in time linear in the text, whatever the pattern: a glob becomes an RE2 regex
(`triggerd.language.regex`), which never backtracks, so `*a*a*a*a*a*b` on a long name costs what
`*.parquet` costs. (Python's `re` took minutes on such a pair: one event could freeze the
daemon.) Text that is not valid UTF-8 (a file name with undecodable bytes, held as surrogate
escapes) is matched with each undecodable byte as U+FFFD, one character. The globs of the
common shapes (`/data/landing/**`, `**/*.parquet`, `*.tmp`, a literal name) are matched with
string tests instead (`_shape`): the same answers, without a trip through RE2's binding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from triggerd.errors import ExpressionError
from triggerd.language.regex import Compiled, RegexError, compile_re2

__all__ = ["MAX_GLOB_LENGTH", "Glob", "compile_any", "compile_glob", "glob_match"]

MAX_GLOB_LENGTH = 1024  # bounds the RE2 program, so a match's cost per character


def _literal(c: str) -> str:
    """`c` as an RE2 literal, in or out of a class (alphanumerics as they are)."""
    return c if c.isascii() and (c.isalnum() or c == "_") else f"\\x{{{ord(c):x}}}"


def _translate_class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the class opening at `pattern[start] == '['`; return (regex, index after `]`)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    end = i + 1 if i < len(pattern) and pattern[i] == "]" else i  # leading ']' is a member
    end = pattern.find("]", end)
    if end < 0:
        raise ExpressionError(f"unclosed '[' in glob pattern {pattern!r}", column=start + 1)
    members = pattern[i:end]
    ranges: list[tuple[int, int]] = []
    j = 0
    while j < len(members):
        c = members[j]
        if j + 2 < len(members) and members[j + 1] == "-":
            hi = members[j + 2]
            if hi < c:
                raise ExpressionError(
                    f"bad range '{c}-{hi}' in glob pattern {pattern!r}", column=start + 1)
            ranges.append((ord(c), ord(hi)))
            j += 3
        else:
            ranges.append((ord(c), ord(c)))
            j += 1
    if negate:  # `/` is never matched: list it with the excluded
        ranges.append((_SLASH, _SLASH))
        return f"[^{_class_body(ranges)}]", end + 1
    # a class never matches `/`: cut it out of every range (RE2 has no lookahead)
    kept = [part for lo, hi in ranges
            for part in ((lo, min(hi, _SLASH - 1)), (max(lo, _SLASH + 1), hi))
            if part[0] <= part[1]]
    if not kept:  # `[/]`: a class of nothing matches nothing
        return _NOTHING, end + 1
    return f"[{_class_body(kept)}]", end + 1


_SLASH = ord("/")
_NOTHING = "[^\\x00-\\x{10ffff}]"


def _class_body(ranges: list[tuple[int, int]]) -> str:
    return "".join(_literal(chr(lo)) if lo == hi else f"{_literal(chr(lo))}-{_literal(chr(hi))}"
                   for lo, hi in ranges)


def _translate(pattern: str) -> str:
    if len(pattern) > MAX_GLOB_LENGTH:
        raise ExpressionError(f"glob pattern longer than {MAX_GLOB_LENGTH} characters",
                              column=MAX_GLOB_LENGTH + 1)
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i == 1:
                out.append("[^/]*")
            elif j < n and pattern[j] == "/":
                out.append("(?:.*/)?")  # `**/`: zero or more whole directories
                j += 1
            else:
                out.append(".*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            regex, i = _translate_class(pattern, i)
            out.append(regex)
        else:
            out.append(_literal(c))
            i += 1
    return "".join(out)


Test = Callable[[str], bool]
Shape = tuple[str, str, str]  # head, tail, and what lies between (see `_shape`)


def _shape(pattern: str) -> Shape | None:
    """The glob as (head, tail, between) for the shapes most globs have; None for any other.

    A literal (`between` is ""); `HEAD*TAIL` ("/": what lies between holds no `/`);
    `HEAD**TAIL` and `HEAD**/*TAIL` ("*": anything); `HEAD**/TAIL` ("dir": nothing, or
    something ending in `/`), where HEAD and TAIL are literal. Each is what its regex
    (`_translate`) matches. A pattern holding U+FFFD is left to RE2, which reads each
    undecodable byte of a text as that character.

    Why: RE2's Python binding costs a few microseconds a call, and a busy source's paths are
    each matched by several globs (its patterns, the default ignores, the rules' subjects);
    string tests (`_test_of`) cost a tenth of that. tests/language/test_globs.py checks them
    against RE2."""
    if "?" in pattern or "[" in pattern or "\ufffd" in pattern:
        return None
    star = pattern.find("*")
    if star < 0:
        return pattern, "", ""
    head, rest = pattern[:star], pattern[star:]
    run = len(rest) - len(rest.lstrip("*"))
    rest = rest[run:]
    if run == 1:
        tail, between = rest, "/"
    elif rest.startswith("/*"):
        tail, between = rest[2:], "*"
    elif rest.startswith("/"):
        tail, between = rest[1:], "dir"
    else:
        tail, between = rest, "*"
    return None if "*" in tail else (head, tail, between)


def _test(head: str, tail: str, between: str) -> Test:
    if not between:
        return head.__eq__
    size = len(head) + len(tail)

    def test(text: str) -> bool:
        if len(text) < size or not text.startswith(head) or not text.endswith(tail):
            return False
        if between == "*":
            return True
        inner = text[len(head):len(text) - len(tail)]
        return "/" not in inner if between == "/" else not inner or inner[-1] == "/"
    return test


def _test_of(shapes: list[Shape]) -> Test:
    """One test for what any of `shapes` matches. Names (`*.tmp`, `.*`: `HEAD*TAIL` without
    `/`, as the default ignores each path component is matched against) are tested at once: a
    text without `/` that starts with one of the heads or ends with one of the tails."""
    names = [(h, t) for h, t, between in shapes if between == "/" and "/" not in h + t]
    if len(shapes) > 1 and len(names) == len(shapes):
        heads = tuple(h for h, t in names if not t)
        tails = tuple(t for h, t in names if t and not h)
        both = [_test(h, t, "/") for h, t in names if h and t]

        if not both:  # (the default ignores: no generator a call)
            def any_end(text: str) -> bool:
                return "/" not in text and (text.startswith(heads) or text.endswith(tails))
            return any_end

        def any_name(text: str) -> bool:
            return "/" not in text and (text.startswith(heads) or text.endswith(tails) or
                                        any(test(text) for test in both))
        return any_name
    tests = [_test(*shape) for shape in shapes]
    return tests[0] if len(tests) == 1 else lambda text: any(test(text) for test in tests)


class Glob:
    """A compiled glob (or several, as one): `fullmatch(text)` is a match (truthy) or None."""

    __slots__ = ("_compiled", "_test", "pattern")

    def __init__(self, pattern: str, compiled: Compiled, test: Test | None = None) -> None:
        self.pattern = pattern
        self._compiled = compiled
        self._test = test  # the same answer as `compiled`, faster (`_shape`)

    def fullmatch(self, text: str) -> object | None:
        if self._test is not None:
            return True if self._test(text) else None
        return self._compiled.fullmatch(text)

    def tester(self) -> Test:
        """`fullmatch` as a plain truth test: the string test itself where there is one (a
        call less, on paths tested by the hundred thousand)."""
        if self._test is not None:
            return self._test
        compiled = self._compiled
        return lambda text: compiled.fullmatch(text) is not None

    @property
    def size(self) -> int:
        """The size of its RE2 program (what a character of text costs, at worst)."""
        return self._compiled.size

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _compile(pattern: str, regex: str, test: Test | None) -> Glob:
    try:
        return Glob(pattern, compile_re2(regex, dot_all=True), test)
    except RegexError as exc:  # e.g. a lone surrogate in the pattern
        raise ExpressionError(f"cannot use glob pattern {pattern!r}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Glob:
    """Compile a glob; use `.fullmatch` on it. Raises ExpressionError if invalid."""
    shape = _shape(pattern)
    return _compile(pattern, _translate(pattern), _test_of([shape]) if shape else None)


def compile_any(patterns: list[str]) -> Glob | None:
    """One matcher for what any of `patterns` matches (None for no pattern): one
    `fullmatch` instead of one per pattern, on paths checked by the hundred thousand."""
    if not patterns:
        return None
    shapes = [shape for p in patterns if (shape := _shape(p)) is not None]
    return _compile(" | ".join(patterns), "|".join(f"(?:{_translate(p)})" for p in patterns),
                    _test_of(shapes) if len(shapes) == len(patterns) else None)


def glob_match(text: str, pattern: str) -> bool:
    """True when the whole of `text` matches the glob `pattern`."""
    return compile_glob(pattern).fullmatch(text) is not None
