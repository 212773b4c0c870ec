"""The SQL state store: the single source of truth, and the only place that knows SQL."""

from triggerd.store.sql import Store

__all__ = ["Store"]
