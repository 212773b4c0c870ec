"""The `lines` source: one `message` event per line appended to a file.

- Every `poll`, the file is read from where the last look ended (at most `max_bytes`), off the
  event loop. Complete lines (ending in a newline) become events; a line still being written
  waits for its newline, unless it alone fills `max_bytes` (then it is cut there). Blank
  lines make no event.
- An event's fingerprint is `<generation>:<byte offset of the line>`: reading the same line
  again (after a crash between `emit` and the checkpoint) gives the same fingerprint, and the
  store drops the duplicate. A file replaced (another inode) or truncated starts a new
  generation, read from its start. A replacement that is already longer than the old file
  when it is first looked at is taken for the old file: its first lines are missed.
- The checkpoint, `{"inode", "offset", "generation"}`, is saved only after `ctx.emit`
  returned, so a crash re-reads lines rather than losing them. The first start reads the
  file from its beginning.
- A file that cannot be read (missing, no permission) makes the source unhealthy in
  `triggerd status`, and it keeps looking.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from pydantic import field_validator

from triggerd.plugin import Duration, Event, Size, SourceContext, Strict


class LinesOptions(Strict):
    """Options of a `type: lines` source."""

    type: Literal["lines"]
    """One `message` event per line appended to a file."""
    path: str
    """The file to follow; a relative path is relative to the daemon's working directory."""
    poll: Duration = timedelta(seconds=1)
    """How often to look for new lines (at least 10ms)."""
    max_bytes: Size = 1024 * 1024
    """Read at most this much per look; a longer line is cut there."""

    @field_validator("poll")
    @classmethod
    def _poll(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("poll must be at least 10ms")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, value: int) -> int:
        if value < 1:
            raise ValueError("max_bytes must be at least 1 byte")
        return value


@dataclass(frozen=True)
class Position:
    """Where the next look starts; the source's checkpoint."""

    inode: int | None = None  # None: the file was never opened
    offset: int = 0
    generation: int = 0

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Position:
        data = data or {}
        inode, offset, generation = data.get("inode"), data.get("offset"), data.get("generation")
        if isinstance(offset, int) and isinstance(generation, int) and \
                (inode is None or isinstance(inode, int)):
            return cls(inode, offset, generation)
        return cls()  # no checkpoint yet, or one of another shape: from the start

    def to_dict(self) -> dict[str, Any]:
        return {"inode": self.inode, "offset": self.offset, "generation": self.generation}


@dataclass(frozen=True)
class Look:
    """What one look found: complete lines as (offset, text, size), and the next position."""

    position: Position
    lines: list[tuple[int, str, int]] = field(default_factory=list)
    more: bool = False  # `max_bytes` was read: look again without waiting


def look(path: str, position: Position, max_bytes: int) -> Look:
    """Blocking: read what was appended to `path` since `position`."""
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        inode, size = stat.st_ino, stat.st_size
        if position.inode is None:
            position = replace(position, inode=inode)
        elif inode != position.inode or size < position.offset:  # replaced or truncated
            position = Position(inode, 0, position.generation + 1)
        fh.seek(position.offset)
        data = fh.read(max_bytes)
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) == max_bytes:  # one line longer than max_bytes: cut it here
        end = len(data)
    lines, start = [], 0
    while start < end:
        stop = data.find(b"\n", start, end)
        stop = end if stop < 0 else stop + 1
        text = data[start:stop].rstrip(b"\r\n").decode("utf-8", "replace")
        if text.strip():
            # the store keeps text as given, and PostgreSQL refuses a NUL character
            lines.append((position.offset + start, text.replace("\x00", "\\x00"), stop - start))
        start = stop
    after = replace(position, offset=position.offset + end)
    return Look(after, lines, more=len(data) == max_bytes)


class LinesSource:
    """Follows one file; see the module docstring."""

    Options = LinesOptions

    def __init__(self, name: str, options: LinesOptions) -> None:
        self.name = name
        self.options = options
        self._healthy: bool | None = None
        self._emitted = 0

    async def run(self, ctx: SourceContext) -> None:
        """Look, emit, checkpoint, sleep; until cancelled (the daemon stops or reloads)."""
        path, poll = self.options.path, self.options.poll.total_seconds()
        position = Position.load(await ctx.load_checkpoint())
        while True:
            try:
                found = await asyncio.to_thread(look, path, position, self.options.max_bytes)
            except OSError as exc:
                self._health(ctx, False, f"cannot read {path}: {exc.strerror or exc}")
                await asyncio.sleep(poll)
                continue
            self._health(ctx, True, None)
            if found.lines:
                await ctx.emit([self._event(ctx, found, line) for line in found.lines])
                self._emitted += len(found.lines)
            if found.position != position:  # only after the emit: a crash re-reads
                await ctx.save_checkpoint(found.position.to_dict())
                position = found.position
            ctx.report({"path": path, "offset": position.offset,
                        "generation": position.generation, "lines": self._emitted})
            if not found.more:
                await asyncio.sleep(poll)

    def _event(self, ctx: SourceContext, found: Look, line: tuple[int, str, int]) -> Event:
        offset, text, size = line
        return Event(source=self.name, kind="message", subject=text,
                     fingerprint=f"{found.position.generation}:{offset}",
                     payload={"path": self.options.path, "offset": offset, "size": size},
                     observed_at=ctx.clock.now())

    def _health(self, ctx: SourceContext, healthy: bool, error: str | None) -> None:
        """Report a change of health (each report is a write to the store)."""
        if healthy != self._healthy:
            ctx.set_health(healthy, error)
            self._healthy = healthy
