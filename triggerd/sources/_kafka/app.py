"""The faust app behind one `kafka` source, run inside triggerd's own event loop.

One faust `App` per source: its own consumer group, brokers and credentials, its own health,
and a failure (or a restart by the supervisor) that touches no other source. The app is built
inside `run` (never at import: a faust App binds the running loop) and started with
`await app.start()` — no `faust worker`, no signal handlers of faust's own, no web server, no
producer, no tables or changelog topics, no leader topic, no topic creation.

At least once, then deduplicated
    The agent reads with `stream.noack_take`: nothing is acknowledged by faust itself. A batch
    is decoded, its rejects recorded, its events stored (`ctx.emit` returns when they are
    durable), and only then is each message acknowledged; faust commits acknowledged offsets
    every `commit_interval`, on rebalance and on stop. A crash between store and commit
    re-reads the uncommitted tail, whose fingerprints the store already holds: duplicates,
    counted, never a second trigger. The agent runs with concurrency 1 (faust-streaming issue
    #606: with concurrency > 1 it commits past in-flight messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from triggerd.errors import TriggerdError
from triggerd.sources._kafka.decode import Record
from triggerd.sources._kafka.options import KafkaOptions

__all__ = ["BatchHandler", "BrokerUnreachable", "RepeatFilter", "build_app",
           "client_connected", "probe", "quiet_repeats", "record_of", "stop_app",
           "tune_fetch_wait"]

log = logging.getLogger("triggerd.sources.kafka")

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]
"""Called with each batch of faust events; acknowledges them itself once stored."""


class BrokerUnreachable(TriggerdError):
    """No broker answered (at start, or the consumer gave up on a lost connection)."""


async def probe(name: str, options: KafkaOptions, credentials: Any) -> None:
    """Bootstrap a plain aiokafka client once, so that unreachable brokers (or refused
    credentials) are one clear error here rather than a crashed faust consumer thread."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    client = AIOKafkaClient(
        bootstrap_servers=options.brokers, client_id=f"triggerd-{name}-probe",
        request_timeout_ms=int(options.request_timeout.total_seconds() * 1000),
        **credentials_to_aiokafka_auth(credentials))
    try:
        await client.bootstrap()
    except KafkaConnectionError as exc:
        raise BrokerUnreachable(f"cannot bootstrap from {', '.join(options.brokers)}") from exc
    finally:
        await client.close()


def build_app(name: str, options: KafkaOptions, credentials: Any,
              handle: BatchHandler) -> Any:
    import faust
    from faust.app import BootStrategy

    class _Boot(BootStrategy):
        enable_web = False
        enable_kafka_producer = False  # the source only reads
        enable_sensors = False  # faust's Monitor costs CPU per message and serves nothing

    class _App(faust.App):
        BootStrategy = _Boot

        stopping = False

        def _create_directories(self) -> None:
            """No tables, so no data directory (faust would create `<group>-data` here)."""

        async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
            # On a rebalance, wait for the batches in flight to be stored and acknowledged
            # (faust's default). On stop, do not: the writer is already cancelled and what it
            # held is deliberately left unacknowledged, to be read again after a restart.
            if not self.stopping:
                await super()._consumer_wait_empty(consumer, logger)

    app = _App(
        options.group,
        broker=[f"kafka://{b}" for b in options.brokers],
        broker_credentials=credentials,
        broker_client_id=f"triggerd-{name}",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        topic_disable_leader=True,
        topic_allow_declare=False,
        **options.faust_settings(),
    )
    topic = app.topic(*options.topics, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    batch, within = options.batch, options.batch_wait.total_seconds()

    async def agent(stream: Any) -> None:
        async for events in stream.noack_take(batch, within=within):
            await handle(events)

    app.agent(topic, name=f"triggerd-kafka-{name}", concurrency=1)(agent)
    return app


class RepeatFilter(logging.Filter):
    """Let each distinct message template of a logger through at most once per `every`
    seconds: while a broker is away aiokafka logs the same connection error ~10 times a
    second, which would bury everything else."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_NOISY = ("aiokafka", "aiokafka.conn", "aiokafka.client", "aiokafka.consumer.fetcher",
          "aiokafka.consumer.group_coordinator", "aiokafka.consumer.consumer",
          "faust.transport.drivers.aiokafka")
_repeat_filter = RepeatFilter()


def quiet_repeats() -> None:
    """Install the repeat filter on the loggers that flood while a broker is away (once)."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        if _repeat_filter not in logger.filters:
            logger.addFilter(_repeat_filter)


def record_of(event: Any) -> Record:
    m = event.message
    headers = m.headers or ()
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Record(topic=m.topic, partition=m.partition, offset=m.offset,
                  timestamp=m.timestamp, key=m.key, value=m.value,
                  headers=[(str(k), v) for k, v in headers])


def tune_fetch_wait(app: Any, seconds: float) -> None:
    """Set how long the broker may hold an empty fetch. faust hard-codes 1.5 s
    (`fetch_max_wait_ms=1500` in its aiokafka driver), and brokers that hold a fetch for the
    whole wait even when a message arrives (tansu) then add up to that much latency to every
    message on an idle topic. aiokafka reads the value per request, so setting it on the
    running fetcher is enough."""
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


STOP_TIMEOUT = 10.0


async def stop_app(app: Any) -> None:
    """Stop the app (commit what was acknowledged, leave the group), bounded in time."""
    app.stopping = True
    task = asyncio.ensure_future(app.stop())
    done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
    if not done:
        task.cancel()
        log.warning("faust app %s did not stop within %.0fs; abandoned", app.conf.id,
                    STOP_TIMEOUT)
    elif task.exception() is not None:
        log.warning("faust app %s: error while stopping: %s", app.conf.id, task.exception())
