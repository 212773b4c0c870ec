"""`triggerd test` timelines through the real engine: each policy fires at its exact time.

Every test here writes a test file against tests/simulate/data/triggerd.yaml and runs it as a
user does (`triggerd test FILE`); a timeline passes (exit 0) only when the engine wrote exactly
the triggers expected, at the times expected. `--json` shows what was written where a test
looks closer.
"""

from __future__ import annotations

from simtest import TestRunner


def _passes(tt: TestRunner, body: str) -> None:
    ran = tt.run(body)
    assert ran.code == 0, ran.out + ran.err
    assert ran.out.strip().endswith("0 failed")


def test_debounce_fires_once_the_files_stop_arriving(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: three files, then a quiet minute
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/sales/a.parquet, size: 10MiB}}
              - {at: 20s, file: {source: landing, path: /data/landing/sales/b.parquet}}
              - {at: 40s, file: {source: landing, path: /data/landing/sales/c.parquet}}
            until: 1h
            expect:
              triggers:
                - {at: 1m40s, rule: sales-batch, group: "", kind: events,
                   events: [a.parquet, sales/b.parquet, /data/landing/sales/c.parquet],
                   reason: "3 new events (≥2), quiet for 1m"}
              explain:
                - {at: 30s, rule: sales-batch, fires: false, says: "~quiet until .*00:01:20",
                   conditions: {min_events: true, debounce: false}}
                - {at: 1m40s, rule: sales-batch, fires: false, says: "new events"}
    """)


def test_max_delay_bounds_the_debounce_of_a_steady_stream(tt: TestRunner) -> None:
    files = "\n".join(
        f"      - {{at: {30 * n}s, file: {{source: landing, "
        f"path: /data/landing/sales/f{n}.parquet}}}}" for n in range(30))
    _passes(tt, f"""
tests:
  - name: a file every 30 seconds never leaves a quiet minute
    input:
{files}
    until: 14m50s
    expect:
      triggers:
        - {{at: 10m, rule: sales-batch, events: 20, reason: "max_delay 10m reached"}}
""")


def test_cooldown_holds_the_next_trigger_until_it_ends(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: cooled down
            rules: [hot]
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/hot/1.parquet}}
              - {at: 10m, file: {source: landing, path: /data/landing/hot/2.parquet}}
              - {at: 20m, file: {source: landing, path: /data/landing/hot/3.parquet}}
            until: 3h
            expect:
              triggers:
                - {at: 0s, rule: hot, events: [1.parquet]}
                - {at: 1h, rule: hot, events: [2.parquet, 3.parquet]}
              explain:
                - {at: 30m, rule: hot, fires: false, says: "cooldown to end at",
                   conditions: {cooldown: false}}
    """)


def test_the_floor_fires_without_events_every_period(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: at_least_every 1d
            rules: [rare]
            until: 2d12h
            expect:
              triggers:
                - {at: 1d, rule: rare, kind: floor, events: 0, reason: "~^periodic floor"}
                - {at: 2d, rule: rare, kind: floor}
    """)


def test_a_scheduled_rule_fires_at_its_check_only_with_new_data(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: daily at 02:00
            rules: [daily]
            input:
              - {at: 1h, file: {source: landing, path: /data/landing/daily/x.parquet}}
              - {at: 1d5h, file: {source: landing, path: /data/landing/daily/y.parquet}}
            until: 2d3h
            expect:
              triggers:
                - {at: 2h, rule: daily, kind: schedule, events: [x.parquet],
                   reason: "scheduled check at 2026-03-02T02:00:00+00:00"}
                - {at: 2d2h, rule: daily, kind: schedule, events: [y.parquet]}
              explain:
                - {at: 1h30m, rule: daily, fires: false, conditions: {schedule: false}}
    """)


