"""YAML that would explode is refused: alias bombs, recursive aliases, merge-key recursion,
absurd nesting and huge files, in the main file and in included files.

Each refusal is a `file:line: message` ConfigError that comes within a second, with a bounded
peak of memory (measured with tracemalloc), and never a RecursionError or MemoryError. A config
with ordinary aliases and merge keys still loads.
"""

from __future__ import annotations

import os
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from triggerd.backends.command import CommandOptions
from triggerd.config.loader import load_config
from triggerd.config.yamlsafe import MAX_BYTES, MAX_DEPTH
from triggerd.errors import ConfigError

PEAK_LIMIT = 40 * 1024 * 1024  # bytes allocated by Python while refusing one file


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def refused(path: Path) -> list[str]:
    """Load `path`: it must fail with a ConfigError within 1 s and a bounded memory peak."""
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path, {})
        elapsed = time.monotonic() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0, f"took {elapsed:.2f}s to refuse"
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB while refusing"
    return info.value.problems


def bomb(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """The "billion laughs": `levels` anchors, each a list of `width` aliases of the one before
    (9 x 9 stands for 9**9 = 387 million scalars)."""
    lines = [f"{indent}lol0: &lol0 [" + ", ".join(["lol"] * width) + "]  # first anchor"]
    lines += [f"{indent}lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_in_the_main_file_is_refused_fast_and_small(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", "retention: 7d\nbomb:\n" + bomb(indent="  "))
    [problem] = refused(main)
    # refused at the first alias that takes the expansion past the bound, long before lol9
    assert problem.startswith(f"{main}:")
    line = int(problem.split(":")[1])
    assert line_of(main, "first anchor") < line < line_of(main, "lol9:")
    assert "aliases expand to more than" in problem and "alias bomb" in problem


def test_an_alias_bomb_in_an_included_file_is_refused_at_its_line(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", 'include: ["rules.d/*.yaml"]\n')
    inc = write(tmp_path / "rules.d" / "bomb.yaml", "rules:\n" + bomb(indent="  "))
    problems = refused(main)
    assert len(problems) == 1 and problems[0].startswith(f"{inc}:")
    assert "aliases expand to more than" in problems[0]


def test_a_wide_shallow_bomb_is_refused_too(tmp_path: Path) -> None:
    # few levels, many aliases each: 3 levels of 1000 stand for a billion nodes
    main = write(tmp_path / "triggerd.yaml", bomb(levels=3, width=1000))
    [problem] = refused(main)
    assert "aliases expand to more than" in problem


@pytest.mark.parametrize("text, marker", [
    ("retention: 7d\nloop: &a [1, *a]  # here\n", "# here"),
    ("retention: 7d\nloop: &a\n  x: 1\n  y: [*a]  # here\n", "# here"),
    ("retention: 7d\nloop: &a\n  x: 1\n  <<: *a  # here\n", "# here"),
    ("retention: 7d\nrules:\n  r: &r\n    <<: [{on: [x]}, *r]  # here\n", "# here"),
], ids=["sequence", "mapping", "merge-key", "merge-list"])
def test_a_recursive_alias_is_refused_at_its_line(tmp_path: Path, text: str,
                                                  marker: str) -> None:
    main = write(tmp_path / "triggerd.yaml", text)
    [problem] = refused(main)
    assert problem.startswith(f"{main}:{line_of(main, marker)}: recursive alias *")


def test_nesting_100k_deep_is_a_config_error_not_a_recursion_error(tmp_path: Path) -> None:
    depth = 100_000
    main = write(tmp_path / "triggerd.yaml", "retention: 7d\nx: " + "[" * depth + "]" * depth)
    [problem] = refused(main)
    assert problem == f"{main}:2: nested more than {MAX_DEPTH} levels deep"


def test_block_nesting_past_the_limit_is_refused(tmp_path: Path) -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 5))
    main = write(tmp_path / "triggerd.yaml", text)
    [problem] = refused(main)
    assert problem == f"{main}:{MAX_DEPTH}: nested more than {MAX_DEPTH} levels deep"


def test_depth_brought_by_aliases_counts(tmp_path: Path) -> None:
    # each anchor is 30 levels deep and holds the one before: 5 of them are 150 levels
    lines = ["a0: &a0 " + "[" * 30 + "x" + "]" * 30]
    lines += [f"a{i}: &a{i} " + "[" * 30 + f"*a{i - 1}" + "]" * 30 for i in range(1, 5)]
    main = write(tmp_path / "triggerd.yaml", "\n".join(lines) + "\n")
    [problem] = refused(main)
    assert problem.startswith(f"{main}:3: alias *a1 nests more than {MAX_DEPTH} levels deep")


def test_a_huge_file_is_refused_without_being_parsed(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", "x:\n" + "  - abcdefg\n" * (MAX_BYTES // 12 + 10))
    [problem] = refused(main)
    assert f"{main}:" in problem and "file is larger than" in problem


def test_too_many_nodes_are_refused(tmp_path: Path) -> None:
    # under the size limit, but more nodes than any config has; refused at the node limit
    main = write(tmp_path / "triggerd.yaml", "x: [" + "1," * 60_000 + "1]\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, {})
    [problem] = info.value.problems
    assert problem.startswith(f"{main}:1: more than ") and "YAML nodes in one file" in problem


def test_deeply_nested_expressions_are_config_errors(tmp_path: Path) -> None:
    where = "(" * 5000 + "1" + ")" * 5000 + " == 1"
    main = write(tmp_path / "triggerd.yaml", textwrap.dedent(f"""\
        sources: {{tick: {{type: cron, every: 1h}}}}
        backends: {{b: {{type: command, argv: ["true"]}}}}
        rules:
          r:
            on: [tick]
            match: {{where: "{where}"}}
            dispatch: {{backend: b}}
        """))
    [problem] = refused(main)
    assert problem.startswith(f"{main}:6: rules.r.match.where: ")
    assert len(problem) < 400  # the message quotes an excerpt, not 10k characters


LEGIT = """\
retention: 7d
sources:
  hourly: {type: cron, every: 1h}
  nightly: {type: cron, schedule: "0 2 * * *"}
backends:
  base: &base
    type: command
    argv: [python3, -m, train, "{params.model}"]
    timeout: 1h
  fast:
    <<: *base
    timeout: 5m
rules:
  churn: &rule
    on: [hourly, nightly]
    dispatch: {backend: base, params: {model: churn}, retry: &retry {attempts: 3}}
  churn-copy: *rule
  churn-fast:
    <<: *rule
    dispatch: {backend: fast, params: {model: fast}, retry: *retry}
"""


def test_ordinary_aliases_and_merge_keys_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "triggerd.yaml", LEGIT), {})
    fast = config.backends["fast"]
    assert isinstance(fast, CommandOptions)
    assert fast.argv == ["python3", "-m", "train", "{params.model}"]
    assert fast.timeout is not None and fast.timeout.total_seconds() == 300
    assert config.rules["churn-copy"] == config.rules["churn"]
    assert config.rules["churn-fast"].on == ["hourly", "nightly"]
    assert config.rules["churn-fast"].dispatch.backend == "fast"
    assert config.rules["churn-fast"].dispatch.retry.attempts == 3


def test_an_explicit_duplicate_key_is_still_an_error_next_to_a_merge(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", textwrap.dedent("""\
        backends:
          base: &base {type: command, argv: ["true"]}
          other:
            <<: *base
            timeout: 5m
            timeout: 6m  # dup
        """))
    with pytest.raises(ConfigError) as info:
        load_config(main, {})
    problems = info.value.problems
    assert f"{main}:{line_of(main, '# dup')}: backends.other.timeout: duplicate key" in problems


def test_merging_a_scalar_is_a_clear_error(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", "x: &x 1\nbackends:\n  b:\n    <<: *x\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, {})
    [problem] = info.value.problems
    assert problem.startswith(f"{main}:4: invalid YAML: `<<` merges mappings, but found a scalar")


def test_an_included_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    main = write(tmp_path / "triggerd.yaml", 'include: ["rules.d/*.yaml"]\n')
    (tmp_path / "rules.d").mkdir()
    os.mkfifo(tmp_path / "rules.d" / "pipe.yaml")  # no writer: a plain open() would block
    problems = refused(main)
    assert problems == [f"{tmp_path / 'rules.d' / 'pipe.yaml'}:0: cannot read file: "
                        "not a regular file"]
