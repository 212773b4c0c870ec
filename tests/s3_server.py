"""A real S3-protocol server for the tests: moto's `ThreadedMotoServer` (moto implements the
Amazon S3 REST API: ListObjectsV2 with pagination, PutObject with ETags, conditional writes,
the error codes), one per test session, on a free loopback port, and a boto3 client to land
objects with.

`MotoProcess` runs the same server in a process of its own, for what must not share the
caller's interpreter: a benchmark's figures (bench/bucket.py) and a storage that outlives the
processes using it (tansu's S3 storage engine while the broker is killed and restarted,
bench/chaos.py).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka_support import free_port, terminate, wait_port

KEY, SECRET = "triggerd-test-key", "triggerd-test-secret"  # moto accepts any

MOTO_PROCESS = """
import logging, sys, threading
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
port, bucket = int(sys.argv[1]), sys.argv[2]
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
backend.create_bucket(bucket, "us-east-1")
if len(sys.argv) > 3:
    for key in open(sys.argv[3]).read().split("\\n"):
        backend.put_object(bucket, key, ("rows of " + key).encode())
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
threading.Event().wait()
"""


def moto_argv(port: int, bucket: str, keys: Path | None = None) -> list[str]:
    """The command running moto's S3 server on `port` with `bucket` (region us-east-1) and,
    for each line of the file `keys`, an object "rows of KEY" put straight into moto's
    backend (uploading a million objects over HTTP would take minutes)."""
    return [sys.executable, "-c", MOTO_PROCESS, str(port), bucket,
            *([str(keys)] if keys is not None else [])]


class MotoProcess:
    """moto's S3 server in a process of its own holding an empty `bucket`; its output goes
    to `log`."""

    def __init__(self, bucket: str, log: Path) -> None:
        self.bucket, self.log = bucket, log
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(moto_argv(self.port, self.bucket), stdout=out,
                                         stderr=out)
        wait_port(self.port, self.proc, timeout, what="moto")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


@dataclass
class S3:
    endpoint: str
    client: Any

    def bucket(self, name: str) -> str:
        """Create an empty bucket `name` (emptied if it exists)."""
        try:
            self.client.create_bucket(Bucket=name)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for obj in page.get("Contents", []):
                    self.client.delete_object(Bucket=name, Key=obj["Key"])
        return name

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def notify(self, bucket: str, events: tuple[str, ...] = ("s3:ObjectCreated:*",)) -> str:
        """Have the bucket send event notifications (S3's `Records` JSON) to a new SQS queue
        on the same server; returns the queue's URL (read it with `notifications`)."""
        sqs = self.sqs()
        queue: str = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"]
                                       )["Attributes"]["QueueArn"]
        self.client.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
                {"QueueArn": arn, "Events": list(events)}]})
        return queue

    def notifications(self, queue: str, count: int = 1) -> list[str]:
        """The next `count` message bodies of the queue (long polls; deleted once read)."""
        sqs = self.sqs()
        bodies: list[str] = []
        for _ in range(20):
            if len(bodies) >= count:
                break
            got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2,
                                      MaxNumberOfMessages=10).get("Messages", [])
            for m in got:
                bodies.append(m["Body"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        assert len(bodies) >= count, f"{len(bodies)} of {count} notification(s) arrived"
        return bodies

    def sqs(self) -> Any:
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name="us-east-1")


def _one_server_header() -> None:
    """moto's responses carry their own `server: amazon.com` header, and werkzeug's server
    adds `Server: Werkzeug/...` before it: two Server headers, which aiohttp (s3fs's HTTP
    client) refuses in its strict mode (PYTHONASYNCIODEBUG, as `make test` runs): 400
    "Duplicate 'Server' header found". Amazon S3 sends one. So werkzeug's own is left out
    (Date stays)."""
    from werkzeug.serving import WSGIRequestHandler

    def send_response(self: WSGIRequestHandler, code: int, message: str | None = None) -> None:
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    WSGIRequestHandler.send_response = send_response  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    import boto3
    from moto.server import ThreadedMotoServer

    _one_server_header()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    try:
        yield S3(endpoint, client)
    finally:
        server.stop()


S3_ERRORS = {  # the S3 REST API's error responses (RESTErrorResponses: status, Code, Message)
    "SlowDown": (503, "Please reduce your request rate."),
    "AccessDenied": (403, "Access Denied"),
}


class FaultyS3:
    """A reverse proxy in front of the S3 server that answers every request with one of S3's
    error responses while `fault` names it (`S3_ERRORS`), and forwards requests otherwise:
    throttling and a revoked permission, as a client of Amazon S3 sees them. With `only`, the
    fault is for the requests whose decoded path and query hold that text (e.g. one
    sub-prefix's listings); while `hold` is set, those requests wait for `release`."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import unquote, urlsplit

        self.fault: str | None = None
        self.only: str | None = None
        self.hold = False
        self.release = threading.Event()
        self.refused = 0  # requests answered with the fault
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.fault
                if fault is not None and proxy.only is not None and proxy.only not in unquote(
                        self.path):
                    fault = None
                if fault is not None:
                    if proxy.hold:
                        proxy.release.wait(30)
                    proxy.refused += 1
                    status, message = S3_ERRORS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault}</Code>'
                           f"<Message>{message}</Message><RequestId>triggerd-test</RequestId>"
                           "</Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = self.headers.get("Host", target.netloc)
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response_only(answer.status, answer.reason)
                head = self.command == "HEAD"  # its Content-Length is the object's; no body
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection") and (
                            head or name.lower() != "content-length"):
                        self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