def test_cron_sources_tick_by_themselves_or_from_the_timeline(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: ticks on the schedule
            rules: [nightly-train]
            until: 1d3h
            expect:
              triggers:
                - {at: 2h, rule: nightly-train, events: [nightly@2h]}
                - {at: 1d2h, rule: nightly-train, events: [nightly@1d2h]}
          - name: ticks only from the timeline
            ticks: timeline
            rules: [nightly-train]
            until: 1d3h
            input:
              - {at: 5h, tick: {source: nightly}, id: late-tick}
              - {at: 6h, tick: {source: nightly, slot: 5h}}
            expect:
              triggers:
                - {at: 5h, rule: nightly-train, events: [late-tick]}
    """)


def test_group_by_fires_each_group_on_its_own(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: two teams
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/teams/a/1.parquet}}
              - {at: 1m, file: {source: landing, path: /data/landing/teams/b/1.parquet}}
              - {at: 2m, file: {source: landing, path: /data/landing/teams/a/2.parquet}}
            until: 1h
            expect:
              triggers:
                - {at: 2m, rule: per-team, group: teams/a, events: [teams/a/1.parquet,
                                                                   teams/a/2.parquet]}
              explain:
                - {at: 3m, rule: per-team, group: teams/b, fires: false,
                   says: "1 more event(s)"}
    """)


def test_a_manual_fire_ignores_the_cooldown_and_takes_the_pending_events(
        tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: retrain now
            rules: [hot]
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/hot/1.parquet}}
              - {at: 5m, file: {source: landing, path: /data/landing/hot/2.parquet}}
              - {at: 10m, fire: {rule: hot, reason: new features}}
            until: 2h
            expect:
              triggers:
                - {at: 0s, rule: hot}
                - {at: 10m, rule: hot, kind: manual, reason: "manual: new features",
                   events: [2.parquet], job: succeeded}
    """)


def test_a_failing_job_is_retried_after_the_backoff_then_fails(tt: TestRunner) -> None:
    ran = tt.run("""
        tests:
          - name: sustained drift, and a retrain that fails twice
            jobs: {outcome: failed, duration: 2m}
            input:
              - {at: 0s, message: {source: metrics, key: churn,
                                   value: {model: churn, metric: psi, score: 0.3}}}
              - {at: 1m, message: {source: metrics, value: {model: churn, metric: psi,
                                                            score: 0.1}}}
              - {at: 2m, message: {source: metrics, raw: "{not json"}}
              - {at: 3m, message: {source: metrics, value: {model: churn, metric: psi,
                                                            score: 0.4}}}
              - {at: 4m, message: {source: metrics, value: {model: churn, metric: psi,
                                                            score: 0.5}}}
              - {at: 5m, message: {source: metrics, value: {model: churn, metric: psi,
                                                            score: 0.9}}, id: last}
            until: 1h
            expect:
              triggers:
                - {at: 5m, rule: drift, job: failed,
                   events: [model-metrics/0/0, model-metrics/0/3, model-metrics/0/4, last],
                   reason: "3 consecutive matches"}
              explain:
                - {at: 6m, rule: drift, says: "the running job to finish"}
                - {at: 8m, rule: drift, says: "the running job to finish"}
                - {at: 9m, rule: drift, conditions: {cooldown: false}}
    """, "--json")
    assert ran.code == 0, ran.out
    case = ran.json()["files"][0]["tests"][0]
    assert case["notes"] == [
        "message model-metrics/0/2 rejected by source metrics (json): invalid JSON: "
        "Expecting property name enclosed in double quotes at line 1 column 2"]


def test_job_outcomes_from_the_timeline_apply_to_the_next_attempt(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: a slow job coalesces the files that land meanwhile
            rules: [hot]
            input:
              - {at: 0s, job: {rule: hot, duration: 2h}}
              - {at: 0s, file: {source: landing, path: /data/landing/hot/1.parquet}}
              - {at: 1h30m, file: {source: landing, path: /data/landing/hot/2.parquet}}
            until: 3h
            expect:
              triggers:
                - {at: 0s, rule: hot, job: succeeded}
                - {at: 2h, rule: hot, events: [2.parquet], job: succeeded}
    """)


