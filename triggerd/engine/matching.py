"""Compiled rules: which events a rule listens to, and which group an event falls in.

`classify` turns a batch of events into `Ingest` items for the store: for each event, the
(rule, group) pairs it becomes pending in, and for rules with `sustained`, whether it extends
or breaks the streak. Evaluation errors in `where` (a missing field, a type mismatch) count as
"does not match" and are counted per rule; they never stop the batch.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from triggerd.config.schema import RuleSpec
from triggerd.engine.expr import Expression, event_env
from triggerd.engine.globs import compile_glob
from triggerd.engine.templates import Template
from triggerd.errors import ExpressionError
from triggerd.model import Event
from triggerd.store.sql import Ingest

log = logging.getLogger("triggerd.engine")


@dataclass
class CompiledRule:
    name: str
    spec: RuleSpec
    sources: frozenset[str]
    kinds: frozenset[str] | None
    subject: re.Pattern[str] | None
    where: Expression | None
    group_by: Template | None
    errors: int = 0
    last_error: str | None = None
    _logged: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, name: str, spec: RuleSpec) -> CompiledRule:
        return cls(
            name=name, spec=spec, sources=frozenset(spec.on),
            kinds=frozenset(spec.match.kinds) if spec.match.kinds else None,
            subject=compile_glob(spec.match.subject) if spec.match.subject else None,
            where=Expression(spec.match.where) if spec.match.where else None,
            group_by=Template(spec.group_by) if spec.group_by else None,
        )

    @property
    def sustained(self) -> bool:
        return self.spec.when.sustained is not None

    def matches(self, event: Event, env: Mapping[str, Any]) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.subject is not None and not self.subject.fullmatch(event.subject):
            return False
        if self.where is None:
            return True
        try:
            return bool(self.where.test(env))
        except ExpressionError as exc:
            self._error(f"where failed on event {event.id} ({event.subject!r}): {exc}")
            return False

    def group(self, event: Event, env: Mapping[str, Any]) -> str | None:
        """The event's group ('' without group_by); None if the template cannot be rendered."""
        if self.group_by is None:
            return ""
        try:
            return self.group_by.render(env)
        except ExpressionError as exc:
            self._error(f"group_by failed on event {event.id} ({event.subject!r}): {exc}")
            return None

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        # log each distinct failure once per rule, not once per event
        key = message.split(" on event ")[0]
        if key not in self._logged and len(self._logged) < 100:
            self._logged.add(key)
            log.warning("rule %s: %s", self.name, message)


class RuleSet:
    """All compiled rules, indexed by source for the hot path."""

    def __init__(self, specs: Mapping[str, RuleSpec]) -> None:
        self.rules = {name: CompiledRule.build(name, spec) for name, spec in specs.items()}
        self.by_source: dict[str, list[CompiledRule]] = defaultdict(list)
        for rule in self.rules.values():
            for src in rule.sources:
                self.by_source[src].append(rule)

    def __getitem__(self, name: str) -> CompiledRule:
        return self.rules[name]

    def __contains__(self, name: object) -> bool:
        return name in self.rules

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules.values())

    def classify(self, events: Sequence[Event]) -> list[Ingest]:
        out = []
        for event in events:
            item = Ingest(event)
            rules = self.by_source.get(event.source)
            if rules:
                env = event_env(event)
                for rule in rules:
                    matched = rule.matches(event, env)
                    if not matched and not rule.sustained:
                        continue
                    grp = rule.group(event, env)
                    if grp is None:
                        continue
                    if matched:
                        item.pending.append((rule.name, grp))
                    if rule.sustained:
                        item.streak.append((rule.name, grp, matched))
            out.append(item)
        return out
