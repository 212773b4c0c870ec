"""`triggerd replay` over arrivals logs a user brings, run as a user runs it (the CLI's `main`):
the figures per rule, a candidate config, a sweep of a `when` key, `--json`, bad logs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from replaytest import CONFIG, START, Replay, bursts, write_log

from triggerd.model import event_id


def figures(report: dict[str, Any], run: str, rule: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in report["runs"] if r["name"] == run)["rules"][rule]
    return found


def test_the_figures_of_a_debounced_rule_over_two_days_of_hourly_bursts(rp: Replay) -> None:
    log = write_log(rp, bursts())
    report = rp.json("--arrivals", str(log), "--job-duration", "5m",
                     "--until", (START + timedelta(days=2)).isoformat())
    f = figures(report, "current", "on-data")
    # each burst (4 files, minutes 0-3) fires 10 min after its last file: 13 min after its
    # first; 48 bursts in 2 days
    assert f["triggers"] == 48 and f["retrains"] == 48
    assert f["retrains_per_day"] == 24
    assert f["events_per_trigger"] == 4
    assert f["staleness_seconds"] == {"p50": 11 * 60, "p95": 13 * 60, "max": 13 * 60}
    assert f["unserved_events"] == 0
    # from the start to the first success (13 + 5 min), then an hour between successes
    assert f["longest_without_success_seconds"] == 3600
    nightly = figures(report, "current", "nightly-if-new")
    assert nightly["triggers"] == 2 and nightly["retrains_per_day"] == 1  # 02:00, both days
    # the second night's check takes the files from 02:00 the day before: 24 hours old
    assert nightly["staleness_seconds"]["max"] == 24 * 3600
    assert report["jobs"].startswith("--job-duration 5m")
    first = next(r for r in report["runs"] if r["name"] == "current")["triggers"][0]
    assert first["rule"] == "on-data" and len(first["events"]) == 4
    assert first["job"]["started_at"] == (START + timedelta(minutes=13)).isoformat()


def test_a_candidate_and_a_sweep_trade_retrains_against_staleness(rp: Replay) -> None:
    log = write_log(rp, bursts())
    rp.file("candidate.yaml", CONFIG.replace("{debounce: 10m}", "{debounce: 10m, cooldown: 6h}"))
    until = (START + timedelta(days=2)).isoformat()
    report = rp.json("--arrivals", str(log), "--candidate", str(rp.tmp / "candidate.yaml"),
                     "--sweep", "when.debounce=2m,30m,2h", "--rule", "on-data",
                     "--until", until)
    assert [r["name"] for r in report["runs"]] == [
        "current", "candidate.yaml", "when.debounce=2m", "when.debounce=30m",
        "when.debounce=2h"]
    assert report["rules"] == ["on-data"] and report["sweep"] == "when.debounce"
    candidate = figures(report, "candidate.yaml", "on-data")
    assert candidate["retrains_per_day"] == 4  # one every 6 hours
    assert candidate["staleness_seconds"]["max"] > 5 * 3600
    swept = [figures(report, f"when.debounce={v}", "on-data") for v in ("2m", "30m", "2h")]
    # a 2-minute debounce fires between the files of a burst (they are 1 minute apart: no)
    assert swept[0]["retrains_per_day"] == 24
    assert swept[0]["staleness_seconds"]["p50"] < swept[1]["staleness_seconds"]["p50"]
    # 2 hours of quiet never comes while files land every hour: one retrain, at the end
    assert swept[2]["retrains"] <= 1
    assert swept[2]["longest_without_success_seconds"] >= 47 * 3600


def test_the_table_names_each_run_and_the_sweep(rp: Replay) -> None:
    log = write_log(rp, bursts(days=1))
    code, out, err = rp.run("--arrivals", str(log), "--sweep", "when.debounce=2m,30m",
                            "--rule", "on-data")
    assert code == 0, err
    assert "96 arrival(s) from" in out
    assert "rule on-data" in out and "current" in out
    assert "sweep when.debounce" in out and "retrains/day" in out
    assert "every job succeeds at once" in out  # no stored jobs, no --job-duration


def test_a_csv_log_replays_like_json_lines(rp: Replay) -> None:
    rows = bursts(days=1)
    csv = rp.file("arrivals.csv", "time,source,subject,size\n" + "".join(
        f"{r['time']},{r['source']},{r['subject']},{r['size']}\n" for r in rows))
    from_csv = rp.json("--arrivals", str(csv))
    from_json = rp.json("--arrivals", str(write_log(rp, rows)))
    for report in (from_csv, from_json):
        for run in report["runs"]:
            run["seconds"] = 0
    assert from_csv["runs"] == from_json["runs"]
    assert from_csv["arrivals"]["count"] == 96


def test_rows_the_config_cannot_replay_are_left_out_and_counted(rp: Replay) -> None:
    at = START.isoformat()
    rows = [*bursts(days=1)[:8],
            {"time": at, "source": "nightly", "subject": "tick"},
            {"time": at, "source": "elsewhere", "subject": "x"},
            {"time": at, "source": "landing", "subject": "/tmp/outside.parquet"},
            # the watched directory itself is no file in it (it crashed the replay)
            {"time": at, "source": "landing", "subject": "/data/landing"},
            {"time": at, "source": "landing", "subject": "/data/landing/"}]
    run = next(r for r in rp.json("--arrivals", str(write_log(rp, rows)))["runs"])
    assert run["left_out"] == {
        "ticks of cron source nightly (the replay makes its own)": 1,
        "source elsewhere is not in the config": 1,
        "paths outside filesystem source landing's paths": 3}
    assert run["events"] == 8


def test_a_same_content_upload_is_a_duplicate(rp: Replay) -> None:
    rows = [{"time": (START + timedelta(minutes=m)).isoformat(), "source": "landing",
             "subject": "/data/landing/a.parquet", "fingerprint": "sha-1"} for m in (0, 30)]
    report = rp.json("--arrivals", str(write_log(rp, rows)), "--rule", "on-data")
    f = figures(report, "current", "on-data")
    assert f["triggers"] == 1 and f["events_per_trigger"] == 1


@pytest.mark.parametrize(("text", "says"), [
    ('{"time": "2026-11-02T00:00:00Z", "source": "landing"}\n', ":1: missing subject"),
    ('{"time": "yesterday", "source": "landing", "subject": "a"}\n', ":1: time: 'yesterday'"),
    ('\n{"time": 1, "source": "landing", "subject": "a", "size": -1}\n', ":2: size: must be"),
    ("{not json\n", ":1: not JSON"),
    ('["a list"]\n', ":1: a row must be an object"),
])
def test_a_bad_log_names_its_file_and_line(rp: Replay, text: str, says: str) -> None:
    log = rp.tmp / "bad.jsonl"
    log.write_text(text)
    code, _out, err = rp.run("--arrivals", str(log))
    assert code == 2
    assert f"{log}{says}" in err


def test_a_csv_without_the_required_columns_is_refused(rp: Replay) -> None:
    log = rp.file("bad.csv", "when,source,subject\n2026-11-02T00:00:00Z,landing,a\n")
    code, _out, err = rp.run("--arrivals", str(log))
    assert code == 2 and f"{log}:1: the header line lacks the column(s) time" in err


@pytest.mark.parametrize(("sweep", "says"), [
    ("debounce=1m", "expected when.KEY=V1,V2"),
    ("when.nope=1", "expected when.KEY=V1,V2"),
    ("when.max_delay=1m", "rule on-data: Value error, max_delay must not be shorter"),
])
def test_a_bad_sweep_is_a_usage_error(rp: Replay, sweep: str, says: str) -> None:
    log = write_log(rp, bursts(days=1)[:4])
    code, _out, err = rp.run("--arrivals", str(log), "--sweep", sweep, "--rule", "on-data")
    assert code == 2 and says in err


def test_events_a_rule_rejects_are_counted_per_error(rp: Replay) -> None:
    rp.file("triggerd.yaml", CONFIG.replace(
        "when: {debounce: 10m}", 'when: {debounce: 10m}\n        group_by: "{payload.team}"'))
    report = rp.json("--arrivals", str(write_log(rp, bursts(days=1)[:5])), "--rule", "on-data")
    run = report["runs"][0]
    assert run["rejected"] == {"rule on-data: group_by: no value for payload.team": 5}
    assert run["rules"]["on-data"]["triggers"] == 0


def test_a_bucket_sources_log_is_replayed_as_its_listing_makes_events(rp: Replay) -> None:
    """Rows of a bucket source (subject: the object's URL or its key below the prefix) become
    the events its listing makes: watched patterns only, payload and fingerprint as listed,
    the same content tag twice at one key a duplicate."""
    rp.file("triggerd.yaml", """
        state_dir: state
        sources:
          raw: {type: bucket, url: "s3://data/landing/", poll: 5m,
                patterns: ["**/*.parquet"]}
        backends:
          train: {type: command, argv: [echo]}
        rules:
          fresh:
            on: [raw]
            when: {min_events: 2}
            dispatch: {backend: train}
    """)
    at = [(START + timedelta(minutes=m)).isoformat() for m in range(4)]
    log = write_log(rp, [
        {"time": at[0], "source": "raw", "subject": "s3://data/landing/a.parquet",
         "fingerprint": "e1"},
        {"time": at[1], "source": "raw", "subject": "a.parquet", "fingerprint": "e1"},
        {"time": at[2], "source": "raw", "subject": "notes.txt"},
        {"time": at[3], "source": "raw", "subject": "dt=1/b.parquet", "size": 7},
    ])
    report = rp.json("--arrivals", str(log), "--job-duration", "1m")
    (trigger,) = next(r for r in report["runs"] if r["name"] == "current")["triggers"]
    # a.parquet's second row is a duplicate (same tag), notes.txt is not watched: the two
    # events come only with b.parquet, whose fingerprint is its size and time (no tag)
    assert trigger["at"] == at[3]
    b_mtime = int((START + timedelta(minutes=3)).timestamp() * 1e9)
    assert sorted(trigger["events"]) == sorted([
        event_id("raw", "a.parquet:e1"), event_id("raw", f"dt=1/b.parquet:7:{b_mtime}")])
