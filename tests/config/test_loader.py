"""The config loader as users meet it: real YAML files, every problem as `file:line: key: message`.

Each test writes files into tmp_path and checks the exact file, the line (found by a marker
in the text the test wrote, so the expectation does not depend on the loader) and a
recognisable part of the message. `env` is always passed explicitly so the tests never read
the environment of the machine running them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from triggerd.backends.command import CommandOptions
from triggerd.config.loader import DEFAULT_STATE_DIR, Config, load_config
from triggerd.errors import ConfigError
from triggerd.sources.cron import CronOptions

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "triggerd.example.yaml"

# A valid preamble: one cron source and one command backend, for the rules of most tests.
PLUGINS = """
sources:
  nightly:
    type: cron
    schedule: "0 2 * * *"
backends:
  train:
    type: command
    argv: [python, -m, train]
"""


# -- helpers ---------------------------------------------------------------------------------
def write(directory: Path, text: str, name: str = "triggerd.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, env: Mapping[str, str] | None = None, **kwargs: str) -> Config:
    return load_config(path, {} if env is None else env, **kwargs)


def problems_of(path: Path, env: Mapping[str, str] | None = None, **kwargs: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env, **kwargs)
    problems = info.value.problems
    assert problems, "a ConfigError must carry its problems"
    assert str(info.value) == "\n".join(problems)
    return problems


def line_of(path: Path, marker: str) -> int:
    """The 1-based line of the only line of `path` containing `marker`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [n for n, text in enumerate(lines, 1) if marker in text]
    assert len(found) == 1, f"marker {marker!r} is on lines {found} of {path}"
    return found[0]


def find(problems: list[str], path: Path, line: int, key: str, fragment: str) -> str:
    """The only problem at `path:line` about `key` whose message contains `fragment`."""
    head = f"{path}:{line}: {key}: "
    found = [p for p in problems if p.startswith(head) and fragment in p[len(head):]]
    assert len(found) == 1, f"no single {head!r}...{fragment!r} in:\n" + "\n".join(problems)
    return found[0]


def cron(config: Config, name: str) -> CronOptions:
    options = config.sources[name]
    assert isinstance(options, CronOptions)
    return options


def command(config: Config, name: str) -> CommandOptions:
    options = config.backends[name]
    assert isinstance(options, CommandOptions)
    return options


def rules_file(tmp_path: Path, rules: str) -> Path:
    return write(tmp_path, PLUGINS + textwrap.dedent(rules))


# -- valid files -----------------------------------------------------------------------------
def test_the_example_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.path == EXAMPLE
    assert config.files == [EXAMPLE]
    assert config.retention == timedelta(days=7)
    assert config.source_type("every-30s") == "cron"
    source = cron(config, "every-30s")
    assert source.every == timedelta(seconds=30)
    assert source.catch_up == "last"
    backend = command(config, "train-local")
    assert backend.argv == ["python3", "example_train.py", "--model",
                                        "{params.model}"]
    assert backend.timeout == timedelta(minutes=2)
    rule = config.rules["churn-periodic"]
    assert rule.on == ["every-30s"]
    assert rule.dispatch.backend == "train-local"
    assert rule.dispatch.params == {"model": "churn"}
    assert rule.dispatch.retry.attempts == 2
    assert rule.dispatch.retry.backoff == timedelta(seconds=5)
    # state_dir: ../.triggerd relative to config/, i.e. the repository's .triggerd
    assert config.state_dir == (REPO / ".triggerd").resolve()
    assert config.store_url == f"sqlite:///{config.state_dir / 'state.db'}"


RICH = """
store: sqlite:///${STATE}/state.db
retention: 14d
sources:
  nightly:
    type: cron
    schedule: "0 2 * * *"
    timezone: Europe/Berlin
    catch_up: all
    max_catch_up: 5
  six-hourly:
    type: cron
    every: 6h
    catch_up: none
backends:
  train-local:
    type: command
    argv: [python, -m, train, --model, "{params.model}"]
    workdir: /srv/models
    timeout: 2h
    env: {MLFLOW_TRACKING_TOKEN: "${MLFLOW_TOKEN}"}
    output_limit: 512KiB
rules:
  churn-on-new-data:
    description: retrain on new data, at most every 6 hours, at least weekly
    on: [six-hourly]
    match:
      kinds: [tick, manual]
      subject: "six-hourly"
      where: "kind == 'tick' and payload.scheduled_for is not null"
    group_by: "{payload.dir}"
    when:
      min_events: 10
      min_bytes: 1GiB
      debounce: 2m
      max_delay: 1h
      cooldown: 6h
      at_least_every: 7d
    dispatch:
      backend: train-local
      params: {model: churn}
      concurrency: 1
      on_busy: coalesce
      retry: {attempts: 3, backoff: 1m}
  churn-nightly-if-changed:
    on: [six-hourly]
    when: {schedule: "0 2 * * *", min_events: 1}
    dispatch: {backend: train-local, params: {model: churn}}
  churn-on-the-nightly-source:
    on: [six-hourly]
    when: {schedule: nightly}
    dispatch: {backend: train-local, params: {model: churn}, on_busy: queue}
  churn-sustained:
    on: [six-hourly]
    match: {where: "value.metric == 'psi' and value.score > 0.25"}
    when: {sustained: 3, cooldown: 1d}
    dispatch: {backend: train-local, params: {model: churn}, on_busy: skip}
  churn-sustained-for:
    on: [six-hourly]
    when: {sustained: 15m}
    dispatch: {backend: train-local}
  churn-nightly:
    on: [nightly]
    dispatch: {backend: train-local, params: {model: churn}}
"""


