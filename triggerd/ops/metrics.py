"""Prometheus metrics of one daemon (`TRIGGERD_HTTP` serves them at /metrics).

Two kinds, in one private `CollectorRegistry` per daemon (several may run in one process):

- counters and histograms fed by hooks as things happen in this process: events and
  duplicates by source, triggers by rule and reason kind, job attempts by backend and outcome,
  dispatch latency and attempt duration by backend, config reloads, source health, heartbeat;
- gauges read from the store at scrape time (`StoreCollector`, from the snapshot that
  `triggerd.store.queries.read_snapshot` reads: the store runs the SQL), through the daemon's
  store thread: pending events and the age of the oldest one per rule, seconds since the last
  successful job per rule, jobs kept in the store by backend and status.

Names (all prefixed `triggerd_`) are part of the operator contract once released: add, never
rename. Labels never carry event data or secrets, only configured names.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from triggerd import __version__
from triggerd.store.queries import StoreSnapshot, ping, read_snapshot

__all__ = ["Metrics", "StoreCollector", "StoreSnapshot", "ping", "read_snapshot"]

# seconds: from a trigger firing to its job starting; from a job attempt starting to its end
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600)


class StoreCollector:
    """Yields the store-derived gauges from the snapshot taken for the current scrape."""

    def __init__(self, snapshot: StoreSnapshot | None, rules: Iterable[str]) -> None:
        self.snapshot = snapshot
        self.rules = sorted(rules)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("triggerd_store_up",
                               "1 if the store answered this scrape's queries, else 0")
        up.add_metric([], 1.0 if self.snapshot is not None else 0.0)
        yield up
        snap = self.snapshot
        if snap is None:
            return
        now = snap.at
        pending = GaugeMetricFamily("triggerd_pending_events",
                                    "Events waiting for the rule's next trigger", labels=["rule"])
        pbytes = GaugeMetricFamily("triggerd_pending_bytes",
                                   "Bytes of the rule's pending events", labels=["rule"])
        age = GaugeMetricFamily("triggerd_oldest_pending_event_age_seconds",
                                "Age of the rule's oldest pending event (0 when none)",
                                labels=["rule"])
        since = GaugeMetricFamily("triggerd_seconds_since_last_success",
                                  "Seconds since the rule's last successful job (absent if "
                                  "it never succeeded)", labels=["rule"])
        for rule in self.rules:
            count, size, oldest = snap.pending.get(rule, (0, 0, None))
            pending.add_metric([rule], count)
            pbytes.add_metric([rule], size)
            age.add_metric([rule], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            last = snap.last_success.get(rule)
            if last is not None:
                since.add_metric([rule], max(0.0, (now - last).total_seconds()))
        jobs = GaugeMetricFamily("triggerd_jobs",
                                 "Jobs kept in the store (retention), by backend and status",
                                 labels=["backend", "status"])
        for (backend, status), n in sorted(snap.jobs.items()):
            jobs.add_metric([backend, status], n)
        rejected = GaugeMetricFamily(
            "triggerd_rejected_messages",
            "Messages a source could not turn into events (bad JSON, not UTF-8, tombstone, too "
            "big, a failing where...), kept in the store for inspection (retention), by source "
            "and kind", labels=["source", "kind"])
        for source, kinds in sorted(snap.rejects.items()):
            for kind, n in sorted(kinds.items()):
                rejected.add_metric([source, kind], n)
        yield from (pending, pbytes, age, since, jobs, rejected)


class Metrics:
    """The metrics of one daemon; hooks are plain method calls, cheap enough for the loop."""

    def __init__(self, daemon_id: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("triggerd_events", "New events stored, by source", ["source"],
                              registry=r)
        self.duplicates = Counter("triggerd_duplicate_events",
                                  "Events dropped as duplicates, by source", ["source"],
                                  registry=r)
        self.triggers = Counter("triggerd_triggers",
                                "Triggers fired, by rule and reason kind (events, floor, "
                                "schedule, manual)", ["rule", "kind"], registry=r)
        self.job_attempts = Counter("triggerd_job_attempts",
                                    "Job attempts finished, by backend and outcome "
                                    "(succeeded, failed, retrying)", ["backend", "outcome"],
                                    registry=r)
        self.attempts_abandoned = Counter(
            "triggerd_job_attempts_abandoned",
            "Job attempts abandoned because another daemon took their job over (this one was "
            "paused or cut off from the store), by backend", ["backend"], registry=r)
        self.dispatch_latency = Histogram(
            "triggerd_dispatch_latency_seconds",
            "From a trigger firing to the first attempt of its job starting, by backend",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.attempt_duration = Histogram(
            "triggerd_job_attempt_duration_seconds",
            "Duration of one job attempt on its backend", ["backend"],
            buckets=DURATION_BUCKETS, registry=r)
        self.source_up = Gauge("triggerd_source_healthy",
                               "1 if the source reports itself healthy, else 0",
                               ["source", "type"], registry=r)
        self.source_last_event = Gauge("triggerd_source_last_event_timestamp_seconds",
                                       "When the source last delivered a new event (unix time)",
                                       ["source"], registry=r)
        self.heartbeat = Gauge("triggerd_heartbeat_timestamp_seconds",
                               "When this daemon last wrote its heartbeat to the store",
                               registry=r)
        self.reloads = Counter("triggerd_config_reloads",
                               "SIGHUP reloads, by result (applied, refused)", ["result"],
                               registry=r)
        self.config_rules = Gauge("triggerd_rules", "Rules in the running config", registry=r)
        self.loop_lag_seconds = Histogram(
            "triggerd_event_loop_lag_seconds",
            "How much later than asked the event loop woke a timer (what blocked it)",
            buckets=LAG_BUCKETS, registry=r)
        self.loop_lag_max = Gauge("triggerd_event_loop_lag_max_seconds",
                                  "The event loop's worst lag since the daemon started",
                                  registry=r)
        info = Gauge("triggerd_info", "Always 1; labels describe this daemon",
                     ["version", "daemon"], registry=r)
        info.labels(__version__, daemon_id).set(1)
        self._worst_lag = 0.0

    # -- hooks --------------------------------------------------------------------------------
    def ingested(self, source: str, new: int, duplicates: int) -> None:
        self.events.labels(source).inc(new)
        self.duplicates.labels(source).inc(duplicates)
        if new:
            self.source_last_event.labels(source).set(time.time())

    def source_health(self, source: str, source_type: str, healthy: bool) -> None:
        self.source_up.labels(source, source_type).set(1.0 if healthy else 0.0)

    def forget_source(self, source: str, source_type: str) -> None:
        for gauge, labels in ((self.source_up, (source, source_type)),
                              (self.source_last_event, (source,))):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def triggered(self, rule: str, kind: str) -> None:
        self.triggers.labels(rule, kind).inc()

    def attempt_started(self, backend: str, attempt: int, latency: float) -> None:
        if attempt == 1:
            self.dispatch_latency.labels(backend).observe(max(0.0, latency))

    def attempt_finished(self, backend: str, outcome: str, seconds: float) -> None:
        self.job_attempts.labels(backend, outcome).inc()
        self.attempt_duration.labels(backend).observe(max(0.0, seconds))

    def attempt_abandoned(self, backend: str) -> None:
        """An attempt whose job another daemon took over (fencing): not recorded, not
        retried by this daemon."""
        self.attempts_abandoned.labels(backend).inc()

    def loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)
        if seconds > self._worst_lag:
            self._worst_lag = seconds
            self.loop_lag_max.set(seconds)

    def render(self, snapshot: StoreSnapshot | None, rules: Iterable[str]) -> bytes:
        """The exposition text, with the store gauges of `snapshot` (None: store down).
        Thread-safe (the endpoint renders off the loop): the store gauges get a registry of
        their own per call."""
        store = CollectorRegistry()
        store.register(StoreCollector(snapshot, rules))
        return generate_latest(self.registry) + generate_latest(store)

