"""Log setup: readable text for a terminal, JSON lines when TRIGGERD_LOG_FORMAT=json.

Secrets never reach a log line: configs hold only the *names* of variables with secrets, and
no component logs environment values or request headers.

JSON lines carry `ts`, `level`, `logger`, `message` and the ids passed with `extra=`: `rule`,
`source`, `trigger_id`, `job_id`, `backend` (see `job_fields`), so a log pipeline can filter
on them without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from triggerd.model import Job

_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("sqlalchemy", "alembic", "apscheduler", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def job_fields(job: Job) -> dict[str, str]:
    """The `extra=` fields of a log line about a job (JSON logs carry them as keys)."""
    return {"rule": job.rule, "job_id": job.id, "trigger_id": job.trigger_id,
            "backend": job.backend}
