"""The job lifecycle: concurrency, on_busy (coalesce, queue, skip) and retries, in process.

The engine, dispatcher and a real SQLite store run on the test's event loop with the
RecordingBackend from triggerd.testing; nothing sleeps: tests wait on the backend's events
or poll the store with a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faults import fail_first
from polling import until
from store_helpers import claim_job

from triggerd import dispatcher as dispatcher_module
from triggerd.clock import SystemClock
from triggerd.config.loader import Config
from triggerd.config.schema import RuleSpec
from triggerd.dispatcher import Dispatcher
from triggerd.errors import PermanentDispatchError, TransientDispatchError
from triggerd.model import DispatchResult, Event, JobStatus
from triggerd.runtime.flow import Flow
from triggerd.sources.cron import CronOptions
from triggerd.store import Store, queries
from triggerd.testing import RecordingBackend


async def call(fn: Callable[[], Any]) -> Any:
    return fn()


class Rig:
    def __init__(self, store: Store, dispatch: dict[str, Any], **rule: Any) -> None:
        spec = RuleSpec.model_validate({"on": ["src"], "dispatch": {"backend": "rec",
                                                                   **dispatch}, **rule})
        self.config = Config(path=Path("x.yaml"), store_url=store.url, state_dir=Path("/tmp"),
                             retention=timedelta(days=1),
                             sources={"src": CronOptions(type="cron", every="1h")},
                             backends={}, rules={"r": spec})
        self.store = store
        self.backend = RecordingBackend("rec")
        clock = SystemClock()
        flow = Flow(self.config, store, {"rec": self.backend}, clock, call, "test-owner")
        self.dispatcher, self.engine = flow.dispatcher, flow.engine
        self.n = 0

    async def events(self, n: int = 1, **payload: Any) -> None:
        evs = []
        for _ in range(n):
            self.n += 1
            evs.append(Event(source="src", kind="message", subject="s",
                             fingerprint=f"f{self.n}", payload=payload))
        await self.engine.submit("src", evs)

    def jobs(self) -> dict[str, str]:
        return {j.id: str(j.status) for j in queries.list_jobs(self.store)}


@pytest.fixture
async def rig_factory(store: Store) -> AsyncIterator[Callable[[dict[str, Any]], Rig]]:
    tasks: list[asyncio.Task[None]] = []

    def make(dispatch: dict[str, Any], **rule: Any) -> Rig:
        rig = Rig(store, dispatch, **rule)
        tasks.append(asyncio.create_task(rig.dispatcher.run()))
        return rig

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_coalesce_accumulates_events_while_a_job_runs(rig_factory: Any) -> None:
    rig = rig_factory({"on_busy": "coalesce"})
    rig.backend.hold = True
    await rig.events(1)
    await until(lambda: rig.backend.calls)
    await rig.events(3)  # arrive while r.1 runs: no new trigger yet
    assert rig.jobs() == {"r.1": "running"}
    explain = (await rig.engine.evaluate({("r", "")}))
    assert explain == []
    rig.backend.release()
    await until(lambda: len(rig.backend.calls) == 2)
    second = rig.backend.calls[1]
    assert second.trigger_id == "r.2" and len(second.events) == 3
    await until(lambda: rig.jobs() == {"r.1": "succeeded", "r.2": "succeeded"})


async def test_queue_runs_triggers_one_after_another(rig_factory: Any) -> None:
    rig = rig_factory({"on_busy": "queue", "concurrency": 1})
    rig.backend.hold = True
    await rig.events(1)
    await until(lambda: rig.backend.calls)
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "running", "r.2": "queued"})
    rig.backend.release()
    await until(lambda: rig.jobs() == {"r.1": "succeeded", "r.2": "succeeded"})
    assert rig.backend.max_running == 1


async def test_concurrency_two_runs_two_at_once(rig_factory: Any) -> None:
    rig = rig_factory({"on_busy": "queue", "concurrency": 2})
    rig.backend.hold = True
    for _ in range(3):
        await rig.events(1)
    await until(lambda: sorted(rig.jobs().values()) == ["queued", "running", "running"])
    rig.backend.release()
    await until(lambda: set(rig.jobs().values()) == {"succeeded"})
    assert rig.backend.max_running == 2


async def test_skip_drops_triggers_while_busy(rig_factory: Any) -> None:
    rig = rig_factory({"on_busy": "skip"})
    rig.backend.hold = True
    await rig.events(1)
    await until(lambda: rig.backend.calls)
    await rig.events(2)
    assert rig.jobs() == {"r.1": "running", "r.2": "cancelled"}
    job = next(j for j in queries.list_jobs(rig.store) if j.id == "r.2")
    assert job.detail and "skipped" in job.detail
    rig.backend.release()
    await until(lambda: rig.jobs()["r.1"] == "succeeded")
    assert len(rig.backend.calls) == 1


async def test_transient_failure_is_retried_with_the_same_trigger_id(rig_factory: Any) -> None:
    rig = rig_factory({"retry": {"attempts": 3, "backoff": "10ms"}})
    rig.backend.script = ["transient", "transient", "ok"]
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "succeeded"})
    assert [c.trigger_id for c in rig.backend.calls] == ["r.1"] * 3
    job = queries.list_jobs(rig.store)[0]
    assert job.attempts == 3 and job.external_id == "rec-3"
    assert rig.store.group_states(["r"])[("r", "")].last_success_at is not None


async def test_permanent_failure_is_not_retried(rig_factory: Any) -> None:
    rig = rig_factory({"retry": {"attempts": 5, "backoff": "10ms"}})
    rig.backend.script = ["permanent"]
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed"})
    job = queries.list_jobs(rig.store)[0]
    assert job.attempts == 1 and job.detail == "scripted permanent failure"
    assert job.status == JobStatus.FAILED and job.finished_at is not None


async def test_retries_exhausted_fail_the_job(rig_factory: Any) -> None:
    rig = rig_factory({"retry": {"attempts": 2, "backoff": "10ms"}})
    rig.backend.script = ["transient", "transient"]
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed"})
    assert len(rig.backend.calls) == 2


async def test_a_store_outage_delays_dispatch_but_loses_nothing(
        rig_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the database is unreachable the dispatcher keeps its jobs and retries; the job
    runs once it is back, and the outcome recorded during a second outage is not lost."""
    rig = rig_factory({})
    claims = fail_first(monkeypatch, rig.store, "claim", 3)
    finishes = fail_first(monkeypatch, rig.store, "finish_attempt", 2)
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "succeeded"}, timeout=30)
    assert len(rig.backend.calls) == 1
    assert claims["left"] == finishes["left"] == 0


