"""Bucket source benchmark: reconciling a prefix of N objects against a local S3 server.

Starts moto's S3 server (ThreadedMotoServer, the S3 REST API) in this process, fills a bucket
with N objects under `landing/` (written straight into moto's backend: uploading 100,000 over
HTTP would take minutes and measures nothing of ours), then times what the bucket source does
at start and every `poll`: the listing (s3fs `find`: ListObjectsV2, 1,000 keys a page) and
the reconcile (`compare` against the object table: first all new, then all known), with the
peak RSS of the process. Keys look like `landing/dt=2026-11-DD/part-NNNNN.parquet`.

    .venv/bin/python bench/bucket.py --objects 100000
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime

from triggerd.sources._bucketlist import Lister, compare, matcher_for
from triggerd.sources._bucketoptions import BucketOptions


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                          aws_secret_access_key="s",  # noqa: S106 - moto takes any
                          region_name="us-east-1")
    client.create_bucket(Bucket="data")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    started = time.perf_counter()
    for i in range(args.objects):
        backend.put_object("data", f"landing/dt=2026-11-{1 + i % 30:02d}/part-{i:06d}.parquet",
                           f"rows {i}".encode())
    print(f"filled {args.objects:,} objects in {time.perf_counter() - started:.1f} s "
          f"(not part of the figures); RSS {rss_mb():.0f} MB")
    options = BucketOptions.model_validate({
        "type": "bucket", "url": "s3://data/landing/", "poll": "1m", "settle": False,
        "patterns": ["**/*.parquet"], "endpoint_url": endpoint, "options": {
            "key": "k", "secret": "s"}})
    lister = Lister(options)
    matcher = matcher_for(options)
    rows: dict = {}
    for label in ("first (all new)", "again (all known)"):
        started = time.perf_counter()
        listing = lister.list()
        listed = time.perf_counter() - started
        now = datetime.now(UTC)
        started = time.perf_counter()
        found = compare("b", options, matcher, listing, rows, {}, now)
        compared = time.perf_counter() - started
        for row in found.saves:
            rows[row.path] = row
        print(f"{label}: {len(listing):,} objects listed in {listed:.2f} s, reconciled in "
              f"{compared:.2f} s ({len(found.events):,} events); peak RSS {rss_mb():.0f} MB")
    server.stop()


if __name__ == "__main__":
    main()
