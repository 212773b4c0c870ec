"""A cuttable TCP proxy for bench/chaos.py: one replica's road to PostgreSQL.

`Proxy(target)` listens on a free loopback port and forwards each connection to `target`
(one thread per direction; no timeouts, so an idle pooled connection stays up). `cut()` closes
every connection through it and, until `heal()`, answers each new one with a reset: to the
replica behind it the server has gone away and refuses to come back. `close()` stops it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer sees the connection refused or cut."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Proxy:
    """127.0.0.1:<port> -> `target`, with `cut()` and `heal()` (see the module docstring)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.cuts = 0
        self._down = False
        self._closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down or self._closed
            if down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                gone = src in self._open
                self._open -= {src, dst}
            if gone:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def cut(self) -> None:
        """Close every connection through the proxy; refuse new ones until `heal()`."""
        with self._lock:
            self._down = True
            self.cuts += 1
            victims, self._open = self._open, set()
        for s in victims:  # shutdown wakes the pumping threads; the reset then drops it
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            _reset(s)

    def heal(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
