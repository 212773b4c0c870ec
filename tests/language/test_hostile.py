"""Hostile rule authors and hostile events: matching is linear and every evaluation is bounded.

Each case here froze the daemon, or built gigabytes, before matching moved to RE2 and the
evaluator got its bounds: Python's backtracking `re` took minutes on `*a*a*a...b` against a long
name, and nested `str([...])` doubled its escapes at every level. The assertions are on the
results a user sees (no match, a clear error); a regression shows as a test that does not end.
"""

from __future__ import annotations

from typing import Any

import pytest

from triggerd.engine.matching import RuleSet
from triggerd.errors import ExpressionError
from triggerd.language.expr import MAX_STRING_LENGTH, MAX_WORK, Expression, event_env
from triggerd.language.globs import compile_any, compile_glob, glob_match
from triggerd.model import Event


def file_event(path: str = "/data/x/part-0.parquet") -> Event:
    return Event(source="landing", kind="created", subject=path, fingerprint="sha-1",
                 payload={"path": path, "name": path.rsplit("/", 1)[-1], "size": 1})


def kafka_event(value: Any) -> Event:
    return Event(source="metrics", kind="message", subject="churn", fingerprint="t/0/42",
                 payload={"value": value, "key": "churn"})


LONG = "a" * 20_000


def error_of(text: str, env: dict[str, Any]) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        Expression(text).evaluate(env)
    return info.value


@pytest.mark.parametrize("pattern", [
    "*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
    "**a**a**a**a**a**a**a**a**b",
    "**/**/**/**/**/**/**/**/x",
    "*" + "?" * 30 + "b",
])
def test_backtracking_globs_answer_at_once_on_long_names(pattern: str) -> None:
    assert not glob_match(LONG, pattern)
    assert not glob_match("/".join(["a"] * 5000), pattern)
    assert compile_glob(pattern).fullmatch(LONG + "b") is not None or "/" in pattern


def test_a_backtracking_subject_glob_does_not_hold_up_the_other_rules() -> None:
    from triggerd.config.schema import RuleSpec

    specs = {
        "hostile": RuleSpec.model_validate({
            "on": ["landing"], "match": {"subject": "/data/*a*a*a*a*a*a*a*a*a*a*a*a*b"},
            "dispatch": {"backend": "b"}}),
        "normal": RuleSpec.model_validate({
            "on": ["landing"], "match": {"subject": "/data/**/*.parquet"},
            "dispatch": {"backend": "b"}}),
    }
    rules = RuleSet(specs)
    hostile = file_event("/data/" + LONG)
    normal = file_event("/data/x/part-0.parquet")
    items = rules.classify([hostile, normal])
    assert items[0].pending == []
    assert items[1].pending == [("normal", "")]


@pytest.mark.parametrize("pattern", ["(a+)+b", "(a|aa)+b", "(a*)*b", "(?:a?){30}a{30}b"])
def test_backtracking_regexes_answer_at_once(pattern: str) -> None:
    env = event_env(file_event("/data/" + LONG))
    assert Expression(f"regex(path, '{pattern}')").test(env) is False


@pytest.mark.parametrize(("pattern", "what"), [
    (r"(a)\\1", "backreferences"),  # the expression text holds `\\1`: the regex `\1`
    ("foo(?=bar)", "lookahead"),
    ("foo(?!bar)", "lookahead"),
    ("(?<=x)y", "lookbehind"),
    ("(?<!x)y", "lookbehind"),
])
def test_patterns_that_cannot_run_in_linear_time_are_refused_when_compiled(
        pattern: str, what: str) -> None:
    text = f"size > 0 and regex(path, '{pattern}')"
    with pytest.raises(ExpressionError) as info:
        Expression(text)
    assert what in info.value.message
    assert "RE2" in info.value.message
    assert info.value.column == text.index("'") + 1


def test_a_computed_regex_that_needs_lookaround_is_an_evaluation_error() -> None:
    env = event_env(kafka_event({"pattern": "a(?=b)"}))
    assert "lookahead" in error_of("regex(subject, value.pattern)", env).message


def test_nested_str_of_lists_cannot_build_gigabytes() -> None:
    text = "'\\\\'"
    for _ in range(30):  # each level doubles the backslashes: 2**30 of them at the end
        text = f"str([{text}])"
    err = error_of(text, event_env(file_event()))
    assert "too long" in err.message


def test_str_of_a_huge_payload_is_refused_without_building_it() -> None:
    env = event_env(kafka_event({"rows": [["x" * 1000] * 100] * 100}))  # ~10 MB as text
    assert "too long" in error_of("len(str(value)) > 0", env).message
    assert Expression("len(str(value.rows[0][0])) == 1000").test(env)


