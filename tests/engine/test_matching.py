"""The rule index (by source and subject prefix) must never change what matches."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from triggerd.config.schema import RuleSpec
from triggerd.engine.matching import CompiledRule, RuleSet
from triggerd.language.expr import event_env
from triggerd.model import Event

SUBJECT_GLOBS = [None, "/data/**", "/data/a/**", "/data/a/*.parquet", "/data/b/x.csv",
                 "/data/[ab]/**", "*.parquet", "churn*", "/data/a/b/**", "/other/**",
                 "/data/a"]
SUBJECTS = st.sampled_from(["/data/a/x.parquet", "/data/a/b/c.parquet", "/data/b/x.csv",
                            "/data/a", "/data/", "churn-model", "/other/z", "x.parquet",
                            "/data/b/deep/er/f.parquet", ""])


def rule(subject: str | None, sustained: bool, source: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"on": [source], "dispatch": {"backend": "b"}}
    if subject is not None:
        spec["match"] = {"subject": subject}
    if sustained:
        spec["when"] = {"sustained": 2}
    return spec


def brute_force(rules: dict[str, CompiledRule], event: Event) -> list[tuple[str, str, bool]]:
    out = []
    env = event_env(event)
    for r in rules.values():
        if event.source not in r.sources:
            continue
        matched = r.matches(event, env)
        if matched or r.sustained:
            out.append((r.name, "", matched))
    return out


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(SUBJECT_GLOBS), st.booleans(),
                                st.sampled_from(["s1", "s2"])), min_size=1, max_size=12),
       subjects=st.lists(st.tuples(SUBJECTS, st.sampled_from(["s1", "s2"])), min_size=1,
                         max_size=10))
def test_index_matches_exactly_like_checking_every_rule(
        specs: list[tuple[str | None, bool, str]], subjects: list[tuple[str, str]]) -> None:
    ruleset = RuleSet({f"r{i}": RuleSpec.model_validate(rule(*s)) for i, s in enumerate(specs)})
    events = [Event(source=src, kind="created", subject=subj, fingerprint=f"f{i}")
              for i, (subj, src) in enumerate(subjects)]
    for item in ruleset.classify(events):
        got = [(r, g, True) for r, g in item.pending]
        streaks = {(r, g): m for r, g, m in item.streak}
        expected = brute_force(ruleset.rules, item.event)
        assert sorted(got) == sorted((n, g, True) for n, g, m in expected if m)
        assert streaks == {(n, g): m for n, g, m in expected if ruleset[n].sustained}


def test_subject_prefix() -> None:
    def prefix(glob: str | None) -> str:
        return CompiledRule.build("r", RuleSpec.model_validate(rule(glob, False, "s"))) \
            .subject_prefix

    assert prefix("/data/landing/churn/**") == "/data/landing/churn/"
    assert prefix("/data/a/*.parquet") == "/data/a/"
    assert prefix("/data/b/x.csv") == "/data/b/"
    assert prefix("/data/[ab]/**") == "/data/"
    assert prefix("churn*") == ""
    assert prefix(None) == ""
