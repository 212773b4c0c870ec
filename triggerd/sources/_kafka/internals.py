"""Every private name of faust, mode and aiokafka the `kafka` source relies on, in one module.

faust-streaming is a fixed choice, but the source replaces both ends of it (its fetch loop,
here, and its stream, in `_kafka/intake.py`) and tunes what faust does not expose. Those uses
of private names and internal modules are all in this module; the rest of the source calls
the small named functions and classes below, and no other module of the package touches a
private name of faust, mode or aiokafka (checked by tests/sources/test_kafka_internals.py,
which also checks that each internal listed here still exists with the shape relied on: run
it after any upgrade of faust-streaming, mode-streaming or aiokafka).

The pin `faust-streaming>=0.15.3,<0.16` in pyproject.toml is for these.

Relied on (name; where it lives; why; what breaks if it changes)

faust (faust-streaming)
1. `App._new_transport()` (faust/app/base.py), overridden by `SourceApp`: the one place
   faust makes its consumer transport, so that it makes a `BatchTransport` with the fetch
   loop below. If renamed or no longer called, the override is dead: faust's own per-message
   loop runs again (correct, but dearer per message: bench/RESULTS.md, "Kafka source").
2. `App._create_directories()` (faust/app/base.py), overridden by `SourceApp` to do nothing:
   the source has no tables, so no data directory. If renamed, faust creates `<group>-data`
   directories in the daemon's working directory again.
3. `App._consumer_wait_empty(consumer, logger)` (faust/app/base.py), overridden by
   `SourceApp`: on a rebalance wait for the batches in flight (faust's default), on stop do
   not (the writer is already cancelled). If renamed, a stop with unacknowledged messages
   waits for `stream_wait_empty` until `STOP_TIMEOUT` and the app is abandoned.
4. `faust.transport.drivers.aiokafka` (faust's aiokafka driver module, internal): its
   `Consumer` and `Transport`, subclassed by `BatchConsumer` and `BatchTransport` (whose
   class attribute `Consumer` is what the transport instantiates), and its
   `credentials_to_aiokafka_auth(credentials)`, which gives the aiokafka connection settings
   the consumer will use, for the probe (`aiokafka_auth`). If moved or changed, the source
   does not import, or the probe connects otherwise than the consumer.
5. `Consumer._drain_messages(fetcher)` (faust/transport/consumer.py; called by faust's
   `Fetcher._fetcher` task), replaced by `BatchConsumer._drain_messages`: a copy of
   faust-streaming 0.15.3's loop that delivers a fetched batch under one `wait_first`
   (bench/RESULTS.md "Kafka source"). It reads the consumer's private state as faust's loop
   does: `Consumer._read_offset` (per-partition last delivered offset), `_commit_every`
   (`broker_commit_every`), `_n_acked` (acks since the last commit), `_add_gap(tp,
   offset_from, offset_to)` (gap tracking for the committer), and mode's `Service._stopped`
   event of the consumer and of the fetcher; and the public-named `CONSUMER_FETCHING` flag,
   `getmany`, `callback`, `suspend_flow`, `flow_active`, `consumer_stopped_errors` and mode's
   `Service.wait_first` result (`done`, `results`). If faust changes its loop (the test
   compares it with the one copied), delivery, gap tracking or commits may silently differ
   from faust's: compare the two loops again and update the copy.

aiokafka (underneath faust's consumer thread)
6. `app.consumer._thread` (faust's `ThreadDelegateConsumer._thread`, the
   `AIOKafkaConsumerThread`), its `_consumer` (the `aiokafka.AIOKafkaConsumer`, None until
   started), that consumer's `_fetcher` (`aiokafka.consumer.fetcher.Fetcher`, None until
   started) and the fetcher's `_fetch_max_wait_ms`, read by the fetcher on every fetch
   request: `set_fetch_max_wait` lowers faust's hard-coded 1.5 s (see `tune_fetch_wait` in
   `_kafka/app.py`). If changed, the setting is silently not applied (`AttributeError` is
   taken as "not started yet"): up to 1.5 s more latency per message on brokers that hold a
   fetch for the whole wait (tansu).
7. The consumer's `_client` (`aiokafka.client.AIOKafkaClient`) and its `_conns` (a dict of
   `aiokafka.conn.AIOKafkaConnection`, each with `connected()`): `client_connected`, the
   source's health. If changed, the source never reports healthy.
8. `aiokafka.conn.create_conn(host, port, *, client_id, request_timeout_ms, ssl_context,
   security_protocol, sasl_...)` (internal module) and the connection's `send(request)` and
   `close()`: `connect`, the probe's connection, made as the consumer's client makes it.
9. `aiokafka.protocol.metadata.MetadataRequest(topics)` (internal module) and the response's
   `brokers` rows `(node_id, host, port, ...)`: `request_metadata` and `advertised_brokers`,
   the probe's metadata request and the brokers it advertises. If 8 or 9 change, the probe
   fails and the source stays unhealthy with a misleading error.
10. `Consumer._new_consumer_thread()` (faust's aiokafka driver: makes the
   `AIOKafkaConsumerThread`), overridden by `BatchConsumer` to make a `QuietStopThread`, whose
   `on_thread_stop()` (the thread's last step, which stops the aiokafka consumer) closes the
   consumer's `_client` itself when aiokafka's `Fetcher.close()` raises the CancelledError of
   a fetch request it has just cancelled (it awaits them unguarded: with no broker reachable
   a request is backing off). Without it a stop in a broker outage printed a thread
   traceback and left the client's metadata task pending ("Task was destroyed"). If changed,
   those messages come back on such stops; nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import (
    AIOKafkaConsumerThread,
    Consumer,
    Transport,
    credentials_to_aiokafka_auth,
)

__all__ = ["YIELD_EVERY", "BatchConsumer", "BatchTransport", "QuietStopThread", "SourceApp",
           "advertised_brokers", "aiokafka_auth", "client_connected", "connect",
           "request_metadata", "set_fetch_max_wait"]

YIELD_EVERY = 100  # messages delivered between two yields to the loop (faust's figure)


# -- the faust app (1, 2, 3) ---------------------------------------------------------------

class SourceApp(faust.App):
    """faust's App with the source's fetch loop, no data directory, and a stop that does not
    wait for unacknowledged messages once `stopping` is set (see the module docstring)."""

    stopping = False

    def _new_transport(self) -> Any:
        """faust's transport, making faust's consumer with the batch fetch loop."""
        return BatchTransport(self.conf.broker_consumer, self)

    def _create_directories(self) -> None:
        """No tables, so no data directory (faust would create `<group>-data` here)."""

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # On a rebalance, wait for the batches in flight to be stored and acknowledged
        # (faust's default). On stop, do not: the writer is already cancelled and what it
        # held is deliberately left unacknowledged, to be read again after a restart.
        if not self.stopping:
            await super()._consumer_wait_empty(consumer, logger)


# -- the fetch loop (4, 5) -----------------------------------------------------------------
#
# faust's `Consumer._drain_messages` (the loop between aiokafka's `getmany` and the conductor
# that puts each message into the agent's channel queue) awaits every single message under
# its own `Service.wait_first(callback(message), suspend_flow.wait())`: four tasks created,
# run and cancelled per message: most of faust's CPU per message (bench/kafka.py; the figures
# are in bench/RESULTS.md, "Kafka source").
#
# `BatchConsumer._drain_messages` is faust-streaming 0.15.3's loop with one change: the
# messages of one fetch are delivered by one coroutine under one `wait_first` against the
# same events (flow suspended, consumer stopped or crashed). Everything else is faust's: per
# message the same read-offset check (drop what was already delivered), gap tracking, a
# commit every `broker_commit_every` acks (outside the wait, as in faust, so a rebalance
# never cancels a commit half-way), a yield to the loop every 100 messages; delivery stops at
# the first message after the flow was suspended or the consumer generation changed (a
# rebalance), exactly where faust's `getmany` stops yielding, and the messages not delivered
# are read again from the committed offsets once the rebalance is over (faust seeks there, as
# it does for the messages its own loop drops). What is delivered is acknowledged and
# committed by faust as before.

class QuietStopThread(AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, stopping cleanly in a broker outage (10)."""

    async def on_thread_stop(self) -> None:
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop is itself being cancelled
            # aiokafka's Fetcher.close awaited a fetch request it had just cancelled: the
            # consumer's stop ended there, before closing its client
            consumer = self._consumer
            if consumer is not None:
                await consumer._client.close()
            self.log.info("aiokafka consumer closed with a fetch request cancelled")


