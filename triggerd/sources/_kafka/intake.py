"""The agent's read path: batches of faust events taken straight off the agent's channel.

faust's conductor puts each message of the subscribed topics into the agent channel's queue;
a faust `Stream` then takes them out one at a time (a loop iteration, sensors and a take
buffer per message; its cost is in bench/RESULTS.md, "Kafka source"). `take_batches`
takes them out of that same queue in bulk instead, and does per message what faust's stream
iterator (`faust/_cython/streams.pyx`, `_prepare_event`) does before an event reaches user
code:
- an event of an older consumer generation (fetched before a rebalance) or one taken while
  faust suspended the flow for a rebalance is dropped, not acknowledged: faust reads it again
  from the committed offset (faust's stream acknowledges such skipped events; not
  acknowledging them cannot let a commit pass an offset that was never stored);
- every other event is tracked as pending (`Consumer.track_message`), so that on a rebalance
  faust waits for it to be acknowledged (`wait_empty`) before it gives the partition up.
Acknowledging stays with the caller (`BatchHandler`: after the events are stored, in offset
order), through faust, whose committed offsets are the acknowledged ones as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["BatchHandler", "take_batches"]

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]
"""Called with each batch of faust events; acknowledges them itself once stored."""


async def take_batches(app: Any, channel: Any, batch: int, within: float,
                       handle: BatchHandler) -> None:
    """Forever: wait for an event on `channel` (an iterating topic channel of `app`), take
    more until `batch` events or until `within` seconds after the previous batch, and `handle`
    them (see module docstring). Timed from the previous batch, as faust's `take` is: a
    message after a quiet spell goes at once, a trickle is grouped `within` at a time.
    Returns when faust tells the agent to stop reading (its actor throws StopAsyncIteration
    into the channel's queue on stop, which faust's own stream takes as the end): what was
    taken and not yet handled is not acknowledged, and is read again after a restart."""
    try:
        await _take_batches(app, channel.queue, batch, within, handle)
    except StopAsyncIteration:
        return


async def _take_batches(app: Any, queue: Any, batch: int, within: float,
                        handle: BatchHandler) -> None:
    consumer = app.consumer
    flow = app.flow_control
    acking = app.topics.acks_enabled_for
    deadline = time.monotonic()
    while True:
        events = [await queue.get()]
        while True:
            while len(events) < batch and not queue.empty():
                events.append(queue.get_nowait())
            remaining = deadline - time.monotonic()
            if len(events) >= batch or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    events.append(await queue.get())
            except TimeoutError:
                break
        generation = app.consumer_generation_id
        active = flow.is_active()
        taken = []
        for event in events:
            message = event.message
            if not active or message.generation_id != generation:
                continue  # from before a rebalance: read again from the committed offset
            if not message.tracked and acking(message.topic):
                message.tracked = True
                consumer.track_message(message)
            taken.append(event)
        if taken:
            await handle(taken)
        deadline = time.monotonic() + within
        await asyncio.sleep(0)  # a full queue never blocks get(): let the loop run between
