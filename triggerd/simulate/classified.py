"""The engine's classification of a replay's events, made once: by the fast lane, kept for
the store.

The fast lane (`lookahead`) classifies each arrival with the engine's own rules
(`RuleSet.classify`: the groups it becomes pending in, its streaks, the `where` errors) to
know which groups it touches; the engine classifies the batch again when it stores it
(`Rounds.ingest` hands `rules.classify` to the store). Classification depends on the event and
the rules only, so the dict store (`dictstore`) takes the fast lane's items (`take`) for the
very events the fast lane classified (the same objects) with the very rules the engine hands
it (the same `RuleSet`); any other event, or other rules (a reloaded config), are classified
as the engine asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from triggerd.engine.matching import RuleSet
from triggerd.model import Event
from triggerd.store.sql import Ingest

Classify = Callable[[Sequence[Event]], list[Ingest]]


class Classified:
    """The items `classify` made, by event id, until the store takes them."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._items: dict[str, Ingest] = {}

    def classify(self, events: Sequence[Event]) -> list[Ingest]:
        """The rules' classification of `events` (`RuleSet.classify`), kept for `take`."""
        items = self.rules.classify(events)
        for item in items:
            self._items[item.event.id] = item
        return items

    def take(self, classify: Classify, events: Sequence[Event]) -> list[Ingest]:
        """`classify(events)`: the items kept for these events taken (each once), when
        `classify` is the same rules' and the event the same object; the others classified."""
        if not self._items or getattr(classify, "__self__", None) is not self.rules:
            return classify(events)
        out = []
        for event in events:
            item = self._items.pop(event.id, None)
            out.append(item if item is not None and item.event is event
                       else classify([event])[0])
        return out
