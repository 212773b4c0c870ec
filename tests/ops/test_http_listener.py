"""The ops HTTP listener (/metrics, /healthz) stays bounded against clients that misbehave.

Real sockets on loopback against `triggerd.ops.http.HttpServer`, with its limits made small
(a cap of a few connections, sub-second timeouts) so the tests are quick; the defaults are the
module's constants. Nothing sleeps to synchronise: tests wait for a condition with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from test_dispatcher import until

from triggerd.ops import http
from triggerd.ops.http import HttpServer, Response

BIG = 32 * 1024 * 1024  # far more than the kernel buffers of a loopback connection


class Listener:
    def __init__(self, **limits: Any) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0  # requests of /slow whose handler waits for `gate`

        async def healthz() -> Response:
            return 200, "application/json", b'{"status": "ok"}\n'

        async def slow() -> Response:
            self.waiting += 1
            await self.gate.wait()
            return 200, "text/plain", b"late\n"

        async def big() -> Response:
            return 200, "text/plain", b"x" * BIG

        self.server = HttpServer("127.0.0.1:0", {"/healthz": healthz, "/slow": slow,
                                                 "/metrics": big}, **limits)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)

    async def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            reader, writer = await self.connect()
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                answer = await reader.read()
            finally:
                writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Any]]:
    made: list[Listener] = []

    async def start(**limits: Any) -> Listener:
        listener = Listener(**limits)
        await listener.server.start()
        made.append(listener)
        return listener

    yield start
    for listener in made:
        listener.gate.set()
        await listener.server.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """What the server sent before it closed the connection (reset counts as closed)."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def test_the_documented_limits() -> None:
    assert http.MAX_CONNECTIONS == 64
    assert (http.HEAD_TIMEOUT, http.WRITE_TIMEOUT) == (5.0, 10.0)


async def test_healthz_answers_and_the_connection_is_released(make: Any) -> None:
    listener = await make()
    assert await listener.get("/healthz") == (200, b'{"status": "ok"}\n')
    await until(lambda: listener.server.connections == 0)


async def test_idle_connections_over_the_cap_give_way_and_healthz_answers_at_once(
        make: Any, caplog: pytest.LogCaptureFixture) -> None:
    cap = 4
    listener = await make(max_connections=cap, head_timeout=60.0)
    idle = [await listener.connect() for _ in range(cap)]
    await until(lambda: listener.server.connections == cap)
    for n in range(3):  # each newcomer closes the oldest connection still silent
        idle.append(await listener.connect())
        assert await closed_by_server(idle[n][0]) == b""
        assert listener.server.connections == cap
    started = time.monotonic()
    assert await listener.get("/healthz") == (200, b'{"status": "ok"}\n')
    assert time.monotonic() - started < 2.0  # not after the 60 s head timeout
    assert await closed_by_server(idle[3][0]) == b""  # it made room for the prober
    for reader, _ in idle[4:]:  # the younger ones are still open
        assert not reader.at_eof()
    for _, writer in idle:
        writer.close()
    await until(lambda: listener.server.connections == 0)
    # a connection giving way is no error: asyncio logs no traceback for it
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_slow_readers_give_way_to_healthz_when_every_slot_is_taken(
        make: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Clients that asked for /metrics and read it slowly hold every slot: the prober still
    gets its answer (the oldest slow reader is dropped), so a liveness probe cannot be starved
    by scrapers that never read."""
    cap = 3
    listener = await make(max_connections=cap, write_timeout=60.0)
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for _ in range(cap):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", listener.server.port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
        await until(lambda: listener.server.connections == cap)
        started = time.monotonic()
        assert await listener.get("/healthz") == (200, b'{"status": "ok"}\n')
        assert time.monotonic() - started < 2.0  # not after the 60 s write timeout
        assert listener.server.connections <= cap
    finally:
        for sock in socks:
            sock.close()
    await until(lambda: listener.server.connections == 0)
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_when_every_slot_is_answering_a_new_connection_is_closed_at_once(
        make: Any) -> None:
    listener = await make(max_connections=2)
    slow = [asyncio.create_task(listener.get("/slow", timeout=10.0)) for _ in range(2)]
    # both are past their head (their handler is running): none of them gives way
    await until(lambda: listener.waiting == 2)
    assert listener.server.connections == 2
    reader, writer = await listener.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert await closed_by_server(reader, timeout=2.0) == b""
    writer.close()
    listener.gate.set()
    assert [await t for t in slow] == [(200, b"late\n")] * 2
    assert (await listener.get("/healthz"))[0] == 200


async def test_a_slowloris_client_is_cut_off_after_the_head_timeout(make: Any) -> None:
    listener = await make(head_timeout=0.5)
    reader, writer = await listener.connect()
    started = time.monotonic()

    async def one_byte_at_a_time() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)  # the client's pace, not synchronisation

    trickle = asyncio.create_task(one_byte_at_a_time())
    try:
        assert await closed_by_server(reader) == b""  # cut off, nothing answered
        assert 0.5 <= time.monotonic() - started < 3.0
        await until(lambda: listener.server.connections == 0)
    finally:
        trickle.cancel()
        await asyncio.gather(trickle, return_exceptions=True)
        writer.close()


async def test_a_client_that_never_reads_a_large_answer_is_dropped_after_the_write_timeout(
        make: Any) -> None:
    listener = await make(write_timeout=0.5)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny receive window
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", listener.server.port))
        await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: listener.server.connections == 1)
        started = time.monotonic()
        await until(lambda: listener.server.connections == 0, timeout=5.0)  # never read
        assert time.monotonic() - started < 3.0
        assert await listener.get("/healthz") == (200, b'{"status": "ok"}\n')
        # the answer was cut: the client can read only what the kernels had buffered
        received = 0
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5.0):
                while chunk := await loop.sock_recv(sock, 1 << 20):
                    received += len(chunk)
                raise ConnectionResetError  # a FIN after a partial body is a cut too
        assert received < BIG
    finally:
        sock.close()


async def test_an_overlong_request_line_is_dropped(make: Any) -> None:
    listener = await make()
    reader, writer = await listener.connect()
    writer.write(b"GET /" + b"a" * (http.MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n")
    assert await closed_by_server(reader) == b""
    writer.close()
    await until(lambda: listener.server.connections == 0)
