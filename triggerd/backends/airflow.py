"""The `airflow` backend: trigger a DAG run through Airflow's stable REST API.

Contract (see `triggerd.interfaces.Backend`):

- API: `/api/v2` (Airflow 3) or `/api/v1` (Airflow 2), set with `api:` or detected (`auto`,
  the default: the first of `/api/v2/version`, `/api/v1/version` that exists, once per
  backend). Auth: `token_env` names a variable holding a ready bearer token; otherwise
  `username` + `password_env`: Airflow 3 exchanges them for a token at `POST /auth/token`
  (again once when the token is refused), Airflow 2 takes them as basic auth. A secret comes
  from the named variable, or from the file named by `<name>_FILE`; it never appears in a
  detail or a log.
- Trigger: `POST /dags/{dag_id}/dagRuns` with `dag_run_id` = trigger id and `conf` = the
  trigger context (Airflow 3 also gets `logical_date: null`, which it requires; it rejects
  unknown fields). `dag_id` is a template (`retrain_{params.model}`). The job's external id is
  the run id, recorded as soon as the run exists.
- Idempotency: a 409 (Airflow 3's body does not say "already exists", so only the status
  counts) means an earlier attempt, or a daemon that crashed, created this run: that is
  success, and with `wait` the existing run is followed. So a retry or a restart never starts
  a second run for one trigger.
- `wait: true` polls `GET .../dagRuns/{run_id}` every `poll_interval` until a final state:
  `success` succeeds; `failed` (or any other final state) fails the job permanently, naming
  the failed tasks (a retry would only find the same run). Unreachable Airflow or 5xx while
  polling is logged and polled again: the run goes on without us. `timeout` bounds the wait
  (the run is left alone in Airflow). Without `wait` the job succeeds once the run exists.
- A run of a paused DAG stays `queued`: the detail says so (and a waiting job logs it).
- Errors: connection failures, timeouts (also mid-body), a connection reset mid-body, 429
  (with its `Retry-After`) and 5xx are transient (retried under the rule's retry policy);
  401/403, a redirect (not followed), an unknown DAG (404), a refused request (400/422, with
  the start of Airflow's answer) and a dag_id that renders to an invalid id are permanent. The
  rendered dag_id is checked as a whole against Airflow's own rule (`^[\\w.-]+$`, at most 250
  characters; `.` and `..` refused) before any request, and every id in a URL path is
  percent-encoded.
- Odd answers: a 2xx to the POST whose body is not JSON, is cut short or has the wrong shape
  still means the run was created (its id is ours, the trigger id): the job goes on (state
  "unknown"; with `wait`, the run is followed) and never creates it again. When the answer
  is lost after Airflow acted (a reset mid-body, a timeout), the attempt is transient and
  the retry's 409 finds the run. A poll answer without a usable `state` counts as
  "unknown": polling goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, field_validator, model_validator

from triggerd.backends._airflow_api import AirflowApi, Credentials, Reply, path_part
from triggerd.plugin import (
    DispatchResult,
    Duration,
    ExpressionError,
    JobHandle,
    PermanentDispatchError,
    Strict,
    Template,
    TransientDispatchError,
    TriggerContext,
    format_duration,
    read_secret,
)

log = logging.getLogger(__name__)

_DAG_ID = re.compile(r"[\w.-]+")  # Airflow's KEY_REGEX (`^[\w.-]+$`), matched as a whole
_DAG_ID_MAX = 250  # Airflow's ID_LEN
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_WAITING = frozenset({"queued", "running", "restarting", "scheduled", "up_for_retry",
                      "up_for_reschedule", "deferred", "none", ""})
_PAUSED_RECHECK = 60.0  # seconds between two checks of a queued run's DAG being paused


class AirflowOptions(Strict):
    type: Literal["airflow"]
    """Triggers a DAG run through Airflow's stable REST API, dag_run_id = trigger id."""
    url: str = Field(description="Airflow's base URL (the API is below /api/v1 or /api/v2)")
    dag_id: str = Field(description="template, e.g. retrain_{params.model}")
    api: Literal["auto", "v1", "v2"] = "auto"
    """v2 for Airflow 3, v1 for Airflow 2; auto detects it."""
    username: str | None = None
    """Basic auth (v1) or the token endpoint's user (v2), with `password_env`."""
    password_env: str | None = Field(None, pattern=_ENV_NAME)
    """The variable holding the password."""
    token_env: str | None = Field(None, pattern=_ENV_NAME)
    """The variable holding a bearer token (instead of a user and password)."""
    wait: bool = False
    """Follow the run to its end: success -> succeeded, failed -> failed."""
    poll_interval: Duration = timedelta(seconds=5)
    timeout: Duration | None = Field(None, description="give up waiting for the run after this")
    request_timeout: Duration = timedelta(seconds=30)
    verify_tls: bool = True
    """Check Airflow's certificate."""

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if url.username is not None or url.password is not None:
            raise ValueError("must not hold credentials: use username with password_env, "
                             "or token_env")
        if url.query or url.fragment:
            raise ValueError("must not have a query or a fragment")
        return value

    @field_validator("dag_id")
    @classmethod
    def _template_compiles(cls, value: str) -> str:
        try:
            Template(value)
        except ExpressionError as exc:
            raise ValueError(f"{exc} in {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> AirflowOptions:
        if self.token_env is not None and (self.username or self.password_env):
            raise ValueError("set either token_env or username with password_env, not both")
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        if self.poll_interval <= timedelta(0) or self.request_timeout <= timedelta(0):
            raise ValueError("poll_interval and request_timeout must be positive")
        return self


class AirflowBackend:
    """Triggers (and with `wait`, follows) one DAG run per trigger; see the module docstring."""

    Options = AirflowOptions

    def __init__(self, name: str, options: AirflowOptions, state_dir: Path | None = None) -> None:
        self.name = name
        self.options = options
        self._dag_id = Template(options.dag_id)
        self.api = AirflowApi(name, options.url, options.api)
        self._creds = self._credentials()  # at start: a missing secret is a config error

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        dag_id = self._render_dag_id(ctx, job.attempt)
        creds = self._creds
        run_id = ctx.trigger_id
        conf = json.loads(json.dumps(ctx.to_dict(), default=str))  # JSON, whatever a payload held
        async with self._session() as session:
            call = _Calls(self.api, session, creds, dag_id, run_id)
            created, state = await self._trigger(call, conf)
            await job.set_external_id(run_id)
            how = "created" if created else "already existed (created by an earlier attempt)"
            log.info("backend %s: trigger %s: DAG run %s of %s %s", self.name, run_id, run_id,
                     dag_id, how)
            if not self.options.wait:
                detail = f"DAG run {run_id} of {dag_id} {how}; state {state}"
                if state == "queued" and await call.paused():
                    detail += f"; {_paused_note(dag_id)}"
                return DispatchResult(external_id=run_id, detail=detail)
            return await self._follow(call, created)

    def _render_dag_id(self, ctx: TriggerContext, attempt: int) -> str:
        try:
            dag_id = self._dag_id.render({**ctx.to_dict(), "attempt": attempt})
        except ExpressionError as exc:
            raise PermanentDispatchError(
                f"template dag_id of backends.{self.name}: {exc.message}") from exc
        if not valid_dag_id(dag_id):
            shown = dag_id if len(dag_id) <= 80 else dag_id[:80] + "..."
            raise PermanentDispatchError(
                f"dag_id renders to {shown!r}, not a valid Airflow DAG id (1 to {_DAG_ID_MAX} "
                f"letters, digits, '_', '.', '-', not '.' or '..'; this one has {len(dag_id)} "
                f"characters); check backends.{self.name}.dag_id and the params it uses")
        return dag_id

    def _credentials(self) -> Credentials:
        o = self.options
        if o.token_env is not None:
            return Credentials(token=read_secret(o.token_env, f"backends.{self.name}.token_env"))
        if o.password_env is not None:
            where = f"backends.{self.name}.password_env"
            return Credentials(username=o.username, password=read_secret(o.password_env, where))
        return Credentials()

    def _session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout.total_seconds())
        connector = aiohttp.TCPConnector(ssl=self.options.verify_tls)
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def _trigger(self, call: _Calls, conf: dict[str, Any]) -> tuple[bool, str]:
        """Create the run; (True, state) when created, (False, state) when it existed."""
        body: dict[str, Any] = {"dag_run_id": call.run_id, "conf": conf}
        if await self.api.detect(call.session) == "v2":
            body["logical_date"] = None  # required by Airflow 3; null means "now, no date"
        reply = await call.request("POST", f"/dags/{path_part(call.dag_id)}/dagRuns", body)
        if 200 <= reply.status < 300:  # (any 2xx: Airflow answers 200; a proxy may differ)
            return True, _state(reply)
        if reply.status == 409:  # by status alone: Airflow 3's body does not say why
            existing = await call.request("GET", call.run_path)
            return False, _state(existing) if existing.status == 200 else "unknown"
        if reply.status == 404:
            raise PermanentDispatchError(
                f"DAG {call.dag_id!r} not found in Airflow at {self.api.base_url} (HTTP 404: "
                f"{reply.snippet()}); check backends.{self.name}.dag_id")
        raise PermanentDispatchError(
            f"Airflow refused to create DAG run {call.run_id} of {call.dag_id}: HTTP "
            f"{reply.status}: {reply.snippet()}")

    async def _follow(self, call: _Calls, created: bool) -> DispatchResult:
        """Poll the run until it ends (or `timeout`); see the module docstring."""
        interval = self.options.poll_interval.total_seconds()
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout.total_seconds() if timeout else None
        state, problem, paused, paused_checked = "unknown", "", False, -_PAUSED_RECHECK
        while True:
            try:
                reply = await call.request("GET", call.run_path)
                if reply.status == 404:
                    raise PermanentDispatchError(
                        f"DAG run {call.run_id} of {call.dag_id} disappeared from Airflow "
                        "while being followed (deleted?)", external_id=call.run_id)
                if reply.status != 200:
                    raise TransientDispatchError(
                        f"GET DAG run answered HTTP {reply.status}: {reply.snippet()}")
                state, problem = _state(reply), ""
                if state == "queued" and time.monotonic() - paused_checked >= _PAUSED_RECHECK:
                    was_paused, paused = paused, await call.paused()
                    paused_checked = time.monotonic()
                    if paused and not was_paused:
                        log.warning("backend %s: trigger %s: %s", self.name, call.run_id,
                                    _paused_note(call.dag_id))
            except TransientDispatchError as exc:  # the run goes on; keep following it
                if not problem:
                    log.warning("backend %s: trigger %s: cannot poll DAG run (%s); polling "
                                "again", self.name, call.run_id, exc.detail)
                problem = exc.detail
            if state == "success":
                again = "" if created else " (followed the run created by an earlier attempt)"
                return DispatchResult(external_id=call.run_id,
                                      detail=f"DAG run {call.run_id} of {call.dag_id} "
                                             f"succeeded{again}")
            if state not in _WAITING and state != "unknown":
                raise PermanentDispatchError(await self._failed_detail(call, state),
                                             external_id=call.run_id)
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None  # noqa: S101 - a deadline implies a timeout
                detail = (f"gave up waiting after {format_duration(timeout)}: DAG run "
                          f"{call.run_id} of {call.dag_id} is still {state} (left running in "
                          "Airflow)")
                if paused and state == "queued":
                    detail += f"; {_paused_note(call.dag_id)}"
                if problem:
                    detail += f"; last poll failed: {problem}"
                raise PermanentDispatchError(detail, external_id=call.run_id)
            await asyncio.sleep(interval)

    async def _failed_detail(self, call: _Calls, state: str) -> str:
        detail = f"DAG run {call.run_id} of {call.dag_id} ended in state {state}"
        try:
            reply = await call.request("GET", f"{call.run_path}/taskInstances")
        except (TransientDispatchError, PermanentDispatchError):
            return detail
        found = reply.json() if reply.status == 200 else None
        items = found.get("task_instances") if isinstance(found, dict) else None
        failed = sorted({str(ti.get("task_id"))[:250]
                         for ti in (items if isinstance(items, list) else [])
                         if isinstance(ti, dict) and ti.get("state") in ("failed",
                                                                         "upstream_failed")})
        if failed:
            detail += f"; failed tasks: {', '.join(failed)}"
        return detail


