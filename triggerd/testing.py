"""Test helpers shipped with triggerd, for your own rule tests: a backend that records.

    backend = RecordingBackend("train")
    backend.script = ["transient", "ok"]  # first attempt fails (retryable), then succeeds
    ...
    assert backend.calls[0].trigger_id == "my-rule.1"

Set `hold = True` to keep attempts running until `release()` (to test `concurrency` and
`on_busy`); `started` is set each time an attempt starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from triggerd.errors import PermanentDispatchError, TransientDispatchError
from triggerd.interfaces import JobHandle
from triggerd.model import DispatchResult, TriggerContext


@dataclass
class RecordingBackend:
    name: str
    script: list[str] = field(default_factory=list)  # per attempt: ok | transient | permanent
    hold: bool = False
    calls: list[TriggerContext] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Let every held attempt finish (and the ones that start later, until `hold` again)."""
        self._gate.set()

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        self.calls.append(ctx)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            await job.set_external_id(f"rec-{len(self.calls)}")
            if self.hold:
                await self._gate.wait()
            outcome = self.script.pop(0) if self.script else "ok"
            if outcome == "transient":
                raise TransientDispatchError("scripted transient failure")
            if outcome == "permanent":
                raise PermanentDispatchError("scripted permanent failure")
            return DispatchResult(external_id=f"rec-{len(self.calls)}", detail="recorded")
        finally:
            self.running -= 1
