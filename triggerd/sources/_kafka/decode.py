"""Turning one Kafka record into an `Event`, or into a `Reject` saying why it cannot be one.

Events: kind `message`; payload `value` (decoded per `format`: parsed JSON, text, or base64
for bytes), `key` (text), `topic`, `partition`, `offset`, `timestamp` (ISO 8601 UTC or null)
and `headers` ({name: text}); subject from the `subject` template (default the key, or
`topic/partition` when there is none); fingerprint from the `fingerprint` template (default
`topic/partition/offset`, so a redelivery is a duplicate).

With a notification format (s3, gcs, eventgrid) a record is read into `Notice`s instead
(`Decoder.notices`; `_bucketnotify`), which become the bucket source's events.

Rejects (kind): `tombstone` (null value), `too_large` (over `max_bytes`), `utf8` (json/text
that is not UTF-8), `json` (not valid JSON), `template` (a subject or fingerprint template
names a field the message lacks), `notification` (valid JSON, but not a notification of the
format: the error says what is missing).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from triggerd.plugin import HEAD_CHARS, Event, ExpressionError, Reject, Template
from triggerd.sources._bucketnotify import NotANotification, Notice, notices
from triggerd.sources._kafka.options import KafkaOptions

__all__ = ["Decoder", "Record", "head_of"]


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka record the source uses (from a faust `Message`)."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds since the epoch
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()

    @property
    def ref(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def storable(text: str) -> str:
    """`text` as every store keeps it: a NUL (PostgreSQL text refuses it) as `\\x00`, a lone
    surrogate (from a JSON `\\ud800`; not encodable as UTF-8) as `\\ud800`."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def head_of(data: bytes | None) -> str | None:
    """The first bytes of a value, as escaped text (never more than HEAD_CHARS)."""
    if data is None:
        return None
    return storable(data[:HEAD_CHARS].decode("utf-8", "backslashreplace"))[:HEAD_CHARS]


def _text(data: bytes | None) -> str | None:
    return None if data is None else storable(data.decode("utf-8", "backslashreplace"))


def _timestamp(ms: float | None) -> str | None:
    """The record's timestamp (producer-set: may be anything) as ISO 8601, or None."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return None


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


_JSON = json.JSONDecoder(parse_constant=_no_constant)  # one decoder, not one per message


class _Bad(Exception):
    def __init__(self, kind: str, error: str) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error


_NAMES = {"s3": "an S3 event notification", "gcs": "a GCS object notification",
          "eventgrid": "an Event Grid blob event"}


class Decoder:
    """Decodes records of one source; see the module docstring."""

    def __init__(self, source: str, options: KafkaOptions) -> None:
        self.source = source
        self.format = options.format
        self.max_bytes = options.max_bytes
        self.subject = Template(options.subject) if options.subject else None
        self.fingerprint = Template(options.fingerprint) if options.fingerprint else None

    def decode(self, record: Record, now: datetime) -> Event | Reject:
        try:
            value = self._value(record.value)
            key = _text(record.key)
            payload: dict[str, Any] = {
                "value": value, "key": key, "topic": record.topic,
                "partition": record.partition, "offset": record.offset,
                "timestamp": _timestamp(record.timestamp),
                "headers": {name: _text(data) for name, data in record.headers},
            }
            env = {"kind": "message", "source": self.source, "payload": payload,
                   "value": value, "key": key, "topic": record.topic,
                   "partition": record.partition, "offset": record.offset}
            subject = self._render(self.subject, env, "subject") if self.subject else (
                key if key is not None else f"{record.topic}/{record.partition}")
            fingerprint = (self._render(self.fingerprint, env, "fingerprint")
                           if self.fingerprint else record.ref)
            event = Event(source=self.source, kind="message", subject=storable(subject),
                          fingerprint=storable(fingerprint), payload=payload,
                          observed_at=now)
        except _Bad as bad:
            return Reject(self.source, record.ref, bad.kind, storable(bad.error),
                          head_of(record.value), now)
        except Exception as exc:  # any other surprise in a message: rejected, never fatal
            return Reject(self.source, record.ref, "decode",
                          storable(f"{type(exc).__name__}: {exc}")[:500],
                          head_of(record.value), now)
        return event

    def notices(self, record: Record, now: datetime) -> list[Notice] | Reject:
        """The notices of a record of a notification format (see the module docstring)."""
        try:
            value = self._value(record.value)
            return notices(self.format, value,
                           {name: _text(data) for name, data in record.headers})
        except _Bad as bad:
            error, kind = bad.error, bad.kind
        except NotANotification as exc:
            error, kind = f"not {_NAMES[self.format]}: {exc}", "notification"
        except Exception as exc:  # any other surprise in a message: rejected, never fatal
            error, kind = f"{type(exc).__name__}: {exc}", "decode"
        return Reject(self.source, record.ref, kind, storable(error)[:500],
                      head_of(record.value), now)

    def _value(self, data: bytes | None) -> Any:
        if data is None:
            raise _Bad("tombstone", "null value (tombstone)")
        if len(data) > self.max_bytes:
            raise _Bad("too_large", f"value of {len(data)} bytes is over max_bytes "
                                    f"({self.max_bytes})")
        if self.format == "bytes":
            return base64.b64encode(data).decode("ascii")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("utf8", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
        if self.format == "text":
            return text
        try:
            return _JSON.decode(text)
        except json.JSONDecodeError as exc:
            raise _Bad("json", f"invalid JSON: {exc.msg} at line {exc.lineno} "
                               f"column {exc.colno}") from None
        except RecursionError:
            raise _Bad("json", "invalid JSON: nested too deeply") from None

    @staticmethod
    def _render(template: Template, env: dict[str, Any], what: str) -> str:
        try:
            return template.render(env)
        except ExpressionError as exc:
            raise _Bad("template", f"{what} template {template.text!r}: {exc}") from None
