"""HTTP access to Airflow's stable REST API, for the `airflow` backend.

One `AirflowApi` per configured backend keeps what is worth keeping between jobs: the API
version (`/api/v2` for Airflow 3, `/api/v1` for Airflow 2, probed once when `api: auto`) and,
for Airflow 3 with a user and a password, the bearer token from `POST /auth/token` (fetched
again once when Airflow answers 401 or 403 to it: expired, or signed with a replaced secret).

Every outcome is mapped at this boundary: connection failures, timeouts (also while reading
the body), a connection reset mid-body, a body that breaks its framing (a wrong
Content-Length), 429 and 5xx raise `TransientDispatchError` (with the `Retry-After` hint);
authentication failures and redirects (never followed: point `url` at the final address) raise
`PermanentDispatchError`. Other replies are returned to the caller, who knows what a 404 or a
409 means for its request. At most `MAX_RESPONSE` bytes of a body are read (`Reply.truncated`
says when more came), and `Reply.json()` is None for a body that is not JSON: a caller checks
the shape it needs.
Retrying a POST whose answer was lost is safe: the run id is the trigger id, so the retry
gets 409 (the run exists), which the backend follows as success.
Secrets (password, token) go into request headers or the login body only: never into an
error detail or a log line.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from triggerd.backends._common import MAX_RESPONSE, loads_json, retry_after
from triggerd.plugin import PermanentDispatchError, TransientDispatchError

ApiVersion = Literal["v1", "v2"]
_BODY_SNIPPET = 300  # bytes of an error body kept in a job detail


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request is authenticated with: a ready bearer token, or a user and a password
    (Airflow 3: exchanged for a token; Airflow 2: basic auth), or nothing."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never show the secrets, even in a traceback
        return f"Credentials(username={self.username!r}, secrets=...)"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    truncated: bool = False  # more than MAX_RESPONSE bytes came: only their start is here

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON (or was cut at MAX_RESPONSE)."""
        return None if self.truncated else loads_json(self.body)

    def snippet(self) -> str:
        text = self.body[:_BODY_SNIPPET].decode("utf-8", "replace").strip()
        more = "..." if len(self.body) > _BODY_SNIPPET else ""
        return f"{text}{more}" if text else "(empty body)"


def path_part(value: str) -> str:
    """One URL path segment (a DAG id or a run id), quoted."""
    return quote(value, safe="")


