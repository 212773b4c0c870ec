"""What the `triggerd` commands share: exit codes, the usage error, loading the config from
the command line and the environment, opening the store for a query, `--since` values."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from triggerd.config.loader import Config, load_config
from triggerd.language.units import parse_duration
from triggerd.settings import Settings

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def read_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise UsageError(f"bad environment setting: {exc.errors()[0]['msg']}") from None


def config_from(args: argparse.Namespace) -> Config:
    settings = read_settings()
    path = args.config or settings.config
    return load_config(path, store=settings.store, state_dir=settings.state_dir)


def open_store(config: Config) -> Any:
    """The store for a query: it must already be at this triggerd's schema (never migrated
    here; see SchemaNotCurrentError in main)."""
    from triggerd.store import Store
    from triggerd.store.connect import sqlite_path
    from triggerd.store.migrate import SchemaNotCurrentError, check_current

    hint = (f"run `triggerd db upgrade --config {config.path}`, or start the daemon "
            "(`triggerd run`), which upgrades it; query commands never change the schema")
    path = sqlite_path(config.store_url)
    if path is not None and not path.parent.exists():  # not even its state directory yet
        raise SchemaNotCurrentError(f"the store {path} does not exist yet (nor its directory "
                                    f"{path.parent}): {hint}", "missing", None)
    store = Store(config.store_url, create_dir=False)
    try:
        check_current(store.engine, store.safe_url)
    except SchemaNotCurrentError as exc:
        store.close()
        if exc.state == "ahead":  # the message already says: upgrade triggerd
            raise
        raise SchemaNotCurrentError(f"{exc}: {hint}", exc.state, exc.revision) from None
    except BaseException:
        store.close()
        raise
    return store


def since_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (2h, 7d) or an ISO time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
