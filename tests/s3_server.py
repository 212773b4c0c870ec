"""A real S3-protocol server for the tests: moto's `ThreadedMotoServer` (moto implements the
Amazon S3 REST API: ListObjectsV2 with pagination, PutObject with ETags, the error codes),
one per test session, on a free loopback port, and a boto3 client to land objects with."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

KEY, SECRET = "triggerd-test-key", "triggerd-test-secret"  # moto accepts any


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