def test_a_rich_config_in_the_spec_style_loads_with_every_value(tmp_path: Path) -> None:
    path = write(tmp_path, RICH)
    config = load(path, {"STATE": "/srv/state", "MLFLOW_TOKEN": "t0ken"})
    assert config.store_url == "sqlite:////srv/state/state.db"
    assert config.retention == timedelta(days=14)
    assert sorted(config.sources) == ["nightly", "six-hourly"]
    nightly = cron(config, "nightly")
    assert (nightly.schedule, nightly.timezone) == (
        "0 2 * * *", "Europe/Berlin")
    assert (nightly.catch_up, nightly.max_catch_up) == ("all", 5)
    assert cron(config, "six-hourly").every == timedelta(hours=6)
    backend = command(config, "train-local")
    assert backend.env == {"MLFLOW_TRACKING_TOKEN": "t0ken"}
    assert backend.output_limit == 512 * 1024
    assert backend.timeout == timedelta(hours=2)

    rule = config.rules["churn-on-new-data"]
    assert rule.match.kinds == ["tick", "manual"]
    assert rule.group_by == "{payload.dir}"
    when = rule.when
    assert when.min_events == 10
    assert when.min_bytes == 2**30
    assert (when.debounce, when.max_delay) == (timedelta(minutes=2), timedelta(hours=1))
    assert (when.cooldown, when.at_least_every) == (timedelta(hours=6), timedelta(days=7))
    assert rule.dispatch.retry.attempts == 3
    assert rule.dispatch.retry.backoff == timedelta(minutes=1)
    assert config.rules["churn-nightly-if-changed"].when.schedule == "0 2 * * *"
    assert config.rules["churn-on-the-nightly-source"].when.schedule == "nightly"
    assert config.rules["churn-sustained"].when.sustained == 3
    assert config.rules["churn-sustained-for"].when.sustained == timedelta(minutes=15)
    # defaults
    plain = config.rules["churn-nightly"]
    assert plain.when.min_events == 1
    assert plain.dispatch.on_busy == "coalesce"
    assert plain.dispatch.concurrency == 1


def test_retention_defaults_to_30_days_and_an_empty_file_is_a_valid_config(
        tmp_path: Path) -> None:
    config = load(write(tmp_path, "# nothing configured yet\n"))
    assert config.retention == timedelta(days=30)
    assert (config.sources, config.backends, config.rules) == ({}, {}, {})


def test_on_stays_a_key_and_yes_no_on_off_stay_strings(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            description: on
            dispatch:
              backend: train
              params: {a: yes, b: no, c: on, d: off, e: y, f: n, g: true, h: false}
        """)
    rule = load(path).rules["r"]
    assert rule.on == ["nightly"]
    assert rule.description == "on"
    assert rule.dispatch.params == {"a": "yes", "b": "no", "c": "on", "d": "off",
                                    "e": "y", "f": "n", "g": True, "h": False}


def test_a_boolean_option_still_accepts_yes_and_no(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          a: {type: command, argv: [x], inherit_env: no}
          b: {type: command, argv: [x], inherit_env: yes}
        """)
    config = load(path)
    assert command(config, "a").inherit_env is False
    assert command(config, "b").inherit_env is True


# -- one kind of error at a time -------------------------------------------------------------
def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS + "retension: 7d\n")
    problems = problems_of(path)
    find(problems, path, line_of(path, "retension"), "(top level)", "unknown key 'retension'")
    assert len(problems) == 1


def test_unknown_keys_inside_rule_when_match_dispatch_and_retry(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            trigger_on: x
            match:
              kind: [tick]
            when:
              cooldwon: 6h
            dispatch:
              backend: train
              priority: 1
              retry: {attempts: 3, delay: 1m}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "trigger_on"), "rules.r", "unknown key 'trigger_on'")
    find(problems, path, line_of(path, "kind:"), "rules.r.match", "unknown key 'kind'")
    find(problems, path, line_of(path, "cooldwon"), "rules.r.when", "unknown key 'cooldwon'")
    find(problems, path, line_of(path, "priority"), "rules.r.dispatch",
         "unknown key 'priority'")
    find(problems, path, line_of(path, "delay: 1m"), "rules.r.dispatch.retry",
         "unknown key 'delay'")
    assert len(problems) == 5