class _Calls:
    """The requests of one job: one session, one DAG, one run."""

    def __init__(self, api: AirflowApi, session: aiohttp.ClientSession, creds: Credentials,
                 dag_id: str, run_id: str) -> None:
        self.api = api
        self.session = session
        self.creds = creds
        self.dag_id = dag_id
        self.run_id = run_id
        self.run_path = f"/dags/{path_part(dag_id)}/dagRuns/{path_part(run_id)}"

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None
                      ) -> Reply:
        return await self.api.request(self.session, self.creds, method, path, body)

    async def paused(self) -> bool:
        """Whether the DAG is paused (False when Airflow cannot tell us)."""
        try:
            reply = await self.request("GET", f"/dags/{path_part(self.dag_id)}")
        except (TransientDispatchError, PermanentDispatchError):
            return False
        body = reply.json() if reply.status == 200 else None
        return isinstance(body, dict) and body.get("is_paused") is True


def valid_dag_id(dag_id: str) -> bool:
    """Airflow's own rule for a DAG id (`validate_key`: KEY_REGEX, at most ID_LEN characters),
    and not `.` or `..`, which would change the meaning of the URL path it goes into."""
    return 0 < len(dag_id) <= _DAG_ID_MAX and _DAG_ID.fullmatch(dag_id) is not None \
        and dag_id not in (".", "..")


def _state(reply: Reply) -> str:
    """The run's `state`, or "unknown" when the answer does not hold one as a string."""
    body = reply.json()
    state = body.get("state") if isinstance(body, dict) else None
    return state if isinstance(state, str) and len(state) <= 100 else "unknown"


def _paused_note(dag_id: str) -> str:
    return f"DAG {dag_id} is paused: the run stays queued until the DAG is unpaused"