class BatchConsumer(Consumer):
    """faust's aiokafka consumer with a fetch loop that hands over a fetched batch at a time
    (see above), and a consumer thread that stops cleanly in a broker outage (10)."""

    def _new_consumer_thread(self) -> QuietStopThread:
        return QuietStopThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # runs as faust's Fetcher task
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    # getmany waits for records (on the consumer thread), then yields them
                    # without awaiting: the batch is complete before anything is delivered,
                    # and the generation read here is the one getmany checked them against
                    batch = [item async for item in records]
                    generation = self.app.consumer_generation_id
                    while batch:
                        deliver = self._deliver(batch, generation)
                        ended = await self.wait_first(deliver, self.suspend_flow.wait())
                        if deliver not in ended.done:
                            break  # suspended for a rebalance, or stopping
                        batch = ended.results[ended.done.index(deliver)]
                        if batch:  # a commit is due before the next message (as faust does:
                            self._n_acked = 0  # outside the wait, so it is never cancelled)
                            await self.commit()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, batch: Sequence[tuple[Any, Any]],
                       generation: int) -> Sequence[tuple[Any, Any]]:
        """Hand the messages to the conductor in order, as faust's loop does one by one.
        Returns the messages not delivered because a commit is due first (else nothing)."""
        app = self.app
        callback = self.callback
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = app.topics.acks_enabled_for
        since_yield = 0
        for i, (tp, message) in enumerate(batch):
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            if not self.flow_active or app.consumer_generation_id != generation:
                return ()  # a rebalance began: the rest is read again from committed offsets
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue  # delivered before (faust logs "DROPPED MESSAGE" at dev level)
            if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                return batch[i:]
            await callback(message)
            read_offset[tp] = offset
        return ()


