"""The SQL state store: the single source of truth, and the only package that runs SQL.

It depends on nothing above it (only `triggerd.model` and `triggerd.errors`): the engine,
the dispatcher, the runtime and the CLI call it; see `triggerd.store.sql` for its parts."""

from triggerd.store.sql import Store

__all__ = ["Store"]
