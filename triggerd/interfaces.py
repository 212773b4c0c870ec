"""The contracts every component plugs into. Read these before writing a source or backend.

Sources
    A source turns its outside world into `Event`s. The daemon builds it with its name and its
    own validated options (never the whole config) and awaits `run(ctx)`. The source awaits
    `ctx.emit(events)` for each batch it observes: awaiting is the backpressure, and when it
    returns the events are durably stored (new ones pending, duplicates counted), so a source
    may then acknowledge them to its outside world (commit a Kafka offset, save a checkpoint).
    A source class may list daemon services in a `wants` class attribute; each is passed
    to its constructor as a keyword argument. Today: `"files"`, a store-backed table of
    what the source has seen (the filesystem source's own protocol,
    `triggerd.sources._fstable.FileTable`), and `"rejects"`, where input that cannot become
    an event is recorded (`triggerd.plugin.RejectLog`), and `"sources"`, the options of every
    source of the config (a Kafka source reading a bucket's notifications needs the bucket's).
    `run` returns or raises only when the source cannot go on; the supervisor restarts it with
    backoff. Cancellation (daemon shutdown) must be honoured promptly. Blocking work (hashing,
    scanning, thread joins) runs off the loop, in a thread a stop need not wait for where it
    may hang (the filesystem source's `_fswatch.in_thread`).

Backends
    A backend performs one job attempt: `dispatch(ctx, job)` starts (and, if configured, waits
    for) the retrain identified by `ctx.trigger_id`. It must be idempotent in that id: a second
    call for the same trigger (a retry, or a restart after a crash) must not create a second
    side effect where the outside system can prevent it (Airflow `dag_run_id`, Kubernetes Job
    name, HTTP `Idempotency-Key`). It returns a `DispatchResult` on success, raises
    `TransientDispatchError` for failures worth retrying and `PermanentDispatchError` for the
    rest. It may call `job.set_external_id` as soon as the outside system names the work, so a
    restart can reattach to it.
    A backend whose attempt begins with short blocking work (the command backend: its files
    and the spawn) may also be a `Launcher`: the dispatcher then calls `launch(ctx, attempt)`
    on the store thread right after claiming the job, in the same trip that wrote its trigger
    (no hop through the event loop and a worker thread on the way to the backend), and
    `dispatch` finds the outcome in `job.launched`. Without a launch (a direct call),
    `dispatch` must do that work itself.

Clock
    Time is injected so that policies are tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from triggerd.model import DispatchResult, Event, TriggerContext

StoreWork = Callable[[Any], None]  # store work given the open transaction's connection


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SourceContext(Protocol):
    """What the daemon gives a running source."""

    name: str
    clock: Clock

    async def emit(self, events: Sequence[Event], also: StoreWork | None = None) -> None:
        """Store `events` (dedup, pending membership) and return once they are durable.
        `also` (from a daemon service such as `FileTable.with_events`) runs in the same store
        transaction: what the source records about the events is stored with them, or not
        at all."""
        ...

    async def load_checkpoint(self) -> dict[str, Any] | None:
        """The source's last saved checkpoint (e.g. the cron source's last fired slot)."""
        ...

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        """Persist a checkpoint. Save it only after the events it covers were emitted."""
        ...

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        """Report health for `triggerd status` (e.g. a broker that cannot be reached)."""
        ...

    def report(self, details: dict[str, Any]) -> None:
        """Publish the source's own figures for `triggerd status` (JSON-serialisable: roots
        watched, files tracked, last scan...). Cheap to call often: the daemon keeps the
        latest value and writes it to the store about once a second."""
        ...


@runtime_checkable
class Source(Protocol):
    name: str

    async def run(self, ctx: SourceContext) -> None:
        """Observe the outside world until cancelled; see the module docstring."""
        ...


class JobHandle(Protocol):
    """What a backend may tell the dispatcher while an attempt is under way."""

    job_id: str
    attempt: int
    # a `Launcher`'s `launch` for this attempt, already run: its result, or what it raised
    launched: Future[Any] | None

    async def set_external_id(self, external_id: str) -> None:
        """Record the outside system's id for this job (run id, Job name, pid)."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        """Perform one attempt; see the module docstring for the idempotency contract."""
        ...


@runtime_checkable
class Launcher(Protocol):
    """A backend that can begin an attempt on the thread that claimed its job."""

    def launch(self, ctx: TriggerContext, attempt: int) -> Any:
        """Blocking and quick (the store thread waits for it): start the attempt. What it
        returns or raises reaches `dispatch` as `job.launched`."""
        ...
