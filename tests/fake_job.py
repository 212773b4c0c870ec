"""A stand-in for the dispatcher's job handle, for backend tests that call `dispatch` directly."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeJob:
    """Records what a backend tells the dispatcher (`set_external_id`)."""

    job_id: str = "job-1"
    attempt: int = 1
    external_ids: list[str] = field(default_factory=list)
    launched: Future[Any] | None = None  # what the dispatcher's `launch` gave (None: none ran)

    async def set_external_id(self, external_id: str) -> None:
        self.external_ids.append(external_id)