def test_one_evaluation_has_a_work_budget() -> None:
    env = event_env(kafka_event({"text": "ab" * (MAX_STRING_LENGTH // 2)}))
    many = " or ".join(["value.text.count('x') > 0"] * 100)  # 100 x 100k characters read
    err = error_of(many, env)
    assert "too much work" in err.message
    assert str(MAX_WORK) in err.message
    assert Expression(" or ".join(["value.text.count('x') > 0"] * 5)).test(env) is False


def test_a_dear_regex_is_refused_before_it_runs() -> None:
    env = event_env(kafka_event({"text": "ab" * (MAX_STRING_LENGTH // 2)}))
    # a program of ~9000 instructions over 100k characters: ~1 s of RE2's slow path
    err = error_of("regex(value.text, '(?:a.{0,99}){10}c')", env)
    assert "too much work" in err.message
    assert Expression("regex(value.text[:100], '(?:a.{0,99}){10}c')").test(env) is False


def test_a_regex_program_too_large_is_refused() -> None:
    with pytest.raises(ExpressionError) as info:
        Expression("regex(path, '" + ".{0,999}" * 20 + "')")
    assert "too large" in info.value.message


def test_undecodable_file_names_still_match() -> None:
    name = "part-\udcff.parquet"  # os.fsdecode of b"part-\xff.parquet"
    assert glob_match(name, "*.parquet")
    assert glob_match(name, "part-?.parquet")
    assert not glob_match(name, "part-??.parquet")
    env = event_env(file_event("/data/" + name))
    assert Expression(r"regex(path, 'part-.\.parquet$')").test(env)
    any_of = compile_any(["*.csv", "*.parquet"])
    assert any_of is not None and any_of.fullmatch(name) is not None


def test_classes_never_match_a_slash_and_every_character_is_literal() -> None:
    assert not glob_match("a/b", "a[!x]b")
    assert not glob_match("a/b", "a[--0]b")  # a range across '/'
    assert glob_match("a.b", "a[--0]b")
    assert not glob_match("a/b", "a[/]b")
    for literal in ["a b", "a\nb", "a$b", "a.b", "a\\b", "a(b", "a|b", "a{2}", "ファイル",
                    "a\x00b"]:
        assert glob_match(literal, literal)
    assert not glob_match("axb", "a.b")


def test_an_over_long_glob_is_refused() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_glob("a" * 5000)
    assert "longer than" in info.value.message


def test_an_event_with_hostile_fields_is_not_matched_and_counted() -> None:
    from triggerd.config.schema import RuleSpec

    spec = RuleSpec.model_validate({
        "on": ["metrics"], "match": {"where": "str([value, value, value]) != ''"},
        "dispatch": {"backend": "b"}})
    rules = RuleSet({"r": spec})
    big = Event(source="metrics", kind="message", subject="k", fingerprint="f",
                payload={"value": "x" * 60_000})
    small = Event(source="metrics", kind="message", subject="k", fingerprint="g",
                  payload={"value": "x"})
    items = rules.classify([big, small])
    assert items[0].pending == [] and items[0].errors
    assert items[1].pending == [("r", "")]
    assert rules["r"].errors == 1


def test_a_huge_bad_template_field_is_quoted_short() -> None:
    from triggerd.language.templates import Template

    with pytest.raises(ExpressionError) as info:
        Template("{" + "(" * 100_000 + "}")
    assert len(info.value.message) < 200 and "..." in info.value.message


def test_a_backreference_written_as_an_octal_escape_is_refused() -> None:
    """In a string, `\\1` is the character chr(1): a regex author writing `(a)\\1` (a YAML
    plain scalar does not double the backslash) meant a backreference, which RE2 lacks."""
    text = "regex(path, '(a)\\1')"
    with pytest.raises(ExpressionError) as info:
        Expression(text)
    assert "backreferences" in info.value.message
    assert info.value.column == text.index("'") + 1
    literal_backslash = r"regex(path, 'a\\\\1')"  # the regex a\\1: a backslash, then 1
    assert Expression(literal_backslash).test(event_env(file_event(r"/x/a\1")))


def test_a_dear_glob_match_is_refused_before_it_runs() -> None:
    env = event_env(kafka_event({"text": "ab" * (MAX_STRING_LENGTH // 2)}))
    dear = "value.text matches '*a" + "?" * 500 + "c'"  # a program of ~1000 instructions
    assert "too much work" in error_of(dear, env).message
    assert "too much work" in error_of(dear.replace("value.text matches ", "matches(value.text, ")
                                       .rstrip() + ")", env).message
    assert Expression("value.text[:20000] matches '*.parquet'").test(env) is False  # cheap