def test_unknown_keys_inside_a_source_and_a_backend(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sources:
          nightly:
            type: cron
            schedule: "0 2 * * *"
            paths: [/data]
        backends:
          train:
            type: command
            argv: [python]
            shell: true
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "paths:"), "sources.nightly", "unknown key 'paths'")
    find(problems, path, line_of(path, "shell:"), "backends.train", "unknown key 'shell'")
    assert len(problems) == 2


def test_missing_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sources:
          nightly: {type: cron, schedule: "0 2 * * *"}
          untyped:
            schedule: "0 3 * * *"
        backends:
          train:
            type: command
            workdir: /srv
        rules:
          no-dispatch:
            on: [nightly]
          no-backend:
            on: [nightly]
            dispatch:  # without a backend
              params: {model: churn}
          no-on:
            dispatch: {backend: train}
          on-the-untyped-source:  # no "unknown source" follows from the untyped one
            on: [untyped]
            dispatch: {backend: train}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "no-dispatch:"), "rules.no-dispatch",
         "missing required key 'dispatch'")
    find(problems, path, line_of(path, "without a backend"), "rules.no-backend.dispatch",
         "missing required key 'backend'")
    find(problems, path, line_of(path, "no-on:"), "rules.no-on", "missing required key 'on'")
    find(problems, path, line_of(path, "train:"), "backends.train",
         "missing required key 'argv'")
    find(problems, path, line_of(path, "untyped:"), "sources.untyped",
         "missing required key 'type'")
    assert len(problems) == 5


@pytest.mark.parametrize(("setting", "key", "message"), [
    ("debounce: 2 minutes", "debounce", "invalid duration '2 minutes'"),
    ("cooldown: 30", "cooldown", "invalid duration 30"),
    ("at_least_every: weekly", "at_least_every", "invalid duration 'weekly'"),
    ("min_bytes: lots", "min_bytes", "invalid size 'lots'"),
    ("min_events: 0", "min_events", "greater than or equal to 1"),
    ("min_events: -3", "min_events", "greater than or equal to 1"),
    ("sustained: 0", "sustained", "sustained must be at least 1"),
])
def test_bad_values_in_when(tmp_path: Path, setting: str, key: str, message: str) -> None:
    path = rules_file(tmp_path, f"""
        rules:
          r:
            on: [nightly]
            when:
              {setting}
            dispatch: {{backend: train}}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, setting), f"rules.r.when.{key}", message)
    assert len(problems) == 1


def test_a_bad_duration_message_says_how_to_write_one(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            when: {debounce: 2 minutes}
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    assert "500ms, 30s, 2m, 6h or 7d" in problem


def test_max_delay_needs_a_debounce_and_must_not_be_shorter(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          alone:
            on: [nightly]
            when: {max_delay: 1h}
            dispatch: {backend: train}
          shorter:
            on: [nightly]
            when: {debounce: 2h, max_delay: 1h}
            dispatch: {backend: train}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "{max_delay: 1h}"), "rules.alone.when",
         "max_delay bounds a debounce: set debounce too")
    find(problems, path, line_of(path, "{debounce: 2h"), "rules.shorter.when",
         "max_delay must not be shorter than debounce")
    assert len(problems) == 2


def test_unknown_source_in_on_names_the_defined_ones(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS.replace("sources:", "sources:\n  hourly: {type: cron, "
                                                      "every: 1h}") + """
rules:
  r:
    on:
      - nightly
      - landing
    dispatch: {backend: train}
""")
    problems = problems_of(path)
    find(problems, path, line_of(path, "- landing"), "rules.r.on[1]",
         "unknown source 'landing' (defined: hourly, nightly)")
    assert len(problems) == 1


def test_unknown_backend_in_dispatch_names_the_defined_ones(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            dispatch:
              backend: airflow-prod
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "airflow-prod"), "rules.r.dispatch.backend",
         "unknown backend 'airflow-prod' (defined: train)")
    assert len(problems) == 1


def test_with_no_sources_the_message_says_none_are_defined(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends: {train: {type: command, argv: [x]}}
        rules:
          r: {on: [nightly], dispatch: {backend: train}}
        """)
    (problem,) = problems_of(path)
    assert problem.endswith("rules.r.on[0]: unknown source 'nightly' (defined: none)")


def test_bad_cron_expression_in_a_source_and_in_when_schedule(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sources:
          nightly:
            type: cron
            schedule: "61 2 * * *"
          daily:
            type: cron
            schedule: every day
        backends:
          train: {type: command, argv: [x]}
        rules:
          r:
            on: [daily]
            when:
              schedule: "0 25 * * *"
            dispatch: {backend: train}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "61 2"), "sources.nightly.schedule",
         "invalid cron expression '61 2 * * *'")
    find(problems, path, line_of(path, "every day"), "sources.daily.schedule",
         "expected 5 fields, got 2")
    rule = find(problems, path, line_of(path, "0 25"), "rules.r.when.schedule",
                "invalid cron expression '0 25 * * *'")
    assert "hour" in rule
    assert "name of a cron source" in rule
    assert len(problems) == 3


