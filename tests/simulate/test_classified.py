"""The fast lane's classification kept for the dict store (triggerd/simulate/classified.py):
the store takes an item only for the very event the fast lane classified, with the very rules
the engine hands it, and once; everything else is classified as the engine asks."""

from __future__ import annotations

from datetime import UTC, datetime

from triggerd.config.schema import RuleSpec
from triggerd.engine.matching import RuleSet
from triggerd.model import Event
from triggerd.simulate.classified import Classified
from triggerd.store.sql import Ingest

AT = datetime(2026, 11, 2, tzinfo=UTC)


def _rules(subject: str) -> RuleSet:
    return RuleSet({"r": RuleSpec.model_validate({
        "on": ["landing"], "match": {"subject": subject}, "group_by": "{payload.dir}",
        "dispatch": {"backend": "train"}})})


def _event(name: str, directory: str = "a") -> Event:
    return Event(source="landing", kind="created", subject=f"/data/{directory}/{name}",
                 fingerprint=name, payload={"dir": directory}, observed_at=AT)


def _plain(items: list[Ingest]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(item.event.id, item.pending) for item in items]


def test_the_store_takes_the_items_of_the_events_the_fast_lane_classified_once() -> None:
    rules = _rules("/data/**")
    memo = Classified(rules)
    one, two, three = _event("1"), _event("2", "b"), _event("3")
    kept = memo.classify([one, two])
    taken = memo.take(rules.classify, [three, two, one])
    assert taken[1] is kept[1] and taken[2] is kept[0]  # in the order asked, the same items
    assert _plain(taken) == _plain(rules.classify([three, two, one]))
    again = memo.take(rules.classify, [one])
    assert again[0] is not kept[0] and _plain(again) == _plain(kept[:1])  # taken once only


def test_other_rules_or_another_event_with_the_same_id_are_classified_anew() -> None:
    rules, others = _rules("/data/a/**"), _rules("/data/b/**")
    memo = Classified(rules)
    event = _event("1", "a")
    memo.classify([event])
    by_others = memo.take(others.classify, [event])  # a reloaded config's rules
    assert by_others[0].pending == []  # as the other rules have it, not the kept item
    twin = _event("1", "a")  # the same id, another object (another arrival's event)
    assert twin.id == event.id
    (item,) = memo.take(rules.classify, [twin])
    assert item.event is twin and item.pending == [("r", "a")]
