"""config/prometheus-alerts.yaml, the alerting rules docs/operations.md shows, is a Prometheus
rule file (its documented layout: groups of rules with alert, expr, for, labels, annotations)
built on metrics the daemon really exposes, with their labels."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from test_grafana_dashboard import exposed_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "prometheus-alerts.yaml"


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_is_a_well_formed_rule_on_exposed_metrics() -> None:
    rules = _rules()
    assert len(rules) >= 6
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    exposed = exposed_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        expr = str(rule["expr"])
        used = set(re.findall(r"\btriggerd_[a-z_]+", expr))
        assert used and used <= exposed, (rule["alert"], used - exposed)
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert "summary" in rule["annotations"]  # type: ignore[operator]


def test_the_operations_page_shows_this_file() -> None:
    page = (REPO / "docs" / "operations.md").read_text()
    assert '--8<-- "config/prometheus-alerts.yaml"' in page