class BatchTransport(Transport):
    """faust's aiokafka transport (`kafka://`), making `BatchConsumer`s."""

    Consumer = BatchConsumer


# -- the running aiokafka consumer (6, 7) --------------------------------------------------

def set_fetch_max_wait(app: Any, seconds: float) -> None:
    """Set the running aiokafka fetcher's `fetch_max_wait_ms` (read per fetch request); no-op
    while the consumer is not started."""
    try:
        fetcher = app.consumer._thread._consumer._fetcher
    except AttributeError:  # not started yet
        return
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = int(seconds * 1000)


def client_connected(app: Any) -> bool:
    """Whether the consumer holds at least one live broker connection (read without
    touching the consumer thread's loop: a snapshot of plain attributes)."""
    try:
        consumer = app.consumer._thread._consumer
        conns = consumer._client._conns
        return any(conn.connected() for conn in list(conns.values()))
    except AttributeError:  # not started yet
        return False


# -- the probe's connections (4, 8, 9) -----------------------------------------------------

def aiokafka_auth(credentials: Any) -> dict[str, Any]:
    """The aiokafka connection settings (security protocol, TLS context, SASL) faust's
    consumer uses for these faust credentials."""
    return dict(credentials_to_aiokafka_auth(credentials))


async def connect(host: str, port: int, **settings: Any) -> Any:
    """An open aiokafka connection (`aiokafka.conn.create_conn`), with `settings` as its
    keyword arguments (`client_id`, `request_timeout_ms` and those of `aiokafka_auth`)."""
    return await create_conn(host, port, **settings)


async def request_metadata(conn: Any) -> Any:
    """The broker's answer to a metadata request for no topic, on `conn`."""
    return await conn.send(MetadataRequest([]))


def advertised_brokers(metadata: Any) -> list[tuple[str, int]]:
    """The (host, port) of each broker a metadata response advertises."""
    return [(b[1], b[2]) for b in metadata.brokers]
