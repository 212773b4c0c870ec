"""A scripted webhook receiver on loopback, for the `http` backend's tests (and the e2e ones).

It behaves like an idempotent receiver: the first request with a given `Idempotency-Key`
performs the side effect (recorded in `effects`), a later one with the same key does not. Each
request takes the next action of `script` (then `default`):

    201, 500, ...           respond with that status (JSON body {"id": "run-<n>"})
    (429, {"Retry-After": "1"})   a status with extra headers
    "hang"                  read the request, never answer (until the server stops)
    "reset"                 read the request, then reset the connection (RST, no response)
    "act-then-drop"         perform the side effect, then close without any response
    "act-then-hang"         perform it, then never answer (a client killed while waiting)
    "201-then-drop"         perform it, send the 201 status line and half the body, close
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from loopback import QuietHandler, close, serve, url_of


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Webhook:
    script: list[Any] = field(default_factory=list)
    default: Any = 201
    received: list[Received] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)  # the keys whose side effect ran
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return url_of(self.server) + "/hook"

    def act(self, key: str) -> None:
        """The side effect: once per idempotency key (a request without one always acts)."""
        with self.lock:
            if not key or key not in self.effects:
                self.effects.append(key)

    def next_action(self) -> Any:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def start(self) -> Webhook:
        hook = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                key = self.headers.get("Idempotency-Key", "")
                with hook.lock:
                    hook.received.append(Received(self.path, dict(self.headers.items()), body,
                                                  time.monotonic()))
                action = hook.next_action()
                if action == "hang":
                    hook.stop.wait(60)
                    self.close_connection = True
                    return
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                hook.act(key)
                if action == "act-then-hang":
                    hook.stop.wait(60)
                    self.close_connection = True
                    return
                if action == "act-then-drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                n = len(hook.received)
                payload = json.dumps({"id": f"run-{n}"}).encode()
                if action == "201-then-drop":
                    self.wfile.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json"
                                     b"\r\nContent-Length: 400\r\n\r\n" + payload[:5])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                status, extra = (action if isinstance(action, tuple) else (action, {}))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = serve(Handler, "webhook")
        return self

    def close(self) -> None:
        self.stop.set()
        close(self.server)

    def keys(self) -> list[str]:
        return [r.headers.get("Idempotency-Key", "") for r in self.received]
