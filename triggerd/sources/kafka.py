"""The `kafka` source: messages on Kafka topics become `message` events.

Built on faust-streaming (aiokafka underneath); see `_kafka/app.py` for how faust runs inside
the daemon's loop and why an offset is committed only after its event is stored, and
`_kafka/decode.py` for the event shape and the kinds of bad message.

With a notification `format:` (s3, gcs, eventgrid), messages are object-store notifications
and their events are those of the bucket source `bucket` names (`_bucketpush`): the Kafka
source counts the messages, the bucket source owns the events.

Bad messages never stop the stream: each is recorded in the store's `rejects` table (before
its offset is committed), counted by kind in the source's status details, logged once per
kind with topic/partition/offset, and the stream moves on.

Health: unhealthy until the consumer holds a broker connection, and again whenever it has
held none for `session_timeout / 2` (broker down); aiokafka reconnects with backoff and
nothing is committed meanwhile, so nothing is lost when the broker returns. A store that
cannot take a batch is retried with backoff (the stream waits; nothing is acknowledged).
A TLS file that cannot be used, or a broker that refuses the TLS handshake or the SASL login,
makes the source unhealthy with what to fix (`_kafka/options.py`, `_kafka/app.py: diagnose`),
and it retries with backoff: the daemon and its other sources go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from triggerd.plugin import (
    Event,
    Reject,
    RejectLog,
    SourceContext,
    StoreError,
    failpoint,
    store_retry_delay,
)
from triggerd.sources._bucketnotify import Notice
from triggerd.sources._bucketoptions import BucketOptions
from triggerd.sources._bucketpush import BucketPush
from triggerd.sources._fstable import FileTable, MemoryFileTable
from triggerd.sources._kafka.app import (
    BrokerRefused,
    BrokerUnreachable,
    build_app,
    client_connected,
    probe,
    quiet_repeats,
    record_of,
    stop_app,
    tune_fetch_wait,
)
from triggerd.sources._kafka.decode import Decoder
from triggerd.sources._kafka.options import (
    KafkaOptions,
    KafkaSecurity,
    SecretMissing,
    SecurityConfigError,
)

__all__ = ["KafkaOptions", "KafkaSecurity", "KafkaSource"]

log = logging.getLogger("triggerd.sources.kafka")

HEALTH_EVERY = 0.5  # seconds between health checks and status reports
MAX_PENDING_BATCHES = 20  # decoded messages (in `batch`es) waiting before the agent waits
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # backoff between apps that could not reach the brokers


async def _start(app: Any) -> None:
    try:
        await app.start()
    except Exception as exc:
        if _is_connection_error(exc):
            raise BrokerUnreachable(str(exc)) from exc
        raise


def _is_connection_error(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaConnectionError

    return isinstance(exc, KafkaConnectionError | ConnectionError | OSError)


@dataclass(slots=True)
class _Batch:
    messages: list[Any]  # faust events, acknowledged once `events` and `rejects` are stored
    events: list[Event]
    rejects: list[Reject]
    notices: list[Notice]  # with a notification format: become events when stored


class KafkaSource:
    """Consumes `topic` in consumer group `group`; see the module docstring."""

    Options = KafkaOptions
    wants = ("rejects", "files", "sources")

    def __init__(self, name: str, options: KafkaOptions, *,
                 rejects: RejectLog | None = None, files: FileTable | None = None,
                 sources: Mapping[str, Any] | None = None) -> None:
        """`sources`: the config's source options (a notification format's bucket source)."""
        self.name = name
        self.options = options
        self.rejects = rejects
        self.decoder = Decoder(name, options)
        self.push: BucketPush | None = None
        if options.bucket is not None:
            bucket = (sources or {}).get(options.bucket)
            if not isinstance(bucket, BucketOptions):
                raise ValueError(f"kafka source {name}: `bucket` {options.bucket!r} is not a "
                                 "bucket source")
            self.push = BucketPush(options.bucket, bucket,
                                   files if files is not None else MemoryFileTable())
        self.notified: Counter[str] = Counter()  # objects, ignored
        self.messages = 0
        self.bad: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._positions: dict[tuple[str, int], int] = {}  # next offset to store, per partition
        self._connected_once = False
        self._pending: list[_Batch] = []  # decoded, not yet stored (see `_take`)
        self._pending_messages = 0
        self._ready = asyncio.Event()  # _pending has something
        self._room = asyncio.Event()  # _pending has room again

    async def run(self, ctx: SourceContext) -> None:
        """Run faust apps until cancelled; an app that cannot reach the brokers (at start, or
        crashed by a lost connection) is replaced after a backoff of 1s doubling to 30s."""
        delay = RETRY_FIRST
        quiet_repeats()
        ctx.set_health(False, f"connecting to {', '.join(self.options.brokers)}")
        while True:
            try:  # the TLS files are read off the loop
                context = await asyncio.to_thread(self.options.security.ssl_context)
                credentials = self.options.security.credentials(context)
            except (SecretMissing, SecurityConfigError) as exc:
                self._failed(ctx, f"security: {exc}", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            app = None
            self._pending, self._ready, self._room = [], asyncio.Event(), asyncio.Event()
            self._pending_messages = 0
            writer = asyncio.create_task(self._write(ctx), name=f"kafka-writer:{self.name}")
            try:
                await probe(self.name, self.options, credentials)
                app = build_app(self.name, self.options, credentials,
                                lambda batch: self._take(ctx, batch))
                await _start(app)
                await self._watch(ctx, app, writer)
            except (BrokerUnreachable, BrokerRefused) as exc:
                self._failed(ctx, f"broker unreachable: {exc}"
                             if isinstance(exc, BrokerUnreachable) else str(exc), delay)
            finally:
                writer.cancel()  # a batch not yet stored is not acknowledged: read again
                await asyncio.gather(writer, return_exceptions=True)
                if app is not None:
                    await asyncio.shield(stop_app(app))
            delay = RETRY_FIRST if self._connected_once else min(delay * 2, RETRY_MAX)
            self._connected_once = False
            await asyncio.sleep(delay)

    def _failed(self, ctx: SourceContext, error: str, delay: float) -> None:
        """An app could not be started: unhealthy with `error`, retried after `delay`."""
        ctx.set_health(False, error)
        log.warning("kafka source %s: %s; retrying in %.0fs", self.name, error, delay)

    async def _watch(self, ctx: SourceContext, app: Any, writer: asyncio.Task[None]) -> None:
        """Report health and figures until cancelled, or until faust or the writer fails."""
        healthy: bool | None = None
        assigned: list[str] = []
        last_seen = time.monotonic()
        grace = self.options.session_timeout.total_seconds() / 2
        while True:
            if app.crash_reason is not None:
                reason = app.crash_reason
                if _is_connection_error(reason):
                    raise BrokerUnreachable(str(reason)) from reason
                raise RuntimeError(f"faust: {type(reason).__name__}: {reason}") from reason
            if writer.done():
                writer.result()  # raises what stopped it
                raise RuntimeError("the batch writer stopped")
            tune_fetch_wait(app, self.options.fetch_wait.total_seconds())
            now = time.monotonic()
            if client_connected(app):
                last_seen = now
                self._connected_once = True
                if healthy is not True:
                    healthy = True
                    ctx.set_health(True)
                    log.info("kafka source %s: connected to %s", self.name,
                             ", ".join(self.options.brokers))
            elif healthy is not False and now - last_seen > grace:
                healthy = False
                error = f"broker unreachable: {', '.join(self.options.brokers)}"
                ctx.set_health(False, error)
                log.warning("kafka source %s: %s; reconnecting", self.name, error)
            details = self._details(app)
            if details["partitions"] != assigned:
                assigned = details["partitions"]
                log.info("kafka source %s: partitions assigned: %s", self.name,
                         ", ".join(assigned) or "none")
            ctx.report(details)
            await asyncio.sleep(HEALTH_EVERY)

    def _details(self, app: Any) -> dict[str, Any]:
        try:
            assigned = sorted(app.consumer.assignment())
        except (AttributeError, RuntimeError):
            assigned = []
        lag = 0
        for tp in assigned:
            with_hw = _highwater(app, tp)
            pos = self._positions.get((tp.topic, tp.partition))
            if with_hw is not None and pos is not None:
                lag += max(0, with_hw - pos)
        details = {"topics": self.options.topics, "group": self.options.group,
                   "partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned],
                   "messages": self.messages, "bad_messages": sum(self.bad.values()),
                   "bad": dict(self.bad), "lag": lag}
        if self.push is not None:  # notices that became the bucket source's events, or not
            details["notifications"] = {"bucket": self.push.source,
                                        "objects": self.notified["objects"],
                                        "ignored": self.notified["ignored"]}
        return details

    async def _take(self, ctx: SourceContext, batch: Sequence[Any]) -> None:
        """In the faust agent: decode a batch and hand it to the writer. Batches that arrive
        while the writer is storing are merged into its next transaction (group commit), so
        faust keeps reading and a slow store means bigger transactions, not a stalled
        stream; only past `MAX_PENDING_BATCHES` full batches of messages does the agent
        wait."""
        now = ctx.clock.now()
        item = _Batch(list(batch), [], [], [])
        for fe in batch:
            if self.push is not None:
                notices = self.decoder.notices(record_of(fe), now)
                if isinstance(notices, Reject):
                    item.rejects.append(notices)
                else:
                    item.notices.extend(notices)
                continue
            found = self.decoder.decode(record_of(fe), now)
            if isinstance(found, Event):
                item.events.append(found)
            else:
                item.rejects.append(found)
        while self._pending_messages >= MAX_PENDING_BATCHES * self.options.batch:
            self._room.clear()
            await self._room.wait()
        self._pending.append(item)
        self._pending_messages += len(item.messages)
        self._ready.set()

    async def _write(self, ctx: SourceContext) -> None:
        """The writer: store everything handed over so far in one go (rejects, then events),
        then acknowledge those messages in order; faust commits acknowledged offsets only.
        See `_kafka/app.py`."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            items, self._pending, self._pending_messages = self._pending, [], 0
            self._room.set()
            if not items:
                continue
            rejects = [r for item in items for r in item.rejects]
            await self._durably(ctx, rejects, [e for item in items for e in item.events],
                                [n for item in items for n in item.notices])
            failpoint("kafka-after-store")
            for item in items:
                for fe in item.messages:
                    fe.ack()
                    m = fe.message
                    self._positions[(m.topic, m.partition)] = m.offset + 1
                self.messages += len(item.messages)
            for r in rejects:
                self.bad[r.kind] += 1
                if r.kind not in self._logged:  # once per kind; the rest counted and stored
                    self._logged.add(r.kind)
                    log.warning("kafka source %s: bad message at %s (%s): %s; recorded in "
                                "rejects, further ones of this kind are counted only",
                                self.name, r.ref, r.kind, r.error)

    async def _durably(self, ctx: SourceContext, rejects: list[Reject],
                       events: list[Event], notices: list[Notice]) -> None:
        """Store rejects and events (and the events of `notices`), retrying with backoff
        while the store is unavailable."""
        delay = 0.0
        while True:
            try:
                if rejects and self.rejects is not None:
                    await self.rejects.add(rejects)
                    rejects = []
                if notices and self.push is not None:
                    pushed = await self.push.events(notices, ctx.clock.now())
                    await ctx.emit(pushed)
                    self.notified["objects"] += len(pushed)
                    self.notified["ignored"] += len(notices) - len(pushed)
                    notices = []
                await ctx.emit(events)
                if delay:  # it was down: say it is back (the broker side is separate)
                    ctx.set_health(True)
                return
            except StoreError as exc:
                delay = store_retry_delay(delay)
                log.warning("kafka source %s: store unavailable (%s); retrying in %.1fs",
                            self.name, exc, delay)
                ctx.set_health(False, f"store unavailable: {exc}")
                await asyncio.sleep(delay)


def _highwater(app: Any, tp: Any) -> int | None:
    try:
        hw = app.consumer.highwater(tp)
    except (AttributeError, KeyError, RuntimeError, AssertionError):
        return None
    return hw if isinstance(hw, int) else None
