"""The `http` backend: POST the trigger to a webhook (a CI system, a training service).

Contract (see `triggerd.interfaces.Backend`):

- Body: the trigger context as JSON, or `body`, a YAML value whose string
  leaves are templates over the context (`trigger_id`, `rule`, `params.*`, `events`, `attempt`,
  ...), rendered leaf by leaf and then serialised with `json.dumps`: an event value can never
  change the JSON around it. A leaf that is exactly one field (`"{events}"`, `"{params.epochs}"`)
  keeps its value's type. `Content-Type: application/json` unless `headers` says otherwise.
- Headers: `headers` maps a name to a literal value or to `{env: VAR, prefix: "Bearer "}`, read
  from the environment when the backend is built (a missing variable stops the start with a
  config error). Every attempt carries `Idempotency-Key: <trigger id>` (the same on every
  retry and after a restart: the receiver deduplicates on it), and, with `secret_env`,
  `X-Triggerd-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the
  secret>` (the scheme GitHub webhooks use). Header values and the secret never appear in a
  log line or a job detail.
- One request per attempt; the rule's `retry` policy spaces the attempts (a `Retry-After` of a
  429 or 503 is a floor on the delay, within `max_backoff`). Timeouts: `connect_timeout`
  (TCP/TLS connect), `read_timeout` (silence between bytes of the response), `timeout` (the
  whole request). `Retry-After` is read as RFC 9110 says (delta-seconds or an HTTP date);
  anything else is ignored, and a hint is capped at one hour (then at `max_backoff`).
- Outcomes: 2xx succeeds (also when the connection drops after the status line: the receiver
  has acted; likewise a body cut by a timeout or a wrong Content-Length, or one that is not
  JSON: the body only feeds the detail and the external id). 408, 429, 5xx, connection
  errors (refused, reset, dropped before a status) and timeouts are transient; so is an
  answer that cannot be parsed (a broken status line or headers: nothing says the receiver
  acted, and the Idempotency-Key makes a retry safe). 3xx fails (redirects are not followed:
  a POST must not silently move elsewhere; point `url` at the final address). Other 4xx
  fail at once (a 1xx is informational: aiohttp waits for the final answer). The job's `exit_code`
  is the HTTP status; its `detail` holds the status and the first `response_bytes` of the
  response; its `external_id` is the response's `Location` header, else the `id` of a JSON
  object response, else `HTTP <status>`.
- Proxies from the environment are not used (`trust_env` off); TLS is verified unless
  `verify_tls: false`; `ca_file` names extra trusted CAs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, field_validator, model_validator

from triggerd.backends._common import (
    DataTemplate,
    first_bytes,
    loads_json,
    render_or_fail,
    retry_after,
    template_values,
)
from triggerd.plugin import (
    ConfigError,
    DispatchResult,
    Duration,
    JobHandle,
    PermanentDispatchError,
    Strict,
    TransientDispatchError,
    TriggerContext,
    __version__,
    format_duration,
    read_secret,
)

log = logging.getLogger(__name__)

RESERVED_HEADERS = frozenset({"idempotency-key", "x-triggerd-signature", "content-length",
                              "host", "transfer-encoding"})
RETRY_STATUSES = frozenset({408, 429})


class EnvHeader(Strict):
    """A header value taken from an environment variable (a token), with a literal prefix."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the value (never written in the config)."""
    prefix: str = ""
    """Literal text before the value, e.g. `Bearer `."""


