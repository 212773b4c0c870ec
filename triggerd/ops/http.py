"""A tiny asyncio HTTP/1.1 server for /metrics, /healthz and /readyz (`TRIGGERD_HTTP`).

GET (and HEAD) only, one request per connection (`Connection: close`), no request body. It
listens only where `TRIGGERD_HTTP` says (`host:port`, `[v6]:port`; an empty host means
loopback) and is not started at all without it.

It is bounded, so no client can hold the daemon's memory or keep /healthz from answering
(the systemd watchdog and a container HEALTHCHECK ask it):

- at most `MAX_CONNECTIONS` (64) connections at once. When one more arrives, the oldest
  connection still sending its request head is closed to make room (idle and slow clients
  give way to a prober that sends its request at once), else the oldest one whose client is
  still taking its answer (a slow reader gives way too); when every connection is having its
  answer computed, the new one is closed at once. A connection is closed by aborting its
  transport: its task then ends on its own (cancelling it made asyncio log a traceback);
- the request head (request line and headers, each line at most `MAX_LINE` bytes) must
  arrive within `HEAD_TIMEOUT` (5 s): a slowloris client is cut off then;
- the answer is computed within `HANDLER_TIMEOUT` (10 s; else 503);
- the answer must be taken by the client within `WRITE_TIMEOUT` (10 s): a client that never
  reads (a tiny receive window on a large /metrics) has its connection aborted, freeing the
  task and the buffered answer.

`HttpServer.connections` counts the open connections (what these bounds keep finite).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("triggerd.http")

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Awaitable[Response]]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
           500: "Internal Server Error", 503: "Service Unavailable"}
MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 5.0  # seconds for the request line and headers
HANDLER_TIMEOUT = 10.0  # seconds for the answer to be computed
WRITE_TIMEOUT = 10.0  # seconds for the client to take the answer
MAX_HEADER_LINES = 100
MAX_LINE = 8192  # bytes of one request line or header line


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464`, `:9464` (loopback) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"TRIGGERD_HTTP={text!r}: give host:port, e.g. 127.0.0.1:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


@dataclass(eq=False)
class _Connection:
    transport: asyncio.WriteTransport
    opened: float  # loop time
    # "head" (reading the request), "answering" (computing it), "writing" (the client takes
    # it): a connection in "head" or "writing" may give way to a new client
    phase: str = "head"
    dropped: bool = False

    def drop(self) -> None:
        self.dropped = True
        self.transport.abort()  # its task ends on its own: reads and writes fail now


class HttpServer:
    """The listener; the limits default to the module's constants (tests make them small)."""

    def __init__(self, address: str, routes: Mapping[str, Handler], *,
                 max_connections: int = MAX_CONNECTIONS, head_timeout: float = HEAD_TIMEOUT,
                 handler_timeout: float = HANDLER_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        self.host, self.port = parse_address(address)
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.handler_timeout = handler_timeout
        self.write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._refusing = False  # logged that the cap refuses connections (once per episode)

    @property
    def connections(self) -> int:
        """How many client connections are open (each holds one task)."""
        return len(self._open)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_LINE)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._open):  # (wait_closed waits for them from Python 3.12)
                conn.drop()
            await self._server.wait_closed()
            self._server = None

    def _admit(self, conn: _Connection) -> bool:
        """Make room for `conn` under `max_connections`; False when there is none."""
        if len(self._open) >= self.max_connections:
            for phase in ("head", "writing"):
                waiting = [c for c in self._open if c.phase == phase]
                if waiting:
                    break
            else:
                return False
            oldest = min(waiting, key=lambda c: c.opened)
            oldest.drop()
            self._open.discard(oldest)
        self._open.add(conn)
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer.transport, asyncio.get_running_loop().time())
        if not self._admit(conn):
            if not self._refusing:  # once until a slot frees: a flood must not flood the log
                log.warning("http: %d connections busy answering; refusing new ones until "
                            "one ends", len(self._open))
                self._refusing = True
            writer.transport.abort()
            return
        clean = False
        try:
            try:
                async with asyncio.timeout(self.head_timeout):
                    request = await self._read_head(reader)
            except TimeoutError:
                return  # a client too slow to ask: nothing to answer
            if conn.dropped:
                return  # it gave way to a newer client while asking
            conn.phase = "answering"
            status, ctype, body, head = await self._respond(request)
            if conn.dropped:
                return
            conn.phase = "writing"
            async with asyncio.timeout(self.write_timeout):  # the client must take it
                writer.write(
                    f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode("ascii") + (b"" if head else body))
                await writer.drain()
                writer.close()  # (flushes what drain left buffered, then closes)
                await writer.wait_closed()
            clean = True
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away, sent garbage or never read: nothing to answer
        finally:
            self._open.discard(conn)
            self._refusing = False
            if not clean:  # drop what is buffered for the client: never wait for it
                writer.transport.abort()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> list[str]:
        """The request line's words; the headers are read and ignored."""
        request = (await reader.readline()).decode("latin-1").split()
        for _ in range(MAX_HEADER_LINES):
            if (await reader.readline()).strip() == b"":
                break
        return request

    async def _respond(self, request: list[str]) -> tuple[int, str, bytes, bool]:
        if len(request) != 3:
            return 400, "text/plain", b"bad request\n", False
        method, target = request[0], request[1].split("?", 1)[0]
        handler = self.routes.get(target)
        if handler is None:
            return 404, "text/plain", b"not found\n", False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n", False
        try:
            async with asyncio.timeout(self.handler_timeout):
                status, ctype, body = await handler()
        except TimeoutError:
            log.warning("http: %s took over %gs; answered 503", target, self.handler_timeout)
            return 503, "text/plain", b"timed out\n", method == "HEAD"
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
