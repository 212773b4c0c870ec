"""A bounded channel from another thread (or another thread's event loop) to the source's loop.

The bucket source's listing runs on the storage library's own event loop, in a thread of its
own, and hands the reconcile's parts to the source as they are made, so that a first listing
of a large prefix is emitted while it is still listing and never held whole. `put` waits
while `size` parts are waiting (the listing is held back: memory stays bounded by what is in
flight); `get` runs on the source's loop. When the consumer stops (the source is cancelled, a
part failed to be stored), `close` releases every waiting producer and later puts raise
`Closed`, so no listing is left waiting forever on a loop that no longer reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Closed", "Handoff"]


class Closed(Exception):
    """The consumer has gone: the producer should stop."""


class Handoff(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        """`loop`: the consumer's (running) loop; `size`: parts that may wait."""
        self._loop = loop
        self._queue: asyncio.Queue[T] = asyncio.Queue(size)
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()
        self._closed = False

    async def put(self, item: T) -> None:
        """From another thread's event loop: wait until the consumer has room for `item`."""
        future = self._submit(item)
        try:
            await asyncio.wrap_future(future)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            if self._closed:
                raise Closed from None
            raise

    def put_blocking(self, item: T) -> None:
        """From a plain thread (never the consumer's loop): the same, blocking."""
        try:
            self._submit(item).result()
        except concurrent.futures.CancelledError:
            raise Closed from None

    async def get(self) -> T:
        """On the consumer's loop: the next item."""
        return await self._queue.get()

    def close(self) -> None:
        """On the consumer's loop, when it stops reading: waiting puts end with `Closed`."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def _submit(self, item: T) -> concurrent.futures.Future[None]:
        with self._lock:
            if self._closed:
                raise Closed
            put = self._queue.put(item)
            try:
                future = asyncio.run_coroutine_threadsafe(put, self._loop)
            except RuntimeError:  # the consumer's loop is closed
                put.close()
                raise Closed from None
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
