"""The `command` backend: run an argv list (never a shell) for each trigger.

Contract (see `triggerd.interfaces.Backend`):

- Every argv item, `workdir` and every `env` value is a `Template` over the trigger context
  (`trigger_id`, `rule`, `group`, `fired_at`, `reason`, `manual`, `params.*`, `events.N.*`,
  `attempt`). A rendered value is always exactly one argv item or env value: it never becomes
  shell syntax. Templates are checked when the backend is built (the config loader reports
  `ExpressionError`); a field without a value at dispatch time fails the job permanently.
- The child runs in its own session/process group with stdin on /dev/null and the environment
  of the daemon (when `inherit_env`) minus the secrets the config names for other components
  (every variable named by a `*_env` option, e.g. a Kafka source's `password_env`, and its
  `<NAME>_FILE`: see `InheritsEnvironment`), plus the rendered `env` (which may pass such a
  secret on explicitly:
  `env: {KAFKA_PASSWORD: "${KAFKA_PASSWORD}"}`), plus
  `TRIGGERD_TRIGGER_ID`, `TRIGGERD_RULE`, `TRIGGERD_TRIGGER_FILE` (absolute path of a JSON file
  holding the trigger context) and `TRIGGERD_ATTEMPT`. `argv[0]` without a slash is looked up
  in the PATH of that environment; a relative `workdir` is relative to the daemon's cwd.
- Files live in `<state_dir>/jobs/<trigger id>/`: `trigger.json` and `output.log` (stdout and
  stderr, the first `output_limit` bytes of the latest attempt). The job detail keeps the last
  `tail` characters of the output, and says when the file was truncated. `trigger.json` is
  written before the command starts; `output.log` is opened just after (the output waits in
  the pipe), and if it cannot be, the job still runs and its detail says so.
- Idempotency: the backend cannot stop a command from acting twice, so the command must use
  `TRIGGERD_TRIGGER_ID` as its idempotency key: a retry or a restart after a crash runs it again.
- Outcomes: an exit code in `success_codes` succeeds. A spawn that cannot work (command not
  found or not executable, workdir missing, template field missing) raises
  `PermanentDispatchError`. Any other exit code, death by a signal and a timeout raise
  `TransientDispatchError`; the rule's retry policy decides whether another attempt runs.
- Timeout: SIGTERM to the process group, SIGKILL to the group after `kill_grace` if anything in
  it is left. A process that left the group (its own `setsid`) is out of reach.
- Cancellation (daemon shutdown): the child is NOT killed. Its output keeps being captured while
  the loop runs; once the daemon exits, the child's stdout/stderr pipe has no reader, so a
  command meant to outlive the daemon must redirect its own output. After the direct child
  exits, background processes still holding the output pipe are not waited for (nor killed).
- `env` values may hold secrets: they never appear in a detail or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import Field, model_validator

from triggerd.backends._capture import Capture
from triggerd.backends._child import Child, spawn
from triggerd.plugin import (
    DispatchResult,
    Duration,
    ExpressionError,
    InheritsEnvironment,
    JobHandle,
    PermanentDispatchError,
    Size,
    Template,
    TransientDispatchError,
    TriggerContext,
    format_duration,
)

log = logging.getLogger(__name__)

_DRAIN_AFTER_EXIT = 2.0  # seconds to wait for EOF once the direct child has exited
_GROUP_POLL = 0.05


class CommandOptions(InheritsEnvironment):
    type: Literal["command"]
    """Runs a program for each job (never through a shell)."""
    argv: Annotated[list[str], Field(min_length=1)]
    """The program and its arguments; each item a template (`{params.model}`, `{trigger_id}`), one
    argument whatever it holds."""
    workdir: str | None = None
    """Working directory (a template); default: where the daemon runs."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables (values are templates); TRIGGERD_TRIGGER_ID, TRIGGERD_RULE,
    TRIGGERD_TRIGGER_FILE and TRIGGERD_ATTEMPT are always set."""
    inherit_env: bool = True
    """Start from the daemon's environment (minus the secrets the config names for other parts);
    false: an empty one, with only `env` and the TRIGGERD_* variables."""
    timeout: Duration | None = None
    """Kill the process group after this long (the attempt fails, and may be retried)."""
    kill_grace: Duration = timedelta(seconds=10)
    """After SIGTERM, wait this long before SIGKILL."""
    output_limit: Size = 1024 * 1024
    """Bytes of output (stdout and stderr) kept in <state_dir>/jobs/<trigger id>/output.log:
    the first ones of the latest attempt."""
    tail: Annotated[int, Field(ge=0)] = 2000
    """Characters of the output's end kept in the job's `detail`."""
    success_codes: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [0])
    """Exit codes that mean success."""

    @model_validator(mode="after")
    def _templates_compile(self) -> CommandOptions:
        """Bad templates are config errors (`triggerd check`), not start-up crashes."""
        for i, item in enumerate(self.argv):
            _checked(f"argv[{i}]", item)
        if self.workdir is not None:
            _checked("workdir", self.workdir)
        for key, value in self.env.items():
            try:
                _env_template(key, value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return self


class CommandBackend:
    """Runs `options.argv` once per attempt; see the module docstring for the contract."""

    Options = CommandOptions

    def __init__(self, name: str, options: CommandOptions, state_dir: Path) -> None:
        self.name = name
        self.options = options
        self._jobs_dir = Path(state_dir) / "jobs"
        self._argv = [Template(item) for item in options.argv]
        self._workdir = Template(options.workdir) if options.workdir is not None else None
        self._env = {key: _env_template(key, value) for key, value in options.env.items()}
        self._background: set[asyncio.Task[None]] = set()

    def launch(self, ctx: TriggerContext, attempt: int) -> _Started:
        """Blocking: render the templates, write the job's files and start the child (the
        dispatcher runs it on the store thread right after claiming the job; `dispatch` runs
        it in a worker thread when it was not). If `dispatch` is never called for it (the
        daemon stopped in between), the child runs on unfollowed, as after a cancellation."""
        context = ctx.to_dict()
        values = {**context, "attempt": attempt}
        argv = [self._render(t, values, f"argv[{i}]") for i, t in enumerate(self._argv)]
        if not argv[0]:
            raise PermanentDispatchError(f"argv[0] is empty; check backends.{self.name}.argv")
        workdir = self._render(self._workdir, values, "workdir") if self._workdir else None
        env = _inherited_env(self.options) if self.options.inherit_env else {}
        env.update({k: self._render(t, values, f"env.{k}") for k, t in self._env.items()})
        job_dir = (self._jobs_dir / _safe_name(ctx.trigger_id)).absolute()
        env.update(TRIGGERD_TRIGGER_ID=ctx.trigger_id, TRIGGERD_RULE=ctx.rule,
                   TRIGGERD_TRIGGER_FILE=str(job_dir / "trigger.json"),
                   TRIGGERD_ATTEMPT=str(attempt))
        try:
            started = _prepare(job_dir, context, workdir, argv, env)
        except _SpawnFailed as exc:
            raise self._spawn_error(exc.error, argv[0], workdir) from exc.error
        if started is None:
            raise PermanentDispatchError(
                f"workdir does not exist: {workdir!r}; check backends.{self.name}.workdir")
        return started

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        if job.launched is not None:  # the dispatcher ran `launch` already: its outcome
            started: _Started = job.launched.result()
        else:
            # one trip to a worker thread for the file work and the spawn; shielded, so a
            # child started as the daemon stops is still followed (its output captured)
            work = asyncio.ensure_future(asyncio.to_thread(self.launch, ctx, job.attempt))
            try:
                started = await asyncio.shield(work)
            except asyncio.CancelledError:
                work.add_done_callback(self._adopt)
                raise
        proc = started.child
        external_id = f"pid:{proc.pid}"
        log.info("backend %s: trigger %s attempt %d started %s",
                 self.name, ctx.trigger_id, job.attempt, external_id)
        capture, reader = self._capture(started)
        try:
            await job.set_external_id(external_id)
            code, timed_out = await self._wait(proc)
            await asyncio.wait({reader}, timeout=_DRAIN_AFTER_EXIT)
        except BaseException:
            # Cancellation (shutdown) or a failing store: the child is left running.
            self._detach(proc, reader, external_id)
            raise
        if not reader.done():
            capture.notes.append("a background process still holds the output open")
            self._detach(proc, reader, external_id)

        log.info("backend %s: trigger %s %s exited with %d%s", self.name, ctx.trigger_id,
                 external_id, code, " after timeout" if timed_out else "")
        if timed_out:
            assert self.options.timeout is not None  # noqa: S101 - timed_out implies a timeout
            headline = f"timed out after {format_duration(self.options.timeout)}; " \
                       "killed process group"
        elif code in self.options.success_codes:
            return DispatchResult(external_id=external_id, exit_code=code,
                                  detail=capture.detail(None) or f"exit code {code}, no output")
        elif code < 0:
            headline = f"killed by {_signal_name(-code)}"
        else:
            headline = f"exit code {code}"
        raise TransientDispatchError(capture.detail(headline) or headline, exit_code=code,
                                     external_id=external_id)

    def _render(self, template: Template, values: dict[str, Any], where: str) -> str:
        try:
            return template.render(values)
        except ExpressionError as exc:
            raise PermanentDispatchError(
                f"template {where} of backends.{self.name}: {exc.message}") from exc

    def _spawn_error(self, exc: OSError, program: str, workdir: str | None) -> Exception:
        where = f"check backends.{self.name}"
        if workdir is not None and exc.filename == workdir:
            return PermanentDispatchError(
                f"cannot use workdir {workdir!r}: {exc.strerror}; {where}.workdir")
        if isinstance(exc, FileNotFoundError):
            return PermanentDispatchError(f"command not found: {program!r} (argv[0]); {where}.argv")
        if isinstance(exc, PermissionError):
            return PermanentDispatchError(
                f"command not executable: {program!r} (argv[0]); {where}.argv")
        return PermanentDispatchError(f"cannot run {program!r} (argv[0]): {exc.strerror or exc}")

    async def _wait(self, proc: Child) -> tuple[int, bool]:
        """Wait for the direct child; on timeout terminate its whole process group."""
        timeout = self.options.timeout
        if timeout is None:
            return await proc.wait(), False
        try:
            async with asyncio.timeout(timeout.total_seconds()):
                return await proc.wait(), False
        except TimeoutError:
            pass
        pgid = proc.pid  # start_new_session: the child leads its own group
        _signal_group(pgid, signal.SIGTERM)
        polls = max(1, round(self.options.kill_grace.total_seconds() / _GROUP_POLL))
        for _ in range(polls):  # the group, not just the child: grandchildren count too
            if not _signal_group(pgid, 0):
                break
            await asyncio.sleep(_GROUP_POLL)
        else:
            _signal_group(pgid, signal.SIGKILL)
        return await proc.wait(), True

    def _capture(self, started: _Started) -> tuple[Capture, asyncio.Task[None]]:
        capture = Capture(self.options.output_limit, self.options.tail,
                           keeping=started.output is not None)
        if started.output is None:
            capture.notes.append(f"output.log could not be opened ({started.output_error}); "
                                 "the output was not kept")
        return capture, asyncio.create_task(capture.drain(started.read_fd, started.output))

    def _adopt(self, work: asyncio.Future[_Started]) -> None:
        """Follow a child whose spawn finished after its dispatch was cancelled."""
        if work.cancelled() or work.exception() is not None:
            return
        started = work.result()
        _capture, reader = self._capture(started)
        self._detach(started.child, reader, f"pid:{started.child.pid}")

    def _detach(self, proc: Child, reader: asyncio.Task[None],
                external_id: str) -> None:
        """Keep following a child we no longer wait for, so its output pipe never blocks."""
        async def follow() -> None:
            code = await proc.wait()
            await reader
            log.info("backend %s: detached %s exited with %d", self.name, external_id, code)

        task = asyncio.create_task(follow())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _inherited_env(options: CommandOptions) -> dict[str, str]:
    """The daemon's environment without the secrets the config names (`*_env` options), nor
    `<NAME>_FILE`, the path of a file holding the secret (`triggerd.backends._common`)."""
    withheld = options.withheld_env
    return {k: v for k, v in os.environ.items()
            if k not in withheld and not (k.endswith("_FILE") and k[:-5] in withheld)}


def _checked(where: str, text: str) -> None:
    try:
        Template(text)
    except ExpressionError as exc:
        raise ValueError(f"{where}: {exc} in {text!r}") from None


def _env_template(key: str, value: str) -> Template:
    try:
        return Template(value)
    except ExpressionError as exc:  # the value may hold a secret: do not quote it
        raise ExpressionError(f"env {key}: invalid template (value not shown); write a "
                              "literal brace as {{ or }}", column=exc.column) from None


def _safe_name(trigger_id: str) -> str:
    """A file name for the job dir; ids are already `[A-Za-z0-9._-]`, others get a hash."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", trigger_id).lstrip(".")[:150]
    if name != trigger_id:
        digest = hashlib.blake2b(trigger_id.encode("utf-8", "surrogateescape"), digest_size=6)
        name = f"{name}-{digest.hexdigest()}"
    return name