def test_a_cron_source_needs_schedule_or_every_not_both(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sources:
          neither:
            type: cron
            timezone: UTC
          both:
            type: cron
            schedule: "0 2 * * *"
            every: 1h
          bad-zone:
            type: cron
            every: 1h
            timezone: Mars/Olympus
          bad-catch-up:
            type: cron
            every: 1h
            catch_up: sometimes
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "neither:"), "sources.neither", "set `schedule`")
    find(problems, path, line_of(path, "both:"), "sources.both", "not both")
    find(problems, path, line_of(path, "Mars/Olympus"), "sources.bad-zone.timezone",
         "Mars/Olympus")
    find(problems, path, line_of(path, "sometimes"), "sources.bad-catch-up.catch_up",
         "'none', 'last' or 'all'")
    assert len(problems) == 4


def test_when_schedule_naming_a_non_cron_source_or_a_backend(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS.replace("sources:", """sources:
  landing:
    type: filesystem
    paths: [/data/landing]""") + """
rules:
  on-landing:
    on: [nightly]
    when:
      schedule: landing
    dispatch: {backend: train}
  on-backend:
    on: [nightly]
    when:
      schedule: train
    dispatch: {backend: train}
""")
    problems = problems_of(path)
    find(problems, path, line_of(path, "schedule: landing"), "rules.on-landing.when.schedule",
         "source 'landing' is not a cron source")
    find(problems, path, line_of(path, "schedule: train"), "rules.on-backend.when.schedule",
         "give a 5-field cron expression or the name of a cron source")
    assert len(problems) == 2


@pytest.mark.parametrize(("section", "type_name", "message"), [
    ("sources", "carrier-pigeon", "unknown source type 'carrier-pigeon' (known: bucket, cron, "),
    ("backends", "fax", "unknown backend type 'fax' (known: airflow, command"),
])
def test_unknown_types_are_reported_at_the_type_line(
        tmp_path: Path, section: str, type_name: str, message: str) -> None:
    path = write(tmp_path, f"""
        {section}:
          thing:
            # options of a type that does not exist are not checked
            url: https://example.invalid
            type: {type_name}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, "type:"), f"{section}.thing.type", message)
    assert len(problems) == 1


def test_a_where_syntax_error_has_its_column(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            match:
              where: "payload.size > "
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    find([problem], path, line_of(path, "where:"), "rules.r.match.where", "syntax")
    assert "at column " in problem
    assert "'payload.size > '" in problem


def test_a_where_unknown_name_has_its_column_and_the_known_names(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            match: {where: "payload.size > 0 and frob > 1"}
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    find([problem], path, line_of(path, "frob"), "rules.r.match.where", "unknown name 'frob'")
    assert "at column 22" in problem  # 'frob' starts at the 22nd character
    assert "payload" in problem.split("unknown name 'frob'")[1]


def test_a_where_expression_cannot_call_arbitrary_code(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            match: {where: "__import__('os').system('true') == 0"}
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, '__import__')}: rules.r.match.where: ")


def test_a_bad_subject_glob(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            match:
              subject: "/data/[z-a]/*.parquet"
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    find([problem], path, line_of(path, "subject:"), "rules.r.match.subject", "z-a")
    assert "column 7" in problem


def test_a_bad_group_by_template(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            group_by: "{payload.dir"
            dispatch: {backend: train}
          s:
            on: [nightly]
            group_by: "{payload.dir!r}"
            dispatch: {backend: train}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, '"{payload.dir"'), "rules.r.group_by", "unclosed '{'")
    find(problems, path, line_of(path, "!r"), "rules.s.group_by", "invalid template field")
    assert len(problems) == 2


def test_a_bad_argv_template_in_a_command_backend(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          train:
            type: command
            argv: [python, "{params.model"]
        """)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'train:')}: backends.train")
    assert "unclosed '{'" in problem


@pytest.mark.parametrize("name", ["churn daily", "churn/daily", "-churn", "churné"])
def test_a_rule_name_must_be_a_plain_name(tmp_path: Path, name: str) -> None:
    path = rules_file(tmp_path, f"""
        rules:
          ok:
            on: [nightly]
            dispatch: {{backend: train}}
          "{name}":
            on: [nightly]
            when: {{debounce: 2 minutes}}
            dispatch: {{backend: train}}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, f'"{name}":'), f"rules.{name}", f"invalid name {name!r}")
    # the badly named rule is still checked
    find(problems, path, line_of(path, "2 minutes"), f"rules.{name}.when.debounce",
         "invalid duration")
    assert len(problems) == 2


def test_bad_source_and_backend_names_each_at_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        sources:
          "night ly": {type: cron, schedule: "0 2 * * *"}
          "a/b": {type: cron, schedule: "0 3 * * *"}
        backends:
          "train me": {type: command, argv: [x]}
        rules:
          r:
            on: ["night ly"]
            dispatch: {backend: "train me"}
        """)
    problems = problems_of(path)
    find(problems, path, line_of(path, '"night ly": {'), "sources.night ly", "invalid name")
    find(problems, path, line_of(path, '"a/b"'), "sources.a/b", "invalid name")
    find(problems, path, line_of(path, '"train me": {'), "backends.train me", "invalid name")
    # no "unknown source/backend" follows from a name that is written but invalid
    assert len(problems) == 3