def test_the_same_content_again_is_a_duplicate(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: duplicates are not counted
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/sales/a.parquet,
                                content: v1}}
              - {at: 10s, file: {source: landing, path: /data/landing/sales/a.parquet,
                                 content: v1}}
              - {at: 20s, file: {source: landing, path: /data/landing/sales/a.parquet,
                                 content: v2}}
              - {at: 30s, file: {source: landing, path: /data/landing/sales/x.tmp}}
            until: 5m
            expect:
              triggers:
                - {at: 1m20s, rule: sales-batch, events: 2}
    """)


def test_rule_files_are_tested_without_a_main_config(tt: TestRunner) -> None:
    rules = tt.tmp_path / "team.yaml"
    rules.write_text("""
sources:
  hourly: {type: cron, every: 1h}
backends:
  b: {type: command, argv: [echo]}
rules:
  hourly-train:
    on: [hourly]
    when: {min_events: 3}
    dispatch: {backend: b}
""")
    path = tt.write("""
        rule_files: [team.yaml]
        tests:
          - name: every third hour
            until: 7h
            expect:
              triggers:
                - {at: 3h, rule: hourly-train, events: [hourly@1h, hourly@2h, hourly@3h]}
                - {at: 6h, rule: hourly-train, events: 3}
    """, header=False)
    ran = tt.run_files(path)
    assert ran.code == 0, ran.out + ran.err


def test_a_pause_keeps_events_pending_until_it_ends(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: paused for an hour, then paused until resumed
            rules: [hot]
            input:
              - {at: 0s, pause: {rule: hot, for: 1h, reason: maintenance}}
              - {at: 10m, file: {source: landing, path: /data/landing/hot/1.parquet}}
              - {at: 2h, pause: {rule: hot}}
              - {at: 2h10m, file: {source: landing, path: /data/landing/hot/2.parquet}}
              - {at: 3h, resume: {rule: hot}}
            until: 5h
            expect:
              triggers:
                - {at: 1h, rule: hot, events: [1.parquet]}
                - {at: 3h, rule: hot, events: [2.parquet]}
              explain:
                - {at: 30m, rule: hot, fires: false, says: "paused until",
                   conditions: {paused: false}}
    """)


def test_on_busy_queue_runs_jobs_in_turn_and_skip_cancels(tt: TestRunner) -> None:
    _passes(tt, """
        tests:
          - name: queued behind a 5-minute job
            rules: [queued]
            jobs: {duration: 5m}
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/queue/1.parquet}}
              - {at: 1m, file: {source: landing, path: /data/landing/queue/2.parquet}}
              - {at: 2m, file: {source: landing, path: /data/landing/queue/3.parquet}}
            until: 7m
            expect:
              triggers:
                - {at: 0s, rule: queued, job: succeeded}
                - {at: 1m, rule: queued, job: running}
                - {at: 2m, rule: queued, job: queued}
          - name: skipped while busy
            rules: [skipped]
            jobs: {duration: 5m}
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/skip/1.parquet}}
              - {at: 1m, file: {source: landing, path: /data/landing/skip/2.parquet}}
              - {at: 6m, file: {source: landing, path: /data/landing/skip/3.parquet}}
            until: 20m
            expect:
              triggers:
                - {at: 0s, rule: skipped, job: succeeded}
                - {at: 1m, rule: skipped, job: cancelled, events: [2.parquet]}
                - {at: 6m, rule: skipped, job: succeeded}
    """)