async def test_a_job_waiting_for_a_slot_is_parked_not_polled(
        rig_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry that falls due while another job holds the only slot waits for that job to
    end; it must not hammer the store meanwhile."""
    rig = rig_factory({"on_busy": "queue", "retry": {"attempts": 2, "backoff": "1s"}})
    rig.backend.script = ["transient"]
    await rig.events(1)
    await until(lambda: rig.jobs().get("r.1") == "retrying")
    rig.backend.hold = True
    await rig.events(1)  # r.2 takes the slot long before r.1's backoff ends
    await until(lambda: rig.jobs() == {"r.1": "retrying", "r.2": "running"})
    retry_at = next(j.next_attempt_at for j in queries.list_jobs(rig.store) if j.id == "r.1")
    assert retry_at is not None
    await until(lambda: datetime.now(UTC) > retry_at + timedelta(milliseconds=100))
    claims = 0
    real = rig.store.claim

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rig.store, "claim", counting)
    await asyncio.sleep(1.0)  # measuring a rate over time: this sleep is the measurement
    assert claims <= 3  # without parking: hundreds
    assert rig.jobs() == {"r.1": "retrying", "r.2": "running"}
    rig.backend.release()
    await until(lambda: rig.jobs() == {"r.1": "succeeded", "r.2": "succeeded"})


async def test_coalesce_with_groups_wakes_the_other_groups_when_a_job_ends(
        rig_factory: Any) -> None:
    rig = rig_factory({"on_busy": "coalesce"}, group_by="{payload.dir}")
    rig.backend.hold = True
    await rig.events(1, dir="a")
    await until(lambda: rig.backend.calls)
    await rig.events(2, dir="b")  # the rule is busy with group a's job: b waits
    assert len(rig.backend.calls) == 1
    rig.backend.release()
    await until(lambda: len(rig.backend.calls) == 2)
    assert rig.backend.calls[1].group == "b" and len(rig.backend.calls[1].events) == 2


def test_retry_delay_doubles_jitters_within_the_cap_and_honours_retry_after() -> None:
    import random

    from triggerd.config.schema import RetrySpec
    from triggerd.dispatcher import retry_delay

    policy = RetrySpec(attempts=9, backoff="10s", max_backoff="1m")
    rng = random.Random(7)  # noqa: S311
    s = timedelta(seconds=1)
    for attempt, top in [(1, 10 * s), (2, 20 * s), (3, 40 * s), (4, 60 * s), (8, 60 * s)]:
        delays = {retry_delay(policy, attempt, rng=rng) for _ in range(50)}
        assert all(0.75 * top <= d <= top for d in delays), (attempt, delays)
        assert len(delays) > 40  # jittered: jobs failing together do not retry together
    assert retry_delay(policy, 1, retry_after=30, rng=rng) == 30 * s  # the server's floor
    assert retry_delay(policy, 1, retry_after=3600, rng=rng) == 60 * s  # within max_backoff
    # a server may send any number (found in review: this overflowed timedelta and left the
    # job `running` for good)
    assert retry_delay(policy, 1, retry_after=99999999999999, rng=rng) == 60 * s
    assert 7.5 * s <= retry_delay(policy, 1, retry_after=2, rng=rng) <= 10 * s


async def test_a_backend_retry_after_hint_delays_the_next_attempt(rig_factory: Any) -> None:
    rig = rig_factory({"retry": {"attempts": 2, "backoff": "10ms"}})
    attempts: list[datetime] = []

    class Busy:
        name = "rec"

        async def dispatch(self, ctx: Any, job: Any) -> Any:
            attempts.append(datetime.now(UTC))
            if len(attempts) == 1:
                raise TransientDispatchError("429 Too Many Requests", retry_after=0.5)
            return await rig.backend.dispatch(ctx, job)

    rig.dispatcher.backends["rec"] = Busy()
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "succeeded"})
    assert attempts[1] - attempts[0] >= timedelta(seconds=0.5)  # not the 10ms backoff


class Launching:
    """A `Launcher` backend: `launch` runs where the job is claimed, `dispatch` gets it."""

    name = "rec"

    def __init__(self, fail_launch: bool = False) -> None:
        self.fail_launch = fail_launch
        self.launches: list[tuple[str, int, str]] = []  # trigger, attempt, thread name
        self.handed: list[Any] = []  # what each dispatch found in job.launched

    def launch(self, ctx: Any, attempt: int) -> str:
        self.launches.append((ctx.trigger_id, attempt, threading.current_thread().name))
        if self.fail_launch:
            raise PermanentDispatchError("launch refused")
        return f"launched {ctx.trigger_id}#{attempt}"

    async def dispatch(self, ctx: Any, job: Any) -> DispatchResult:
        assert job.launched is not None and job.launched.done()
        started = job.launched.result()  # raises what launch raised
        self.handed.append(started)
        if job.attempt == 1:
            raise TransientDispatchError("first attempt fails")
        return DispatchResult(detail=started)


@pytest.mark.parametrize("fail_launch", [False, True])
async def test_a_launcher_backend_begins_each_attempt_on_the_store_thread(
        rig_factory: Any, fail_launch: bool) -> None:
    """Every attempt (the first and the retry) is launched on the thread that claimed it,
    before the loop sees the claim; its outcome, or its error, reaches `dispatch`."""
    rig = rig_factory({"retry": {"attempts": 2, "backoff": "10ms"}})
    store_thread = ThreadPoolExecutor(1, thread_name_prefix="store")
    loop = asyncio.get_running_loop()

    async def threaded(fn: Callable[[], Any]) -> Any:
        return await loop.run_in_executor(store_thread, fn)

    backend = Launching(fail_launch)
    rig.dispatcher.backends["rec"] = backend
    rig.dispatcher.call = rig.engine.call = threaded
    try:
        await rig.events(1)
        final = "failed" if fail_launch else "succeeded"
        await until(lambda: rig.jobs() == {"r.1": final})
    finally:
        store_thread.shutdown()
    job = queries.list_jobs(rig.store)[0]
    if fail_launch:  # a permanent error from launch: one attempt, its message recorded
        assert [a for _t, a, _n in backend.launches] == [1]
        assert job.detail == "launch refused" and backend.handed == []
    else:
        assert [(t, a) for t, a, _n in backend.launches] == [("r.1", 1), ("r.1", 2)]
        assert backend.handed == ["launched r.1#1", "launched r.1#2"]
        assert job.detail == "launched r.1#2"
    assert {n.split("_")[0] for _t, _a, n in backend.launches} == {"store"}


async def test_once_stopping_a_trigger_written_in_a_trip_under_way_is_not_launched(
        rig_factory: Any) -> None:
    """SIGTERM cancels the sources, but a store trip already under way still ends: its
    trigger's job must stay queued for the next start, not be launched with nobody left to
    follow it. A dispatcher of the next start dispatches it, once."""
    rig = rig_factory({})
    backend = Launching()
    rig.dispatcher.backends["rec"] = backend
    rig.dispatcher.stop_starting()
    # the trigger and its queued job, written; claim_fired ran in the same trip
    (trig,) = await rig.engine.fire("r", "manual")
    assert rig.dispatcher.claim_fired([trig]) == {}
    assert rig.jobs() == {"r.1": "queued"} and backend.launches == []

    restarted = Dispatcher(rig.config, rig.store, {"rec": backend}, SystemClock(), call,
                           "next-start")
    task = asyncio.create_task(restarted.run())
    try:
        restarted.submit("r.1")
        await until(lambda: rig.jobs() == {"r.1": "failed"})  # Launching fails attempt 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [t for t, _a, _n in backend.launches] == ["r.1"]


@pytest.mark.parametrize("loop", ["dispatcher", "timers"])
async def test_a_stop_arriving_as_the_loop_wakes_still_stops_it(store: Store, loop: str
                                                                   ) -> None:
    """On Python 3.11 `asyncio.wait_for` loses a cancellation that arrives in the iteration
    its event is set in; the dispatcher's and the timers' loops then ran on and a daemon's
    SIGTERM hung (seen in CI: a job ending, or a decision waking the timers, as the daemon
    cancelled its tasks)."""
    rig = Rig(store, {})
    later = datetime.now(UTC) + timedelta(hours=1)  # so the loop waits with a timeout
    if loop == "dispatcher":
        rig.dispatcher.submit("r.404", later)  # a retry due in an hour
        task = asyncio.create_task(rig.dispatcher.run())
        wake = functools.partial(rig.dispatcher.submit, "r.405")
    else:
        rig.engine.due[("r", "")] = later  # a debounce timer due in an hour
        task = asyncio.create_task(rig.engine.run_timers())
        wake = rig.engine.poke
    for _ in range(5):  # let the task reach its wait (yields, not a timed sleep)
        await asyncio.sleep(0)
    wake()
    task.cancel()  # the same iteration as the wake-up
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()


class Buggy:
    """A (plugin) backend with a bug: its first attempt raises KeyError, later ones succeed."""

    name = "rec"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def dispatch(self, ctx: Any, job: Any) -> DispatchResult:
        self.calls.append(ctx.trigger_id)
        if len(self.calls) == 1:
            raise KeyError("model")
        return DispatchResult(external_id=f"ok-{ctx.trigger_id}", detail="done")


async def test_a_backend_bug_fails_the_job_once_and_the_next_trigger_still_dispatches(
        rig_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = rig_factory({"retry": {"attempts": 3, "backoff": "10ms"}})
    buggy = Buggy()
    rig.dispatcher.backends["rec"] = buggy
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed"})
    job = queries.list_jobs(rig.store)[0]
    # not retried: the backend may have acted before it broke
    assert job.attempts == 1 and buggy.calls == ["r.1"]
    assert job.detail == "internal error in backend rec: KeyError: 'model'"
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [KeyError]
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed", "r.2": "succeeded"})
    assert not rig.dispatcher.running


class BrokenMetrics:
    """Bookkeeping with a bug: recording the end of the first attempt raises."""

    def __init__(self) -> None:
        self.finished = 0

    def attempt_started(self, *args: Any) -> None:
        pass

    def attempt_finished(self, *args: Any) -> None:
        self.finished += 1
        if self.finished == 1:
            raise ZeroDivisionError("division by zero")


async def test_a_bookkeeping_bug_after_dispatch_fails_the_job_instead_of_stranding_it(
        rig_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = rig_factory({"retry": {"attempts": 3, "backoff": "10ms"}})
    rig.dispatcher.metrics = BrokenMetrics()
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed"})
    job = queries.list_jobs(rig.store)[0]
    assert job.detail == "internal error: ZeroDivisionError: division by zero"
    assert job.finished_at is not None and job.attempts == 1
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ZeroDivisionError]
    await rig.events(1)
    await until(lambda: rig.jobs() == {"r.1": "failed", "r.2": "succeeded"})
    assert not rig.dispatcher.running


def take_over(store: Store, job_id: str, by: str) -> Any:
    """Another replica, `by`, finds this daemon ("test-owner", never registered: silent) dead,
    gives its running job back and claims it: attempt 2 is `by`'s."""
    now = datetime.now(UTC)
    store.register_daemon(by, now)
    store.recover_jobs(by, now, now)
    return claim_job(store, job_id, by, 10, now)


async def test_an_attempt_whose_job_was_taken_over_is_abandoned_not_recorded_nor_retried(
        rig_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Fencing, deterministically: the attempt is under way when another replica takes the
    job over (this daemon was paused past the cutoff) and claims it. When the old attempt
    ends (here with a retryable failure) its outcome is refused by the store, and this daemon
    neither records it nor schedules a retry: the job is the other replica's."""
    rig = rig_factory({"retry": {"attempts": 3, "backoff": "10ms"}})
    rig.backend.hold = True
    rig.backend.script = ["transient"]
    await rig.events(1)
    await asyncio.wait_for(rig.backend.started.wait(), 10)
    theirs = take_over(rig.store, "r.1", "replica-b")
    assert theirs is not None and theirs.attempts == 2
    rig.backend.release()
    await until(lambda: not rig.dispatcher.running)
    job = queries.job(rig.store, "r.1")
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 2)
    assert rig.store.holds("r.1", "replica-b", 2) and job.detail != "scripted transient failure"
    assert "r.1" not in rig.dispatcher.wanted  # no retry from here
    assert any("taken over by another daemon as it ended" in r.getMessage()
               for r in caplog.records)
    assert rig.store.finish_attempt("r.1", "replica-b", JobStatus.SUCCEEDED,
                                    datetime.now(UTC), attempt=2)


async def test_a_claim_taken_over_before_its_attempt_began_never_reaches_the_backend(
        rig_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon paused between claiming a job and starting its attempt (here: the takeover
    happens in the claim's own trip, and the claim is treated as old) checks the claim first
    and, finding it gone, does not call the backend."""
    monkeypatch.setattr(dispatcher_module, "FENCE_AFTER", -1.0)
    rig = rig_factory({})
    real = rig.engine.call
    lost: list[str] = []

    async def claim_then_lose_it(fn: Callable[[], Any]) -> Any:
        done = await real(fn)  # the trip that wrote the trigger and claimed its job
        for job_id, claim in done.claims.items():
            if claim.job is not None:
                take_over(rig.store, job_id, "replica-b")
                lost.append(job_id)
        return done
    rig.engine.call = claim_then_lose_it
    await rig.events(1)
    assert lost == ["r.1"]
    await until(lambda: not rig.dispatcher.running)
    assert rig.store.holds("r.1", "replica-b", 2)
    assert rig.backend.calls == []