def test_a_rule_named_like_a_type_is_reported_at_its_own_lines(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          str:
            on: [nightly]
            when:
              debounce: 2 minutes
            dispatch: {backend: train}
        """)
    (problem,) = problems_of(path)
    find([problem], path, line_of(path, "2 minutes"), "rules.str.when.debounce",
         "invalid duration")


def test_duplicate_keys_in_one_mapping(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          r:
            on: [nightly]
            dispatch: {backend: train}
            on: [other]
          r:
            on: [nightly]
            dispatch: {backend: train}
        """)
    lines = path.read_text().splitlines()
    second_on = max(n for n, text in enumerate(lines, 1) if "on: [other]" in text)
    second_r = max(n for n, text in enumerate(lines, 1) if text == "  r:")
    problems = problems_of(path)
    find(problems, path, second_on, "rules.r.on", "duplicate key")
    find(problems, path, second_r, "rules.r", "duplicate key")
    assert len(problems) == 2


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("rules:\n  r:\n    on: [nightly\n    dispatch: {backend: train}\n", 4,
     "expected ',' or ']', but got ':' (while parsing a flow sequence at line 3)"),
    ("sources:\n  a: 1\n   b: 2\n", 3, "mapping values are not allowed"),
    ("sources:\n\tnightly: {}\n", 2, "'\\t' that cannot start any token"),
    ("store: 'unterminated\nretention: 7d\n", 3,
     "end of stream (while scanning a quoted scalar at line 1)"),
    ("retention: 7d\nrules: *anchor\n", 2, "undefined alias 'anchor'"),
    ("retention: !!python/name:os.system ''\n", 1, "could not determine a constructor"),
])
def test_invalid_yaml_is_reported_with_its_line(
        tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text(text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line}: invalid YAML: ")
    assert fragment in problem


def test_a_python_tag_on_a_list_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"retention: !!python/object/apply:os.system ['touch {marker}']\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: retention: invalid duration")
    assert not marker.exists()


@pytest.mark.parametrize("text", ["- rules\n- sources\n", "just a sentence\n", "42\n"])
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert problems_of(path) == [f"{path}:1: the config file must be a mapping of sections"]


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert "cannot read file" in problem
    assert "No such file" in problem


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path}:")
    assert "cannot read file" in problem


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_bytes(b"retention: 7d\nrules:\n  caf\xe9:\n    on: [x]\n")
    assert problems_of(path) == [f"{path}:3: not UTF-8 text: invalid continuation byte"]


# -- every problem at once -------------------------------------------------------------------
MANY_ERRORS = """
colour: blue
sources:
  nightly:
    type: cron
    schedule: "0 25 * * *"
backends:
  train: {type: command, argv: [python, -m, train]}
rules:
  r:
    on: [nightly]
    when:
      debounce: 2 minutes
    dispatch: {backend: train}
  s:
    on: [nightly]
    dispatch: {backend: airflow-prod}
"""


def test_errors_of_every_stage_are_reported_together(tmp_path: Path) -> None:
    """A schema error (unknown key, bad duration) does not hide plugin or reference errors."""
    path = write(tmp_path, MANY_ERRORS)
    problems = problems_of(path)
    find(problems, path, line_of(path, "colour"), "(top level)", "unknown key 'colour'")
    find(problems, path, line_of(path, "0 25"), "sources.nightly.schedule",
         "invalid cron expression")
    find(problems, path, line_of(path, "2 minutes"), "rules.r.when.debounce",
         "invalid duration")
    find(problems, path, line_of(path, "airflow-prod"), "rules.s.dispatch.backend",
         "unknown backend 'airflow-prod'")
    assert len(problems) == 4


