"""config/grafana-dashboard.json is built on metrics the daemon really exposes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from triggerd.ops.metrics import Metrics, StoreSnapshot

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"


def exposed_names() -> set[str]:
    """Every sample name of a daemon's /metrics once each hook has fired."""
    m = Metrics("d1")
    m.ingested("landing", 2, 1)
    m.source_health("landing", "filesystem", True)
    m.triggered("r", "events")
    m.attempt_started("b", 1, 0.2)
    m.attempt_finished("b", "succeeded", 3.0)
    m.heartbeat.set(1.0)
    m.reloads.labels("applied").inc()
    now = datetime.now(UTC)
    snap = StoreSnapshot(at=now, pending={"r": (2, 10, now - timedelta(seconds=5))},
                         last_success={"r": now}, jobs={("b", "succeeded"): 1},
                         rejects={"landing": {"where": 1}})
    text = m.render(snap, ["r"]).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_dashboard_metric_is_exposed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\btriggerd_[a-z_]+", e)}
    assert len(used) >= 12
    assert used <= exposed_names(), used - exposed_names()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