class HttpOptions(Strict):
    type: Literal["http"]
    """POSTs the trigger context (or `body`) with an Idempotency-Key header."""
    url: str
    """Where to POST (http:// or https://); redirects are not followed."""
    headers: dict[str, str | EnvHeader] = Field(default_factory=dict)
    """Extra headers: a literal value, or {env: VAR, prefix: ...}."""
    body: Any = Field(None, description="YAML value whose string leaves are templates; "
                                        "default: the trigger context")
    secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The variable holding an HMAC key: X-Triggerd-Signature: sha256=<HMAC of the body>."""
    connect_timeout: Duration = timedelta(seconds=10)
    read_timeout: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(seconds=60)
    response_bytes: Annotated[int, Field(ge=0, le=65536)] = 1024
    """Bytes of the response body kept in the job's `detail`."""
    verify_tls: bool = True
    """Check the server's certificate (false only for a test server)."""
    ca_file: str | None = None
    """A PEM file of CAs to trust instead of the system's."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | EnvHeader]) -> dict[str, str | EnvHeader]:
        for name, value in headers.items():
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by triggerd and cannot be configured")
            if not name or any(c in name for c in ":\r\n ") or \
                    (isinstance(value, str) and any(c in value for c in "\r\n")):
                raise ValueError(f"header {name!r}: invalid name or value (value not shown)")
        return headers

    @model_validator(mode="after")
    def _checked(self) -> HttpOptions:
        if self.body is not None:
            DataTemplate(self.body, typed=True)  # raises ValueError with the path
        return self


class HttpBackend:
    """POSTs one request per attempt; see the module docstring for the contract."""

    Options = HttpOptions

    def __init__(self, name: str, options: HttpOptions, state_dir: Any = None) -> None:
        self.name = name
        self.options = options
        where = f"backends.{name}"
        self._body = DataTemplate(options.body, typed=True) if options.body is not None else None
        self._headers: dict[str, str] = {}
        for key, value in options.headers.items():
            if isinstance(value, EnvHeader):
                value = value.prefix + read_secret(value.env, f"{where}.headers.{key}")
            self._headers[key] = value
        self._secret = (read_secret(options.secret_env, f"{where}.secret_env").encode()
                        if options.secret_env else None)
        self._ssl: ssl.SSLContext | bool = options.verify_tls
        if options.ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=options.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([f"{where}.ca_file: cannot load {options.ca_file}: "
                                   f"{getattr(exc, 'strerror', None) or exc}"]) from None
        self._timeout = aiohttp.ClientTimeout(
            total=options.timeout.total_seconds(),
            sock_connect=options.connect_timeout.total_seconds(),
            sock_read=options.read_timeout.total_seconds())

    def request(self, ctx: TriggerContext, attempt: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers of an attempt (pure: also used by tests and `bench/`)."""
        if self._body is not None:
            payload = render_or_fail(self._body, template_values(ctx, attempt),
                                     f"body of backends.{self.name}")
        else:
            payload = ctx.to_dict()
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json",
                   "User-Agent": f"triggerd/{__version__}", **self._headers,
                   "Idempotency-Key": ctx.trigger_id}
        if self._secret is not None:
            headers["X-Triggerd-Signature"] = signature(self._secret, body)
        return body, headers

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        body, headers = self.request(ctx, job.attempt)
        limit = self.options.response_bytes
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session, \
                    session.post(self.options.url, data=body, headers=headers,
                                 allow_redirects=False, ssl=self._ssl) as resp:
                status, reason = resp.status, resp.reason or ""
                head, note = await _read_head(resp, limit)
                location = resp.headers.get("Location")
                hint = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise TransientDispatchError(self._timeout_detail(exc)) from exc
        except aiohttp.InvalidURL as exc:
            raise PermanentDispatchError(f"invalid url; check backends.{self.name}.url") \
                from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDispatchError(f"request failed: {_describe(exc)}") from exc
        log.info("backend %s: trigger %s attempt %d: HTTP %d", self.name, ctx.trigger_id,
                 job.attempt, status)
        detail = f"HTTP {status} {reason}".rstrip()
        if head:
            detail += f": {first_bytes(head, limit)}"
        if note:
            detail += f" ({note})"
        if 200 <= status < 300:
            ext = _external_id(status, location, head)
            await job.set_external_id(ext)
            return DispatchResult(external_id=ext, exit_code=status, detail=detail)
        if status >= 500 or status in RETRY_STATUSES:
            raise TransientDispatchError(detail, exit_code=status, external_id=f"HTTP {status}",
                                         retry_after=hint)
        if 300 <= status < 400:
            detail = (f"HTTP {status}: redirect to {location or '(no Location)'} not followed; "
                      f"point backends.{self.name}.url at the final address")
        raise PermanentDispatchError(detail, exit_code=status, external_id=f"HTTP {status}")

    def _timeout_detail(self, exc: TimeoutError) -> str:
        o = self.options
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"connect timed out after {format_duration(o.connect_timeout)}"
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return f"no response data for {format_duration(o.read_timeout)} (read_timeout)"
        return f"request timed out after {format_duration(o.timeout)}"


def signature(secret: bytes, body: bytes) -> str:
    """`X-Triggerd-Signature` value: `sha256=` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def _read_head(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, str | None]:
    """Up to `limit + 1` bytes of the body (enough to say it was cut; the rest is never read).
    A connection dropped, a body that breaks its framing (a wrong Content-Length, bad chunks)
    or a timeout after the status line is noted, not raised: the status is the outcome."""
    buf = bytearray()
    try:
        while len(buf) <= limit:
            chunk = await resp.content.read(limit + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        return bytes(buf), "response cut short: timed out reading the body"
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        return bytes(buf), f"response cut short: {_describe(exc)}"
    return bytes(buf), None


def _external_id(status: int, location: str | None, head: bytes) -> str:
    if location:
        return location[:500]
    data = loads_json(head)
    if isinstance(data, dict) and isinstance(data.get("id"), str | int) \
            and not isinstance(data.get("id"), bool):
        return str(data["id"])[:500]
    return f"HTTP {status}"


def _describe(exc: BaseException) -> str:
    """A connection error in words, without the URL (it may carry a token in its query)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection before responding"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the body ended early or broke its framing"
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or header that is invalid
        first = (str(exc.message).strip().splitlines() or ["unparseable"])[0]
        return f"malformed response ({first[:200]})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
