"""Log lines cannot be forged: the text formatter writes control characters from event data
(file names, Kafka keys, subjects) as escapes, so one record is one line; JSON lines escape them
by construction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from triggerd.ops import logging as tlog

FORGED = "ok\n2026-01-01T00:00:00+0000 INFO    triggerd.engine: fake line.parquet"
HOSTILE = FORGED + "\r\x1b[31mred\x1b[0m\x00\x07\t\x7f\x85\x9b\u2028\u2029\u202e"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def setup(fmt: str) -> tuple[io.StringIO, logging.Logger]:
    """`tlog.setup(fmt)`, its handler writing to a buffer instead of stderr."""
    tlog.setup("INFO", fmt)
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    return buffer, logging.getLogger("triggerd.test")


@pytest.mark.usefixtures("restore_root")
def test_text_lines_escape_control_characters() -> None:
    buffer, log = setup("text")
    log.info("source landing: created %s", HOSTILE, extra={"source": "landing"})
    out = buffer.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")  # one record, one line
    line = out.rstrip("\n")
    assert "created ok\\n2026-01-01T00:00:00+0000 INFO    triggerd.engine: fake line.parquet" \
           "\\r\\x1b[31mred\\x1b[0m\\x00\\x07\\t\\x7f\\x85\\x9b\\u2028\\u2029\\u202e" in line
    assert not any(ch in line for ch in "\r\x1b\x00\x07\t\x7f\x85\x9b\u2028\u2029\u202e")


@pytest.mark.usefixtures("restore_root")
def test_text_lines_keep_ordinary_text() -> None:
    buffer, log = setup("text")
    log.info("file données/ü €.parquet: 3 rows, C:\\path")
    assert buffer.getvalue().rstrip("\n").endswith(
        "INFO    triggerd.test: file données/ü €.parquet: 3 rows, C:\\path")


@pytest.mark.usefixtures("restore_root")
def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record() -> None:
    buffer, log = setup("text")
    try:
        raise ValueError(f"bad file {FORGED}")
    except ValueError:
        log.exception("cannot read\n2026-01-01T00:00:00+0000 ERROR forged")
    first, *rest = buffer.getvalue().rstrip("\n").split("\n")
    assert first.endswith("cannot read\\n2026-01-01T00:00:00+0000 ERROR forged")
    assert rest and all(line.startswith("  ") for line in rest)
    assert any("Traceback (most recent call last):" in line for line in rest)
    assert not any(line.startswith("2026") for line in rest)


@pytest.mark.usefixtures("restore_root")
def test_json_lines_escape_by_construction() -> None:
    buffer, log = setup("json")
    log.info("created %s", HOSTILE, extra={"subject": HOSTILE})
    out = buffer.getvalue()
    assert out.count("\n") == 1
    assert not any(ch in out for ch in "\r\x1b\x00\x85\x9b\u2028\u2029")
    record = json.loads(out)
    assert record["message"] == f"created {HOSTILE}" and record["subject"] == HOSTILE


def test_escape_controls_maps_each_class() -> None:
    assert tlog.escape_controls("a\nb\rc\td\x1be\x00f\x7fg\x80h\x9fi\u2028j\u2069k") == (
        "a\\nb\\rc\\td\\x1be\\x00f\\x7fg\\x80h\\x9fi\\u2028j\\u2069k")
    assert tlog.escape_controls("plain ü € 日本") == "plain ü € 日本"
