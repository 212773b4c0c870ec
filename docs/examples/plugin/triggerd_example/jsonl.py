"""The `jsonl` backend: one JSON line per trigger, appended to a file.

Idempotent in the trigger id: before appending, the file is searched for a line of that
trigger; a retry, or a restart after a crash, finds it and writes nothing. The file is read
and written off the event loop (`asyncio.to_thread`), under one lock for every backend object
of the process (a config reload builds new ones while old attempts may still run).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from triggerd.plugin import (
    DispatchResult,
    JobHandle,
    PermanentDispatchError,
    Strict,
    TransientDispatchError,
    TriggerContext,
    read_secret,
)

_write_lock = threading.Lock()

# errors that a retry cannot fix: the job fails at once
_FINAL = (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError)


class JsonlOptions(Strict):
    """Options of a `type: jsonl` backend."""

    type: Literal["jsonl"]
    """Appends one JSON line per trigger to a file (at most one per trigger id)."""
    path: str = Field(min_length=1)
    """The file to append to; a relative path is relative to the config's state_dir. Its
    directory must exist."""
    hmac_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding a key: each line then carries `signature`, the
    hex HMAC-SHA256 of the line without it."""


class JsonlBackend:
    """Appends a trigger's line unless the file already holds one for that trigger."""

    Options = JsonlOptions

    def __init__(self, name: str, options: JsonlOptions, state_dir: Path) -> None:
        self.name = name
        self.options = options
        self.path = Path(state_dir) / options.path  # an absolute `path` stays as it is
        self._key: bytes | None = None
        if options.hmac_key_env is not None:  # $VAR, or the file $VAR_FILE names; if neither,
            # a ConfigError naming the variable stops the daemon's start (or a reload)
            self._key = read_secret(options.hmac_key_env,
                                    f"backends.{name}.hmac_key_env").encode()

    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        record: dict[str, Any] = {
            "trigger_id": ctx.trigger_id,
            "rule": ctx.rule,
            "group": ctx.group,
            "fired_at": ctx.fired_at.isoformat(),
            "reason": ctx.reason,
            "manual": ctx.manual,
            "params": ctx.params,
            "events": len(ctx.events),
        }
        if self._key is not None:
            record["signature"] = sign(self._key, record)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        try:
            number, appended = await asyncio.to_thread(self._append_once, ctx.trigger_id, line)
        except _FINAL as exc:
            raise PermanentDispatchError(f"cannot write {self.path}: {exc.strerror}") from exc
        except OSError as exc:  # a full disk, an I/O error: worth another attempt
            raise TransientDispatchError(
                f"cannot write {self.path}: {exc.strerror or type(exc).__name__}") from exc
        external_id = f"{self.path.name}:{number}"
        await job.set_external_id(external_id)
        return DispatchResult(external_id=external_id,
                              detail="appended" if appended else "already recorded")

    def _append_once(self, trigger_id: str, line: str) -> tuple[int, bool]:
        """Blocking: (the line number of the trigger's line, whether it was appended now)."""
        with _write_lock, open(self.path, "a+", encoding="utf-8") as fh:
            fh.seek(0)
            number, last = 0, "\n"
            for number, last in enumerate(fh, start=1):
                if recorded_trigger(last) == trigger_id:
                    return number, False
            if not last.endswith("\n"):  # a line torn by a crash: start a new one after it
                fh.write("\n")
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the dispatcher records success
            return number + 1, True


def recorded_trigger(line: str) -> str | None:
    """The trigger id of a line of the file (None for a torn or foreign line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    found = record.get("trigger_id") if isinstance(record, dict) else None
    return found if isinstance(found, str) else None


def sign(key: bytes, record: dict[str, Any]) -> str:
    """The hex HMAC-SHA256 of the record (without `signature`), serialised as in the file."""
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    body = json.dumps(unsigned, sort_keys=True, default=str).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()