def test_many_rule_errors_each_with_its_own_line(tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
        rules:
          a:
            on: [nightly, landing]
            match: {where: "size >> 2"}
            dispatch: {backend: train}
          b:
            on: [nightly]
            group_by: "{dir"
            dispatch: {backend: nope}
          c:
            on: [nightly]
            when: {schedule: "* * *"}
            dispatch: {backend: train}
          d:
            on: [nightly]
            when: {min_bytes: lots}
            dispatch: {backend: train}
        """)
    problems = problems_of(path)
    assert sorted(p.split(": ")[1] for p in problems) == [
        "rules.a.match.where", "rules.a.on[1]", "rules.b.dispatch.backend", "rules.b.group_by",
        "rules.c.when.schedule", "rules.d.when.min_bytes"]
    assert len({int(p.split(":")[1]) for p in problems}) == 6


# -- include ---------------------------------------------------------------------------------
MAIN_WITH_INCLUDE = """
include: ["rules.d/*.yaml"]
sources:
  nightly: {type: cron, schedule: "0 2 * * *"}
backends:
  train: {type: command, argv: [python, -m, train]}
rules:
  main-rule:
    on: [nightly]
    dispatch: {backend: train}
"""


def test_include_merges_sources_backends_and_rules(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    main = write(tmp_path / "etc", MAIN_WITH_INCLUDE)
    a = write(tmp_path / "etc", """
        sources:
          hourly: {type: cron, every: 1h}
        rules:
          a-rule:
            on: [hourly]
            dispatch: {backend: other}
        """, "rules.d/a.yaml")
    b = write(tmp_path / "etc", """
        backends:
          other: {type: command, argv: [echo]}
        rules:
          b-rule:
            on: [nightly, hourly]
            dispatch: {backend: train}
        """, "rules.d/b.yaml")
    write(tmp_path / "etc", "rules: {ignored: {}}\n", "rules.d/notes.txt")
    monkeypatch.chdir(tmp_path)  # relative to the including file, not to the cwd
    config = load(main)
    assert config.files == [main, a, b]
    assert sorted(config.rules) == ["a-rule", "b-rule", "main-rule"]
    assert sorted(config.sources) == ["hourly", "nightly"]
    assert sorted(config.backends) == ["other", "train"]
    assert config.rules["b-rule"].on == ["nightly", "hourly"]


def test_a_glob_matching_nothing_is_fine(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    config = load(main)
    assert config.files == [main]
    assert list(config.rules) == ["main-rule"]


def test_including_a_missing_literal_file_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE.replace(
        'include: ["rules.d/*.yaml"]', "include:\n  - rules.d/*.yaml\n  - extra.yaml"))
    (problem,) = problems_of(main)
    find([problem], main, line_of(main, "- extra.yaml"), "include[1]",
         "no such file 'extra.yaml'")


def test_an_error_in_an_included_file_names_that_file_and_line(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, """
        # rules of the churn team
        rules:
          churn:
            on: [nightly]
            when:
              debounce: 2 minutes
            match: {where: "nope > 1"}
            dispatch: {backend: missing}
        """, "rules.d/churn.yaml")
    problems = problems_of(main)
    find(problems, inc, line_of(inc, "2 minutes"), "rules.churn.when.debounce",
         "invalid duration")
    assert len(problems) == 1
    # once the schema error is fixed the rule's other errors point into the same file
    inc.write_text(inc.read_text().replace("2 minutes", "2m"))
    problems = problems_of(main)
    find(problems, inc, line_of(inc, "nope"), "rules.churn.match.where", "unknown name 'nope'")
    find(problems, inc, line_of(inc, "missing"), "rules.churn.dispatch.backend",
         "unknown backend 'missing'")
    assert len(problems) == 2


def test_an_error_in_an_included_source_or_backend_names_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, """
        sources:
          landing:
            type: carrier-pigeon
          weekly:
            type: cron
            schedule: "0 0 * * 8"
        backends:
          ci:
            type: command
            argv: []
        """, "rules.d/plugins.yaml")
    problems = problems_of(main)
    find(problems, inc, line_of(inc, "carrier-pigeon"), "sources.landing.type",
         "unknown source type 'carrier-pigeon'")
    find(problems, inc, line_of(inc, "0 0 * * 8"), "sources.weekly.schedule",
         "invalid cron expression")
    find(problems, inc, line_of(inc, "argv: []"), "backends.ci.argv", "at least 1 item")
    assert len(problems) == 3


def test_the_same_rule_in_two_files_names_both_places(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, """
        rules:
          main-rule:
            on: [nightly]
            dispatch: {backend: train}
        """, "rules.d/dup.yaml")
    (problem,) = problems_of(main)
    assert problem == (f"{inc}:{line_of(inc, 'main-rule')}: rules.main-rule: already defined "
                       f"at {main}:{line_of(main, 'main-rule')}")


def test_the_same_source_in_two_included_files_names_both_places(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    first = write(tmp_path, "# hourly\nsources:\n  hourly: {type: cron, every: 1h}\n",
                  "rules.d/1.yaml")
    second = write(tmp_path, "sources:\n  hourly: {type: cron, every: 2h}\n", "rules.d/2.yaml")
    (problem,) = problems_of(main)
    assert problem == (f"{second}:2: sources.hourly: already defined at {first}:3")


def test_a_duplicate_does_not_move_the_first_definitions_lines(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE.replace(
        "    on: [nightly]\n", "    on: [nightly]\n    when: {debounce: 2 minutes}\n"))
    inc = write(tmp_path, """
        # padding
        # padding
        rules:
          main-rule:
            on: [nightly]
            dispatch: {backend: train}
            when: {debounce: 1m}
        """, "rules.d/dup.yaml")
    problems = problems_of(main)
    find(problems, inc, line_of(inc, "main-rule"), "rules.main-rule", "already defined")
    # the bad debounce is the main file's: reported there, not at the duplicate's lines
    find(problems, main, line_of(main, "2 minutes"), "rules.main-rule.when.debounce",
         "invalid duration")
    assert len(problems) == 2


def test_an_included_file_may_only_hold_sources_backends_and_rules(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, """
        rules:
          extra:
            on: [nightly]
            dispatch: {backend: train}
        store: sqlite:////tmp/elsewhere.db
        include: ["more/*.yaml"]
        """, "rules.d/x.yaml")
    problems = problems_of(main)
    assert f"{inc}:{line_of(inc, 'store:')}: unknown key 'store'" in "\n".join(problems)
    assert f"{inc}:{line_of(inc, 'include:')}: unknown key 'include'" in "\n".join(problems)
    assert len(problems) == 2


@pytest.mark.parametrize("text", ["- a\n- b\n", "rules\n"])
def test_an_included_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, text, "rules.d/x.yaml")
    assert problems_of(main) == [f"{inc}:1: a rule file must be a mapping of sections"]


def test_invalid_yaml_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE)
    inc = write(tmp_path, "rules:\n  r:\n    on: [nightly\n    x: 1\n", "rules.d/x.yaml")
    (problem,) = problems_of(main)
    assert problem.startswith(f"{inc}:4: invalid YAML: ")


# -- ${VAR} expansion ------------------------------------------------------------------------
def test_env_variables_are_expanded_in_string_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
        store: "postgresql+psycopg://svc:${DB_PASSWORD}@${DB_HOST:-localhost}/triggerd"
        backends:
          train:
            type: command
            argv: [python, "${SCRIPT}", "${MODE:-full}", "${EMPTY:-fallback}", "${EMPTY}"]
            env: {TOKEN: "${API_TOKEN}", PRICE: "$$5", LITERAL: "$${NOT_EXPANDED}", BARE: $HOME}
            timeout: ${TIMEOUT}
        """)
    env = {"DB_PASSWORD": "s3cr$t${X}", "SCRIPT": "train.py", "API_TOKEN": "tok",
           "TIMEOUT": "90s", "EMPTY": ""}
    config = load(path, env)
    # a value is inserted verbatim: `$` and `${...}` inside it are not expanded again
    assert config.store_url == "postgresql+psycopg://svc:s3cr$t${X}@localhost/triggerd"
    backend = command(config, "train")
    assert backend.argv == ["python", "train.py", "full", "fallback", ""]
    assert backend.env == {"TOKEN": "tok", "PRICE": "$5",
                                       "LITERAL": "${NOT_EXPANDED}", "BARE": "$HOME"}
    assert backend.timeout == timedelta(seconds=90)


