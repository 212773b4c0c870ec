"""The shape of a `triggerd test` file, as pydantic models (validated with `file:line` errors
by `triggerd.simulate.testfile`).

A file names the config under test, and holds tests; a test is a timeline of inputs at times
(`at`) and what is expected of it: the triggers written, and `explain` verdicts at given times.
Times are offsets from the test's `start` (`90s`, `1m30s`, `2h`: the config's duration units,
several of them in a row) or ISO 8601 times. Matching texts (`reason`, `says`) are substrings,
or, starting with `~`, RE2 regular expressions (the syntax of `regex()` in a `where`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from triggerd.config.types import Duration, Size, Strict
from triggerd.language.regex import compile_re2
from triggerd.language.units import parse_duration

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
Outcome = Literal["succeeded", "failed", "failed_permanently"]
KINDS = ("file", "object", "message", "tick", "fire", "job", "pause", "resume", "event")
JobState = Literal["queued", "running", "succeeded", "failed", "retrying", "cancelled"]


def parse_at(value: Any) -> timedelta | datetime:
    """An offset (`0`, `45s`, `1m30s`, `1d2h`) or an ISO 8601 time (UTC if it has no zone)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if value == 0:
        return timedelta(0)
    if isinstance(value, str):
        text = value.strip()
        if text and _PART.sub("", text) == "":
            return sum((parse_duration(m.group(0)) for m in _PART.finditer(text)), timedelta())
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    raise ValueError(f"invalid time {value!r} (an offset like 0s, 90s, 1m30s, 2h, or an ISO "
                     "8601 time like 2026-03-02T02:00:00Z)")


def _check_text(value: str | None) -> str | None:
    if value is not None and value.startswith("~"):
        compile_re2(value[1:])  # a RegexError is a ValueError: reported at its line
    return value


At = Annotated[timedelta | datetime, BeforeValidator(parse_at)]
Text = Annotated[str | None, AfterValidator(_check_text)]


class FileIn(Strict):
    """A file of a `filesystem` source settled (an event as the source emits it)."""

    source: str
    path: str
    size: Size = 0
    kind: Literal["created", "modified", "moved", "deleted"] | None = None
    content: str | None = None  # same content at the same path: a duplicate


class ObjectIn(Strict):
    """An object of a `bucket` source, as a listing finds it settled (an event as the source
    emits it): its key below the source's prefix (or its full URL)."""

    source: str
    key: str
    size: Size = 0
    kind: Literal["created", "modified", "deleted"] | None = None
    etag: str | None = None  # the content tag; the same tag at the same key: a duplicate
    content: str | None = None  # instead of etag: the tag is this content's MD5, as S3's is


class MessageIn(Strict):
    """A record read by a `kafka` source (decoded as the source decodes it)."""

    source: str
    value: Any = None
    raw: str | None = None  # the value's exact text instead (e.g. invalid JSON)
    key: str | None = None
    topic: str | None = None
    partition: int = Field(0, ge=0)
    offset: int | None = Field(None, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)


class TickIn(Strict):
    """A tick of a `cron` source (for the slot `slot`, default the input's time)."""

    source: str
    slot: At | None = None


class FireIn(Strict):
    """`triggerd fire RULE --reason TEXT`."""

    rule: str
    reason: str = "manual trigger"


class JobIn(Strict):
    """How the next attempt of `rule`'s jobs started at or after this time ends."""

    rule: str
    outcome: Outcome = "succeeded"
    duration: Duration = timedelta(0)


class PauseIn(Strict):
    """`triggerd pause RULE [--for DURATION]` (`resume: {rule: RULE}` ends it)."""

    rule: str
    for_: Duration | None = Field(None, alias="for")
    reason: str | None = None


class ResumeIn(Strict):
    rule: str


class EventIn(Strict):
    """Any event, as a source plugin without built-in support in `triggerd test` emits it."""

    source: str
    kind: str
    subject: str
    fingerprint: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class Input(Strict):
    """One entry of a test's timeline: exactly one of the input kinds, at `at`."""

    at: At
    id: str | None = None  # a name for the event, used in `expect.triggers[].events`
    file: FileIn | None = None
    object: ObjectIn | None = None
    message: MessageIn | None = None
    tick: TickIn | None = None
    fire: FireIn | None = None
    job: JobIn | None = None
    pause: PauseIn | None = None
    resume: ResumeIn | None = None
    event: EventIn | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Input:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}"
                             + (f" (found {', '.join(given)})" if given else ""))
        return self


class Jobs(Strict):
    """How jobs end when no `job` input says otherwise."""

    outcome: Outcome = "succeeded"
    duration: Duration = timedelta(0)


class ExpectTrigger(Strict):
    at: At
    rule: str
    group: str | None = None  # None: not compared
    events: list[str] | int | None = None  # event names (any order), or a count
    reason: Text = None
    kind: Literal["events", "floor", "schedule", "manual"] | None = None
    job: JobState | None = None  # the job's status at the end of the test


class ExpectExplain(Strict):
    at: At
    rule: str
    group: str = ""
    fires: bool | None = None
    says: Text = None
    conditions: dict[str, bool] = Field(default_factory=dict)


class Expect(Strict):
    triggers: list[ExpectTrigger] | None = None  # None: triggers are not compared
    explain: list[ExpectExplain] = Field(default_factory=list)


class Case(Strict):
    name: str
    start: At | None = None
    until: At | None = None
    tolerance: Duration | None = None
    ticks: Literal["auto", "timeline"] | None = None
    rules: list[str] | None = None  # compare only these rules' triggers
    jobs: Jobs | None = None
    input: list[Input] = Field(default_factory=list)
    expect: Expect = Field(default_factory=Expect)


class TestFile(Strict):
    config: str | None = None
    rule_files: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    start: At = datetime(2026, 1, 1, tzinfo=UTC)
    tolerance: Duration = timedelta(0)
    ticks: Literal["auto", "timeline"] = "auto"
    jobs: Jobs = Field(default_factory=Jobs)
    tests: list[Case] = Field(min_length=1)

    @model_validator(mode="after")
    def _config_or_rules(self) -> TestFile:
        if (self.config is None) == (self.rule_files is None):
            raise ValueError("give exactly one of `config` (the main config file) and "
                             "`rule_files` (files holding sources, backends and rules)")
        if isinstance(self.start, timedelta):
            raise ValueError("start: give an ISO 8601 time, like 2026-03-02T00:00:00Z")
        return self
