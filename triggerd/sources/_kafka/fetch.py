"""faust's consumer with a fetch loop that hands over a fetched batch at a time.

faust's `Consumer._drain_messages` (the loop between aiokafka's `getmany` and the conductor
that puts each message into the agent's channel queue) awaits every single message under its
own `Service.wait_first(callback(message), suspend_flow.wait())`: four tasks created, run and
cancelled per message. Measured (bench/kafka.py, bench/RESULTS.md "Kafka source", 2026-11-23)
that is most of faust's ~170 us of CPU per message; the rest of faust (conductor, channel
queue, stream) costs ~70 us.

`BatchConsumer._drain_messages` is faust-streaming 0.15.3's loop with one change: the
messages of one fetch are delivered by one coroutine under one `wait_first` against the same
events (flow suspended, consumer stopped or crashed). Everything else is faust's: per message
the same read-offset check (drop what was already delivered), gap tracking, a commit every
`broker_commit_every` acks (outside the wait, as in faust, so a rebalance never cancels a
commit half-way), a yield to the loop every 100 messages; delivery stops at the
first message after the flow was suspended or the consumer generation changed (a rebalance),
exactly where faust's `getmany` stops yielding, and the messages not delivered are read again
from the committed offsets once the rebalance is over (faust seeks there, as it does for the
messages its own loop drops). What is delivered is acknowledged and committed by faust as
before.

This overrides a private method and reads private attributes of faust's consumer
(`_read_offset`, `_commit_every`, `_n_acked`, `_add_gap`, `_stopped`): hence the pin
`faust-streaming>=0.15.3,<0.16` in pyproject.toml; a new faust minor release means comparing
this with its `Consumer._drain_messages` again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer, Transport

__all__ = ["YIELD_EVERY", "BatchConsumer", "BatchTransport"]

YIELD_EVERY = 100  # messages delivered between two yields to the loop (faust's figure)


class BatchConsumer(Consumer):
    """faust's aiokafka consumer; see the module docstring."""

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