def test_env_defaults_to_the_process_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERD_TEST_SCHEDULE", "0 4 * * *")
    path = write(tmp_path, "sources:\n  n: {type: cron, schedule: '${TRIGGERD_TEST_SCHEDULE}'}\n")
    config = load_config(path)
    assert cron(config, "n").schedule == "0 4 * * *"


def test_keys_are_not_expanded(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          train:
            type: command
            argv: [x]
            env: {"${NAME}": "v"}
        """)
    config = load(path, {"NAME": "expanded"})
    assert command(config, "train").env == {"${NAME}": "v"}


def test_a_missing_variable_names_the_variable_and_the_key_never_other_values(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
        store: "postgresql+psycopg://svc:${DB_PASSWORD}@${DB_HOST}/triggerd"
        backends:
          train:
            type: command
            argv: [python, train.py, "--token=${API_TOKEN}", "${MISSING_ARG}"]
            env: {HOOK_SECRET: "${HOOK_SECRET}", REGION: "${REGION}"}
        """)
    env = {"DB_PASSWORD": "hunter2-db", "API_TOKEN": "tok-42-api", "HOOK_SECRET": "hmac-key-7"}
    with pytest.raises(ConfigError) as info:
        load(path, env)
    problems = info.value.problems
    find(problems, path, line_of(path, "store:"), "store",
         "environment variable DB_HOST is not set")
    find(problems, path, line_of(path, "argv:"), "backends.train.argv[3]",
         "environment variable MISSING_ARG is not set")
    find(problems, path, line_of(path, "env:"), "backends.train.env.REGION",
         "environment variable REGION is not set")
    assert len(problems) == 3
    for secret in env.values():
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


# -- store and state directory ---------------------------------------------------------------
def test_default_store_is_sqlite_in_the_state_dir_relative_to_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "etc" / "triggerd", "state_dir: ../../var/state\n")
    monkeypatch.chdir(tmp_path / "etc")  # not relative to the cwd
    config = load(path)
    assert config.state_dir == (tmp_path / "var" / "state").resolve()
    assert config.store_url == f"sqlite:///{(tmp_path / 'var' / 'state').resolve()}/state.db"


