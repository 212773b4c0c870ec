"""SIGHUP: reload the config and rule files without a restart.

The new config is read and validated off the event loop, with the same environment overrides
as at start (`TRIGGERD_CONFIG`, `TRIGGERD_STORE`, `TRIGGERD_STATE_DIR`). Then:

- invalid (any `triggerd check` error): every error is logged as `file:line: message` and the
  running config stays, untouched;
- a different store or state directory: refused, it needs a restart;
- otherwise applied: new and changed backends and sources are built first (a failure refuses
  the whole reload), sources that changed or were removed are stopped (what they delivered is
  stored), the rule set is swapped in the engine and the dispatcher, and new or changed
  sources start. Unchanged sources keep running. Pending events are rows in the store, per
  rule: an unchanged or changed rule keeps its own (a changed `when` applies to them at
  once); a removed rule's stay unused (and come back if the rule does). A new rule sees the
  events that arrive from now on. Jobs already queued or running finish on the backend
  object they started with; later attempts use the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from triggerd.config.loader import Config, load_config
from triggerd.errors import ConfigError, StoreError
from triggerd.runtime.build import build_backend, build_source
from triggerd.settings import Settings

if TYPE_CHECKING:
    from triggerd.runtime.daemon import Daemon

log = logging.getLogger("triggerd.reload")


@dataclass(frozen=True)
class Change:
    added: list[str]
    changed: list[str]
    removed: list[str]

    @classmethod
    def between(cls, old: Mapping[str, Any], new: Mapping[str, Any]) -> Change:
        return cls(added=sorted(set(new) - set(old)),
                   changed=sorted(n for n in set(new) & set(old) if new[n] != old[n]),
                   removed=sorted(set(old) - set(new)))

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self, what: str) -> str:
        parts = [f"{sign}{', '.join(names)}" for sign, names in
                 (("+", self.added), ("~", self.changed), ("-", self.removed)) if names]
        return f"{what} {' '.join(parts)}" if parts else ""


def _following(new: Config, sources: Change) -> set[str]:
    """Kept sources built with the options of a source that changed (a Kafka source reading
    notifications for a bucket source): built again too."""
    touched = set(sources.changed) | set(sources.added)
    return {name for name, options in new.sources.items()
            if name not in sources.added and getattr(options, "type", None) == "kafka"
            and getattr(options, "bucket", None) in touched}


def read_config(current: Config) -> Config:
    """Load the config again as `triggerd run` did (blocking: call it off the loop)."""
    settings = Settings()
    return load_config(current.path, store=settings.store, state_dir=settings.state_dir)


def refusal(old: Config, new: Config) -> str | None:
    if new.store_url != old.store_url:
        return "the store changed; restart triggerd to use another store"
    if new.state_dir != old.state_dir:
        return "state_dir changed; restart triggerd to use another state directory"
    return None


async def reload(daemon: Daemon) -> bool:
    """Reload `daemon`'s config; True if a new config was applied."""
    old = daemon.config
    log.info("SIGHUP: reloading %s", old.path)
    try:
        new = await asyncio.to_thread(read_config, old)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        return _refused(daemon, f"{len(exc.problems)} configuration error(s)")
    if (why := refusal(old, new)) is not None:
        return _refused(daemon, why)
    rules = Change.between(old.rules, new.rules)
    sources = Change.between(old.sources, new.sources)
    sources = replace(sources, changed=sorted(set(sources.changed) | _following(new, sources)))
    backends = Change.between(old.backends, new.backends)
    if not (rules or sources or backends or new.retention != old.retention):
        log.info("reload: no change in %s", ", ".join(str(f) for f in new.files))
        daemon.metrics.reloads.labels("applied").inc()
        return True
    try:  # build everything new before touching what runs
        built_backends = {n: build_backend(new, n, new.backends[n])
                          for n in backends.added + backends.changed}
        built_sources = {n: build_source(n, new.sources[n], daemon.services(new))
                         for n in sources.added + sources.changed}
    except Exception as exc:  # a plugin that cannot be built: nothing was changed yet
        return _refused(daemon, f"cannot build a plugin: {type(exc).__name__}: {exc}")

    await daemon.supervisor.stop(sources.changed + sources.removed)
    for name in sources.removed:
        ctx = daemon.supervisor.forget(name)
        if ctx is not None:
            daemon.metrics.forget_source(name, ctx.type)
    daemon.config = new
    daemon.dispatcher.reconfigure(new, built_backends)
    try:
        await daemon.engine.reconfigure(new)
    except StoreError as exc:  # applied; the decisions it could not make run on new events
        log.warning("reload: deciding with the new rules failed (%s); they apply from the "
                    "next event or timer", exc)
    finally:
        # removed backends go only now: a decision round still on the old rules may have
        # queued a job for one of them
        daemon.dispatcher.forget_backends(backends.removed)
        for name, source in built_sources.items():
            daemon.supervisor.start(name, source)
    daemon.metrics.reloads.labels("applied").inc()
    daemon.metrics.config_rules.set(len(new.rules))
    summary = "; ".join(d for d in (rules.describe("rules"), sources.describe("sources"),
                                    backends.describe("backends")) if d)
    log.info("reload applied: %s", summary or "retention changed")
    return True


def _refused(daemon: Daemon, why: str) -> bool:
    log.error("reload refused: %s; the running config stays", why)
    daemon.metrics.reloads.labels("refused").inc()
    return False
