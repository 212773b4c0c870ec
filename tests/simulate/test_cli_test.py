"""`triggerd test FILE...` as users run it in CI: exit 0 when every test passed, 1 with a
readable diff when one failed, 2 with `file:line: key: message` for a bad test file or a bad
config under test."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from simtest import CONFIG, TestRunner

from triggerd.simulate import driver

REPO = Path(__file__).resolve().parents[2]

DEBOUNCED = """
    tests:
      - name: two sales files
        input:
          - {at: 0s, file: {source: landing, path: /data/landing/sales/a.parquet}}
          - {at: 30s, file: {source: landing, path: /data/landing/sales/b.parquet}}
        until: 1h
        expect:
          triggers:
            - {at: %s, rule: sales-batch, events: [a.parquet, b.parquet]}
"""


def test_a_passing_file_exits_0_and_says_so(tt: TestRunner) -> None:
    ran = tt.run(DEBOUNCED % "1m30s")
    assert ran.code == 0
    assert ran.out.splitlines()[0].startswith("ok    two sales files (1 trigger(s), ")
    assert ran.out.splitlines()[-1] == "1 test(s), 0 failed"
    assert ran.err == ""


def test_a_failing_test_exits_1_with_what_was_expected_and_what_came(tt: TestRunner) -> None:
    path = tt.write(DEBOUNCED % "1m")
    ran = tt.run_files(path)
    assert ran.code == 1
    lines = ran.out.splitlines()
    assert lines[0] == f"FAIL  two sales files ({path}:5)"
    assert lines[1] == ("  ~ trigger sales-batch.1 differs from the expected sales-batch at 1m: "
                        f"events [a.parquet, b.parquet]  ({path}:12)")
    assert lines[2] == "      at: expected 1m, got 1m30s"
    assert "sales-batch at 1m30s: events [a.parquet, b.parquet]" in lines[4]
    assert lines[-1] == "1 test(s), 1 failed"


def test_missing_and_unexpected_triggers_are_listed(tt: TestRunner) -> None:
    ran = tt.run("""
        tests:
          - name: wrong rule expected
            input:
              - {at: 0s, file: {source: landing, path: /data/landing/hot/1.parquet}}
            expect:
              triggers:
                - {at: 0s, rule: sales-batch}
              explain:
                - {at: 0s, rule: hot, fires: true, conditions: {cooldown: true, debounce: true}}
          - name: this one passes
            expect: {triggers: []}
    """)
    assert ran.code == 1
    out = ran.out
    assert "  - missing trigger sales-batch at 0s  (" in out
    assert ("  + unexpected trigger hot.1: hot at 0s: events [1.parquet], "
            "reason '1 new event (≥1)', kind events, job succeeded") in out
    assert "  ~ explain hot at 0s  (" in out
    assert "      fires:               expected true, got false (not firing: waiting for " \
        "new events)" in out
    assert "      conditions.cooldown: expected ok, got NO" in out
    assert "      conditions.debounce: expected ok, got not shown (shown: min_events, " \
        "cooldown)" in out
    assert "ok    this one passes" in out
    assert out.splitlines()[-1] == "2 test(s), 1 failed"


def test_json_output_for_machines(tt: TestRunner) -> None:
    ran = tt.run(DEBOUNCED % "1m30s", "--json")
    assert ran.code == 0
    found = ran.json()
    assert (found["tests"], found["failed"]) == (1, 0)
    case = found["files"][0]["tests"][0]
    assert case["passed"] and case["diffs"] == []
    assert [(t["id"], t["at"], t["events"], t["job"]) for t in case["triggers"]] == [
        ("sales-batch.1", "1m30s", ["a.parquet", "b.parquet"], "succeeded")]


def test_a_bad_test_file_exits_2_with_file_line_and_key(tt: TestRunner) -> None:
    path = tt.write("""
        tests:
          - name: typos
            input:
              - {at: 10 minutes, file: {source: landing, path: /data/landing/a.parquet}}
              - {at: 1m, fire: {rule: hot}, colour: red}
    """)
    ran = tt.run_files(path)
    assert ran.code == 2
    assert ran.out == ""
    assert f"{path}:7: tests[0].input[0].at: invalid time '10 minutes'" in ran.err
    assert f"{path}:8: tests[0].input[1]: unknown key 'colour'" in ran.err


def test_names_the_file_does_not_define_are_refused_at_their_line(tt: TestRunner) -> None:
    path = tt.write("""
        tests:
          - name: names
            input:
              - {at: 0s, file: {source: metrics, path: /data/landing/a.parquet}}
              - {at: 0s, file: {source: landing, path: /tmp/a.parquet}}
              - {at: 0s, fire: {rule: nope}}
            expect:
              triggers: [{at: 1m, rule: ghost}]
    """)
    ran = tt.run_files(path)
    assert ran.code == 2
    assert f"{path}:7: tests[0].input[0].file.source: source 'metrics' is a kafka " \
        "source, not a filesystem source" in ran.err
    assert f"{path}:8: tests[0].input[1].file.path: '/tmp/a.parquet' is not below the " \
        "source's paths (/data/landing)" in ran.err
    assert f"{path}:9: tests[0].input[2].fire.rule: unknown rule 'nope'" in ran.err
    assert f"{path}:11: tests[0].expect.triggers[0].rule: unknown rule 'ghost'" in ran.err


def test_a_bad_config_under_test_is_exit_2_at_the_configs_own_line(tt: TestRunner) -> None:
    config = tt.tmp_path / "broken.yaml"
    config.write_text("sources:\n  a: {type: cron, every: 1h}\nrules:\n"
                      "  r: {on: [b], dispatch: {backend: x}}\n")
    path = tt.write("config: broken.yaml\ntests: [{name: x}]\n", header=False)
    ran = tt.run_files(path)
    assert ran.code == 2
    assert f"{config}:4: rules.r.on[0]: unknown source 'b'" in ran.err


def test_invalid_yaml_and_a_missing_config_are_exit_2(tt: TestRunner) -> None:
    broken = tt.write("tests: [{name: x\n", "broken.test.yaml", header=False)
    missing = tt.write("config: nowhere.yaml\ntests: [{name: x}]\n", "missing.test.yaml",
                       header=False)
    ran = tt.run_files(broken, missing)
    assert ran.code == 2
    assert f"{broken}:2: invalid YAML" in ran.err
    assert f"{missing}:1: config: no such file" in ran.err


def test_several_files_are_summed_up(tt: TestRunner) -> None:
    one = tt.write(DEBOUNCED % "1m30s", "one.test.yaml")
    two = tt.write(DEBOUNCED % "2m", "two.test.yaml")
    ran = tt.run_files(one, two)
    assert ran.code == 1
    assert ran.out.splitlines()[-1] == "2 test(s), 1 failed"


def test_dozens_of_events_run_in_milliseconds(tt: TestRunner) -> None:
    files = "\n".join(f"      - {{at: {n}m, file: {{source: landing, path: "
                      f"/data/landing/teams/t{n % 4}/{n}.parquet}}}}" for n in range(60))
    path = tt.write(f"""
