"""/metrics, /healthz and /readyz of the real daemon (TRIGGERD_HTTP), checked against what
happened: files landed, a duplicate, a trigger that succeeded, a manual one that failed."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Triggerd, wait_for
from opskit import TcpProxy, cli, get, get_json, http_port, sample, scrape, tick_config
from sqlalchemy import create_engine, make_url, text

HTTP = {"TRIGGERD_HTTP": "127.0.0.1:0"}  # port 0: the daemon logs the port it got


def test_no_listener_unless_asked(td: Triggerd) -> None:
    tick_config(td)
    proc = td.start()
    td.wait_running(proc)
    assert "http://" not in td.log()
    assert td.stop(proc) == 0


def test_bad_http_setting_is_a_usage_error(td: Triggerd) -> None:
    td.write("""
        state_dir: state
        rules: {}
    """)
    res = cli(td, "check", env={"TRIGGERD_HTTP": "localhost"})  # every command checks it
    assert res.returncode == 2
    assert "host:port" in res.stderr
    res = cli(td, "health")
    assert res.returncode == 2 and "set TRIGGERD_HTTP" in res.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        res = cli(td, "health", env={"TRIGGERD_HTTP": f"127.0.0.1:{port}"})  # not triggerd
        assert res.returncode == 1
        res = td.cli("run", env={"TRIGGERD_HTTP": f"127.0.0.1:{port}"})
        assert res.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in res.stderr
    res = cli(td, "health", env={"TRIGGERD_HTTP": f"127.0.0.1:{port}"})  # nothing listens
    assert res.returncode == 1 and f"127.0.0.1:{port}/healthz" in res.stderr


def test_metrics_match_what_happened(td: Triggerd) -> None:
    rec = td.recorder()
    (td.root / "landing").mkdir()
    td.write(f"""
        state_dir: state
        sources:
          landing: {{type: filesystem, paths: [{td.root / "landing"}],
                     patterns: ["*.parquet"], settle: 100ms}}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
          broken: {{type: command, argv: [python3, -c, "raise SystemExit(3)"]}}
        rules:
          new-data:
            on: [landing]
            when: {{min_events: 2}}
            dispatch: {{backend: train}}
          waiting:
            on: [landing]
            when: {{min_events: 100}}
            dispatch: {{backend: train}}
          manual-only:
            on: [landing]
            match: {{subject: "/nowhere/**"}}
            dispatch: {{backend: broken}}
    """)
    proc = td.start(env=HTTP)
    td.wait_running(proc)
    port = http_port(td)
    for name in ("a", "b"):
        (td.root / "landing" / f"{name}.parquet").write_bytes(f"rows {name}".encode())
    wait_for(td.calls_made, 20, "the new-data trigger")
    (td.root / "landing" / "a.parquet").write_bytes(b"rows a")  # same content: a duplicate
    assert cli(td, "fire", "manual-only", "--reason", "operator").returncode == 0

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        s = scrape(port)
        done = (sample(s, "triggerd_duplicate_events_total", source="landing") == 1
                and sample(s, "triggerd_jobs", backend="broken", status="failed") == 1
                and sample(s, "triggerd_jobs", backend="train", status="succeeded") == 1)
        return s if done else None
    s = wait_for(settled, 20, "the duplicate and both jobs in /metrics")

    assert sample(s, "triggerd_events_total", source="landing") == 2
    assert sample(s, "triggerd_triggers_total", rule="new-data", kind="events") == 1
    assert sample(s, "triggerd_triggers_total", rule="manual-only", kind="manual") == 1
    assert sample(s, "triggerd_triggers_total", rule="waiting", kind="events") is None
    assert sample(s, "triggerd_job_attempts_total", backend="train", outcome="succeeded") == 1
    assert sample(s, "triggerd_job_attempts_total", backend="broken", outcome="failed") == 1
    assert sample(s, "triggerd_dispatch_latency_seconds_count", backend="train") == 1
    assert sample(s, "triggerd_dispatch_latency_seconds_count", backend="broken") == 1
    assert sample(s, "triggerd_pending_events", rule="waiting") == 2
    assert sample(s, "triggerd_pending_events", rule="new-data") == 0
    assert sample(s, "triggerd_oldest_pending_event_age_seconds", rule="waiting") > 0
    assert sample(s, "triggerd_oldest_pending_event_age_seconds", rule="new-data") == 0
    assert sample(s, "triggerd_seconds_since_last_success", rule="new-data") >= 0
    assert sample(s, "triggerd_seconds_since_last_success", rule="waiting") is None
    assert sample(s, "triggerd_seconds_since_last_success", rule="manual-only") is None
    assert sample(s, "triggerd_source_healthy", source="landing", type="filesystem") == 1
    assert sample(s, "triggerd_source_last_event_timestamp_seconds", source="landing") > 0
    assert sample(s, "triggerd_store_up") == 1
    assert sample(s, "triggerd_rules") == 3
    assert wait_for(lambda: sample(scrape(port), "triggerd_heartbeat_timestamp_seconds"), 10,
                    "a heartbeat")
    assert get(port, "/healthz")[0] == 200
    status, ready = get_json(port, "/readyz")
    assert status == 200 and ready["ready"] is True, ready
    assert get(port, "/nothing")[0] == 404
    assert td.stop(proc) == 0


def test_readyz_names_an_unhealthy_source(td: Triggerd) -> None:
    td.write(f"""
        state_dir: state
        sources:
          landing: {{type: filesystem, paths: [{td.root / "not-yet"}], poll: 200ms}}
        backends: {{b: {{type: command, argv: ["true"]}}}}
        rules: {{r: {{on: [landing], dispatch: {{backend: b}}}}}}
    """)
    proc = td.start(env=HTTP)
    td.wait_running(proc)
    port = http_port(td)
    def unhealthy() -> tuple[int, dict[str, Any]] | None:
        status, body = get_json(port, "/readyz")
        landing = body["sources"].get("landing", {})
        return (status, body) if landing.get("healthy") is False else None
    status, body = wait_for(unhealthy, 20, "/readyz to report the missing root")
    assert status == 503 and body["ready"] is False
    assert any("landing" in p and "not-yet" in p for p in body["problems"]), body
    assert sample(scrape(port), "triggerd_source_healthy", source="landing",
                  type="filesystem") == 0
    (td.root / "not-yet").mkdir()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 20, "/readyz to recover")
    assert td.stop(proc) == 0


@pytest.fixture
def pg_behind_proxy(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """A fresh PostgreSQL database reached through a proxy the test can cut."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"triggerd_ops_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield url.set(database=name, host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False), proxy
    finally:
        proxy.close()
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = :n"), {"n": name})
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.mark.postgres
def test_store_down_readyz_503_healthz_200_metrics_still_served(
        td: Triggerd, pg_behind_proxy: tuple[str, TcpProxy]) -> None:
    url, proxy = pg_behind_proxy
    td.env["TRIGGERD_STORE"] = url
    tick_config(td)
    proc = td.start(env=HTTP)
    td.wait_running(proc)
    port = http_port(td)
    wait_for(lambda: get(port, "/readyz")[0] == 200, 20, "/readyz once started")

    proxy.down()
    status, body = get_json(port, "/readyz")
    assert status == 503, body
    assert body["store"] == "unreachable" and body["ready"] is False
    assert any(p.startswith("store unreachable") for p in body["problems"]), body
    assert get(port, "/healthz")[0] == 200  # alive: a store outage is no reason to restart
    s = scrape(port)
    assert sample(s, "triggerd_store_up") == 0
    assert sample(s, "triggerd_pending_events", rule="r") is None
    assert proc.poll() is None
    probe_env = {"TRIGGERD_HTTP": f"127.0.0.1:{port}"}
    assert cli(td, "health", env=probe_env).returncode == 0  # the container HEALTHCHECK
    not_ready = cli(td, "health", "--ready", env=probe_env)
    assert not_ready.returncode == 1 and "store unreachable" in not_ready.stdout

    proxy.up()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 20, "/readyz after the store is back")
    wait_for(lambda: sample(scrape(port), "triggerd_store_up") == 1, 10, "store_up 1")
    assert sample(scrape(port), "triggerd_pending_events", rule="r") == 0
    assert td.stop(proc) == 0
