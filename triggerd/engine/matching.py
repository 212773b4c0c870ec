"""Compiled rules: which events a rule listens to, and which group an event falls in.

`classify` turns a batch of events into `Ingest` items for the store: for each event, the
(rule, group) pairs it becomes pending in, and for rules with `sustained`, whether it extends
or breaks the streak. Evaluation errors in `where` (a missing field, a type mismatch) count as
"does not match" and are counted per rule; they never stop the batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from triggerd.config.schema import RuleSpec
from triggerd.errors import ExpressionError
from triggerd.language.expr import Expression, event_env
from triggerd.language.globs import Glob, compile_glob
from triggerd.language.templates import Template
from triggerd.model import Event, event_ref
from triggerd.store.sql import Ingest

log = logging.getLogger("triggerd.engine")
_NO_ENV: Mapping[str, Any] = {}


@dataclass
class CompiledRule:
    name: str
    spec: RuleSpec
    sources: frozenset[str]
    kinds: frozenset[str] | None
    subject: Glob | None
    where: Expression | None
    group_by: Template | None
    sustained: bool = False
    order: int = 0
    errors: int = 0
    last_error: str | None = None
    _logged: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, name: str, spec: RuleSpec, order: int = 0) -> CompiledRule:
        return cls(
            name=name, spec=spec, sources=frozenset(spec.on),
            kinds=frozenset(spec.match.kinds) if spec.match.kinds else None,
            subject=compile_glob(spec.match.subject) if spec.match.subject else None,
            where=Expression(spec.match.where) if spec.match.where else None,
            group_by=Template(spec.group_by) if spec.group_by else None,
            sustained=spec.when.sustained is not None, order=order,
        )

    @property
    def subject_prefix(self) -> str:
        """The literal directory part of the subject glob ('' when there is none).

        `/data/landing/churn/**` -> `/data/landing/churn/`: only subjects under that
        directory can match, which lets the rule index skip the rule for all others."""
        pattern = self.spec.match.subject
        if not pattern:
            return ""
        cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
        literal = pattern[:cut]
        if cut == len(pattern):  # no wildcard at all: the whole subject is literal
            return literal.rsplit("/", 1)[0] + "/" if "/" in literal else ""
        return literal[:literal.rfind("/") + 1]

    def matches(self, event: Event, env: Mapping[str, Any],
                errors: list[tuple[str, str]] | None = None) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.subject is not None and not self.subject.fullmatch(event.subject):
            return False
        if self.where is None:
            return True
        try:
            return bool(self.where.test(env))
        except ExpressionError as exc:
            self._error(f"where failed on event {event_ref(event)} ({event.subject!r}): {exc}")
            if errors is not None:
                errors.append((self.name, f"where: {exc}"))
            return False

    def group(self, event: Event, env: Mapping[str, Any],
              errors: list[tuple[str, str]] | None = None) -> str | None:
        """The event's group ('' without group_by); None if the template cannot be rendered."""
        if self.group_by is None:
            return ""
        try:
            return self.group_by.render(env)
        except ExpressionError as exc:
            self._error(f"group_by failed on event {event_ref(event)} ({event.subject!r}): "
                        f"{exc}")
            if errors is not None:
                errors.append((self.name, f"group_by: {exc}"))
            return None

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        # log each distinct failure once per rule, not once per event
        key = message.split(" on event ")[0]
        if key not in self._logged and len(self._logged) < 100:
            self._logged.add(key)
            log.warning("rule %s: %s", self.name, message)


class _SourceIndex:
    """The rules of one source: those every event must see, and those keyed by the literal
    directory prefix of their subject glob (seen only by events under that directory). The
    rules found for a directory are kept (up to `CACHED` directories, then forgotten at
    once): a source's events mostly land in a few directories, and each look-up walks the
    subject's prefixes. (`RuleSet` adds every rule before the first look-up.)"""

    CACHED = 4096

    def __init__(self) -> None:
        self.always: list[CompiledRule] = []
        self.by_prefix: dict[str, list[CompiledRule]] = defaultdict(list)
        self.by_directory: dict[str, list[CompiledRule]] = {}
        self.uses_env = False  # a rule has `where` or `group_by` (see RuleSet.classify)

    def add(self, rule: CompiledRule) -> None:
        prefix = rule.subject_prefix
        if rule.sustained or not prefix:  # a sustained rule sees non-matching events too
            self.always.append(rule)
        else:
            self.by_prefix[prefix].append(rule)
        self.uses_env |= rule.where is not None or rule.group_by is not None

    def names(self) -> set[str]:
        return {r.name for r in self.always} | {
            r.name for rules in self.by_prefix.values() for r in rules}

    def candidates(self, subject: str) -> list[CompiledRule]:
        """The rules an event with this subject may match (shared: not to be changed)."""
        if not self.by_prefix:
            return self.always
        directory = subject[:subject.rfind("/") + 1]  # every prefix of the index ends in `/`
        found = self.by_directory.get(directory)
        if found is not None:
            return found
        found = list(self.always)
        start = 0
        while (i := directory.find("/", start)) >= 0:
            found.extend(self.by_prefix.get(directory[:i + 1], ()))
            start = i + 1
        if len(found) > len(self.always) and self.always:
            found.sort(key=lambda r: r.order)  # config order, as without the index
        if len(self.by_directory) >= self.CACHED:
            self.by_directory.clear()
        self.by_directory[directory] = found
        return found


class RuleSet:
    """All compiled rules, indexed by source and subject prefix for the hot path."""

    def __init__(self, specs: Mapping[str, RuleSpec]) -> None:
        self.rules = {name: CompiledRule.build(name, spec, i)
                      for i, (name, spec) in enumerate(specs.items())}
        self.by_source: dict[str, _SourceIndex] = defaultdict(_SourceIndex)
        for rule in self.rules.values():
            for src in sorted(rule.sources):
                self.by_source[src].add(rule)

    def __getitem__(self, name: str) -> CompiledRule:
        return self.rules[name]

    def __contains__(self, name: object) -> bool:
        return name in self.rules

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules.values())

    def listening(self, source: str) -> set[str]:
        """The names of the rules that listen to `source`."""
        index = self.by_source.get(source)
        return index.names() if index is not None else set()

    def classify(self, events: Sequence[Event]) -> list[Ingest]:
        out = []
        for event in events:
            item = Ingest(event)
            index = self.by_source.get(event.source)
            rules = index.candidates(event.subject) if index is not None else None
            if rules:
                # the names of `where` and `group_by`: built only for a source whose rules
                # have one (a glob and `kinds` need none)
                env = event_env(event) if index is not None and index.uses_env else _NO_ENV
                for rule in rules:
                    matched = rule.matches(event, env, item.errors)
                    if not matched and not rule.sustained:
                        continue
                    grp = rule.group(event, env, item.errors)
                    if grp is None:
                        continue
                    if matched:
                        item.pending.append((rule.name, grp))
                    if rule.sustained:
                        item.streak.append((rule.name, grp, matched))
            out.append(item)
        return out