tests:
  - name: sixty files over an hour
    rules: [per-team]
    input:
{files}
    expect:
      triggers: [{{at: 5m, rule: per-team, group: teams/t1}}]
""")
    tt.run_files(path)  # warm: imports, the template store
    started = time.perf_counter()
    ran = tt.run_files(path)
    elapsed = time.perf_counter() - started
    assert ran.code == 1  # 28 triggers written, one expected: a long diff, quickly
    assert ran.out.count("+ unexpected trigger per-team.") == 27
    assert elapsed < 2.0  # typically ~0.1 s on a loaded CI machine


def test_the_example_file_passes_against_the_example_config() -> None:
    example = REPO / "config" / "triggerd.example.test.yaml"
    done = subprocess.run([sys.executable, "-m", "triggerd", "test", str(example)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "3 test(s), 0 failed"


def test_the_test_config_itself_is_valid() -> None:
    done = subprocess.run([sys.executable, "-m", "triggerd", "check", "--config", str(CONFIG)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_a_timeline_too_long_to_simulate_is_a_bad_file(
        tt: TestRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "MAX_STEPS", 500)  # 100,000 in a user's run: a minute
    rules = tt.tmp_path / "fast.yaml"
    rules.write_text("sources: {tick: {type: cron, every: 1s}}\n"
                     "backends: {b: {type: command, argv: [echo]}}\n"
                     "rules: {r: {on: [tick], when: {min_events: 1000000}, "
                     "dispatch: {backend: b}}}\n")
    path = tt.write("rule_files: [fast.yaml]\ntests:\n  - name: a month of seconds\n"
                    "    until: 30d\n", header=False)
    ran = tt.run_files(path)
    assert ran.code == 2
    assert f"{path}:3: tests[0]: more than 500 moments to simulate" in ran.err


def test_a_tolerance_accepts_a_trigger_near_its_expected_time(tt: TestRunner) -> None:
    near = DEBOUNCED.replace("    tests:", "    tolerance: 30s\n    tests:", 1)
    assert tt.run(near % "1m").code == 0
    assert tt.run(near % "59s").code == 1
