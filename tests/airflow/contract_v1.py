"""A small HTTP server that follows Airflow 2's documented `/api/v1` dagRuns contract.

Real Airflow 2 does not fit the suite's time budget, so the `/api/v1` side of the airflow
backend is tested against this server, which implements only what the backend relies on, as
Airflow 2's stable REST API documents it (apache-airflow 2.x, `api/v1/openapi/v1.yaml`):

- `GET /api/v1/version` -> 200 `{"version": "2.10.5", "git_version": null}` (no auth).
  Nothing is served under `/api/v2`: a probe there gets 404, as from Airflow 2.
- Basic auth (the `basic_auth` API backend) on every other route: 401 without or with wrong
  credentials.
- `POST /api/v1/dags/{dag_id}/dagRuns` with a JSON DAGRun body (`dag_run_id`, `conf` must be
  an object, optional `logical_date`/`execution_date`/`note`; other fields are rejected with
  400): 200 with the DAGRun (`dag_id`, `dag_run_id`, `state: "queued"`, `conf`, ...) on
  create, 409 when the run id exists for the DAG, 404 for an unknown DAG.
- `GET /api/v1/dags/{dag_id}` -> 200 with `is_paused`; 404 for an unknown DAG.
- `GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}` -> 200 with `state` (`queued`, `running`,
  `success`, `failed`); 404 when unknown.
- `GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances` -> 200
  `{"task_instances": [{"task_id", "state"}...], "total_entries"}`.

Tests drive the run states (`set_state`) and inject faults (`fail_next`: answer the next
requests with a given status, e.g. 503). `after_create` makes the next successful POSTs
misbehave *after* the run was created, as a proxy or a crashing webserver in front of Airflow
can (outside the documented contract, on purpose): `garbage` (200, an HTML body), `list`
(200, a JSON list), `huge` (200, 2 MiB of JSON), `empty-202` (202, no body), `cut` (200
with a Content-Length, half the body, then the connection closes), `stall` (200 and half the
body, then silence).
`odd_runs` does the same to the next GETs of a run (`garbage`, `list`, `stall`), and
`redirect_next` answers the next request with a 307 to another host.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ALLOWED_FIELDS = {"dag_run_id", "conf", "logical_date", "execution_date", "note"}


@dataclass
class Run:
    dag_id: str
    run_id: str
    conf: dict[str, Any]
    state: str = "queued"
    failed_tasks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "dag_run_id": self.run_id, "state": self.state,
                "conf": self.conf, "logical_date": "2024-05-01T12:00:00+00:00",
                "external_trigger": True}


class ContractV1:
    def __init__(self, dags: dict[str, bool], username: str, password: str) -> None:
        self.dags = dict(dags)  # dag id -> is_paused
        self.credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.runs: dict[tuple[str, str], Run] = {}
        self.requests: list[tuple[str, str, Any]] = []  # method, path, JSON body
        self.faults: list[int] = []
        self.after_create: list[str] = []
        self.odd_runs: list[str] = []
        self.redirect_next = False
        self._stopping = asyncio.Event()  # ends the `stall` answers
        self.url = ""
        self._runner: web.AppRunner | None = None

    def set_state(self, dag_id: str, run_id: str, state: str,
                  failed_tasks: list[str] | None = None) -> None:
        run = self.runs[(dag_id, run_id)]
        run.state = state
        run.failed_tasks = failed_tasks or []

    def fail_next(self, status: int, times: int = 1) -> None:
        self.faults.extend([status] * times)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record, self._auth])
        app.router.add_get("/api/v1/version", self._version)
        app.router.add_get("/api/v1/dags/{dag_id}", self._dag)
        app.router.add_post("/api/v1/dags/{dag_id}/dagRuns", self._trigger)
        app.router.add_get("/api/v1/dags/{dag_id}/dagRuns/{run_id}", self._run)
        app.router.add_get("/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances", self._tasks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        if self.faults:
            status = self.faults.pop(0)
            return _problem(status, "injected fault")
        if self.redirect_next:
            self.redirect_next = False
            return web.Response(status=307, headers={"Location": "http://elsewhere.invalid/"})
        return await handler(request)  # type: ignore[no-any-return]

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        routed = request.match_info.route.resource is not None  # unknown paths: 404
        if routed and request.path != "/api/v1/version" and \
                request.headers.get("Authorization") != f"Basic {self.credentials}":
            return _problem(401, "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "2.10.5", "git_version": None})

    async def _dag(self, request: web.Request) -> web.Response:
        dag_id = request.match_info["dag_id"]
        if dag_id not in self.dags:
            return _problem(404, f"DAG with dag_id: '{dag_id}' not found")
        return web.json_response({"dag_id": dag_id, "is_paused": self.dags[dag_id]})

    async def _trigger(self, request: web.Request) -> web.Response:
        dag_id = request.match_info["dag_id"]
        if dag_id not in self.dags:
            return _problem(404, f"DAG with dag_id: '{dag_id}' not found")
        body = await request.json()
        unknown = set(body) - ALLOWED_FIELDS
        if unknown:
            return _problem(400, f"{{'{sorted(unknown)[0]}': ['Unknown field.']}}")
        if not isinstance(body.get("conf", {}), dict):
            return _problem(400, "{'conf': ['Not a valid mapping type.']}")
        run_id = body["dag_run_id"]
        if (dag_id, run_id) in self.runs:
            return _problem(409, f"DAGRun with DAG ID: '{dag_id}' and DAGRun ID: '{run_id}' "
                                 "already exists")
        run = self.runs[(dag_id, run_id)] = Run(dag_id, run_id, body.get("conf", {}))
        if self.after_create:
            return await self._odd(request, self.after_create.pop(0), run.to_json())
        return web.json_response(run.to_json())

    async def _run(self, request: web.Request) -> web.StreamResponse:
        run = self.runs.get((request.match_info["dag_id"], request.match_info["run_id"]))
        if run is None:
            return _problem(404, "DAGRun not found")
        if self.odd_runs:
            return await self._odd(request, self.odd_runs.pop(0), run.to_json())
        return web.json_response(run.to_json())

    async def _tasks(self, request: web.Request) -> web.Response:
        run = self.runs.get((request.match_info["dag_id"], request.match_info["run_id"]))
        if run is None:
            return _problem(404, "DAGRun not found")
        tis = [{"task_id": t, "state": "failed"} for t in run.failed_tasks]
        tis.append({"task_id": "cleanup", "state": "success"})
        return web.json_response({"task_instances": tis, "total_entries": len(tis)})

    async def _odd(self, request: web.Request, how: str, body: dict[str, Any]
                   ) -> web.StreamResponse:
        """A 200 that breaks the contract after the fact (see the module docstring)."""
        if how == "garbage":
            return web.Response(status=200, content_type="text/html", text="<html>oops</html>")
        if how == "list":
            return web.json_response([body])
        if how == "huge":
            return web.json_response({**body, "pad": "x" * (2 * 1024 * 1024)})
        if how == "empty-202":
            return web.Response(status=202)
        data = json.dumps(body).encode()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[:len(data) // 2])
        if how == "cut":
            assert request.transport is not None
            request.transport.close()
            return resp
        assert how == "stall", how
        await self._stopping.wait()  # until the server stops (the client times out first)
        return resp


def _problem(status: int, detail: str) -> web.Response:
    titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}
    return web.Response(status=status, content_type="application/problem+json",
                        text=json.dumps({"status": status, "title": titles.get(status, "Error"),
                                         "detail": detail, "type": "about:blank"}))
