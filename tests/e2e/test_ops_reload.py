"""SIGHUP with the real daemon: a valid change (a rule added, one changed, one removed) keeps
the pending events of an unchanged rule; an invalid change is refused with its file:line
errors and the old rules keep firing."""

from __future__ import annotations

import signal
import subprocess

from harness import Triggerd, wait_for
from opskit import pending_events

MAIN = """
    state_dir: state
    include: ["rules.d/*.yaml"]
    sources:
      landing: {{type: filesystem, paths: [{root}/landing], settle: 100ms}}
    backends:
      train: {{type: command, argv: [python3, {rec}]}}
"""

STEADY = """
      steady:
        on: [landing]
        match: {subject: "**/steady-*"}
        when: {min_events: 3}
        dispatch: {backend: train}
"""

RULES_V1 = """
    rules:
""" + STEADY + """      tuned:
        on: [landing]
        match: {subject: "**/tuned-*"}
        when: {min_events: 5}
        dispatch: {backend: train}
      doomed:
        on: [landing]
        match: {subject: "**/doomed-*"}
        dispatch: {backend: train}
"""

RULES_V2 = """
    rules:
""" + STEADY + """      tuned:
        on: [landing]
        match: {subject: "**/tuned-*"}
        when: {min_events: 2}
        dispatch: {backend: train}
      fresh:
        on: [landing]
        match: {subject: "**/fresh-*"}
        dispatch: {backend: train}
"""

RULES_BROKEN = """
    rules:
      steady:
        on: [landing]
        match: {subject: "**/steady-*"}
        when: {min_events: 0}
        dispatch: {backend: train}
      fresh:
        on: [landing]
        match: {subject: "**/fresh-*"}
        dispatch: {backend: nowhere}
"""


def land(td: Triggerd, *names: str) -> None:
    for name in names:
        (td.root / "landing" / name).write_text(f"content of {name}")


def fired(td: Triggerd, rule: str) -> list[list[str]]:
    return [sorted(fp.split(":")[0] for fp in c["events"]) for c in td.calls_made()
            if c["rule"] == rule]


def pending(td: Triggerd, rule: str) -> int:
    return pending_events(td, rule)


def hup(td: Triggerd, proc: subprocess.Popen[bytes], outcome: str, count: int) -> None:
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: td.log().count(outcome) >= count, 20, outcome)


def test_sighup_applies_a_valid_change_and_refuses_an_invalid_one(td: Triggerd) -> None:
    (td.root / "landing").mkdir()
    td.write(MAIN.format(root=td.root, rec=td.recorder()))
    td.write(RULES_V1, "rules.d/main.yaml")
    proc = td.start()
    td.wait_running(proc)
    land(td, "steady-1", "steady-2", "tuned-1")
    wait_for(lambda: pending(td, "steady") == 2 and pending(td, "tuned") == 1, 20,
             "pending events before the reload")

    td.write(RULES_V2, "rules.d/main.yaml")
    hup(td, proc, "reload applied", 1)
    assert "rules +fresh ~tuned -doomed" in td.log()
    land(td, "tuned-2", "doomed-1", "fresh-1")
    wait_for(lambda: fired(td, "tuned") and fired(td, "fresh"), 20, "tuned and fresh to fire")
    assert fired(td, "tuned") == [["tuned-1", "tuned-2"]]  # the new threshold, old events kept
    assert fired(td, "fresh") == [["fresh-1"]]
    land(td, "steady-3")
    wait_for(lambda: fired(td, "steady"), 20, "the unchanged rule to fire")
    assert fired(td, "steady") == [["steady-1", "steady-2", "steady-3"]]  # none lost
    assert fired(td, "doomed") == []

    td.write(RULES_BROKEN, "rules.d/main.yaml")
    hup(td, proc, "reload refused", 1)
    log = td.log()
    broken = td.root / "rules.d" / "main.yaml"
    assert f"{broken}:5: rules.steady.when.min_events" in log
    assert f"{broken}:10: rules.fresh.dispatch.backend: unknown backend 'nowhere'" in log
    assert "reload refused: 2 configuration error(s); the running config stays" in log
    land(td, "tuned-3", "tuned-4", "fresh-2")  # the old rules still fire
    wait_for(lambda: len(fired(td, "tuned")) == 2 and len(fired(td, "fresh")) == 2, 20,
             "the running rules to keep firing")

    td.write(MAIN.format(root=td.root, rec=td.recorder()) + "    store: sqlite:///elsewhere.db\n")
    td.write(RULES_V2, "rules.d/main.yaml")
    hup(td, proc, "reload refused", 2)
    assert "the store changed; restart triggerd" in td.log()
    assert proc.poll() is None

    # a changed source is restarted on its new options; its events still arrive
    td.write(MAIN.format(root=td.root, rec=td.recorder()).replace("100ms", "50ms"))
    hup(td, proc, "reload applied", 2)
    assert "sources ~landing" in td.log()
    land(td, "steady-4", "steady-5", "steady-6")
    wait_for(lambda: len(fired(td, "steady")) == 2, 20, "steady after the source restarted")
    assert fired(td, "steady")[1] == ["steady-4", "steady-5", "steady-6"]
    assert td.stop(proc) == 0


BOMB = "".join(
    ["rules:\n", f"  lol0: &lol0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"  lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 10)])


def test_sighup_refuses_an_alias_bomb_and_the_old_rules_keep_firing(td: Triggerd) -> None:
    (td.root / "landing").mkdir()
    td.write(MAIN.format(root=td.root, rec=td.recorder()))
    td.write(RULES_V2, "rules.d/main.yaml")
    proc = td.start()
    td.wait_running(proc)

    bomb = td.write(BOMB, "rules.d/main.yaml")
    began = len(td.log())
    hup(td, proc, "reload refused", 1)
    after = td.log()[began:]
    assert f"{bomb}:" in after and "aliases expand to more than" in after
    assert "reload refused: 1 configuration error(s); the running config stays" in after
    assert "Traceback" not in after

    # a recursive merge key in the main file: refused the same way
    main = td.write(MAIN.format(root=td.root, rec=td.recorder()) + "    loop: &a {<<: *a}\n")
    hup(td, proc, "reload refused", 2)
    assert f"{main}:" in td.log() and "recursive alias *a" in td.log()

    land(td, "fresh-1")  # the running rules still fire
    wait_for(lambda: fired(td, "fresh"), 20, "the running rule to fire")
    assert proc.poll() is None
    assert td.stop(proc) == 0


def test_a_sighup_during_start_up_is_applied_once_started(td: Triggerd) -> None:
    """Sent as soon as the process exists (a deployment tool reloading right after a start):
    not lost, applied when start-up is done."""
    (td.root / "landing").mkdir()
    td.write(MAIN.format(root=td.root, rec=td.recorder()))
    td.write(RULES_V1, "rules.d/main.yaml")
    proc = td.start()
    td.wait_running(proc)  # "triggerd started": its sources are not running yet
    td.write(RULES_V2, "rules.d/main.yaml")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload applied" in td.log() or "no change" in td.log(), 20,
             "the reload to be applied")
    assert proc.poll() is None
    assert "SIGHUP during shutdown ignored" not in td.log()
    assert td.stop(proc) == 0
