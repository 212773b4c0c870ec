"""Log setup: readable text for a terminal, JSON lines when TRIGGERD_LOG_FORMAT=json.

Secrets never reach a log line: configs hold only the *names* of variables with secrets, and
no component logs environment values or request headers.

JSON lines carry `ts`, `level`, `logger`, `message` and the ids passed with `extra=`: `rule`,
`source`, `trigger_id`, `job_id`, `backend` (see `job_fields`), so a log pipeline can filter
on them without parsing messages.

Log lines cannot be forged. Messages carry values that come from outside (file names, Kafka
keys, subjects): a file named `ok\n2026-01-01 ... INFO fake` must not print a second record.
JSON lines escape every control character by construction (`json.dumps` with ASCII output).
Text lines go through `escape_controls`: every C0 and C1 control character, DEL, U+2028/2029
and the bidirectional overrides are written as `\n`, `\r`, `\t`, `\x1b`, `\u2028`, ... so
one record is one line and no ANSI sequence reaches the terminal. A traceback keeps its lines,
each indented, so that no line of it can pass for a record of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from triggerd.model import Job

_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _escapes() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    # line/paragraph separators, and bidi controls that reorder what a terminal shows
    table.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F),
                                             *range(0x2066, 0x206A))})
    return table


_ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (see the module docstring)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The readable format, one line per record: the message and every other field the format
    string shows are escaped; exception and stack text keep their lines, indented."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_controls(line) for line in text.split("\n"))


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
        handler.setFormatter(TextFormatter(
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