def test_object_store_notifications_are_the_bucket_sources_events(tt: TestRunner) -> None:
    """A message of a notification source (`format: s3`) is tested as the daemon reads it:
    the bucket source's event for the object, by its relpath; another prefix's makes none."""
    tt.write("""
        state_dir: state
        sources:
          landing: {type: bucket, url: "s3://data/landing/", poll: 10m,
                    patterns: ["**/*.parquet"]}
          notes: {type: kafka, brokers: ["k:9092"], topic: s3-events, format: s3,
                  bucket: landing}
        backends:
          train: {type: command, argv: [echo]}
        rules:
          fresh-data:
            on: [landing]
            when: {min_events: 2}
            dispatch: {backend: train}
    """, "triggerd.yaml", header=False)

    def put(key: str) -> str:
        return ('{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": '
                '"2026-03-02T00:00:00Z", "s3": {"bucket": {"name": "data"}, '
                f'"object": {{"key": "{key}", "size": 5, "eTag": "e-{key}"}}}}}}]}}')

    ran = tt.run_files(tt.write(f"""
        config: triggerd.yaml
        start: 2026-03-02T00:00:00Z
        tests:
          - name: two notified objects retrain once
            input:
              - {{at: 0s, message: {{source: notes, raw: '{put("landing/a.parquet")}'}}}}
              - {{at: 1m, message: {{source: notes, raw: '{put("other/b.parquet")}'}}}}
              - {{at: 2m, message: {{source: notes, raw: '{put("landing/c+d.parquet")}'}}}}
            until: 1h
            expect:
              triggers:
                - {{at: 2m, rule: fresh-data, events: [a.parquet, "c d.parquet"]}}
    """, header=False), "--json")
    assert ran.code == 0, ran.out + ran.err
    case = ran.json()["files"][0]["tests"][0]
    assert case["notes"] == ["message s3-events/0/1: no event (no object of bucket source "
                             "landing it watches)"]


def test_objects_of_a_bucket_source_are_listed_as_the_source_lists_them(tt: TestRunner) -> None:
    """`object:` inputs are what a listing finds settled: created, then modified when its
    content changes; the same content again is a duplicate; `deleted` when the source emits
    it; keys the patterns leave out make no event. Notifications (`format: s3`, the value
    written as a mapping) read the object table those listings built: a notice of a listed
    object is `modified`, of a new one `created`, and its removal `deleted`."""
    tt.write("""
        state_dir: state
        sources:
          landing: {type: bucket, url: "s3://data/landing/", poll: 10m,
                    patterns: ["**/*.parquet"], events: [created, modified, deleted]}
          notes: {type: kafka, brokers: ["k:9092"], topic: s3-events, format: s3,
                  bucket: landing}
        backends:
          train: {type: command, argv: [echo]}
        rules:
          any-change:
            on: [landing]
            dispatch: {backend: train}
    """, "triggerd.yaml", header=False)

    def note(at: str, event: str, key: str, tag: str = "t1") -> str:
        return (f'{{at: {at}, message: {{source: notes, value: {{Records: [{{eventName: '
                f'"{event}", s3: {{bucket: {{name: data}}, object: {{key: "{key}", size: 5, '
                f'eTag: "{tag}"}}}}}}]}}}}}}')

    ran = tt.run_files(tt.write(f"""
        config: triggerd.yaml
        start: 2026-03-02T00:00:00Z
        tests:
          - name: listings and notices of one object table
            input:
              - {{at: 0s, object: {{source: landing, key: dt=1/a.parquet, content: v1}}}}
              - {{at: 1m, object: {{source: landing, key: dt=1/a.parquet, content: v1}}}}
              - {{at: 2m, object: {{source: landing, key: dt=1/a.parquet, content: v2}}}}
              - {{at: 3m, object: {{source: landing, key: "s3://data/landing/x.csv"}}}}
              - {note("4m", "ObjectCreated:Put", "landing/dt=1/a.parquet", "t9")}
              - {note("5m", "ObjectCreated:Put", "landing/dt=2/b.parquet")}
              - {note("6m", "ObjectRemoved:Delete", "landing/dt=1/a.parquet")}
              - {{at: 7m, object: {{source: landing, key: dt=3/c.parquet, kind: deleted}}}}
            until: 10m
            expect:
              triggers:
                - {{at: 0s, rule: any-change, events: [dt=1/a.parquet]}}
                - {{at: 2m, rule: any-change, events: [dt=1/a.parquet]}}
                - {{at: 4m, rule: any-change, events: [dt=1/a.parquet]}}
                - {{at: 5m, rule: any-change, events: [dt=2/b.parquet]}}
                - {{at: 6m, rule: any-change, events: [dt=1/a.parquet]}}
                - {{at: 7m, rule: any-change, events: [dt=3/c.parquet]}}
    """, header=False), "--json")
    assert ran.code == 0, ran.out + ran.err
    case = ran.json()["files"][0]["tests"][0]
    assert any("x.csv: no event" in n for n in case["notes"]), case["notes"]
