"""`triggerd init [DIR] [--pattern P]`: a commented starter config for one pattern, written to
DIR/triggerd.yaml, which `triggerd check` passes.

Patterns: `landing` (retrain when files land in a folder: batch, debounce, cooldown and a
floor), `periodic` (a cron schedule, but only when new data came: the nightly check),
`kafka-drift` (sustained drift reports on a Kafka topic) and `bucket` (objects landing under an
S3 prefix). Each starts from what the pattern needs and says in comments what to change.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from triggerd.cli.common import EXIT_OK, EXIT_USAGE

__all__ = ["PATTERNS", "cmd_init"]

_BACKEND = """
backends:
  train:
    type: command                        # or http, airflow, kubernetes
    # YOUR training command (train.py is a placeholder): an argv list, never a shell; it
    # finds the trigger (its files) in the JSON file $TRIGGERD_TRIGGER_FILE
    argv: [python3, train.py, --model, "{params.model}"]
    # workdir: /srv/training             # default: where triggerd runs
    timeout: 2h
"""

PATTERNS: dict[str, str] = {
    "landing": """\
# triggerd: retrain when new training data lands in a folder (not on a clock).
#   triggerd check --config triggerd.yaml && triggerd run --config triggerd.yaml
# run from this file's directory: state_dir is relative to this file, the source's paths
# and the command to where triggerd runs
state_dir: .triggerd                     # the SQLite store and job files

sources:
  landing:
    type: filesystem
    paths: [data/landing]                # relative to where triggerd runs; absolute in production
    patterns: ["**/*.parquet", "**/*.csv"]
    settle: 5s                           # a file counts once it has not changed for 5 s
""" + _BACKEND + """
rules:
  retrain-on-data:
    on: [landing]
    when:
      min_events: 3                      # at least 3 new files ...
      debounce: 1m                       # ... and then a quiet minute (the batch is complete)
      max_delay: 30m                     # a steady trickle still fires within 30 min
      cooldown: 1h                       # at most one retrain an hour
      at_least_every: 7d                 # and once a week even without new data
    dispatch:
      backend: train
      params: {model: churn}
      retry: {attempts: 3, backoff: 1m}
""",
    "periodic": """\
# triggerd: a nightly retrain that runs only when new data arrived since the last one.
#   triggerd check --config triggerd.yaml && triggerd run --config triggerd.yaml
state_dir: .triggerd

sources:
  landing:
    type: filesystem
    paths: [data/landing]
    patterns: ["**/*.parquet"]
  nightly:
    type: cron
    schedule: "0 2 * * *"                # 02:00 every day
    timezone: UTC                        # or Europe/Berlin, America/New_York, ...
    catch_up: last                       # one check for the nights missed while down
""" + _BACKEND + """
rules:
  nightly-if-new-data:
    on: [landing]
    when:
      schedule: nightly                  # decide at 02:00 ...
      min_events: 1                      # ... and fire only if a file landed since
    dispatch:
      backend: train
      params: {model: churn}
""",
    "kafka-drift": """\
# triggerd: retrain when a model's drift score stays high on a Kafka metrics topic.
#   triggerd check --config triggerd.yaml && triggerd run --config triggerd.yaml
state_dir: .triggerd

sources:
  metrics:
    type: kafka
    brokers: ["127.0.0.1:9092"]
    topic: drift-reports                 # one JSON report per model and check, like
    group: triggerd                      #   {"model": "churn", "psi": 0.31}
    subject: "{value.model}"
    start: latest
""" + _BACKEND + """
rules:
  drift:
    on: [metrics]
    match: {where: "value.psi > 0.25"}
    group_by: "{value.model}"            # one streak, cooldown and retrain per model
    when:
      # 3 drifting reports of the model in a row (no flapping). Every report of the model
      # counts: one below the threshold resets the streak. So the topic should carry only
      # drift reports; on a topic of other metrics too, their reports would reset it.
      sustained: 3
      cooldown: 1d
    dispatch:
      backend: train
      params: {model: "{group}"}
""",
    "bucket": """\
# triggerd: retrain when new objects land under an S3 prefix (pip install 'triggerd[s3]').
#   triggerd check --config triggerd.yaml && triggerd run --config triggerd.yaml
state_dir: .triggerd

sources:
  raw:
    type: bucket
    url: s3://training-data/landing/     # or gs://bucket/prefix/, az://container/prefix/
    poll: 1m                             # each listing is a paid request: not too often
    patterns: ["**/*.parquet"]
    # endpoint_url: http://127.0.0.1:9000   # MinIO or another S3-compatible store
    # credentials: {key: AWS_ACCESS_KEY_ID, secret: AWS_SECRET_ACCESS_KEY}  # variable names
""" + _BACKEND + """
rules:
  retrain-on-new-objects:
    on: [raw]
    group_by: "{payload.dir}"            # one retrain per partition (dt=2026-12-06/...)
    when:
      min_events: 1
      debounce: 5m                       # the partition's upload is complete
      cooldown: 1h
    dispatch:
      backend: train
      params: {model: "{group}"}
""",
}


_LANDING = ("landing", "periodic")  # the patterns watching ./data/landing


def cmd_init(args: argparse.Namespace) -> int:
    """Write the pattern's config to DIR/triggerd.yaml (never over an existing file without
    `--force`; written whole, then moved into place), or print it with `--print`."""
    text = PATTERNS[args.pattern]
    if args.print:
        print(text, end="")
        return EXIT_OK
    directory = Path(args.dir)
    path = directory / "triggerd.yaml"
    if path.exists() and not args.force:
        print(f"triggerd: {path} exists; choose another DIR, or --force to replace it",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".triggerd.yaml.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"triggerd: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.pattern in _LANDING:  # the folder the starter watches (relative to DIR)
        (directory / "data" / "landing").mkdir(parents=True, exist_ok=True)
    where = "" if directory == Path(".") else f"cd {directory} && "
    print(f"wrote {path} ({args.pattern}); edit its backend's argv (your training command), "
          f"then: {where}triggerd check --config triggerd.yaml")
    return EXIT_OK