class AirflowApi:
    def __init__(self, backend: str, base_url: str, api: Literal["auto", "v1", "v2"]) -> None:
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self._version: ApiVersion | None = None if api == "auto" else api
        self._token: str | None = None  # from /auth/token (Airflow 3 with user + password)
        self._lock = asyncio.Lock()

    @property
    def version(self) -> ApiVersion | None:
        return self._version

    async def request(self, session: aiohttp.ClientSession, creds: Credentials, method: str,
                      path: str, body: dict[str, Any] | None = None) -> Reply:
        """`method` on `/api/<version><path>`, authenticated; 401/403 never come back."""
        version = await self.detect(session)
        url = f"{self.base_url}/api/{version}{path}"
        reply = await self._send(session, method, url, await self._auth(session, creds, version),
                                 body)
        if reply.status in (401, 403) and self._token is not None and creds.token is None:
            # our login token expired (401) or no longer verifies (403, e.g. Airflow's JWT
            # secret changed): log in again, once; a real permission denial stays a 403
            self._token = None
            reply = await self._send(session, method, url,
                                     await self._auth(session, creds, version), body)
        if reply.status in (401, 403):
            raise PermanentDispatchError(self._denied(reply, creds))
        return reply

    async def detect(self, session: aiohttp.ClientSession) -> ApiVersion:
        """The configured API version, or the first of v2, v1 whose /version route exists."""
        async with self._lock:
            if self._version is None:
                self._version = await self._probe(session)
            return self._version

    async def _probe(self, session: aiohttp.ClientSession) -> ApiVersion:
        status = 0
        candidates: tuple[ApiVersion, ...] = ("v2", "v1")
        for candidate in candidates:
            try:
                reply = await self._send(session, "GET",
                                         f"{self.base_url}/api/{candidate}/version", {}, None)
            except PermanentDispatchError as exc:  # a redirect: not this API version
                status = exc.exit_code or 0
                continue
            # answered but not allowed still proves the route exists
            if reply.status in (200, 401, 403):
                return candidate
            status = reply.status
        raise PermanentDispatchError(
            f"no Airflow REST API at {self.base_url}: GET /api/v2/version and /api/v1/version "
            f"both failed (last: HTTP {status}); check backends.{self.backend}.url")

    async def _auth(self, session: aiohttp.ClientSession, creds: Credentials,
                    version: ApiVersion) -> dict[str, str]:
        if creds.token is not None:
            return {"Authorization": f"Bearer {creds.token}"}
        if creds.username is None or creds.password is None:
            return {}
        if version == "v1":
            pair = f"{creds.username}:{creds.password}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}
        if self._token is None:
            async with self._lock:
                if self._token is None:
                    self._token = await self._login(session, creds)
        return {"Authorization": f"Bearer {self._token}"}

    async def _login(self, session: aiohttp.ClientSession, creds: Credentials) -> str:
        reply = await self._send(session, "POST", f"{self.base_url}/auth/token", {},
                                 {"username": creds.username, "password": creds.password})
        if reply.status in (200, 201):
            body = reply.json()
            token = body.get("access_token") if isinstance(body, dict) else None
            if isinstance(token, str) and token:
                return token
            raise PermanentDispatchError(
                f"Airflow's POST /auth/token answered HTTP {reply.status} without an "
                f"access_token; check backends.{self.backend}.url")
        if reply.status in (400, 401, 403, 404, 422):
            raise PermanentDispatchError(
                f"Airflow refused the login of user {creds.username!r} at POST /auth/token "
                f"(HTTP {reply.status}); check backends.{self.backend}.username and the "
                f"password in its password_env")
        raise PermanentDispatchError(
            f"unexpected answer to POST /auth/token: HTTP {reply.status}: {reply.snippet()}")

    def _denied(self, reply: Reply, creds: Credentials) -> str:
        what = "authentication failed" if reply.status == 401 else "permission denied"
        if creds.token is not None:
            how = f"the token in backends.{self.backend}.token_env"
        elif creds.username is not None:
            how = f"user {creds.username!r}"
        else:
            how = "no credentials (set username and password_env, or token_env)"
        return f"Airflow {what} (HTTP {reply.status}) for {how}"

    async def _send(self, session: aiohttp.ClientSession, method: str, url: str,
                    headers: dict[str, str], body: dict[str, Any] | None) -> Reply:
        route = f"{method} {url.removeprefix(self.base_url)}"
        try:
            async with session.request(method, url, headers=headers, json=body,
                                       allow_redirects=False) as resp:
                data = await resp.content.read(MAX_RESPONSE + 1)
                while len(data) <= MAX_RESPONSE and (more := await resp.content.read(
                        MAX_RESPONSE + 1 - len(data))):
                    data += more
                reply = Reply(resp.status, data[:MAX_RESPONSE], len(data) > MAX_RESPONSE)
                hint = retry_after(resp.headers.get("Retry-After"))
                location = resp.headers.get("Location")
        except TimeoutError as exc:
            raise TransientDispatchError(
                f"Airflow at {self.base_url} timed out on {route} (request_timeout)") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDispatchError(
                f"cannot reach Airflow at {self.base_url} ({route}): {type(exc).__name__}"
                f"{': ' + str(exc) if str(exc) else ''}") from exc
        if reply.status == 429 or reply.status >= 500 or reply.status < 200:
            raise TransientDispatchError(
                f"Airflow answered {route} with HTTP {reply.status}: {reply.snippet()}",
                exit_code=reply.status, retry_after=hint)
        if 300 <= reply.status < 400:
            raise PermanentDispatchError(
                f"Airflow answered {route} with a redirect (HTTP {reply.status} to "
                f"{(location or '(no Location)')[:200]}), not followed; point "
                f"backends.{self.backend}.url at the final address", exit_code=reply.status)
        return reply
