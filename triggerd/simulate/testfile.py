"""Loading a `triggerd test` file: its YAML (bounded, with the line of every key, by the config's
own reader), its shape (`spec`), the config under test (`load_config`, whose errors keep their
own `file:line`), and the cross-checks between them (a file input names a filesystem source,
a fire names a rule, ...). Every problem is a `file:line: key: message` string; all of them are
raised at once as a `ConfigError`, as `triggerd check` does for a config.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from triggerd.config.loader import Config, load_config
from triggerd.config.reader import KeyPath, Pos, Reader, dotted, position, pydantic_problems
from triggerd.errors import ConfigError
from triggerd.simulate.spec import Case, Input, TestFile


@dataclass(frozen=True)
class Loaded:
    """A valid test file: its spec, the config under test, and where each key was written."""

    path: Path
    spec: TestFile
    config: Config
    positions: Mapping[KeyPath, Pos]

    def where(self, *keys: str | int) -> str:
        """`file:line` of the key at `keys` (or of the nearest enclosing key)."""
        fname, line = position(self.positions, tuple(keys), (str(self.path), 1))
        return f"{fname}:{line}"

    def start_of(self, case: Case) -> datetime:
        base = self.spec.start
        assert isinstance(base, datetime)  # noqa: S101 - TestFile refuses an offset
        return absolute(case.start, base) if case.start is not None else base


def absolute(at: timedelta | datetime, start: datetime) -> datetime:
    """A test time (an offset from `start`, or a time) as a time."""
    return start + at if isinstance(at, timedelta) else at


def load_test_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None
                   ) -> Loaded:
    """Read, validate and cross-check a test file and load its config; raise ConfigError."""
    main = Path(path).absolute()
    reader = Reader({} if env is None else env)
    raw = reader.read(main)
    if raw is None:
        raise ConfigError(reader.problems)
    default: Pos = (str(main), 1)
    try:
        spec = TestFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(reader.problems + pydantic_problems(
            exc, (), reader.positions, default)) from None
    if reader.problems:
        raise ConfigError(reader.problems)
    config = _config(spec, main, reader, {**(os.environ if env is None else env), **spec.env})
    loaded = Loaded(main, spec, config, reader.positions)
    problems = cross_check(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded


def _config(spec: TestFile, main: Path, reader: Reader, env: Mapping[str, str]) -> Config:
    """The config under test: `config`, or a main file including the `rule_files`."""
    if spec.config is not None:
        target = main.parent / spec.config
        if not target.is_file():
            fname, line = position(reader.positions, ("config",), (str(main), 1))
            raise ConfigError([f"{fname}:{line}: config: no such file {str(target)!r}"])
        return load_config(target, env, store="sqlite://", state_dir=str(main.parent))
    files = [str((main.parent / f).absolute()) for f in spec.rule_files or []]
    with tempfile.TemporaryDirectory(prefix="triggerd-test-") as tmp:
        synthetic = Path(tmp) / "rules.yaml"
        synthetic.write_text(json.dumps({"include": files}))
        return load_config(synthetic, env, store="sqlite://", state_dir=str(main.parent))


def cross_check(loaded: Loaded) -> list[str]:
    """What the shape alone cannot tell: names of sources and rules, paths under roots."""
    problems: list[str] = []
    for i, case in enumerate(loaded.spec.tests):
        def problem(keys: KeyPath, msg: str, i: int = i) -> None:
            problems.append(f"{loaded.where('tests', i, *keys)}: "
                            f"{dotted(('tests', i, *keys))}: {msg}")
        _check_case(loaded, case, problem)
    return problems


Problem = Callable[[KeyPath, str], None]


def _check_case(loaded: Loaded, case: Case, problem: Problem) -> None:
    rules = loaded.config.rules
    for name in case.rules or []:
        if name not in rules:
            problem(("rules",), _unknown("rule", name, rules))
    for n, item in enumerate(case.input):
        def at_input(keys: KeyPath, msg: str, n: int = n) -> None:
            problem(("input", n, *keys), msg)
        _check_input(loaded, item, at_input)
    named: list[tuple[str, int, str]] = [
        ("triggers", n, e.rule) for n, e in enumerate(case.expect.triggers or [])]
    named += [("explain", n, e.rule) for n, e in enumerate(case.expect.explain)]
    for kind, n, rule in named:
        if rule not in rules:
            problem(("expect", kind, n, "rule"), _unknown("rule", rule, rules))
    for n, e in enumerate(case.expect.explain):
        if e.rule in rules and rules[e.rule].group_by is not None and e.group == "":
            problem(("expect", "explain", n), f"rule {e.rule!r} has group_by: give the "
                    "`group` to explain")
    start = loaded.start_of(case)
    times = [("input", n, item.at) for n, item in enumerate(case.input)]
    if case.until is not None:
        times.append(("until", -1, case.until))
    for key, n, at in times:
        if absolute(at, start) < start:
            problem((key, n, "at") if n >= 0 else (key,), "before the test's start")


def _check_input(loaded: Loaded, item: Input, problem: Problem) -> None:
    cfg = loaded.config
    wants = {"file": "filesystem", "object": "bucket", "message": "kafka", "tick": "cron",
             "event": None}
    for kind, source_type in wants.items():
        body = getattr(item, kind)
        if body is None:
            continue
        if body.source not in cfg.sources:
            problem((kind, "source"), _unknown("source", body.source, cfg.sources))
        elif source_type and cfg.source_type(body.source) != source_type:
            problem((kind, "source"), f"source {body.source!r} is a "
                    f"{cfg.source_type(body.source)} source, not a {source_type} source")
        elif kind == "file":
            _check_file(cfg.sources[body.source], body.path, problem)
        elif kind == "message":
            _check_message(cfg.sources[body.source], item, problem)
    for kind in ("fire", "job", "pause", "resume"):
        body = getattr(item, kind)
        if body is not None and body.rule not in cfg.rules:
            problem((kind, "rule"), _unknown("rule", body.rule, cfg.rules))


def _check_file(options: Any, path: str, problem: Problem) -> None:
    roots = [os.path.normpath(os.path.abspath(p)) for p in options.paths]
    if not os.path.isabs(path) or not any(path.startswith(r.rstrip("/") + "/") for r in roots):
        problem(("file", "path"), f"{path!r} is not below the source's paths "
                f"({', '.join(roots)}); give the absolute path of a file below one of them")


def _check_message(options: Any, item: Input, problem: Problem) -> None:
    msg = item.message
    assert msg is not None  # noqa: S101 - called for message inputs
    if (msg.value is None) == (msg.raw is None):
        problem(("message",), "give exactly one of `value` (a value, JSON-encoded for "
                "format json) and `raw` (the exact text of the message)")
    elif msg.value is not None and options.format in ("text", "bytes") and \
            not isinstance(msg.value, str):
        problem(("message", "value"), f"the source's format is {options.format}: "
                "give the value as a string (or use `raw`)")
    if msg.topic is not None and msg.topic not in options.topics:
        problem(("message", "topic"), f"the source does not read topic {msg.topic!r} "
                f"(it reads {', '.join(options.topics)})")


def _unknown(what: str, name: str, known: Mapping[str, Any]) -> str:
    return f"unknown {what} {name!r} (defined: {', '.join(sorted(known)) or 'none'})"
