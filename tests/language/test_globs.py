"""Glob semantics for paths, Kafka keys and schedule names (triggerd.language.globs)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggerd.errors import ExpressionError
from triggerd.language.globs import _shape, _translate, compile_any, compile_glob, glob_match
from triggerd.language.regex import compile_re2


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a.parquet", "**/*.parquet"),
        ("x/a.parquet", "**/*.parquet"),
        ("x/y/a.parquet", "**/*.parquet"),
        ("/data/landing/churn/2024/01/part-0.parquet", "/data/landing/churn/**"),
        ("a/b", "a/**/b"),
        ("a/x/y/b", "a/**/b"),
        ("a/x/b", "a/*/b"),
        ("report.csv", "*.csv"),
        ("abc", "a?c"),
        ("b", "[abc]"),
        ("q", "[a-z]"),
        ("d", "[!abc]"),
        ("d", "[^abc]"),
        ("]", "[]]"),
        ("-", "[a-]"),
        ("*", "[*]"),
        ("file[1].csv", "file[[]1].csv"),
        ("my file $1 (copy).csv", "my file $1 (copy).*"),
        ("line\nbreak.csv", "line*break.csv"),
        ("tab\there", "tab?here"),
        ("a+b^c|d{2}", "a+b^c|d{2}"),
        ("back\\slash", "back\\slash"),
        ("orders.v2", "orders.*"),
        ("nightly", "nightly"),
        ("", "*"),
        ("", ""),
        ("ünïcødé/ファイル.txt", "*/*.txt"),
    ],
)
def test_matches(text: str, pattern: str) -> None:
    assert glob_match(text, pattern)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("x/a.parquet", "*.parquet"),  # * does not cross /
        ("a/c", "a?c"),  # ? does not match /
        ("a/b/c", "a/*"),
        ("a.parquet.tmp", "**/*.parquet"),  # full match, not a prefix
        ("xa.parquet", "a.parquet"),  # nor a suffix
        ("a", "[!abc]"),
        ("/", "[!abc]"),  # classes never match /
        ("/", "[+-0]"),
        ("x", "[*]"),
        ("ABC", "abc"),  # case-sensitive
        ("ab", "abc"),
        ("a.csv", "a?csv\n"),
        ("axcsv", "a.csv"),  # . is literal
        ("a", ""),
    ],
)
def test_does_not_match(text: str, pattern: str) -> None:
    assert not glob_match(text, pattern)


def test_double_star_slash_matches_zero_directories() -> None:
    assert glob_match("a/b", "a/**/b")
    assert glob_match("top.parquet", "**/*.parquet")
    assert not glob_match("a/xb", "a/**/b")


@pytest.mark.parametrize(("pattern", "column"), [("[abc", 1), ("data/[!x", 6), ("a[", 2)])
def test_unclosed_class_is_an_error_with_its_column(pattern: str, column: int) -> None:
    with pytest.raises(ExpressionError, match="unclosed") as info:
        compile_glob(pattern)
    assert info.value.column == column


def test_reversed_range_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="bad range"):
        compile_glob("[z-a]")


def test_compiled_patterns_are_cached() -> None:
    assert compile_glob("**/*.cached") is compile_glob("**/*.cached")


def test_doubled_set_operators_in_a_class_are_literal() -> None:
    # `&&`, `~~`, `||` would be set operations in a future `re`; in a glob they are members.
    assert glob_match("a&b", "a[&&]b")
    assert glob_match("a~b", "a[~~]b")
    assert glob_match("a|b", "a[||]b")


@given(st.text().filter(lambda s: not set(s) & set("*?[")))
def test_a_literal_pattern_matches_exactly_itself(text: str) -> None:
    assert compile_glob(text).fullmatch(text)
    assert not glob_match(text + "x", text)
    assert not glob_match("x" + text, text)


@given(st.text(alphabet="ab.-", max_size=8), st.text(alphabet="ab.-*?", max_size=6))
def test_without_slashes_it_agrees_with_fnmatch(text: str, pattern: str) -> None:
    assert glob_match(text, pattern) == fnmatch.fnmatchcase(text, pattern)


GLOBS = ["*.tmp", ".*", "**/*.csv", "a/**/b", "[!x]?", "data/*/part-[0-9]*", "**", "*~"]


@given(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=4),
       st.text(alphabet="ab./x~-0123csvtmp*\n", max_size=14))
def test_one_regex_for_many_globs_matches_what_any_of_them_matches(globs: list[str],
                                                                   text: str) -> None:
    """The filesystem source checks a path against a list of globs with one regex."""
    combined = compile_any(globs)
    assert combined is not None
    assert (combined.fullmatch(text) is not None) == any(glob_match(text, g) for g in globs)
    assert compile_any([]) is None


TEXT = st.text(alphabet=st.sampled_from("ab/\n\ufffd\udcff"), max_size=3)


@st.composite
def near(draw: st.DrawFn, pattern: str) -> str:
    """A text made from `pattern`: each wildcard replaced by a short text, each literal kept
    or (sometimes) changed, so that texts that match, and texts that nearly do, are common."""
    out = []
    for c in pattern:
        if c == "*" or draw(st.integers(0, 5)) == 0:
            out.append(draw(TEXT))
        else:
            out.append(c)
    return "".join(out)


PIECES = ["a", "b", "/", "ab", "\ufffd", "*", "**", "**/", "**/*", "/**", "?"]


def _agree(patterns: list[str], text: str) -> None:
    regexes = [compile_re2(_translate(p), dot_all=True) for p in patterns]
    combined = compile_any(patterns) if len(patterns) > 1 else compile_glob(patterns[0])
    assert combined is not None
    expected = any(r.fullmatch(text) is not None for r in regexes)
    assert (combined.fullmatch(text) is not None) == expected
    assert combined.tester()(text) is expected  # the truth test the filesystem source uses


@given(st.lists(st.sampled_from(PIECES), max_size=4).map("".join), st.data())
@settings(max_examples=2000)
def test_globs_matched_by_string_tests_answer_as_their_regex(pattern: str,
                                                             data: st.DataObject) -> None:
    """Globs of the common shapes (`/data/**`, `**/*.parquet`, `*.tmp`) are matched without
    RE2 (globs._shape): the same answer as RE2 on their regex, on any text."""
    _agree([pattern], data.draw(st.one_of(near(pattern), TEXT)))


NAMES = st.lists(st.sampled_from(["a", "b", "ab", "*", "*", "/", "\ufffd", "?"]), min_size=1,
                 max_size=3).map("".join)


@given(st.lists(NAMES, min_size=2, max_size=4), st.data())
@settings(max_examples=2000)
def test_several_globs_as_one_answer_as_any_of_their_regexes(patterns: list[str],
                                                             data: st.DataObject) -> None:
    """Several globs as one (compile_any: the default ignores, `*.tmp`, `.*`, matched against
    each component of a path), tested at once without RE2: as any of their regexes."""
    _agree(patterns, data.draw(st.one_of(*[near(p) for p in patterns], TEXT)))


@pytest.mark.parametrize("pattern", ["/data/landing/**", "**/*.parquet", "*.tmp", ".*",
                                     "a/**/b", "/data/**/*.csv", "nightly", "**"])
def test_the_common_shapes_are_matched_by_string_tests(pattern: str) -> None:
    assert _shape(pattern) is not None
