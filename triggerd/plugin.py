"""What a plugin (a source or a backend) imports: this module, and nothing else of triggerd.

Sources and backends of this package follow the rule too (tests/test_layers.py checks it). The
contracts themselves are documented in `triggerd.interfaces`; a new source or backend is one
module exporting a class with an `Options` model (a `Strict` pydantic model) plus one line in
`triggerd.registry` (or an entry point).

- Contracts: `Source`, `SourceContext` (its `clock`: `Clock`), `Backend`, `Launcher`,
  `JobHandle`, `StoreWork`.
- Data: `Event`, `TriggerContext`, `DispatchResult`, and the rows of daemon services
  (`FileRow`, `Reject`, `HEAD_CHARS`).
- Daemon services a source may ask for with `wants`: `"files"` (see
  `triggerd.sources._fstable.FileTable`), `"rejects"` (`RejectLog`, below) and `"sources"`
  (every source's options, by name).
- Errors: `TriggerdError`, `ConfigError`, `ExpressionError`, `StoreError`, `DispatchError`
  and its `TransientDispatchError`, `PermanentDispatchError`; `store_retry_delay`, the wait
  before using the store again after a `StoreError` (the daemon's own backoff).
- Options: `Strict`, `InheritsEnvironment`, `Duration`, `Size`; YAML files read within the
  config's limits (`load_yaml_file`, `FileTooLargeError`); secrets named by an option
  (`read_secret`: `$VAR`, or the file `$VAR_FILE` names).
- The language: `Template`, `lookup`, `compile_glob`, `compile_any`, `Schedule`,
  `validate_cron`, `validate_timezone`, `format_duration`.
- `failpoint`: the fault-injection points of the crash tests; `to_the_end`: await work that
  must finish even when the caller is cancelled (store writes at shutdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from triggerd import __version__
from triggerd.aio import to_the_end
from triggerd.config.secrets import read_secret
from triggerd.config.types import Duration, InheritsEnvironment, Size, Strict
from triggerd.config.yamlsafe import FileTooLargeError
from triggerd.config.yamlsafe import load_file as load_yaml_file
from triggerd.errors import (
    ConfigError,
    DispatchError,
    ExpressionError,
    PermanentDispatchError,
    StoreError,
    TransientDispatchError,
    TriggerdError,
    store_retry_delay,
)
from triggerd.interfaces import (
    Backend,
    Clock,
    JobHandle,
    Launcher,
    Source,
    SourceContext,
    StoreWork,
)
from triggerd.language.globs import compile_any, compile_glob
from triggerd.language.schedules import Schedule, validate_cron, validate_timezone
from triggerd.language.templates import Template, lookup
from triggerd.language.units import format_duration
from triggerd.model import HEAD_CHARS, DispatchResult, Event, FileRow, Reject, TriggerContext
from triggerd.ops.failpoints import hit as failpoint

__all__ = [
    "HEAD_CHARS", "Backend", "Clock", "ConfigError", "DispatchError", "DispatchResult", "Duration",
    "Event", "ExpressionError", "FileRow", "FileTooLargeError", "InheritsEnvironment", "JobHandle",
    "Launcher", "PermanentDispatchError", "Reject", "RejectLog", "Schedule", "Size", "Source",
    "SourceContext", "StoreError", "StoreWork", "Strict", "Template", "TransientDispatchError",
    "TriggerContext", "TriggerdError", "__version__", "compile_any", "compile_glob", "failpoint",
    "format_duration", "load_yaml_file", "lookup", "read_secret", "store_retry_delay",
    "to_the_end", "validate_cron", "validate_timezone",
]


class RejectLog(Protocol):
    """What a source uses to record rejects (the daemon service `"rejects"`)."""

    async def add(self, rejects: Sequence[Reject]) -> None: ...
