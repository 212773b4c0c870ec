"""Linear-time regular expressions (RE2, the `google-re2` package): `compile_re2`.

Every pattern a user supplies (a `regex()` in a `where`, a glob of a rule or a source) is
matched by RE2, whose automata run in time linear in the text: no pattern can backtrack
exponentially, however hostile. The price is RE2's syntax: no backreferences (`\\1`) and no
lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`); `compile_re2` refuses those with a message that says
so. `\\w`, `\\d`, `\\s` and `\\b` are ASCII-only, as in RE2.

Text is matched as UTF-8. A str holding lone surrogates (file names with undecodable bytes
decode to those under `surrogateescape`) cannot be encoded so; each is matched as U+FFFD.
"""

from __future__ import annotations

from typing import Any

import re2

__all__ = ["Compiled", "RegexError", "compile_re2"]


class RegexError(ValueError):
    """A pattern RE2 refuses; the message is for the user."""


_NOT_LINEAR = (
    ("invalid escape sequence: \\1", "backreferences"),
    ("invalid perl operator: (?=", "lookahead"),
    ("invalid perl operator: (?!", "lookahead"),
    ("invalid perl operator: (?<=", "lookbehind"),
    ("invalid perl operator: (?<!", "lookbehind"),
)


def _explain(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    backref = text.startswith("invalid escape sequence: \\") and text[-1:].isdigit()
    for needle, what in _NOT_LINEAR:
        if text.startswith(needle) or (backref and what == "backreferences"):
            verb = "are" if what.endswith("s") else "is"
            return (f"{what} {verb} not supported (regex patterns use RE2 syntax, which "
                    f"matches in linear time): {text}")
    return text


def _options(dot_all: bool, max_mem: int) -> Any:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print each refused pattern on stderr
    opts.dot_nl = dot_all
    opts.max_mem = max_mem
    return opts


class Compiled:
    """A compiled RE2 pattern; `search` and `fullmatch` return a match (truthy) or None.

    `size` is the size of RE2's program: what one character of text costs, at worst (when
    the automaton outgrows its cache and RE2 simulates the program instead)."""

    __slots__ = ("_re", "pattern", "size")

    def __init__(self, pattern: str, compiled: Any) -> None:
        self.pattern = pattern
        self._re = compiled
        self.size: int = compiled.programsize

    def search(self, text: str) -> object | None:
        try:
            return self._re.search(text)  # type: ignore[no-any-return]
        except UnicodeEncodeError:
            return self._re.search(_valid(text))  # type: ignore[no-any-return]

    def fullmatch(self, text: str) -> object | None:
        try:
            return self._re.fullmatch(text)  # type: ignore[no-any-return]
        except UnicodeEncodeError:
            return self._re.fullmatch(_valid(text))  # type: ignore[no-any-return]


def _valid(text: str) -> str:
    """`text` with every lone surrogate as U+FFFD (what RE2 can take as UTF-8)."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def compile_re2(pattern: str, *, dot_all: bool = False, max_mem: int = 8 << 20) -> Compiled:
    """Compile `pattern` with RE2; raise `RegexError` with a readable reason if refused.

    `max_mem` bounds the compiled program and the automata's cache (RE2's own limit): a
    pattern that would need more is refused ("pattern too large"), in milliseconds."""
    try:
        return Compiled(pattern, re2.compile(pattern, _options(dot_all, max_mem)))
    except re2.error as exc:
        raise RegexError(_explain(exc)) from None
    except UnicodeEncodeError:
        raise RegexError("the pattern holds characters that are not valid text") from None
