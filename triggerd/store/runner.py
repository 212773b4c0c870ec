"""How store adapters run a blocking store call off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking store call off the event loop (`Daemon.call`: the daemon's one store
    thread, or `to_thread` where there is no daemon)."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


def to_thread(fn: Callable[[], T]) -> Awaitable[T]:
    return asyncio.to_thread(fn)
