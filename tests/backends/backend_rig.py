"""Helpers of the backend tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from triggerd.model import Job

RunJob = Callable[..., Awaitable[Job]]  # the `run_job` fixture


class FakeHandle:
    """The dispatcher's side of one attempt, for calling `backend.dispatch` directly."""

    def __init__(self, attempt: int = 1) -> None:
        self.job_id = "r.1"
        self.attempt = attempt
        self.external_ids: list[str] = []
        self.launched = None  # no `launch` ran for this attempt

    async def set_external_id(self, external_id: str) -> None:
        self.external_ids.append(external_id)
