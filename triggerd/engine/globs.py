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
column of the offending `[`. Compiled patterns are cached.
"""

from __future__ import annotations

import functools
import re

from triggerd.errors import ExpressionError

__all__ = ["compile_any", "compile_glob", "glob_match"]

# Characters that must be escaped inside a regex character class. `&`, `~` and `|` are
# escaped so doubled ones never look like the set operations `re` warns about.
_CLASS_SPECIAL = frozenset("\\]^-[&~|")


def _class_char(c: str) -> str:
    return "\\" + c if c in _CLASS_SPECIAL else c


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
    parts: list[str] = []
    j = 0
    while j < len(members):
        c = members[j]
        if j + 2 < len(members) and members[j + 1] == "-":
            hi = members[j + 2]
            if hi < c:
                raise ExpressionError(
                    f"bad range '{c}-{hi}' in glob pattern {pattern!r}", column=start + 1)
            parts.append(f"{_class_char(c)}-{_class_char(hi)}")
            j += 3
        else:
            parts.append(_class_char(c))
            j += 1
    body = "".join(parts)
    regex = f"[^/{body}]" if negate else f"(?!/)[{body}]"
    return regex, end + 1


def _translate(pattern: str) -> str:
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
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob to a regex; use `.fullmatch` on it. Raises ExpressionError if invalid."""
    return re.compile(_translate(pattern), re.DOTALL)


def compile_any(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex matching what any of `patterns` matches (None for no pattern): one
    `fullmatch` instead of one per pattern, on paths checked by the hundred thousand."""
    if not patterns:
        return None
    for p in patterns:
        compile_glob(p)  # the same errors as one by one
    return re.compile("|".join(f"(?:{_translate(p)})" for p in patterns), re.DOTALL)


def glob_match(text: str, pattern: str) -> bool:
    """True when the whole of `text` matches the glob `pattern`."""
    return compile_glob(pattern).fullmatch(text) is not None
