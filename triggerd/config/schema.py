"""The configuration file's schema, as strict pydantic models.

Rules, policies and the top level are defined here. Source and backend options belong to their
plugin modules (each plugin class carries an `Options` model with a `type` literal); the loader
validates each entry against its plugin's model, and `json_schema()` assembles the whole schema
from the registry so editors see every option.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic.json_schema import GenerateJsonSchema

from triggerd.config.types import NAME_PATTERN, Duration, Size, Strict
from triggerd.language.units import format_duration
from triggerd.model import EVENT_KINDS

EventKind = Literal["created", "modified", "moved", "deleted", "message", "tick", "manual"]
assert set(get_args(EventKind)) == set(EVENT_KINDS)  # noqa: S101  (kept in step with model.py)


def _valid_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"invalid name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


# checked per key, so each bad name is reported at its own line and its entry is still checked
Name = Annotated[str, AfterValidator(_valid_name)]


class MatchSpec(Strict):
    """Which events a rule listens to, beyond its `on` sources."""

    kinds: list[EventKind] | None = None
    """Event kinds the rule takes (created, modified, moved, deleted, message, tick, manual);
    default: every kind its sources emit."""
    subject: str | None = Field(None, description="glob over the event subject (`**` recursive)")
    where: str | None = Field(None, description=(
        "a safe expression over the event (the where language: event and payload fields, "
        "comparisons, and/or/not, a fixed list of functions)"))


class WhenSpec(Strict):
    """The firing policy. Present conditions must all hold."""

    min_events: int = Field(1, ge=1)
    """Fire only with at least this many new, distinct pending events."""
    min_bytes: Size | None = None
    """... and at least this much pending data (the events' sizes)."""
    debounce: Duration | None = None
    """Wait until no new matching event came for this long (the batch is complete)."""
    max_delay: Duration | None = None
    """Bound on a debounce's wait, counted from the first pending event: a steady stream
    still fires."""
    cooldown: Duration | None = None
    """At least this long between two triggers of the rule (per group); events wait."""
    schedule: str | None = Field(
        None, description="cron expression, or the name of a cron source: a periodic check")
    at_least_every: Duration | None = None
    """A periodic floor: fire anyway when nothing fired for this long."""
    sustained: int | Duration | None = Field(
        None, description="N consecutive matching events, or a duration the match must hold")

    @field_validator("sustained", mode="before")
    @classmethod
    def _sustained(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("sustained must be a count (3) or a duration (15m)")
        if isinstance(value, int) and value < 1:
            raise ValueError("sustained must be at least 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WhenSpec:
        if self.max_delay is not None and self.debounce is None:
            raise ValueError("max_delay bounds a debounce: set debounce too")
        if self.max_delay is not None and self.debounce is not None \
                and self.max_delay < self.debounce:
            raise ValueError("max_delay must not be shorter than debounce")
        for name in ("debounce", "cooldown", "at_least_every", "max_delay"):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise ValueError(f"{name} must not be negative")
        return self


class RetrySpec(Strict):
    """How a failed job is tried again (doubling delays)."""

    attempts: int = Field(1, ge=1, le=100, description="total attempts, including the first")
    backoff: Duration = Field(timedelta(seconds=30), description="delay before the 2nd attempt")
    max_backoff: Duration = Field(timedelta(hours=1), description="cap of the doubling delay")


class DispatchSpec(Strict):
    """What a trigger starts, and how."""

    backend: str
    """The name of a backend of the config."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Values for the backend's templates (`{params.model}`); each string may itself be a
    template over the trigger (`{group}`)."""
    concurrency: int = Field(1, ge=1)
    """Jobs of this rule running at once (all groups together)."""
    on_busy: Literal["coalesce", "queue", "skip"] = "coalesce"
    """When the rule is due while its jobs are all busy: coalesce (no new trigger while a job
    of the rule is queued or running; the events keep accumulating and fire as one trigger
    when it ends), queue (every trigger is written and waits its turn) or skip (the trigger is
    written with a cancelled job)."""
    retry: RetrySpec = Field(default_factory=RetrySpec)
    """Attempts and backoff for failed jobs."""


class RuleSpec(Strict):
    on: list[str] = Field(min_length=1, description="names of the sources the rule listens to")
    match: MatchSpec = Field(default_factory=MatchSpec)
    """Which of the sources' events count (kinds, subject glob, where)."""
    group_by: str | None = Field(None, description="template over the event, e.g. {payload.dir}")
    when: WhenSpec = Field(default_factory=WhenSpec)
    """When the rule fires; without `when`, every new matching event fires it."""
    dispatch: DispatchSpec
    """What a trigger starts: the backend, its params, concurrency, on_busy and retry."""
    description: str | None = None
    """Free text, shown by `triggerd status`."""


class SourceEntry(Strict):
    """A source before its plugin validates it: only `type` is known here."""

    model_config = Strict.model_config | {"extra": "allow"}
    type: str


class BackendEntry(Strict):
    model_config = Strict.model_config | {"extra": "allow"}
    type: str


class IncludeSpec(Strict):
    """An include with restrictions: `{path: "rules.d/*.yaml", only: rules}`.

    An included file is as trusted as the main file: it may define `command` backends, i.e. run
    programs. `only: rules` limits the matched files to the `rules` section, so a file writable
    by a team can add rules but not what runs (backends) or what is read (sources)."""

    path: str = Field(description="glob of rule files, relative to this file")
    only: Literal["rules"] | None = Field(
        None, description="`rules`: the files may hold only rules (no sources or backends)")


class ConfigFile(Strict):
    """The top level of the main file. Included files may hold sources, backends and rules."""

    store: str | None = Field(None, description="SQLAlchemy URL; default sqlite in state_dir")
    state_dir: str | None = Field(
        None, description="where the default SQLite store and job files live (relative to this "
                          "file); default $STATE_DIRECTORY or /var/lib/triggerd")
    retention: Duration = timedelta(days=30)
    """Consumed events, triggers and jobs older than this are deleted (pending events stay)."""
    include: list[str | IncludeSpec] = Field(
        default_factory=list,
        description='rule files: globs, or {path: glob, only: rules} to allow only rules')
    sources: dict[Name, SourceEntry] = Field(default_factory=dict)
    """What to watch, by name: each entry has a `type` (filesystem, bucket, kafka, cron)."""
    backends: dict[Name, BackendEntry] = Field(default_factory=dict)
    """What runs a retrain, by name: each entry has a `type` (command, http, airflow,
    kubernetes)."""
    rules: dict[Name, RuleSpec] = Field(default_factory=dict)
    """When to retrain, by name: the sources a rule listens to, when it fires, what it starts."""


class IncludedFile(Strict):
    sources: dict[str, SourceEntry] = Field(default_factory=dict)
    backends: dict[str, BackendEntry] = Field(default_factory=dict)
    rules: dict[str, RuleSpec] = Field(default_factory=dict)


class _Generator(GenerateJsonSchema):
    """Writes duration defaults the way users write them ("30s"), not as ISO 8601 ("PT30S"),
    and shows the defaults of list and map keys made by a factory (`patterns`, `events`)."""

    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()
            if isinstance(value, (list, dict)):
                return value
        return super().get_default_value(schema)

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the main config file, with every registered plugin's options."""
    from triggerd import registry

    schema = ConfigFile.model_json_schema(schema_generator=_Generator)
    defs = schema.setdefault("$defs", {})

    def variants(kind: str, types: dict[str, str]) -> list[dict[str, Any]]:
        out = []
        for type_name in sorted(types):
            try:
                cls = (registry.source_class if kind == "source" else registry.backend_class)(
                    type_name)
            except Exception:  # noqa: S112 - a plugin that cannot load has no schema
                continue
            sub = cls.Options.model_json_schema(ref_template="#/$defs/{model}",
                                                schema_generator=_Generator)
            defs.update(sub.pop("$defs", {}))
            defs[cls.Options.__name__] = sub
            out.append({"$ref": f"#/$defs/{cls.Options.__name__}"})
        return out

    described = {key: schema["properties"][key].get("description")
                 for key in ("sources", "backends")}
    schema["properties"]["sources"] = {
        "type": "object", "description": described["sources"],
        "additionalProperties": {"oneOf": variants("source", registry.source_types())}}
    schema["properties"]["backends"] = {
        "type": "object", "description": described["backends"],
        "additionalProperties": {"oneOf": variants("backend", registry.backend_types())}}
    defs.pop("SourceEntry", None)
    defs.pop("BackendEntry", None)
    schema["title"] = "triggerd configuration"
    return schema
