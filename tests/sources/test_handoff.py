"""The bounded channel that carries a bucket listing's parts from the storage library's
thread to the source's loop: order, backpressure, and that a consumer that stops never leaves
a producer waiting forever."""

from __future__ import annotations

import asyncio
import threading

import pytest

from triggerd.sources._handoff import Closed, Handoff


def _producer(handoff: Handoff[int], items: range, done: list[int],
              errors: list[BaseException]) -> threading.Thread:
    """A thread running its own event loop (as the library's is), putting `items`."""

    async def produce() -> None:
        for item in items:
            await handoff.put(item)
            done.append(item)

    def run() -> None:
        try:
            asyncio.run(produce())
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_items_arrive_in_order_and_the_producer_waits_while_the_consumer_is_behind(
        ) -> None:
    handoff: Handoff[int] = Handoff(asyncio.get_running_loop(), 2)
    done: list[int] = []
    errors: list[BaseException] = []
    thread = _producer(handoff, range(10), done, errors)
    async with asyncio.timeout(10):
        while len(done) < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # room for a wrong producer to run ahead (nothing waits on it)
    assert len(done) == 2, "two may wait; the third put waits for the consumer"
    got = [await handoff.get() for _ in range(10)]
    assert got == list(range(10))
    await asyncio.to_thread(thread.join, 10)
    assert errors == [] and done == list(range(10))


async def test_closing_releases_a_waiting_producer_and_refuses_later_puts() -> None:
    handoff: Handoff[int] = Handoff(asyncio.get_running_loop(), 1)
    done: list[int] = []
    errors: list[BaseException] = []
    thread = _producer(handoff, range(5), done, errors)
    async with asyncio.timeout(10):
        while not done:
            await asyncio.sleep(0.01)
    handoff.close()  # the consumer stops reading: the second put is waiting
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    assert done == [0] and len(errors) == 1 and isinstance(errors[0], Closed)
    with pytest.raises(Closed):
        await asyncio.to_thread(handoff.put_blocking, 9)


def test_a_put_to_a_loop_that_has_closed_is_refused_not_left_waiting() -> None:
    loop = asyncio.new_event_loop()
    handoff: Handoff[int] = Handoff(loop, 1)
    loop.close()
    with pytest.raises(Closed):
        handoff.put_blocking(1)
