"""The only crossing from a library's thread (watchdog's observer) into the event loop.

Contract
    * The foreign thread calls `put(key, hint)` or `overflow(reason)`; nothing else. They take a
      plain `threading.Lock`, never block on the loop, and never touch asyncio objects: the loop
      is woken with `loop.call_soon_threadsafe`, at most once per drain (not once per event).
    * Items are coalesced by key (a path): a file written in 50 chunks is one entry. A hint
      that matters more (`rank`) replaces a weaker one, so "moved" survives a later "modified".
    * The queue is bounded (`maxsize` distinct keys). When it is full, the new key is dropped,
      counted, and the bridge reports an overflow: the consumer must then reconcile (rescan)
      instead of trusting the notifications, so a drop delays an event but never loses it.
    * The loop side awaits `wait()` and takes everything with `drain()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

__all__ = ["Bridge", "BridgeStats", "Drained"]

# Higher wins when two hints for one key are coalesced.
_RANK = {"modified": 0, "created": 1, "deleted": 2, "moved": 3, "dir": 4}


@dataclass(slots=True)
class BridgeStats:
    delivered: int = 0
    coalesced: int = 0
    dropped: int = 0
    overflows: int = 0


@dataclass(slots=True)
class Drained:
    items: dict[str, str] = field(default_factory=dict)
    overflow: bool = False
    reasons: list[str] = field(default_factory=list)


class Bridge:
    """A bounded, coalescing hand-off from one foreign thread to one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 10_000) -> None:
        self._loop = loop
        self.maxsize = maxsize
        self.stats = BridgeStats()
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}
        self._overflow = False
        self._reasons: list[str] = []
        self._scheduled = False
        self._ready = asyncio.Event()  # touched on the loop thread only

    # -- foreign thread ---------------------------------------------------------------------
    def put(self, key: str, hint: str) -> None:
        with self._lock:
            old = self._items.get(key)
            if old is not None:
                self.stats.coalesced += 1
                if _RANK.get(hint, 0) > _RANK.get(old, 0):
                    self._items[key] = hint
            elif len(self._items) >= self.maxsize:
                self.stats.dropped += 1
                if not self._overflow:
                    self._overflow = True
                    self.stats.overflows += 1
                    self._reasons.append(f"bridge queue full ({self.maxsize} paths)")
            else:
                self._items[key] = hint
            self._wake_locked()

    def overflow(self, reason: str) -> None:
        with self._lock:
            self.stats.overflows += 1
            self._overflow = True
            self._reasons.append(reason)
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        # The loop is closed only after the source stopped its observer; nothing to wake then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    # -- loop thread ------------------------------------------------------------------------
    @property
    def ready(self) -> asyncio.Event:
        """Set (on the loop) when something waits to be drained."""
        return self._ready

    def drain(self) -> Drained:
        self._ready.clear()
        with self._lock:
            out = Drained(self._items, self._overflow, self._reasons)
            self._items = {}
            self._overflow = False
            self._reasons = []
            self._scheduled = False
            self.stats.delivered += len(out.items)
        return out
