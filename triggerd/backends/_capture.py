"""A command's output, as the command backend keeps it: the first `output_limit` bytes in
`output.log`, the rest drained and counted (a chatty job never blocks on a full pipe), and the
last `tail` characters for the job's detail."""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

__all__ = ["Capture"]

_CHUNK = 64 * 1024


class Capture:
    """Copies a stream into a file up to `limit` bytes, then drains and counts the rest."""

    def __init__(self, limit: int, tail_chars: int, *, keeping: bool = True) -> None:
        self.limit = limit
        self.tail_chars = tail_chars
        self.keeping = keeping  # False: no output file (drained and counted only)
        self.written = 0
        self.dropped = 0
        self.notes: list[str] = []
        self._tail = bytearray()

    async def drain(self, read_fd: int, file: BinaryIO | None) -> None:
        stream = asyncio.StreamReader(limit=2 * _CHUNK)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport: asyncio.BaseTransport | None = None
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream), pipe)
            while chunk := await stream.read(_CHUNK):
                if self.tail_chars:
                    self._tail += chunk
                    del self._tail[:-4 * self.tail_chars]  # at most 4 bytes per character
                keep = b""
                if file is not None:
                    keep = chunk[:max(self.limit - self.written, 0)]
                    if keep:
                        await asyncio.to_thread(file.write, keep)
                        self.written += len(keep)
                self.dropped += len(chunk) - len(keep)
        finally:
            if transport is not None:
                transport.close()  # closes `pipe`
            else:
                pipe.close()
            if file is not None:
                file.close()

    def detail(self, headline: str | None) -> str:
        lines = [headline] if headline else []
        if self.dropped and self.keeping:
            lines.append(f"output truncated: output.log holds the first {self.written} bytes, "
                         f"{self.dropped} more were dropped")
        lines.extend(self.notes)
        tail = self._tail.decode("utf-8", "replace")[-self.tail_chars:] if self.tail_chars else ""
        if tail.strip():
            tail = tail.lstrip("\ufffd").rstrip("\n")
            lines.append(f"--- output tail ---\n{tail}" if lines else tail)
        return "\n".join(lines)
