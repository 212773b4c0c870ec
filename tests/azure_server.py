"""A real Azure Blob Storage server for the tests: Azurite (Microsoft's emulator, which
implements the Azure Blob REST API: containers, Put Blob, List Blobs with prefixes and
markers, ETag and Last-Modified, Shared Key authorization, ContainerNotFound), its blob
service alone (`azurite-blob`), one per test session on a free loopback port, in memory,
with an adlfs client to land blobs with (over the wire, as any other writer would).

Azurite is the npm package `azurite`: `make azurite` (part of `make pytest`) installs it into
the venv (`<venv>/azurite`); `AZURITE_BLOB` may name another `azurite-blob`. Without it, or
when it does not start, the Azure tests skip, and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from kafka_support import free_port

# Azurite's one account, with the key every Azure Storage emulator documents (public)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


def azurite_blob() -> str | None:
    """The `azurite-blob` command: AZURITE_BLOB, the venv's (`make azurite`), or on PATH."""
    named = os.environ.get("AZURITE_BLOB")
    if named:
        return named if Path(named).is_file() else None
    mine = Path(sys.prefix) / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if mine.is_file():
        return str(mine)
    return shutil.which("azurite-blob")


@dataclass
class Azure:
    endpoint: str  # the blob service of the account: http://127.0.0.1:PORT/devstoreaccount1
    fs: Any  # adlfs.AzureBlobFileSystem on Azurite

    def container(self, name: str) -> str:
        """Create an empty container `name` (emptied if it exists); 3-63 characters."""
        if self.fs.exists(name):
            for path in self.fs.find(name):
                self.fs.rm_file(path)
        else:
            self.fs.mkdir(name)
        return name

    def put(self, container: str, key: str, body: bytes) -> None:
        self.fs.pipe_file(f"{container}/{key}", body)

    def delete(self, container: str, key: str) -> None:
        self.fs.rm_file(f"{container}/{key}")

    def info(self, container: str, key: str) -> dict[str, Any]:
        """The blob as adlfs lists it (its listing dict; adlfs's `find` of one blob's path
        gives a list of names, detail or not, so its folder is listed)."""
        path = f"{container}/{key}"
        found: dict[str, Any] = next(i for i in self.fs.ls(path.rpartition("/")[0], detail=True)
                                     if i["name"] == path)
        return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path,
                    timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite-blob exited {proc.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"azurite-blob did not listen on {port} in {timeout:.0f}s: "
                       f"{log.read_text()}")


def _cannot_run(why: str) -> NoReturn:
    """Skip the Azure tests, or fail them under CI=true (CI must run them)."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azure]:
    command = azurite_blob()
    if command is None or shutil.which("node") is None:
        _cannot_run("Azurite is missing (`make azurite` installs the npm package azurite "
                    "with Node.js; or set AZURITE_BLOB)")
    from adlfs import AzureBlobFileSystem

    work = tmp_path_factory.mktemp("azurite")
    log = work / "azurite.log"
    port = free_port()
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [command, "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
             "--silent"], cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_listening(port, proc, log)
        except RuntimeError as exc:
            _cannot_run(f"Azurite cannot run here: {exc}")
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        fs = AzureBlobFileSystem(
            connection_string=f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};"
                              f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};",
            skip_instance_cache=True, use_listings_cache=False)
        yield Azure(endpoint, fs)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
