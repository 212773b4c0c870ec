"""The `http` backend against answers that break HTTP or the receiver's contract, and the
`Retry-After` parser of every backend.

`RawServer` is a loopback TCP server that reads the request head and body (by its
Content-Length, as RFC 9112 frames a request) and then sends scripted raw bytes, so it can
break the response framing on purpose: a status line or a Content-Length that does not parse,
a body cut short or stalled, a final 1xx. Each answer must end the attempt as a transient or a
permanent `DispatchError` with a clear detail, or as a success when the receiver has acted
(a 2xx status), and never raise anything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from backend_rig import FakeHandle, RunJob

from triggerd.backends._common import RETRY_AFTER_MAX, retry_after
from triggerd.backends.http import HttpBackend, HttpOptions
from triggerd.errors import PermanentDispatchError, TransientDispatchError
from triggerd.model import JobStatus, TriggerContext

STALL = b"<stall>"  # in a script: stop sending and keep the connection open


class RawServer:
    def __init__(self) -> None:
        self.script: list[list[bytes]] = []  # per connection: the chunks to send
        self.requests = 0
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            for chunk in self.script.pop(0) if self.script else [b"HTTP/1.1 204 OK\r\n\r\n"]:
                if chunk == STALL:
                    await self._stop.wait()
                    break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = await RawServer().start()
    yield server
    await server.stop()


def ctx() -> TriggerContext:
    return TriggerContext(trigger_id="r.1", rule="r", group="",
                          fired_at=datetime(2026, 1, 2, tzinfo=UTC), reason="manual",
                          manual=True, params={}, events=[])


def backend(url: str, **options: Any) -> HttpBackend:
    return HttpBackend("hook", HttpOptions.model_validate(
        {"type": "http", "url": url, "read_timeout": "300ms", "timeout": "5s", **options}))


def status(line: str, *headers: str, body: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {line}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() \
        + body


@pytest.mark.parametrize(("answer", "detail"), [
    ([status("201 Created", "Content-Length: 9", body=b"<html>no")], "HTTP 201 Created: <html>"),
    ([status("201 Created", "Content-Length: 12", body=b"[1, 2, 3]   ")],
     "HTTP 201 Created: [1, 2, 3]"),
    ([status("200 OK", "Content-Length: 400", body=b'{"id": ')],
     "HTTP 200 OK: {\"id\":  (response cut short: the body ended early or broke its framing)"),
    ([status("200 OK", "Content-Length: 400", body=b'{"id": '), STALL],
     "(response cut short: "),
    ([status("200 OK", "Content-Length: 200000", body=b"x" * 200000)], "x [...]"),
])
async def test_a_2xx_with_a_broken_body_is_a_success_the_receiver_acted(
        raw: RawServer, answer: list[bytes], detail: str) -> None:
    raw.script = [answer]
    handle = FakeHandle()
    result = await backend(raw.url).dispatch(ctx(), handle)
    assert result.detail is not None and detail in result.detail
    assert result.external_id == handle.external_ids[0] == f"HTTP {result.exit_code}"


@pytest.mark.parametrize(("answer", "error", "detail"), [
    ([b"garbage\r\n\r\n"], TransientDispatchError, "request failed: malformed response ("),
    ([status("200 OK", "Content-Length: abc")], TransientDispatchError,
     "request failed: malformed response ("),
    ([status("200 OK", "Content-Length: -1")], TransientDispatchError,
     "request failed: malformed response ("),
    ([b"HTTP/1.1 20"], TransientDispatchError,
     "request failed: server closed the connection before responding"),
    ([STALL], TransientDispatchError, "no response data for 300ms (read_timeout)"),
    ([status("503 Busy", "Retry-After: soon", "Content-Length: 0")], TransientDispatchError,
     "HTTP 503 Busy"),
    # a 1xx is informational (RFC 9110 15.2): the final answer never came
    ([status("199 Odd", "Content-Length: 0")], TransientDispatchError,
     "request failed: server closed the connection before responding"),
    ([status("303 See Other", "Location: /x", "Content-Length: 0")], PermanentDispatchError,
     "HTTP 303: redirect to /x not followed; point backends.hook.url at the final address"),
])
async def test_a_broken_or_unexpected_answer_is_a_clear_dispatch_error(
        raw: RawServer, answer: list[bytes], error: type[Exception], detail: str) -> None:
    raw.script = [answer]
    with pytest.raises(error) as caught:
        await backend(raw.url).dispatch(ctx(), FakeHandle())
    assert detail in str(caught.value)
    assert isinstance(caught.value, TransientDispatchError) is (error is TransientDispatchError)


async def test_retry_after_garbage_is_ignored_and_the_job_still_ends(raw: RawServer,
                                                                   run_job: RunJob) -> None:
    raw.script = [[status("503 Busy", "Retry-After: 99999999999999999999999999",
                          "Content-Length: 0")],
                  [b"garbage\r\n\r\n"],
                  [status("429 Slow", "Retry-After: -5", "Content-Length: 0")]]
    job = await run_job(backend(raw.url), retry={"attempts": 3, "backoff": "10ms",
                                                 "max_backoff": "200ms"}, timeout=10)
    assert job.status == JobStatus.FAILED and job.attempts == 3 == raw.requests
    assert job.detail is not None and job.detail.startswith("HTTP 429 Slow")


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("", None), ("   ", None),
    ("0", 0.0), ("120", 120.0), (" 7 ", 7.0), ("3600", 3600.0),
    ("3601", RETRY_AFTER_MAX), ("99999999999999999999999999999", RETRY_AFTER_MAX),
    ("-1", None), ("1.5", None), ("1e3", None), ("+5", None), ("٣", None), ("²", None),
    ("soon", None), ("120 seconds", None), ("0x10", None),
    ("Sun, 01 Mar 2026 12:01:00 GMT", 60.0),  # IMF-fixdate
    ("Sunday, 01-Mar-26 12:00:30 GMT", 30.0),  # obsolete RFC 850
    ("Sun Mar  1 12:00:10 2026", 10.0),  # obsolete asctime (no zone: UTC)
    ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: now
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX),  # years out: capped
    ("Sun, 32 Mar 2026 12:00:00 GMT", None), ("Sun, 01 Foo 2026 12:00:00 GMT", None),
    ("Sun, 01 Mar 2026 25:00:00 GMT", None),
])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, now=NOW) == seconds