class _SpawnFailed(Exception):
    """The child could not be started (as opposed to the job's file work failing)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Started:
    output: BinaryIO | None  # output.log, written by the drain (None: could not be opened)
    read_fd: int  # the read end of the child's stdout and stderr
    child: Child
    output_error: str | None = None


def _prepare(job_dir: Path, context: dict[str, Any], workdir: str | None, argv: list[str],
             env: dict[str, str]) -> _Started | None:
    """Write the trigger file, start the child, then open the output file (blocking: see
    `CommandBackend.launch`); None if `workdir` does not exist. Nothing stays open if the
    spawn fails."""
    if workdir is not None and not os.path.isdir(workdir):
        return None
    _write_trigger_file(job_dir, context)  # before the spawn: the child may read it at once
    # Our own pipe rather than a transport's: a background grandchild holding it open must
    # not delay the exit code.
    read_fd, write_fd = os.pipe()
    try:
        child = Child(spawn(argv, stdout=write_fd, cwd=workdir, env=env))
    except BaseException as exc:
        os.close(read_fd)
        if isinstance(exc, OSError):
            raise _SpawnFailed(exc) from exc
        raise
    finally:
        os.close(write_fd)
    # After the spawn (the output waits in the pipe meanwhile): creating a file on a disk
    # is slow on the way from the event to the running job. A child already
    # running is followed even if this fails: its output is drained, not kept.
    try:
        output = open(job_dir / "output.log", "wb", buffering=0)  # noqa: SIM115 - drain closes
    except OSError as exc:
        return _Started(None, read_fd, child, exc.strerror or str(exc))
    return _Started(output, read_fd, child)


def _write_trigger_file(job_dir: Path, context: dict[str, Any]) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    path = (job_dir / "trigger.json").absolute()
    tmp = path.with_name(f".trigger.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(context, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists (0 only probes)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_name(number: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return f"signal {number}"
