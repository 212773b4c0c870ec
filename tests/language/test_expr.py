"""The `where` language: what rule authors write, and what hostile input cannot do."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggerd.errors import ExpressionError
from triggerd.language.expr import NAMES, Expression, event_env
from triggerd.model import Event


def file_event(path: str = "/data/landing/churn/2024/part-0.parquet", size: Any = 2048,
               kind: str = "created") -> Event:
    return Event(source="landing", kind=kind, subject=path, fingerprint="sha-1",
                 payload={"path": path, "relpath": path.rsplit("/", 1)[-1], "dir": "churn/2024",
                          "name": path.rsplit("/", 1)[-1], "size": size, "mtime": 1.5})


def kafka_event(value: Any) -> Event:
    return Event(source="metrics", kind="message", subject="churn", fingerprint="t/0/42",
                 payload={"value": value, "key": "churn", "topic": "model-metrics",
                          "partition": 0, "offset": 42, "timestamp": 1700000000})


FILE = event_env(file_event())
DRIFT = event_env(kafka_event({"metric": "psi", "score": 0.31, "model": "churn"}))


def ev(text: str, env: dict[str, Any] | None = None) -> Any:
    return Expression(text).evaluate(FILE if env is None else env)


def compile_error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        Expression(text)
    return info.value


def eval_error(text: str, env: dict[str, Any] | None = None) -> ExpressionError:
    expr = Expression(text)
    with pytest.raises(ExpressionError) as info:
        expr.evaluate(FILE if env is None else env)
    return info.value


# --- the names --------------------------------------------------------------------------------


def test_event_env_has_the_documented_names() -> None:
    event = kafka_event({"metric": "psi"})
    env = event_env(event)
    assert set(env) == NAMES
    assert env["kind"] == "message"
    assert env["subject"] == "churn"
    assert env["source"] == "metrics"
    assert env["id"] == event.id
    assert env["fingerprint"] == "t/0/42"
    assert env["payload"] is event.payload
    assert env["value"] == {"metric": "psi"}
    assert env["size"] is None
    assert env["path"] is None
    assert FILE["size"] == 2048
    assert FILE["path"] == "/data/landing/churn/2024/part-0.parquet"


# --- the documented examples and the everyday language -----------------------------------------


def test_spec_example_payload_size() -> None:
    expr = Expression("payload.size > 0")
    assert expr.test(FILE) is True
    assert expr.test(event_env(file_event(size=0))) is False


def test_spec_example_drift() -> None:
    expr = Expression("value.metric == 'psi' and value.score > 0.25")
    assert expr.test(DRIFT) is True
    assert expr.test(event_env(kafka_event({"metric": "psi", "score": 0.2}))) is False
    assert expr.test(event_env(kafka_event({"metric": "ks", "score": 0.9}))) is False
    assert expr.names == {"value"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind == 'created'", True),
        ("kind in ['created', 'modified', 'moved']", True),
        ("kind not in ('deleted',)", True),
        ("source == 'landing' and subject.startswith('/data/landing/')", True),
        ("size >= 1024 and size < 1024 ** 2", True),
        ("1 < size < 4096", True),
        ("1 < size < 2048", False),
        ("size > 10 or kind == 'deleted'", True),
        ("not kind == 'deleted'", True),
        ("payload['dir'] == 'churn/2024'", True),
        ("payload.dir == 'churn/2024'", True),
        ("payload.mtime * 2 == 3.0", True),
        ("size / 1024 == 2", True),
        ("size // 1000 == 2 and size % 1000 == 48", True),
        ("-size < 0", True),
        ("size - 48 == 2000", True),
        ("'churn' in path", True),
        ("path[-8:] == '.parquet'", True),
        ("path.split('/')[3] == 'churn'", True),
        ("true and not false", True),
        ("payload.get is null", None),  # no such field: see test_missing_field_errors
        ("value == null and value is None", True),
        ("True and size is not None", True),
        ("2 ** 30 > size", True),
        ("'a' + 'b' == 'ab'", True),
        ("[1, 2] + [3] == [1, 2, 3]", True),
    ],
)
def test_everyday_expressions(text: str, expected: bool | None) -> None:
    if expected is None:
        eval_error(text)
    else:
        assert Expression(text).test(FILE) is expected


def test_multi_line_expressions_work() -> None:
    text = "size > 0\n  and kind == 'created'\n  and path matches '**/*.parquet'  # parquet only\n"
    assert Expression(text).test(FILE)


def test_leading_and_trailing_whitespace_is_fine() -> None:
    assert Expression("   size > 0   ").test(FILE)


# --- matches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path matches '**/*.parquet'", True),
        ("path matches \"/data/landing/churn/**\"", True),
        ("path matches '*.parquet'", False),  # * does not cross /
        ("payload.name matches 'part-?.parquet'", True),
        ("not path matches '**/*.csv'", True),
        ("size > 0 and path matches '**/*.parquet' and kind == 'created'", True),
        ("path matches '**/*.csv' or path matches '**/*.parquet'", True),
        # `matches` binds like a comparison, looser than `+`:
        ("payload.dir + '/' + payload.name matches 'churn/*/part-*'", True),
        ("path matches '/data/' + '**'", True),
        ("(path) matches ('**/part-[0-9].parquet')", True),
        ("subject matches path", True),
        ("path.lower() matches '**/*.PARQUET'.lower()", True),
        ("matches(path, '**/*.parquet')", True),
        ("not matches(path, '**/*.csv')", True),
        ("'matches' in 'x matches y'", True),  # inside strings it is just text
        ("'a matches b' == 'a matches b'", True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert Expression(text).test(FILE) is expected


def test_matches_on_kafka_keys_and_schedule_names() -> None:
    assert Expression("subject matches 'ch*'").test(DRIFT)
    assert Expression("payload.key matches '[a-c]hurn'").test(DRIFT)


def test_matches_keeps_columns_right() -> None:
    err = compile_error("path matches '*.csv' and nope")
    assert err.column == 26


def test_matches_with_a_bad_literal_glob_is_a_compile_error() -> None:
    err = compile_error("path matches 'data/[abc'")
    assert "unclosed '['" in err.message
    assert err.column == 14
    assert compile_error("matches(path, '[x')").column == 15


def test_matches_needs_strings() -> None:
    err = eval_error("size matches '*'")
    assert "matches needs two strings" in err.message


def test_matches_with_a_bad_computed_glob_is_an_evaluation_error() -> None:
    err = eval_error("path matches subject + '['")
    assert "unclosed '['" in err.message


def test_the_at_operator_is_not_a_synonym() -> None:
    err = compile_error("path @ '*.csv'")
    assert err.column == 6


# --- functions and methods ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path.startswith('/data')", True),
        ("path.endswith(('.csv', '.parquet'))", True),
        ("payload.name.lower() == 'part-0.parquet'", True),
        ("payload.name.upper() == 'PART-0.PARQUET'", True),
        ("'  x '.strip() == 'x'", True),
        ("'xxaxx'.lstrip('x') == 'axx'", True),
        ("'xxaxx'.rstrip('x') == 'xxa'", True),
        ("path.split('/')[-1] == 'part-0.parquet'", True),
        ("'a,b,c'.split(',', 1) == ['a', 'b,c']", True),
        ("path.replace('landing', 'x') == '/data/x/churn/2024/part-0.parquet'", True),
        ("path.count('/') == 5", True),
        ("path.find('churn') == 14", True),
        ("'2024'.isdigit() and not 'x1'.isdigit()", True),
        ("len(path) == 39", True),
        ("int('42') == 42 and int('ff', 16) == 255", True),
        ("float('0.5') == 0.5", True),
        ("str(size) == '2048'", True),
        ("abs(-3) == 3", True),
        ("min(3, 1, 2) == 1 and max([3, 1, 2]) == 3", True),
        ("round(2.567, 2) == 2.57 and round(2.5) == 2", True),
        ("regex(path, '/part-\\d+\\.parquet$')", True),
        ("regex(path, '^churn')", False),
        ("regex(subject, payload.name)", True),
    ],
)
def test_functions_and_methods(text: str, expected: bool) -> None:
    assert Expression(text).test(FILE) is expected


def test_methods_only_work_on_strings() -> None:
    err = eval_error("size.startswith('1')")
    assert "startswith() works on strings" in err.message


def test_wrong_argument_counts_are_compile_errors() -> None:
    assert "len() takes 1 argument, got 2" in compile_error("len(path, path)").message
    assert "lower() takes no arguments" in compile_error("path.lower(1)").message
    assert "matches() takes 2 arguments" in compile_error("matches(path)").message


def test_keyword_arguments_are_refused() -> None:
    err = compile_error("path.split(sep='/')")
    assert "keyword arguments" in err.message
    assert err.column == 12


def test_unknown_functions_and_methods_are_refused_with_their_column() -> None:
    err = compile_error("size > 0 and sorted(path)")
    assert "unknown function 'sorted'" in err.message
    assert err.column == 14
    err = compile_error("path.title() == 'x'")
    assert "method 'title' is not allowed" in err.message
    assert err.column == 6


def test_a_function_name_is_not_a_value() -> None:
    assert "call it" in compile_error("len").message


# --- error positions ------------------------------------------------------------------------------


def test_unknown_name_has_its_column_and_lists_the_names() -> None:
    err = compile_error("kind == 'created' and foo > 1")
    assert err.column == 23
    assert err.message.startswith("unknown name 'foo'; use kind, subject, source, id, "
                                  "fingerprint, payload, value, size, path")
    assert "payload.foo" in err.message
    assert "column 23" in str(err)


def test_syntax_error_has_its_column() -> None:
    err = compile_error("size > > 1")
    assert err.message.startswith("syntax error")
    assert err.column == 8


def test_columns_count_characters_not_bytes() -> None:
    assert compile_error("'ünïcødé' == x").column == 14


def test_columns_on_later_lines_count_from_the_start_of_the_text() -> None:
    err = compile_error("size > 0\nand bogus")
    assert err.column == 14  # "size > 0\n" is 9 characters, "and " 4 more


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("len(path", "'(' was never closed", 4),
        ("size)", "unmatched ')'", 5),
        ("size >", "incomplete", 7),
        ("'abc", "unterminated string", 1),
        ("", "empty expression", 1),
        ("   ", "empty expression", 1),
    ],
)
def test_syntax_errors(text: str, message: str, column: int) -> None:
    err = compile_error(text)
    assert message in err.message
    assert err.column == column


def test_a_regex_escape_in_a_string_is_not_a_warning() -> None:
    # "\d" is an invalid escape to Python (a DeprecationWarning, an error under -W error).
    assert Expression(r"regex(path, '\d')").test(FILE)


# --- missing fields and type errors: ExpressionError, never anything else ----------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("value.score > 0.25", "no field value.score"),
        ("value.metric.name == 'x'", "no field value.metric.name: value.metric is a string"),
        ("payload['nope'] == 1", "no field payload['nope']"),
        ("payload.nope", "no field payload.nope"),
        ("payload.get is null", "no field payload.get"),
        ("path.split('/')[10]", "no item"),
    ],
)
def test_missing_field_errors(text: str, message: str) -> None:
    env = event_env(kafka_event({"metric": "psi"})) if text.startswith("value") else FILE
    err = eval_error(text, env)
    assert err.message.startswith(message)


def test_a_missing_value_on_a_file_event_is_a_clear_error() -> None:
    err = eval_error("value.score > 1")
    assert err.message == "no field value.score: value is null, not an object"
    assert err.column == 1


def test_dict_keys_win_over_dict_methods() -> None:
    # simpleeval would return the dict's bound methods here.
    env = event_env(kafka_event({"items": 3, "keys": "k", "count": 1}))
    assert Expression("value.items == 3 and value.keys == 'k' and value.count == 1").test(env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("value > 1", "cannot compare null with a number using '>'"),
        ("size < 'a'", "cannot compare a number with a string using '<'"),
        ("1 in size", "cannot look for a number in a number"),
        ("size + 'a'", "cannot evaluate"),
        ("size / (size - 2048)", "division by zero"),
        ("size % (size - 2048)", "division by zero"),
        ("int(path)", "cannot evaluate"),
        ("len(size)", "cannot evaluate"),
        ("path['x']", "cannot look up a string in a string"),
        ("payload[[1]]", "cannot evaluate"),
        ("-path", "cannot evaluate"),
        ("float('1e999') > int(float('inf'))", "number too large"),
        ("(-size) ** 0.5", "not a real number"),
        ("size.x", "no field size.x: size is a number"),
    ],
)
def test_runtime_errors_are_expression_errors(text: str, message: str) -> None:
    env = event_env(kafka_event(None)) if text.startswith("value") else FILE
    err = eval_error(text, env)
    assert message in err.message
    assert err.column is not None


def test_runtime_errors_point_at_the_failing_part() -> None:
    err = eval_error("size > 0 and value.score > 1")
    assert err.column == 14


def test_a_missing_top_level_name_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="no value for size"):
        Expression("size > 1").evaluate({"kind": "x"})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["metric", "score", "x", "items"]), children, max_size=3),
    max_leaves=8,
)

_PROBES = [
    "value.metric == 'psi' and value.score > 0.25",
    "value > 1", "value[0] + 1", "value.x.y", "len(value) > 1", "value matches '*'",
    "value.lower().startswith('a')", "value * 3", "value ** 2", "-value", "value in value",
    "regex(value, 'a+')", "int(value) // value", "value[1:] == value", "str(value) + value",
    "round(value, value)", "min(value) < max(value)", "value.items % 2",
]


@settings(max_examples=150, deadline=None)
@given(_json, st.sampled_from(_PROBES))
def test_evaluation_raises_nothing_but_expression_error(value: Any, text: str) -> None:
    env = event_env(kafka_event(value))
    with contextlib.suppress(ExpressionError):
        Expression(text).evaluate(env)


# --- a hostile rule file -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "().__class__.__bases__[0].__subclasses__()",
        "payload.__class__",
        "path._x",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "open('/etc/passwd').read()",
        "\"{0.__class__}\".format(1)",
        "'{}'.format_map(payload)",
        "'%s' % payload",
        "exec('import os')",
        "eval('1')",
        "getattr(payload, 'x')",
        "type(payload)",
        "globals()",
        "(lambda: 1)()",
        "lambda: 1",
        "[x for x in payload]",
        "{x: 1 for x in payload}",
        "(x for x in payload)",
        "f'{payload.__class__}'",
        "(x := 1)",
        "[*payload]",
        "payload.copy()",
        "payload.get('path')",
        "path.encode()",
        "path.__len__()",
        "path | 1",
        "~size",
        "size << 1000",
        "9**9**9",
        "'a' * 10**9",
        "10**4000000",
        "1/0",
        "-" * 2000 + "1",  # deeper than 100 levels
        "-" * 3999 + "1",  # deeper than the parser goes
        "-" * 5000 + "1",  # longer than 4000 characters
        "(" * 300 + "1" + ")" * 300,
        "yield 1",
        "await x",
        "{1, 2}",
        "{'a': 1}",
        "b'x'",
        "1 if size else 2",
        "size is 1",
    ],
)
def test_hostile_input_is_refused_at_compile_time(text: str) -> None:
    compile_error(text)


def test_refused_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for text in [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w')",
        f"exec(\"open('{marker}', 'w')\")",
        f"().__class__.__bases__[0].__subclasses__() and open('{marker}', 'w')",
    ]:
        with pytest.raises(ExpressionError):
            Expression(text).evaluate(FILE)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "path * 1000000000",  # a 39 GB string
        "size ** size",  # 2048 ** 2048
        "(size * 1000) ** 9999",
        "path.replace('/', path * 2000)",
        "path.replace('/', '/' * 10000).replace('/', '/' * 10000)",
        "round(size, -10 ** 6)",
        "[size] * 1000000",
        "int('1' * 9000, 2) * int('1' * 9000, 2)",
        "regex(path, path * 10)",  # a pattern over 200 characters
    ],
)
def test_huge_results_are_refused_at_evaluation(text: str) -> None:
    err = eval_error(text)
    assert err.column is not None


def test_a_long_literal_regex_is_refused_at_compile_time() -> None:
    err = compile_error("regex(path, '" + "a" * 201 + "')")
    assert "200 characters" in err.message


def test_overlong_expressions_are_refused() -> None:
    assert "longer than" in compile_error("size + " * 1000 + "1").message


def test_deep_nesting_is_refused_without_a_crash() -> None:
    assert "nested too deeply" in compile_error("[" * 150 + "]" * 150).message
    assert compile_error("size" + " + size" * 200).message == "expression nested too deeply"


# --- engine-facing behaviour --------------------------------------------------------------------


def test_literal_arithmetic_is_computed_once() -> None:
    assert Expression("size < 2 ** 20 * 10").test(FILE)
    assert Expression("1024 * 1024").evaluate({}) == 1048576


def test_names_lists_the_event_names_used() -> None:
    assert Expression("kind == 'x' or path matches '*' or len(payload) > 1").names == {
        "kind", "path", "payload"}


def test_test_returns_a_bool() -> None:
    assert Expression("path").test(FILE) is True
    assert Expression("value").test(FILE) is False


def test_an_expression_can_be_shared_between_threads() -> None:
    expr = Expression("value.score > 0.25 and value.metric matches 'p*'")
    high = event_env(kafka_event({"metric": "psi", "score": 0.5}))
    low = event_env(kafka_event({"metric": "psi", "score": 0.1}))
    results: list[bool] = []
    lock = threading.Lock()

    def work(env: dict[str, Any], expected: bool) -> None:
        ok = all(expr.test(env) is expected for _ in range(2000))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=work, args=(env, env is high))
               for env in (high, low, high, low)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True, True]
