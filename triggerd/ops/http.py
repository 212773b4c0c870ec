"""A tiny asyncio HTTP/1.1 server for /metrics, /healthz and /readyz (`TRIGGERD_HTTP`).

GET (and HEAD) only, one request per connection (`Connection: close`), no request body. It
listens only where `TRIGGERD_HTTP` says (`host:port`, `[v6]:port`; an empty host means
loopback) and is not started at all without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("triggerd.http")

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Awaitable[Response]]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
           500: "Internal Server Error", 503: "Service Unavailable"}
READ_TIMEOUT = 10.0
MAX_HEADER_LINES = 100


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464`, `:9464` (loopback) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"TRIGGERD_HTTP={text!r}: give host:port, e.g. 127.0.0.1:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


class HttpServer:
    def __init__(self, address: str, routes: Mapping[str, Handler]) -> None:
        self.host, self.port = parse_address(address)
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                status, ctype, body, head = await self._respond(reader)
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("ascii") + (b"" if head else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        request = (await reader.readline()).decode("latin-1").split()
        for _ in range(MAX_HEADER_LINES):  # headers are read and ignored
            if (await reader.readline()).strip() == b"":
                break
        if len(request) != 3:
            return 400, "text/plain", b"bad request\n", False
        method, target = request[0], request[1].split("?", 1)[0]
        handler = self.routes.get(target)
        if handler is None:
            return 404, "text/plain", b"not found\n", False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n", False
        try:
            status, ctype, body = await handler()
        except Exception:  # a bug in a handler must not take the daemon down
            log.exception("http: %s failed", target)
            return 500, "text/plain", b"internal error\n", method == "HEAD"
        return status, ctype, body, method == "HEAD"


def probe(address: str, path: str = "/healthz", timeout: float = 3.0) -> tuple[int, str]:
    """GET `path` from the daemon listening on `address` (`triggerd health`); a wildcard
    address is asked on loopback."""
    import http.client

    host, port = parse_address(address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
