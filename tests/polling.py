"""Waiting on a condition in async tests: poll it (never a bare sleep) until it holds, or fail
after `timeout` seconds with asyncio's TimeoutError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The predicate's first truthy value, polled every 10 ms."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.01)
        return value
