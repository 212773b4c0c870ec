"""A stand-in for the Kubernetes API server's Job endpoints, on loopback, for the backend tests.

No API server can run on this machine, so this follows the documented contract of the
batch/v1 Job API (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/job-v1/
and the API conventions for Status objects) for the calls triggerd makes, over real HTTP, so the
official `kubernetes` client is exercised end to end through a kubeconfig that points here:

    POST /apis/batch/v1/namespaces/{ns}/jobs          201 + the Job (uid, resourceVersion,
                                                      creationTimestamp, empty status)
                                                      409 + Status reason AlreadyExists
                                                      422 + Status reason Invalid (name not a
                                                      DNS-1123 label, or no name: this server
                                                      refuses generateName, which triggerd
                                                      must never use)
    GET  /apis/batch/v1/namespaces/{ns}/jobs/{name}[/status]
                                                      200 + the Job, 404 + Status NotFound
    anything else                                     404 + Status NotFound

Requests must carry `Authorization: Bearer <token>` (401 Status otherwise). A test finishes a
Job with `finish(name, "Complete" | "Failed")`, which sets `status.conditions` as the Job
controller does, or sets `complete_after` to let Jobs complete after that many GETs.

Faults: `fail_next` answers the next requests with a Status of that code (an entry may be
`(code, {header: value})`, e.g. a `Retry-After`); `odd_gets` makes the next GETs of a Job
answer 200 outside the contract, as a broken proxy in front of the API server could:
`garbage` (not JSON), `list` (a JSON list), `bad-status` (`status` is a string),
`bad-conditions` (conditions that are not condition objects), `cut` (a Content-Length, half
the body, then the connection closes).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loopback import QuietHandler, close, serve, url_of

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+)(/status)?)?$")


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class KubeApi:
    token: str = "test-token"
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    creates: list[dict[str, Any]] = field(default_factory=list)  # accepted POST bodies
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    complete_after: int | None = None  # GETs of a job before it completes by itself
    fail_next: list[Any] = field(default_factory=list)  # statuses for the next requests
    odd_gets: list[str] = field(default_factory=list)  # odd 200s for the next Job GETs
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    _gets: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return url_of(self.server)

    def kubeconfig(self, path: Path, namespace: str = "ml") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "triggerd", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "local", "user": "triggerd",
                                                      "namespace": namespace}}]}))
        return path

    def finish(self, name: str, condition: str, namespace: str = "ml") -> None:
        with self.lock:
            self._finish(self.jobs[(namespace, name)], condition)

    @staticmethod
    def _finish(job: dict[str, Any], condition: str) -> None:
        ok = condition == "Complete"
        job["status"] = {
            "startTime": job["metadata"]["creationTimestamp"], "completionTime": now(),
            "succeeded": 1 if ok else 0, "failed": 0 if ok else 1,
            "conditions": [{"type": condition, "status": "True", "lastProbeTime": now(),
                            "lastTransitionTime": now(),
                            "reason": "Completed" if ok else "BackoffLimitExceeded",
                            "message": "" if ok else "Job has reached the specified backoff "
                                                     "limit"}]}

    def start(self) -> KubeApi:
        api = self

        class Handler(QuietHandler):
            def reply(self, code: int, body: Any, headers: dict[str, str] | None = None,
                      raw: bytes | None = None, cut: bool = False) -> None:
                data = json.dumps(body).encode() if raw is None else raw
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with api.lock:
                    api.requests.append((method, path))
                    injected = api.fail_next.pop(0) if api.fail_next else None
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self.reply(401, status(401, "Unauthorized", "Unauthorized"))
                if injected is not None:
                    code, headers = injected if isinstance(injected, tuple) else (injected, {})
                    return self.reply(code, status(code, "InternalError", "injected failure"),
                                      headers)
                m = _JOBS.match(path)
                if m is None:
                    return self.reply(404, status(404, "NotFound", "the server could not "
                                                  "find the requested resource"))
                ns, name = m.group(1), m.group(2)
                if method == "POST" and name is None:
                    return self.create(ns, json.loads(raw))
                if method == "GET" and name is not None:
                    return self.get(ns, name)
                return self.reply(405, status(405, "MethodNotAllowed", "not supported here"))

            def create(self, ns: str, job: dict[str, Any]) -> None:
                meta = job.setdefault("metadata", {})
                name = meta.get("name")
                if not name or not DNS1123_LABEL.match(name) or len(name) > 63:
                    return self.reply(422, status(
                        422, "Invalid", f'Job.batch "{name}" is invalid: metadata.name: '
                        "Invalid value: must be a DNS-1123 label", name=name, group="batch",
                        kind="jobs"))
                with api.lock:
                    if (ns, name) in api.jobs:
                        return self.reply(409, status(
                            409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                            name=name, group="batch", kind="jobs"))
                    meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                                creationTimestamp=now())
                    job["status"] = {}
                    api.jobs[(ns, name)] = job
                    api.creates.append(json.loads(json.dumps(job)))
                    body = json.loads(json.dumps(job))
                self.reply(201, body)

            def get(self, ns: str, name: str) -> None:
                with api.lock:
                    job = api.jobs.get((ns, name))
                    if job is None:
                        return self.reply(404, status(404, "NotFound",
                                                      f'jobs.batch "{name}" not found',
                                                      name=name, group="batch", kind="jobs"))
                    seen = api._gets[(ns, name)] = api._gets.get((ns, name), 0) + 1
                    if api.complete_after is not None and seen >= api.complete_after \
                            and not job["status"].get("conditions"):
                        api._finish(job, "Complete")
                    body = json.loads(json.dumps(job))
                    odd = api.odd_gets.pop(0) if api.odd_gets else None
                if odd == "garbage":
                    return self.reply(200, None, raw=b"<html>gateway says hi</html>")
                if odd == "list":
                    return self.reply(200, [body])
                if odd == "bad-status":
                    return self.reply(200, {**body, "status": "weird"})
                if odd == "bad-conditions":
                    return self.reply(200, {**body, "status": {"conditions": [
                        "Complete", {"type": 5, "status": True}, None]}})
                if odd == "cut":
                    return self.reply(200, body, cut=True)
                self.reply(200, body)

            def do_GET(self) -> None:
                self.route("GET")

            def do_POST(self) -> None:
                self.route("POST")

        self.server = serve(Handler, "kube-api")
        return self

    def close(self) -> None:
        close(self.server)