def test_an_absolute_state_dir_and_a_configured_store(tmp_path: Path) -> None:
    state = tmp_path / "abs-state"
    path = write(tmp_path, f"state_dir: {state}\nstore: postgresql+psycopg://svc@db/triggerd\n")
    config = load(path)
    assert config.state_dir == state
    assert config.store_url == "postgresql+psycopg://svc@db/triggerd"


def test_store_override_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: state\nstore: sqlite:////from/file.db\n")
    config = load(path, store="postgresql+psycopg://svc@db/triggerd")
    assert config.store_url == "postgresql+psycopg://svc@db/triggerd"
    assert config.state_dir == (tmp_path / "state").resolve()


def test_state_dir_override_wins_over_the_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "state_dir: from-file\n")
    config = load(path, {"STATE_DIRECTORY": "/run/systemd-state"},
                  state_dir=str(tmp_path / "override"))
    assert config.state_dir == tmp_path / "override"
    assert config.store_url == f"sqlite:///{tmp_path / 'override' / 'state.db'}"
    monkeypatch.chdir(tmp_path)  # a relative override is relative to the cwd
    assert load(path, state_dir="rel").state_dir == tmp_path / "rel"


def test_systemd_state_directory_is_used_when_nothing_else_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "retention: 7d\n")
    config = load(path, {"STATE_DIRECTORY": "/var/lib/triggerd-a:/var/lib/other"})
    assert config.state_dir == Path("/var/lib/triggerd-a")
    assert config.store_url == "sqlite:////var/lib/triggerd-a/state.db"


def test_the_file_state_dir_wins_over_systemd(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: mine\n")
    config = load(path, {"STATE_DIRECTORY": "/var/lib/triggerd"})
    assert config.state_dir == (tmp_path / "mine").resolve()


def test_without_any_setting_the_state_dir_is_var_lib_triggerd(tmp_path: Path) -> None:
    config = load(write(tmp_path, "retention: 7d\n"))
    assert config.state_dir == Path(DEFAULT_STATE_DIR) == Path("/var/lib/triggerd")
    assert config.store_url == "sqlite:////var/lib/triggerd/state.db"


# -- `triggerd check`, as a user runs it -----------------------------------------------------
def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("TRIGGERD_") and k != "STATE_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "triggerd", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          check=False)


def test_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, RICH)
    result = run_cli("check", "--config", str(path), cwd=tmp_path, STATE="/srv",
                     MLFLOW_TOKEN="x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")
    assert "2 source(s), 1 backend(s), 6 rule(s)" in result.stdout
    assert str(path) in result.stdout
    assert result.stderr == ""


def test_check_lists_every_error_as_file_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, MANY_ERRORS)
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "ok:" not in result.stdout
    lines = result.stderr.splitlines()
    assert lines[:-1] == problems_of(path)
    assert all(line.startswith(f"{path}:") for line in lines[:-1])
    assert lines[-1] == "triggerd: 4 configuration error(s)"


def test_check_reports_included_files_and_missing_variables(tmp_path: Path) -> None:
    main = write(tmp_path, MAIN_WITH_INCLUDE.replace("argv: [python, -m, train]",
                                                     'argv: [python, "${SECRET}", "${UNSET}"]'))
    inc = write(tmp_path, "rules:\n  bad:\n    on: [nightly]\n    dispatch: {backend: nope}\n",
                "rules.d/bad.yaml")
    result = run_cli("check", "--config", str(main), cwd=tmp_path, SECRET="do-not-print-me")
    assert result.returncode == 2
    assert f"{main}:{line_of(main, 'UNSET')}: backends.train.argv[2]: environment variable " \
           "UNSET is not set" in result.stderr
    assert f"{inc}:4: rules.bad.dispatch.backend: unknown backend 'nope'" in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


def test_check_reads_triggerd_config_when_config_is_absent(tmp_path: Path) -> None:
    good = write(tmp_path, MAIN_WITH_INCLUDE, "good.yaml")
    bad = write(tmp_path, "colour: red\n", "bad.yaml")
    result = run_cli("check", cwd=tmp_path, TRIGGERD_CONFIG=str(good))
    assert result.returncode == 0, result.stderr
    assert str(good) in result.stdout
    result = run_cli("check", cwd=tmp_path, TRIGGERD_CONFIG=str(bad))
    assert result.returncode == 2
    assert f"{bad}:1: (top level): unknown key 'colour'" in result.stderr
    # --config wins over the environment
    result = run_cli("check", "--config", str(good), cwd=tmp_path, TRIGGERD_CONFIG=str(bad))
    assert result.returncode == 0, result.stderr


def test_check_defaults_to_config_triggerd_yaml_in_the_cwd(tmp_path: Path) -> None:
    write(tmp_path, MAIN_WITH_INCLUDE, "config/triggerd.yaml")
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config/triggerd.yaml" in result.stdout


def test_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check", "--config", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path / 'missing.yaml'}:")
    assert "cannot read file" in result.stderr
