"""The idempotent HTTP receiver of bench/chaos.py: records every delivery, acts once per key.

It follows the contract of triggerd's `http` backend (triggerd/backends/http.py): a POST whose
body is the trigger context (JSON: `trigger_id`, `rule`, `events`) and whose
`Idempotency-Key` header is the trigger id. The first delivery of a key performs the side
effect (recorded with `acted=True`); a later one with the same key (a retry, a takeover, a
redelivery after a kill) is recorded and acknowledged without acting again. Each answer waits
a delay drawn from the key (0-1 s, deterministic), so attempts are in flight when faults land,
and about 1 in 20 keys is answered 503 *after* acting on its first delivery, so the backend's
retry delivers the same key again (a duplicate delivery that must not act twice).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from loopback import QuietHandler, close, serve, url_of


def _draw(key: str) -> float:
    """A number in [0, 1) fixed by the key (repeatable across runs and processes)."""
    return int(hashlib.blake2b(key.encode(), digest_size=4).hexdigest(), 16) / 2**32


@dataclass
class Delivery:
    key: str
    rule: str
    events: list[str]  # event ids of the trigger context
    at: float  # time.time() when it arrived
    acted: bool  # this delivery performed the side effect
    status: int  # what the receiver answered


@dataclass
class Receiver:
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    _acted: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return url_of(self.server) + "/retrain"

    def receive(self, key: str, body: bytes) -> tuple[int, float]:
        """Record a delivery; the status to answer and the delay before answering."""
        try:
            ctx: Any = json.loads(body)
        except ValueError:
            ctx = {}
        events = [str(e.get("id")) for e in ctx.get("events") or [] if isinstance(e, dict)]
        draw = _draw(key)
        with self.lock:
            first = bool(key) and key not in self._acted
            if first:
                self._acted.add(key)
            status = 503 if first and draw < 0.05 else 201
            self.deliveries.append(Delivery(key, str(ctx.get("rule", "")), events, time.time(),
                                            first, status))
        return status, draw

    def start(self) -> Receiver:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, delay = receiver.receive(self.headers.get("Idempotency-Key", ""), body)
                time.sleep(delay)
                payload = json.dumps({"id": f"run-{len(receiver.deliveries)}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = serve(Handler, "chaos-receiver")
        return self

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def close(self) -> None:
        close(self.server)
        self.server = None
