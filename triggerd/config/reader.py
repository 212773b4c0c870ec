"""Reading one YAML file of the config: bounded (`yamlsafe`), with the file and line of every
key kept, merge keys applied on the composed nodes, and `${ENV}` expanded in string values.

`Reader.read(path)` returns plain data (or None, with the problems in `Reader.problems` as
`file:line: message`); `Reader.positions` maps every key path to where it was written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from triggerd.config.yamlsafe import (
    BoundedLoader,
    FileTooLargeError,
    YamlLimitError,
    read_limited,
)

Pos = tuple[str, int]
KeyPath = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Reader:
    """Builds plain Python data from YAML nodes, remembering where every key was written."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.store_vars: set[str] = set()  # variables expanded into `store:`
        self.positions: dict[KeyPath, Pos] = {}
        self.problems: list[str] = []

    def read(self, path: Path, prefix: KeyPath = ()) -> Any:
        fname = str(path)
        try:
            text = read_limited(path)
        except FileTooLargeError as exc:
            self.problems.append(f"{fname}:{exc.line}: {exc}")
            return None
        except OSError as exc:
            self.problems.append(f"{fname}:0: cannot read file: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError as exc:
            line = exc.object[:exc.start].count(b"\n") + 1
            self.problems.append(f"{fname}:{line}: not UTF-8 text: {exc.reason}")
            return None
        try:
            loader = BoundedLoader(text)  # checks every character first
        except yaml.reader.ReaderError as exc:  # a control character YAML does not allow
            line = text[:exc.position].count("\n") + 1
            self.problems.append(f"{fname}:{line}: invalid YAML: character "
                                 f"{chr(exc.character)!r} is not allowed in YAML")
            return None
        try:
            node = loader.get_single_node()
            if node is None:
                return {}
            return self._build(loader, node, fname, prefix)
        except YamlLimitError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 0
            self.problems.append(f"{fname}:{line}: {exc.problem}")
            return None
        except (RecursionError, MemoryError) as exc:  # a safety net: the limits should hold
            what = "nested too deeply" if isinstance(exc, RecursionError) else "too large"
            self.problems.append(f"{fname}:{loader.line + 1}: YAML document {what} to load")
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            where = (f" ({exc.context} at line {exc.context_mark.line + 1})"
                     if exc.context and exc.context_mark else "")  # where an unclosed [ { ' began
            self.problems.append(f"{fname}:{line}: invalid YAML: {exc.problem or exc}{where}")
            return None
        finally:
            loader.dispose()

    def _build(self, loader: BoundedLoader, node: yaml.Node, fname: str, path: KeyPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            explicit, merged = _merge_pairs(node)
            for pairs, overridable in ((explicit, False), (merged, True)):
                for knode, vnode in pairs:
                    key = loader.construct_object(knode, deep=True)
                    line = knode.start_mark.line + 1
                    if not isinstance(key, str | int):
                        self.problems.append(
                            f"{fname}:{line}: {dotted(path)}: keys must be names")
                        continue
                    if key in out:
                        if not overridable:  # a merged key is overridden by the mapping's own
                            self.problems.append(
                                f"{fname}:{line}: {dotted((*path, key))}: duplicate key")
                        continue
                    self.positions[(*path, key)] = (fname, line)
                    out[key] = self._build(loader, vnode, fname, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.positions[(*path, i)] = (fname, item.start_mark.line + 1)
                items.append(self._build(loader, item, fname, (*path, i)))
            return items
        value = loader.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            value = self._expand(value, fname, node.start_mark.line + 1, path)
        return value

    def _expand(self, value: str, fname: str, line: int, path: KeyPath) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if path == ("store",):  # the store's URL: what it takes from the environment
                self.store_vars.add(name)  # may be its password (kept from command jobs)
            if name in self.env and (self.env[name] or default is None):  # :- as in the shell
                return self.env[name]
            if default is not None:
                return default
            self.problems.append(
                f"{fname}:{line}: {dotted(path)}: environment variable {name} is not set")
            return ""

        return _ENV.sub(sub, value)


def _merge_pairs(node: yaml.MappingNode) -> tuple[list[tuple[yaml.Node, yaml.Node]],
                                                  list[tuple[yaml.Node, yaml.Node]]]:
    """A mapping's own (key, value) pairs, and those it takes from merge keys (`<<: *base`,
    `<<: [*a, *b]`: the first mapping listed wins), in that order of precedence. The nodes
    are not changed (an alias shares them); the composer bounded their size and depth."""
    explicit: list[tuple[yaml.Node, yaml.Node]] = []
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for knode, vnode in node.value:
        if knode.tag != _MERGE_TAG:
            explicit.append((knode, vnode))
            continue
        sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise yaml.constructor.ConstructorError(
                    None, None, f"`<<` merges mappings, but found a {source.id}",
                    knode.start_mark)
            own, inherited = _merge_pairs(source)
            merged += own + inherited
    return explicit, merged


def excerpt(text: str, limit: int = 80) -> str:
    """`text` quoted for a message, cut to `limit` characters (a hostile expression may be
    megabytes long; the message must stay one readable line)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def position(positions: Mapping[KeyPath, Pos], path: KeyPath, default: Pos) -> Pos:
    for n in range(len(path), 0, -1):
        if path[:n] in positions:
            return positions[path[:n]]
    return default


def pydantic_problems(exc: ValidationError, prefix: KeyPath,
                       positions: Mapping[KeyPath, Pos], default: Pos) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc: KeyPath = prefix
        for part in err["loc"]:
            if not _is_variant_tag(part) or (*loc, part) in positions:
                loc = (*loc, part)
        fname, line = position(positions, loc, default)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
            loc = loc[:-1]
        elif kind == "missing":
            msg = f"missing required key {loc[-1]!r}"
            loc = loc[:-1]
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{fname}:{line}: {dotted(loc)}: {msg}")
    return out


def _is_variant_tag(part: Any) -> bool:
    # pydantic inserts union member names ("int", "function-before[...]") into locations
    return isinstance(part, str) and (part in {"int", "str", "list[str]"} or "[" in part)
