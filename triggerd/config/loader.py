"""Load the configuration: safe YAML with line numbers, `include`, `${ENV}`, every error at once.

`load_config(path)` returns a validated `Config` or raises `ConfigError` whose `problems` are
`file:line: key.path: message` strings, all of them, so a user fixes a file in one pass.

Each file is read by `reader.Reader`, with a safe loader that follows YAML 1.2 for booleans:
`on:` (a rule key) stays the string "on" instead of becoming `True` as in YAML 1.1. It is
bounded (`yamlsafe`): alias bombs, recursive aliases, absurd nesting and huge files are
`file:line` problems, found while composing, before anything walks the document. Merge keys
(`<<: *base`) are applied on the composed nodes. An `include` entry is a glob, or
`{path: GLOB, only: rules}` for files that may add rules only. Options that name secret
variables (`*_env`) are collected and handed to plugins whose children inherit the
environment (`InheritsEnvironment`), which withhold them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from triggerd import registry
from triggerd.config.reader import (
    KeyPath,
    Pos,
    Reader,
    dotted,
    excerpt,
    position,
    pydantic_problems,
)
from triggerd.config.schema import ConfigFile, IncludeSpec, RuleSpec
from triggerd.config.types import InheritsEnvironment, secret_env_names
from triggerd.errors import ConfigError, ExpressionError, TriggerdError

DEFAULT_STATE_DIR = "/var/lib/triggerd"


@dataclass(frozen=True)
class Config:
    """A validated configuration, with plugin options already checked by their own models."""

    path: Path
    store_url: str
    state_dir: Path
    retention: timedelta
    sources: dict[str, BaseModel]
    backends: dict[str, BaseModel]
    rules: dict[str, RuleSpec]
    files: list[Path] = field(default_factory=list)

    def source_type(self, name: str) -> str:
        return str(getattr(self.sources.get(name), "type", "unknown"))


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                store: str | None = None, state_dir: str | None = None) -> Config:
    """Read, merge, validate and cross-check the config; raise ConfigError with every problem.

    `store` and `state_dir` override the file's values (TRIGGERD_STORE, TRIGGERD_STATE_DIR).
    Never raises RecursionError or MemoryError: a config that exhausts the stack or memory
    despite the YAML limits (`yamlsafe`) is a ConfigError too.
    """
    try:
        return _load(path, env, store=store, state_dir=state_dir)
    except (RecursionError, MemoryError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else "too large"
        raise ConfigError([f"{Path(path).absolute()}:1: the configuration is {what} to "
                           "check"]) from None


def _load(path: str | os.PathLike[str], env: Mapping[str, str] | None, *,
          store: str | None, state_dir: str | None) -> Config:
    env = os.environ if env is None else env
    main = Path(path).absolute()
    reader = Reader(env)
    raw = reader.read(main)
    problems = reader.problems
    default: Pos = (str(main), 1)
    if raw is None:
        if problems:
            raise ConfigError(problems)
        raw = {}  # an empty document (`---`, `~`), as an empty file
    if not isinstance(raw, dict):
        raise ConfigError([f"{main}:1: the config file must be a mapping of sections"])

    files = [main]
    merged: dict[str, dict[str, Any]] = {"sources": {}, "backends": {}, "rules": {}}
    for section in merged:
        value = raw.get(section) or {}
        if isinstance(value, dict):
            merged[section].update(value)
    includes = _includes(raw.get("include"), reader, default)
    for i, spec in includes:
        fname, line = position(reader.positions, ("include", i), default)
        matches = sorted(glob.glob(str(main.parent / spec.path), recursive=True))
        if not matches and not glob.has_magic(spec.path):
            problems.append(f"{fname}:{line}: include[{i}]: no such file {spec.path!r}")
        for match in matches:
            inc_path = Path(match).absolute()
            inc = _read_included(reader, inc_path, merged, rules_only=spec.only == "rules")
            if inc is not None:
                files.append(inc_path)

    top = {k: v for k, v in raw.items() if k not in merged}
    if isinstance(raw.get("include"), list):  # checked entry by entry above
        top["include"] = [spec for _, spec in includes]
    top.update({k: v for k, v in merged.items() if v or k in raw})
    try:
        cfg = ConfigFile.model_validate(top)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, (), reader.positions, default))
        valid = _without_errors(top, exc)
        if valid is None:
            raise ConfigError(problems) from None
        cfg = valid

    sources = _plugins("source", cfg.sources, reader, default)
    backends = _plugins("backend", cfg.backends, reader, default)
    secrets = secret_env_names(cfg, sources, backends)  # kept from the children of plugins
    secrets |= _store_secrets(env) | reader.store_vars
    sources, backends = _withholding(sources, secrets), _withholding(backends, secrets)
    _check_rules(cfg, merged, reader, default)
    _check_notified_buckets(sources, merged, reader, default)
    if problems:
        raise ConfigError(problems)

    state = _state_dir(state_dir, cfg.state_dir, main, env)
    store_url = store or cfg.store or f"sqlite:///{state / 'state.db'}"
    return Config(path=main, store_url=store_url, state_dir=state, retention=cfg.retention,
                  sources=sources, backends=backends, rules=dict(cfg.rules), files=files)


def _store_secrets(env: Mapping[str, str]) -> set[str]:
    """The daemon's own secrets in its environment: the store's password, alone
    (TRIGGERD_STORE_PASSWORD) or inside the store's URL (TRIGGERD_STORE). (Variables the
    config's own `store:` expands are added by the reader.)"""
    found = {"TRIGGERD_STORE_PASSWORD"}
    url = env.get("TRIGGERD_STORE", "")
    if (("@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1])  # user:password@host
            or "password=" in url):
        found.add("TRIGGERD_STORE")
    return found


def _withholding(entries: dict[str, BaseModel], secrets: set[str]) -> dict[str, BaseModel]:
    return {name: options.withholding(secrets) if isinstance(options, InheritsEnvironment)
            else options for name, options in entries.items()}


def _without_errors(top: dict[str, Any], exc: ValidationError) -> ConfigFile | None:
    """`top` without the keys and section entries that failed, so the rest is still checked."""
    bad = {tuple(err["loc"][:2]) for err in exc.errors()}
    part: dict[str, Any] = {}
    for key, value in top.items():
        if (key,) in bad:
            continue
        if isinstance(value, dict):
            value = {name: body for name, body in value.items() if (key, name) not in bad}
        part[key] = value
    try:
        return ConfigFile.model_validate(part)
    except ValidationError:
        return None


def _includes(include: Any, reader: Reader, default: Pos) -> list[tuple[int, IncludeSpec]]:
    """The valid entries of `include` with their index: a glob string, or a mapping
    `{path: GLOB, only: rules}`; each invalid entry is a problem at its own line."""
    out: list[tuple[int, IncludeSpec]] = []
    for i, entry in enumerate(include if isinstance(include, list) else []):
        fname, line = position(reader.positions, ("include", i), default)
        if isinstance(entry, str):
            out.append((i, IncludeSpec(path=entry)))
        elif isinstance(entry, dict):
            try:
                out.append((i, IncludeSpec.model_validate(entry)))
            except ValidationError as exc:
                reader.problems.extend(
                    pydantic_problems(exc, ("include", i), reader.positions, default))
        else:
            reader.problems.append(f"{fname}:{line}: include[{i}]: must be a glob string or "
                                   "a mapping like {path: GLOB, only: rules}")
    return out


def _read_included(reader: Reader, path: Path, merged: dict[str, dict[str, Any]], *,
                   rules_only: bool = False) -> Any:
    """Read one included file and merge its sections into `merged`. With `rules_only` (the
    include said `only: rules`) any other top-level key is refused at its line and only the
    file's rules are merged."""
    before = dict(reader.positions)
    raw = reader.read(path)
    if raw is None:
        return None
    fname = str(path)
    if not isinstance(raw, dict):
        reader.problems.append(f"{fname}:1: a rule file must be a mapping of sections")
        return None
    allowed = ("rules",) if rules_only else tuple(merged)
    for key in raw:
        if key not in allowed:
            line = reader.positions.get((key,), (fname, 1))[1]
            if rules_only:
                reader.problems.append(
                    f"{fname}:{line}: {key}: not allowed here (this file is included with "
                    "`only: rules`: it may hold rules only)")
            else:
                reader.problems.append(
                    f"{fname}:{line}: unknown key {key!r} (an included file may hold "
                    "sources, backends and rules)")
    for section, names in merged.items():
        if section not in allowed:
            continue
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            continue
        for name, body in value.items():
            if name in names:
                first = before.get((section, name), ("?", 0))
                line = reader.positions.get((section, name), (fname, 1))[1]
                reader.problems.append(
                    f"{fname}:{line}: {section}.{name}: already defined at "
                    f"{first[0]}:{first[1]}")
                for key in [k for k in reader.positions if k[:2] == (section, name)]:
                    if key in before:
                        reader.positions[key] = before[key]
                    else:
                        del reader.positions[key]
                continue
            names[name] = body
    # the included file's top-level keys must not shadow the main file's positions
    for key in list(raw):
        if (key,) in before:
            reader.positions[(key,)] = before[(key,)]
    return raw


def _plugins(kind: str, entries: Mapping[str, BaseModel], reader: Reader,
             default: Pos) -> dict[str, BaseModel]:
    types = registry.source_types() if kind == "source" else registry.backend_types()
    load = registry.source_class if kind == "source" else registry.backend_class
    section = f"{kind}s"
    out: dict[str, BaseModel] = {}
    for name, entry in entries.items():
        raw = entry.model_dump()
        type_name = raw.get("type")
        if type_name not in types:
            fname, line = position(reader.positions, (section, name, "type"), default)
            reader.problems.append(
                f"{fname}:{line}: {section}.{name}.type: unknown {kind} type {type_name!r} "
                f"(known: {', '.join(sorted(types))})")
            continue
        try:
            options = load(type_name).Options.model_validate(raw)
        except ValidationError as exc:
            reader.problems.extend(
                pydantic_problems(exc, (section, name), reader.positions, default))
            continue
        except (TriggerdError, ExpressionError) as exc:
            fname, line = position(reader.positions, (section, name), default)
            reader.problems.append(f"{fname}:{line}: {section}.{name}: {exc}")
            continue
        except (RecursionError, MemoryError):
            fname, line = position(reader.positions, (section, name), default)
            reader.problems.append(f"{fname}:{line}: {section}.{name}: too deeply nested or "
                                   "too large to check")
            continue
        out[name] = options
    return out


def _check_notified_buckets(sources: Mapping[str, BaseModel],
                            defined: Mapping[str, Mapping[str, Any]], reader: Reader,
                            default: Pos) -> None:
    """A source reading object-store notifications (`bucket: NAME`) names a bucket source
    whose events can be deduplicated against them (content fingerprints)."""
    for name, options in sources.items():
        bucket = getattr(options, "bucket", None)  # (a bucket source's is its own bucket)
        if getattr(options, "type", None) != "kafka" or not isinstance(bucket, str):
            continue
        fname, line = position(reader.positions, ("sources", name, "bucket"), default)
        where = f"{fname}:{line}: sources.{name}.bucket"
        target = sources.get(bucket)
        if bucket not in defined["sources"]:
            reader.problems.append(
                f"{where}: unknown source {bucket!r} (defined: "
                f"{', '.join(sorted(map(str, defined['sources'])))})")
        elif target is not None and getattr(target, "type", None) != "bucket":
            reader.problems.append(f"{where}: source {bucket!r} is not a bucket source")
        elif target is not None and getattr(target, "fingerprint", None) != "etag":
            reader.problems.append(
                f"{where}: bucket source {bucket!r} fingerprints by `stat`: a notification "
                "and a listing agree only on content (`fingerprint: etag`), so every notified "
                "object would be reported twice")


def _check_rules(cfg: ConfigFile, defined: Mapping[str, Mapping[str, Any]], reader: Reader,
                 default: Pos) -> None:
    from triggerd.language.expr import Expression
    from triggerd.language.globs import compile_glob
    from triggerd.language.schedules import Schedule
    from triggerd.language.templates import Template

    def problem(path: KeyPath, msg: str) -> None:
        fname, line = position(reader.positions, path, default)
        reader.problems.append(f"{fname}:{line}: {dotted(path)}: {msg}")

    for name, rule in cfg.rules.items():
        base: KeyPath = ("rules", name)
        for i, src in enumerate(rule.on):
            if src not in defined["sources"]:
                problem((*base, "on", i), f"unknown source {src!r}"
                        f" (defined: {', '.join(sorted(map(str, defined['sources']))) or 'none'})")
        if rule.dispatch.backend not in defined["backends"]:
            problem((*base, "dispatch", "backend"),
                    f"unknown backend {rule.dispatch.backend!r}"
                    f" (defined: {', '.join(sorted(map(str, defined['backends']))) or 'none'})")
        checks: list[tuple[KeyPath, str | None, Any]] = [
            ((*base, "match", "where"), rule.match.where, Expression),
            ((*base, "match", "subject"), rule.match.subject, compile_glob),
            ((*base, "group_by"), rule.group_by, Template),
        ]
        for path, text, compile_ in checks:
            if text is None:
                continue
            try:
                compile_(text)
            except ExpressionError as exc:
                problem(path, f"{exc.message}" + (
                    f" at column {exc.column}" if exc.column is not None else "")
                        + f" in {excerpt(text)}")
            except (RecursionError, MemoryError):  # whatever the engine's own limits are
                problem(path, f"nested too deeply or too large to compile: {excerpt(text)}")
        sched = rule.when.schedule
        if sched is None:
            continue
        if sched in defined["sources"]:
            if sched in cfg.sources and cfg.sources[sched].type != "cron":
                problem((*base, "when", "schedule"), f"source {sched!r} is not a cron source")
            continue
        try:
            Schedule.cron(sched)
        except ValueError as exc:
            problem((*base, "when", "schedule"),
                    f"{exc} (give a 5-field cron expression or the name of a cron source)")


def _state_dir(override: str | None, configured: str | None, main: Path,
               env: Mapping[str, str]) -> Path:
    if override:
        return Path(override).absolute()
    if configured:
        return (main.parent / configured).resolve()
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path(DEFAULT_STATE_DIR)
