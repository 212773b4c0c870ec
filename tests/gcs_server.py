"""A real Google Cloud Storage JSON API server for the tests: `gcp-storage-emulator` (a
threaded HTTP server implementing the GCS JSON API v1: buckets, media and multipart uploads,
object listing with prefixes and pages, md5Hash/crc32c/generation of each object, 404 for a
missing bucket), one per test session on a free loopback port, in memory, with a gcsfs
client to land objects with (over the wire, as any other writer would).

The client is gcsfs's plain `GCSFileSystem`: gcsfs 2026.3+'s default class first asks the
endpoint for the bucket's storage layout over gRPC, which no emulator serves; the bucket
source's own listing goes through that default class (see `_bucketlist._gcs_endpoint`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kafka_support import free_port


@dataclass
class GCS:
    endpoint: str
    fs: Any  # gcsfs.core.GCSFileSystem on the emulator

    def bucket(self, name: str) -> str:
        """Create an empty bucket `name` (emptied if it exists)."""
        if self.fs.exists(name):
            for path in self.fs.find(name):
                self.fs.rm_file(path)
        else:
            self.fs.mkdir(name)
        return name

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.fs.pipe_file(f"{bucket}/{key}", body)

    def delete(self, bucket: str, key: str) -> None:
        self.fs.rm_file(f"{bucket}/{key}")

    def info(self, bucket: str, key: str) -> dict[str, Any]:
        """The object resource as the server lists it (gcsfs's listing dict)."""
        found: dict[str, Any] = self.fs.find(f"{bucket}/{key}", detail=True)[f"{bucket}/{key}"]
        return found


def close_gcsfs(fs: Any) -> None:
    """Close a gcsfs filesystem's HTTP session (and gRPC clients) on its own loop. Left to
    the garbage collector, gcsfs closes the session with `loop.create_task` from whatever
    thread collects it, which asyncio's debug mode (`make test`) refuses: an unraisable
    RuntimeError, "Non-thread-safe operation invoked on an event loop other than the current
    one" (gcsfs 2026.10)."""
    from fsspec.asyn import sync

    if hasattr(fs, "_close_resources"):  # ExtendedGcsFileSystem's gRPC clients
        sync(fs.loop, fs._close_resources)
    session = getattr(fs, "_session", None)
    if session is not None and not session.closed:
        sync(fs.loop, session.close)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCS]:
    from gcp_storage_emulator.server import create_server
    from gcsfs.core import GCSFileSystem

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True,
                       use_listings_cache=False)
    try:
        yield GCS(endpoint, fs)
    finally:
        close_gcsfs(fs)
        server.stop()
